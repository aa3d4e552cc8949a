"""Read a local GGUF with the `gguf` package: metadata and the tensor table, validated.

Every number the planner uses for a local file comes from here (sum of the tensor table, not
params x nominal bits). A file that is truncated, has the wrong magic or whose tensor data runs
past the end is rejected with the file and the problem named, before anything is shipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from toolchain.core.errors import BadInputError

GGUF_MAGIC = b"GGUF"
_HINT = "re-download or re-create the file; check it with: edgedeploy models inspect FILE"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str
    n_elements: int
    n_bytes: int


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

    @property
    def tied_embeddings(self) -> bool:
        return self.output_bytes == 0


def read_gguf(path: Path) -> GGUFInfo:
    """Parse and validate; raise BadInputError naming the file and the problem."""
    import gguf  # heavy import (numpy); only when a file is read

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read model file: {exc.strerror}", "check the path") from exc
    if magic != GGUF_MAGIC:
        raise BadInputError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')", _HINT)
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # the reader raises ValueError/IndexError/... on truncation
        raise BadInputError(f"{path}: GGUF header or tensor table is damaged or truncated ({exc})", _HINT) from exc
    tensors: list[TensorInfo] = []
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise BadInputError(
                f"{path}: tensor {t.name} data runs past the end of the file ({end} > {size} bytes): file is truncated",
                _HINT,
            )
        tensors.append(TensorInfo(t.name, t.tensor_type.name, int(t.n_elements), int(t.n_bytes)))
    if not tensors:
        raise BadInputError(f"{path}: GGUF has no tensors", _HINT)
    fields = {k: _value(f) for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    arch_name = str(fields.get("general.architecture", "unknown"))
    by_name = {t.name: t for t in tensors}
    ft = fields.get("general.file_type")
    return GGUFInfo(
        path=str(path),
        size_bytes=size,
        architecture=arch_name,
        name=str(fields.get("general.name", path.stem)),
        file_type=_file_type_name(gguf, ft) if isinstance(ft, int) else _dominant_type(tensors),
        params=sum(t.n_elements for t in tensors),
        weights_bytes=sum(t.n_bytes for t in tensors),
        token_embd_bytes=by_name["token_embd.weight"].n_bytes if "token_embd.weight" in by_name else 0,
        output_bytes=by_name["output.weight"].n_bytes if "output.weight" in by_name else 0,
        tensors=tensors,
        arch=_arch_facts(fields, arch_name, reader),
    )


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _value(field: Any) -> object:  # a gguf.ReaderField (the package is untyped)
    try:
        return field.contents()
    except Exception:  # exotic field types: metadata we do not need
        return None


def _file_type_name(gguf: Any, value: int) -> str:
    try:
        name = str(gguf.LlamaFileType(value).name)
    except ValueError:
        return f"type{value}"
    return name.removeprefix("MOSTLY_").replace("ALL_F32", "F32")


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


def _arch_facts(fields: dict[str, object], arch: str, reader: Any) -> GGUFArch:
    def get(key: str) -> object:
        return fields.get(f"{arch}.{key}")

    n_embd = _int(get("embedding_length"))
    n_head = _ints(get("attention.head_count"))
    head_dim = _int(get("attention.key_length"))
    if head_dim is None and n_embd is not None and isinstance(n_head, int) and n_head:
        head_dim = n_embd // n_head
    n_vocab = _int(get("vocab_size"))
    if n_vocab is None:
        tok = reader.fields.get("tokenizer.ggml.tokens")
        n_vocab = len(tok.data) if tok is not None else None
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
