"""Where a model's layers run: the accelerator, the CPU, or split between them (pure).

llama.cpp offloads whole repeating layers (n_gpu_layers) and the output layer with the last one.
On a unified-memory device (Jetson, Apple, DGX Spark, Ryzen AI Max) the GPU reads the same RAM
the host plan already sized, so every layer goes; a discrete GPU holds only what its own free
memory takes, and the rest stays in host RAM and runs on the CPU. A split token runs both sides
one after the other: each side's bytes at its own read rate, and both sides' fixed per-token costs
(two graphs, a copy of the activations at the boundary), so it is slower than the layers' share of
either side alone would suggest.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.core.nouns import Placement
from toolchain.core.units import fmt_bytes

# llama.cpp has flash-attention kernels for decode on these (OpenCL's cover few types: off there).
FLASH_ATTN_BACKENDS = frozenset({"cpu", "cuda", "metal", "vulkan"})
DEVICE_HEADROOM = 0.95  # of the free device memory: the driver and other contexts take some as it loads


@dataclass(frozen=True)
class DeviceMemory:
    """What the accelerator offers a plan: its free memory (None: unified, the host's RAM) and name."""

    budget_bytes: int | None
    device: str = ""
    source: str = ""


def layer_share(weights_bytes: int, n_layer: int) -> float:
    """Bytes of one offloadable layer: the weights over the repeating layers and the output layer
    (token embeddings stay on the host, the output head is about one layer's worth in small models)."""
    return weights_bytes / max(1, n_layer + 1)


def device_bytes(layers: int, n_layer: int, weights_bytes: int, kv_bytes: int, compute_bytes: int) -> int:
    """Device memory for `layers` offloaded: their weights (the output layer with the last), their
    part of the KV cache, and the device's compute buffer."""
    if layers <= 0:
        return 0
    share = layer_share(weights_bytes, n_layer)
    on = layers + (1 if layers >= n_layer else 0)
    return int(share * on + kv_bytes * min(layers, n_layer) / max(1, n_layer) + compute_bytes)


def place(backend: str, n_layer: int, weights_bytes: int, kv_bytes: int, compute_bytes: int, mem: DeviceMemory,
          requested: int | None = None, flash_attn: bool = False) -> Placement | str:
    """The placement, or why the accelerator holds nothing of this model (a reason in words)."""
    fa = flash_attn and backend in FLASH_ATTN_BACKENDS
    if backend == "cpu" or (requested == 0):
        why = "--gpu-layers 0: every layer on the CPU" if backend != "cpu" else "the CPU backend"
        return Placement(backend="cpu", gpu_layers=0, n_layer=n_layer, flash_attn=fa, reason=why)
    if requested is not None and requested > n_layer:
        return f"--gpu-layers {requested} is more than its {n_layer} layers"
    dev = mem.device or backend
    if mem.budget_bytes is None:
        layers = n_layer if requested is None else requested
        need = device_bytes(layers, n_layer, weights_bytes, kv_bytes, compute_bytes)
        why = (f"unified memory: {dev} reads the host's RAM, so all {n_layer} layers and the output go to it"
               if layers == n_layer else f"--gpu-layers {layers} of {n_layer} on {dev} (unified memory)")
        return Placement(backend, layers, n_layer, mem.device, need, None, kv_on_device=layers > 0, flash_attn=fa, reason=why)
    room = int(mem.budget_bytes * DEVICE_HEADROOM)
    if requested is not None:
        need = device_bytes(requested, n_layer, weights_bytes, kv_bytes, compute_bytes)
        if need > room:
            return (f"--gpu-layers {requested} needs {fmt_bytes(need)} on {dev}, which has {fmt_bytes(mem.budget_bytes)} free"
                    f"{f' ({mem.source})' if mem.source else ''}")
        layers = requested
    else:
        layers = 0
        lo, hi = 0, n_layer  # device_bytes grows with layers: the most that fit, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if device_bytes(mid, n_layer, weights_bytes, kv_bytes, compute_bytes) <= room:
                lo = mid
            else:
                hi = mid - 1
        layers = lo
    need = device_bytes(layers, n_layer, weights_bytes, kv_bytes, compute_bytes)
    if layers == 0:
        one = device_bytes(1, n_layer, weights_bytes, kv_bytes, compute_bytes)
        return (f"{dev} has {fmt_bytes(mem.budget_bytes)} free{f' ({mem.source})' if mem.source else ''}: "
                f"not one layer fits (one layer with the compute buffer needs {fmt_bytes(one)})")
    if layers == n_layer:
        why = f"all {n_layer} layers and the output on {dev}: {fmt_bytes(need)} of its {fmt_bytes(mem.budget_bytes)} free"
    else:
        why = (f"{layers} of {n_layer} layers on {dev} ({fmt_bytes(need)} of its {fmt_bytes(mem.budget_bytes)} free holds "
               f"no more); the other {n_layer - layers} and the output run on the CPU at its read rate, and each token pays "
               "both sides' fixed costs: slower than all on either side would be per layer")
    return Placement(backend, layers, n_layer, mem.device, need, mem.budget_bytes, kv_on_device=True, flash_attn=fa, reason=why)


def split_seconds(p: Placement, device_s: float, device_fixed_s: float, host_s: float, host_fixed_s: float) -> float:
    """Decode seconds per token of a placement, from each side's time for the whole model (and the
    fixed part of it): a split pays each side's bytes in proportion and both fixed costs."""
    if not p.offloaded:
        return host_s
    if p.gpu_layers >= p.n_layer:
        return device_s
    f = p.gpu_layers / max(1, p.n_layer + 1)  # the output layer stays on the host with a partial offload
    return f * (device_s - device_fixed_s) + (1.0 - f) * (host_s - host_fixed_s) + device_fixed_s + host_fixed_s
