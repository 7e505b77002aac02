"""The CRL encoder in mcp_pki.pki.crl, byte for byte against cryptography's own builder."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from mcp_pki.pki import keys, profiles
from mcp_pki.pki.crl import RevocationReason, RevokedEntry, build_crl, encode_entry, load_crls
from mcp_pki.pki.der import pem_encode

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _issuer(key_type: keys.KeyType) -> profiles.Issuer:
    key = keys.generate_private_key(key_type)
    certificate = profiles.build_root_ca(
        key=key, subject=profiles.ca_name("CRL Test", "Example"), serial=profiles.new_serial(),
        not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365),
    )
    return profiles.Issuer(certificate, key)


def _reference(issuer: profiles.Issuer, entries: list[RevokedEntry], number: int) -> x509.CertificateRevocationList:
    """The same CRL from cryptography's builder, the slow way."""
    def extensions(entry: RevokedEntry) -> list[x509.Extension[x509.ExtensionType]]:
        found: list[x509.Extension[x509.ExtensionType]] = []
        if entry.reason is not None:
            flag = x509.ReasonFlags[entry.reason.name.lower()]
            found.append(x509.Extension(CRLEntryExtensionOID.CRL_REASON, False, x509.CRLReason(flag)))
        if entry.invalidity_date is not None:
            date = x509.InvalidityDate(entry.invalidity_date.replace(tzinfo=None))
            found.append(x509.Extension(CRLEntryExtensionOID.INVALIDITY_DATE, False, date))
        return found

    ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.CertificateRevocationListBuilder(
        issuer_name=issuer.certificate.subject, last_update=NOW, next_update=NOW + timedelta(days=7),
        extensions=[
            x509.Extension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False,
                           x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)),
            x509.Extension(ExtensionOID.CRL_NUMBER, False, x509.CRLNumber(number)),
        ],
        revoked_certificates=[
            x509.RevokedCertificateBuilder(e.serial, e.revoked_at, extensions(e)).build() for e in entries
        ],
    ).sign(issuer.key, keys.signature_hash_for(issuer.key))


def _entries(count: int, seed: int) -> list[RevokedEntry]:
    rng = random.Random(seed)
    reasons = [None, *RevocationReason]
    entries = []
    for index in range(count):
        # Serials of every length from 1 to 20 octets, including lengths whose top bit is set
        # (a leading zero octet keeps them positive) and the 159-bit ones we issue.
        bits = rng.choice([1, 7, 8, 9, 16, 63, 64, 65, 128, 152, 159])
        serial = rng.getrandbits(bits) | (1 << (bits - 1))
        revoked_at = NOW - timedelta(seconds=rng.randrange(10**8))
        invalidity = revoked_at - timedelta(hours=rng.randrange(1, 100)) if index % 3 == 0 else None
        entries.append(RevokedEntry(serial, revoked_at, reasons[index % len(reasons)], invalidity))
    # GeneralizedTime from 2050 on (RFC 5280 4.1.2.5).
    entries.append(RevokedEntry(12345, datetime(2051, 3, 4, 5, 6, 7, tzinfo=UTC), None, None))
    return entries


@pytest.mark.parametrize("key_type", [keys.KeyType.P256, keys.KeyType.P384, keys.KeyType.ED25519, keys.KeyType.RSA2048])
@pytest.mark.parametrize("count", [0, 1, 300])
def test_tbs_bytes_equal_cryptographys_builder(key_type: keys.KeyType, count: int) -> None:
    issuer = _issuer(key_type)
    entries = _entries(count, seed=count) if count else []
    der = build_crl(issuer=issuer, number=42, this_update=NOW, next_update=NOW + timedelta(days=7),
                    entries=[encode_entry(e) for e in entries])
    ours = x509.load_der_x509_crl(der)
    assert ours.tbs_certlist_bytes == _reference(issuer, entries, 42).tbs_certlist_bytes
    assert ours.is_signature_valid(issuer.certificate.public_key())  # type: ignore[arg-type]
    assert der == ours.public_bytes(Encoding.DER)


def test_pem_encoding_round_trips_through_the_bundle_reader() -> None:
    issuer = _issuer(keys.KeyType.P256)
    ders = [
        build_crl(issuer=issuer, number=n, this_update=NOW, next_update=NOW + timedelta(days=7),
                  entries=[encode_entry(e) for e in _entries(n, seed=n)])
        for n in (1, 2, 50)
    ]
    bundle = b"".join(pem_encode(d) for d in ders)
    assert all(len(line) <= 64 for line in bundle.splitlines())  # RFC 7468
    assert [c.public_bytes(Encoding.DER) for c in load_crls(bundle)] == ders
