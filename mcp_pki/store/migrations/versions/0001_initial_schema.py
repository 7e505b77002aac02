"""Initial schema: authorities, certificates, revocations, CRL publications, audit log.

Revision ID: 0001
Revises: 
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('operator', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('target_serial', sa.String(length=40), nullable=True),
    sa.Column('target_name', sa.String(length=128), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_log'))
    )
    op.create_table('authorities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('signs_leaves', sa.Boolean(), nullable=False),
    sa.Column('serial', sa.String(length=40), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('key_type', sa.String(length=16), nullable=False),
    sa.Column('certificate_pem', sa.Text(), nullable=False),
    sa.Column('encrypted_key_pem', sa.Text(), nullable=False),
    sa.Column('key_encrypted', sa.Boolean(), nullable=False),
    sa.Column('permitted_dns', sa.JSON(), nullable=False),
    sa.Column('not_before', sa.DateTime(), nullable=False),
    sa.Column('not_after', sa.DateTime(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['authorities.id'], name=op.f('fk_authorities_parent_id_authorities')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_authorities'))
    )
    op.create_table('certificates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('issuer_id', sa.Integer(), nullable=False),
    sa.Column('serial', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=True),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('sans', sa.JSON(), nullable=False),
    sa.Column('roles', sa.JSON(), nullable=False),
    sa.Column('key_type', sa.String(length=16), nullable=False),
    sa.Column('from_csr', sa.Boolean(), nullable=False),
    sa.Column('not_before', sa.DateTime(), nullable=False),
    sa.Column('not_after', sa.DateTime(), nullable=False),
    sa.Column('certificate_pem', sa.Text(), nullable=False),
    sa.Column('sha256_fingerprint', sa.String(length=95), nullable=False),
    sa.Column('renews_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['issuer_id'], ['authorities.id'], name=op.f('fk_certificates_issuer_id_authorities')),
    sa.ForeignKeyConstraint(['renews_id'], ['certificates.id'], name=op.f('fk_certificates_renews_id_certificates')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_certificates')),
    sa.UniqueConstraint('issuer_id', 'serial', name=op.f('uq_certificates_issuer_id'))
    )
    with op.batch_alter_table('certificates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_certificates_name'), ['name'], unique=False)
        batch_op.create_index(batch_op.f('ix_certificates_not_after'), ['not_after'], unique=False)
        batch_op.create_index(batch_op.f('ix_certificates_owner'), ['owner'], unique=False)

    op.create_table('crl_publications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('authority_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.BigInteger(), nullable=False),
    sa.Column('this_update', sa.DateTime(), nullable=False),
    sa.Column('next_update', sa.DateTime(), nullable=False),
    sa.Column('crl_pem', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['authority_id'], ['authorities.id'], name=op.f('fk_crl_publications_authority_id_authorities')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_crl_publications')),
    sa.UniqueConstraint('authority_id', 'number', name=op.f('uq_crl_publications_authority_id'))
    )
    op.create_table('revocations',
    sa.Column('certificate_id', sa.Integer(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=True),
    sa.Column('invalidity_date', sa.DateTime(), nullable=True),
    sa.Column('crl_entry', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['certificate_id'], ['certificates.id'], name=op.f('fk_revocations_certificate_id_certificates')),
    sa.PrimaryKeyConstraint('certificate_id', name=op.f('pk_revocations'))
    )


def downgrade() -> None:
    op.drop_table('revocations')
    op.drop_table('crl_publications')
    with op.batch_alter_table('certificates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_certificates_owner'))
        batch_op.drop_index(batch_op.f('ix_certificates_not_after'))
        batch_op.drop_index(batch_op.f('ix_certificates_name'))

    op.drop_table('certificates')
    op.drop_table('authorities')
    op.drop_table('audit_log')
