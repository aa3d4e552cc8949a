"""What is deployed on a target (current release, model, earlier releases) and what is serving."""

from __future__ import annotations

from typing import TypedDict

from toolchain.deploy.releases import Shipper
from toolchain.deploy.serve import ServeOptions, Server
from toolchain.transports.base import Transport

STATUS_HEALTH_TIMEOUT_S = 30.0  # a busy board may take a while to answer even a 4-token completion


class ServeStatus(TypedDict):
    """`status --json` .serve: how the runner is served and whether it answers now."""

    manager: str
    host: str
    port: int
    release: str | None
    pid: int | None
    running: bool
    answering: bool
    error: str | None


class DeploymentStatus(TypedDict):
    """`status --json` (less its "target"): the current release, the ones to roll back to, serving."""

    deploy_root: str
    current: str | None
    model: str | None  # these four from the current release's manifest.json
    quant: str | None
    settings: dict[str, object] | None  # free-form JSON: the runner settings the manifest lists
    created: str | None
    previous: list[str]  # most recent first
    releases: list[str]
    serve: ServeStatus | None


def deployment_status(transport: Transport, root: str, python: str) -> DeploymentStatus:
    shipper = Shipper(transport, root, python=python)
    current = shipper.current()
    manifest = shipper.manifest(current) if current else {}
    existing = set(shipper.releases())
    previous: list[str] = []
    for rid in reversed(shipper.history()):  # most recent first, each once
        if rid != current and rid in existing and rid not in previous:
            previous.append(rid)
    settings = manifest.get("settings")
    return {
        "deploy_root": root,
        "current": current,
        "model": _text(manifest.get("model")),
        "quant": _text(manifest.get("quant")),
        "settings": settings if isinstance(settings, dict) else None,
        "created": _text(manifest.get("created")),
        "previous": previous,
        "releases": sorted(existing),
        "serve": serve_status(transport, root, python),
    }


def serve_status(transport: Transport, root: str, python: str) -> ServeStatus | None:
    server = Server(transport, root, python)
    st = server.state()
    if not st:
        return None
    server = Server(transport, root, st.get("python") or python)
    mgr = st.get("manager", "supervisor")
    pid = server.pid(mgr)
    opts = ServeOptions(host=st.get("host", "127.0.0.1"), port=st.get("port", 8080), ready_timeout_s=STATUS_HEALTH_TIMEOUT_S)
    health = server.check(opts, mgr) if pid is not None or mgr != "supervisor" else {"ok": False, "error": "not running"}
    return {"manager": mgr, "host": opts.host, "port": opts.port, "release": st.get("release"), "pid": pid,
            "running": pid is not None, "answering": health["ok"], "error": None if health["ok"] else health.get("error")}


def _text(value: object) -> str | None:
    """A manifest string; anything else (a hand-edited or foreign manifest) reads as absent."""
    return value if isinstance(value, str) else None
