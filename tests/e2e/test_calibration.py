"""First contact for real: `ship` on a device never measured benchmarks llama.cpp there first
(toolchain/device/calibrate.py on this machine), stores it, and the plans that follow rest on it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from toolchain.plan import calibration


def test_first_ship_calibrates_and_later_plans_rest_on_it(cli_env: dict[str, str], tmp_path: Path, smollm2_gguf: Path) -> None:
    env = {**cli_env, "EDGEDEPLOY_CALIBRATE": "1"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "ship", "--target", "local", "--model", str(smollm2_gguf),
                           "--deploy-dir", str(tmp_path / "deploy"), "--json"], env=env, capture_output=True, text=True, timeout=900)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert "calibrated in" in proc.stderr, proc.stderr[-3000:]
    run_dir = Path(doc["run_dir"])
    lines = [json.loads(x) for x in (run_dir / "calibration.jsonl").read_text().splitlines()]
    assert {x["family"] for x in lines if "family" in x} == {"Q4_K", "Q6_K", "Q8_0", "Q4_0", "F16"}
    done = next(x for x in lines if x.get("done"))
    assert 0 < done["wall_s"] < took
    # the first plan already rests on the calibration; the runs are stored beside it
    assert doc["plan"]["basis"]["confidence"] == "calibrated"
    assert "fitted against" in doc["plan"]["basis"]["bandwidth_source"]
    p = doc["plan"]["selected"]["predicted"]
    assert 0 < p["decode_tokens_per_s_low"] < p["decode_tokens_per_s"] < p["decode_tokens_per_s_high"]
    facts = json.loads((run_dir / "facts.json").read_text())
    from toolchain.core.nouns import HostFacts
    from toolchain.core.serde import from_dict

    records = calibration.load(calibration.fingerprint(from_dict(HostFacts, facts)))
    origins = sorted(r.origin for r in records)
    assert origins.count("calibration") == 11 and origins.count("run") == 1
    # layers read from memory carry a layer count; the cached tiny model's time is the fixed overhead
    assert all(r.n_layer > 0 for r in records if not r.model.endswith("l"))
    assert [r.n_layer for r in records if r.model.endswith("l")] == [0]
    # a second ship does not calibrate again
    again = subprocess.run([sys.executable, "-m", "toolchain.cli", "ship", "--target", "local", "--model", str(smollm2_gguf),
                            "--deploy-dir", str(tmp_path / "deploy"), "--json"], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "calibrated in" not in again.stderr
    # the report says what the prediction rests on
    assert "first-contact calibration" in (run_dir / "report.md").read_text()
