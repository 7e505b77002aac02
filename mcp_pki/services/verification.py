"""``verify``: would a relying party that trusts our root and loads our CRLs accept this?"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from sqlalchemy import Engine, select

from mcp_pki.errors import PkiError
from mcp_pki.pki.crl import RevocationReason, crl_number
from mcp_pki.pki.inspect import CertificateFacts, facts, from_pem, load_pem_certificates
from mcp_pki.pki.profiles import serial_hex
from mcp_pki.store.db import read_session
from mcp_pki.store.models import Authority, Certificate, CrlPublication


class VerificationFailed(PkiError):
    """The certificate is not acceptable; the message says why."""


@dataclass(frozen=True, slots=True)
class Verdict:
    leaf: CertificateFacts
    chain: list[str]  # issuer subjects up to the root
    crl_numbers: list[int]


@dataclass(frozen=True, slots=True)
class _Ca:
    authority_id: int
    parent_id: int | None
    certificate: x509.Certificate
    crl: x509.CertificateRevocationList | None


def verify_certificate(engine: Engine, data: bytes, *, now: datetime) -> Verdict:
    """Chain, validity and revocation of the first certificate in `data`."""
    leaf = load_pem_certificates(data)[0]
    cas = _load_cas(engine)
    own = next((ca for ca in cas.values() if ca.certificate == leaf), None)  # one of our CAs
    issuer = (cas[own.parent_id] if own.parent_id else None) if own else _find_issuer(leaf, cas.values())
    if issuer is None and own is None:
        raise VerificationFailed("unknown issuer: not signed by a CA of this inventory")
    _check_period(leaf, "CA certificate" if own else "certificate", now)
    chain: list[str] = []
    crl_numbers: list[int] = []
    subject, current = leaf, issuer
    while current is not None:
        _check_revocation(subject, current, now, crl_numbers)
        chain.append(current.certificate.subject.rfc4514_string())
        _check_period(current.certificate, f"CA {chain[-1]}", now)
        subject, current = current.certificate, cas[current.parent_id] if current.parent_id else None
    if own is not None:
        return Verdict(facts(leaf), chain, crl_numbers)
    assert issuer is not None
    serial = serial_hex(leaf.serial_number)
    with read_session(engine) as session, session.begin():
        stored = session.scalar(
            select(Certificate.certificate_pem).where(
                Certificate.serial == serial, Certificate.issuer_id == issuer.authority_id
            )
        )
    if stored is None or from_pem(stored) != leaf:
        raise VerificationFailed(f"serial {serial} is signed by our CA but missing from the inventory")
    return Verdict(facts(leaf), chain, crl_numbers)


def _load_cas(engine: Engine) -> dict[int, _Ca]:
    with read_session(engine) as session, session.begin():
        authorities = list(session.scalars(select(Authority)))
        crls = {
            authority_id: pem
            for authority_id, pem in session.execute(
                select(CrlPublication.authority_id, CrlPublication.crl_pem)
                .where(CrlPublication.crl_pem != "")
                .order_by(CrlPublication.number)
            )
        }
    return {
        a.id: _Ca(
            a.id, a.parent_id, from_pem(a.certificate_pem),
            x509.load_pem_x509_crl(crls[a.id].encode("ascii")) if a.id in crls else None,
        )
        for a in authorities
    }


def _find_issuer(certificate: x509.Certificate, cas: Iterable[_Ca]) -> _Ca | None:
    for ca in cas:
        if ca.certificate.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(ca.certificate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def _check_period(certificate: x509.Certificate, what: str, now: datetime) -> None:
    if certificate.not_valid_before_utc > now:
        raise VerificationFailed(f"{what} not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if certificate.not_valid_after_utc <= now:
        raise VerificationFailed(f"{what} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def _check_revocation(certificate: x509.Certificate, issuer: _Ca, now: datetime, numbers: list[int]) -> None:
    crl = issuer.crl
    name = issuer.certificate.subject.rfc4514_string()
    if crl is None:
        raise VerificationFailed(f"revocation unknown: {name} has no CRL (run 'mcp-pki crl')")
    if not crl.is_signature_valid(issuer.certificate.public_key()):  # type: ignore[arg-type]
        raise VerificationFailed(f"revocation unknown: the stored CRL of {name} has a bad signature")
    if crl.next_update_utc is None or crl.next_update_utc <= now:
        raise VerificationFailed(f"revocation unknown: the CRL of {name} has expired (run 'mcp-pki crl')")
    numbers.append(crl_number(crl) or 0)
    entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
    if entry is None:
        return
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        reason = RevocationReason[flag.name.upper()].value
    except (x509.ExtensionNotFound, KeyError):
        reason = "unspecified"
    raise VerificationFailed(f"revoked ({reason}) on {entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC")
