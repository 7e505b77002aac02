"""Typed SQLAlchemy 2.0 models of the inventory."""

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mcp_pki.errors import InventoryError


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python, naive UTC in the database.

    SQLite has no time zones and would hand back naive values; storing naive UTC everywhere
    keeps comparisons right on every backend.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the inventory")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class StringList(TypeDecorator[list[str]]):
    """A JSON list of strings (SANs, roles), checked when read: a row edited into another
    shape is reported as a corrupt inventory instead of failing wherever it is used."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: list[str] | None, dialect: Dialect) -> list[str] | None:
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> list[str] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InventoryError("the inventory is corrupt: a stored list of names or roles is not a list of strings")
        return value


class Base(DeclarativeBase):
    # Named constraints, so that migrations can alter them on SQLite (batch mode) too.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime, dict[str, Any]: JSON, list[str]: StringList}


class Authority(Base):
    """A CA of ours: the root, and the issuing CA it signed (absent when single-tier)."""

    __tablename__ = "authorities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # "root" or "issuing"
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("authorities.id"))
    signs_leaves: Mapped[bool]
    serial: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(Text)
    key_type: Mapped[str] = mapped_column(String(16))
    certificate_pem: Mapped[str] = mapped_column(Text)
    # PKCS#8, encrypted with the CA passphrase unless the CA was made with --no-passphrase.
    encrypted_key_pem: Mapped[str] = mapped_column(Text)
    key_encrypted: Mapped[bool]
    permitted_dns: Mapped[list[str]]
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    created_at: Mapped[datetime]

    parent: Mapped["Authority | None"] = relationship(remote_side=[id])


class Certificate(Base):
    """A server or client certificate we signed, recorded before it left the tool."""

    __tablename__ = "certificates"
    __table_args__ = (
        UniqueConstraint("issuer_id", "serial"),
        # The order `list` prints (name, then age): no sort of each name's rows (migration 0004).
        Index("ix_certificates_name_not_before", "name", "not_before"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    serial: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "server" or "client"
    name: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(Text)
    sans: Mapped[list[str]]
    roles: Mapped[list[str]]
    key_type: Mapped[str] = mapped_column(String(16))
    from_csr: Mapped[bool]
    not_before: Mapped[datetime]
    not_after: Mapped[datetime] = mapped_column(index=True)
    certificate_pem: Mapped[str] = mapped_column(Text)
    sha256_fingerprint: Mapped[str] = mapped_column(String(95))
    renews_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id"), index=True)
    created_at: Mapped[datetime]
    # The absolute folder `issue`/`renew` wrote tls.crt (and tls.key) into; None before 0002.
    files_dir: Mapped[str | None] = mapped_column(Text)

    issuer: Mapped[Authority] = relationship()
    revocation: Mapped["Revocation | None"] = relationship(back_populates="certificate")


class Revocation(Base):
    __tablename__ = "revocations"

    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"), primary_key=True)
    revoked_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(String(32))  # None means unspecified
    invalidity_date: Mapped[datetime | None]
    # This revocation as a DER CRL entry, encoded once here: publishing a CRL is then a
    # concatenation, fast enough to republish on every revocation at 100,000 entries.
    crl_entry: Mapped[bytes] = mapped_column(LargeBinary)

    certificate: Mapped[Certificate] = relationship(back_populates="revocation")


class CrlPublication(Base):
    """Every CRL published, so that CRL numbers only ever grow."""

    __tablename__ = "crl_publications"
    __table_args__ = (UniqueConstraint("authority_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    number: Mapped[int] = mapped_column(BigInteger)
    this_update: Mapped[datetime]
    next_update: Mapped[datetime]
    crl_pem: Mapped[str] = mapped_column(Text)


class AuditRecord(Base):
    """One CA operation. `hash` covers the record and the previous record's hash."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    operator: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    target_serial: Mapped[str | None] = mapped_column(String(40))
    target_name: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
