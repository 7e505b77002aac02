"""Jinja filters: each writes a value the way one file format reads it.

A path with a space, a %, a $ or a quote must reach nginx, Caddy, systemd, cron and the shell
as the same single word; each format has its own rules, so each has its own filter.
"""

import shlex
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from mcp_pki.errors import InvalidInput


def _systemd_escape(text: str) -> str:
    """systemd reads % as a specifier and $ as a variable in Exec lines and paths."""
    return text.replace("%", "%%").replace("$", "$$")


def _quote_when_needed(token: str) -> str:
    """One config-file word: nginx and the Caddyfile both read "..." with backslash escapes.

    Quoted only when needed, so the usual /etc/... paths stay as people write them.
    """
    if token and not any(c.isspace() or c in '"\'\\;{}#' for c in token):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shell_words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise InvalidInput(f"cannot split {text!r} into shell words: {exc}") from None


def _split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"not an http(s) URL: {url!r}")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _cron_escape(text: str) -> str:
    """cron turns a bare % into a newline."""
    return text.replace("%", "\\%")


def _systemd_quote(text: str) -> str:
    """One double-quoted systemd word, e.g. the script of ``ExecStart=/bin/sh -c "..."``."""
    return '"' + _systemd_escape(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


FILTERS: dict[str, Callable[..., Any]] = {
    "shell": shlex.quote,
    "shell_words": _shell_words,
    "nginx": _quote_when_needed,
    "caddy": _quote_when_needed,
    "cron": _cron_escape,
    "systemd": _systemd_escape,
    "systemd_quote": _systemd_quote,
    "url_host": lambda url: _split_url(url)[0],
    "url_port": lambda url: _split_url(url)[1],
}
