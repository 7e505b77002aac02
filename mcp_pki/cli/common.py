"""What every command shares: the resolved home, the clock, passphrases, JSON output."""

import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mcp_pki.cli.terminal import shown
from mcp_pki.errors import InvalidInput, PassphraseError

if TYPE_CHECKING:
    from mcp_pki.services.home import Home

PASSPHRASE_ENV = "MCP_PKI_PASSPHRASE"
P12_PASSPHRASE_ENV = "MCP_PKI_P12_PASSPHRASE"


@dataclass
class Settings:
    home_option: str | None
    db_option: str | None
    passphrase_file: str | None
    _cached_passphrase: bytes | None = field(default=None, repr=False)

    def home(self) -> "Home":
        from mcp_pki.services.home import resolve_home

        return resolve_home(self.home_option, self.db_option)

    def ca_passphrase(self) -> bytes:
        """The passphrase of an existing CA key, asked for only when a key needs it."""
        if self._cached_passphrase is None:
            self._cached_passphrase = read_secret(
                file=self.passphrase_file, env=PASSPHRASE_ENV, prompt="CA passphrase", what="the CA key",
                hint="set MCP_PKI_PASSPHRASE, use --passphrase-file FILE, or run on a terminal",
            )
        return self._cached_passphrase

    def new_ca_passphrase(self) -> bytes:
        from mcp_pki.services.authority import MIN_PASSPHRASE_LENGTH

        return read_secret(
            file=self.passphrase_file, env=PASSPHRASE_ENV, prompt="New CA passphrase", confirm=True,
            what="the new CA key", min_length=MIN_PASSPHRASE_LENGTH,
            hint="set MCP_PKI_PASSPHRASE, use --passphrase-file FILE, run on a terminal, "
            "or pass --no-passphrase (development only)",
        )


def read_secret(
    *, file: str | None, env: str, prompt: str, what: str, hint: str, confirm: bool = False, min_length: int = 0,
) -> bytes:
    """A secret from a file, else the environment, else a hidden prompt on a terminal.

    Secrets are never accepted as command-line values: ``ps`` shows argv to every user.
    """
    if file is not None:
        try:
            data = Path(file).read_bytes()
            mode = Path(file).stat().st_mode
        except OSError as exc:
            raise InvalidInput(f"cannot read passphrase file {file}: {exc.strerror}") from None
        if mode & 0o077:
            warn(f"passphrase file {file} is readable by group or others (mode {mode & 0o777:o}): chmod 600 it")
        secret = data.rstrip(b"\r\n")
    elif env in os.environ:
        # The bytes as the environment holds them: os.environ would give undecodable bytes
        # as surrogates, which no encoding takes back.
        secret = os.environb[env.encode()] if os.supports_bytes_environ else os.environ[env].encode("utf-8", "surrogateescape")
    elif sys.stdin.isatty():
        secret = click.prompt(prompt, hide_input=True, err=True).encode("utf-8")
        # Too short is said before the confirmation is asked for, not after typing it twice.
        if secret and len(secret) < min_length:
            raise PassphraseError(f"the passphrase for {what} must have at least {min_length} characters")
        if confirm and click.prompt("Repeat for confirmation", hide_input=True, err=True).encode("utf-8") != secret:
            raise PassphraseError(f"the two entries of the passphrase for {what} differ")
    else:
        raise PassphraseError(f"{what} needs a passphrase: {hint}")
    if not secret:
        raise PassphraseError(f"empty passphrase for {what}")
    try:
        # Text, so that the same passphrase can be typed at a prompt and given to OpenSSL.
        secret.decode("utf-8")
    except UnicodeDecodeError:
        raise PassphraseError(f"the passphrase for {what} is not valid UTF-8 text") from None
    return secret


def read_file(path: str, what: str, *, limit: int | None = None) -> bytes:
    """An input file the user named (of bounded size), or one clean error saying why not."""
    from mcp_pki.services.files import MAX_INPUT, read_input

    return read_input(Path(path), what, limit=limit or MAX_INPUT)


def first_few(names: Iterable[str], *, count: int = 5) -> str:
    """``a, b, c, d, e and 7 more``: a warning names what it is about without a page of it."""
    listed = list(names)
    more = f" and {len(listed) - count} more" if len(listed) > count else ""
    return ", ".join(listed[:count]) + more


def now() -> datetime:
    return datetime.now(UTC)


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=False))


def warn(message: str) -> None:
    label = click.style("Warning:", fg="yellow") if sys.stderr.isatty() else "Warning:"  # colour on a terminal only
    click.echo(f"{label} {shown(message)}", err=True)  # it may quote a CSR or a row


def settings_of(ctx: click.Context) -> Settings:
    value = ctx.find_object(Settings)
    assert value is not None
    return value


pass_settings: Callable[..., Any] = click.make_pass_decorator(Settings)



def parse_duration_option(value: str | None) -> Any:
    from mcp_pki.durations import parse_duration

    return None if value is None else parse_duration(value)
