"""Reading certificates back: the facts that `show`, `list` and the inventory need."""

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mcp_pki.errors import InvalidInput, InventoryError
from mcp_pki.pki.keys import describe_public_key
from mcp_pki.pki.profiles import serial_hex

_USAGE_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    serial: str
    subject: str
    issuer: str
    common_name: str | None
    roles: tuple[str, ...]
    sans: tuple[str, ...]
    extended_key_usage: tuple[str, ...]
    is_ca: bool
    key_type: str
    not_before: datetime
    not_after: datetime
    sha256_fingerprint: str


def facts(certificate: x509.Certificate) -> CertificateFacts:
    return CertificateFacts(
        serial=serial_hex(certificate.serial_number),
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        common_name=_first(certificate.subject, NameOID.COMMON_NAME),
        roles=tuple(
            str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        ),
        sans=_san_labels(certificate),
        extended_key_usage=_usages(certificate),
        is_ca=_is_ca(certificate),
        key_type=describe_public_key(certificate.public_key()),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        sha256_fingerprint=certificate.fingerprint(hashes.SHA256()).hex(":").upper(),
    )


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, or one DER certificate."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise InvalidInput("not a certificate: expected PEM or DER X.509") from None


def from_pem(text: str) -> x509.Certificate:
    """A certificate as the inventory stores it (PEM text); a row that is not one is a
    corrupt inventory, reported as such."""
    try:
        return x509.load_pem_x509_certificate(text.encode("ascii"))
    except ValueError:  # UnicodeEncodeError included
        raise InventoryError(
            "the inventory is corrupt: a stored certificate is not a PEM certificate; restore a backup"
        ) from None


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attributes = name.get_attributes_for_oid(oid)
    return str(attributes[0].value) if attributes else None


def _san_labels(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    labels: dict[type, str] = {
        x509.DNSName: "DNS", x509.IPAddress: "IP",
        x509.UniformResourceIdentifier: "URI", x509.RFC822Name: "email",
    }
    return tuple(f"{labels.get(type(n), type(n).__name__)}:{n.value}" for n in san)


def _usages(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(_USAGE_NAMES.get(oid, oid.dotted_string) for oid in eku)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
