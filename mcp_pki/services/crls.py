"""Publishing CRLs: one per CA, numbers that only grow, and the crl.pem bundle."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
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
)
from mcp_pki.pki.der import pem_encode
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
    key_id: bytes  # the CA's subject key identifier, which the CRL's AKI names


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
            der=der, key_id=key_id,
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


def write_crl_file(path: Path, crls: list[PublishedCrl]) -> bool:
    """Replace ``crl.pem`` (every CA's CRL, concatenated, as nginx's ssl_crl and OpenSSL's
    -crl_check_all need), unless it already holds newer CRLs.

    Runs after the commit. Two publishers commit in order but may reach this point out of
    order; under the lock, the later CRLs win, so the file never goes back to a CRL that
    lacks a revocation. Returns whether the file was written.
    """
    with _exclusive(path.with_name(".crl.lock")):
        published = _published_numbers(path)
        if any(published.get(crl.key_id, 0) > crl.number for crl in crls):
            return False
        files = OutputFiles()
        files.add(path, crl_bundle(crls))
        files.write()
    return True


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent publishers are rare there
        yield
        return
    descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
