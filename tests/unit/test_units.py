import pytest

from toolchain.core.errors import BadInputError
from toolchain.core.units import parse_budget, parse_rate, parse_size


@pytest.mark.parametrize(("text", "ms"), [("120ms", 120.0), ("0.12s", 120.0), ("8.33tok/s", 1000 / 8.33), ("50 ms", 50.0)])
def test_budget_forms_are_the_same_thing(text: str, ms: float) -> None:
    assert parse_budget(text).decode_ms_per_token == pytest.approx(ms)


@pytest.mark.parametrize("text", ["120", "fast", "-5ms", "0ms", "120 parsecs"])
def test_budget_without_a_unit_says_what_is_accepted(text: str) -> None:
    with pytest.raises(BadInputError) as err:
        parse_budget(text)
    assert "120ms" in err.value.hint and "tok/s" in err.value.hint


def test_sizes_and_rates_need_units() -> None:
    assert parse_size("8GB") == 8_000_000_000
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_rate("17GB/s") == 17e9
    for bad in ("8", "8 bananas"):
        with pytest.raises(BadInputError):
            parse_size(bad)
    with pytest.raises(BadInputError):
        parse_rate("17GB")
