"""TargetSpec -> a connected Transport (transport modules imported only when used)."""

from __future__ import annotations

from toolchain.core.nouns import TargetSpec
from toolchain.transports.base import Transport


def connect(spec: TargetSpec, *, accept_new_host_key: bool = False) -> Transport:
    if spec.kind == "local":
        from toolchain.transports.local import LocalTransport

        return LocalTransport()
    if spec.kind == "ssh":
        from toolchain.transports.ssh import SshTransport

        return SshTransport(spec, accept_new_host_key=accept_new_host_key)
    if spec.kind == "adb":
        from toolchain.transports.adb import AdbTransport

        return AdbTransport(spec)
    if spec.kind == "serial":
        from toolchain.transports.serial import SerialTransport

        return SerialTransport(spec)
    raise ValueError(f"unknown transport kind {spec.kind!r}")
