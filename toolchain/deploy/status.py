"""What is deployed on a target (current release, model, earlier releases) and what is serving."""

from __future__ import annotations

from typing import Any

from toolchain.deploy.releases import Shipper
from toolchain.deploy.serve import ServeOptions, Server
from toolchain.transports.base import Transport

STATUS_HEALTH_TIMEOUT_S = 30.0  # a busy board may take a while to answer even a 4-token completion


def deployment_status(transport: Transport, root: str, python: str) -> dict[str, Any]:
    shipper = Shipper(transport, root, python=python)
    current = shipper.current()
    manifest = shipper.manifest(current) if current else {}
    existing = set(shipper.releases())
    previous: list[str] = []
    for rid in reversed(shipper.history()):  # most recent first, each once
        if rid != current and rid in existing and rid not in previous:
            previous.append(rid)
    return {
        "deploy_root": root,
        "current": current,
        "model": manifest.get("model"),
        "quant": manifest.get("quant"),
        "settings": manifest.get("settings"),
        "created": manifest.get("created"),
        "previous": previous,
        "releases": sorted(existing),
        "serve": serve_status(transport, root, python),
    }


def serve_status(transport: Transport, root: str, python: str) -> dict[str, Any] | None:
    server = Server(transport, root, python)
    st = server.state()
    if not st:
        return None
    server = Server(transport, root, str(st.get("python") or python))
    mgr = str(st.get("manager", "supervisor"))
    pid = server.pid(mgr)
    opts = ServeOptions(host=str(st.get("host", "127.0.0.1")), port=int(st.get("port", 8080)), ready_timeout_s=STATUS_HEALTH_TIMEOUT_S)
    health = server.check(opts, mgr) if pid is not None or mgr != "supervisor" else {"ok": False, "error": "not running"}
    return {"manager": mgr, "host": opts.host, "port": opts.port, "release": st.get("release"), "pid": pid,
            "running": pid is not None, "answering": bool(health.get("ok")), "error": None if health.get("ok") else health.get("error")}
