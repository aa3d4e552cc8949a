"""Human view of HostFacts: a compact table and a one-line summary for bug reports."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from toolchain.cli import console as ui
from toolchain.core.nouns import HostFacts
from toolchain.core.units import fmt_bytes, fmt_rate


def summary_line(f: HostFacts) -> str:
    """One line with what a bug report needs: board, OS, CPU, memory, storage, accelerators, runtime."""
    board = f.board.model or f.board.android_model or f.cpu.model_name or "unknown board"
    soc = f" ({f.board.soc})" if f.board.soc and f.board.soc.lower() not in board.lower() else ""
    clusters = "+".join(f"{c.cores}x{c.name}" for c in f.cpu.clusters) or f"{f.cpu.cores} cores"
    usable = {a.name: a.llama_cpp_backend if a.llama_cpp_backend != "not usable by llama.cpp" else "-" for a in f.accelerators}
    accel = ",".join(f"{name}[{backend}]" for name, backend in usable.items()) or "none"
    parts = [
        f"{board}{soc}",
        f"{f.os.distribution or f.os.kind} kernel {f.os.kernel or '?'} {f.os.arch or '?'}" + (f" {f.os.libc}" if f.os.libc else ""),
        f"{clusters} threads {f.cpu.recommended_threads} isa {','.join(f.cpu.isa) or '-'}",
        f"RAM {fmt_bytes(f.memory.total_bytes)} avail {fmt_bytes(f.memory.available_bytes)} usable {fmt_bytes(f.memory.usable_bytes)}",
        f"bw {fmt_rate(f.bandwidth.read_bytes_per_s)}",
        f"disk {f.storage.kind or '?'} {f.storage.fs_type or '?'} free {fmt_bytes(f.storage.free_bytes)} read {fmt_rate(f.storage.read_bytes_per_s)}",
        f"accel {accel}",
        f"python {f.runtime.python or '-'} llama_cpp {f.runtime.llama_cpp or '-'}"
        + (f" ({','.join(f.runtime.llama_cpp_backends)})" if f.runtime.llama_cpp_backends else ""),
    ]
    if f.os.arch_note:
        parts.append("32-bit software on 64-bit hardware")
    return " | ".join(parts)


def _rows(f: HostFacts) -> list[tuple[str, str]]:
    b, o, c, m, s = f.board, f.os, f.cpu, f.memory, f.storage
    ident = " / ".join(x for x in (b.soc, b.android_hardware, b.jetson_l4t and f"L4T {b.jetson_l4t}",
                                   b.nominal_ram_bytes and f"sold as {fmt_bytes(b.nominal_ram_bytes)}") if x)
    rows = [
        ("board", (b.model or b.android_model or "?") + (f"  ({ident})" if ident else "")),
        ("os", f"{o.distribution or o.kind}, kernel {o.kernel or '?'} {o.arch or '?'}, {o.libc or 'libc ?'}"
               + (f", userland {o.userland_bits}-bit" if o.userland_bits and o.userland_bits != o.kernel_bits else "")),
    ]
    if o.arch_note:
        rows.append(("note", o.arch_note))
    rows += [
        ("cpu", f"{c.cores} cores{', ' + c.model_name if c.model_name else ''}; decode threads {c.recommended_threads}"),
        ("clusters", "; ".join(f"{cl.cores}x {cl.name}" + (f" @ {cl.max_mhz:.0f} MHz" if cl.max_mhz else "") + (" (little)" if cl.little else "")
                               for cl in c.clusters) or "?"),
        ("isa", " ".join(c.isa) or "-"),
        ("memory", f"total {fmt_bytes(m.total_bytes)}, available {fmt_bytes(m.available_bytes)} ({m.available_source}), "
                   f"usable {fmt_bytes(m.usable_bytes)}"),
        ("  basis", m.reserve_reason),
        ("swap", f"{fmt_bytes(m.swap_total_bytes)}" + (f", zram {fmt_bytes(m.zram_bytes)}" if m.zram_bytes else "")
                 + (f"; cgroup {m.cgroup_path} limit {fmt_bytes(m.cgroup_limit_bytes)}" if m.cgroup_limit_bytes else "")),
        ("bandwidth", f"{fmt_rate(f.bandwidth.read_bytes_per_s)} at {f.bandwidth.threads or '?'} threads, "
                      f"{fmt_rate(f.bandwidth.read_1t_bytes_per_s)} at 1; {f.bandwidth.method}"),
        ("storage", f"{s.path}: free {fmt_bytes(s.free_bytes)}, {s.fs_type or '?'} on {s.kind or '?'} {s.disk or s.device or ''}"
                    + (f" ({s.model})" if s.model else "")),
        ("  read", f"{fmt_rate(s.read_bytes_per_s)}; {s.read_method}"),
        ("accelerators", "; ".join(f"{a.name} -> {a.llama_cpp_backend}" + (" (shared memory)" if a.shared_memory else "")
                                   for a in f.accelerators) or "none found"),
        ("thermal", ", ".join(f"{k} {v:.0f}°C" for k, v in list(f.thermal.temperatures_c.items())[:6]) or "?"),
    ]
    if f.thermal.throttled is not None:
        rows.append(("throttled", f"{f.thermal.throttled}: {', '.join(f.thermal.throttled_flags) or 'never'}"))
    if f.thermal.power_sensors:
        rows.append(("power", ", ".join(f.thermal.power_sensors[:6]) + (" ..." if len(f.thermal.power_sensors) > 6 else "")))
    rows.append(("runtime", f"python {f.runtime.python or 'missing'}, llama_cpp {f.runtime.llama_cpp or 'missing'}"
                            + (f" [{', '.join(f.runtime.llama_cpp_backends)}]" if f.runtime.llama_cpp_backends else "")
                            + (f" ({f.runtime.llama_cpp_checked})" if f.runtime.llama_cpp_checked else "")))
    gpus = [d for d in f.runtime.llama_cpp_devices if d.type != "cpu"]
    if gpus:  # what llama.cpp itself can offload to, from its backend registry
        rows.append(("llama.cpp devices", "; ".join(f"{d.name} {d.description} ({d.type}, {d.memory_free_bytes / 2**30:.1f} GiB free)"
                                                      for d in gpus[:4])))
    return rows


def render_facts(f: HostFacts) -> None:
    t = Table(title=f"probe: {f.target} ({f.probe_s:.2f} s{', quick' if f.quick else ''})", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in _rows(f):
        t.add_row(k, escape(v))  # values hold brackets ("[cpu]") that rich would read as markup
    for u in f.unknown:
        t.add_row("unknown", escape(f"{u.fact}: {u.reason}"))
    ui.err.print(t)
    ui.err.print(f"summary: {summary_line(f)}", markup=False, soft_wrap=True)
