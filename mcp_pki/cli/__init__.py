"""The ``mcp-pki`` command line: thin click commands over the services.

Only click and the standard library are imported at start-up; each command imports the
services it needs when it runs, so ``--help`` stays instant. `main` is the one place where
project errors become ``Error: ...`` and an exit code.
"""

import sys

import click

from mcp_pki import __version__
from mcp_pki.cli import audit, ca, db, inventory, issue
from mcp_pki.cli.common import Settings
from mcp_pki.errors import PkiError

EXIT_CODES_HELP = """\b
Exit codes: 0 success; 1 error (one "Error: ..." line on stderr);
2 usage error. `status` uses 0 ok, 1 warning, 2 critical."""


@click.group(
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


cli.add_command(ca.init_ca)
cli.add_command(issue.issue)
cli.add_command(inventory.list_command)
cli.add_command(inventory.show)
cli.add_command(inventory.export)
cli.add_command(audit.audit)
cli.add_command(db.db)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except PkiError as exc:
        _fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        # A database that fails underneath us (locked past the busy timeout, disk full) is
        # the environment, not a bug: say so in one line. Everything else keeps its traceback.
        if type(exc).__module__.startswith("sqlalchemy.exc"):
            reason = getattr(exc, "orig", None) or exc
            _fail(f"database error: {str(reason).splitlines()[0]}", 1)
        raise
    sys.exit(0)


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)
