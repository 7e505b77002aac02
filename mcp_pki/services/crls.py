"""Publishing CRLs: one per CA, numbers that only grow, and the crl.pem bundle."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mcp_pki.errors import InvalidInput
from mcp_pki.pki.crl import (
    RevocationReason,
    RevokedEntry,
    authority_key_id,
    build_crl,
    crl_number,
    encode_entry,
    load_crls,
    pem_encode,
)
from mcp_pki.pki.profiles import Issuer
from mcp_pki.services.files import OutputFiles
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
    authorities = list(session.scalars(select(Authority).order_by(Authority.id.desc())))
    previous = {
        authority.id: session.execute(
            select(CrlPublication.number, CrlPublication.this_update)
            .where(CrlPublication.authority_id == authority.id)
            .order_by(CrlPublication.number.desc())
            .limit(1)
        ).first()
        for authority in authorities
    }
    revoked = _revoked_by_issuer(session, previous)
    published = []
    # Newest CA first: the issuing CA's CRL, then the root's, as crl.pem lists them.
    for authority in authorities:
        issuer, last = issuers[authority.id], previous[authority.id]
        key_id = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        number = max(last.number if last else 0, file_numbers.get(key_id, 0)) + 1
        entries = revoked.get(authority.id, [])
        der = build_crl(issuer=issuer, number=number, this_update=now, next_update=now + validity, entries=entries)
        # Only the newest CRL's text is kept; older rows keep number and times as history.
        session.execute(
            update(CrlPublication)
            .where(CrlPublication.authority_id == authority.id, CrlPublication.crl_pem != "")
            .values(crl_pem="")
        )
        pem = pem_encode(der)
        session.add(CrlPublication(
            authority_id=authority.id, number=number, this_update=now, next_update=now + validity,
            crl_pem=pem.decode("ascii"),
        ))
        published.append(PublishedCrl(
            role=authority.role, subject=authority.subject, number=number, this_update=now,
            next_update=now + validity, entries=len(entries), pem=pem,
            der=der,
        ))
    return published


def _revoked_by_issuer(session: Session, previous: dict[int, Any]) -> dict[int, list[bytes]]:
    """Encoded CRL entries by issuing CA, read in one pass over the revocations.

    An entry stays until one CRL has been published after the certificate expired (RFC 5280
    3.3): it is dropped once the previous CRL of its CA came after its expiry. Every CA
    publishes at once, so one cutoff normally serves all; only the columns needed are read,
    on the Core connection, since per-row ORM work would dominate at 100,000 entries.
    """
    groups: dict[datetime | None, set[int]] = {}
    for authority_id, row in previous.items():
        groups.setdefault(row.this_update if row else None, set()).add(authority_id)
    by_issuer: dict[int, list[bytes]] = {}
    for cutoff, authority_ids in groups.items():
        query = (
            select(Certificate.issuer_id, Revocation.crl_entry)
            .select_from(Revocation)
            .join(Certificate, Revocation.certificate_id == Certificate.id)
            .order_by(Revocation.certificate_id)
        )
        if cutoff is not None:
            query = query.where(Certificate.not_after >= cutoff)
        for issuer_id, entry in session.connection().execute(query).all():
            if issuer_id in authority_ids:
                by_issuer.setdefault(issuer_id, []).append(entry)
    return by_issuer


def new_revocation(
    certificate: Certificate, *, reason: RevocationReason | None, invalidity_date: datetime | None, now: datetime
) -> Revocation:
    """The revocation row of `certificate`, with its CRL entry encoded once for all CRLs."""
    entry = RevokedEntry(int(certificate.serial, 16), now, reason, invalidity_date)
    return Revocation(
        certificate_id=certificate.id, revoked_at=now, reason=reason.value if reason else None,
        invalidity_date=invalidity_date, crl_entry=encode_entry(entry),
    )


def _published_numbers(path: Path) -> dict[bytes, int]:
    """CRL numbers in the published file, by the issuing CA's key identifier."""
    try:
        crls = load_crls(path.read_bytes())
    except (OSError, InvalidInput):
        return {}
    numbers: dict[bytes, int] = {}
    for crl in crls:
        key_id, number = authority_key_id(crl), crl_number(crl)
        if key_id is not None and number is not None:
            numbers[key_id] = max(number, numbers.get(key_id, 0))
    return numbers


def crl_bundle(crls: list[PublishedCrl]) -> bytes:
    return b"".join(c.pem for c in crls)


def add_crl_file(output: OutputFiles, crls: list[PublishedCrl], path: Path) -> None:
    """``crl.pem``: every CA's CRL, concatenated, as nginx's ssl_crl and OpenSSL's
    -crl_check_all need (an expired or missing CRL for any CA in the chain rejects all)."""
    output.add(path, crl_bundle(crls))
