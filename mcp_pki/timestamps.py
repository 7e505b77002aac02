"""How times are printed: ISO 8601 in UTC with a Z, as scripts parse them."""

from datetime import datetime


def iso_utc(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
