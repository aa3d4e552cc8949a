"""One board alone vs a model split across boards with llama.cpp RPC, on emulated boards of this
machine's kind (tests/boards/cluster.py), side by side in one run.

    .venv/bin/python bench/split_cluster.py [--boards 2|3] [--limit-mib 360]   (~1.5 min; root)

Each board: its own network, mount, PID and UTS namespaces with a real sshd, a memory cgroup of
--limit-mib, and a link of 0.15 ms one way at 1 Gbit/s to the lab switch (this machine; a TUN
delay line, as this kernel has no netem), so board to board is 0.3 ms each way. At the default
limit SmolLM2-135M F16 does not fit one board at ctx 4096 and fits two (the budget is a loose 1 s:
the subject is the prediction, on a shared machine). Rows:

  alone   ship --target n0 --quant Q8_0: the largest quant that one board holds
  split   ship --target n0 --target n1 [...]: F16, too large for one board
  again   the same split once more: the GGUF is on the head already; what the workers are sent again
          (rpc-server's cache (-c) keeps tensors over 10 MiB by hash; these models' layer tensors are smaller)

For each: predicted tok/s (and interval), measured (median-based, and mean), each node's peak
memory (runner + its rpc-server on the head, rpc-server on a worker) against its planned share,
and the bytes each worker's link carried during the run (load: its tensors; decode: hidden states).
"""

from __future__ import annotations

import argparse
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

MODEL = "smollm2-135m-instruct"


def ship(env: dict[str, str], targets: list[str], *extra: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "toolchain.cli", "ship", *(x for t in targets for x in ("--target", t)), "--model", MODEL,
            "--ctx", "4096", "--budget", "1s", "--no-calibrate", "--json", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    try:
        doc: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"ship {' '.join(targets)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}") from None
    doc["_wall_s"], doc["_exit"] = time.monotonic() - t0, proc.returncode
    return doc


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def rows(name: str, doc: dict[str, Any]) -> list[str]:
    plan = doc.get("plan") or {}
    sel = plan.get("selected") or {}
    split = plan.get("split")
    pred = split or sel.get("predicted") or {}
    t = doc.get("telemetry") or {}
    p50 = t.get("decode_ms_p50") or 0
    measured = f"{1000 / p50 if p50 else 0:6.1f} ({t.get('decode_tokens_per_s', 0):5.1f})"
    head = (f"{name:<6} {sel.get('model', '?')} {sel.get('quant', '?'):<6} {pred.get('decode_tokens_per_s', 0):6.1f} "
            f"({pred.get('decode_tokens_per_s_low', 0):.1f}-{pred.get('decode_tokens_per_s_high', 0):.1f})  {measured}  "
            f"{'pass' if doc['_exit'] == 0 else 'exit ' + str(doc['_exit'])}  {doc['_wall_s']:.0f} s")
    out = [head]
    if doc.get("error"):
        out.append(f"         error: {doc['error']}")
    if split is None:
        out.append(f"         {doc.get('target')}: one board, peak {mib(t.get('peak_rss_bytes', 0))} MiB "
                   f"(predicted {mib(sel.get('predicted', {}).get('bench_rss_bytes') or 0)})")
        return out
    shares = {n["target"]: n for n in split["nodes"]}
    for n in doc.get("nodes", []):
        s = shares[n["target"]]
        link = (f", link {n['link_interface']}: {n['link_rx_bytes'] / 1e6:.1f} MB in, {n['link_tx_bytes'] / 1e6:.2f} MB out"
                if n["role"] == "worker" else "")
        out.append(f"         {n['target']:<3} {n['role']:<6} layers {s['layer_first']}-{s['layer_first'] + s['layer_count'] - 1}"
                   f"{' + output' if s['output_layer'] else '':<9} peak {mib(n['peak_memory_bytes'])} MiB of share "
                   f"{mib(n['share_memory_bytes'])} (usable {mib(n['usable_memory_bytes'])}){link}")
    out.append(f"         predicted per token: {split['compute_ms_per_token']:.1f} ms on the boards + {split['link_ms_per_token']:.2f} ms "
               f"on the links, {split['link_bytes_per_token']} B on the links; measured link: "
               f"{split['links'][0]['rtt_s'] * 1000:.2f} ms round trip, {split['links'][0]['throughput_bytes_per_s'] / 1e6:.0f} MB/s")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boards", type=int, default=2, choices=(2, 3))
    ap.add_argument("--limit-mib", type=int, default=360)
    args = ap.parse_args()
    from tests.boards.cluster import LINK_DELAY_MS, LINK_RATE_BIT_S, Cluster
    from toolchain.core.paths import cache_dir
    from toolchain.deploy import rpc
    from toolchain.deploy.provision import host_runtime
    from toolchain.models.catalog import load_catalog
    from toolchain.models.requantize import requantize
    from toolchain.models.sources import cached_path, obtain

    f16 = cached_path(MODEL, "F16")
    if not f16.exists():
        requantize(obtain(load_catalog()[MODEL], "Q4_1"), f16, "F16")
    t0 = time.monotonic()
    rpc.ensure_build(host_runtime(), print)
    build_s = time.monotonic() - t0
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="split-cluster-") as tmp, Cluster(args.boards, memory_limit_bytes=args.limit_mib << 20) as c:
        home = Path(tmp) / "home"
        c.write_ssh_config(home)
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "EDGEDEPLOY_SSH_PASSWORD")}
        env |= {"HOME": str(home), "EDGEDEPLOY_CACHE": str(cache_dir()), "EDGEDEPLOY_HOME": str(Path(tmp) / "state")}
        names = [b.name for b in c.boards]
        out += rows("alone", ship(env, names[:1], "--quant", "Q8_0"))
        split = ship(env, names, "--quant", "F16")
        out += rows("split", split)
        out += rows("again", ship(env, names, "--quant", "F16"))
        cpu = sum(b.link_cpu_s() for b in c.boards)
    print(f"\n{args.boards} boards of this machine's kind, {args.limit_mib} MiB each (memory cgroup), links {LINK_DELAY_MS} ms one way "
          f"at {LINK_RATE_BIT_S / 1e9:g} Gbit/s to the switch (TUN delay line; {cpu:.1f} s of its CPU); rpc-server build "
          f"{'reused' if build_s < 5 else f'{build_s:.0f} s'}; this machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("run    model quant       predicted tok/s    measured median (mean)  result  wall")
    for line in out:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
