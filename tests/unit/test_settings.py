"""The settings table names every EDGEDEPLOY_* variable, and package code reads them through it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from toolchain.core import paths, settings

REPO = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bEDGEDEPLOY_[A-Z0-9_]*[A-Z0-9]\b")
# Where the variables live: the package, the on-device templates, and the rigs that set two.
SCANNED = ("toolchain", "templates", "tests/boards", "scripts", "bench")
# A read: os.environ.get("X"), os.getenv("X"), os.environ["X"] that is not an assignment.
READ = re.compile(r"""(?:environ\.get|getenv)\(\s*["'](EDGEDEPLOY_\w+)|environ\[\s*["'](EDGEDEPLOY_\w+)["']\s*\](?!\s*=[^=])""")


def _files(*roots: str) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        base = REPO / root
        # toolchain/_resources links back to templates/ and targets/: scan each real file once.
        out += [p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts and "_resources" not in p.parts]
    return out


def _names_in(files: list[Path]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in files:
        try:
            text = f.read_text()
        except UnicodeDecodeError:
            continue
        for name in NAME.findall(text):
            found.setdefault(name, []).append(str(f.relative_to(REPO)))
    return found


def test_every_variable_in_the_code_is_in_the_table() -> None:
    found = _names_in(_files(*SCANNED))
    missing = {n: sorted(set(w))[:3] for n, w in found.items() if n not in settings.BY_NAME}
    assert not missing, f"add these to toolchain/core/settings.py SETTINGS: {missing}"


def test_table_rows_are_complete_and_unique() -> None:
    assert len(settings.BY_NAME) == len(settings.SETTINGS)
    for s in settings.SETTINGS:
        assert NAME.fullmatch(s.name) and s.meaning and s.default and s.read_by, s


def test_package_reads_variables_only_through_settings() -> None:
    # toolchain/device/ runs on the device with the standard library only: it reads os.environ itself.
    offenders = []
    for f in _files("toolchain"):
        rel = f.relative_to(REPO)
        if f.suffix != ".py" or rel == Path("toolchain/core/settings.py") or rel.parts[:2] == ("toolchain", "device"):
            continue
        for lineno, line in enumerate(f.read_text().splitlines(), 1):
            if READ.search(line):
                offenders.append(f"{rel}:{lineno}: {line.strip()}")
    assert not offenders, "read these through toolchain.core.settings:\n" + "\n".join(offenders)


def test_read_pattern_tells_reads_from_writes() -> None:
    assert READ.search('x = os.environ.get("EDGEDEPLOY_HOME", "")')
    assert READ.search('if os.environ["EDGEDEPLOY_HOME"] == "x":')
    assert not READ.search('os.environ["EDGEDEPLOY_RUNS"] = str(out)')


def test_paths_follow_the_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (settings.CACHE, settings.RUNS, settings.WHEELHOUSE, settings.HISTORY, settings.RESOURCES):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(settings.HOME, str(tmp_path / "home"))
    monkeypatch.setenv(settings.CACHE, str(tmp_path / "cache"))
    assert paths.data_dir() == tmp_path / "home"
    assert paths.runs_dir() == tmp_path / "home" / "runs"
    assert paths.models_cache() == tmp_path / "cache" / "models"

    from toolchain.deploy.provision import wheelhouse_dir
    from toolchain.store.records import default_url

    assert wheelhouse_dir() == tmp_path / "cache" / "wheelhouse"
    assert default_url() == f"sqlite:///{tmp_path / 'home' / 'history.sqlite'}"
    monkeypatch.setenv(settings.RUNS, str(tmp_path / "r"))
    monkeypatch.setenv(settings.WHEELHOUSE, str(tmp_path / "w"))
    monkeypatch.setenv(settings.HISTORY, "postgresql://ci@db/x")
    assert (paths.runs_dir(), wheelhouse_dir(), default_url()) == (tmp_path / "r", tmp_path / "w", "postgresql://ci@db/x")
    # Empty counts as unset (a CI variable defined but blank), except for the passwords.
    monkeypatch.setenv(settings.RUNS, "")
    monkeypatch.setenv(settings.SSH_COPY, "")
    monkeypatch.setenv(settings.SERIAL_PASSWORD, "")
    assert paths.runs_dir() == tmp_path / "home" / "runs"
    assert settings.ssh_copy() == "auto"
    assert settings.serial_password() == ""


def test_unknown_name_is_refused() -> None:
    with pytest.raises(KeyError, match="not in the settings table"):
        settings._value("EDGEDEPLOY_NO_SUCH")


def test_bundled_resources_are_the_repository_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.RESOURCES, raising=False)
    assert paths.targets_dir() == REPO / "targets"  # in a checkout: resolved through toolchain/_resources
    assert paths.profiles_dir() == REPO / "profiles"
    assert paths.templates_dir() == REPO / "templates"
    assert (paths.targets_dir() / "boards" / "rpi5-8gb.yaml").is_file()


def test_resources_variable_points_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "mine.yaml").write_text("transport: ssh\nhost: 192.0.2.7\n")
    monkeypatch.setenv(settings.RESOURCES, str(tmp_path))
    from toolchain.transports.targets import known_targets

    assert paths.templates_dir() == tmp_path / "templates"
    assert list(known_targets()) == ["mine"]


def test_settings_command(cli_env: dict[str, str]) -> None:
    env = {**cli_env, settings.SSH_PASSWORD: "hunter2", settings.CACHE: "/tmp/somewhere"}
    env.pop(settings.SSH_COPY, None)
    proc = subprocess.run(["edgedeploy", "settings", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert list(rows) == [s.name for s in settings.SETTINGS]
    assert rows[settings.CACHE]["value"] == "/tmp/somewhere"
    assert rows[settings.SSH_PASSWORD]["value"] == "(set)" and "hunter2" not in proc.stdout
    assert rows[settings.SSH_COPY]["value"] is None and rows[settings.SSH_COPY]["default"] == "auto"
    human = subprocess.run(["edgedeploy", "settings"], env=env, capture_output=True, text=True, timeout=60)
    assert human.returncode == 0 and "EDGEDEPLOY_WHEELHOUSE" in human.stdout and "hunter2" not in human.stdout
