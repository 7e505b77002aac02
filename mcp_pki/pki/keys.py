"""Key types we generate and accept, and how CA keys are kept encrypted at rest."""

import os
from enum import Enum

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CBC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.padding import PKCS7

from mcp_pki.errors import InvalidInput, PassphraseError, WrongPassphrase
from mcp_pki.pki import der

# RSA below 2048 bits and curves below P-256 are refused everywhere, including in CSRs.
_MIN_RSA_BITS = 2048
_ACCEPTED_CURVES = {"secp256r1", "secp384r1", "secp521r1"}


# The private keys we create and sign with.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class KeyType(Enum):
    P256 = "p256"
    P384 = "p384"
    ED25519 = "ed25519"
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa")


KEY_TYPE_NAMES = [key_type.value for key_type in KeyType]


def parse_key_type(text: str) -> KeyType:
    try:
        return KeyType(text.lower())
    except ValueError:
        raise InvalidInput(
            f"unknown key type {text!r}: choose one of {', '.join(KEY_TYPE_NAMES)}"
        ) from None


def generate_private_key(key_type: KeyType) -> SigningKey:
    if key_type is KeyType.P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.P384:
        return ec.generate_private_key(ec.SECP384R1())
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type.value[3:]))


def describe_public_key(key: CertificatePublicKeyTypes) -> str:
    """A short, stable label such as ``p256``, ``ed25519`` or ``rsa3072``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}.get(
            key.curve.name, key.curve.name
        )
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(key).__name__


def public_key_der(key: CertificatePublicKeyTypes) -> bytes:
    """DER SubjectPublicKeyInfo: the form in which two public keys are compared."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def same_public_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    """Whether two public keys are the same key."""
    return public_key_der(a) == public_key_der(b)


def check_public_key_strength(key: CertificatePublicKeyTypes) -> None:
    """Refuse keys weaker than our profiles allow (from CSRs, which we do not generate)."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise InvalidInput(f"RSA key of {key.key_size} bits refused: at least 2048 required")
        if key.public_numbers().e != 65537:
            raise InvalidInput("RSA key refused: public exponent must be 65537")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _ACCEPTED_CURVES:
            raise InvalidInput(f"EC key on curve {key.curve.name} refused: use P-256 or P-384")
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise InvalidInput(f"key type {type(key).__name__} refused: use ECDSA, Ed25519 or RSA")


def signature_hash_for(key: SigningKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The digest a CA key signs with: matched to the curve, none for Ed25519."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name == "secp384r1":
            return hashes.SHA384()
        if key.curve.name == "secp521r1":
            return hashes.SHA512()
    return hashes.SHA256()


# scrypt as OpenSSL's `pkcs8 -scrypt` uses it: 16 MiB and ~30 ms per unlock, which makes
# guessing a CA passphrase memory-hard. cryptography's BestAvailableEncryption for PKCS#8
# would use PBKDF2 with only 2,048 iterations and cannot be tuned.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_PBES2, _SCRYPT, _AES256_CBC = "1.2.840.113549.1.5.13", "1.3.6.1.4.1.11591.4.11", "2.16.840.1.101.3.4.1.42"


def encrypt_private_key(key: SigningKey, passphrase: bytes | None) -> str:
    """PKCS#8 PEM: PBES2 with scrypt and AES-256-CBC (RFC 8018, RFC 7914), which OpenSSL
    and cryptography both read; unencrypted only for --no-passphrase."""
    plain = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    if not passphrase:
        return der.pem_encode(plain, "PRIVATE KEY").decode("ascii")
    salt, iv = os.urandom(16), os.urandom(16)
    secret = Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P).derive(passphrase)
    padder = PKCS7(128).padder()
    encryptor = Cipher(AES(secret), CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    scrypt_params = der.sequence(
        der.octets(salt), der.integer(_SCRYPT_N), der.integer(_SCRYPT_R), der.integer(_SCRYPT_P)
    )
    algorithm = der.sequence(
        der.oid(_PBES2),
        der.sequence(
            der.sequence(der.oid(_SCRYPT), scrypt_params),
            der.sequence(der.oid(_AES256_CBC), der.octets(iv)),
        ),
    )
    return der.pem_encode(der.sequence(algorithm, der.octets(ciphertext)), "ENCRYPTED PRIVATE KEY").decode("ascii")


def private_key_pem(key: SigningKey) -> bytes:
    """Unencrypted PKCS#8 PEM, for the ``tls.key`` file that servers and clients load."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def decrypt_private_key(pem: str, passphrase: bytes | None) -> SigningKey:
    encrypted = "ENCRYPTED PRIVATE KEY" in pem
    if encrypted and not passphrase:
        raise PassphraseError(
            "the CA key is encrypted: set MCP_PKI_PASSPHRASE, use --passphrase-file, "
            "or run on a terminal to be prompted"
        )
    try:
        key = serialization.load_pem_private_key(
            pem.encode("ascii"), passphrase if encrypted else None
        )
    except ValueError:
        raise WrongPassphrase("wrong CA passphrase") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise PassphraseError("the stored CA key has an unsupported type")
    return key
