"""Certificate signing requests: what we accept from a requester, and what we ignore."""

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from mcp_pki.errors import InvalidInput
from mcp_pki.pki.keys import SigningKey, check_public_key_strength, signature_hash_for


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """The only things we take from a CSR: its public key, and its names for display."""

    public_key: CertificatePublicKeyTypes
    # Names the requester asked for; they are reported, never signed unless the operator
    # repeats them on the command line.
    requested_names: tuple[str, ...]


def load_csr(data: bytes) -> VerifiedRequest:
    """Parse a PEM or DER CSR, check its self-signature and its key strength."""
    try:
        csr = (
            x509.load_pem_x509_csr(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_csr(data)
        )
        public_key = csr.public_key()
    except (ValueError, TypeError):
        raise InvalidInput("malformed CSR: expected a PEM or DER PKCS#10 request") from None
    except UnsupportedAlgorithm:
        raise InvalidInput("CSR key type refused: use ECDSA, Ed25519 or RSA") from None
    except x509.UnsupportedGeneralNameType:  # pragma: no cover - exotic requests
        raise InvalidInput("CSR uses an unsupported name type") from None
    _refuse_weak_signature(csr)
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm):
        signature_ok = False
    if not signature_ok:
        raise InvalidInput("CSR signature does not verify: the request was altered or is not self-signed")
    check_public_key_strength(public_key)
    return VerifiedRequest(public_key=public_key, requested_names=_requested_names(csr))


def _refuse_weak_signature(csr: x509.CertificateSigningRequest) -> None:
    """cryptography does not verify SHA-1 or MD5 signatures at all; say so, rather than
    calling a weakly signed request "altered"."""
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return  # an unknown algorithm: the signature check below refuses it
    if isinstance(algorithm, hashes.SHA1):
        raise InvalidInput("CSR refused: SHA-1 signatures are refused; sign the request with SHA-256 or better")
    if isinstance(algorithm, hashes.MD5):
        raise InvalidInput("CSR refused: MD5 signatures are refused; sign the request with SHA-256 or better")


def _requested_names(csr: x509.CertificateSigningRequest) -> tuple[str, ...]:
    names = [f"CN:{cn.value!s}" for cn in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return tuple(names)
    for general_name in san:
        names.append(f"{type(general_name).__name__.removesuffix('Name')}:{general_name.value}")
    return tuple(names)


def build_request(key: SigningKey, name: str, *, email: str | None = None) -> x509.CertificateSigningRequest:
    """The CSR a teammate sends for a client certificate: CN = NAME and the email they want.

    The CA takes only the public key and, when the admin repeats them, the names: the request
    says who it is for, so the admin can check it before signing.
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    )
    if email:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    return builder.sign(key, signature_hash_for(key))
