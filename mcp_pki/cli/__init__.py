"""The ``mcp-pki`` command line: thin click commands over the services.

Only click and the standard library are imported at start-up; each command imports the
services it needs when it runs, so ``--help`` stays instant. `PkiGroup` is the one place where
project errors become ``Error: ...`` and an exit code.
"""

import gc
import logging
import os
import sys
from typing import Any

import click

from mcp_pki import __version__
from mcp_pki.cli import (
    apply,
    audit,
    bridge,
    ca,
    db,
    health,
    inventory,
    issue,
    renew,
    revocation,
    snippet,
    teammate,
)
from mcp_pki.cli.common import Settings
from mcp_pki.cli.gateway import gateway as gateway_command
from mcp_pki.cli.terminal import shown
from mcp_pki.errors import PkiError, WrongPassphrase

EXIT_CODES_HELP = """\b
Exit codes: 0 success; 1 error (one "Error: ..." line on stderr);
2 usage error. `status` uses 0 ok, 1 warning, 2 critical."""


class _Failure(click.ClickException):
    """A project error on its way out: click prints it as ``Error: ...``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(shown(message))  # it may quote a CSR, a file or a row
        self.exit_code = exit_code  # type: ignore[misc]  # click declares a class default


GLOBAL_OPTIONS = ("--home", "--db", "--passphrase-file")


def globals_first(args: list[str]) -> list[str]:
    """``mcp-pki list --home DIR`` read as ``mcp-pki --home DIR list``: people put the global
    options after the command too. Nothing after a ``--`` moves (a gateway's own command)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg.split("=", 1)[0] in GLOBAL_OPTIONS and rest:
            taken = 1 if "=" in arg else 2
            front.extend(args[i:i + taken])
            i += taken
            continue
        rest.append(arg)
        i += 1
    return front + rest


class PkiGroup(click.Group):
    """The root command group: the one place where errors become ``Error: ...`` lines."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, globals_first(args))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WrongPassphrase as exc:
            _record_refused_passphrase(ctx)
            raise _Failure(str(exc), exc.exit_code) from None
        except PkiError as exc:
            raise _Failure(str(exc), exc.exit_code) from None
        except click.ClickException:
            raise
        except OSError as exc:
            # A file or folder the system refuses (unreadable home, a name too long for the
            # file system, a lock file we cannot open) is the environment, not a bug.
            if exc.filename is None:
                raise
            raise _Failure(f"cannot access {exc.filename}: {exc.strerror or exc}", 1) from None
        except Exception as exc:
            # A database failing underneath us (locked past the busy timeout, disk full) is
            # the environment, not a bug: one line. Everything else keeps its traceback.
            if type(exc).__module__.startswith("sqlalchemy"):
                reason = getattr(exc, "orig", None) or exc
                raise _Failure(f"database error: {str(reason).splitlines()[0]}", 1) from None
            raise


def _record_refused_passphrase(ctx: click.Context) -> None:
    """Guessing the CA passphrase leaves a trace: an audit record in its own transaction,
    written after the command's own transaction has rolled back (no secret in it)."""
    from sqlalchemy.exc import SQLAlchemyError

    from mcp_pki.cli.common import now, settings_of, warn
    from mcp_pki.services.authority import record_refused_passphrase

    try:
        record_refused_passphrase(settings_of(ctx).home(), command=ctx.invoked_subcommand, now=now())
    except (PkiError, OSError, SQLAlchemyError) as exc:  # the refusal itself is what matters
        warn(f"the refused passphrase could not be recorded in the audit log: {type(exc).__name__}")


@click.group(
    cls=PkiGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.option("--home", metavar="DIR", help="Home folder [env MCP_PKI_HOME; default: user data folder].")
@click.option("--db", "db_url", metavar="URL", help="SQLAlchemy database URL [env MCP_PKI_DB; default: sqlite in home].")
@click.option(
    "--passphrase-file", type=click.Path(dir_okay=False), metavar="FILE",
    help="File holding the CA passphrase [else env MCP_PKI_PASSPHRASE, else a prompt].",
)
@click.version_option(__version__, prog_name="mcp-pki")
@click.pass_context
def cli(ctx: click.Context, home: str | None, db_url: str | None, passphrase_file: str | None) -> None:
    """An internal certificate authority for mutual TLS between MCP clients and servers.

    \b
    Start with:
      mcp-pki init-ca --name "Acme MCP" --org Acme
      mcp-pki issue server files --dns files.internal
      mcp-pki issue client alice --email alice@acme.test --role admin
    """
    ctx.obj = Settings(home_option=home, db_option=db_url, passphrase_file=passphrase_file)
    _print_service_warnings()


class _WarningLine(logging.Handler):
    """Prints a warning that a service logs as one ``Warning: ...`` line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"Warning: {shown(record.getMessage())}", err=True)


def _print_service_warnings() -> None:
    services = logging.getLogger("mcp_pki.services")
    if not any(isinstance(h, _WarningLine) for h in services.handlers):
        services.addHandler(_WarningLine(logging.WARNING))
        services.propagate = False


cli.add_command(ca.init_ca)
cli.add_command(issue.issue)
cli.add_command(inventory.list_command)
cli.add_command(inventory.show)
cli.add_command(inventory.export)
cli.add_command(revocation.revoke)
cli.add_command(revocation.offboard)
cli.add_command(revocation.crl)
cli.add_command(renew.renew)
cli.add_command(apply.apply)
cli.add_command(health.status)
cli.add_command(health.verify)
cli.add_command(snippet.snippet)
cli.add_command(teammate.request)
cli.add_command(teammate.install)
cli.add_command(bridge.bridge)
cli.add_command(gateway_command)
cli.add_command(audit.audit)
cli.add_command(db.db)


def main() -> None:
    """The console entry point, tuned for a short-lived process (see scripts/bench)."""
    # Importing SQLAlchemy and cryptography allocates hundreds of thousands of objects;
    # the default collector thresholds make that pay for ~40 ms of pointless collections.
    gc.set_threshold(50_000, 20, 20)
    try:
        cli.main(prog_name="mcp-pki")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # stdout closed early, e.g. piped into head
        code = code or 1
    # Skip interpreter finalisation: tearing down SQLAlchemy's module graph costs more
    # (~100 ms) than the command itself. Nothing is left to finalise: every command has
    # disposed of its engine, files are fsync-ed, and the streams are flushed above.
    os._exit(code)
