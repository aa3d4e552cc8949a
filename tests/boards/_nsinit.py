"""Runs first inside the board's namespaces: lays the overlay, then execs the real command.

Usage: python -I -S _nsinit.py BOARD_DIR -- ARGV...   (built by overlay.namespace_argv)

Stdlib only and run with -I -S so that it stays cheap (~20 ms): the adb rig pays it per command.
Rules for each entry under BOARD_DIR/root/ (its path there is the absolute path it emulates):
  * the path exists on this machine          -> read-only bind mount of the entry over it;
  * it is new under /proc (e.g. device-tree) -> /proc becomes a tmpfs of links into a private
    procfs (needs the new PID namespace, so pid dirs are few and can be linked in advance);
  * it is new elsewhere under /sys           -> a read-only tmpfs replaces its nearest existing
    ancestor, filled from the board (the host's entries there are hidden, as on the board).
Anything else (a new path under /etc, say) is refused rather than leaked into the host.
"""

from __future__ import annotations

import ctypes
import os
import re
import socket
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
PROC_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC
# Pid dirs are pre-linked 1..N; kernels >= 6.14 let us cap the namespace's pid_max at N.
PIDS_LINKED = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


class OverlayError(Exception):
    pass


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], flags, enc[3]) != 0:
        err = ctypes.get_errno()
        raise OverlayError(f"mount {fstype or 'bind'} {source} on {target}: {os.strerror(err)}")


def bind_readonly(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND)
    mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def board_entries(root: str) -> dict[str, str]:
    """Emulated absolute path -> source, for every file and symlink under root/."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        # os.walk lists a symlink to a directory among dirnames; it is a leaf here.
        leaves = filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in leaves:
            src = os.path.join(dirpath, name)
            out["/" + os.path.relpath(src, root)] = src
    return out


def copy_entry(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    os.chmod(dst, os.stat(src).st_mode & 0o777)


def nearest_existing(path: str) -> str:
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    return path


def plan(entries: dict[str, str]) -> tuple[bool, list[str], dict[str, str]]:
    """(emulate /proc?, tmpfs dirs to replace, bind mounts target->source)."""
    emulate_proc = any(t.startswith("/proc/") and not os.path.lexists(t) for t in entries)
    tmpfs: set[str] = set()
    binds: dict[str, str] = {}
    for target, src in entries.items():
        if emulate_proc and target.startswith("/proc/"):
            continue
        if os.path.lexists(target) and not os.path.isdir(target) and not os.path.islink(src):
            binds[target] = src
            continue
        ancestor = nearest_existing(os.path.dirname(target) if os.path.lexists(target) else target)
        if not ancestor.startswith("/sys/"):
            raise OverlayError(f"cannot emulate {target}: only /proc and /sys may gain new paths")
        tmpfs.add(ancestor)
    # Keep only outermost tmpfs dirs; anything inside them is copied, not bound.
    outer = sorted(d for d in tmpfs if not any(d.startswith(o + "/") for o in tmpfs))
    binds = {t: s for t, s in binds.items() if not any(t.startswith(o + "/") for o in outer)}
    return emulate_proc, outer, binds


def limit_pids(host_proc: str) -> int:
    """Number of pid links to create: the namespace's pid_max, capped where the kernel allows."""
    pid_max_file = f"{host_proc}/sys/kernel/pid_max"
    major, minor = (int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if (major, minor) >= (6, 14):  # pid_max is per PID namespace; before that it is global
        with open(pid_max_file, "w") as f:
            f.write(str(PIDS_LINKED))
    with open(pid_max_file) as f:
        return min(int(f.read()), 32768)


def setup_proc(entries: dict[str, str], emulate: bool) -> None:
    if not emulate:
        mount("proc", "/proc", "proc", PROC_FLAGS)  # show this PID namespace, not the host's
        return
    mount("board-proc", "/proc", "tmpfs", PROC_FLAGS, "mode=0555")
    os.mkdir("/proc/.host")
    mount("proc", "/proc/.host", "proc", PROC_FLAGS)
    own = {t.split("/")[2] for t in entries if t.startswith("/proc/")}
    for name in os.listdir("/proc/.host"):
        if not name.isdigit() and name not in own:
            os.symlink(f".host/{name}", f"/proc/{name}")
    for pid in range(1, limit_pids("/proc/.host") + 1):
        os.symlink(f".host/{pid}", f"/proc/{pid}")
    for target, src in entries.items():
        if target.startswith("/proc/"):
            copy_entry(src, target)
    mount("none", "/proc", None, MS_REMOUNT | MS_RDONLY | PROC_FLAGS)


def setup_shell_startup() -> None:
    """Shell start-up files as on a fresh board.

    Login shells reset PATH in /etc/profile, then source /etc/profile.d: ours puts bin/ first
    again. The host's ~/.bashrc and ~/.profile (run by sshd even for plain commands) are replaced
    by neutral ones.
    """
    tools = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_tools")
    if os.path.isdir("/etc/profile.d"):
        bind_readonly(os.path.join(tools, "profile.d"), "/etc/profile.d")
    for name in (".bashrc", ".profile"):
        home_file = os.path.join(os.path.expanduser("~"), name)
        if os.path.isfile(home_file):
            bind_readonly(os.path.join(tools, "home", name), home_file)


def board_hostname(board_dir: str) -> str | None:
    with open(os.path.join(board_dir, "board.yaml")) as f:
        m = re.search(r"^hostname:\s*['\"]?([\w.-]+)", f.read(), re.M)
    return m.group(1) if m else None


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: _nsinit.py BOARD_DIR -- ARGV...", file=sys.stderr)
        return 2
    board_dir, command = os.path.abspath(argv[0]), argv[2:]
    entries = board_entries(os.path.join(board_dir, "root"))
    try:
        emulate_proc, tmpfs_dirs, binds = plan(entries)
        if emulate_proc and os.getpid() != 1:
            raise OverlayError("a new /proc entry needs a new PID namespace (unshare --pid --fork)")
        if os.getpid() == 1:
            setup_proc(entries, emulate_proc)
        for d in tmpfs_dirs:
            mount("board-sys", d, "tmpfs", PROC_FLAGS, "mode=0755")
            for target, src in entries.items():
                if target.startswith(d + "/"):
                    copy_entry(src, target)
            mount("none", d, None, MS_REMOUNT | MS_RDONLY | PROC_FLAGS)
        for target, src in sorted(binds.items()):
            bind_readonly(src, target)
        bin_dir = os.path.join(board_dir, "bin")
        setup_shell_startup()
        hostname = board_hostname(board_dir)
        if hostname:
            socket.sethostname(hostname)
    except (OverlayError, OSError) as e:
        print(f"edgedeploy board overlay ({board_dir}): {e}", file=sys.stderr)
        return 125
    env = dict(os.environ, EDGEDEPLOY_BOARD=board_dir, EDGEDEPLOY_BOARD_BIN=bin_dir)
    env["PATH"] = bin_dir + ":" + env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    try:
        os.execvpe(command[0], command, env)
    except OSError as e:
        print(f"edgedeploy board overlay: cannot run {command[0]}: {e}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
