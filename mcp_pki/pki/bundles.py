"""PKCS#12 bundles, for clients (browsers, Java, macOS keychains) that want one file."""

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import PrivateFormat, pkcs12

from mcp_pki.errors import InvalidInput
from mcp_pki.pki.keys import SigningKey

# OpenSSL 3's own default iteration count for PKCS#12 key derivation.
_KDF_ROUNDS = 200_000


def pkcs12_bytes(
    *,
    name: str,
    key: SigningKey,
    certificate: x509.Certificate,
    ca_certificates: list[x509.Certificate],
    passphrase: bytes,
    legacy: bool = False,
) -> bytes:
    """AES-256 with PBKDF2-SHA256 and a SHA-256 MAC by default; `legacy` gives 3DES and
    SHA-1, which older macOS keychains and Java releases still require."""
    if not passphrase:
        raise InvalidInput("a PKCS#12 bundle needs a passphrase")
    if legacy:
        builder = (
            PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(50_000)
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())
        )
    else:
        builder = (
            PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
        )
    return pkcs12.serialize_key_and_certificates(
        name.encode("utf-8"), key, certificate, ca_certificates, builder.build(passphrase)
    )


def load_private_key(data: bytes) -> SigningKey:
    """A leaf key the user holds (unencrypted PEM, as ``tls.key``), of a type we sign for."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, None)
    except (ValueError, TypeError):
        raise InvalidInput("not an unencrypted PEM private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise InvalidInput("unsupported private key type: use ECDSA, Ed25519 or RSA")
    return key
