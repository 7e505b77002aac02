"""Certificate revocation lists: RFC 5280 v2 CRLs with numbers, AKI and reason codes."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from cryptography import x509
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from mcp_pki.errors import InvalidInput
from mcp_pki.pki.keys import signature_hash_for
from mcp_pki.pki.profiles import Issuer


class RevocationReason(Enum):
    """RFC 5280 reasons, spelled as on the command line. No reason means unspecified."""

    KEY_COMPROMISE = "key-compromise"
    CA_COMPROMISE = "ca-compromise"
    AFFILIATION_CHANGED = "affiliation-changed"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation-of-operation"
    PRIVILEGE_WITHDRAWN = "privilege-withdrawn"

    @property
    def flag(self) -> x509.ReasonFlags:
        return x509.ReasonFlags[self.name.lower()]


REASON_NAMES = [reason.value for reason in RevocationReason]


def parse_reason(text: str | None) -> RevocationReason | None:
    if text is None or text == "unspecified":
        return None
    try:
        return RevocationReason(text.lower())
    except ValueError:
        raise InvalidInput(
            f"unknown revocation reason {text!r}: choose one of {', '.join(REASON_NAMES)}"
        ) from None


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime
    reason: RevocationReason | None
    invalidity_date: datetime | None = None


def build_crl(
    *,
    issuer: Issuer,
    number: int,
    this_update: datetime,
    next_update: datetime,
    entries: Iterable[RevokedEntry],
) -> x509.CertificateRevocationList:
    """Sign a CRL. Entries go to the builder's constructor in one list: adding them one by
    one copies the list each time, which is quadratic (minutes at 100,000 entries)."""
    ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.certificate.subject,
        last_update=this_update,
        next_update=next_update,
        extensions=[
            x509.Extension(
                ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            ),
            x509.Extension(ExtensionOID.CRL_NUMBER, False, x509.CRLNumber(number)),
        ],
        revoked_certificates=[_revoked(entry) for entry in entries],
    )
    return builder.sign(issuer.key, signature_hash_for(issuer.key))


def _revoked(entry: RevokedEntry) -> x509.RevokedCertificate:
    extensions = []
    # RFC 5280 5.3.1: reasonCode "unspecified" SHOULD be absent rather than encoded.
    if entry.reason is not None:
        extensions.append(
            x509.Extension(CRLEntryExtensionOID.CRL_REASON, False, x509.CRLReason(entry.reason.flag))
        )
    if entry.invalidity_date is not None:
        extensions.append(
            x509.Extension(CRLEntryExtensionOID.INVALIDITY_DATE, False, x509.InvalidityDate(entry.invalidity_date.astimezone(UTC).replace(tzinfo=None)))
        )
    return x509.RevokedCertificateBuilder(
        serial_number=entry.serial, revocation_date=entry.revoked_at, extensions=extensions
    ).build()


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def authority_key_id(crl: x509.CertificateRevocationList) -> bytes | None:
    try:
        return crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM bundle such as ``crl.pem``."""
    marker = b"-----BEGIN X509 CRL-----"
    crls = []
    for chunk in data.split(marker)[1:]:
        try:
            crls.append(x509.load_pem_x509_crl(marker + chunk.split(b"-----END X509 CRL-----")[0] + b"-----END X509 CRL-----\n"))
        except ValueError:
            raise InvalidInput("malformed CRL in bundle") from None
    return crls
