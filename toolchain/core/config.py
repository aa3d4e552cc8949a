"""Load YAML config files with errors that name the file and the key."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, overload

import yaml

from toolchain.core.errors import BadInputError

T = TypeVar("T")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list", dict: "a mapping"}


# free-form YAML: the top level is whatever the file holds until field() checks each key; Any
# (not object) so the loaders can walk nested mappings they have just checked with field().
def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read: {exc.strerror}", "check the path") from exc
    except yaml.YAMLError as exc:
        raise BadInputError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}", "fix the syntax") from exc
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a mapping at the top level", "see the examples beside it")
    return data


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
