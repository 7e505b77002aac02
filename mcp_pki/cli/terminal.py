"""Untrusted text on a terminal: shown, never obeyed.

A certificate's names come from a CSR someone sent, an inventory row from a database others can
write, a subject from the file being verified. Printed raw, ESC starts an escape sequence (clear
the screen, move the cursor, retitle the window), CR returns to the start of the line to
overwrite it, LF fakes a line of our own ("issued ..."), a bidi override reverses what follows.
Each such value goes through `shown` on its way to the terminal. ``--json`` output needs
nothing more: json.dumps writes every control character as a \\u escape.
"""

import dataclasses
from typing import TypeVar

from mcp_pki.controls import escape_controls

T = TypeVar("T")


def shown(value: object) -> str:
    """`value` as text, every control character escaped the way Python writes it (\\x1b, \\r,
    \\u202e); plain text comes back unchanged."""
    return escape_controls(str(value))


def shown_all(values: tuple[str, ...] | list[str], separator: str = ", ") -> str:
    """Several untrusted values joined for one line."""
    return separator.join(shown(v) for v in values)


def shown_fields(record: T) -> T:
    """A copy of a dataclass record (a listed or shown certificate) with every text field, and
    every tuple of text, ready for the terminal; dates, numbers and enums stay as they are."""
    changes: dict[str, object] = {}
    for item in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, item.name)
        if isinstance(value, str):
            escaped: object = shown(value)
        elif isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            escaped = tuple(shown(v) for v in value)
        else:
            continue
        if escaped != value:
            changes[item.name] = escaped
    # The usual record holds nothing to escape: no copy (list prints 100,000 of them).
    return dataclasses.replace(record, **changes) if changes else record  # type: ignore[type-var]
