"""Typed ORM classes over the inventory's tables (`tables`), for the services that work
with objects; the hot paths use the tables directly."""

from datetime import datetime
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

from mcp_pki.store import tables


class Base(DeclarativeBase):
    metadata = tables.metadata


class Authority(Base):
    """A CA of ours: the root, and the issuing CA it signed (absent when single-tier)."""

    __table__ = tables.authorities

    id: Mapped[int]
    role: Mapped[str]
    parent_id: Mapped[int | None]
    signs_leaves: Mapped[bool]
    serial: Mapped[str]
    subject: Mapped[str]
    key_type: Mapped[str]
    certificate_pem: Mapped[str]
    encrypted_key_pem: Mapped[str]
    key_encrypted: Mapped[bool]
    permitted_dns: Mapped[list[str]]
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    created_at: Mapped[datetime]

    parent: Mapped["Authority | None"] = relationship(remote_side=[tables.authorities.c.id])


class Certificate(Base):
    """A server or client certificate we signed, recorded before it left the tool."""

    __table__ = tables.certificates

    id: Mapped[int]
    issuer_id: Mapped[int]
    serial: Mapped[str]
    kind: Mapped[str]
    name: Mapped[str]
    owner: Mapped[str | None]
    subject: Mapped[str]
    sans: Mapped[list[str]]
    roles: Mapped[list[str]]
    key_type: Mapped[str]
    from_csr: Mapped[bool]
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    certificate_pem: Mapped[str]
    sha256_fingerprint: Mapped[str]
    renews_id: Mapped[int | None]
    created_at: Mapped[datetime]
    files_dir: Mapped[str | None]

    issuer: Mapped[Authority] = relationship()
    revocation: Mapped["Revocation | None"] = relationship(back_populates="certificate")


class Revocation(Base):
    __table__ = tables.revocations

    certificate_id: Mapped[int]
    revoked_at: Mapped[datetime]
    reason: Mapped[str | None]
    invalidity_date: Mapped[datetime | None]
    crl_entry: Mapped[bytes]

    certificate: Mapped[Certificate] = relationship(back_populates="revocation")


class CrlPublication(Base):
    """Every CRL published, so that CRL numbers only ever grow."""

    __table__ = tables.crl_publications

    id: Mapped[int]
    authority_id: Mapped[int]
    number: Mapped[int]
    this_update: Mapped[datetime]
    next_update: Mapped[datetime]
    crl_pem: Mapped[str]


class AuditRecord(Base):
    """One CA operation. `hash` covers the record and the previous record's hash."""

    __table__ = tables.audit_log

    seq: Mapped[int]
    at: Mapped[datetime]
    operator: Mapped[str]
    action: Mapped[str]
    target_serial: Mapped[str | None]
    target_name: Mapped[str | None]
    outcome: Mapped[str]
    details: Mapped[dict[str, Any]]
    prev_hash: Mapped[str]
    hash: Mapped[str]
