"""Publishing CRLs: one per CA, numbers that only grow, and the crl.pem bundle."""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from sqlalchemy import Connection, Row, func, insert, select, update

from mcp_pki.errors import InvalidInput, PolicyViolation
from mcp_pki.pki.crl import (
    RevocationReason,
    RevokedEntry,
    authority_key_id,
    build_crl,
    crl_number,
    encode_entry,
    entry_serial,
    load_crl_ders,
    revoked_entries,
    revoked_sequence,
)
from mcp_pki.pki.der import der as der_element
from mcp_pki.pki.der import pem_encode
from mcp_pki.pki.profiles import Issuer
from mcp_pki.pki.signatures import is_crl_signed_by
from mcp_pki.services.files import OutputFiles
from mcp_pki.store.db import connection_of
from mcp_pki.store.tables import authorities as authority_table
from mcp_pki.store.tables import certificates, crl_publications, revocations
from mcp_pki.timestamps import iso_utc

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)  # the CLI prints its warnings as "Warning: ..."

# RFC 5280 5.2.3 allows CRL numbers of up to 20 octets; the inventory stores them as a
# 64-bit signed integer (SQLite and PostgreSQL BIGINT), the tighter bound. One CRL a second
# would take 292 billion years to reach it: only a forged or corrupted number gets there.
MAX_CRL_NUMBER = 2**63 - 1


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
    ca_certificate: x509.Certificate  # the CA that signed it


# How far the clock may be behind the newest CRL's thisUpdate before we refuse to sign: more
# than clock skew between the machines that share an inventory, far less than a CRL's life.
CLOCK_TOLERANCE = timedelta(minutes=5)


def publish_crls(
    db: "Connection | Session", issuers: dict[int, Issuer], *, now: datetime, validity: timedelta,
    published_file: Path,
) -> list[PublishedCrl]:
    """Sign a new CRL for every CA, inside the caller's transaction (`db`).

    The CRL number is one more than the highest ever seen, in the inventory or in the
    published file (counting only CRLs that our CA signed), so that restoring an older
    inventory cannot make numbers go backwards. Before signing, each CA's previous signed
    CRL is compared with the new entries: a serial it lists whose certificate has not
    expired must still be revoked, or the publication is refused. So deleting a row from
    the revocations table cannot quietly un-revoke a certificate at the next routine `crl`.
    """
    if validity <= timedelta(0):
        raise InvalidInput("the CRL validity must be greater than zero")
    connection = connection_of(db)
    authorities = connection.execute(select(authority_table).order_by(authority_table.c.id.desc())).all()
    ca_certificates = {a.id: issuers[a.id].certificate for a in authorities}
    previous = newest_signed_crls(connection, ca_certificates, published_file)
    for authority in authorities:
        last = previous.get(authority.id)
        if last is not None and now < last.this_update - CLOCK_TOLERANCE:
            raise PolicyViolation(
                f"the clock is behind: it is {iso_utc(now)}, but CRL #{last.number} of {authority.subject} "
                f"was signed at {iso_utc(last.this_update)}. Fix the system clock; CRLs are not signed "
                f"while the clock is earlier than the newest CRL"
            )
    revoked = _revoked_by_issuer(connection, [a.id for a in authorities], previous, now=now)
    published = []
    # Newest CA first: the issuing CA's CRL, then the root's, as crl.pem lists them.
    for authority in authorities:
        issuer, last = issuers[authority.id], previous.get(authority.id)
        key_id = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        highest = max(
            last.number if last else 0,
            connection.scalar(
                select(func.max(crl_publications.c.number)).where(crl_publications.c.authority_id == authority.id)
            ) or 0,
        )
        number = highest + 1
        if number > MAX_CRL_NUMBER:
            raise PolicyViolation(
                f"the CRL number of {authority.subject} has reached the largest the inventory can store "
                f"({MAX_CRL_NUMBER}); a forged or corrupted number got there: run 'mcp-pki audit verify'"
            )
        entries = revoked.get(authority.id, [])
        if last is not None:
            _refuse_dropped(connection, authority, last, entries, now=now)
        der = build_crl(issuer=issuer, number=number, this_update=now, next_update=now + validity, entries=entries)
        # Only the newest CRL's text is kept; older rows keep number and times as history.
        connection.execute(
            update(crl_publications)
            .where(crl_publications.c.authority_id == authority.id, crl_publications.c.crl_pem != "")
            .values(crl_pem="")
        )
        pem = pem_encode(der)
        connection.execute(insert(crl_publications).values(
            authority_id=authority.id, number=number, this_update=now, next_update=now + validity,
            crl_pem=pem.decode("ascii"),
        ))
        published.append(PublishedCrl(
            role=authority.role, subject=authority.subject, number=number, this_update=now,
            next_update=now + validity, entries=len(entries), pem=pem,
            der=der, key_id=key_id, ca_certificate=issuer.certificate,
        ))
    return published


@dataclass(frozen=True, slots=True)
class SignedCrl:
    """The newest CRL of one CA whose signature checks out, from the inventory or crl.pem."""

    crl: x509.CertificateRevocationList
    der: bytes
    number: int
    this_update: datetime
    source: str  # "the inventory" or the file's path


def newest_signed_crls(
    db: "Connection | Session", ca_certificates: dict[int, x509.Certificate], published_file: Path | None
) -> dict[int, SignedCrl]:
    """By CA id, the highest-numbered CRL that this CA really signed.

    Looks in the inventory (the newest publication's text) and in the published file. A CRL
    whose signature does not verify is ignored with a warning: anyone who can write the home
    folder could plant one with a huge number and block every later publication.
    """
    candidates: list[tuple[bytes, str]] = []
    rows = connection_of(db).execute(
        select(crl_publications.c.authority_id, crl_publications.c.crl_pem).where(crl_publications.c.crl_pem != "")
    ).all()
    for row in rows:
        try:
            candidates.extend((der, "the inventory") for der in load_crl_ders(row.crl_pem.encode("ascii")))
        except (InvalidInput, UnicodeEncodeError):
            logger.warning("an unreadable CRL in the inventory was ignored")
    if published_file is not None:
        try:
            data = published_file.read_bytes()
        except OSError:
            data = b""
        inventory_text = b"".join(row.crl_pem.encode("ascii", "replace") for row in sorted(rows, reverse=True))
        if data == inventory_text:
            data = b""  # crl.pem as we last wrote it: the same CRLs as the inventory's
        try:
            candidates.extend((der, str(published_file)) for der in load_crl_ders(data))
        except InvalidInput:
            logger.warning("%s holds a malformed CRL: ignored", published_file)
    parsed = [(x509.load_der_x509_crl(der), der, source) for der, source in candidates]
    # Highest number first, each distinct CRL verified once, until each CA has one that
    # verifies: verifying a 100,000-entry CRL is the costly step.
    parsed.sort(key=lambda c: crl_number(c[0]) or 0, reverse=True)
    key_ids = {i: _subject_key_id(c) for i, c in ca_certificates.items()}
    newest: dict[int, SignedCrl] = {}
    seen: set[bytes] = set()
    for crl, der, source in parsed:
        number, key_id = crl_number(crl), authority_key_id(crl)
        signer = next((i for i, k in key_ids.items() if k == key_id), None)
        if signer is not None and signer in newest:
            continue
        if der in seen:
            continue
        seen.add(der)
        if signer is None or number is None or not is_crl_signed_by(der, ca_certificates[signer]):
            logger.warning("a CRL in %s is not signed by this CA: ignored", source)
            continue
        newest[signer] = SignedCrl(crl, der, number, crl.last_update_utc, source)
    return newest


def _subject_key_id(certificate: x509.Certificate) -> bytes | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _refuse_dropped(
    connection: Connection, authority: Row[Any], last: SignedCrl, entries: list[bytes], *, now: datetime
) -> None:
    """Refuse to publish when a serial on the previous signed CRL is missing from `entries`
    while its certificate has not expired: the revocation was removed from the database."""
    if revoked_sequence(last.der) == (der_element(0x30, b"".join(entries)) if entries else b""):
        return  # exactly the entries of the previous CRL: the usual republication
    current = set(entries)
    dropped = [e for e in revoked_entries(last.der) if e not in current]
    if not dropped:
        return
    still_listed = {entry_serial(e) for e in entries}
    for entry in dropped:
        serial = entry_serial(entry)
        if serial in still_listed:
            continue
        if not _expired(connection, authority, serial, now=now):
            raise PolicyViolation(
                f"refusing to publish: certificate {serial:x} is revoked on CRL #{last.number} of "
                f"{authority.subject} ({last.source}) and has not expired, but the inventory no longer "
                f"holds its revocation. The database may have been altered: run 'mcp-pki audit verify'"
            )


def _expired(connection: Connection, authority: Row[Any], serial: int, *, now: datetime) -> bool:
    """Whether the certificate we signed with `serial` has expired, by its own signed
    notAfter: the inventory's not_after column could be edited along with the revocation."""
    text = connection.scalar(
        select(certificates.c.certificate_pem).where(
            certificates.c.issuer_id == authority.id, certificates.c.serial == f"{serial:x}"
        )
    )
    if text is None:
        return False
    try:
        certificate = x509.load_pem_x509_certificate(text.encode("ascii"))
        issuer = x509.load_pem_x509_certificate(authority.certificate_pem.encode("ascii"))
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnicodeEncodeError):
        return False
    return certificate.serial_number == serial and certificate.not_valid_after_utc < now


def _revoked_by_issuer(
    connection: Connection, authority_ids: list[int], previous: dict[int, SignedCrl], *, now: datetime
) -> dict[int, list[bytes]]:
    """Encoded CRL entries by issuing CA, read in one pass over the revocations.

    An entry stays until one CRL has been published after the certificate expired (RFC 5280
    3.3): it is dropped once its certificate has expired both before the previous signed
    CRL of its CA and before now. Both, so that one run with the clock ahead cannot make
    later CRLs drop entries of certificates that are still valid. Every CA publishes at
    once, so one cutoff normally serves all; the cutoff is applied in SQL and only the
    columns needed are read, since per-row work would dominate at
    100,000 entries.
    """
    groups: dict[datetime | None, set[int]] = {}
    for authority_id in authority_ids:
        last = previous.get(authority_id)
        groups.setdefault(min(last.this_update, now) if last else None, set()).add(authority_id)
    by_issuer: dict[int, list[bytes]] = {}
    for cutoff, ids in groups.items():
        query = (
            select(certificates.c.issuer_id, revocations.c.crl_entry)
            .select_from(revocations)
            .join(certificates, revocations.c.certificate_id == certificates.c.id)
            .order_by(revocations.c.certificate_id)
        )
        if cutoff is not None:
            query = query.where(certificates.c.not_after >= cutoff)
        rows: Any = connection.execute(query).all()  # unpacked: reading columns by name costs more
        for issuer_id, entry in rows:
            if issuer_id in ids:
                by_issuer.setdefault(issuer_id, []).append(entry)
    return by_issuer


def new_revocation(
    certificate_id: int, serial: str, *, reason: RevocationReason | None, invalidity_date: datetime | None,
    now: datetime,
) -> dict[str, Any]:
    """The revocation row (its columns) of a certificate, with its CRL entry encoded once for
    all CRLs."""
    entry = RevokedEntry(int(serial, 16), now, reason, invalidity_date)
    return {
        "certificate_id": certificate_id, "revoked_at": now, "reason": reason.value if reason else None,
        "invalidity_date": invalidity_date, "crl_entry": encode_entry(entry),
    }


def _published_numbers(path: Path, ours: list[PublishedCrl]) -> dict[bytes, int]:
    """CRL numbers in the published file, by the issuing CA's key identifier.

    A number that would keep `ours` from being written counts only if one of our CAs signed
    that CRL: a forged CRL with a huge number must not stop us from ever replacing the
    file. (Lower numbers need no check: they never block a write.)
    """
    try:
        ders = load_crl_ders(path.read_bytes())
    except (OSError, InvalidInput):
        return {}
    mine = {crl.key_id: crl for crl in ours}
    numbers: dict[bytes, int] = {}
    for der in ders:
        crl = x509.load_der_x509_crl(der)
        key_id, number = authority_key_id(crl), crl_number(crl)
        if key_id is None or number is None:
            continue
        candidate = mine.get(key_id)
        if candidate is not None and number > candidate.number and not is_crl_signed_by(der, candidate.ca_certificate):
            logger.warning("%s holds a CRL that this CA did not sign: it will be replaced", path)
            continue
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
        published = _published_numbers(path, crls)
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
