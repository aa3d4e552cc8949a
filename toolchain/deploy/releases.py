"""Content-addressed store, resumable verified transfer, atomic release switch, rollback.

Layout under the deploy root on the target:
    models/<sha256>.gguf          the store; a model already there is never sent again
    releases/<id>/                the bundle's files (runner.py, events.py, settings.json, run.sh),
                                  manifest.json, model.gguf -> ../../models/<sha>.gguf
    current -> releases/<id>      switched atomically (rename of a symlink)
    activations.log               one release id per line, for rollback
Uploads land in `<name>.partial`, resume from its size, and are verified (sha256 on the target)
before the rename that makes them usable.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolchain.core.errors import BadInputError, EdgeDeployError, TargetError
from toolchain.core.identifiers import check_release_id, inside_posix, is_identifier, shown
from toolchain.core.nouns import Bundle, Release, TargetSpec
from toolchain.core.units import fmt_bytes
from toolchain.transports.base import ProgressFn, Transport

FREE_MARGIN_BYTES = 256 << 20  # left free on the target's disk after the model lands
KEEP_RELEASES = 5
Log = Callable[[str], None]

# Shell snippets take their values as positional parameters ("$1"...), never spliced in.
_SHA256 = (
    'if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d" " -f1; '
    'elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d" " -f1; '
    'else "$2" -c "import hashlib,sys;h=hashlib.sha256();f=open(sys.argv[1],\'rb\')\n'
    'for b in iter(lambda:f.read(1<<23),b\'\'):h.update(b)\nprint(h.hexdigest())" "$1"; fi'
)
_ATOMIC_LINK = (
    'cd "$1" && rm -f current.new && ln -s "$2" current.new && '
    '{ mv -T current.new current 2>/dev/null || "$3" -c "import os;os.replace(\'current.new\',\'current\')"; } && '
    'echo "${2#releases/}" >> activations.log'
)


def default_deploy_root(spec: TargetSpec, home: str) -> str:
    if spec.deploy_dir:
        d = spec.deploy_dir
        return posixpath.join(home, d[2:]) if d.startswith("~/") else d
    if spec.kind == "local":
        from toolchain.core.paths import data_dir

        return str(data_dir() / "deploy")
    if spec.kind == "adb":
        return "/data/local/tmp/edgedeploy"
    return posixpath.join(home, ".local/share/edgedeploy")


@dataclass
class Shipper:
    transport: Transport
    root: str
    python: str = "python3"
    log: Log = lambda _m: None

    def sh(self, script: str, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        return self.transport.run(["sh", "-c", script, "sh", *args], timeout=timeout, check=check).stdout

    # --- preparation ---

    def prepare(self) -> None:
        res = self.transport.run(
            ["sh", "-c", 'mkdir -p "$1/models" "$1/releases" 2>&1 && test -w "$1/models" && test -w "$1/releases"', "sh", self.root],
            timeout=30, check=False,
        )
        if not res.ok:
            why = res.tail().splitlines()[-1] if res.tail() else "not writable"
            raise BadInputError(
                f"{self.transport.display}: deploy directory {self.root} is not writable ({why})",
                "pick another with --deploy-dir, or fix its permissions",
            )

    def free_bytes(self) -> int | None:
        out = self.sh('df -Pk "$1" | tail -n 1', self.root, check=False).split()
        return int(out[3]) * 1024 if len(out) >= 4 and out[3].isdigit() else None

    def remote_size(self, path: str) -> int:
        out = self.sh('if [ -f "$1" ]; then wc -c < "$1"; else echo -1; fi', path).strip()
        return int(out) if out.lstrip("-").isdigit() else -1

    def remote_sha256(self, path: str, timeout: float = 1800.0) -> str:
        return self.sh(_SHA256, path, self.python, timeout=timeout).strip().split()[0] if path else ""

    # --- the model store ---

    def model_path(self, sha256: str) -> str:
        if not (len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)):
            raise BadInputError(f"model sha256 {shown(sha256)} is not 64 hexadecimal digits", "the store is content-addressed by sha256")
        return f"{self.root}/models/{sha256}.gguf"

    def release_path(self, release_id: str) -> str:
        """releases/<id> under the deploy root: the id must be an identifier (check_release_id) and
        the path must stay inside the root."""
        rid = check_release_id(release_id, "release id")
        return inside_posix(self.root, f"releases/{rid}", "release path")

    def upload_model(self, local: Path, sha256: str, progress: ProgressFn | None = None) -> tuple[str, int, bool]:
        """Ensure models/<sha>.gguf exists and is verified; returns (path, bytes sent, was present)."""
        final = self.model_path(sha256)
        size = local.stat().st_size
        limit = self.transport.capabilities.max_file_bytes
        if self.remote_size(final) != size and limit is not None and size > limit:
            raise TargetError(
                f"{self.transport.display}: the model is {fmt_bytes(size)}; this link carries files up to {fmt_bytes(limit)} "
                "(a serial console is for small files)",
                f"ship over ssh or adb, or copy {local.name} to {final} on the target by other means and ship again",
            )
        if self.remote_size(final) == size:
            self.log(f"model {sha256[:12]}… already in the store on the target: {fmt_bytes(size)} not sent")
            return final, 0, True
        partial = final + ".partial"
        offset = max(0, self.remote_size(partial))
        if offset > size or not self.transport.capabilities.resumable_put:
            offset = 0
        free = self.free_bytes()
        needed = size - offset + FREE_MARGIN_BYTES
        if free is not None and free < needed:
            raise TargetError(
                f"{self.transport.display}: not enough space in {self.root}: needs {fmt_bytes(needed)} "
                f"({fmt_bytes(size - offset)} + {fmt_bytes(FREE_MARGIN_BYTES)} margin), {fmt_bytes(free)} free",
                "free space on the target (old releases: edgedeploy prune), or choose a smaller model",
            )
        if offset:
            self.log(f"resuming upload at {fmt_bytes(offset)} of {fmt_bytes(size)}")
        try:
            self.transport.put(local, partial, offset=offset, progress=progress)
        except (EdgeDeployError, OSError) as exc:  # OSError: a local-disk target (ENOSPC and the like)
            raise self._upload_error(exc, partial, size) from exc
        got = self.remote_sha256(partial)
        if got != sha256:
            self.sh('rm -f "$1"', partial)
            raise TargetError(
                f"{self.transport.display}: sha256 of the uploaded model does not match ({got[:12]}… != {sha256[:12]}…)",
                "the transfer was corrupted; ship again (the upload restarts)",
            )
        self.sh('mv -f "$1" "$2"', partial, final)
        return final, size - offset, False

    def _upload_error(self, exc: EdgeDeployError | OSError, partial: str, size: int) -> EdgeDeployError:
        """Say why an upload stopped; the .partial stays, so the next ship resumes it."""
        what = exc.message if isinstance(exc, EdgeDeployError) else f"{self.transport.display}: upload failed: {exc}"
        try:
            done = max(0, self.remote_size(partial))
            free = self.free_bytes()
        except TargetError:
            # The board went away with the upload (sshd killed, a reboot): asking how far it got
            # reconnects and is refused. Report the upload's own error, not that refusal.
            return TargetError(f"{what} (the previous release stays current)", "ship again: the upload resumes from where it stopped")
        if (free is not None and free < FREE_MARGIN_BYTES // 16) or "No space left" in what:
            return TargetError(
                f"{self.transport.display}: the disk filled up during the upload ({fmt_bytes(done)} of {fmt_bytes(size)} written, "
                f"{fmt_bytes(free or 0)} free in {self.root}); the previous release stays current",
                "free space on the target, then ship again: the upload resumes from the partial file",
            )
        return TargetError(
            f"{what} (upload stopped at {fmt_bytes(done)} of {fmt_bytes(size)}; the previous release stays current)",
            "ship again: the upload resumes from where it stopped",
        )

    # --- releases ---

    def install_release(self, bundle: Bundle) -> Release:
        final = self.release_path(bundle.release_id)
        model_path = self.model_path(bundle.model_sha256)  # checks the sha before it becomes a link
        staging = final + ".partial"
        self.sh('rm -rf "$1" && mkdir -p "$1"', staging)
        for name in [f.path for f in bundle.files if f.path != bundle.model_file] + ["manifest.json"]:
            self.transport.put(Path(bundle.root) / name, f"{staging}/{name}")
        model_rel = f"../../models/{bundle.model_sha256}.gguf"
        self.sh('cd "$1" && chmod 755 run.sh && ln -sf "$2" model.gguf && cd .. && rm -rf "$3" && mv "$1" "$3"',
                staging, model_rel, final)
        return Release(
            id=bundle.release_id, deploy_root=self.root, path=final, model_path=model_path,
            model_sha256=bundle.model_sha256, model_bytes_sent=0, model_already_present=False, previous=self.current(),
        )

    def current(self) -> str | None:
        out = self.sh('readlink "$1/current" 2>/dev/null || true', self.root).strip()
        return posixpath.basename(out) if out else None

    def activate(self, release_id: str) -> None:
        self.release_path(release_id)  # refuses an id that is not one
        self.sh(_ATOMIC_LINK, self.root, f"releases/{release_id}", self.python)

    def manifest(self, release_id: str) -> dict[str, object]:
        """A release's manifest.json ({} when unreadable); a file on the target that anything could
        have edited, so its values are object: the reader checks each one (deploy/status.py)."""
        if not is_identifier(release_id, "release id"):
            return {}
        text = self.sh('cat "$1/releases/$2/manifest.json" 2>/dev/null || true', self.root, release_id)
        try:
            doc = json.loads(text) if text.strip() else {}
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def history(self) -> list[str]:
        """Release ids in activation order, oldest first (activations.log)."""
        out = self.sh('cat "$1/activations.log" 2>/dev/null || true', self.root)
        return [line.strip() for line in out.splitlines() if line.strip()]

    def releases(self) -> list[str]:
        out = self.sh('ls -1 "$1/releases" 2>/dev/null || true', self.root)
        return sorted(r for r in out.split() if not r.endswith(".partial"))

    def rollback(self) -> str:
        """Make the previously active release current again."""
        current = self.current()
        history = self.history()
        existing = set(self.releases())
        for rid in reversed(history):
            if rid != current and rid in existing and is_identifier(rid, "release id"):
                self.activate(rid)
                return rid
        raise TargetError(f"{self.transport.display}: no earlier release to roll back to", "ship a release first")

    def prune(self, keep: int = KEEP_RELEASES) -> list[str]:
        """Delete all but the newest `keep` releases (never the current one) and unreferenced models."""
        current = self.current()
        rels = [r for r in self.releases() if is_identifier(r, "release id")]  # what edgedeploy did not name is not its to delete
        doomed = [r for r in rels[:-keep] if r != current] if keep > 0 else [r for r in rels if r != current]
        for rid in doomed:
            self.sh('rm -rf "$1/releases/$2"', self.root, rid)
        # Staging dirs of installs cut off mid-way (sshd killed, a reboot): never promoted, and the
        # retry stages under a new id, so nothing else would ever remove them. The new release is
        # already renamed into place here, and the lab's board lock keeps other deploys out.
        self.sh('cd "$1/releases" 2>/dev/null || exit 0; for d in *.partial; do [ -d "$d" ] && rm -rf "./$d"; done; exit 0', self.root)
        self.sh(
            'cd "$1" || exit 0; refs=$(for l in releases/*/model.gguf; do [ -L "$l" ] && readlink "$l"; done); '
            'for m in models/*.gguf; do [ -f "$m" ] || continue; b=$(basename "$m"); '
            'case "$refs" in *"$b"*) ;; *) rm -f "$m";; esac; done',
            self.root,
        )
        return doomed
