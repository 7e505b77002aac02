"""Index what `status`, `renew --expiring-within` and `show SERIAL` look up.

Finding certificates that no valid renewal replaces joins each certificate to the ones that
renew it (`renews_id`); without an index that join scans the table once per certificate,
which made `status` quadratic (32 s at 10,000 expiring certificates). Serials are looked
up by prefix, which a range over an index on `serial` answers without a scan.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch_op:
        batch_op.create_index(batch_op.f("ix_certificates_renews_id"), ["renews_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_certificates_serial"), ["serial"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_serial"))
        batch_op.drop_index(batch_op.f("ix_certificates_renews_id"))
