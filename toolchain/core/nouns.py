"""The nouns that flow between stages (see DESIGN.md: TargetSpec -> HostFacts -> Plan -> ...).

Frozen dataclasses with units in field names. Every one serialises with `serde.to_json_dict`
and loads back with `serde.from_dict`. The JSON keys are a public contract: add, never rename.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# --- target ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """How to reach a target and where to deploy on it (from targets/*.yaml or a target string)."""

    name: str
    kind: str  # local | ssh | adb | serial
    host: str | None = None
    user: str | None = None
    port: int | None = None
    adb_serial: str | None = None
    device: str | None = None  # serial console path
    baud: int | None = None
    deploy_dir: str | None = None  # None: the kind's default (see shipper.default_deploy_root)
    python: str | None = None  # interpreter on the target; None: python3
    board: str | None = None  # id in targets/boards/, used when a measurement is missing
    host_key: str = "strict"  # strict | accept-new
    login_user: str | None = None  # serial console login
    login_password_env: str | None = None
    source: str = ""  # where the definition came from (file path or "command line")


# --- probe ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unknown:
    """A fact the probe could not establish, and why (never a guess presented as fact)."""

    fact: str
    reason: str


@dataclass(frozen=True)
class BoardFacts:
    model: str | None = None
    compatible: list[str] = field(default_factory=list)
    dmi_product: str | None = None
    android_model: str | None = None
    android_soc: str | None = None
    android_platform: str | None = None
    mac_model: str | None = None
    dmi_vendor: str | None = None
    android_hardware: str | None = None  # ro.hardware (e.g. "shiba", "qcom")
    soc: str | None = None  # ro.soc.model, else the DT's SoC compatible, else cpuinfo Hardware
    revision: str | None = None  # Raspberry Pi revision code from /proc/cpuinfo (e.g. "c03115")
    nominal_ram_bytes: int | None = None  # RAM as sold (Pi revision code, ro.boot.hardware.ddr): MemTotal is less
    jetson_l4t: str | None = None  # /etc/nv_tegra_release, e.g. "R36.4.0"


@dataclass(frozen=True)
class OsFacts:
    kind: str  # linux | android | darwin | unknown
    kernel: str | None = None
    distribution: str | None = None
    arch: str | None = None  # kernel machine (uname -m): may be 32-bit on 64-bit hardware
    libc: str | None = None  # "glibc 2.36", "musl", "bionic"
    distribution_id: str | None = None  # os-release ID (debian, ubuntu, ...), or android / macos
    kernel_bits: int | None = None  # from uname -m
    userland_bits: int | None = None  # getconf LONG_BIT: a 64-bit kernel can run a 32-bit userland
    arch_note: str | None = None  # e.g. a 32-bit kernel on 64-bit hardware


@dataclass(frozen=True)
class CpuCluster:
    name: str
    cores: int
    cpu_ids: list[int] = field(default_factory=list)
    max_mhz: float | None = None
    part: str | None = None  # ARM "CPU part" (0xd08) or x86 model name
    capacity: int | None = None  # /sys/devices/system/cpu/cpuN/cpu_capacity (EAS), 1024 = biggest
    little: bool = False  # an efficiency cluster, left out of decode threads


@dataclass(frozen=True)
class CpuFacts:
    arch: str | None
    cores: int
    features: list[str] = field(default_factory=list)
    model_name: str | None = None
    clusters: list[CpuCluster] = field(default_factory=list)
    recommended_threads: int = 1
    isa: list[str] = field(default_factory=list)  # llama.cpp's names: neon, dotprod, i8mm, sve, avx2, avx512f, amx_int8...
    hardware_64bit: bool | None = None  # the CPU can run 64-bit code (None: cannot tell)
    decode_cpu_ids: list[int] = field(default_factory=list)  # the cores recommended_threads counts
    threads_basis: str = ""


@dataclass(frozen=True)
class MemoryFacts:
    total_bytes: int
    available_bytes: int
    usable_bytes: int
    reserve_bytes: int = 0
    reserve_reason: str = ""
    available_source: str = "MemAvailable"
    swap_total_bytes: int = 0
    zram_bytes: int = 0
    cgroup_limit_bytes: int | None = None
    swap_free_bytes: int = 0
    cgroup_usage_bytes: int | None = None  # what the limiting cgroup already uses
    cgroup_path: str | None = None  # the limited cgroup (self or ancestor) with least headroom, "v1:/path" or "v2:/path"
    oom_score_adj: int | None = None  # of the deploy user's shell: Android's lmkd kills by it
    lmk_minfree_bytes: int | None = None  # Android: free memory lmkd keeps before it kills at our oom_score_adj


@dataclass(frozen=True)
class BandwidthFacts:
    read_bytes_per_s: float | None = None  # at recommended threads
    read_1t_bytes_per_s: float | None = None
    threads: int | None = None
    method: str = "not measured"
    buffer_bytes: int | None = None
    cpu_ids: list[int] = field(default_factory=list)  # cores the readers were pinned to (empty: not pinned)


@dataclass(frozen=True)
class StorageFacts:
    path: str
    free_bytes: int | None = None
    read_bytes_per_s: float | None = None
    fs_type: str | None = None
    device: str | None = None
    kind: str | None = None  # sd | emmc | mmc | nvme | usb | ufs | virtio | ssd | hdd | ram | network; None: unknown
    read_method: str = "not measured"
    mount: str | None = None
    disk: str | None = None  # whole block device under the filesystem, e.g. mmcblk0
    kind_basis: str = ""  # the sysfs evidence for kind
    model: str | None = None
    read_test_bytes: int | None = None


@dataclass(frozen=True)
class Accelerator:
    kind: str  # nvidia-gpu | vulkan | mali | adreno | apple-gpu | npu ...
    name: str
    memory_bytes: int | None = None
    shared_memory: bool = False
    llama_cpp_backend: str = "not usable by llama.cpp"
    driver: str | None = None
    source: str = ""  # the evidence: command or path
    note: str = ""


@dataclass(frozen=True)
class ThermalFacts:
    temperatures_c: dict[str, float] = field(default_factory=dict)
    throttled: str | None = None
    power_sensors: list[str] = field(default_factory=list)
    throttled_flags: list[str] = field(default_factory=list)  # vcgencmd get_throttled bits, decoded
    throttled_now: bool | None = None
    power_w: dict[str, float] = field(default_factory=dict)  # rails read once (tegrastats), watts


@dataclass(frozen=True)
class RuntimeDevice:
    """A device in the board's llama.cpp backend registry (what llama-cpp-python really loads)."""

    name: str  # llama.cpp's device name: CPU, CUDA0, Vulkan0, MTL0, GPUOpenCL
    backend: str  # the registry's backend name: CPU, CUDA, Vulkan, Metal, OpenCL
    description: str = ""  # e.g. "NVIDIA Jetson Orin Nano", "llvmpipe (LLVM 15.0.6, 256 bits)"
    type: str = "cpu"  # cpu | gpu | igpu | accel
    memory_free_bytes: int = 0
    memory_total_bytes: int = 0


@dataclass(frozen=True)
class RuntimeFacts:
    python: str | None = None
    python_path: str | None = None
    llama_cpp: str | None = None
    llama_cpp_backends: list[str] = field(default_factory=list)
    pip: bool = False
    python_bits: int | None = None
    llama_cpp_checked: str = ""  # "imported" or "package metadata (not imported: --quick)"
    llama_cpp_system_info: str | None = None
    gpu_offload: bool | None = None
    llama_cpp_error: str | None = None
    llama_cpp_devices: list[RuntimeDevice] = field(default_factory=list)  # empty: not imported (quick probe)


@dataclass(frozen=True)
class HostFacts:
    target: str
    board: BoardFacts
    os: OsFacts
    cpu: CpuFacts
    memory: MemoryFacts
    storage: StorageFacts
    bandwidth: BandwidthFacts = field(default_factory=BandwidthFacts)
    accelerators: list[Accelerator] = field(default_factory=list)
    thermal: ThermalFacts = field(default_factory=ThermalFacts)
    runtime: RuntimeFacts = field(default_factory=RuntimeFacts)
    unknown: list[Unknown] = field(default_factory=list)
    probe_s: float = 0.0
    quick: bool = False  # measurements (bandwidth, storage speed, vulkaninfo, llama_cpp import) skipped
    round_trips: int = 1


# --- plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    decode_ms_per_token: float
    ttft_ms: float | None = None
    source: str = ""  # what the user typed, e.g. "120ms"


@dataclass(frozen=True)
class Prediction:
    decode_tokens_per_s: float
    decode_ms_per_token: float
    prefill_tokens_per_s: float
    peak_memory_bytes: int
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    overhead_bytes: int = 0
    bytes_per_token: int = 0
    streamed_bytes_per_token: int = 0
    # peak_memory_bytes budgets the full context with a full 512-token batch (it decides fits);
    # bench_rss_bytes is the VmHWM expected from the runner's bench (short prompts, shallow
    # context): what a measurement of the bench is compared with.
    bench_rss_bytes: int = 0
    repack_bytes: int = 0  # CPU_REPACK copies of weights (anonymous memory beside the mmapped file)
    kernel_family: str = ""  # ggml type of the bulk of the weights, e.g. Q4_K
    efficiency: float = 0.0  # of bandwidth, for this kernel family on this device
    per_token_overhead_s: float = 0.0
    bytes_by_type: dict[str, int] = field(default_factory=dict)  # bytes_per_token split by ggml type
    n_layer: int = 0  # of the model: the fixed per-token cost is paid per layer
    rows_per_token: int = 0  # matrix rows its matmuls produce per token (a cost per row, beyond the bytes)
    # How sure: the decode rate is expected within [low, high] (the 10th-90th percentile of what
    # the basis was fitted on, widened where it rests on few measurements); 0: not stated.
    decode_tokens_per_s_low: float = 0.0
    decode_tokens_per_s_high: float = 0.0
    # placement: repeating layers offloaded (the output layer goes with the last one), and what the
    # accelerator holds; peak_memory_bytes is then what stays in host RAM (unified: all of it)
    gpu_layers: int = 0
    device_memory_bytes: int = 0


@dataclass(frozen=True)
class Candidate:
    model: str
    quant: str
    fits: bool
    reasons: list[str]
    predicted: Prediction | None
    params: int = 0
    file_bytes: int = 0
    file_bytes_estimated: bool = False
    available: bool = False
    ctx: int = 0
    kv_type: str = "f16"
    mode: str = "resident"
    fixes: list[str] = field(default_factory=list)  # what would make it fit, in words


@dataclass(frozen=True)
class Placement:
    """Where the model runs: decided by the plan (plan/placement.py), applied by the runner."""

    backend: str = "cpu"
    gpu_layers: int = 0  # repeating layers on the accelerator; == n_layer: all, the output layer too
    n_layer: int = 0
    device: str = ""  # llama.cpp's device name the probe found (Vulkan0, CUDA0), "" when not probed
    device_memory_bytes: int = 0  # predicted use of the accelerator's memory
    device_budget_bytes: int | None = None  # what it has free (None: unified memory, the host's)
    kv_on_device: bool = False
    flash_attn: bool = False
    reason: str = ""

    @property
    def offloaded(self) -> bool:
        return self.backend != "cpu" and self.gpu_layers > 0

    def n_gpu_layers(self) -> int:
        """llama.cpp's n_gpu_layers: counted with the output layer, so all is n_layer + 1."""
        if not self.offloaded:
            return 0
        return self.gpu_layers + 1 if self.gpu_layers >= self.n_layer else self.gpu_layers


@dataclass(frozen=True)
class Selected:
    model: str
    quant: str
    params: int
    file_bytes: int
    ctx: int
    kv_type: str
    threads: int
    mode: str  # resident | stream
    predicted: Prediction
    flash_attn: bool = False
    use_mmap: bool = True
    gguf_path: str | None = None
    notes: list[str] = field(default_factory=list)
    placement: Placement = field(default_factory=Placement)


@dataclass(frozen=True)
class Basis:
    usable_memory_bytes: int
    bandwidth_bytes_per_s: float
    efficiency: float
    bandwidth_source: str = ""
    efficiency_source: str = ""
    per_token_overhead_s: float = 0.0
    compute_flops_per_s: float = 0.0
    storage_read_bytes_per_s: float | None = None
    backend: str = "cpu"
    device_class: str = ""
    memory_offset_bytes: int = 0  # fitted from this device's measured peaks (0: none yet)
    per_layer_overhead_s: float = 0.0
    # what the speed rests on: "calibrated" (this device's first-contact benchmark and runs),
    # "measured" (shipped runs only) or "class defaults" (a device never measured: a guess)
    confidence: str = "class defaults"


@dataclass(frozen=True)
class Plan:
    selected: Selected | None
    candidates: list[Candidate]
    basis: Basis
    budget: Budget
    target: str = ""
    nearest_miss: str | None = None
    # a group of targets (plan --target A --target B): the model split across them (None: one
    # board), and why it is split or stays on one board, in words
    split: SplitPlacement | None = None
    group_reason: str = ""


# --- package, ship, run ---------------------------------------------------------------------


@dataclass(frozen=True)
class BundleFile:
    path: str  # relative to the bundle root
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Bundle:
    root: str
    release_id: str
    model_file: str  # relative path of the GGUF inside the bundle
    model_sha256: str
    files: list[BundleFile]


@dataclass(frozen=True)
class Release:
    id: str
    deploy_root: str
    path: str
    model_path: str
    model_sha256: str
    model_bytes_sent: int
    model_already_present: bool
    activated: bool = False
    previous: str | None = None


@dataclass(frozen=True)
class Telemetry:
    """What the runner measured on the device (never computed on the host)."""

    load_s: float
    ttft_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    decode_ms_p50: float
    decode_ms_p90: float
    peak_rss_bytes: int
    llama_cpp: str
    threads: int
    ctx: int
    model_sha256: str
    decode_ms_p99: float = 0.0
    prompt_tokens: int = 0
    decode_tokens: int = 0
    temperature_before_c: float | None = None
    temperature_after_c: float | None = None
    # what else ran on the device during the timed part (older runners: unknown)
    bench_wall_s: float = 0.0
    other_cpu_s: float | None = None
    steal_s: float | None = None
    # what llama.cpp itself reported at load (its log): the backend and device the layers went to
    backend: str = "cpu"
    device: str = ""
    gpu_layers_offloaded: int = 0  # llama.cpp's "offloaded N/M layers" (N counts the output layer)
    gpu_layers_total: int = 0
    device_memory_bytes: int = 0  # model + KV + compute buffers on non-CPU devices
    extra: dict[str, Any] = field(default_factory=dict)  # throttled_during and the rest of the runner's fields

    @property
    def median_decode_tokens_per_s(self) -> float:
        """The robust rate: 1000 / p50 (a few stalls from other work move the mean, not this)."""
        return 1000.0 / self.decode_ms_p50 if self.decode_ms_p50 > 0 else self.decode_tokens_per_s

    def _throttled_now(self) -> bool:
        bits = self.extra.get("throttled_during")
        return isinstance(bits, int) and not isinstance(bits, bool) and bits & 0xF != 0  # vcgencmd's "now" bits, not "since boot"

    def busy_slowdown(self) -> float:
        """How much slower the other work could have made the timed part: 1 + the cores' worth of
        CPU it and the hypervisor took (a decode thread sharing its core runs at most that slower)."""
        if self.bench_wall_s <= 0:
            return 1.0
        taken = (self.other_cpu_s or 0.0) + (self.steal_s or 0.0)
        throttled = 0.5 if self._throttled_now() else 0.0  # capped clocks: up to ~1.5x
        return 1.0 + min(2.0, taken / self.bench_wall_s + throttled)

    def busy(self) -> str | None:
        """Why the measurement is not of this model alone, in words; None when the device was quiet."""
        if self.bench_wall_s <= 0:
            return None
        why = []
        if self.other_cpu_s is not None and self.other_cpu_s / self.bench_wall_s > BUSY_OTHER_CPU_SHARE:
            why.append(f"other processes used {self.other_cpu_s / self.bench_wall_s:.0%} of a core")
        if self.steal_s is not None and self.steal_s / self.bench_wall_s > BUSY_STEAL_SHARE:
            why.append(f"the hypervisor took {self.steal_s / self.bench_wall_s:.0%} of a core")
        if self._throttled_now():
            why.append(f"the board was throttled (get_throttled 0x{self.extra['throttled_during']:x})")
        return "; ".join(why) or None


# During a bench, other processes' CPU time above a quarter of one core (or steal above 5 %)
# slows a bandwidth-bound decode measurably: such a measurement says "the board was busy".
BUSY_OTHER_CPU_SHARE, BUSY_STEAL_SHARE = 0.25, 0.05


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    observed: float | str | None
    limit: float | str | None
    detail: str = ""
    severity: str = "error"  # error: fails the verdict; warning: reported only


@dataclass(frozen=True)
class Verdict:
    passed: bool
    checks: list[Check]


# --- a model split across boards (llama.cpp's RPC backend) ------------------------------------


@dataclass(frozen=True)
class LinkFacts:
    """The network from a head to a worker, measured by the boards' own python (probe/link.py):
    what each token's hop across it costs."""

    head: str  # target names
    worker: str
    address: str  # the worker's address the head reached: rpc-server binds to it and nothing else
    rtt_s: float  # median round trip of a small request and its reply
    rtt_p90_s: float
    rtt_min_s: float
    throughput_bytes_per_s: float  # head -> worker, a few MB in one TCP stream
    samples: int = 0  # round trips timed
    bulk_bytes: int = 0
    method: str = ""
    measured_at: str = ""  # ISO 8601, UTC
    head_fingerprint: str = ""  # the devices (calibration.fingerprint) the measurement is stored under
    worker_fingerprint: str = ""


@dataclass(frozen=True)
class NodeShare:
    """One board's part of a split model (plan/split.py)."""

    target: str
    role: str  # head | worker
    layer_first: int  # its repeating layers are [layer_first, layer_first + layer_count)
    layer_count: int
    output_layer: bool = False  # the head: token embeddings, the output layer, and the bench
    address: str = ""  # a worker's address for the head's --rpc (the port is chosen at ship)
    threads: int = 1
    memory_bytes: int = 0  # what it must hold: its weights, its KV, a compute buffer, the runtime
    usable_memory_bytes: int = 0
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    runtime_bytes: int = 0
    read_bytes_per_token: int = 0
    read_bytes_per_s: float = 0.0  # what its bytes are predicted at (bandwidth x efficiency)
    decode_ms_per_token: float = 0.0  # its layers' part of a token, its fixed costs included
    link_ms_per_token: float = 0.0  # a worker's hop: round trips plus bytes each way
    link_bytes_per_token: int = 0  # both ways
    confidence: str = ""  # what its speed rests on (Basis.confidence)


@dataclass(frozen=True)
class NodeTelemetry:
    """One board of a split run, measured (deploy/group.py): its peak memory against its share,
    and the bytes its link carried during the run."""

    target: str
    role: str  # head | worker
    layer_count: int
    endpoint: str = ""  # the rpc-server the head's llama.cpp used on it (host:port)
    peak_memory_bytes: int = 0  # a worker: rpc-server's VmHWM; the head: the runner's plus its own rpc-server's
    share_memory_bytes: int = 0  # what the plan gave it (NodeShare.memory_bytes)
    usable_memory_bytes: int = 0
    link_interface: str = ""  # a worker's interface holding the address the head uses
    link_rx_bytes: int = 0  # received by the worker during the run (tensors at load, hidden states)
    link_tx_bytes: int = 0  # sent by the worker (its outputs back to the head)


@dataclass(frozen=True)
class SplitPlacement:
    """A model's layers across boards joined by llama.cpp's RPC backend (plan/split.py).

    nodes are in pipeline order, which is llama.cpp's device order: the workers as --rpc lists
    them, then the head (its layers last, then the output layer). tensor_split holds llama.cpp's
    slots per device in that order (the head's count + 1: the output layer is a slot), and
    n_gpu_layers = n_layer + 1 puts every slot on the listed devices."""

    nodes: list[NodeShare]
    links: list[LinkFacts]
    n_layer: int
    compute_ms_per_token: float
    link_ms_per_token: float
    link_round_trips_per_token: int
    link_bytes_per_token: int
    decode_ms_per_token: float
    decode_tokens_per_s: float
    decode_tokens_per_s_low: float = 0.0
    decode_tokens_per_s_high: float = 0.0
    tensor_split: list[int] = field(default_factory=list)
    n_gpu_layers: int = 0
    reason: str = ""
