"""The model catalog (profiles/models/*.yaml) and local GGUF files as catalog entries."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from toolchain.core.config import field, load_yaml, unknown_name
from toolchain.core.errors import BadInputError
from toolchain.core.identifiers import check_model_id
from toolchain.core.paths import profiles_dir
from toolchain.models.gguf_reader import MAX_LAYERS, GGUFInfo, read_gguf

QUANTS = (
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1",
    "IQ4_XS", "Q3_K_M", "Q3_K_S", "Q2_K", "TQ1_0", "TQ2_0",
)
TERNARY_QUANTS = ("TQ1_0", "TQ2_0")


@dataclass(frozen=True)
class Arch:
    n_layer: int
    n_embd: int
    n_head: int | list[int]
    n_head_kv: int | list[int]
    head_dim: int
    n_ff: int | list[int]
    n_vocab: int
    tied_embeddings: bool
    context_length: int
    sliding_window: int | None = None
    swa_pattern: int | None = None
    n_expert: int = 0
    n_expert_used: int = 0
    ternary: bool = False

    def per_layer(self, value: int | list[int]) -> list[int]:
        return list(value) if isinstance(value, list) else [value] * self.n_layer


@dataclass(frozen=True)
class QuantEntry:
    name: str
    file_bytes: int | None
    source: str


@dataclass(frozen=True)
class ModelEntry:
    id: str
    name: str
    architecture: str
    params: int
    license: str
    hf_repo: str
    hf_file: str
    arch: Arch
    quants: dict[str, QuantEntry]
    source_file: str = ""
    local: GGUFInfo | None = None  # set when the entry is a local GGUF given by path
    notes: list[str] = dc_field(default_factory=list)


def load_catalog(root: Path | None = None) -> dict[str, ModelEntry]:
    root = root or profiles_dir() / "models"
    entries = [_load_entry(p) for p in sorted(root.glob("*.yaml"))]
    return {e.id: e for e in entries}


def _load_entry(path: Path) -> ModelEntry:
    data = load_yaml(path)
    w = str(path)
    a = field(data, "arch", dict, w)
    aw = f"{w}: arch"
    int_or_list = (int, list)
    for key in ("n_head", "n_head_kv", "n_ff"):
        if not isinstance(a.get(key), int_or_list) or isinstance(a.get(key), bool):
            raise BadInputError(f"{aw}: key '{key}' should be an integer or a list of integers", f"fix '{key}'")
    arch = Arch(
        n_layer=field(a, "n_layer", int, aw),
        n_embd=field(a, "n_embd", int, aw),
        n_head=a["n_head"],
        n_head_kv=a["n_head_kv"],
        head_dim=field(a, "head_dim", int, aw),
        n_ff=a["n_ff"],
        n_vocab=field(a, "n_vocab", int, aw),
        tied_embeddings=field(a, "tied_embeddings", bool, aw),
        context_length=field(a, "context_length", int, aw),
        sliding_window=field(a, "sliding_window", int, aw, optional=True),
        swa_pattern=field(a, "swa_pattern", int, aw, optional=True),
        n_expert=field(a, "n_expert", int, aw, optional=True, default=0),
        n_expert_used=field(a, "n_expert_used", int, aw, optional=True, default=0),
        ternary=field(a, "ternary", bool, aw, optional=True, default=False),
    )
    for key in ("n_head", "n_head_kv", "n_ff"):
        value = a[key]
        if isinstance(value, list) and (len(value) != arch.n_layer or not all(type(v) is int for v in value)):
            raise BadInputError(f"{aw}: key '{key}' should list {arch.n_layer} integers (one per layer)", f"fix '{key}'")
    _check_arch(path, arch, "arch")
    quants: dict[str, QuantEntry] = {}
    for qname, q in field(data, "quants", dict, w).items():
        qw = f"{w}: quants.{qname}"
        if qname not in QUANTS:
            raise BadInputError(f"{w}: unknown quant {qname!r}", f"use one of {', '.join(QUANTS)}")
        if not isinstance(q, dict):
            raise BadInputError(f"{qw}: expected a mapping with file_bytes and source", "see other catalog files")
        file_bytes = field(q, "file_bytes", int, qw, optional=True)
        if file_bytes is not None and file_bytes <= 0:
            raise BadInputError(f"{qw}: file_bytes {file_bytes} should be above 0", "give the published file size in bytes, or leave it out")
        quants[qname] = QuantEntry(qname, file_bytes, field(q, "source", str, qw, optional=True, default=""))
    if field(data, "params", int, w) <= 0:
        raise BadInputError(f"{w}: key 'params' should be above 0", "give the parameter count")
    entry_id = check_model_id(field(data, "id", str, w), f"{w}: id")
    if entry_id != path.stem:
        raise BadInputError(f"{w}: key 'id' is {entry_id!r} but the file is {path.name}", "make them equal")
    return ModelEntry(
        id=entry_id,
        name=field(data, "name", str, w),
        architecture=field(data, "architecture", str, w),
        params=field(data, "params", int, w),
        license=field(data, "license", str, w),
        hf_repo=field(data, "hf_repo", str, w),
        hf_file=field(data, "hf_file", str, w),
        arch=arch,
        quants=quants,
        source_file=w,
    )


def entry_from_gguf(path: Path) -> ModelEntry:
    """A local GGUF as a one-quant catalog entry: every number from its tensor table."""
    info = read_gguf(path)
    a = info.arch
    missing = [k for k in ("n_layer", "n_embd", "n_head", "n_ff", "n_vocab", "head_dim") if a.get(k) is None]
    if missing or a["n_layer"] is None or a["n_embd"] is None or a["head_dim"] is None or a["n_vocab"] is None:  # repeated so mypy narrows them
        raise BadInputError(f"{path}: GGUF metadata lacks {', '.join(missing)} for {info.architecture}", "is this a language model GGUF?")
    arch = Arch(
        n_layer=int(a["n_layer"]), n_embd=int(a["n_embd"]), n_head=_int_or_list(a["n_head"]),
        n_head_kv=_int_or_list(a["n_head_kv"]), head_dim=int(a["head_dim"]), n_ff=_int_or_list(a["n_ff"]),
        n_vocab=int(a["n_vocab"]), tied_embeddings=info.tied_embeddings,
        context_length=int(a["context_length"] or 2048), sliding_window=a.get("sliding_window"),
        swa_pattern=_swa_pattern(a.get("swa_pattern")) or (SWA_PATTERN_DEFAULTS.get(info.architecture) if a.get("sliding_window") else None),
        n_expert=int(a["n_expert"]), n_expert_used=int(a["n_expert_used"]),
        ternary=info.file_type in TERNARY_QUANTS,
    )
    _check_arch(path, arch)
    return ModelEntry(
        id=path.stem, name=info.name, architecture=info.architecture, params=info.params, license="see file",
        hf_repo="", hf_file="", arch=arch,
        quants={info.file_type: QuantEntry(info.file_type, info.size_bytes, f"tensor table of {path}")},
        source_file=str(path), local=info,
    )


def _check_arch(path: Path, arch: Arch, what: str = "GGUF metadata") -> None:
    """A hand-made GGUF or catalog file can claim anything: sizes the planner divides by or loops
    over must be sane."""
    def values(v: int | list[int]) -> list[int]:
        return v if isinstance(v, list) else [v]

    # a GGUF's block_count is bounded where it is read (gguf_reader.MAX_LAYERS); a catalog file's here
    bad = [f"{name} {v}" for name, v, lo, hi in (
        ("n_layer", arch.n_layer, 1, MAX_LAYERS), ("context_length", arch.context_length, 1, 1 << 24),
        ("embedding_length", arch.n_embd, 1, 1 << 20),
        ("head_dim", arch.head_dim, 1, 1 << 16), ("vocab size", arch.n_vocab, 1, 1 << 24),
    ) if not lo <= v <= hi]
    bad += [f"head_count {v}" for v in values(arch.n_head) if not 1 <= v <= 1 << 16][:1]
    bad += [f"head_count_kv {v}" for v in values(arch.n_head_kv) if not 0 <= v <= 1 << 16][:1]
    bad += [f"feed_forward_length {v}" for v in values(arch.n_ff) if not 0 <= v <= 1 << 24][:1]
    if isinstance(arch.n_head, list) and len(arch.n_head) != arch.n_layer:
        bad.append(f"{len(arch.n_head)} per-layer head counts for {arch.n_layer} layers")
    if bad:
        raise BadInputError(f"{path}: {what} out of range: {', '.join(bad)}", "the file is damaged or not a real model")


def _int_or_list(value: Any) -> int | list[int]:
    return [int(v) for v in value] if isinstance(value, list) else int(value)


# llama.cpp's period when the GGUF has no sliding_window_pattern (src/models/<arch>.cpp
# load_swa_pattern calls, llama-cpp-python 0.3.36): every P-th layer is global, the rest slide.
SWA_PATTERN_DEFAULTS = {"gemma3": 6, "gemma2": 2, "gemma3n": 5, "cohere2": 4, "exaone4": 4, "olmo2": 4, "llama4": 4,
                        "gpt-oss": 2, "plamo3": 8}


def _swa_pattern(value: Any) -> int | None:
    # Newer GGUFs store the pattern as a per-layer bool array (true = sliding); older ones as an
    # int period. A periodic array "P-1 sliding, then 1 global" is period P.
    if isinstance(value, list):
        if False in value and all(bool(v) == ((i % (value.index(False) + 1)) < value.index(False)) for i, v in enumerate(value)):
            return value.index(False) + 1
        return None
    return int(value) if value else None


def lookup(catalog: dict[str, ModelEntry], model_id: str) -> ModelEntry:
    if model_id in catalog:
        return catalog[model_id]
    raise unknown_name("model", model_id, catalog, "list the catalog with: edgedeploy models")


def check_quant(name: str) -> str:
    upper = name.upper()
    if upper in QUANTS:
        return upper
    raise unknown_name("quant", upper, QUANTS, f"quants: {', '.join(QUANTS)}", cutoff=0.5)
