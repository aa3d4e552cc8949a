"""One request builder for the CLI and the lab: what one accepts, the other accepts the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.core.errors import BadInputError
from toolchain.fleet.inventory import load_lab
from toolchain.plan.request import build_plan_request, resolve_budget


def test_named_budgets_resolve_the_same_for_cli_and_lab(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text("name: x\ndefaults: {model: smollm2-135m-instruct, quant: Q4_1, budget: reading, ctx: 512, threads: 2}\n"
                   "labels: {fast: {budget: chat}}\nboards:\n  a: local\n  b: {target: local, labels: [fast]}\n")
    a, b = load_lab(lab).boards
    cli = build_plan_request(budget="reading", ctx=512, models=["smollm2-135m-instruct"], quants=["Q4_1"], threads=2)
    assert a.request == cli  # the same noun, field for field
    assert a.budget.decode_ms_per_token == 120.0 and a.budget.source == "reading"
    assert b.budget.decode_ms_per_token == 50.0 and b.budget.ttft_ms == 1000.0


def test_a_bad_setting_names_the_lab_key(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text("name: x\nboards:\n  a: {target: local, budget: readng}\n")
    with pytest.raises(BadInputError, match=r"lab.yaml: boards.a.budget: "):
        load_lab(lab)
    lab.write_text("name: x\nboards:\n  a: {target: local, threads: 0}\n")
    with pytest.raises(BadInputError, match=r"boards.a.*--threads 0"):
        load_lab(lab)


@pytest.mark.parametrize("efficiency", [0.0, -1.0, float("nan"), float("inf")])
def test_impossible_efficiency_is_refused(efficiency: float) -> None:
    with pytest.raises(BadInputError, match="--efficiency"):
        build_plan_request(efficiency=efficiency)


def test_budget_forms() -> None:
    assert resolve_budget("120ms").decode_ms_per_token == 120.0
    assert resolve_budget("8.33tok/s").decode_ms_per_token == pytest.approx(120.05, abs=0.01)
    assert resolve_budget("chat", "2s").ttft_ms == 2000.0  # --ttft overrides the profile's
