"""Go-style durations ("40m", "1h30m", "1.5h", "300ms"), as Capo's metav1.Duration reads them."""

from __future__ import annotations

from datetime import timedelta

# Nanoseconds per unit, as Go's time package defines them (both micro signs are accepted by Go).
_UNITS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # MICRO SIGN
    "\u03bcs": 1_000,  # GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
# Go stores a duration in an int64 of nanoseconds; anything beyond that is an overflow there.
_MAX_NS = (1 << 63) - 1


class DurationError(ValueError):
    """A duration string that Go's time.ParseDuration would also reject; the message says why."""


def _parse_ns(text: str) -> int:
    """Go's time.ParseDuration, returning integer nanoseconds."""
    if not isinstance(text, str):
        raise DurationError(f"duration must be a string, got {type(text).__name__} {text!r}")
    if text == "":
        raise DurationError("empty duration")
    quoted = '"' + text + '"'
    rest = text
    negative = False
    if rest[0] in "+-":
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if rest == "":
        raise DurationError(f"invalid duration {quoted}")
    total = 0
    while rest:
        # The number: digits, optionally a fraction. Go requires a digit on at least one side of '.'.
        i = 0
        while i < len(rest) and rest[i].isascii() and rest[i].isdigit():
            i += 1
        whole = rest[:i]
        rest = rest[i:]
        fraction = ""
        if rest.startswith("."):
            rest = rest[1:]
            i = 0
            while i < len(rest) and rest[i].isascii() and rest[i].isdigit():
                i += 1
            fraction = rest[:i]
            rest = rest[i:]
            if not whole and not fraction:
                raise DurationError(f"invalid duration {quoted}")
        elif not whole:
            raise DurationError(f"invalid duration {quoted}")
        # The unit: everything up to the next digit or '.'.
        i = 0
        while i < len(rest) and rest[i] != "." and not (rest[i].isascii() and rest[i].isdigit()):
            i += 1
        unit = rest[:i]
        rest = rest[i:]
        if not unit:
            raise DurationError(f"missing unit in duration {quoted}")
        scale = _UNITS.get(unit)
        if scale is None:
            raise DurationError(f'unknown unit "{unit}" in duration {quoted}')
        value = int(whole or "0") * scale
        if fraction:
            # Go truncates the fraction's contribution to whole nanoseconds.
            value += int(fraction) * scale // 10 ** len(fraction)
        total += value
        if total > _MAX_NS + (1 if negative else 0):
            raise DurationError(f"invalid duration {quoted}: out of range")
    return -total if negative else total


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration string. Units: ns, us, µs, ms, s, m, h. A bare "0" is zero.

    Raises DurationError with a specific reason (empty, missing unit, unknown unit 'x', ...).
    Python's timedelta has microsecond resolution: smaller parts are truncated toward zero.
    """
    ns = _parse_ns(text)
    micros = abs(ns) // 1_000
    return timedelta(microseconds=-micros if ns < 0 else micros)


def _format_seconds(micros: int) -> str:
    """Seconds with the fraction written only as far as needed: 1_500_000 -> "1.5"."""
    whole, frac = divmod(micros, 1_000_000)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:06d}".rstrip("0")


def format_duration(value: timedelta) -> str:
    """Shortest Go-style text for a duration: 2400 s -> "40m", 5400 s -> "1h30m", 0.5 s -> "500ms"."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if micros == 0:
        return "0s"
    if micros < 0:
        return "-" + format_duration(-value)
    if micros < 1_000:
        return f"{micros}\u00b5s"
    if micros < 1_000_000:
        whole, frac = divmod(micros, 1_000)
        return f"{whole}ms" if not frac else f"{whole}.{frac:03d}".rstrip("0") + "ms"
    hours, rem = divmod(micros, 3_600_000_000)
    minutes, rem = divmod(rem, 60_000_000)
    # Unlike Go's String() ("40m0s"), zero components are left out: people write "40m".
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if rem:
        parts.append(_format_seconds(rem) + "s")
    return "".join(parts)
