"""Durations as people write them on the command line: ``90d``, ``12h``, ``2y``, ``30m``."""

import re
from datetime import timedelta

from mcp_pki.errors import InvalidInput

_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1),
          "w": timedelta(weeks=1), "y": timedelta(days=365)}
_PATTERN = re.compile(r"(\d{1,6})([mhdwy])")
# Longer than any certificate or CRL should live, and far from datetime's year 9999.
MAX_DURATION = timedelta(days=36500)


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

