"""Reading the inventory: finding certificates by REF, inspecting, exporting (listing is in
`listing`)."""

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from cryptography.hazmat.primitives import serialization
from sqlalchemy import (
    Engine,
    Select,
    select,
)
from sqlalchemy.orm import Session, contains_eager

from mcp_pki.errors import Ambiguous, InvalidInput, NotFound
from mcp_pki.pki.bundles import load_private_key, pkcs12_bytes
from mcp_pki.pki.inspect import facts, from_pem
from mcp_pki.services.listing import Status
from mcp_pki.store.db import read_session
from mcp_pki.store.models import Authority, Certificate
from mcp_pki.timestamps import iso_utc

_SERIAL_PREFIX = re.compile(r"[0-9a-f]{8,40}")
MIN_SERIAL_PREFIX = 8


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

