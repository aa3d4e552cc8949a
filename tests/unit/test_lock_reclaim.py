"""A lab retry takes back the board lock its own earlier attempt could not release (the board
dropped off mid-run: sshd killed, a reboot), instead of waiting lock.ttl behind itself; anyone
else's lock is still waited for. Real sh on this machine (LocalTransport)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from toolchain.fleet.locks import LOCK_NAME, BoardLock
from toolchain.transports.local import LocalTransport


def test_a_retry_reclaims_its_own_stale_lock_but_not_another_jobs(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    with LocalTransport() as t:
        first = BoardLock(t, str(tmp_path), lab="nightly", ttl_s=600, token=token)
        assert first.try_acquire() is None  # attempt 1 takes it, then loses the board: no release
        other = BoardLock(t, str(tmp_path), lab="nightly", ttl_s=600)
        held = other.try_acquire()
        assert held is not None and held.expires_in_s is not None and held.expires_in_s > 500  # another job waits
        retry = BoardLock(t, str(tmp_path), lab="nightly", ttl_s=600, token=token)
        assert retry.try_acquire() is None and retry.reclaimed and retry.took_over is None
        doc = json.loads((tmp_path / LOCK_NAME / "owner.json").read_text())
        assert doc["token"] == token and doc["lab"] == "nightly"
        retry.release()
        assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_token_must_be_hexadecimal(tmp_path: Path) -> None:
    with LocalTransport() as t, pytest.raises(ValueError, match="hexadecimal"):
        BoardLock(t, str(tmp_path), lab="x", token='" ; rm -rf / ; "')
