"""Issue 11, items 1 and 2 (host side): what a plan file, a facts file, a lab file or a board says is
data, never code and never a path. Each attack is a file the test writes; each must be refused
(BadInputError, exit 2) naming the field, and nothing may be written outside the roots."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from toolchain.core.errors import EXIT_BAD_INPUT, BadInputError
from toolchain.core.identifiers import (
    MODEL_ID,
    QUANT,
    check_model_id,
    check_release_id,
    inside,
    inside_posix,
    is_identifier,
    slug,
)
from toolchain.core.nouns import Basis, Budget, Bundle, BundleFile, Candidate, Plan, Prediction, Selected
from toolchain.core.serde import SchemaError, from_dict, to_json_dict
from toolchain.plan.request import build_plan_request, load_facts, load_plan

REPO = Path(__file__).resolve().parents[2]
NEWLINE_MODEL = "x\ntouch pwned\n#"
PYTHON_MODEL = '"""; import os; os.system("touch pwned"); """'
TRAVERSAL_MODEL = "x/../../../../victim"


def _prediction() -> Prediction:
    return Prediction(decode_tokens_per_s=50.0, decode_ms_per_token=20.0, prefill_tokens_per_s=500.0, peak_memory_bytes=200 << 20,
                      weights_bytes=100 << 20, bytes_by_type={"q4_1": 100 << 20})


def _plan(gguf: Path | None = None) -> Plan:
    sel = Selected(model="smollm2-135m-instruct", quant="Q4_1", params=134_515_008, file_bytes=100 << 20, ctx=512, kv_type="f16",
                   threads=2, mode="resident", predicted=_prediction(), gguf_path=str(gguf) if gguf else None)
    cand = Candidate(model="smollm2-135m-instruct", quant="Q4_1", fits=True, reasons=[], predicted=_prediction(), ctx=512)
    basis = Basis(usable_memory_bytes=8 << 30, bandwidth_bytes_per_s=10e9, efficiency=0.5, storage_read_bytes_per_s=None)
    return Plan(selected=sel, candidates=[cand], basis=basis, budget=Budget(decode_ms_per_token=120.0, source="120ms"), target="t")


def _plan_doc() -> dict[str, Any]:
    doc: dict[str, Any] = to_json_dict(_plan())
    return doc


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))  # NaN and Infinity come out as JSON's extensions, which json.loads reads back
    return path


def _load(path: Path) -> Plan:
    return load_plan(build_plan_request(plan_file=path))


def _set(doc: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    *parents, last = dotted.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[last] = value
    return doc


# --- identifiers ----------------------------------------------------------------------------


def test_every_catalog_id_and_quant_is_an_identifier() -> None:
    from toolchain.models.catalog import QUANTS, load_catalog

    catalog = load_catalog()
    assert catalog and all(MODEL_ID.fullmatch(mid) for mid in catalog)
    assert all(QUANT.fullmatch(q) for q in (*QUANTS, "IQ2_XXS", "F32", "Q4_K", "type99", "f16", "q8_0"))
    assert all(QUANT.fullmatch(q) for entry in catalog.values() for q in entry.quants)


@pytest.mark.parametrize("bad", [NEWLINE_MODEL, PYTHON_MODEL, TRAVERSAL_MODEL, "/abs", "..", ".hidden", "", "a b", "x" * 129, "ü"])
def test_model_ids_refuse_what_is_not_an_identifier(bad: str) -> None:
    with pytest.raises(BadInputError, match=r"^plan.json: selected.model is .*not a valid model id"):
        check_model_id(bad, "plan.json: selected.model")
    assert not is_identifier(bad, "model id")


def test_a_refused_value_is_shown_on_one_line() -> None:
    with pytest.raises(BadInputError) as info:
        check_model_id(NEWLINE_MODEL, "f: selected.model")
    assert "\n" not in info.value.message and r"x\ntouch pwned" in info.value.message
    with pytest.raises(BadInputError, match="not a string but int"):
        check_model_id(7, "f: selected.model")


@pytest.mark.parametrize("name", ["pi5-a", "a-", "orin_1", "x86_64-glibc2.36-cp311-avx2+fma", "Q4_K_M", "a..b"])
def test_slug_keeps_a_slug_as_it_is(name: str) -> None:
    assert slug(name) == name and is_identifier(name, "name")


@pytest.mark.parametrize("name", ["../../../escape", "/abs", NEWLINE_MODEL, PYTHON_MODEL, "..", ".", "", "a/b", "a\\b", "\0"])
def test_slug_is_always_one_plain_name(name: str, tmp_path: Path) -> None:
    s = slug(name)
    assert is_identifier(s, "name") and "/" not in s and s not in (".", "..")
    assert inside(tmp_path, s).parent == tmp_path


def test_inside_refuses_paths_that_leave_their_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert inside(root, "a/b.log") == root / "a/b.log"
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(BadInputError, match="leads outside"):
            inside(root, bad, "board name")
    (root / "link").symlink_to(tmp_path)  # a link inside that points out is outside too
    with pytest.raises(BadInputError, match="leads outside"):
        inside(root, "link/x")
    assert inside_posix("/srv/deploy", "releases/r1") == "/srv/deploy/releases/r1"
    for bad in ("releases/../../x", "/etc", "../deploy2/x"):
        with pytest.raises(BadInputError, match="leads outside"):
            inside_posix("/srv/deploy", bad)


# --- serde's strict mode --------------------------------------------------------------------


def test_strict_from_dict_checks_scalars_and_names_the_field() -> None:
    doc = _plan_doc()
    assert from_dict(Plan, doc, strict=True) == from_dict(Plan, doc) == _plan()
    for dotted, value, problem in [
        ("selected.predicted.decode_tokens_per_s", "fast", "expected a number, got str 'fast'"),
        ("selected.ctx", True, "expected an integer, got bool True"),
        ("selected.ctx", 512.5, "expected an integer"),
        ("selected.model", 7, "expected a string"),
        ("selected.use_mmap", "yes", "expected true or false"),
        ("basis.efficiency", math.nan, "expected a finite number"),
        ("basis.bandwidth_bytes_per_s", 10**400, "expected a finite number"),
        ("selected.notes", "a", "expected a list"),
        ("selected.predicted.bytes_by_type", {"q4_1": "many"}, "expected an integer"),
        ("candidates.0.reasons", None, "expected a list, got null"),
    ]:
        with pytest.raises(SchemaError) as info:
            from_dict(Plan, _set(_plan_doc(), dotted, value), strict=True, where="")
        assert info.value.problem.startswith(problem), (dotted, info.value.problem)
        assert info.value.where.replace("[0]", ".0").startswith(dotted.rsplit(".", 1)[0])


def test_non_strict_from_dict_is_unchanged() -> None:
    doc = _set(_plan_doc(), "selected.predicted.decode_tokens_per_s", "fast")
    assert from_dict(Plan, doc).selected.predicted.decode_tokens_per_s == "fast"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"^Plan.selected: missing key 'model'$"):
        from_dict(Plan, {**doc, "selected": {k: v for k, v in doc["selected"].items() if k != "model"}})


# --- plan documents (ship --plan) -----------------------------------------------------------


def test_a_valid_plan_document_loads_as_written(tmp_path: Path) -> None:
    assert _load(_write(tmp_path / "plan.json", _plan_doc())) == _plan()


@pytest.mark.parametrize(("dotted", "value", "message"), [
    ("selected.model", NEWLINE_MODEL, r"selected\.model is 'x\\ntouch pwned\\n#': not a valid model id"),
    ("selected.model", PYTHON_MODEL, r"selected\.model is .*not a valid model id"),
    ("selected.model", TRAVERSAL_MODEL, r"selected\.model is 'x/\.\./\.\./\.\./\.\./victim': not a valid model id"),
    ("selected.quant", "Q4_1; rm -rf ~", r"selected\.quant is .*not a valid quant"),
    ("selected.kv_type", "f16\nx", r"selected\.kv_type is .*not a valid quant"),
    ("candidates.0.model", "$(reboot)", r"candidates\[0\]\.model is .*not a valid model id"),
    ("selected.predicted.decode_tokens_per_s", "fast", r"selected\.predicted\.decode_tokens_per_s: expected a number, got str 'fast'"),
    ("selected.predicted.decode_tokens_per_s", math.nan, r"selected\.predicted\.decode_tokens_per_s: expected a finite number"),
    ("selected.predicted.decode_tokens_per_s", math.inf, r"selected\.predicted\.decode_tokens_per_s: expected a finite number"),
    ("selected.predicted.decode_tokens_per_s", -5, r"selected\.predicted\.decode_tokens_per_s is -5\.0: should be above 0"),
    ("selected.predicted.decode_ms_per_token", 0, r"selected\.predicted\.decode_ms_per_token is 0\.0: should be above 0"),
    ("selected.predicted.peak_memory_bytes", -1, r"selected\.predicted\.peak_memory_bytes is -1: should be 0 or more"),
    ("selected.ctx", 0, r"selected\.ctx is 0: should be 16 or more"),
    ("selected.ctx", "4096", r"selected\.ctx: expected an integer, got str"),
    ("selected.threads", 0, r"selected\.threads is 0: should be 1 or more"),
    ("selected.threads", True, r"selected\.threads: expected an integer, got bool"),
    ("selected.file_bytes", -1, r"selected\.file_bytes is -1: should be 0 or more"),
    ("selected.mode", "turbo", r"selected\.mode is 'turbo': should be resident or stream"),
    ("basis.bandwidth_bytes_per_s", -1e9, r"basis\.bandwidth_bytes_per_s is -1000000000\.0: should be above 0"),
    ("basis.efficiency", -1, r"basis\.efficiency is -1\.0: should be above 0"),
    ("budget.decode_ms_per_token", math.nan, r"budget\.decode_ms_per_token: expected a finite number"),
    ("budget.decode_ms_per_token", 0, r"budget\.decode_ms_per_token is 0\.0: should be above 0"),
    ("selected", "everything", r"selected: expected an object, got str"),
])
def test_hostile_plan_documents_are_refused_naming_the_field(tmp_path: Path, dotted: str, value: object, message: str) -> None:
    path = _write(tmp_path / "plan.json", _set(_plan_doc(), dotted, value))
    with pytest.raises(BadInputError, match=rf"^{path}: {message}") as info:
        _load(path)
    assert info.value.exit_code == EXIT_BAD_INPUT and info.value.hint and "\n" not in info.value.message


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b"[" * 100_000 + b"]" * 100_000, b"[]", b"null"])
def test_damaged_plan_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=rf"^{path}: ") as info:
        _load(path)
    assert "\n" not in info.value.message


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], cwd=cwd, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_ship_refuses_a_plan_whose_model_is_a_command(tmp_path: Path, cli_env: dict[str, str], edgedeploy_home: Path) -> None:
    """The CLI for real: the plan is refused at load, before anything is packaged or shipped."""
    work = tmp_path / "work"
    deploy = tmp_path / "a" / "b" / "deploy"
    work.mkdir()
    victim = tmp_path / "a" / "victim"
    victim.parent.mkdir(parents=True)
    victim.write_text("keep me")
    doc = _set(_plan_doc(), "selected.model", NEWLINE_MODEL)
    plan = _write(work / "plan.json", _set(doc, "selected.gguf_path", str(work / "model.gguf")))
    (work / "model.gguf").write_bytes(b"GGUF")
    before = _files(tmp_path)
    res = _cli("ship", "--target", "local", "--plan", str(plan), "--deploy-dir", str(deploy), cwd=work, env=cli_env)
    assert res.returncode == EXIT_BAD_INPUT, res.stderr
    assert "selected.model" in res.stderr and "Traceback" not in res.stderr + res.stdout
    assert "error:" in res.stderr and "hint:" in res.stderr
    assert victim.read_text() == "keep me" and not any(p.name == "pwned" for p in tmp_path.rglob("*"))
    assert not list(deploy.glob("releases/*")) and not list(deploy.glob("models/*"))
    new = _files(tmp_path) - before
    assert all(p == edgedeploy_home or edgedeploy_home in p.parents or p == deploy or deploy in p.parents or p in deploy.parents for p in new), new


# --- facts documents (plan --facts) ---------------------------------------------------------


def _facts_doc() -> dict[str, Any]:
    from toolchain.core.nouns import BoardFacts, CpuFacts, HostFacts, MemoryFacts, OsFacts, StorageFacts

    facts = HostFacts(target="t", board=BoardFacts(), os=OsFacts(kind="linux"), cpu=CpuFacts(arch="aarch64", cores=4, recommended_threads=4),
                      memory=MemoryFacts(total_bytes=8 << 30, available_bytes=6 << 30, usable_bytes=5 << 30),
                      storage=StorageFacts(path="/", free_bytes=10 << 30))
    doc: dict[str, Any] = to_json_dict(facts)
    return doc


@pytest.mark.parametrize(("dotted", "value", "message"), [
    ("memory.usable_bytes", "lots", r"memory\.usable_bytes: expected an integer, got str 'lots'"),
    ("memory.usable_bytes", -1, r"memory\.usable_bytes is -1: should be 0 or more"),
    ("cpu.cores", 0, r"cpu\.cores is 0: should be 1 or more"),
    ("cpu.recommended_threads", -4, r"cpu\.recommended_threads is -4: should be 1 or more"),
    ("bandwidth.read_bytes_per_s", math.nan, r"bandwidth\.read_bytes_per_s: expected a finite number"),
    ("bandwidth.read_bytes_per_s", -1, r"bandwidth\.read_bytes_per_s is -1\.0: should be 0 or more"),
    ("storage.read_bytes_per_s", "fast", r"storage\.read_bytes_per_s: expected a number"),
    ("memory", None, r"memory: expected an object, got null"),
])
def test_hostile_facts_documents_are_refused_naming_the_field(tmp_path: Path, dotted: str, value: object, message: str) -> None:
    path = _write(tmp_path / "facts.json", _set(_facts_doc(), dotted, value))
    with pytest.raises(BadInputError, match=rf"^{path}: {message}"):
        load_facts(path)


def test_a_valid_facts_document_loads(tmp_path: Path) -> None:
    from toolchain.core.nouns import HostFacts

    doc = _facts_doc()
    assert load_facts(_write(tmp_path / "facts.json", doc)) == from_dict(HostFacts, doc)


def test_plan_refuses_a_facts_file_with_a_string_for_a_number(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = _write(tmp_path / "facts.json", _set(_facts_doc(), "memory.usable_bytes", "lots"))
    res = _cli("plan", "--facts", str(path), cwd=tmp_path, env=cli_env)
    assert res.returncode == EXIT_BAD_INPUT and "memory.usable_bytes" in res.stderr and "Traceback" not in res.stderr


# --- release ids, the release store, the launcher -------------------------------------------


def test_release_ids_are_built_from_identifiers_only() -> None:
    from toolchain.deploy.package import release_id

    sel = _plan().selected
    assert sel is not None
    rid = release_id(sel, "ab" * 32)
    assert rid.endswith("-smollm2-135m-instruct-q4_1-abababab") and check_release_id(rid, "r") == rid
    for model in (NEWLINE_MODEL, PYTHON_MODEL, TRAVERSAL_MODEL, "my model (1)"):  # a local GGUF's file name may be anything
        rid = release_id(replace(sel, model=model), "ab" * 32)
        assert is_identifier(rid, "release id") and "/" not in rid and "\n" not in rid
    with pytest.raises(BadInputError, match="not hexadecimal"):
        release_id(sel, "../../x" + "0" * 57)


def _shipper(root: Path) -> Any:
    from toolchain.deploy.releases import Shipper
    from toolchain.transports.local import LocalTransport

    return Shipper(LocalTransport(), str(root), python=sys.executable)


def test_the_store_keeps_releases_inside_the_deploy_root(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "deploy"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    shipper = _shipper(root)
    shipper.prepare()
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    (bundle_dir / "run.sh").write_text("#!/bin/sh\n")
    for rid in ("../../../victim", "x/../../../../victim", "/abs", NEWLINE_MODEL, ".."):
        bundle = Bundle(root=str(bundle_dir), release_id=rid, model_file="model.gguf", model_sha256="ab" * 32,
                        files=[BundleFile("run.sh", "00", 10)])
        with pytest.raises(BadInputError, match="release id"):
            shipper.install_release(bundle)
        with pytest.raises(BadInputError, match="release id"):
            shipper.activate(rid)
        assert shipper.manifest(rid) == {}
    with pytest.raises(BadInputError, match="sha256"):
        shipper.install_release(Bundle(root=str(bundle_dir), release_id="r1", model_file="model.gguf", model_sha256="../../x", files=[]))
    assert (victim / "precious").read_text() == "keep me" and sorted(p.name for p in victim.iterdir()) == ["precious"]
    assert sorted(p.name for p in root.iterdir()) == ["models", "releases"] and not list((root / "releases").iterdir())
    assert shipper.release_path("20250101-000000-m-q-abababab") == f"{root}/releases/20250101-000000-m-q-abababab"


def test_the_launcher_gets_only_quoted_values(tmp_path: Path) -> None:
    from toolchain.deploy.package import package, shell_comment

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF not really")
    python = "/opt/py'; touch pwned; echo '\n$(touch pwned2)`touch pwned3`}"
    plan = replace(_plan(), selected=replace(_plan().selected, model=PYTHON_MODEL))  # type: ignore[type-var]
    bundle = package(plan, gguf, tmp_path / "bundle", python=python, model_sha256="ab" * 32)
    launcher = tmp_path / "bundle" / "run.sh"
    text = launcher.read_text()
    assert is_identifier(bundle.release_id, "release id") and f"release {bundle.release_id}." in text.splitlines()[1]
    work = tmp_path / "work"
    work.mkdir()
    # The python is never run here: `run.sh bogus` reads the settings, then prints its usage.
    res = subprocess.run(["sh", str(launcher), "bogus"], cwd=work, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "EDGEDEPLOY_PYTHON": ""})
    assert res.returncode == 2 and "usage: run.sh" in res.stderr
    assert not [p for p in tmp_path.rglob("pwned*")]
    start = text.index("\nPY=") + 1
    assignments = text[start:text.index("}\n", start) + 2]  # the quoted value may span lines
    res = subprocess.run(["sh", "-c", '. /dev/stdin; printf %s "$PY"'], input=assignments, capture_output=True, text=True,
                         cwd=work, timeout=30, env={k: v for k, v in os.environ.items() if k != "EDGEDEPLOY_PYTHON"})
    assert res.stdout == python and not [p for p in tmp_path.rglob("pwned*")]
    settings = json.loads((tmp_path / "bundle" / "settings.json").read_text())
    assert settings["model"] == PYTHON_MODEL  # data in JSON, read by the runner: never code
    assert shell_comment("a\nb\r\x1bc") == "a?b??c"


# --- lab files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../../escape", "/abs", "a/b", "..", "'x\\ny'"])
def test_lab_board_names_must_be_slugs(tmp_path: Path, name: str) -> None:
    from toolchain.fleet.inventory import load_lab

    lab = tmp_path / "lab.yaml"
    lab.write_text(f"name: x\nboards:\n  {json.dumps(name)}: local\n")
    with pytest.raises(BadInputError, match=r"lab.yaml: boards key is .*not a valid name") as info:
        load_lab(lab)
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_lab_run_refuses_a_board_named_like_a_path(tmp_path: Path, cli_env: dict[str, str]) -> None:
    lab = tmp_path / "lab" / "lab.yaml"
    lab.parent.mkdir()
    lab.write_text('name: x\nboards:\n  "../../../escape": local\n')
    res = _cli("lab", "run", str(lab), cwd=lab.parent, env=cli_env)
    assert res.returncode == EXIT_BAD_INPUT, res.stderr
    assert "boards key" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "escape").exists() and not list(tmp_path.rglob("escape"))


def test_lab_board_names_that_are_slugs_still_load(tmp_path: Path) -> None:
    from toolchain.fleet.inventory import load_lab

    lab = tmp_path / "lab.yaml"
    lab.write_text("name: x\nboards:\n  pi5-a: local\n  orin_1.lab: local\n  7: local\n")
    assert [b.name for b in load_lab(lab).boards] == ["pi5-a", "orin_1.lab", "7"]


# --- the wheelhouse -------------------------------------------------------------------------


def _runtime(**kw: Any) -> Any:
    from toolchain.deploy.provision import Runtime

    values: dict[str, Any] = {"python": "/usr/bin/python3", "version": "3.11.2", "machine": "aarch64", "libc": "glibc2.36",
                              "flags": ("neon", "asimd"), "pip": True, "venv": True, "llama_cpp": None, "server": False}
    return Runtime(**{**values, **kw})


def test_wheelhouse_keys_stay_inside_the_wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from toolchain.core import settings
    from toolchain.deploy.provision import wheels_for

    house = tmp_path / "cache" / "wheelhouse"
    monkeypatch.setenv(settings.WHEELHOUSE, str(house))
    assert wheels_for(_runtime(), "pi") == house / "aarch64-glibc2.36-cp311-neon+asimd"
    for field_name, value in (("machine", "../../x"), ("machine", "/abs"), ("libc", "glibc/../../x"), ("version", "3.11\n"),
                              ("machine", "")):
        with pytest.raises(BadInputError, match=rf"^pi: the target's Python reports {field_name} is .*not a valid name"):
            wheels_for(_runtime(**{field_name: value}), "pi")
    assert not tmp_path.joinpath("x").exists() and not house.exists()


def test_a_board_that_prints_nonsense_for_its_python_is_not_a_python(tmp_path: Path) -> None:
    from toolchain.deploy.provision import inspect_python
    from toolchain.transports.local import LocalTransport

    for printed in ('{"python": 1}', "[]", '{"machine": "x"}', '"x"', "{" * 50_000):
        script = tmp_path / "py"
        script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{printed}\nEOF\n")
        script.chmod(0o755)
        assert inspect_python(LocalTransport(), str(script)) is None


def test_ship_refuses_a_plan_whose_model_file_is_a_fifo(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A plan may name any host path: a FIFO (or a device) would block the reader forever."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    doc = _set(_plan_doc(), "selected.gguf_path", str(fifo))
    plan = _write(tmp_path / "plan.json", doc)
    res = _cli("ship", "--target", "local", "--plan", str(plan), "--deploy-dir", str(tmp_path / "deploy"), cwd=tmp_path, env=cli_env)
    assert res.returncode == EXIT_BAD_INPUT, res.stderr
    assert "is not a regular file" in res.stderr and "Traceback" not in res.stderr + res.stdout


def test_a_damaged_plan_fails_at_the_plan_stage_before_the_probe(tmp_path: Path, cli_env: dict[str, str],
                                                                 edgedeploy_home: Path) -> None:
    from toolchain.core.paths import runs_dir

    doc = _set(_plan_doc(), "selected.predicted.decode_tokens_per_s", "fast")
    plan = _write(tmp_path / "plan.json", doc)
    res = _cli("ship", "--target", "local", "--plan", str(plan), "--deploy-dir", str(tmp_path / "deploy"), cwd=tmp_path, env=cli_env)
    assert res.returncode == EXIT_BAD_INPUT, res.stderr
    [report] = list(runs_dir().rglob("report.json"))
    doc = json.loads(report.read_text())
    assert doc["failed_stage"] == "plan" and not (report.parent / "facts.json").exists()


# --- catalog entries (profiles/models) --------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "message"), [
    ("n_layer: 30", "n_layer: 1000000000", r"arch out of range: n_layer 1000000000"),
    ("n_layer: 30", "n_layer: 0", r"arch out of range: n_layer 0"),
    ("n_head: 9", "n_head: 0", r"head_count 0"),
    ("n_head: 9", "n_head: [9, x]", r"'n_head' should list 30 integers"),
    ("head_dim: 64", "head_dim: -64", r"head_dim -64"),
    ("context_length: 8192", "context_length: 0", r"context_length 0"),
    ("params: 134515008", "params: 0", r"'params' should be above 0"),
    ("id: smollm2-135m-instruct", "id: \"x; rm -rf ~\"", r"id is .x; rm -rf ~.: not a valid model id"),
])
def test_hostile_catalog_entries_are_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    from toolchain.core.paths import profiles_dir
    from toolchain.models.catalog import load_catalog

    text = (profiles_dir() / "models" / "smollm2-135m-instruct.yaml").read_text()
    assert old in text
    (tmp_path / "smollm2-135m-instruct.yaml").write_text(text.replace(old, new, 1))
    with pytest.raises(BadInputError, match=message):
        load_catalog(tmp_path)


def test_a_catalog_file_size_must_be_positive(tmp_path: Path) -> None:
    from toolchain.core.paths import profiles_dir
    from toolchain.models.catalog import load_catalog

    text = (profiles_dir() / "models" / "smollm2-135m-instruct.yaml").read_text()
    (tmp_path / "smollm2-135m-instruct.yaml").write_text(text.replace("file_bytes: null", "file_bytes: -5", 1))
    with pytest.raises(BadInputError, match=r"quants\.F16: file_bytes -5 should be above 0"):
        load_catalog(tmp_path)


# --- serve state (<deploy root>/serve/serve.json, written on the board) -----------------------


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"manager": "supervisor", "port": "eighty", "release": "r1"}', {"manager": "supervisor", "release": "r1"}),
    (b'{"manager": "supervisor", "port": 99999}', {"manager": "supervisor"}),
    (b'{"manager": "supervisor", "port": 8080}', {"manager": "supervisor", "port": 8080}),
    (b'[1, 2]', {}),
    (b'{"port": 80' + b'[' * 20_000, {}),
    (b'\xff\xfe not json', {}),
    (b'', {}),
])
def test_serve_state_keeps_only_what_has_its_type(tmp_path: Path, content: bytes, expected: dict[str, object]) -> None:
    from toolchain.deploy.serve import Server
    from toolchain.transports.local import LocalTransport

    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "serve.json").write_bytes(content)
    with LocalTransport() as t:
        assert dict(Server(t, str(tmp_path), sys.executable).state()) == expected
