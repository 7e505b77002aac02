"""The inventory's tables, in SQLAlchemy Core.

The commands that run most often (`issue`, `list`, `status`) read and write these tables
directly; the ORM classes in `models` are mapped onto them for the rest. Importing the
ORM costs more than signing a certificate, so this module must not.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect

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

# A CA of ours: the root, and the issuing CA it signed (absent when single-tier).
authorities = Table(
    "authorities",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("role", String(16), nullable=False),  # "root" or "issuing"
    Column("parent_id", ForeignKey("authorities.id")),
    Column("signs_leaves", Boolean, nullable=False),
    Column("serial", String(40), nullable=False),
    Column("subject", Text, nullable=False),
    Column("key_type", String(16), nullable=False),
    Column("certificate_pem", Text, nullable=False),
    # PKCS#8, encrypted with the CA passphrase unless the CA was made with --no-passphrase.
    Column("encrypted_key_pem", Text, nullable=False),
    Column("key_encrypted", Boolean, nullable=False),
    Column("permitted_dns", StringList, nullable=False),
    Column("not_before", UtcDateTime, nullable=False),
    Column("not_after", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# A server or client certificate we signed, recorded before it left the tool.
certificates = Table(
    "certificates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("issuer_id", ForeignKey("authorities.id"), nullable=False),
    Column("serial", String(40), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # "server" or "client"
    Column("name", String(64), nullable=False),
    Column("owner", String(64), index=True),
    Column("subject", Text, nullable=False),
    Column("sans", StringList, nullable=False),
    Column("roles", StringList, nullable=False),
    Column("key_type", String(16), nullable=False),
    Column("from_csr", Boolean, nullable=False),
    Column("not_before", UtcDateTime, nullable=False),
    Column("not_after", UtcDateTime, nullable=False, index=True),
    Column("certificate_pem", Text, nullable=False),
    Column("sha256_fingerprint", String(95), nullable=False),
    Column("renews_id", ForeignKey("certificates.id"), index=True),
    Column("created_at", UtcDateTime, nullable=False),
    # The absolute folder `issue`/`renew` wrote tls.crt (and tls.key) into; None before 0002.
    Column("files_dir", Text),
    UniqueConstraint("issuer_id", "serial"),
    # The order `list` prints (name, then age): no sort of each name's rows (migration 0004).
    Index("ix_certificates_name_not_before", "name", "not_before"),
)

revocations = Table(
    "revocations",
    metadata,
    Column("certificate_id", ForeignKey("certificates.id"), primary_key=True),
    Column("revoked_at", UtcDateTime, nullable=False),
    Column("reason", String(32)),  # None means unspecified
    Column("invalidity_date", UtcDateTime),
    # This revocation as a DER CRL entry, encoded once here: publishing a CRL is then a
    # concatenation, fast enough to republish on every revocation at 100,000 entries.
    Column("crl_entry", LargeBinary, nullable=False),
)

# Every CRL published, so that CRL numbers only ever grow.
crl_publications = Table(
    "crl_publications",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("authority_id", ForeignKey("authorities.id"), nullable=False),
    Column("number", BigInteger, nullable=False),
    Column("this_update", UtcDateTime, nullable=False),
    Column("next_update", UtcDateTime, nullable=False),
    Column("crl_pem", Text, nullable=False),
    UniqueConstraint("authority_id", "number"),
)

# One CA operation. `hash` covers the record and the previous record's hash.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", UtcDateTime, nullable=False),
    Column("operator", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target_serial", String(40)),
    Column("target_name", String(128)),
    Column("outcome", String(16), nullable=False),
    Column("details", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
