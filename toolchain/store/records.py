"""What the database stores, as plain records: importing them does not load SQLAlchemy.

A plan reads device measurements only when a database exists (plan/calibration.py), so the records
and the default URL live apart from the engine in history.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from toolchain.core import settings
from toolchain.core.paths import data_dir


@dataclass(frozen=True)
class RunRecord:
    lab: str
    source: str
    started_at: datetime
    finished_at: datetime
    edgedeploy_version: str
    exit_code: int
    passed: bool
    ci_job: str | None = None
    run_dir: str | None = None


@dataclass(frozen=True)
class BoardRecord:
    board: str
    measured_at: datetime
    passed: bool
    exit_code: int
    labels: tuple[str, ...] = ()
    target: str | None = None
    failure_class: str | None = None
    retries: int = 0
    model: str | None = None
    quant: str | None = None
    gguf_sha256: str | None = None
    llama_cpp: str | None = None
    fingerprint: str | None = None
    decode_tokens_per_s: float | None = None
    predicted_decode_tokens_per_s: float | None = None
    decode_ms_p50: float | None = None
    ttft_ms: float | None = None
    peak_rss_bytes: int | None = None
    temperature_before_c: float | None = None
    temperature_after_c: float | None = None
    budget_ms: float | None = None
    regression: bool = False
    run_dir: str | None = None
    run_id: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DeviceMeasurement:
    """One shipped run on a device: what the runner measured beside what the plan assumed.

    predicted_decode_s and predicted_peak_bytes are on the uncorrected basis (the class defaults,
    before this device's own fit), so a fit over the records never feeds on its own output."""

    fingerprint: str  # calibration.fingerprint(facts): board model, arch, cores, RAM
    measured_at: datetime
    model: str
    quant: str
    measured_decode_s: float  # seconds per decoded token
    bytes_per_token: int  # read per token, as the plan sized it
    bandwidth_bytes_per_s: float  # the plan's bandwidth basis
    threads: int = 0
    ctx: int = 0
    predicted_decode_s: float | None = None
    predicted_peak_bytes: int | None = None
    measured_peak_bytes: int | None = None
    family: str = ""  # kernel family of the bulk of the weights (Q4_K)
    bytes_by_type: dict[str, int] = field(default_factory=dict)  # bytes_per_token split by ggml type
    n_layer: int = 0  # of the measured model (0: not recorded, older rows)
    rows_per_token: int = 0  # matrix rows per token (0: not recorded)
    origin: str = "run"  # "run": a shipped run; "calibration": the first-contact benchmark


def default_url() -> str:
    return settings.history_url() or f"sqlite:///{data_dir() / 'history.sqlite'}"


@dataclass(frozen=True)
class LinkMeasurement:
    """One measured link from a head to a worker (probe/link.py), keyed by both devices and the
    worker's address: two boards of one kind share a fingerprint, the address tells them apart."""

    head_fingerprint: str
    worker_fingerprint: str
    address: str
    measured_at: datetime
    head: str  # target names, for the reader
    worker: str
    rtt_s: float
    rtt_p90_s: float
    rtt_min_s: float
    throughput_bytes_per_s: float
    samples: int = 0
    bulk_bytes: int = 0
    method: str = ""
