"""Listing the inventory: `list`, its JSON, and the counts and expiring certificates `status`
reports. Read with SQLAlchemy Core on the tables: these commands print up to 100,000 rows,
and neither the ORM's import nor its per-row work would fit in their time."""

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, NamedTuple

from sqlalchemy import (
    Engine,
    Select,
    String,
    Subquery,
    and_,
    case,
    exists,
    func,
    literal,
    select,
    type_coerce,
)

from mcp_pki.errors import InventoryError
from mcp_pki.store.db import read_transaction
from mcp_pki.store.tables import certificates, revocations
from mcp_pki.timestamps import iso_utc


class Status(Enum):
    VALID = "valid"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class ListFilter:
    kind: str | None = None
    status: Status | None = None
    expiring_within: timedelta | None = None
    name: str | None = None
    current: bool = False  # leave out certificates that a valid renewal supersedes


@dataclass(frozen=True, slots=True)
class ListedCertificate:
    serial: str
    name: str
    kind: str
    owner: str | None
    status: Status
    not_after: datetime
    sans: tuple[str, ...]
    roles: tuple[str, ...]
    superseded_by: str | None = None  # a valid renewal of this certificate, when there is one

    @property
    def superseded(self) -> bool:
        """Still valid, but renewed: what is deployed should be its renewal by now."""
        return self.status is Status.VALID and self.superseded_by is not None

    def as_json(self) -> dict[str, object]:
        return {
            "serial": self.serial, "name": self.name, "kind": self.kind, "owner": self.owner,
            "status": self.status.value, "not_after": iso_utc(self.not_after),
            "sans": list(self.sans), "roles": list(self.roles), "superseded_by": self.superseded_by,
        }


def list_certificates(engine: Engine, wanted: ListFilter, *, now: datetime) -> list[ListedCertificate]:
    return list(iter_certificates(engine, wanted, now=now))


def iter_certificates(engine: Engine, wanted: ListFilter, *, now: datetime) -> Iterator[ListedCertificate]:
    """The certificates `list` shows, streamed: only the columns shown are read (never the
    PEM), a thousand rows at a time, so 100,000 certificates list in constant memory."""
    renewals = _valid_renewals(now)
    # The dates and JSON lists come back as the driver gives them and are decoded below:
    # SQLAlchemy's per-value result processing cost four times the query itself at 100,000.
    query = _listing(
        select(certificates.c.serial, certificates.c.name, certificates.c.kind, certificates.c.owner,
               type_coerce(certificates.c.not_after, String).label("not_after"),
               type_coerce(certificates.c.sans, String).label("sans"), type_coerce(certificates.c.roles, String).label("roles"),
               revocations.c.certificate_id.label("revoked"), renewals.c.serial.label("superseded_by")),
        wanted, renewals, now,
    )
    rows: Any  # partitions of rows, untyped
    with read_transaction(engine) as connection:
        # By partition, each row unpacked: iterating a result row by row, and reading each
        # column by name, cost more than decoding the row.
        for rows in connection.execute(query.execution_options(yield_per=1000)).partitions():
            for serial, name, kind, owner, stored_not_after, sans, roles, revoked, superseded_by in rows:
                not_after = _utc(stored_not_after)
                status = Status.REVOKED if revoked is not None else (
                    Status.EXPIRED if not_after <= now else Status.VALID)
                yield ListedCertificate(
                    serial=serial, name=name, kind=kind, owner=owner, status=status, not_after=not_after,
                    sans=_texts(sans), roles=_texts(roles), superseded_by=superseded_by,
                )


def iter_certificates_json(engine: Engine, wanted: ListFilter, *, now: datetime) -> Iterator[str]:
    """What `list --json` prints, one JSON object per certificate, as `ListedCertificate.as_json`
    has it. On SQLite each object is written from the stored text, its lists of names copied
    as they are stored when json.dumps wrote them (see `_json_list`): decoding and encoding
    them cost several times the query at 100,000 rows. Elsewhere, from `iter_certificates`."""
    if engine.dialect.name != "sqlite":
        for listed in iter_certificates(engine, wanted, now=now):
            yield json.dumps(listed.as_json())
        return
    renewals = _valid_renewals(now)
    query = _listing(
        select(certificates.c.serial, certificates.c.name, certificates.c.kind, certificates.c.owner,
               _status(now),
               type_coerce(certificates.c.not_after, String), type_coerce(certificates.c.sans, String),
               type_coerce(certificates.c.roles, String), renewals.c.serial),
        wanted, renewals, now,
    )
    quote = _json_string
    rows: Any  # partitions of rows of text columns, untyped
    with read_transaction(engine) as connection:
        # By partition, each row unpacked: as in `iter_certificates`.
        for rows in connection.execute(query.execution_options(yield_per=1000)).partitions():
            for serial, name, kind, owner, status_text, not_after, sans, roles, superseded_by in rows:
                # Stored as "YYYY-MM-DD HH:MM:SS.ffffff"; iso_utc drops a zero fraction, as here.
                iso = not_after.replace(".000000", "").replace(" ", "T") + "Z"
                yield (
                    f'{{"serial": {quote(serial)}, "name": {quote(name)}, "kind": {quote(kind)}, '
                    f'"owner": {"null" if owner is None else quote(owner)}, "status": "{status_text}", '
                    f'"not_after": {quote(iso)}, "sans": {_json_list(sans)}, "roles": {_roles_json(roles)}, '
                    f'"superseded_by": {"null" if superseded_by is None else quote(superseded_by)}}}'
                )


# The C encoder json.dumps uses for a string, called directly: json.dumps itself costs three
# times as much per call, five calls a row.
_json_string = json.encoder.encode_basestring_ascii


def _plain_inner(stored: str) -> str | None:
    """The inside of a stored list of names as json.dumps writes it ('["a", "b"]' gives
    'a", "b'), when nothing in it is escaped or unprintable: such a list is split or copied
    as text. None for anything else, which is decoded (and refused when corrupt)."""
    if stored[:2] == '["' and stored[-2:] == '"]' and len(stored) >= 4 and "\\" not in stored and stored.isprintable():
        inner = stored[2:-2]
        # The usual list holds one name; a quote in a longer one must be a separator.
        if '"' not in inner or '"' not in inner.replace('", "', ""):
            return inner
    return None


def _json_list(stored: str) -> str:
    """A stored list of names as JSON text: itself when json.dumps wrote it, else re-encoded."""
    if stored == "[]" or _plain_inner(stored) is not None:
        return stored
    return json.dumps(list(_texts(stored)))


@functools.lru_cache(maxsize=1024)
def _roles_json(stored: str) -> str:
    # Cached: the same few sets of roles repeat from row to row.
    return _json_list(stored)


class TableRow(NamedTuple):
    """One line of `list`'s table, as text: untrusted, so escaped by the caller. A tuple:
    made 100,000 times, a frozen dataclass cost more than the query."""

    head: str  # serial (its first `serial_width` digits), kind and name, padded as printed
    status: str  # valid, superseded, expired or revoked
    not_after: str  # YYYY-MM-DD HH:MM (UTC)
    names: str  # the SANs then role:ROLE for each role, comma-separated


def table_head(serial: str, kind: str, name: str, serial_width: int) -> str:
    """The first columns of a table line, as `iter_table_rows` pads them."""
    return f"{serial[:serial_width]:{serial_width}}  {kind:6}  {name:20}  "


def iter_table_rows(engine: Engine, wanted: ListFilter, *, now: datetime, serial_width: int) -> Iterator[TableRow]:
    """What `list` prints, row by row. On SQLite the database works out the status, pads the
    first columns (printf) and cuts the date's text, and the lists of names are split as
    text (see `_names_text`): decoding and formatting 100,000 rows through SQLAlchemy's
    types, or Python's format specifications, cost several times the query. Elsewhere, from
    `iter_certificates`."""
    if engine.dialect.name != "sqlite":
        for listed in iter_certificates(engine, wanted, now=now):
            status = "superseded" if listed.superseded else listed.status.value
            names = ", ".join([*listed.sans, *(f"role:{r}" for r in listed.roles)])
            yield TableRow(table_head(listed.serial, listed.kind, listed.name, serial_width), status,
                           f"{listed.not_after:%Y-%m-%d %H:%M}", names)
        return
    renewals = _valid_renewals(now)
    # "!": widths in characters, not bytes, as Python counts them.
    head = func.printf("%!-*.*s  %!-6s  %!-20s  ", serial_width, serial_width,
                       certificates.c.serial, certificates.c.kind, certificates.c.name)
    query = _listing(
        select(head, _status(now, renewals), func.substr(type_coerce(certificates.c.not_after, String), 1, 16),
               type_coerce(certificates.c.sans, String), type_coerce(certificates.c.roles, String)),
        wanted, renewals, now,
    )
    rows: Any  # partitions of rows of text columns, untyped
    with read_transaction(engine) as connection:
        for rows in connection.execute(query.execution_options(yield_per=1000)).partitions():
            for head_text, status, not_after, sans, roles in rows:
                sans_text, roles_text = _names_text(sans), _roles_text(roles)
                names = f"{sans_text}, {roles_text}" if sans_text and roles_text else sans_text or roles_text
                yield TableRow(head_text, status, not_after, names)


def _names_text(stored: str, prefix: str = "") -> str:
    """A stored list of names as 'PREFIXa, PREFIXb', split as text when json.dumps wrote it
    (ten times faster than decoding it)."""
    if stored == "[]":
        return ""
    inner = _plain_inner(stored)
    if inner is not None:
        return prefix + inner.replace('", "', ", " + prefix)
    return ", ".join(prefix + item for item in _texts(stored))


@functools.lru_cache(maxsize=1024)
def _roles_text(stored: str) -> str:
    # Cached: the same few sets of roles repeat from row to row.
    return _names_text(stored, "role:")


def _listing(query: Any, wanted: ListFilter, renewals: Subquery, now: datetime) -> Any:
    """`query` (a select of columns) over the certificates `wanted` asks for, in listing order."""
    query = (
        query.select_from(certificates)
        .outerjoin(revocations, revocations.c.certificate_id == certificates.c.id)
        .outerjoin(renewals, renewals.c.renewed_id == certificates.c.id)
        .order_by(certificates.c.name, certificates.c.not_before, certificates.c.id)
    )
    if wanted.kind:
        query = query.where(certificates.c.kind == wanted.kind)
    if wanted.name:
        query = query.where(certificates.c.name == wanted.name)
    if wanted.status is Status.REVOKED:
        query = query.where(revocations.c.certificate_id.is_not(None))
    elif wanted.status is Status.EXPIRED:
        query = query.where(revocations.c.certificate_id.is_(None), certificates.c.not_after <= now)
    elif wanted.status is Status.VALID:
        query = query.where(revocations.c.certificate_id.is_(None), certificates.c.not_after > now)
    if wanted.expiring_within is not None:
        query = query.where(
            revocations.c.certificate_id.is_(None),
            certificates.c.not_after > now,
            certificates.c.not_after <= now + wanted.expiring_within,
        )
    if wanted.current:
        query = query.where(renewals.c.serial.is_(None))
    return query


def _utc(value: str | datetime) -> datetime:
    """A stored time as the driver returns it (text on SQLite, naive UTC elsewhere)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC)


def _texts(value: str | list[str]) -> tuple[str, ...]:
    """A stored list of names or roles (JSON text on SQLite, already decoded elsewhere),
    refused as the inventory's own column type refuses it when it is not a list of text."""
    if isinstance(value, str):
        return _decoded(value)
    return _checked(value)


@functools.lru_cache(maxsize=4096)
def _decoded(text: str) -> tuple[str, ...]:
    # Cached: roles, and the names of renewed certificates, repeat from row to row.
    if text == "[]":
        return ()
    inner = _plain_inner(text)
    if inner is not None:  # as json.dumps wrote it: split as text
        return tuple(inner.split('", "'))
    try:
        return _checked(json.loads(text))
    except ValueError:
        raise InventoryError(
            "the inventory is corrupt: a row holds invalid JSON (edited by hand?); restore a backup"
        ) from None


def _checked(items: object) -> tuple[str, ...]:
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise InventoryError("the inventory is corrupt: a stored list of names or roles is not a list of strings")
    return tuple(items)


def _status(now: datetime, renewals: Subquery | None = None) -> Any:
    """SQL: a listed certificate's status (revoked, expired, valid), or "superseded" for a
    valid one that one of `renewals` renews, when given."""
    superseded = () if renewals is None else ((renewals.c.serial.is_not(None), literal("superseded")),)
    return case(
        (revocations.c.certificate_id.is_not(None), literal("revoked")),
        (certificates.c.not_after <= now, literal("expired")),
        *superseded,
        else_=literal("valid"),
    )


def _valid_renewals(now: datetime) -> Subquery:
    """Each renewed certificate's newest valid renewal: (renewed_id, serial). Listing joins it
    once; a sub-select per listed row cost more than the rest of the query at 100,000."""
    renewal_revocation = revocations.alias("renewal_revocations")
    newest_first = func.row_number().over(
        partition_by=certificates.c.renews_id, order_by=(certificates.c.not_before.desc(), certificates.c.id.desc())
    )
    ranked = (
        select(certificates.c.renews_id.label("renewed_id"), certificates.c.serial, newest_first.label("rank"))
        .outerjoin(renewal_revocation, renewal_revocation.c.certificate_id == certificates.c.id)
        .where(certificates.c.renews_id.is_not(None), renewal_revocation.c.certificate_id.is_(None),
               certificates.c.not_after > now)
        .subquery("ranked_renewals")
    )
    return select(ranked.c.renewed_id, ranked.c.serial).where(ranked.c.rank == 1).subquery("renewals")


def count_by_status(engine: Engine, *, now: datetime) -> dict[str, int]:
    revoked = revocations.c.certificate_id.is_not(None)
    query = select(
        func.count(certificates.c.id),
        func.count(revocations.c.certificate_id),
        func.count(certificates.c.id).filter(~revoked, certificates.c.not_after <= now),
    ).select_from(certificates).outerjoin(revocations, revocations.c.certificate_id == certificates.c.id)
    with read_transaction(engine) as connection:
        total, revoked_count, expired = connection.execute(query).one()
    return {"valid": total - revoked_count - expired, "revoked": revoked_count, "expired": expired}


def expiring_unreplaced(query: Select[Any], *, now: datetime, within: timedelta) -> Select[Any]:
    """`query` (a select of certificate columns, or of the ORM class) over the valid
    certificates expiring within `within` that no valid renewal replaces yet, soonest first."""
    # The renews_id index (migration 0003) answers the NOT EXISTS per certificate; without
    # it the check scanned the table for each one.
    renewal = certificates.alias("renewal")
    renewal_revocation = revocations.alias("renewal_revocation")
    replaced = exists(
        select(renewal.c.id)
        .outerjoin(renewal_revocation, renewal_revocation.c.certificate_id == renewal.c.id)
        .where(renewal.c.renews_id == certificates.c.id, renewal_revocation.c.certificate_id.is_(None),
               renewal.c.not_after > now)
    )
    return (
        query.select_from(certificates)
        .outerjoin(revocations, revocations.c.certificate_id == certificates.c.id)
        .where(and_(
            revocations.c.certificate_id.is_(None),
            certificates.c.not_after > now,
            certificates.c.not_after <= now + within,
            ~replaced,
        ))
        .order_by(certificates.c.not_after, certificates.c.id)
    )


def list_expiring(engine: Engine, *, now: datetime, within: timedelta) -> list[ListedCertificate]:
    """The certificates `status` warns about: valid, expiring within `within`, and not yet
    replaced by a valid renewal. Decoded as `iter_certificates` decodes its rows: ten
    thousand of them are read in a fraction of what SQLAlchemy's types would take."""
    query = expiring_unreplaced(
        select(certificates.c.serial, certificates.c.name, certificates.c.kind, certificates.c.owner,
               type_coerce(certificates.c.not_after, String).label("not_after"),
               type_coerce(certificates.c.sans, String).label("sans"),
               type_coerce(certificates.c.roles, String).label("roles")),
        now=now, within=within,
    )
    with read_transaction(engine) as connection:
        rows: Any = connection.execute(query).all()  # rows of text columns, untyped
    return [
        ListedCertificate(
            serial=serial, name=name, kind=kind, owner=owner, status=Status.VALID,
            not_after=_utc(not_after), sans=_texts(sans), roles=_texts(roles),
        )
        for serial, name, kind, owner, not_after, sans, roles in rows
    ]
