"""Alembic, driven from code: the migrations ship inside the package."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

_MIGRATIONS = Path(__file__).with_name("migrations")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine) -> None:
    """Apply every pending migration in one transaction (SQLite and PostgreSQL have
    transactional DDL), holding the write lock so two first runs cannot race."""
    config = _config()
    with engine.execution_options(mcp_pki_write=True).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
