"""Reading the inventory: finding certificates by REF, listing, inspecting, exporting."""

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import serialization
from sqlalchemy import (
    Engine,
    Select,
    String,
    Subquery,
    case,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy.orm import Session, aliased, contains_eager

from mcp_pki.errors import Ambiguous, InvalidInput, InventoryError, NotFound
from mcp_pki.pki.bundles import load_private_key, pkcs12_bytes
from mcp_pki.pki.inspect import facts, from_pem
from mcp_pki.store.db import read_session
from mcp_pki.store.models import Authority, Certificate, Revocation
from mcp_pki.timestamps import iso_utc

_SERIAL_PREFIX = re.compile(r"[0-9a-f]{8,40}")
MIN_SERIAL_PREFIX = 8


class Status(Enum):
    VALID = "valid"
    REVOKED = "revoked"
    EXPIRED = "expired"


def status_of(certificate: Certificate, now: datetime) -> Status:
    if certificate.revocation is not None:
        return Status.REVOKED
    if certificate.not_after <= now:
        return Status.EXPIRED
    return Status.VALID


def _with_revocation() -> Select[Certificate]:
    return select(Certificate).outerjoin(Certificate.revocation).options(contains_eager(Certificate.revocation))


def resolve_ref(session: Session, ref: str, *, now: datetime) -> Certificate:
    """A serial (full, or a unique prefix of at least 8 hex digits) or a NAME.

    A NAME means the newest valid certificate of that name (the newest of any status when
    none is valid). Certificates of different kinds sharing the name make it ambiguous.
    """
    by_serial: list[Certificate] = []
    candidate = ref.lower().replace(":", "").removeprefix("0x")
    if _SERIAL_PREFIX.fullmatch(candidate):
        # Serials are stored without leading zeros; OpenSSL, nginx ($ssl_client_serial) and
        # Python print them padded to whole octets, e.g. 0FBF86... for fbf86...
        prefix = candidate.lstrip("0") or "0"
        # A range rather than LIKE: every backend answers it from the serial index. Serials
        # are lowercase hex, so "g" sorts after every serial that starts with the prefix.
        by_serial = list(
            session.scalars(_with_revocation().where(Certificate.serial >= prefix, Certificate.serial < prefix + "g"))
        )
    by_name = list(
        session.scalars(
            _with_revocation().where(Certificate.name == ref).order_by(Certificate.not_before.desc(), Certificate.id.desc())
        )
    )
    if by_serial and by_name:
        raise Ambiguous(f"{ref!r} is both a name and a serial prefix: {_serials(by_serial + by_name)}")
    if len(by_serial) > 1:
        raise Ambiguous(f"serial prefix {ref!r} matches several certificates: {_serials(by_serial)}")
    if by_serial:
        return by_serial[0]
    if not by_name:
        raise NotFound(f"no certificate matches {ref!r}{_did_you_mean(session, ref)} "
                       f"(give a name or a serial of at least {MIN_SERIAL_PREFIX} hex digits)")
    valid = [c for c in by_name if status_of(c, now) is Status.VALID]
    pool = valid or by_name
    kinds = {c.kind for c in pool}
    if len(kinds) > 1:
        raise Ambiguous(
            f"name {ref!r} has certificates of several kinds ({', '.join(sorted(kinds))}): "
            f"give a serial: {_serials(pool)}"
        )
    return pool[0]


def _did_you_mean(session: Session, ref: str) -> str:
    """The closest certificate names to a mistyped one, for the error that names it."""
    import difflib

    names = session.scalars(select(Certificate.name).distinct())
    close = difflib.get_close_matches(ref, list(names), n=3, cutoff=0.75)
    return f": did you mean {' or '.join(repr(n) for n in close)}?" if close else ""


def _serials(certificates: list[Certificate]) -> str:
    return ", ".join(f"{c.serial} ({c.kind})" for c in certificates)


@dataclass(frozen=True, slots=True)
class CertificateView:
    """What `show` and `list` print: the inventory row and the certificate's own facts."""

    serial: str
    name: str
    kind: str
    owner: str | None
    status: Status
    subject: str
    issuer: str
    sans: tuple[str, ...]
    roles: tuple[str, ...]
    extended_key_usage: tuple[str, ...]
    key_type: str
    not_before: datetime
    not_after: datetime
    days_left: int
    sha256_fingerprint: str
    chain: tuple[str, ...]  # issuer subjects, the issuing CA first, the root last
    revoked_at: datetime | None
    revocation_reason: str | None
    renews: str | None
    from_csr: bool
    files_dir: str | None  # where issue/renew wrote the files; None before schema 0002
    pem: str

    def as_json(self) -> dict[str, object]:
        return {
            "serial": self.serial, "name": self.name, "kind": self.kind, "owner": self.owner,
            "status": self.status.value, "subject": self.subject, "issuer": self.issuer,
            "sans": list(self.sans), "roles": list(self.roles),
            "extended_key_usage": list(self.extended_key_usage), "key_type": self.key_type,
            "not_before": _iso(self.not_before), "not_after": _iso(self.not_after),
            "days_left": self.days_left, "sha256_fingerprint": self.sha256_fingerprint,
            "chain": list(self.chain), "revoked_at": _iso(self.revoked_at),
            "revocation_reason": self.revocation_reason, "renews": self.renews,
            "from_csr": self.from_csr, "files_dir": self.files_dir,
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso_utc(moment)


def issuer_chain(session: Session, authority_id: int) -> list[Authority]:
    """A certificate's issuer and the CAs above it, the root last."""
    chain, authority = [], session.get(Authority, authority_id)
    while authority is not None:
        chain.append(authority)
        authority = authority.parent
    return chain


def view(session: Session, certificate: Certificate, *, now: datetime) -> CertificateView:
    cert = from_pem(certificate.certificate_pem)
    leaf = facts(cert)
    chain = [a.subject for a in issuer_chain(session, certificate.issuer_id)]
    renews = session.get(Certificate, certificate.renews_id) if certificate.renews_id else None
    revocation = certificate.revocation
    return CertificateView(
        serial=certificate.serial, name=certificate.name, kind=certificate.kind, owner=certificate.owner,
        status=status_of(certificate, now), subject=leaf.subject, issuer=leaf.issuer, sans=leaf.sans,
        roles=leaf.roles, extended_key_usage=leaf.extended_key_usage, key_type=leaf.key_type,
        not_before=leaf.not_before, not_after=leaf.not_after,
        days_left=max(0, (leaf.not_after - now).days), sha256_fingerprint=leaf.sha256_fingerprint,
        chain=tuple(chain), revoked_at=revocation.revoked_at if revocation else None,
        revocation_reason=(revocation.reason or "unspecified") if revocation else None,
        renews=renews.serial if renews else None, from_csr=certificate.from_csr,
        files_dir=certificate.files_dir, pem=certificate.certificate_pem,
    )


def show_certificate(engine: Engine, ref: str, *, now: datetime) -> CertificateView:
    with read_session(engine) as session, session.begin():
        return view(session, resolve_ref(session, ref, now=now), now=now)


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
            "status": self.status.value, "not_after": _iso(self.not_after),
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
        select(Certificate.serial, Certificate.name, Certificate.kind, Certificate.owner,
               type_coerce(Certificate.not_after, String).label("not_after"),
               type_coerce(Certificate.sans, String).label("sans"), type_coerce(Certificate.roles, String).label("roles"),
               Revocation.certificate_id.label("revoked"), renewals.c.serial.label("superseded_by")),
        wanted, renewals, now,
    )
    with read_session(engine) as session, session.begin():
        for row in session.connection().execute(query.execution_options(yield_per=1000)):
            not_after = _utc(row.not_after)
            status = Status.REVOKED if row.revoked is not None else (
                Status.EXPIRED if not_after <= now else Status.VALID)
            yield ListedCertificate(
                serial=row.serial, name=row.name, kind=row.kind, owner=row.owner, status=status,
                not_after=not_after, sans=_texts(row.sans), roles=_texts(row.roles),
                superseded_by=row.superseded_by,
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
    status = case(
        (Revocation.certificate_id.is_not(None), literal("revoked")),
        (Certificate.not_after <= now, literal("expired")),
        else_=literal("valid"),
    )
    query = _listing(
        select(Certificate.serial, Certificate.name, Certificate.kind, Certificate.owner, status,
               type_coerce(Certificate.not_after, String), type_coerce(Certificate.sans, String),
               type_coerce(Certificate.roles, String), renewals.c.serial),
        wanted, renewals, now,
    )
    quote = _json_string
    with read_session(engine) as session, session.begin():
        row: Any  # untyped: nine columns, each text
        for row in session.connection().execute(query.execution_options(yield_per=1000)):
            serial, name, kind, owner, status_text, not_after, sans, roles, superseded_by = row
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
    if (len(stored) >= 4 and stored.startswith('["') and stored.endswith('"]') and "\\" not in stored
            and stored.isprintable()):
        inner = stored[2:-2]
        if '"' not in inner.replace('", "', ""):
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

    serial: str
    kind: str
    name: str
    status: str  # valid, superseded, expired or revoked
    not_after: str  # YYYY-MM-DD HH:MM (UTC)
    names: str  # the SANs then role:ROLE for each role, comma-separated


def iter_table_rows(engine: Engine, wanted: ListFilter, *, now: datetime) -> Iterator[TableRow]:
    """What `list` prints, row by row. On SQLite the database works out the status and the
    date's text, and the lists of names are split as text (see `_names_text`): decoding and
    formatting 100,000 rows through SQLAlchemy's types cost several times the query.
    Elsewhere, from `iter_certificates`."""
    if engine.dialect.name != "sqlite":
        for listed in iter_certificates(engine, wanted, now=now):
            status = "superseded" if listed.superseded else listed.status.value
            names = ", ".join([*listed.sans, *(f"role:{r}" for r in listed.roles)])
            yield TableRow(listed.serial, listed.kind, listed.name, status,
                           f"{listed.not_after:%Y-%m-%d %H:%M}", names)
        return
    renewals = _valid_renewals(now)
    shown_status = case(
        (Revocation.certificate_id.is_not(None), literal("revoked")),
        (Certificate.not_after <= now, literal("expired")),
        (renewals.c.serial.is_not(None), literal("superseded")),
        else_=literal("valid"),
    )
    query = _listing(
        select(Certificate.serial, Certificate.kind, Certificate.name, shown_status,
               func.substr(type_coerce(Certificate.not_after, String), 1, 16),
               type_coerce(Certificate.sans, String), type_coerce(Certificate.roles, String)),
        wanted, renewals, now,
    )
    with read_session(engine) as session, session.begin():
        row: Any  # untyped: seven columns, each text
        for row in session.connection().execute(query.execution_options(yield_per=1000)):
            serial, kind, name, status, not_after, sans, roles = row
            sans_text, roles_text = _names_text(sans), _roles_text(roles)
            names = f"{sans_text}, {roles_text}" if sans_text and roles_text else sans_text or roles_text
            yield TableRow(serial, kind, name, status, not_after, names)


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
        query.select_from(Certificate)
        .outerjoin(Revocation, Revocation.certificate_id == Certificate.id)
        .outerjoin(renewals, renewals.c.renewed_id == Certificate.id)
        .order_by(Certificate.name, Certificate.not_before, Certificate.id)
    )
    if wanted.kind:
        query = query.where(Certificate.kind == wanted.kind)
    if wanted.name:
        query = query.where(Certificate.name == wanted.name)
    if wanted.status is Status.REVOKED:
        query = query.where(Revocation.certificate_id.is_not(None))
    elif wanted.status is Status.EXPIRED:
        query = query.where(Revocation.certificate_id.is_(None), Certificate.not_after <= now)
    elif wanted.status is Status.VALID:
        query = query.where(Revocation.certificate_id.is_(None), Certificate.not_after > now)
    if wanted.expiring_within is not None:
        query = query.where(
            Revocation.certificate_id.is_(None),
            Certificate.not_after > now,
            Certificate.not_after <= now + wanted.expiring_within,
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


def _valid_renewals(now: datetime) -> Subquery:
    """Each renewed certificate's newest valid renewal: (renewed_id, serial). Listing joins it
    once; a sub-select per listed row cost more than the rest of the query at 100,000."""
    renewal_revocation = aliased(Revocation)
    newest_first = func.row_number().over(
        partition_by=Certificate.renews_id, order_by=(Certificate.not_before.desc(), Certificate.id.desc())
    )
    ranked = (
        select(Certificate.renews_id.label("renewed_id"), Certificate.serial, newest_first.label("rank"))
        .outerjoin(renewal_revocation, renewal_revocation.certificate_id == Certificate.id)
        .where(Certificate.renews_id.is_not(None), renewal_revocation.certificate_id.is_(None),
               Certificate.not_after > now)
        .subquery("ranked_renewals")
    )
    return select(ranked.c.renewed_id, ranked.c.serial).where(ranked.c.rank == 1).subquery("renewals")


def count_by_status(engine: Engine, *, now: datetime) -> dict[str, int]:
    revoked = Revocation.certificate_id.is_not(None)
    query = select(
        func.count(Certificate.id),
        func.count(Revocation.certificate_id),
        func.count(Certificate.id).filter(~revoked, Certificate.not_after <= now),
    ).outerjoin(Certificate.revocation)
    with read_session(engine) as session, session.begin():
        total, revoked_count, expired = session.execute(query).one()
    return {"valid": total - revoked_count - expired, "revoked": revoked_count, "expired": expired}


class ExportFormat(Enum):
    PEM = "pem"
    DER = "der"
    CHAIN = "chain"
    P12 = "p12"


def export_certificate(
    engine: Engine,
    ref: str,
    export_format: ExportFormat,
    *,
    now: datetime,
    key_pem: bytes | None = None,
    p12_passphrase: bytes | None = None,
    p12_legacy: bool = False,
) -> bytes:
    """The certificate as PEM, DER, a chain (leaf then intermediates, like ``tls.crt``) or a
    PKCS#12 bundle with the private key the user supplies (we never keep leaf keys)."""
    with read_session(engine) as session, session.begin():
        row = resolve_ref(session, ref, now=now)
        certificate = from_pem(row.certificate_pem)
        authorities = [from_pem(a.certificate_pem) for a in issuer_chain(session, row.issuer_id)]
        name = row.name
    intermediates, root = authorities[:-1], authorities[-1]
    if export_format is ExportFormat.PEM:
        return certificate.public_bytes(serialization.Encoding.PEM)
    if export_format is ExportFormat.DER:
        return certificate.public_bytes(serialization.Encoding.DER)
    if export_format is ExportFormat.CHAIN:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [certificate, *intermediates])
    if key_pem is None:
        raise InvalidInput("--format p12 needs the certificate's private key: pass --key FILE")
    key = load_private_key(key_pem)
    if key.public_key() != certificate.public_key():
        raise InvalidInput("the private key does not belong to this certificate")
    if p12_passphrase is None:
        raise InvalidInput("a PKCS#12 bundle needs a passphrase")
    return pkcs12_bytes(
        name=name, key=key, certificate=certificate,
        ca_certificates=[*intermediates, root], passphrase=p12_passphrase, legacy=p12_legacy,
    )

