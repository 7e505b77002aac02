"""Untrusted text on a terminal: shown, never obeyed.

A certificate's names come from a CSR someone sent, an inventory row from a database others can
write, a subject from the file being verified. Printed raw, ESC starts an escape sequence (clear
the screen, move the cursor, retitle the window), CR returns to the start of the line to
overwrite it, LF fakes a line of our own ("issued ..."), a bidi override reverses what follows.
Each such value goes through `shown` on its way to the terminal. ``--json`` output needs
nothing more: json.dumps writes every control character as a \\u escape.
"""

import dataclasses
import operator
from collections.abc import Callable
from typing import Any, TypeVar

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
    fields = _FIELDS.get(type(record))
    if fields is None:
        names = tuple(f.name for f in dataclasses.fields(record))  # type: ignore[arg-type]
        fields = _FIELDS[type(record)] = (names, operator.attrgetter(*names))
    names, get = fields
    values = get(record)
    if len(names) == 1:
        values = (values,)
    # The usual record is printable ASCII throughout: one check in C, no copy (list prints
    # 100,000 of them).
    texts = [v for v in values if isinstance(v, str)]
    texts += [t for v in values if isinstance(v, tuple) for t in v if isinstance(t, str)]
    joined = "".join(texts)
    if joined.isascii() and joined.isprintable():
        return record
    changes: dict[str, object] = {}
    for name, value in zip(names, values, strict=True):
        if isinstance(value, str):
            changes[name] = shown(value)
        elif isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            changes[name] = tuple(shown(v) for v in value)
    return dataclasses.replace(record, **changes)  # type: ignore[type-var]


_FIELDS: dict[type, tuple[tuple[str, ...], Callable[[Any], Any]]] = {}
