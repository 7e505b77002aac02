"""Raw signatures with a CA key (CRLs spliced by hand and audit checkpoints use them), and
whether a certificate was issued by another."""

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from mcp_pki.pki.der import children
from mcp_pki.pki.keys import SigningKey, signature_hash_for

# Kept in step with keys.signature_hash_for, which picks the hash when signing.
_CURVE_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512,
}


def sign(key: SigningKey, data: bytes) -> bytes:
    """Sign `data` as the CA signs certificates: ECDSA with the curve's hash, RSA PKCS#1
    v1.5 with SHA-256, or Ed25519."""
    digest = signature_hash_for(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert digest is not None
        return key.sign(data, ec.ECDSA(digest))
    if isinstance(key, rsa.RSAPrivateKey):
        assert digest is not None
        return key.sign(data, padding.PKCS1v15(), digest)
    return key.sign(data)


def is_signed_by(certificate: x509.Certificate, signature: bytes, data: bytes) -> bool:
    """Whether `signature` over `data` was made by the key of `certificate`, as `sign` makes it."""
    public_key = certificate.public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            digest = _CURVE_HASHES.get(public_key.curve.name, hashes.SHA256)
            public_key.verify(signature, data, ec.ECDSA(digest()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def is_issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` (its name and key) directly issued `certificate`."""
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_crl_signed_by(crl_der: bytes, certificate: x509.Certificate) -> bool:
    """Whether the CRL is signed by the CA of `certificate` (and names it as its issuer)."""
    crl = x509.load_der_x509_crl(crl_der)
    if crl.issuer != certificate.subject:
        return False
    public_key = certificate.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        return False
    # The signature over the TBS bytes as they are, made as `sign` makes it: cryptography's
    # is_signature_valid re-encodes every entry first, a third of a second at 100,000.
    return is_signed_by(certificate, crl.signature, children(crl_der)[0])
