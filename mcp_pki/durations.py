"""Durations as people write them on the command line: ``90d``, ``12h``, ``2y``, ``30m``."""

import re
from datetime import timedelta

from mcp_pki.errors import InvalidInput

_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1),
          "w": timedelta(weeks=1), "y": timedelta(days=365)}
# ASCII digits only: \d and int() also take "٣" or "９", which no one means as a number.
_PATTERN = re.compile(r"([0-9]{1,6})([mhdwy])")
# Longer than any certificate or CRL should live, and far from datetime's year 9999.
MAX_DURATION = timedelta(days=36500)
# The shortest certificate validity or CRL lifetime we sign: anything shorter expires before
# clocks across a fleet agree, or before a server has even reloaded it.
MIN_LIFETIME = timedelta(hours=1)


def parse_duration(text: str) -> timedelta:
    """Parse ``<number><unit>`` with unit m, h, d, w or y (365 days); refuse zero."""
    match = _PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidInput(
            f"invalid duration {text!r}: write a number and a unit, e.g. 90d, 12h, 2y, 30m"
        )
    amount, unit = int(match.group(1)), match.group(2)
    if amount == 0:
        raise InvalidInput(f"invalid duration {text!r}: must be greater than zero")
    duration = amount * _UNITS[unit]
    if duration > MAX_DURATION:
        raise InvalidInput(f"invalid duration {text!r}: at most 100y")
    return duration



def parse_lifetime(text: str, *, what: str) -> timedelta:
    """A validity or a CRL's next update: a duration of at least `MIN_LIFETIME`."""
    duration = parse_duration(text)
    check_lifetime(duration, what=what)
    return duration


def check_lifetime(duration: timedelta, *, what: str) -> None:
    if duration < MIN_LIFETIME:
        raise InvalidInput(f"{what} must be at least 1h")
