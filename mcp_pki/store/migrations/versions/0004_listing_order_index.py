"""Index certificates in the order `list` prints them: by name, then age.

The index on `name` alone left SQLite sorting the rows of each name in a temporary
B-tree, a fifth of the listing query at 100,000 certificates. Lookups by name use the new
index as they used the old one.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_certificates_name_not_before", "certificates", ["name", "not_before"], unique=False)
    op.drop_index("ix_certificates_name", table_name="certificates")


def downgrade() -> None:
    op.create_index("ix_certificates_name", "certificates", ["name"], unique=False)
    op.drop_index("ix_certificates_name_not_before", table_name="certificates")
