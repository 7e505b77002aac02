"""What both long-running MCP programs need from TLS: contexts, CRLs and peer identity.

The bridge (host side) presents a client certificate and checks its own against the CRL; the
gateway (server side) requires one from every peer and checks each against the CRL on every
request. Both read certificates, keys and CRLs the same way, believe a CRL only when a CA
they trust signed it, and name a certificate's holder the same way, so that the gateway's
logs and the bridge's start-up lines agree.
"""

import hashlib
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from mcp_pki.errors import InvalidInput, PkiError
from mcp_pki.pki.crl import RevocationReason, load_crls
from mcp_pki.pki.profiles import serial_hex
from mcp_pki.pki.signatures import is_issued_by

# OpenSSL cipher string for TLS 1.2: forward secret AEAD suites only (TLS 1.3 suites are all
# strong and not configured by this string).
STRONG_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!RC4:!3DES"


class TlsSetupError(PkiError):
    """A certificate, key, CA or CRL file that a TLS context cannot be built from."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate names: what logs, policy and forwarded headers say about a peer."""

    serial: str
    name: str  # the subject CN (`issue client NAME`), else the whole subject
    roles: tuple[str, ...]  # the subject OU values (`issue client --role`)
    subject: str  # RFC 4514
    issuer: str  # RFC 4514
    fingerprint: str  # SHA-256 of the DER, lowercase hex

    @property
    def label(self) -> str:
        return f"{self.name} (serial {self.serial})"


def identity_of(certificate: x509.Certificate) -> Identity:
    return Identity(
        serial=serial_hex(certificate.serial_number),
        name=common_name(certificate),
        roles=tuple(str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)),
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
    )


def identity_of_der(der: bytes) -> tuple[x509.Certificate, Identity]:
    certificate = x509.load_der_x509_certificate(der)
    return certificate, identity_of(certificate)


def common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.subject.rfc4514_string()


def extended_key_usages(certificate: x509.Certificate) -> list[x509.ObjectIdentifier] | None:
    try:
        return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    """Whether `ca` issued `crl`: same name and a valid signature. A CRL of another CA with
    the same name must not decide about our certificates."""
    if crl.issuer != ca.subject:
        return False
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, InvalidSignature):
        return False


def revocation_reason(entry: x509.RevokedCertificate) -> str:
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        return RevocationReason[flag.name.upper()].value
    except (x509.ExtensionNotFound, KeyError):
        return "unspecified"


@dataclass(frozen=True, slots=True)
class RevocationSet:
    """The CRLs of one ``crl.pem``, each verified against a CA we trust, as a lookup table.

    Keyed by (issuer DN, serial) rather than serial alone: serials are unique per issuer only.
    """

    crls: tuple[x509.CertificateRevocationList, ...]
    revoked: frozenset[tuple[str, int]]
    next_update: datetime | None  # the earliest nextUpdate: the set is stale after it
    pem: bytes  # what a TLS context loads

    def is_revoked(self, issuer: str, serial: int) -> bool:
        return (issuer, serial) in self.revoked

    def is_stale(self, now: datetime) -> bool:
        return self.next_update is not None and self.next_update <= now

    def covers(self, issuer: str) -> bool:
        return any(crl.issuer.rfc4514_string() == issuer for crl in self.crls)


def verified_revocations(data: bytes, cas: Iterable[x509.Certificate]) -> RevocationSet:
    """Parse a CRL bundle and keep it only if every CRL in it is signed by one of `cas`.

    One CRL that does not verify rejects the whole file: a half-believed bundle would leave
    a CA's revocations silently unchecked.
    """
    crls = load_crls(data)
    if not crls:
        raise InvalidInput("no CRL in the file")
    known = list(cas)
    revoked: set[tuple[str, int]] = set()
    for crl in crls:
        issuer = crl.issuer.rfc4514_string()
        if not any(crl_signed_by(crl, ca) for ca in known):
            raise InvalidInput(f"the CRL of {issuer} is not signed by a CA we trust")
        revoked.update((issuer, entry.serial_number) for entry in crl)
    updates = [crl.next_update_utc for crl in crls if crl.next_update_utc is not None]
    pem = b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)
    return RevocationSet(tuple(crls), frozenset(revoked), min(updates) if updates else None, pem)


def client_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """Verify the server against our CA only (not the system store), present our chain."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"cannot use the CA file {ca_file}: {ssl_reason(exc)}") from None
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"cannot load {cert_file} with {key_file}: {ssl_reason(exc)}") from None
    return context


def server_context(cert_file: str, key_file: str, ca_pem: bytes) -> ssl.SSLContext:
    """A server context that requires a client certificate chaining to `ca_pem`.

    TLS 1.2 at least, forward-secret AEAD ciphers only. OpenSSL checks a client chain for
    the ``ssl_client`` purpose, so a certificate without clientAuth (a server certificate)
    fails the handshake. CRLs are the caller's: they change while the context serves.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(STRONG_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"cannot load {cert_file} with {key_file}: {ssl_reason(exc)}") from None
    try:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise TlsSetupError(f"cannot use the CA certificates: {ssl_reason(exc)}") from None
    return context


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def certificates_signed_by_any(
    candidates: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """The CA certificates among `candidates` whose signature one of `roots` made: the
    intermediates of a chain file whose CRLs we may then believe."""
    found = []
    for candidate in candidates:
        if not is_ca(candidate):
            continue
        if any(is_issued_by(candidate, root) for root in roots):
            found.append(candidate)
    return found


def ssl_reason(exc: BaseException) -> str:
    """OpenSSL's short reason (``TLSV13_ALERT_CERTIFICATE_REQUIRED``) in lower case words,
    else the OS error text."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
