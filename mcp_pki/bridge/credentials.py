"""The client certificate the bridge presents, and the checks it passes before any traffic.

A bad certificate is cheaper to explain here than after a server has closed the connection
without saying why (TLS 1.3 servers refuse a client certificate after the handshake).
"""

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mcp_pki.bridge import BridgeError
from mcp_pki.errors import InvalidInput, InventoryError
from mcp_pki.mtls import common_name, crl_signed_by, extended_key_usages, revocation_reason
from mcp_pki.pki.bundles import load_private_key
from mcp_pki.pki.crl import load_crls
from mcp_pki.pki.inspect import from_pem, load_pem_certificates
from mcp_pki.pki.profiles import serial_hex
from mcp_pki.services.home import Home

CERT_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "ca.crt"  # as `issue` names them


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """The files the TLS context loads: our chain and key, and the only CA we trust."""

    cert_file: Path
    key_file: Path
    ca_file: Path


@dataclass(frozen=True, slots=True)
class CheckedCertificate:
    """What the start-up lines say about the certificate."""

    common_name: str
    serial: str
    not_after: datetime
    revocation_unchecked: str | None = None  # why no CRL could say whether it is revoked

    @property
    def label(self) -> str:
        return f"{self.common_name} (serial {self.serial})"


def from_files(home: Home, cert_file: Path, key_file: Path, ca_file: Path | None) -> ClientCredentials:
    """``--cert/--key``: files from anywhere, e.g. a bundle a teammate received."""
    return ClientCredentials(cert_file, key_file, ca_file or _default_ca_file(home, cert_file))


def from_inventory(home: Home, ref: str, ca_file: Path | None, *, now: datetime) -> ClientCredentials:
    """``--as REF``: the files `issue` wrote for that certificate, found through the inventory.

    Reads the inventory only (no CA passphrase). The inventory knows a revocation before any
    CRL is republished, so it is asked first.
    """
    from mcp_pki.services.inventory import resolve_ref
    from mcp_pki.store.db import open_inventory, read_session

    try:
        engine = open_inventory(home.db_url)
    except InventoryError as exc:
        raise BridgeError(f"--as needs the inventory ({exc}): pass --cert FILE --key FILE instead") from None
    try:
        with read_session(engine) as session, session.begin():
            row = resolve_ref(session, ref, now=now)
            name, serial, kind, folder = row.name, row.serial, row.kind, row.files_dir
            stored = from_pem(row.certificate_pem)
            revoked = (row.revocation.revoked_at, row.revocation.reason) if row.revocation else None
    finally:
        engine.dispose()
    label = f"{name} (serial {serial})"
    if kind != "client":
        raise BridgeError(
            f"{label} is a {kind} certificate: the bridge presents a client certificate "
            "(mcp-pki issue client NAME)"
        )
    if revoked is not None:
        raise BridgeError(f"the certificate {label} was revoked on {revoked[0]:%Y-%m-%d %H:%M} UTC "
                          f"({revoked[1] or 'unspecified'})")
    if folder is None:
        raise BridgeError(f"the inventory does not know where the files of {label} are: "
                          "pass --cert FILE --key FILE")
    cert_file, key_file = Path(folder) / CERT_FILE, Path(folder) / KEY_FILE
    for path in (cert_file, key_file):
        if not path.is_file():
            raise BridgeError(f"{path} is missing (the files of {label}): pass --cert FILE --key FILE")
    chain = _read_chain(cert_file)
    if chain[0] != stored:
        raise BridgeError(f"{cert_file} holds another certificate than {label} (replaced since): "
                          "pass --cert FILE --key FILE")
    return ClientCredentials(cert_file, key_file, ca_file or _default_ca_file(home, cert_file))


def check(credentials: ClientCredentials, crl_file: Path, *, now: datetime) -> CheckedCertificate:
    """Refuse, one clear sentence each, what a server would refuse with no explanation."""
    chain = _read_chain(credentials.cert_file)
    leaf = chain[0]
    try:
        key = load_private_key(_read(credentials.key_file, "private key file"))
    except InvalidInput as exc:
        raise BridgeError(f"cannot use the private key {credentials.key_file}: {exc}") from None
    if key.public_key() != leaf.public_key():
        raise BridgeError(
            f"the private key {credentials.key_file} does not belong to the certificate {credentials.cert_file}"
        )
    trusted = _read_certificates(credentials.ca_file, "CA file")
    checked = CheckedCertificate(common_name(leaf), serial_hex(leaf.serial_number), leaf.not_valid_after_utc)
    if leaf.not_valid_before_utc > now:
        raise BridgeError(f"the certificate {checked.label} is not valid before "
                          f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_after_utc <= now:
        raise BridgeError(f"the certificate {checked.label} expired on "
                          f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it")
    usages = extended_key_usages(leaf)
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise BridgeError(f"the certificate {checked.label} is not a client certificate "
                          "(its extended key usage has no clientAuth)")
    if not crl_file.is_file():
        return replace(checked, revocation_unchecked=f"no CRL at {crl_file}")
    if not _check_not_revoked(leaf, [*chain[1:], *trusted], crl_file, checked):
        return replace(checked, revocation_unchecked=f"{crl_file} holds no CRL of {leaf.issuer.rfc4514_string()}")
    return checked


def _check_not_revoked(
    leaf: x509.Certificate, cas: list[x509.Certificate], crl_file: Path, checked: CheckedCertificate
) -> bool:
    """Look the serial up in the CRL of the leaf's issuer, when ``crl.pem`` holds one (True).

    A CRL is believed only when its issuer's signature verifies: a CRL of another CA with
    the same name must not refuse our certificate. A certificate of a CA that has no CRL in
    the bundle (one from elsewhere) is not judged here; its server decides.
    """
    try:
        crls = load_crls(_read(crl_file, "CRL file"))
    except InvalidInput as exc:
        raise BridgeError(f"cannot use {crl_file}: {exc}") from None
    issuers = [ca for ca in cas if ca.subject == leaf.issuer]
    consulted = False
    for crl in crls:
        if crl.issuer != leaf.issuer or not any(crl_signed_by(crl, ca) for ca in issuers):
            continue
        consulted = True
        entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
        if entry is not None:
            raise BridgeError(
                f"the certificate {checked.label} was revoked on "
                f"{entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC ({revocation_reason(entry)}) according to {crl_file}"
            )
    return consulted


def _default_ca_file(home: Home, cert_file: Path) -> Path:
    """The ``ca.crt`` that `issue` wrote beside the certificate, else the home's root.

    The file beside the certificate came with it, so it is the root of the CA that issued it;
    a teammate's home may hold another CA's root (their own test CA, say), which must not
    decide whom the bridge trusts.
    """
    for candidate in (cert_file.parent / CA_FILE, home.root_certificate_file):
        if candidate.is_file():
            return candidate
    raise BridgeError(
        f"no CA certificate to trust (neither {cert_file.parent / CA_FILE} nor "
        f"{home.root_certificate_file} exists): pass --ca FILE"
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BridgeError(f"cannot read {what} {path}: {exc.strerror}") from None


def _read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        return load_pem_certificates(_read(path, what))
    except InvalidInput as exc:
        raise BridgeError(f"cannot use {what} {path}: {exc}") from None


def _read_chain(path: Path) -> list[x509.Certificate]:
    """The certificate, then the intermediates (``tls.crt`` holds both)."""
    return _read_certificates(path, "certificate file")
