import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopix.units import UnitError, format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1.5h", 5400.0), ("250us", 250e-6), ("250µs", 250e-6),
    (" 2 s ", 2.0), ("1e3ms", 1.0),
])
def test_parse_duration_reads_units(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "", "s", "2 parsecs", "-1s", "0s", "nans", "infs", "1..2s"])
def test_parse_duration_refuses_with_one_line(text):
    with pytest.raises(UnitError) as info:
        parse_duration(text)
    assert "\n" not in str(info.value)


def test_bare_number_gets_a_hint():
    with pytest.raises(UnitError, match="needs a unit: 30s"):
        parse_duration("30")


def test_zero_allowed_when_not_positive():
    assert parse_duration("0s", positive=False) == 0.0


@given(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False))
def test_format_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-3)
