"""Publishing CRLs: one per CA, numbers that only grow, and the crl.pem bundle."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mcp_pki.errors import InvalidInput
from mcp_pki.pki.crl import RevocationReason, RevokedEntry, authority_key_id, build_crl, crl_number, load_crls
from mcp_pki.pki.profiles import Issuer
from mcp_pki.services.files import StagedFiles
from mcp_pki.store.models import Authority, Certificate, CrlPublication, Revocation


@dataclass(frozen=True, slots=True)
class PublishedCrl:
    role: str
    subject: str
    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    pem: bytes
    der: bytes


def publish_crls(
    session: Session, issuers: dict[int, Issuer], *, now: datetime, validity: timedelta, published_file: Path
) -> list[PublishedCrl]:
    """Sign a new CRL for every CA, inside the caller's transaction.

    The CRL number is one more than the highest ever seen, in the inventory or in the
    published file, so that restoring an older inventory cannot make numbers go backwards.
    """
    if validity <= timedelta(0):
        raise InvalidInput("the CRL validity must be greater than zero")
    file_numbers = _published_numbers(published_file)
    published = []
    # Newest CA first: the issuing CA's CRL, then the root's, as crl.pem lists them.
    for authority in session.scalars(select(Authority).order_by(Authority.id.desc())):
        issuer = issuers[authority.id]
        previous = session.execute(
            select(CrlPublication.number, CrlPublication.this_update)
            .where(CrlPublication.authority_id == authority.id)
            .order_by(CrlPublication.number.desc())
            .limit(1)
        ).first()
        key_id = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        number = max(previous.number if previous else 0, file_numbers.get(key_id, 0)) + 1
        entries = _entries(session, authority.id, previous.this_update if previous else None)
        crl = build_crl(issuer=issuer, number=number, this_update=now, next_update=now + validity, entries=entries)
        # Only the newest CRL's text is kept; older rows keep number and times as history.
        session.execute(
            update(CrlPublication).where(CrlPublication.authority_id == authority.id).values(crl_pem="")
        )
        pem = crl.public_bytes(serialization.Encoding.PEM)
        session.add(CrlPublication(
            authority_id=authority.id, number=number, this_update=now, next_update=now + validity,
            crl_pem=pem.decode("ascii"),
        ))
        published.append(PublishedCrl(
            role=authority.role, subject=authority.subject, number=number, this_update=now,
            next_update=now + validity, entries=len(entries), pem=pem,
            der=crl.public_bytes(serialization.Encoding.DER),
        ))
    return published


def _entries(session: Session, authority_id: int, previous_update: datetime | None) -> list[RevokedEntry]:
    """Revoked certificates of one CA. An entry stays until one CRL has been published after
    the certificate expired (RFC 5280 3.3): the previous CRL, if it came after expiry."""
    query = (
        select(Certificate.serial, Revocation.revoked_at, Revocation.reason, Revocation.invalidity_date)
        .join(Revocation, Revocation.certificate_id == Certificate.id)
        .where(Certificate.issuer_id == authority_id)
        .order_by(Revocation.revoked_at, Certificate.id)
    )
    if previous_update is not None:
        query = query.where(Certificate.not_after >= previous_update)
    return [
        RevokedEntry(
            serial=int(serial, 16), revoked_at=revoked_at,
            reason=RevocationReason(reason) if reason else None, invalidity_date=invalidity_date,
        )
        for serial, revoked_at, reason, invalidity_date in session.execute(query)
    ]


def _published_numbers(path: Path) -> dict[bytes, int]:
    """CRL numbers in the published file, by the issuing CA's key identifier."""
    try:
        crls = load_crls(path.read_bytes())
    except (OSError, InvalidInput):
        return {}
    numbers = {}
    for crl in crls:
        key_id, number = authority_key_id(crl), crl_number(crl)
        if key_id is not None and number is not None:
            numbers[key_id] = max(number, numbers.get(key_id, 0))
    return numbers


def crl_bundle(crls: list[PublishedCrl]) -> bytes:
    return b"".join(c.pem for c in crls)


def stage_crl_file(staged: StagedFiles, crls: list[PublishedCrl], path: Path) -> None:
    """``crl.pem``: every CA's CRL, concatenated, as nginx's ssl_crl and OpenSSL's
    -crl_check_all need (an expired or missing CRL for any CA in the chain rejects all)."""
    staged.ensure_folder(path.parent)
    staged.stage(path, crl_bundle(crls))
