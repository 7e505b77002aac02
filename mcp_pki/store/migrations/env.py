"""Alembic environment: always run from `mcp_pki.store.migrate` with a live connection."""

from alembic import context

from mcp_pki.store.models import Base

connection = context.config.attributes["connection"]
# Batch mode rewrites tables for the ALTERs that SQLite lacks.
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
