"""The on-device runner (toolchain/device/runner.py, as a bundle carries it) and the host's reading of its outcome.

Real llama-cpp-python on this machine for the decode loop; pure functions for the failure
classification; a fake board for the reboot detection.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.shipkit import bundle_for
from toolchain.core.nouns import Release
from toolchain.deploy.run import classify_failure, run_bench
from toolchain.deploy.serve import render_unit, systemd_quote
from toolchain.transports.local import LocalTransport


def load_runner(bundle_root: Path) -> ModuleType:
    name = "edgedeploy_runner_under_test"
    spec = importlib.util.spec_from_file_location(name, bundle_root / "runner.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundle(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(bundle_for(smollm2_gguf, tmp_path_factory.mktemp("bundle") / "b").root)


def test_greedy_decode_on_raw_logits_continues_the_prompt(bundle: Path) -> None:
    """The decode loop reads logits through llama.cpp's C API (Llama.scores is not filled any more)."""
    runner = load_runner(bundle)
    settings = runner.read_settings()  # the bundle's settings.json
    llm = runner.load(settings)
    dec = runner.Decoder(llm, settings.n_batch)
    tokens = llm.tokenize(b"The capital of France is", add_bos=True)
    out = [dec.prefill(tokens)]
    for _ in range(5):
        out.append(dec.step(out[-1]))
    assert "Paris" in llm.detokenize(out).decode(errors="replace")
    dec.clear()  # a second prompt starts from an empty cache and decodes the same
    assert dec.prefill(tokens) == out[0] and dec.pos == len(tokens)
    dec.close()


def test_bench_reports_latency_percentiles_memory_and_boot_id(bundle: Path, tmp_path: Path) -> None:
    release = Release(id="r1", deploy_root=str(bundle.parent), path=str(bundle), model_path="", model_sha256="",
                      model_bytes_sent=0, model_already_present=False)
    outcome = run_bench(LocalTransport(), release, python=sys.executable, run_dir=tmp_path, extra_args=["--tokens", "8", "--warmup", "2"])
    assert outcome.telemetry is not None, outcome.error
    tel = outcome.telemetry
    assert tel.decode_tokens == 8 * 3 and 0 < tel.decode_ms_p50 <= tel.decode_ms_p90 <= tel.decode_ms_p99
    assert tel.peak_rss_bytes > 50 << 20
    assert tel.extra["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert "energy_j_per_token" in tel.extra and "throttled_during" in tel.extra
    assert any(e["event"] == "memory" for e in outcome.events) or tel.peak_rss_bytes < 16 << 20


def test_pi5_pmic_and_tegrastats_power_parsing(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real output shapes: Pi 5 `vcgencmd pmic_read_adc` rails (A and V pairs) sum to watts."""
    tool = tmp_path / "vcgencmd"
    tool.write_text("#!/bin/sh\ncat <<'X'\n     3V7_WL_SW_A current(0)=0.10000000A\n   VDD_CORE_A current(7)=2.00000000A\n"
                    "     3V7_WL_SW_V volt(8)=3.70000000V\n   VDD_CORE_V volt(15)=0.80000000V\n        EXT5V_V volt(24)=5.15000000V\nX\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    runner = load_runner(bundle)
    src = runner.pmic_source()
    assert src is not None and src.watts is not None and src.watts() == pytest.approx(0.1 * 3.7 + 2.0 * 0.8)


def test_energy_integrates_samples_over_decode_windows(bundle: Path) -> None:
    runner = load_runner(bundle)
    sampler = runner.PowerSampler.__new__(runner.PowerSampler)
    sampler.samples = [(0.0, 0.0), (1.0, 2.0), (2.0, 4.0), (3.0, 6.0)]  # 2 W steady
    assert sampler.energy_j([(0.5, 1.5), (2.0, 3.0)]) == pytest.approx(4.0)
    assert sampler.energy_j([(2.5, 9.0)]) is None  # outside what was sampled: no guess


def test_oom_is_reported_with_the_peak() -> None:
    events = [{"event": "start", "pid": 42}, {"event": "memory", "peak_rss_bytes": 300 << 20}, {"event": "memory", "peak_rss_bytes": 512 << 20}]
    out = classify_failure(137, events, "", 60, kernel_oom=False)
    assert out.failure_kind == "oom" and out.extra["peak_rss_bytes"] == 512 << 20
    assert "out of memory" in (out.error or "") and "512.0 MiB" in (out.error or "")


def test_crash_shows_the_last_log_line() -> None:
    out = classify_failure(1, [{"event": "start", "pid": 1}], "Traceback...\nValueError: bad magic\n", 60, kernel_oom=False)
    assert out.failure_kind == "crash" and "ValueError: bad magic" in (out.error or "")
    err = classify_failure(1, [{"event": "error", "kind": "RuntimeError", "message": "llama_decode returned -1"}], "", 60, kernel_oom=False)
    assert "RuntimeError: llama_decode returned -1" in (err.error or "")


class RebootingBoard(LocalTransport):
    """This machine, except that /proc/sys/kernel/random/boot_id changes while the runner runs."""

    def __init__(self) -> None:
        super().__init__()
        self.boots = 0

    def _exec(self, command: str, timeout: float, stdin: bytes | None, hold_stdin: bool = False) -> tuple[int, bytes, bytes]:
        if "boot_id" in command:
            self.boots += 1
            return 0, f"boot-{self.boots}\n".encode(), b""
        return super()._exec(command, timeout, stdin, hold_stdin)


def test_a_board_that_rebooted_mid_run_is_detected(bundle: Path, tmp_path: Path) -> None:
    release = Release(id="r1", deploy_root=str(bundle.parent), path=str(bundle), model_path="", model_sha256="",
                      model_bytes_sent=0, model_already_present=False)
    outcome = run_bench(RebootingBoard(), release, python=sys.executable, run_dir=tmp_path, extra_args=["--tokens", "1", "--warmup", "0"])
    assert outcome.failure_kind == "reboot" and outcome.telemetry is None
    assert "rebooted during the run" in (outcome.error or "")


def test_runner_crash_exit_status_and_log(bundle: Path, tmp_path: Path) -> None:
    """A python that cannot run the runner: reported with its exit status and log, not raised."""
    release = Release(id="r1", deploy_root=str(bundle.parent), path=str(bundle), model_path="", model_sha256="",
                      model_bytes_sent=0, model_already_present=False)
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Fatal Python error: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    outcome = run_bench(LocalTransport(), release, python=str(fake), run_dir=tmp_path)
    assert outcome.failure_kind == "crash" and outcome.exit_status == 3
    assert "Fatal Python error" in outcome.log_tail and "Fatal Python error" in (outcome.error or "")
    assert json.loads(json.dumps(outcome.extra)) == {"peak_rss_bytes": 0}


def test_systemd_unit_quotes_every_value() -> None:
    unit = render_unit("/srv/llm dir/%h", "/opt/py $x/bin/python", "0.0.0.0", 8080)
    assert 'ExecStart=/bin/sh "/srv/llm dir/%%h/current/run.sh" serve --host "0.0.0.0" --port 8080' in unit
    assert 'Environment="EDGEDEPLOY_PYTHON=/opt/py $$x/bin/python"' in unit
    with pytest.raises(Exception, match="systemd unit"):
        systemd_quote("a\nExecStartPre=/bin/evil")


@pytest.mark.parametrize(("line", "watts"), [
    # jetson-8-gb-orin-class-jetpack-6-sudo-tegrastats-line.md (shared/reference/device-captures)
    ("05-15-2025 18:30:28 RAM 6982/7620MB (lfb 5x1MB) SWAP 2640/16384MB (cached 202MB) CPU [97%@1984,93%@247] "
     "tj@65.562C VDD_IN 17946mW/15710mW VDD_CPU_GPU_CV 8896mW/7585mW VDD_SOC 3923mW/3515mW", 17.946),
    # jetson-tx2-era-tegrastats-line-older-format-no-timestamp.md
    ("RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,21%@345] EMC_FREQ 0% GR3D_FREQ 0% GPU@41C VDD_SYS_GPU 153/158 "
     "VDD_SYS_SOC 536/547 VDD_4V0_WIFI 633/527 VDD_IN 3140/3208 VDD_SYS_CPU 536/590 VDD_SYS_DDR 557/601", 3.140),
    ("RAM 2020/7852MB CPU [9%@345]", None),
])
def test_tegrastats_input_power(bundle: Path, line: str, watts: float | None) -> None:
    assert load_runner(bundle).tegrastats_watts(line) == (pytest.approx(watts) if watts is not None else None)
