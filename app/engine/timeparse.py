"""Exact time parsing: nothing here ever passes through a float.

Accepted forms for a requested time:

* decimal seconds: ``12.5``, ``0.033366``, ``-1`` (negative parses, and is refused later as
  ``no_image_at_time`` unless a tolerance window reaches a frame), ``1e-3``
* a rational ``value/timescale`` as in CMTime: ``1001/30000``
* a clock: ``[HH:]MM:SS[.fff]``: ``1:02.5`` is 62.5 s
* a percentage of the asset's duration: ``50%``, ``12.5%``

Tolerances take the same seconds forms (never negative) or ``inf``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from app.engine.errors import InvalidParameter

_DECIMAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DECIMAL_RE = re.compile(rf"^{_DECIMAL}$", re.ASCII)
_RATIONAL_RE = re.compile(r"^([+-]?\d+)/(\d+)$", re.ASCII)
_PERCENT_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)%$", re.ASCII)
_CLOCK_RE = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$", re.ASCII)
_MAX_CHARS = 64  # a time is short; refuse novels before any regex or big-number work
_MAX_EXPONENT = 12  # 1e12 s is ~31,000 years: plenty, and keeps Fraction arithmetic small
# The largest time or tolerance in seconds (~31,700 years): far past any asset, and small enough that
# any stream's ticks for it fit FFmpeg's 64-bit timestamps (a larger one overflowed them in the decoder).
MAX_SECONDS = 10**12


@dataclass(frozen=True)
class TimeSpec:
    """A requested time: seconds on the asset timeline, or a percentage of the duration."""

    value: Fraction
    percent: bool = False

    def resolve(self, duration: Fraction | None) -> Fraction:
        """Seconds on the asset timeline; a percentage needs the asset's duration."""
        if not self.percent:
            return self.value
        if duration is None:
            raise InvalidParameter("a percentage time needs an asset with a known duration", parameter="t")
        return self.value * duration / 100

    def __str__(self) -> str:
        return f"{format_fraction(self.value)}%" if self.percent else format_fraction(self.value)


def _parse_decimal(text: str, parameter: str) -> Fraction:
    exponent = re.search(r"[eE]([+-]?\d+)$", text)
    if exponent and abs(int(exponent.group(1))) > _MAX_EXPONENT:
        raise InvalidParameter(f"{parameter}: exponent out of range in {text!r}", parameter=parameter)
    return Fraction(text)


def parse_seconds(text: str, parameter: str = "t") -> Fraction:
    """Parse decimal, rational or clock seconds exactly, at most :data:`MAX_SECONDS` either way."""
    return _in_range(_parse_seconds(text, parameter), parameter)


def _in_range(value: Fraction, parameter: str) -> Fraction:
    if abs(value) > MAX_SECONDS:
        raise InvalidParameter(f"{parameter}: out of range (at most {MAX_SECONDS} seconds)", parameter=parameter)
    return value


def _parse_seconds(text: str, parameter: str) -> Fraction:
    text = text.strip()
    if not text or len(text) > _MAX_CHARS:
        raise InvalidParameter(f"{parameter}: expected a time in seconds", parameter=parameter)
    if _DECIMAL_RE.match(text):
        return _parse_decimal(text, parameter)
    if m := _RATIONAL_RE.match(text):
        value, timescale = int(m.group(1)), int(m.group(2))
        if timescale == 0:
            raise InvalidParameter(f"{parameter}: timescale must not be 0", parameter=parameter)
        return Fraction(value, timescale)
    if m := _CLOCK_RE.match(text):
        hours = int(m.group(1) or 0)
        minutes, seconds = int(m.group(2)), Fraction(m.group(3))
        if (m.group(1) is not None and minutes >= 60) or seconds >= 60:
            raise InvalidParameter(f"{parameter}: invalid clock time {text!r}", parameter=parameter)
        return hours * 3600 + minutes * 60 + seconds
    raise InvalidParameter(
        f"{parameter}: {text!r} is not a time (use seconds like 12.5, a rational like 1001/30000, "
        "a clock like 1:02.5, or a percentage like 50%)",
        parameter=parameter,
    )


def parse_time(text: str | int | Fraction | TimeSpec, parameter: str = "t") -> TimeSpec:
    """Parse a requested time (seconds forms or a percentage)."""
    if isinstance(text, TimeSpec):
        return text
    if isinstance(text, Fraction | int) and not isinstance(text, bool):
        return TimeSpec(_in_range(Fraction(text), parameter))
    if not isinstance(text, str):
        raise InvalidParameter(f"{parameter}: expected a string time, not {type(text).__name__}", parameter=parameter)
    stripped = text.strip()
    if m := _PERCENT_RE.match(stripped):
        percent = Fraction(m.group(1))
        if percent > 100:
            raise InvalidParameter(f"{parameter}: a percentage must be between 0% and 100%", parameter=parameter)
        return TimeSpec(percent, percent=True)
    return TimeSpec(parse_seconds(stripped, parameter))


def parse_tolerance(text: str | int | Fraction | None, parameter: str = "tolerance") -> Fraction | None:
    """Parse a tolerance: seconds (>= 0) or ``inf``. ``None`` in the result means infinite."""
    if text is None:
        return Fraction(0)
    if isinstance(text, Fraction | int) and not isinstance(text, bool):
        value = _in_range(Fraction(text), parameter)
    elif isinstance(text, str):
        if text.strip().lower() in {"inf", "+inf", "infinity", "+infinity"}:
            return None
        value = parse_seconds(text, parameter)
    else:
        raise InvalidParameter(f"{parameter}: expected seconds or 'inf'", parameter=parameter)
    if value < 0:
        raise InvalidParameter(f"{parameter}: must not be negative", parameter=parameter)
    return value


def format_fraction(value: Fraction, digits: int = 9) -> str:
    """Seconds as a decimal string, exact when it terminates within ``digits`` places, else rounded
    half-even to ``digits`` places (nanoseconds: well past the microsecond the API promises)."""
    scaled = value * 10**digits
    rounded = round(scaled)  # Fraction.__round__ is exact, half-even
    sign = "-" if rounded < 0 else ""
    whole, frac = divmod(abs(rounded), 10**digits)
    text = f"{sign}{whole}.{frac:0{digits}d}".rstrip("0").rstrip(".")
    return "0" if text in {"", "-0"} else text


def format_rational_time(value: Fraction, time_base: Fraction) -> str:
    """``value/timescale`` of a time, as in CMTime: the timescale is the stream's (``time_base``'s
    denominator), reduced only where ``value`` is not a whole number of its ticks (a timeline origin
    between ticks)."""
    timescale = time_base.denominator
    ticks = value * timescale
    if ticks.denominator == 1:
        return f"{ticks.numerator}/{timescale}"
    return f"{value.numerator}/{value.denominator}"
