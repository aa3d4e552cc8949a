"""Storage: df at the deploy directory, the mount's filesystem, the block device under it and its kind."""

from __future__ import annotations

import re
from typing import TypedDict

from toolchain.probe.parsers.text import grep_h, to_int

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "9p", "fuse.sshfs", "virtiofs", "ceph", "glusterfs")
RAM_FS = ("tmpfs", "ramfs")


class Storage(TypedDict):
    device: str | None  # df's filesystem column
    total_bytes: int | None
    free_bytes: int | None  # available to an unprivileged user
    mount: str | None
    fs_type: str | None
    majmin: str | None
    sysfs: str | None  # the whole disk's sysfs directory
    disk: str | None
    attrs: dict[str, str]  # queue/rotational, removable, device/type, device/model, device/name...
    kind: str | None  # sd | emmc | nvme | usb | ufs | virtio | ssd | hdd | ram | network | None
    kind_basis: str


def parse_storage(text: str) -> Storage:
    """The storage fact: `df -Pk DIR`, then 'mountinfo: ...', 'sysfs: DIR' and `grep -sH .` of
    the disk's attributes (relative to that directory)."""
    out: Storage = {"device": None, "total_bytes": None, "free_bytes": None, "mount": None, "fs_type": None,
                    "majmin": None, "sysfs": None, "disk": None, "attrs": {}, "kind": None, "kind_basis": ""}
    body: list[str] = []
    for line in text.splitlines():
        if line.startswith("mountinfo: "):
            _mountinfo(line[len("mountinfo: "):], out)
        elif line.startswith("sysfs: "):
            path = line[len("sysfs: "):].strip()
            if path.startswith("/sys/"):
                out["sysfs"], out["disk"] = path, path.rstrip("/").rsplit("/", 1)[-1]
        elif out["sysfs"] is not None:
            body.append(line)
        else:
            _df_line(line, out)
    out["attrs"] = {path: value for path, value in grep_h("\n".join(body)) if value}
    out["kind"], out["kind_basis"] = storage_kind(out)
    return out


def _df_line(line: str, out: Storage) -> None:
    parts = line.split()
    # POSIX df -P: Filesystem 1024-blocks Used Available Capacity Mounted-on (the mount may hold spaces)
    if len(parts) >= 6 and parts[1].isdigit() and parts[3].isdigit() and parts[4].endswith("%"):
        out["device"], out["total_bytes"], out["free_bytes"] = parts[0], int(parts[1]) * 1024, int(parts[3]) * 1024
        out["mount"] = " ".join(parts[5:])


def _mountinfo(line: str, out: Storage) -> None:
    """'MAJ:MIN ROOT MOUNT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS' (proc(5), fields 3 on)."""
    head, sep, tail = line.partition(" - ")
    fields, rest = head.split(), tail.split()
    if not sep or len(fields) < 3 or not rest:
        return
    if re.match(r"^\d+:\d+$", fields[0]):
        out["majmin"] = fields[0]
    out["mount"] = out["mount"] or fields[2].replace("\\040", " ")
    out["fs_type"] = rest[0]


def storage_kind(s: Storage) -> tuple[str | None, str]:
    """The medium under the filesystem, and the sysfs evidence for it."""
    fs, disk, path, attrs = s["fs_type"] or "", s["disk"] or "", s["sysfs"] or "", s["attrs"]
    if fs in RAM_FS:
        return "ram", f"filesystem {fs}"
    if fs in NETWORK_FS or fs.startswith("fuse.sshfs"):
        return "network", f"filesystem {fs}"
    if not disk:
        return None, "no block device under the filesystem" + (f" ({fs})" if fs else "")
    if disk.startswith(("zram", "ram")):
        return "ram", f"{disk} is a RAM disk"
    if disk.startswith(("loop", "nbd")):
        return None, f"{disk} is a {disk.rstrip('0123456789')} device: the medium behind it is unknown"
    if "/usb" in path:
        return "usb", f"{disk} sits on a USB bus ({path})"
    if disk.startswith("nvme"):
        return "nvme", f"{disk} is an NVMe namespace"
    if disk.startswith("mmcblk"):
        mmc_type = attrs.get("device/type", "")
        if mmc_type == "SD":
            return "sd", f"{disk}: device/type SD"
        if mmc_type == "MMC":
            return "emmc", f"{disk}: device/type MMC"
        return "mmc", f"{disk}: MMC host, device/type {mmc_type or 'unreadable'}"
    if "ufs" in path.lower():
        return "ufs", f"{disk} sits on a UFS host controller ({path})"
    if "virtio" in path or disk.startswith("vd"):
        return "virtio", f"{disk} is a virtio disk (a virtual machine's)"
    rotational = to_int(attrs.get("queue/rotational"))
    if rotational == 1:
        return "hdd", f"{disk}: queue/rotational 1"
    if rotational == 0:
        return "ssd", f"{disk}: queue/rotational 0"
    return None, f"{disk}: no sysfs attribute says what it is"
