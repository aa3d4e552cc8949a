"""The GPU code path end to end on a real Vulkan device: Mesa's lavapipe, through llama.cpp's Vulkan backend.

    .venv/bin/python bench/gpu_offload.py          (~3 min with the Vulkan wheel built; +~9 min to build it)

Ships SmolLM2-135M Q4_1 with `--backend vulkan` to the local target and to an emulated SSH board
(this machine over real sshd, tests/boards), beside a CPU ship of the same file, and prints what
the plan placed and what llama.cpp reported running: backend, device, layers offloaded, device
memory, decode speed. A benchmark, not a CI test: the Vulkan build of llama-cpp-python takes ~9
minutes on 2 cores, and Debian 12's Vulkan headers (1.3.239) are too old for llama.cpp's Vulkan
backend (it uses VK_EXT_layer_settings), so the build needs newer headers: this script takes them
from Debian 13's libvulkan-dev (header-only, unpacked to /opt/vulkan-headers-1.4) and passes
them through EDGEDEPLOY_CMAKE_ARGS. lavapipe is a CPU-type Vulkan device, which ggml-vulkan skips
unless GGML_VK_VISIBLE_DEVICES names it: the script sets that for both targets. lavapipe runs
shaders on the CPU, so its decode is slow: the point is the placement, not the speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HEADERS = Path("/opt/vulkan-headers-1.4/usr/include")
TRIXIE_DEB = "http://deb.debian.org/debian/pool/main/v/vulkan-loader/libvulkan-dev_1.4.309.0-1_amd64.deb"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def vulkan_build_env() -> dict[str, str]:
    """apt's Vulkan tools, newer headers, lavapipe made visible to ggml."""
    need = [p for p in ("libvulkan-dev", "glslc", "mesa-vulkan-drivers", "vulkan-tools")
            if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if need:
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *need)
    if not (HEADERS / "vulkan" / "vulkan.hpp").exists():
        with tempfile.TemporaryDirectory() as tmp:
            sh("curl", "-sSf", "-o", f"{tmp}/h.deb", TRIXIE_DEB)
            sh("dpkg", "-x", f"{tmp}/h.deb", str(HEADERS.parent.parent))
    return {"EDGEDEPLOY_CMAKE_ARGS": f"-DVulkan_INCLUDE_DIR={HEADERS}", "GGML_VK_VISIBLE_DEVICES": "0"}


def ship(env: dict[str, str], target: list[str], model: Path, deploy: Path, backend: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "toolchain.cli", "ship", *target, "--model", str(model), "--deploy-dir", str(deploy),
            "--backend", backend, "--no-calibrate", "--budget", "10s", "--json"]
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    try:
        doc: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"ship {' '.join(target)} --backend {backend} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}") from None
    doc["_wall_s"] = time.monotonic() - t0
    doc["_exit"] = proc.returncode
    return doc


def ship_ssh(board: Any, env: dict[str, str], model: Path, deploy: Path) -> dict[str, Any]:
    """pipeline.ship in this process over real SSH to the emulated board (its ssh_config holds the key)."""
    import toolchain.transports.factory as factory
    from tests.shipkit import ship_request, ssh_spec
    from toolchain.deploy.pipeline import DeployOptions, DeployRequest
    from toolchain.plan.request import build_plan_request
    from toolchain.transports.ssh import SshTransport

    os.environ.update({k: v for k, v in env.items() if k.startswith(("EDGEDEPLOY_", "GGML_"))})
    factory.connect = lambda spec, accept_new_host_key=False: SshTransport(spec, ssh_config_path=str(board.ssh_config_path))  # type: ignore[assignment]
    req = build_plan_request(models=[str(model)], budget="10s", backend="vulkan")
    t0 = time.monotonic()
    shipped = ship_request(DeployRequest(ssh_spec(board), req, deploy_dir=str(deploy), options=DeployOptions(calibrate=False)))
    doc = dict(shipped.report)
    doc["_wall_s"], doc["_exit"] = time.monotonic() - t0, shipped.exit_code
    return doc


def row(where: str, backend: str, doc: dict[str, Any]) -> str:
    sel = (doc.get("plan") or {}).get("selected") or {}
    pl = sel.get("placement") or {}
    t = doc.get("telemetry") or {}
    check = next((c for c in (doc.get("verdict") or {}).get("checks", []) if c.get("name") == "placement"), {})
    return (f"{where:<14}{backend:<8}{pl.get('gpu_layers', 0):>3}/{pl.get('n_layer', 0):<4}{pl.get('device') or '-':<9}"
            f"{t.get('backend', '?'):<8}{t.get('device') or '-':<9}{t.get('gpu_layers_offloaded', 0):>3}/{t.get('gpu_layers_total', 0):<4}"
            f"{(t.get('device_memory_bytes') or 0) / 2**20:>8.1f}  {t.get('decode_tokens_per_s', 0):>7.2f}  "
            f"{'pass' if check.get('passed') else 'FAIL'}  {doc['_wall_s']:.0f} s")


def main() -> int:
    from tests.boards.sshd import SshBoard
    from tests.shipkit import host_board_dir
    from toolchain.models.catalog import load_catalog
    from toolchain.models.sources import obtain

    env = {**os.environ, **vulkan_build_env()}
    model = obtain(load_catalog()["smollm2-135m-instruct"], "Q4_1", offline=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-offload-") as tmp:
        base = Path(tmp)
        env["EDGEDEPLOY_HOME"] = str(base / "home")
        for backend in ("cpu", "vulkan"):
            rows.append(row("local", backend, ship(env, ["--target", "local"], model, base / f"local-{backend}", backend)))
        board = SshBoard(host_board_dir(base), env={"GGML_VK_VISIBLE_DEVICES": "0"}).start()
        try:
            rows.append(row("ssh board", "vulkan", ship_ssh(board, env, model, base / "board-vulkan")))
        finally:
            board.stop()
    print("\nwhere         backend  planned  device   ran     device   offload  dev MiB  tok/s    placement")
    for r in rows:
        print(r)
    print("\nplanned: layers the plan put on the device (of the model's); offload: llama.cpp's 'offloaded N/M layers' "
          "(the output layer counted); dev MiB: llama.cpp's buffers on the device")
    return 0


if __name__ == "__main__":
    sys.exit(main())
