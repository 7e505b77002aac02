"""The gateway's own certificate and the CA its clients must chain to, checked at start.

Three sources, in order: ``--as REF`` (a server certificate of ours: the files `issue` wrote,
our root, ``<home>/crl.pem``), ``--cert/--key/--ca/--crl``, and the ``TLS_*`` environment the
``server-env`` snippet sets. Options win over the environment, one file at a time. Every
problem a TLS library would report as an opaque failure later is one sentence here.
"""

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from mcp_pki import mtls
from mcp_pki.errors import InvalidInput, InventoryError
from mcp_pki.gateway import GatewayError
from mcp_pki.pki.bundles import load_private_key
from mcp_pki.pki.inspect import from_pem, load_pem_certificates
from mcp_pki.pki.keys import SigningKey
from mcp_pki.services.home import Home

CERT_FILE, KEY_FILE = "tls.crt", "tls.key"  # as `issue` names them
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """What the command line said; None where it said nothing."""

    ref: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    crl_file: Path | None = None


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    ca_file: Path
    crl_file: Path | None  # None: revocation is not checked, and the start-up line says so


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A checked server identity and the CA certificates whose CRLs the gateway believes."""

    files: TlsFiles
    context: ssl.SSLContext
    identity: mtls.Identity
    trusted: tuple[x509.Certificate, ...]  # the CA file's CAs and the intermediates they signed
    chain: tuple[x509.Certificate, ...]  # the server's certificate file: leaf, then intermediates
    key: SigningKey = field(repr=False)  # signs the tool-call log's checkpoints


def resolve_files(home: Home, options: TlsOptions, environ: Mapping[str, str], *, now: datetime) -> TlsFiles:
    """The four files, from the options, else ``--as``, else the environment."""
    require = environ.get("TLS_REQUIRE_CLIENT_CERT")
    if require is not None and require.strip().lower() not in _TRUE:
        raise GatewayError(
            f"TLS_REQUIRE_CLIENT_CERT={require!r}: the gateway always requires client certificates "
            "(that is what it is for); set it to true or unset it"
        )
    if options.ref is not None:
        if options.cert_file or options.key_file:
            raise GatewayError("give either --as REF or --cert FILE --key FILE, not both")
        cert_file, key_file = _from_inventory(home, options.ref, now=now)
        return TlsFiles(
            cert_file, key_file, options.ca_file or home.root_certificate_file,
            options.crl_file or home.crl_file,
        )

    def pick(option: Path | None, variable: str) -> Path | None:
        if option is not None:
            return option
        value = environ.get(variable, "").strip()
        return Path(value) if value else None

    cert, key = pick(options.cert_file, "TLS_CERT"), pick(options.key_file, "TLS_KEY")
    ca_file, crl_file = pick(options.ca_file, "TLS_CA"), pick(options.crl_file, "TLS_CRL")
    if cert is None or key is None:
        raise GatewayError("give the server certificate: --as REF, --cert FILE --key FILE, "
                           "or TLS_CERT and TLS_KEY in the environment")
    if ca_file is None:
        raise GatewayError("give the CA that client certificates must chain to: --ca FILE or TLS_CA")
    return TlsFiles(cert, key, ca_file, crl_file)


def load_server_tls(files: TlsFiles, *, now: datetime) -> ServerTls:
    """Read and cross-check the files, then build the server context (without CRLs)."""
    chain = _certificates(files.cert_file, "certificate file")
    leaf = chain[0]
    try:
        key = load_private_key(_read(files.key_file, "private key file"))
    except InvalidInput as exc:
        raise GatewayError(f"cannot use the private key {files.key_file}: {exc}") from None
    if key.public_key() != leaf.public_key():
        raise GatewayError(f"the private key {files.key_file} does not belong to the certificate {files.cert_file}")
    identity = mtls.identity_of(leaf)
    if leaf.not_valid_after_utc <= now:
        raise GatewayError(f"the server certificate {identity.label} expired on "
                           f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it")
    usages = mtls.extended_key_usages(leaf)
    if usages is not None and ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        raise GatewayError(f"{files.cert_file} is not a server certificate (its extended key usage has no "
                           "serverAuth): mcp-pki issue server NAME")
    ca_data = _read(files.ca_file, "CA file")
    try:
        cas = [c for c in load_pem_certificates(ca_data) if mtls.is_ca(c)]
    except InvalidInput:
        cas = []
    if not cas:
        raise GatewayError(f"the CA file {files.ca_file} holds no CA certificate")
    ca_pem = b"".join(c.public_bytes(Encoding.PEM) for c in cas)
    try:
        context = mtls.server_context(str(files.cert_file), str(files.key_file), ca_pem)
    except mtls.TlsSetupError as exc:
        raise GatewayError(str(exc)) from None
    # The issuing CA's CRL is signed by the issuing CA, which clients send but the CA file
    # (the root) does not hold: our own chain, signed by the root, brings it.
    trusted = (*cas, *mtls.certificates_signed_by_any(chain[1:], cas))
    return ServerTls(files, context, identity, trusted, tuple(chain), key)


def _from_inventory(home: Home, ref: str, *, now: datetime) -> tuple[Path, Path]:
    """The files `issue server` wrote for REF, found through the inventory (no passphrase)."""
    from mcp_pki.services.inventory import resolve_ref
    from mcp_pki.store.db import open_inventory, read_session

    try:
        engine = open_inventory(home.db_url)
    except InventoryError as exc:
        raise GatewayError(f"--as needs the inventory ({exc}): pass --cert FILE --key FILE instead") from None
    try:
        with read_session(engine) as session, session.begin():
            row = resolve_ref(session, ref, now=now)
            label, kind, folder = f"{row.name} (serial {row.serial})", row.kind, row.files_dir
            stored = from_pem(row.certificate_pem)
            revoked = row.revocation is not None
    finally:
        engine.dispose()
    if kind != "server":
        raise GatewayError(f"{label} is a {kind} certificate: the gateway needs a server certificate "
                           "(mcp-pki issue server NAME)")
    if revoked:
        raise GatewayError(f"the certificate {label} is revoked: issue or renew a server certificate")
    if folder is None:
        raise GatewayError(f"the inventory does not know where the files of {label} are: "
                           "pass --cert FILE --key FILE")
    cert_file, key_file = Path(folder) / CERT_FILE, Path(folder) / KEY_FILE
    for path in (cert_file, key_file):
        if not path.is_file():
            raise GatewayError(f"{path} is missing (the files of {label}): pass --cert FILE --key FILE")
    if _certificates(cert_file, "certificate file")[0] != stored:
        raise GatewayError(f"{cert_file} holds another certificate than {label} (replaced since): "
                           "pass --cert FILE --key FILE")
    return cert_file, key_file


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise GatewayError(f"cannot read the {what} {path}: {(exc.strerror or str(exc)).lower()}") from None


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        return load_pem_certificates(_read(path, what))
    except InvalidInput as exc:
        raise GatewayError(f"cannot use the {what} {path}: {exc}") from None
