"""Read a local GGUF's metadata and tensor table: a bounded reader, validated, with a cache.

Every number the planner uses for a local file comes from here (sum of the tensor table, not
params x nominal bits). A file that is truncated, has the wrong magic or whose tensor data runs
past the end is rejected with the file and the problem named, before anything is shipped.

A GGUF is outside input (a download, a file someone hands over), so the reader trusts none of
its numbers: it follows the GGUF v2/v3 layout (magic, version, tensor_count, kv_count, the
key/value pairs, the tensor infos, data aligned to general.alignment) with the stdlib `struct`
over the file, and checks every count, string length, array length and dimension against the
bytes left in the file *before* reading or allocating anything, with hard caps (MAX_*) on top.
The vocabulary arrays (tokenizer.ggml.*) are never materialised: numeric ones are seeked past,
string ones are walked length by length (bounded by MAX_STRINGS) and only their length is kept
(the vocabulary size). A refusal is a BadInputError naming the file and the problem, in well under
a second and a few MB whatever the file claims.

The parsed result is cached in $EDGEDEPLOY_CACHE/gguf-index/, one small JSON per file keyed by
(resolved path, size, mtime_ns, inode), so repeated plans do not re-read multi-MB headers.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypedDict, cast

from toolchain.core.errors import BadInputError

GGUF_MAGIC = b"GGUF"
_HINT = "re-download or re-create the file; check it with: edgedeploy models inspect FILE"

# Hard caps on what a header may claim (besides fitting in the file). Real files are far below:
# ~1,100 tensors (405B dense), ~60 keys, 262,144-entry vocabularies, 280k merges, 64-byte names.
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_NAME = 1 << 12  # bytes in a key or tensor name (llama.cpp allows 63 in a tensor name)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_STRINGS = 1 << 20  # strings in one array (a vocabulary or merge list)
MAX_STRINGS_TOTAL = 1 << 21  # strings in all arrays of the file together
MAX_KEPT_ARRAY = 1 << 16  # numeric arrays longer than this (per-layer values are ~100) are skipped
MAX_KEPT_STRING = 1 << 20  # string values longer than this (chat templates are ~10 KB) are skipped
MAX_LAYERS = 4096  # block_count: the planner loops over layers
DEFAULT_ALIGNMENT = 32
_CACHE_VERSION = 3  # 2: tensors carry their row length; 3: data_offset
_CACHE_ENTRIES = 256  # the index directory is pruned to this many files
_CHUNK = 1 << 20

# GGUF value types -> struct format of the scalar (8: string, 9: array)
_STRING, _ARRAY = 8, 9
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_UINT32 = 4

# ggml tensor types (gguf.GGMLQuantizationType): id -> name; sizes from plan/sizing.py's TYPE_SIZES,
# these for the types the planner does not size (so a file using them still reads).
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
    12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}
_OTHER_SIZES: dict[str, tuple[int, int]] = {
    "Q8_1": (32, 40), "Q8_K": (256, 292), "IQ2_XXS": (256, 66), "IQ2_XS": (256, 74), "IQ3_XXS": (256, 98),
    "IQ1_S": (256, 50), "IQ3_S": (256, 110), "IQ2_S": (256, 82), "I8": (1, 1), "I16": (1, 2), "I32": (1, 4),
    "I64": (1, 8), "F64": (1, 8), "IQ1_M": (256, 56), "NVFP4": (64, 36), "Q1_0": (128, 18),
}
# general.file_type (gguf.LlamaFileType, MOSTLY_ dropped, ALL_F32 -> F32)
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 1024: "GUESSED",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str
    n_elements: int
    n_bytes: int
    row_length: int = 0  # ne0: a matrix's rows are n_elements / row_length (decode pays a little per row)

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.row_length if self.row_length else 0


class GGUFArch(TypedDict):
    """The architecture's hyperparameters from `<arch>.*` metadata; None where the file lacks one."""

    n_layer: int | None
    n_embd: int | None
    n_head: int | list[int] | None  # a list when it varies per layer
    n_head_kv: int | list[int] | None
    head_dim: int | None
    head_dim_v: int | None
    n_ff: int | list[int] | None
    n_vocab: int | None
    context_length: int | None
    sliding_window: int | None
    swa_pattern: int | list[bool] | None  # a period, or per layer: true = sliding
    n_expert: int
    n_expert_used: int


@dataclass(frozen=True)
class GGUFInfo:
    path: str
    size_bytes: int
    architecture: str
    name: str
    file_type: str  # "Q4_K_M", "F16", ... from general.file_type
    params: int
    weights_bytes: int  # sum of the tensor table
    token_embd_bytes: int
    output_bytes: int  # 0 when tied (no output.weight)
    tensors: list[TensorInfo]
    arch: GGUFArch
    data_offset: int = 0  # where tensor data starts: the header (vocabulary included) is all a no_alloc load reads

    @property
    def tied_embeddings(self) -> bool:
        return self.output_bytes == 0


def read_gguf(path: Path, *, use_cache: bool = True) -> GGUFInfo:
    """Parse and validate; raise BadInputError naming the file and the problem."""
    try:
        st = path.stat()
        resolved = str(path.resolve())
        key: list[object] = [resolved, st.st_size, st.st_mtime_ns, st.st_ino]
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read model file: {exc.strerror}", "check the path") from exc
    side = _index_file(resolved) if use_cache else None
    if side is not None and (hit := _cached(side, key, path)) is not None:
        return hit
    try:
        with path.open("rb", buffering=0) as raw:
            info = _Parser(path, raw, st.st_size).parse()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read model file: {exc.strerror}", "check the path") from exc
    if side is not None:
        _store(side, key, info)
    return info


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _Skipped:
    """An array the planner does not need: only its length is kept."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __repr__(self) -> str:
        return f"[{self.length} values]"


class _Parser:
    """One pass over the header through a window buffer; every read is checked against the file size."""

    def __init__(self, path: Path, raw: BinaryIO, size: int) -> None:
        self.path, self.raw, self.size = path, raw, size
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # offset into buf
        self.order = "<"
        self.strings_walked = 0
        self.types: dict[str, int] = {}  # GGUF value type of each metadata key

    # -- bounded primitives -------------------------------------------------------------------
    def offset(self) -> int:
        return self.base + self.pos

    def left(self) -> int:
        return self.size - self.offset()

    def fail(self, what: str) -> BadInputError:
        return BadInputError(f"{self.path}: {what}", _HINT)

    def _need(self, n: int, what: str) -> None:
        """Make n bytes available at pos, or refuse: the file is shorter than the header claims."""
        if n > self.left():
            raise self.fail(f"GGUF header is truncated or damaged: {what} at byte {self.offset()} needs {n} bytes, "
                            f"{max(0, self.left())} left in the file")
        if self.pos + n <= len(self.buf):
            return
        rest = self.buf[self.pos:]
        self.base += self.pos
        want = max(n, _CHUNK) - len(rest)
        more = self.raw.read(want) if want > 0 else b""
        self.buf, self.pos = rest + more, 0
        while len(self.buf) < n:  # a raw read may return short
            more = self.raw.read(n - len(self.buf))
            if not more:
                raise self.fail(f"GGUF header is truncated: the file ended at byte {self.base + len(self.buf)} while reading {what}")
            self.buf += more

    def skip(self, n: int, what: str) -> None:
        if n > self.left():
            raise self.fail(f"GGUF header is truncated or damaged: {what} at byte {self.offset()} claims {n} bytes, "
                            f"{max(0, self.left())} left in the file")
        if self.pos + n <= len(self.buf):
            self.pos += n
            return
        target = self.offset() + n
        self.raw.seek(target)
        self.buf, self.base, self.pos = b"", target, 0

    def scalar(self, fmt: str, what: str) -> Any:
        s = struct.Struct(self.order + fmt)
        self._need(s.size, what)
        (value,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return value

    def u32(self, what: str) -> int:
        return int(self.scalar("I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("Q", what))

    def raw_string(self, what: str, cap: int) -> bytes | None:
        """A GGUF string; None (and skipped) when longer than cap."""
        n = self.u64(f"length of {what}")
        if n > self.left():
            raise self.fail(f"GGUF header is truncated or damaged: {what} claims {n} bytes at byte {self.offset()}, "
                            f"only {self.left()} left in the file")
        if n > cap:
            self.skip(n, what)
            return None
        self._need(n, what)
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data

    def name(self, what: str) -> str:
        data = self.raw_string(what, MAX_NAME)
        if data is None:
            raise self.fail(f"{what} is longer than {MAX_NAME} bytes at byte {self.offset()}")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} {data[:40]!r} is not UTF-8") from exc

    # -- the layout ---------------------------------------------------------------------------
    def parse(self) -> GGUFInfo:
        magic = self.raw.read(4)
        if magic != GGUF_MAGIC:
            raise self.fail(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        self.base = 4
        version = self.u32("version")
        if version & 0xFFFF == 0:  # written on a big-endian machine
            self.order, version = ">", int.from_bytes(version.to_bytes(4, "little"), "big")
        if version not in (2, 3):
            raise self.fail(f"GGUF version {version} is not supported (2 and 3 are)")
        n_tensors = self.u64("tensor_count")
        n_kv = self.u64("kv_count")
        # each key/value takes at least 13 bytes (key length, type, a u8), each tensor info 24
        for count, what, cap, least in ((n_kv, "metadata keys", MAX_KV, 13), (n_tensors, "tensors", MAX_TENSORS, 24)):
            if count > cap:
                raise self.fail(f"GGUF header is damaged: it claims {count} {what} (at most {cap})")
            if count * least > self.left():
                raise self.fail(f"GGUF header is truncated or damaged: {count} {what} need at least {count * least} bytes, "
                                f"{self.left()} left in the file")
        if n_tensors == 0:
            raise self.fail("GGUF has no tensors")
        fields: dict[str, object] = {}
        for i in range(n_kv):
            key = self.name(f"metadata key #{i}")
            if key in fields:
                raise self.fail(f"duplicate metadata key {key!r}")
            vtype = self.u32(f"type of {key}")
            fields[key] = self.value(key, vtype)
        infos = [self.tensor_info(i) for i in range(n_tensors)]
        align = DEFAULT_ALIGNMENT
        if "general.alignment" in fields:
            a = fields["general.alignment"]
            if self.types.get("general.alignment") != _UINT32 or not isinstance(a, int):
                raise self.fail("general.alignment should be a uint32")
            if a == 0 or a & (a - 1):
                raise self.fail(f"general.alignment {a} is not a power of two")
            align = a
        start = -(-self.offset() // align) * align
        return self.info(fields, infos, start)

    def value(self, key: str, vtype: int) -> object:
        self.types[key] = vtype
        fmt = _SCALARS.get(vtype)
        if fmt is not None:
            return self.scalar(fmt, key)
        if vtype == _STRING:
            data = self.raw_string(key, MAX_KEPT_STRING)
            try:
                return None if data is None else data.decode("utf-8")
            except UnicodeDecodeError:
                return None  # metadata text we do not need
        if vtype == _ARRAY:
            return self.array(key)
        raise self.fail(f"metadata key {key!r} has unknown value type {vtype}")

    def array(self, key: str) -> object:
        itype = self.u32(f"element type of {key}")
        count = self.u64(f"length of {key}")
        fmt = _SCALARS.get(itype)
        if itype == _STRING:
            if count > MAX_STRINGS or count * 8 > self.left():
                raise self.fail(f"array {key!r} claims {count} strings at byte {self.offset()} "
                                f"(at most {MAX_STRINGS}, each at least 8 bytes, {self.left()} bytes left)")
            self.strings_walked += count
            if self.strings_walked > MAX_STRINGS_TOTAL:
                raise self.fail(f"arrays of strings hold more than {MAX_STRINGS_TOTAL} entries in all (at {key!r})")
            self.walk_strings(key, count)
            return _Skipped(count)
        if fmt is None:
            what = "arrays of arrays" if itype == _ARRAY else f"element type {itype}"
            raise self.fail(f"array {key!r} has {what}, which GGUF readers do not support")
        width = struct.calcsize(fmt)
        if count * width > self.left():
            raise self.fail(f"GGUF header is truncated or damaged: array {key!r} claims {count} elements ({count * width} bytes) at byte {self.offset()}, "
                            f"only {self.left()} bytes left in the file")
        if key.startswith("tokenizer.ggml.") or count > MAX_KEPT_ARRAY:
            self.skip(count * width, key)
            return _Skipped(count)
        s = struct.Struct(f"{self.order}{count}{fmt}")
        self._need(s.size, key)
        values = list(s.unpack_from(self.buf, self.pos))
        self.pos += s.size
        return values

    def walk_strings(self, key: str, count: int) -> None:
        length = struct.Struct(self.order + "Q")
        for _ in range(count):
            if self.pos + 8 > len(self.buf):
                self._need(8, f"a string in {key}")
            (n,) = length.unpack_from(self.buf, self.pos)
            self.pos += 8
            if self.pos + n <= len(self.buf):
                self.pos += n
            else:
                self.skip(n, f"a string in {key}")

    def tensor_info(self, i: int) -> tuple[str, list[int], int, int]:
        name = self.name(f"name of tensor #{i}")
        n_dims = self.u32(f"n_dims of tensor {name}")
        if n_dims > MAX_DIMS:
            raise self.fail(f"tensor {name} claims {n_dims} dimensions (GGUF allows at most {MAX_DIMS})")
        dims = [self.u64(f"shape of tensor {name}") for _ in range(n_dims)]
        ttype = self.u32(f"type of tensor {name}")
        offset = self.u64(f"data offset of tensor {name}")
        return name, dims, ttype, offset

    def info(self, fields: dict[str, object], infos: list[tuple[str, list[int], int, int]], start: int) -> GGUFInfo:
        from toolchain.plan.sizing import TYPE_SIZES  # sizing imports this module

        tensors: list[TensorInfo] = []
        seen: set[str] = set()
        for name, dims, ttype, offset in infos:
            if name in seen:
                raise self.fail(f"duplicate tensor {name}")
            seen.add(name)
            type_name = GGML_TYPES.get(ttype)
            if type_name is None:
                raise self.fail(f"tensor {name} has unknown ggml type {ttype}")
            n_elements = 1
            for d in dims:
                n_elements *= d
                if n_elements > self.size * 8:  # even 1-bit weights would run past the end: stop multiplying
                    raise self.fail(f"tensor {name} shape {dims} holds more elements than the file ({self.size} bytes) can")
            block, type_size = TYPE_SIZES.get(type_name) or _OTHER_SIZES[type_name]
            n_bytes = n_elements * type_size // block
            end = start + offset + n_bytes
            if end > self.size:
                raise self.fail(f"tensor {name} data runs past the end of the file ({end} > {self.size} bytes): file is truncated")
            tensors.append(TensorInfo(name, type_name, n_elements, n_bytes, dims[0] if dims else 0))
        arch_name = str(fields.get("general.architecture", "unknown"))
        by_name = {t.name: t for t in tensors}
        ft = fields.get("general.file_type")
        arch = _arch_facts(fields, arch_name)
        if arch["n_layer"] is not None and not 1 <= arch["n_layer"] <= MAX_LAYERS:
            raise self.fail(f"GGUF metadata out of range: block_count {arch['n_layer']} (1 to {MAX_LAYERS})")
        return GGUFInfo(
            path=str(self.path),
            size_bytes=self.size,
            architecture=arch_name,
            name=str(fields.get("general.name", self.path.stem)),
            file_type=FILE_TYPES.get(ft, f"type{ft}") if isinstance(ft, int) else _dominant_type(tensors),
            params=sum(t.n_elements for t in tensors),
            weights_bytes=sum(t.n_bytes for t in tensors),
            token_embd_bytes=by_name["token_embd.weight"].n_bytes if "token_embd.weight" in by_name else 0,
            output_bytes=by_name["output.weight"].n_bytes if "output.weight" in by_name else 0,
            tensors=tensors,
            arch=arch,
            data_offset=start,
        )


def _dominant_type(tensors: list[TensorInfo]) -> str:
    weight: dict[str, int] = {}
    for t in tensors:
        weight[t.type_name] = weight.get(t.type_name, 0) + t.n_bytes
    return max(weight, key=lambda k: weight[k])


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ints(value: object) -> int | list[int] | None:
    if isinstance(value, list):
        return value if all(isinstance(v, int) and not isinstance(v, bool) for v in value) else None
    return _int(value)


def _pattern(value: object) -> int | list[bool] | None:
    if isinstance(value, list):
        return value if all(isinstance(v, bool) for v in value) else None
    return _int(value)


def _arch_facts(fields: dict[str, object], arch: str) -> GGUFArch:
    def get(key: str) -> object:
        return fields.get(f"{arch}.{key}")

    n_embd = _int(get("embedding_length"))
    n_head = _ints(get("attention.head_count"))
    head_dim = _int(get("attention.key_length"))
    if head_dim is None and n_embd is not None and isinstance(n_head, int) and n_head:
        head_dim = n_embd // n_head
    n_vocab = _int(get("vocab_size"))
    if n_vocab is None and "tokenizer.ggml.tokens" in fields:
        tok = fields["tokenizer.ggml.tokens"]
        n_vocab = tok.length if isinstance(tok, _Skipped) else 1  # a scalar where the array belongs: one entry
    n_head_kv, head_dim_v = _ints(get("attention.head_count_kv")), _int(get("attention.value_length"))
    return {
        "n_layer": _int(get("block_count")),
        "n_embd": n_embd,
        "n_head": n_head,
        "n_head_kv": n_head if n_head_kv is None else n_head_kv,
        "head_dim": head_dim,
        "head_dim_v": head_dim if head_dim_v is None else head_dim_v,
        "n_ff": _ints(get("feed_forward_length")),
        "n_vocab": n_vocab,
        "context_length": _int(get("context_length")),
        "sliding_window": _int(get("attention.sliding_window")),
        "swa_pattern": _pattern(get("attention.sliding_window_pattern")),
        "n_expert": _int(get("expert_count")) or 0,
        "n_expert_used": _int(get("expert_used_count")) or 0,
    }


# -- the cache of parsed headers ------------------------------------------------------------------
def _index_file(resolved: str) -> Path | None:
    from toolchain.core.paths import cache_dir

    try:
        return cache_dir() / "gguf-index" / (hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".json")
    except Exception:  # no usable cache directory: parse every time
        return None


def _cached(side: Path, key: list[object], path: Path) -> GGUFInfo | None:
    """The stored parse when its key matches; anything odd in the file is a miss, never an error."""
    try:
        if side.stat().st_size > 16 << 20:
            return None
        doc = json.loads(side.read_bytes())
        if doc.get("version") != _CACHE_VERSION or doc.get("key") != key:
            return None
        d = doc["info"]
        tensors = [TensorInfo(str(t["name"]), str(t["type_name"]), int(t["n_elements"]), int(t["n_bytes"]), int(t["row_length"]))
                   for t in d["tensors"]]
        arch = d["arch"]
        if not isinstance(arch, dict) or set(arch) != set(GGUFArch.__annotations__):
            return None
        return GGUFInfo(path=str(path), size_bytes=int(d["size_bytes"]), architecture=str(d["architecture"]), name=str(d["name"]),
                        file_type=str(d["file_type"]), params=int(d["params"]), weights_bytes=int(d["weights_bytes"]),
                        token_embd_bytes=int(d["token_embd_bytes"]), output_bytes=int(d["output_bytes"]), tensors=tensors,
                        arch=cast(GGUFArch, arch), data_offset=int(d["data_offset"]))  # the keys checked above; the values as stored
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def _store(side: Path, key: list[object], info: GGUFInfo) -> None:
    from toolchain.core.serde import to_json_dict

    tmp = side.with_name(f"{side.name}.{os.getpid()}.tmp")
    try:
        side.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": _CACHE_VERSION, "key": key, "info": to_json_dict(info)}))
        os.replace(tmp, side)
        entries = list(side.parent.glob("*.json"))
        if len(entries) > _CACHE_ENTRIES:
            entries.sort(key=lambda p: p.stat().st_mtime_ns)
            for old in entries[: len(entries) - _CACHE_ENTRIES]:
                old.unlink(missing_ok=True)
    except OSError:
        tmp.unlink(missing_ok=True)  # read-only cache: parse again next time

