"""The board database (targets/boards/*.yaml): RAM, bandwidth, cores and backends, with sources."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolchain.core.config import field, load_yaml, unknown_name
from toolchain.core.errors import BadInputError
from toolchain.core.paths import targets_dir

# What a device is, as the planner's defaults know it (board files' device_class, `plan --device-class`).
DEVICE_CLASSES = ("sbc-cpu", "x86-cpu", "phone-cpu", "jetson", "apple-silicon", "unified-gpu", "discrete-gpu")


@dataclass(frozen=True)
class BoardSpec:
    id: str
    name: str
    device_class: str
    ram_bytes: int
    peak_bandwidth_bytes_per_s: float
    measured_read_bytes_per_s: float | None
    big_cores: int
    max_mhz: float | None
    features: list[str]
    storage_read_bytes_per_s: float | None
    backends: list[str]
    source: str


def load_boards(root: Path | None = None) -> dict[str, BoardSpec]:
    root = root or targets_dir() / "boards"
    return {b.id: b for b in (_load(p) for p in sorted(root.glob("*.yaml")))}


def _load(path: Path) -> BoardSpec:
    d = load_yaml(path)
    w = str(path)
    mem = field(d, "memory", dict, w)
    cpu = field(d, "cpu", dict, w)
    clusters = field(cpu, "clusters", list, f"{w}: cpu")
    if not clusters or not all(isinstance(c, dict) for c in clusters):
        raise BadInputError(f"{w}: cpu.clusters should be a non-empty list of mappings", "see other board files")
    storage = d.get("storage") or {}
    srcs = d.get("sources") or {}
    if field(d, "device_class", str, w) not in DEVICE_CLASSES:
        raise BadInputError(f"{w}: device_class {d['device_class']!r} is not one of {', '.join(DEVICE_CLASSES)}",
                            "pick the class whose defaults fit the device (toolchain/plan/basis.py DEFAULT_EFFICIENCY)")
    return BoardSpec(
        id=field(d, "id", str, w), name=field(d, "name", str, w),
        device_class=field(d, "device_class", str, w), ram_bytes=field(d, "ram_bytes", int, w),
        peak_bandwidth_bytes_per_s=float(field(mem, "peak_bandwidth_bytes_per_s", int, f"{w}: memory")),
        measured_read_bytes_per_s=_opt_float(mem.get("measured_read_bytes_per_s")),
        big_cores=int(clusters[0].get("cores", 1)), max_mhz=_opt_float(clusters[0].get("max_mhz")),
        features=list(cpu.get("features") or []), storage_read_bytes_per_s=_opt_float(storage.get("read_bytes_per_s")),
        backends=list(d.get("backends") or ["cpu"]), source=str(srcs.get("memory", w)),
    )


def _opt_float(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def lookup_board(boards: dict[str, BoardSpec], board_id: str) -> BoardSpec:
    if board_id in boards:
        return boards[board_id]
    raise unknown_name("board", board_id, boards, "list boards with: edgedeploy targets --boards")
