"""Jinja filters: each writes a value the way one file format reads it.

A path with a space, a %, a $ or a quote must reach nginx, Caddy, systemd, cron, the shell,
JSON, YAML, Python and JavaScript as the same single value; each format has its own rules, so
each has its own filter. A filter returns `Escaped`, and the environment's `finalize` refuses to
print anything else (see `finalize`): a template that prints a value without saying in which
language fails at once, in tests, instead of rendering it raw.

Values are validated before rendering (render.values), so the filters rarely see a control
character; they still handle every string, escaping it where the format can and refusing it
where it cannot, so that no filter ever lets a value leave its place.
"""

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import jinja2

from mcp_pki.controls import escape_control, escape_controls, first_control, is_control
from mcp_pki.errors import InvalidInput


class Escaped(str):
    """Text already written in the syntax of the file being rendered: the only text a template
    may print."""

    __slots__ = ()


def finalize(value: object) -> object:
    """Every ``{{ ... }}`` passes through here: only escaped text and integers get out."""
    if isinstance(value, (Escaped, jinja2.Undefined)) or type(value) is int:
        return value  # an Undefined raises when printed: StrictUndefined names it
    shown = repr(value)
    raise jinja2.TemplateRuntimeError(
        f"{shown[:60] + '...' if len(shown) > 60 else shown} is printed without an escaping filter "
        f"(one of: {', '.join(sorted(ESCAPING))})"
    )


def _undefined(value: object) -> None:
    """An undefined value (a missing variable, an attribute the sandbox refused) raises
    Jinja's own error, which names it, instead of reaching a filter as an object."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises here
        raise jinja2.UndefinedError("an undefined value cannot be printed")


def _refuse(text: str, language: str, why: str) -> InvalidInput:
    return InvalidInput(f"'{escape_controls(text)}' cannot be written in {language}: {why}")


def _plain(value: object, language: str) -> str:
    _undefined(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"the {language} filter takes text, not {type(value).__name__}")
    return str(value)


def _no_controls(text: str, language: str) -> str:
    found = first_control(text)
    if found is not None:
        raise _refuse(text, language, f"it has no way to write the control character {escape_control(found)}")
    return text


# --- POSIX shell -------------------------------------------------------------------------

def shell(value: object) -> Escaped:
    """One shell word, single-quoted unless it is plainly safe (``/etc/mcp/tls.crt``)."""
    return Escaped(shlex.quote(_plain(value, "shell")))


def shell_words(text: str) -> list[str]:
    """A value given as shell words, e.g. ``--var args="--stdio 'a b'"``, as a list."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise InvalidInput(f"cannot split {text!r} into shell words: {exc}") from None


def cron(value: object) -> Escaped:
    """The command field of a crontab line (already shell text): cron reads a bare % as a
    line break, \\% as a %, and has no way to write a real line break or a \\ before a %."""
    text = _no_controls(_plain(value, "a crontab line"), "a crontab line")
    if "\\%" in text:
        raise _refuse(text, "a crontab line", "cron cannot write a \\ followed by a %")
    return Escaped(text.replace("%", "\\%"))


def comment(value: object) -> Escaped:
    """Text inside a line comment (#, //) of any of our formats: only a line break could end
    it, so every control character is shown escaped."""
    return Escaped(escape_controls(_plain(value, "a comment")))


# --- JSON, JavaScript, YAML, Python ------------------------------------------------------

def _json_value(value: object) -> object:
    """Only what the templates hand over: text, integers, and lists and maps of them."""
    _undefined(value)
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, Mapping):
        return {_plain(k, "JSON"): _json_value(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_json_value(v) for v in value]
    raise InvalidInput(f"cannot write a {type(value).__name__} as JSON")


def to_json(value: object, indent: int | None = None) -> Escaped:
    """JSON, ASCII only: every control character, line separator and non-ASCII letter as a
    \\u escape, so the text reads the same in any encoding and in JavaScript."""
    return Escaped(json.dumps(_json_value(value), ensure_ascii=True, indent=indent))


def yaml(value: object) -> Escaped:
    """A YAML flow value: double-quoted scalars, [lists] and {maps} of them.

    JSON's \\ud83d\\ude00 surrogate pairs mean two broken characters to a YAML 1.1 reader
    (PyYAML), so scalars are written with YAML's own escapes, \\U for astral characters.
    """
    _undefined(value)
    if isinstance(value, bool) or value is None:
        raise InvalidInput(f"cannot write {value!r} as a YAML value")
    if isinstance(value, int):
        return Escaped(str(value))
    if isinstance(value, str):
        return Escaped('"' + "".join(_yaml_character(c) for c in value) + '"')
    if isinstance(value, Mapping):
        return Escaped("{" + ", ".join(f"{yaml(_plain(k, 'YAML'))}: {yaml(v)}" for k, v in value.items()) + "}")
    if isinstance(value, Sequence):
        return Escaped("[" + ", ".join(yaml(v) for v in value) + "]")
    raise InvalidInput(f"cannot write a {type(value).__name__} as YAML")


def _yaml_character(character: str) -> str:
    if character in '"\\':
        return "\\" + character
    if " " <= character <= "~":
        return character
    code = ord(character)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def python(value: object) -> Escaped:
    """A Python literal: ASCII-only string literals, lists and dicts of them."""
    _undefined(value)
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return Escaped(ascii(value))
    if isinstance(value, Mapping):
        return Escaped("{" + ", ".join(f"{python(_plain(k, 'Python'))}: {python(v)}" for k, v in value.items()) + "}")
    if isinstance(value, Sequence):
        return Escaped("[" + ", ".join(python(v) for v in value) + "]")
    raise InvalidInput(f"cannot write a {type(value).__name__} as a Python literal")


# --- nginx, Caddy ------------------------------------------------------------------------

def nginx(value: object) -> Escaped:
    """One nginx argument: bare when plainly safe, else double-quoted with \\ escapes.

    nginx reads $name as a variable in many directives (ssl_certificate among them) and has no
    escape for a literal $: such a value is refused, not rendered into a different path.
    """
    text = _no_controls(_plain(value, "nginx"), "nginx")
    if "$" in text:
        raise _refuse(text, "nginx", "nginx reads $ as a variable and cannot escape it")
    if text and not any(c.isspace() or c in '"\'\\;{}#' for c in text):
        return Escaped(text)
    return Escaped('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')


def caddy(value: object) -> Escaped:
    """One Caddyfile token: bare when plainly safe, else "quoted", or `quoted` (raw) when a
    backslash would escape the closing quote.

    Caddy's lexer knows one escape inside "...", \\", and keeps every other backslash; the
    Caddyfile replaces {$VAR} and {placeholders} even inside quotes, with no escape that every
    directive honours: a value with a brace is refused.
    """
    text = _no_controls(_plain(value, "a Caddyfile"), "a Caddyfile")
    if "{" in text or "}" in text:
        raise _refuse(text, "a Caddyfile", "Caddy reads {...} as a placeholder")
    if text and not any(c.isspace() or c in '"\'\\;#`<' for c in text):
        return Escaped(text)
    if not text.endswith("\\") and '\\"' not in text:
        return Escaped('"' + text.replace('"', '\\"') + '"')
    if "`" not in text:
        return Escaped("`" + text + "`")
    raise _refuse(text, "a Caddyfile", "a token cannot hold both a backquote and a \\ before a quote")


# --- systemd -----------------------------------------------------------------------------

def systemd_word(value: object) -> Escaped:
    """One word of a systemd ``Exec*=`` line, e.g. the script of ``ExecStartPost=/bin/sh -c
    "..."``: systemd reads % as a specifier, $ as a variable, C escapes inside quotes, and a
    leading - @ + ! : as a prefix. Bare when plainly safe, as people write paths."""
    text = _plain(value, "a systemd command line")
    if text and all(c.isascii() and (c.isalnum() or c in "_@+=:,./-") for c in text) and text[0] not in "-@+!:":
        return Escaped(text)
    escaped = "".join(
        "\\" + c if c in '"\\' else "%%" if c == "%" else "$$" if c == "$" else
        (escape_control(c) if is_control(c) else c)
        for c in text
    )
    return Escaped('"' + escaped + '"')


def systemd_unit_name(text: str) -> str:
    """A unit name part, escaped as ``systemd-escape`` does: ``a@b`` would name a template
    instance, so every character outside [A-Za-z0-9:_.-] becomes \\xNN. Still text: it needs
    the filter of wherever it is written."""
    return "".join(c if c.isascii() and (c.isalnum() or c in ":_.-") else f"\\x{ord(c):02x}" for c in text)


def systemd_value(value: object) -> Escaped:
    """The value of a unit-file setting that is not a command line (``User=``,
    ``LoadCredential=``, ``Description=``): % is a specifier, a final \\ would join the next
    line, and surrounding blanks are stripped by systemd."""
    text = _no_controls(_plain(value, "a systemd unit"), "a systemd unit")
    if text != text.strip() or text.endswith("\\"):
        raise _refuse(text, "a systemd unit", "systemd strips surrounding blanks and joins a line ending in \\")
    return Escaped(text.replace("%", "%%"))


# --- Markdown (the README of a snippet bundle) -------------------------------------------

def markdown_code(value: object) -> Escaped:
    """An inline code span that also stays inside its table cell."""
    text = escape_controls(_plain(value, "Markdown")).replace("|", "\\|")
    fence = "`" * (_longest_backtick_run(text) + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return Escaped(f"{fence}{padded}{fence}")


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for character in text:
        run = run + 1 if character == "`" else 0
        longest = max(longest, run)
    return longest


def markdown_text(value: object) -> Escaped:
    """Plain text in a Markdown paragraph or table cell: what could end the cell, open a code
    span, a link or an HTML tag is backslash-escaped (emphasis is left alone: it cannot
    change what the file says)."""
    text = escape_controls(_plain(value, "Markdown"))
    return Escaped("".join("\\" + c if c in "\\`|<[]" else c for c in text))


# --- Values derived from a URL (validated before rendering; results still need a filter) --

def _split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"not an http(s) URL: {url!r}")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


# The filters that produce printable text, by the language they write.
ESCAPING: dict[str, Callable[..., Escaped]] = {
    "shell": shell,
    "cron": cron,
    "comment": comment,
    "json": to_json,
    "tojson": to_json,  # Jinja's own name, kept for overrides; ours escapes all non-ASCII too
    "js": to_json,
    "yaml": yaml,
    "python": python,
    "nginx": nginx,
    "caddy": caddy,
    "systemd_word": systemd_word,
    "systemd_value": systemd_value,
    "md_code": markdown_code,
    "md_text": markdown_text,
}

FILTERS: dict[str, Callable[..., Any]] = {
    **ESCAPING,
    "shell_words": shell_words,
    "systemd_unit_name": systemd_unit_name,
    "url_host": lambda url: _split_url(url)[0],
    "url_port": lambda url: _split_url(url)[1],
}
