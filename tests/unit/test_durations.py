"""Go time.ParseDuration compatibility: what a Capo config file may contain must read the same."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capo_operator.decisions.durations import DurationError, format_duration, parse_duration

# Go stores durations as int64 nanoseconds; timedelta keeps microseconds.
MAX_GO_MICROS = ((1 << 63) - 1) // 1000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40m", timedelta(minutes=40)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("300ms", timedelta(milliseconds=300)),
        ("2h45m30.5s", timedelta(hours=2, minutes=45, seconds=30.5)),
        ("5s", timedelta(seconds=5)),
        ("0", timedelta(0)),
        ("-0", timedelta(0)),
        ("+0", timedelta(0)),
        ("0s", timedelta(0)),
        ("+3s", timedelta(seconds=3)),
        ("-5m", timedelta(minutes=-5)),
        ("-1.5h", timedelta(minutes=-90)),
        (".5s", timedelta(milliseconds=500)),
        ("1.s", timedelta(seconds=1)),
        ("10us", timedelta(microseconds=10)),
        ("10\u00b5s", timedelta(microseconds=10)),  # micro sign
        ("10\u03bcs", timedelta(microseconds=10)),  # Greek mu
        ("2000ns", timedelta(microseconds=2)),
        ("1h1h", timedelta(hours=2)),  # Go allows repeated units
        ("1m30s250ms", timedelta(minutes=1, seconds=30, milliseconds=250)),
        ("0.000001s", timedelta(microseconds=1)),
        ("2562047h", timedelta(hours=2562047)),  # just below Go's int64 limit
    ],
)
def test_parse_accepts_go_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration"),
        ("40", 'missing unit in duration "40"'),
        ("1h30", 'missing unit in duration "1h30"'),
        ("40x", 'unknown unit "x" in duration "40x"'),
        ("5 s", 'unknown unit " s" in duration "5 s"'),
        ("1d", 'unknown unit "d" in duration "1d"'),
        ("5S", 'unknown unit "S" in duration "5S"'),
        ("h", 'invalid duration "h"'),
        (".", 'invalid duration "."'),
        ("-", 'invalid duration "-"'),
        ("+", 'invalid duration "+"'),
        (" 5s", 'invalid duration " 5s"'),
        ("--5s", 'invalid duration "--5s"'),
        ("2562048h", 'invalid duration "2562048h"'),
        ("9223372037s", 'invalid duration "9223372037s"'),
    ],
)
def test_parse_rejects_what_go_rejects(text: str, message: str) -> None:
    with pytest.raises(DurationError) as error:
        parse_duration(text)
    assert message in str(error.value)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(DurationError, match="must be a string"):
        parse_duration(40)  # type: ignore[arg-type]


def test_sub_microsecond_parts_are_truncated() -> None:
    assert parse_duration("1.0000009s") == timedelta(seconds=1)
    assert parse_duration("999ns") == timedelta(0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(minutes=40), "40m"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(seconds=0.5), "500ms"),
        (timedelta(seconds=5), "5s"),
        (timedelta(hours=24), "24h"),
        (timedelta(hours=1, seconds=1), "1h1s"),
        (timedelta(hours=2, minutes=45, seconds=30.5), "2h45m30.5s"),
        (timedelta(microseconds=1500), "1.5ms"),
        (timedelta(microseconds=7), "7\u00b5s"),
        (timedelta(seconds=1, microseconds=1), "1.000001s"),
        (timedelta(minutes=-5), "-5m"),
        (timedelta(days=3), "72h"),
    ],
)
def test_format_is_short_and_go_like(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


go_durations = st.timedeltas(
    min_value=timedelta(microseconds=-MAX_GO_MICROS), max_value=timedelta(microseconds=MAX_GO_MICROS)
)


@settings(max_examples=300)
@given(go_durations)
def test_format_then_parse_round_trips(value: timedelta) -> None:
    text = format_duration(value)
    assert parse_duration(text) == value
    # Shortest form: no zero component such as the "0s" of "40m0s", units in decreasing order.
    if text != "0s":
        parts = re.findall(r"([0-9.]+)(h|ms|m|\u00b5s|s)", text)
        assert "".join(n + u for n, u in parts) == text.lstrip("-")
        assert all(float(number) > 0 for number, _ in parts)
        units = [u for _, u in parts]
        assert units == sorted(units, key=["h", "m", "s", "ms", "\u00b5s"].index)
        assert len(set(units)) == len(units)


@settings(max_examples=200)
@given(
    st.integers(0, 10_000),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999_999),
    st.booleans(),
)
def test_parse_sums_components(hours: int, minutes: int, seconds: int, micros: int, negative: bool) -> None:
    text = f"{'-' if negative else ''}{hours}h{minutes}m{seconds}.{micros:06d}s"
    expected = timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=micros)
    assert parse_duration(text) == (-expected if negative else expected)
