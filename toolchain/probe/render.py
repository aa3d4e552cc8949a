"""Human view of HostFacts: a compact table and a one-line summary for bug reports."""

from __future__ import annotations

from rich.table import Table

from toolchain import ui
from toolchain.models import HostFacts
from toolchain.units import fmt_bytes, fmt_rate


def summary_line(f: HostFacts) -> str:
    board = f.board.model or f.board.android_model or f.cpu.model_name or "unknown board"
    feats = ",".join(f.cpu.features[:6]) or "-"
    return (f"{board} | {f.os.kind} {f.os.kernel or '?'} {f.os.arch or '?'} | {f.cpu.cores} cores ({feats}) | "
            f"RAM {fmt_bytes(f.memory.total_bytes)} avail {fmt_bytes(f.memory.available_bytes)} usable {fmt_bytes(f.memory.usable_bytes)} | "
            f"bw {fmt_rate(f.bandwidth.read_bytes_per_s)} | llama_cpp {f.runtime.llama_cpp or 'missing'}")


def render_facts(f: HostFacts) -> None:
    t = Table(title=f"probe: {f.target}", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("board", f.board.model or f.board.android_model or "?"),
        ("os", f"{f.os.kind} {f.os.distribution or ''} kernel {f.os.kernel or '?'} ({f.os.arch or '?'})"),
        ("cpu", f"{f.cpu.cores} cores, {f.cpu.model_name or '?'}; decode threads {f.cpu.recommended_threads}"),
        ("clusters", "; ".join(f"{c.cores}x {c.name}" + (f" @ {c.max_mhz:.0f} MHz" if c.max_mhz else "") for c in f.cpu.clusters) or "?"),
        ("features", " ".join(f.cpu.features) or "-"),
        ("memory", f"total {fmt_bytes(f.memory.total_bytes)}, available {fmt_bytes(f.memory.available_bytes)} "
                   f"({f.memory.available_source}), usable {fmt_bytes(f.memory.usable_bytes)} after {fmt_bytes(f.memory.reserve_bytes)} reserve"),
        ("bandwidth", f"{fmt_rate(f.bandwidth.read_bytes_per_s)} ({f.bandwidth.threads} thr), "
                      f"1 thr {fmt_rate(f.bandwidth.read_1t_bytes_per_s)}; {f.bandwidth.method}"),
        ("storage", f"{f.storage.path}: free {fmt_bytes(f.storage.free_bytes)}, read {fmt_rate(f.storage.read_bytes_per_s)}, "
                    f"{f.storage.kind or '?'} {f.storage.device or ''}"),
        ("accelerators", ", ".join(f"{a.name} ({a.llama_cpp_backend})" for a in f.accelerators) or "none found"),
        ("runtime", f"python {f.runtime.python or 'missing'}, llama_cpp {f.runtime.llama_cpp or 'missing'}"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    for u in f.unknown:
        t.add_row("unknown", f"{u.fact}: {u.reason}")
    ui.err.print(t)
    ui.err.print(f"summary: {summary_line(f)}", markup=False)
