"""Record where ``issue``/``renew`` wrote each certificate's files.

``snippet`` and ``bridge --as`` find tls.crt, tls.key and ca.crt there. Certificates issued
before this revision have no folder on record; those commands then ask for one.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch_op:
        batch_op.add_column(sa.Column("files_dir", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch_op:
        batch_op.drop_column("files_dir")
