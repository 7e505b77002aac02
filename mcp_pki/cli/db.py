"""``mcp-pki db upgrade``."""

import click

from mcp_pki.cli.common import Settings, pass_settings


@click.group()
def db() -> None:
    """Inventory database maintenance."""


@db.command()
@pass_settings
def upgrade(settings: Settings) -> None:
    """Apply pending schema migrations (every command also applies them on its own)."""
    from mcp_pki.services.home import open_existing
    from mcp_pki.store.db import SCHEMA_REVISION

    open_existing(settings.home()).dispose()
    click.echo(f"inventory schema is at revision {SCHEMA_REVISION}")
