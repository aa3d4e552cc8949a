"""Load YAML config files with errors that name the file and the key."""

from __future__ import annotations

import atexit
import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, overload

import yaml

from toolchain.core.errors import BadInputError

T = TypeVar("T")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list", dict: "a mapping"}


# Limits on a YAML document (target files, lab files, profiles, boards, catalogs): these are outside
# input (a lab file comes with a pull request), so the loader is bounded before PyYAML builds anything.
#   size: at most MAX_YAML_BYTES (the largest file shipped is ~5 KB; a 1000-board lab file ~200 KB)
#     and MAX_YAML_NODES scalars and collections (keys count), checked before any is constructed;
#   encoding: UTF-8 (a BOM is allowed), anything else is refused naming the byte;
#   depth: at most MAX_YAML_DEPTH nested collections (aliases expanded), so 20,000-deep nesting
#     is refused instead of exhausting the stack;
#   aliases: anchors and aliases are allowed (a lab file may share a block with `<<: *defaults`),
#     but what they expand to is counted: more than MAX_YAML_ALIAS_NODES nodes reached through
#     aliases (a "billion laughs" bomb reaches 10^9), or an alias inside its own anchor, is refused.
MAX_YAML_BYTES = 256 << 10
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64
MAX_YAML_ALIAS_NODES = 10_000
_YAML_HINT = "fix the file (see the examples beside it)"


class _Refused(Exception):
    """A bound was hit while composing; becomes the one-line BadInputError."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting as it composes (PyYAML's composer recurses per level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if not self.check_event(yaml.AliasEvent):
            self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
            raise _Refused(f"nested deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1})")
        try:
            return super().compose_node(parent, index)
        finally:
            if self._depth:
                self._depth -= 1


def _check_expansion(root: yaml.Node) -> None:
    """Refuse when aliases reach more than MAX_YAML_ALIAS_NODES nodes, or one contains itself.

    Sizes are memoised per node, so a bomb costs its composed size, not its expansion."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    reached = 0  # nodes reached a second or later time, i.e. through an alias

    def walk(node: yaml.Node, depth: int) -> int:
        nonlocal reached
        key = id(node)
        if key in on_path:
            raise _Refused(f"an alias refers to the node that contains it (line {node.start_mark.line + 1})")
        if key in size:
            reached += size[key]
            if reached > MAX_YAML_ALIAS_NODES:
                raise _Refused(f"aliases expand to more than {MAX_YAML_ALIAS_NODES} nodes (line {node.start_mark.line + 1}): an alias bomb?")
            return size[key]
        if depth > MAX_YAML_DEPTH:
            raise _Refused(f"nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded (line {node.start_mark.line + 1})")
        if len(size) >= MAX_YAML_NODES:
            raise _Refused(f"holds more than {MAX_YAML_NODES} values (line {node.start_mark.line + 1}): not a configuration file")
        n = 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            on_path.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else [c for kv in node.value for c in kv]
            for child in children:
                n += walk(child, depth + 1)
            on_path.discard(key)
        size[key] = n
        return n

    walk(root, 0)


# free-form YAML: the top level is whatever the file holds until field() checks each key; Any
# (not object) so the loaders can walk nested mappings they have just checked with field().
def load_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read: {exc.strerror}", "check the path") from exc
    if len(raw) > MAX_YAML_BYTES:
        raise BadInputError(f"{path}: larger than {MAX_YAML_BYTES >> 10} KiB: not a configuration file", _YAML_HINT)
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    known = _parsed_index().get(digest)
    if known is not None:
        try:
            cached = json.loads(known)
        except (ValueError, RecursionError):
            cached = None  # a damaged index entry: parse the file
        if isinstance(cached, dict):
            return cached
    data = _parse_yaml(path, raw)
    _remember(digest, data)
    return data


def _parse_yaml(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise BadInputError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})", "save the file as UTF-8") from exc
    # libyaml's parser where PyYAML has it (the wheels do): the pure-Python one takes ~10 s for 1 MB
    # and seconds for a run of 20,000 `[`; libyaml stops at 1000 levels, the walk below at 64.
    loader: yaml.CSafeLoader | _BoundedLoader = yaml.CSafeLoader(text) if yaml.__with_libyaml__ else _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node)
        data = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        raise BadInputError(f"{path}: YAML {exc}", _YAML_HINT) from None
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml's own limit (1000 levels)
            raise BadInputError(f"{path}: YAML nested deeper than {MAX_YAML_DEPTH} levels", _YAML_HINT) from None
        raise BadInputError(f"{path}: not valid YAML: {_one_line(str(exc))}", "fix the syntax") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # e.g. a timestamp 2024-13-01, a 5000-digit int
        raise BadInputError(f"{path}: not valid YAML: {_one_line(str(exc)) or type(exc).__name__}", "fix the value") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a mapping at the top level", "see the examples beside it")
    return data


# --- parsed files, by content -----------------------------------------------------------------
# A plan reads ~60 YAML files (catalog, boards); parsed and checked once, each is kept as JSON in
# <cache>/yaml-index.json under the digest of its bytes, so an edited file is simply a new entry.
# What comes from the index is the same data the loaders then check field by field.
MAX_INDEX_BYTES = 8 << 20
_index: dict[str, str] | None = None
_index_added: dict[str, str] = {}


def _index_path() -> Path:
    from toolchain.core.paths import cache_dir

    return cache_dir() / "yaml-index.json"


def _parsed_index() -> dict[str, str]:
    global _index
    if _index is None:
        _index = _read_index(_index_path())
    return _index


def _remember(digest: str, data: dict[str, Any]) -> None:
    """Keep a parsed file if JSON holds it unchanged (YAML also has dates and non-string keys)."""
    try:
        text = json.dumps(data, separators=(",", ":"))
    except (TypeError, ValueError):
        return
    if json.loads(text) != data:
        return
    if not _index_added:
        atexit.register(_save_index)
    _parsed_index()[digest] = text
    _index_added[digest] = text


def _save_index() -> None:
    """Written once, at exit, over the entries on disk (atomically: concurrent runs may race)."""
    path = _index_path()
    added = dict(_index_added)
    _index_added.clear()
    try:
        entries = {**_read_index(path), **added}
        text = json.dumps(entries, separators=(",", ":"))
        if len(text) > MAX_INDEX_BYTES:
            text = json.dumps(added, separators=(",", ":"))  # start again rather than grow without end
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache: a read-only home only costs the next run the parse


def _read_index(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_INDEX_BYTES + 1)
        doc = json.loads(raw) if len(raw) <= MAX_INDEX_BYTES else None
    except (OSError, ValueError, RecursionError):
        return {}  # no index, or a damaged one: parse the files
    return {k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(doc, dict) else {}


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "")[:200]


def unknown_name(kind: str, name: str, known: Iterable[str], hint: str, *, cutoff: float = 0.4) -> BadInputError:
    """The error for a name not in a known set, with the close matches named."""
    close = difflib.get_close_matches(name, list(known), n=4, cutoff=cutoff)
    return BadInputError(f"unknown {kind} {name!r}" + (f"; close matches: {', '.join(close)}" if close else ""), hint)


@overload
def field(data: Mapping[str, object], key: str, typ: type[T], where: str, *, optional: Literal[False] = False) -> T: ...
@overload
def field(data: Mapping[str, object], key: str, typ: type[T], where: str, *, optional: Literal[True], default: T) -> T: ...
@overload
def field(data: Mapping[str, object], key: str, typ: type[T], where: str, *, optional: Literal[True], default: None = None) -> T | None: ...
def field(data: Mapping[str, object], key: str, typ: type[T], where: str, *, optional: bool = False, default: T | None = None) -> T | None:
    """data[key] checked against typ; a missing or wrong-typed key names the file and key."""
    if key not in data or data[key] is None:
        if optional:
            return default
        raise BadInputError(f"{where}: missing key '{key}'", f"add '{key}:' ({_TYPE_NAMES.get(typ, typ.__name__)})")
    value = data[key]
    ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise BadInputError(
            f"{where}: key '{key}' should be {_TYPE_NAMES.get(typ, typ.__name__)}, got {type(value).__name__} {value!r}",
            f"fix '{key}' in that file",
        )
    return cast(T, value)  # checked just above (an int read for a float became one)


MAX_JSON_BYTES = 64 << 20  # a plan listing every candidate is ~0.4 MB


def load_json(path: Path, kind: str, hint: str) -> object:
    """A JSON document edgedeploy wrote (a plan, facts, a report), read within MAX_JSON_BYTES;
    anything unreadable is one BadInputError naming the file."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise BadInputError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB: not a {kind} JSON document", hint)
        return json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, or not UTF-8
        if isinstance(exc, RecursionError):
            why = "nested too deeply"
        elif isinstance(exc, OSError):
            why = exc.strerror or type(exc).__name__
        else:
            why = str(exc).splitlines()[0][:200]
        raise BadInputError(f"{path}: not a {kind} JSON document ({why})", hint) from exc
