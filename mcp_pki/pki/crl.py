"""Certificate revocation lists: RFC 5280 v2 CRLs with numbers, AKI and reason codes."""

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from mcp_pki.errors import InvalidInput
from mcp_pki.pki.der import children, der
from mcp_pki.pki.keys import signature_hash_for
from mcp_pki.pki.profiles import Issuer
from mcp_pki.pki.signatures import sign


class RevocationReason(Enum):
    """RFC 5280 reasons, spelled as on the command line. No reason means unspecified."""

    KEY_COMPROMISE = "key-compromise"
    CA_COMPROMISE = "ca-compromise"
    AFFILIATION_CHANGED = "affiliation-changed"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation-of-operation"
    PRIVILEGE_WITHDRAWN = "privilege-withdrawn"


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
    entries: Sequence[bytes],
) -> bytes:
    """Sign a v2 CRL with AKI and CRL number; returns its DER encoding.

    `entries` are revoked entries as `encode_entry` returns them, encoded once when the
    certificate is revoked. cryptography would build each entry as a Python object and
    re-encode the whole list at every publication (seconds at 100,000 entries, and
    `add_revoked_certificate` is quadratic on top). So cryptography builds the CRL without
    entries (version, algorithm, issuer, times and extensions exactly as it encodes them),
    the stored entries are spliced into that TBSCertList, and the result is signed with
    the CA key. Tests compare the bytes with cryptography's own builder.
    """
    ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    empty = x509.CertificateRevocationListBuilder(
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
    ).sign(issuer.key, signature_hash_for(issuer.key))
    if not entries:
        return empty.public_bytes(serialization.Encoding.DER)
    # TBSCertList: version, signature, issuer, thisUpdate, nextUpdate, [revoked], [0] extensions
    fields = children(empty.tbs_certlist_bytes)
    revoked = der(0x30, b"".join(entries))
    tbs = der(0x30, b"".join(fields[:5]) + revoked + b"".join(fields[5:]))
    outer = children(empty.public_bytes(serialization.Encoding.DER))
    return der(0x30, tbs + outer[1] + der(0x03, b"\x00" + sign(issuer.key, tbs)))


_REASON_CODES = {
    RevocationReason.KEY_COMPROMISE: 1, RevocationReason.CA_COMPROMISE: 2,
    RevocationReason.AFFILIATION_CHANGED: 3, RevocationReason.SUPERSEDED: 4,
    RevocationReason.CESSATION_OF_OPERATION: 5, RevocationReason.PRIVILEGE_WITHDRAWN: 9,
}
# Extension ::= SEQUENCE { extnID, extnValue OCTET STRING (ENUMERATED code) }, non-critical.
_REASON_EXTENSIONS = {
    reason: der(0x30, der(0x06, bytes.fromhex("551d15")) + der(0x04, der(0x0A, bytes((code,)))))
    for reason, code in _REASON_CODES.items()
}
_INVALIDITY_DATE_OID = der(0x06, bytes.fromhex("551d18"))


def encode_entry(entry: RevokedEntry) -> bytes:
    """The DER of one revokedCertificates element (RFC 5280 5.1.2.6)."""
    serial = entry.serial.to_bytes(entry.serial.bit_length() // 8 + 1, "big")  # room for the sign bit
    extensions = b""
    if entry.reason is not None:
        extensions = _REASON_EXTENSIONS[entry.reason]
    if entry.invalidity_date is not None:
        extensions += der(0x30, _INVALIDITY_DATE_OID + der(0x04, _generalized_time(entry.invalidity_date)))
    body = der(0x02, serial) + _time(entry.revoked_at)
    if extensions:
        body += der(0x30, extensions)
    return der(0x30, body)


def _time(moment: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050."""
    m = moment.astimezone(UTC)
    if m.year >= 2050:
        return _generalized_time(m)
    text = f"{m.year % 100:02d}{m.month:02d}{m.day:02d}{m.hour:02d}{m.minute:02d}{m.second:02d}Z"
    return b"\x17\x0d" + text.encode("ascii")


def _generalized_time(moment: datetime) -> bytes:
    m = moment.astimezone(UTC)
    text = f"{m.year:04d}{m.month:02d}{m.day:02d}{m.hour:02d}{m.minute:02d}{m.second:02d}Z"
    return b"\x18\x0f" + text.encode("ascii")


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
    """Every CRL in a PEM bundle such as ``crl.pem``.

    Decoded here and parsed as DER, which cryptography parses lazily: reading the number
    of a 100,000-entry CRL then costs milliseconds, not a full parse.
    """
    return [x509.load_der_x509_crl(der) for der in load_crl_ders(data)]


def load_crl_ders(data: bytes) -> list[bytes]:
    """The DER of every CRL in a PEM bundle, each checked to parse. Keep the DER where the
    signed bytes are needed: cryptography re-encodes a CRL to hand them out."""
    ders = []
    for chunk in data.split(b"-----BEGIN X509 CRL-----")[1:]:
        body, end, _ = chunk.partition(b"-----END X509 CRL-----")
        try:
            if not end:
                raise ValueError("unterminated")
            der = base64.b64decode(body, validate=False)
            x509.load_der_x509_crl(der)
        except (ValueError, binascii.Error):
            raise InvalidInput("malformed CRL in bundle") from None
        ders.append(der)
    return ders


def revoked_entries(crl_der: bytes) -> list[bytes]:
    """The DER of each revokedCertificates element, as `encode_entry` makes them, without
    building an object per entry (a 100,000-entry CRL splits in milliseconds)."""
    sequence = revoked_sequence(crl_der)
    return _elements(sequence) if sequence else []


def revoked_sequence(crl_der: bytes) -> bytes:
    """The encoded revokedCertificates SEQUENCE of a CRL; empty when it lists none."""
    fields = children(children(crl_der)[0])
    # version, signature, issuer, thisUpdate, [nextUpdate], [revokedCertificates], [0] extensions
    for item in fields[4:]:
        if item[0] == 0x30:
            return item
    return b""


def _elements(sequence: bytes) -> list[bytes]:
    """The elements inside one SEQUENCE: `der.children`, unrolled for 100,000 entries."""
    found: list[bytes] = []
    append = found.append
    first = sequence[1]
    at = 2 if first < 0x80 else 2 + (first & 0x7F)
    end = len(sequence)
    while at < end:
        length = sequence[at + 1]
        if length < 0x80:
            stop = at + 2 + length
        else:
            size = length & 0x7F
            stop = at + 2 + size + int.from_bytes(sequence[at + 2 : at + 2 + size], "big")
        append(sequence[at:stop])
        at = stop
    return found


def entry_serial(entry: bytes) -> int:
    """The serial number of one encoded revokedCertificates element."""
    return int.from_bytes(_integer_content(children(entry)[0]), "big")


def _integer_content(element: bytes) -> bytes:
    length = element[1]
    if length < 0x80:
        return element[2 : 2 + length]
    size = length & 0x7F
    return element[2 + size :]
