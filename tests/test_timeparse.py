"""Exact time parsing: no float anywhere between the text and the Fraction."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.engine.errors import EngineError
from app.engine.timeparse import TimeSpec, format_fraction, parse_seconds, parse_time, parse_tolerance


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12.5", Fraction(25, 2)),
        ("0", Fraction(0)),
        ("0.1", Fraction(1, 10)),  # a float would give 3602879701896397/36028797018963968
        ("1001/30000", Fraction(1001, 30000)),
        ("-1", Fraction(-1)),
        ("1e-3", Fraction(1, 1000)),
        (".5", Fraction(1, 2)),
        ("1:02.5", Fraction(125, 2)),
        ("1:00:00", Fraction(3600)),
        (" 2 ", Fraction(2)),
        ("0.033366666666666666666666666667", Fraction(33366666666666666666666666667, 10**30)),
    ],
)
def test_seconds_forms_parse_exactly(text: str, expected: Fraction) -> None:
    assert parse_time(text) == TimeSpec(expected)


def test_percent() -> None:
    spec = parse_time("50%")
    assert spec.percent and spec.value == 50
    assert spec.resolve(Fraction(10)) == 5
    assert parse_time("12.5%").resolve(Fraction(8)) == 1
    with pytest.raises(EngineError) as info:
        spec.resolve(None)
    assert info.value.code == "invalid_parameter"


@pytest.mark.parametrize(
    "text", ["", "abc", "nan", "inf", "1/0", "101%", "-5%", "1e99999", "1:60:00", "0x10", "1_000", "1" * 100, "½", "١٢"]
)
def test_garbage_is_invalid_parameter(text: str) -> None:
    with pytest.raises(EngineError) as info:
        parse_time(text)
    assert info.value.code == "invalid_parameter"


def test_tolerance() -> None:
    assert parse_tolerance("inf") is None
    assert parse_tolerance("0.5") == Fraction(1, 2)
    assert parse_tolerance(None) == 0
    with pytest.raises(EngineError):
        parse_tolerance("-1")


@given(st.integers(min_value=-(10**12), max_value=10**12), st.integers(min_value=1, max_value=10**9))
def test_rational_round_trip(value: int, timescale: int) -> None:
    assert parse_seconds(f"{value}/{timescale}") == Fraction(value, timescale)


@given(st.decimals(min_value=-(10**9), max_value=10**9, allow_nan=False, allow_infinity=False, places=9))
def test_decimal_round_trip(value: object) -> None:
    text = str(value)
    parsed = parse_seconds(text)
    assert parsed == Fraction(text)
    assert Fraction(format_fraction(parsed)) == parsed  # nine places are enough to say it back exactly


@given(st.text(max_size=80))
def test_any_text_parses_or_is_invalid_parameter(text: str) -> None:
    try:
        spec = parse_time(text)
    except EngineError as exc:
        assert exc.code == "invalid_parameter"
    else:
        assert isinstance(spec.value, Fraction)


def test_format_fraction() -> None:
    assert format_fraction(Fraction(1001, 30000)) == "0.033366667"
    assert format_fraction(Fraction(5, 2)) == "2.5"
    assert format_fraction(Fraction(0)) == "0"
    assert format_fraction(Fraction(-1, 4)) == "-0.25"
