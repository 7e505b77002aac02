"""Certificate profiles: what a root, an issuing CA, a server and a client certificate hold.

Every extension is chosen here from the profile and never copied from a request, so a CSR
or an old certificate cannot smuggle in CA rights, extra purposes or names.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mcp_pki.pki.keys import SigningKey, signature_hash_for
from mcp_pki.pki.names import SubjectAltNames

# Issued certificates start a little in the past so that a relying party whose clock is
# a few minutes behind does not reject a certificate minted a moment ago.
BACKDATE = timedelta(minutes=5)

ROOT_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=90)


class CertificateKind(Enum):
    SERVER = "server"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class Issuer:
    """A CA that can sign: its certificate and its decrypted key."""

    certificate: x509.Certificate
    key: SigningKey


@dataclass(frozen=True, slots=True)
class Validity:
    not_before: datetime
    not_after: datetime
    # Why `not_after` is earlier than asked, for a warning; None when it is not.
    capped_by: str | None = None


def leaf_validity(
    *, now: datetime, requested: timedelta, policy_max: timedelta, issuer_not_after: datetime
) -> Validity:
    """The validity window of a new leaf: never beyond policy nor beyond its issuer."""
    not_after, capped_by = now + requested, None
    if requested > policy_max:
        not_after, capped_by = now + policy_max, "the policy maximum"
    if not_after > issuer_not_after:
        not_after, capped_by = issuer_not_after, "the issuing CA's expiry"
    return Validity(now - BACKDATE, not_after, capped_by)


def ca_name(common_name: str, org: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def leaf_name(common_name: str, org: str | None, roles: tuple[str, ...] = ()) -> x509.Name:
    """CN is the server's or teammate's NAME; each role is one OU, which servers read."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role) for role in roles]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name([x509.RelativeDistinguishedName([a]) for a in attributes])


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )


def build_root_ca(
    *,
    key: SigningKey,
    subject: x509.Name,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    name_constraints: x509.NameConstraints | None = None,
) -> x509.Certificate:
    """A self-signed root. It carries name constraints only when it signs leaves itself."""
    builder = _ca_builder(
        subject=subject, issuer_name=subject, public_key=key.public_key(), serial=serial,
        not_before=not_before, not_after=not_after, path_length=None, name_constraints=name_constraints,
    )
    return builder.sign(key, signature_hash_for(key))


def build_issuing_ca(
    *,
    public_key: CertificatePublicKeyTypes,
    subject: x509.Name,
    issuer: Issuer,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    name_constraints: x509.NameConstraints | None = None,
) -> x509.Certificate:
    """The intermediate that signs leaves: path length 0, so it can create no further CAs."""
    builder = _ca_builder(
        subject=subject, issuer_name=issuer.certificate.subject, public_key=public_key, serial=serial,
        not_before=not_before, not_after=not_after, path_length=0, name_constraints=name_constraints,
    ).add_extension(_authority_key_identifier(issuer.certificate), critical=False)
    return builder.sign(issuer.key, signature_hash_for(issuer.key))


def _ca_builder(
    *,
    subject: x509.Name,
    issuer_name: x509.Name,
    public_key: CertificatePublicKeyTypes,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    path_length: int | None,
    name_constraints: x509.NameConstraints | None,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # Critical, as RFC 5280 requires for CAs and Python 3.13's strict mode checks.
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if name_constraints is not None:
        # RFC 5280 4.2.1.10: conforming CAs MUST mark name constraints critical.
        builder = builder.add_extension(name_constraints, critical=True)
    return builder


def build_leaf(
    *,
    kind: CertificateKind,
    public_key: CertificatePublicKeyTypes,
    subject: x509.Name,
    sans: SubjectAltNames,
    issuer: Issuer,
    serial: int,
    validity: Validity,
) -> x509.Certificate:
    """A server or client certificate with exactly one extended key usage."""
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind is CertificateKind.SERVER else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(issuer.certificate), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans.general_names()), critical=False)
    return builder.sign(issuer.key, signature_hash_for(issuer.key))


def _leaf_key_usage(public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
    # keyEncipherment only makes sense for RSA key transport; on EC and Ed25519 keys it is
    # an error that pkilint reports (and that easy-rsa and mkcert make).
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )


def _authority_key_identifier(issuer_certificate: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def new_serial() -> int:
    """159 random bits, positive, at most 20 octets (RFC 5280 4.1.2.2, CA/B BR 7.1)."""
    return x509.random_serial_number()


def serial_hex(serial: int) -> str:
    return format(serial, "x")
