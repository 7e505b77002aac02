"""Control characters: what untrusted text may not carry into a config file or a terminal.

A certificate name, a CSR's SAN, a database row or a ``--var`` value is text someone else
chose. Printed raw, ESC starts a terminal escape sequence, CR rewrites the line, a bidi override
reorders it; rendered raw, a line break ends a comment or a string and starts a directive.
One definition serves both the renderer, which refuses such text, and the command line, which
shows it escaped.
"""

import unicodedata

# Cc: C0, DEL and C1 controls (ESC, CR, LF, NEL...). Cf: format characters, among them the
# bidi overrides and isolates (U+202A-E, U+2066-9), zero-width characters and the BOM.
# Zl, Zp: U+2028 and U+2029, line breaks for YAML and JavaScript. Cs: lone surrogates, which
# arrive from undecodable command-line bytes and cannot be written out at all. Cn: unassigned
# code points and noncharacters (U+FFFE), which YAML readers refuse.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})


def is_control(character: str) -> bool:
    """True for a character that must never reach a config file or a terminal as itself."""
    return unicodedata.category(character) in _CONTROL_CATEGORIES


def first_control(text: str) -> str | None:
    """The first control character in `text`, or None."""
    if text.isascii() and text.isprintable():
        return None  # the usual case, answered in C: ASCII controls are all non-printable
    return next((c for c in text if is_control(c)), None)


def escape_control(character: str) -> str:
    """One control character as a visible escape, the way Python writes it (\\x1b, \\u202e)."""
    code = ord(character)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_controls(text: str) -> str:
    """`text` with every control character replaced by its visible escape; the rest untouched."""
    if first_control(text) is None:
        return text  # the usual case: no copy
    return "".join(escape_control(c) if is_control(c) else c for c in text)
