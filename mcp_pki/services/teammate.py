"""The teammate's side: a key that never leaves their machine, and the bundle that answers it.

``request`` makes the key and a CSR on the teammate's machine (no CA, no inventory there).
The admin signs the CSR with ``issue client NAME --csr``, and ``export --format bundle`` packs
what the teammate needs besides the key: the certificate chain, the root, the current CRL and
the host configurations. ``install`` checks all of it against the key before writing a file,
then renders the host configurations for the folder it really installed into.
"""

import io
import json
import tarfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mcp_pki.errors import InvalidInput, PkiError
from mcp_pki.pki.crl import load_crls
from mcp_pki.pki.csr import build_request
from mcp_pki.pki.inspect import facts, load_pem_certificates
from mcp_pki.pki.keys import KeyType, generate_private_key, private_key_pem, same_public_key
from mcp_pki.pki.names import validate_email, validate_name
from mcp_pki.render import CertificateView
from mcp_pki.services.files import PRIVATE, PUBLIC, OutputFiles, refuse_existing
from mcp_pki.services.home import Home
from mcp_pki.services.snippets import Skipped, Snippet, render_targets, tool_path
from mcp_pki.timestamps import iso_utc

BUNDLE_FORMAT = "mcp-pki-bundle/1"
MANIFEST = "bundle.json"
KEY_FILE = "tls.key"
# What a bundle may hold, besides rendered configuration under config/: anything else in an
# archive handed over by mail or chat is refused rather than written somewhere.
_MATERIAL = ("tls.crt", "ca.crt", "crl.pem", MANIFEST, "README.md")
_MAX_MEMBER = 1 << 20  # a CRL of ~30k entries; far above any config file
_MAX_MEMBERS = 64


class BundleRefused(PkiError):
    """The bundle does not fit the key it is installed next to, or is not a bundle of ours."""


# --- request ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    key_file: Path
    csr_file: Path
    key_sha256: str  # of the public key: what the admin can read back to the teammate


def request_certificate(
    name: str, folder: Path, *, email: str | None, key_type: KeyType, force: bool,
) -> Request:
    """Write ``tls.key`` (0600, created so, never sent anywhere) and ``NAME.csr`` into `folder`."""
    validate_name(name)
    if email is not None:
        validate_email(email)
    key_file, csr_file = folder / KEY_FILE, folder / f"{name}.csr"
    refuse_existing([key_file, csr_file], force=force,
                    hint="it may be the key of a certificate you hold: use --force to replace it")
    key = generate_private_key(key_type)
    csr = build_request(key, name, email=email)
    output = OutputFiles()
    output.prepare(folder)
    output.add(key_file, private_key_pem(key), mode=PRIVATE)
    output.add(csr_file, csr.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)
    try:
        output.write(replace=force)
    except BaseException:
        output.abandon()
        raise
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public)
    return Request(key_file, csr_file, digest.finalize().hex(":").upper())


# --- the certificate as a template sees it, from files alone ------------------------------


def view_from_files(cert_pem: str, ca_pem: str, folder: str, *, home: Home | None) -> CertificateView:
    """The template view of a certificate, built from its PEM: what ``install`` has, with no
    inventory on the teammate's machine. `folder` is where the files live there."""
    certificate = load_pem_certificates(cert_pem.encode("ascii"))[0]
    known = facts(certificate)

    def sans(prefix: str) -> tuple[str, ...]:
        return tuple(s.removeprefix(prefix) for s in known.sans if s.startswith(prefix))

    base = PurePosixPath(folder) if folder.startswith("/") else Path(folder)
    return CertificateView(
        name=known.common_name or "", kind="server" if "serverAuth" in known.extended_key_usage else "client",
        serial=known.serial, subject=known.subject, dns_names=sans("DNS:"), ip_addresses=sans("IP:"),
        uris=sans("URI:"), emails=sans("email:"), roles=known.roles, not_after=iso_utc(known.not_after),
        folder=str(base), local=False, cert_file=str(base / "tls.crt"), key_file=str(base / KEY_FILE),
        ca_file=str(base / "ca.crt"), crl_file=str(base / "crl.pem"), cert_pem=cert_pem, ca_pem=ca_pem,
        home=str(home.path.absolute()) if home else str(base), home_owner="", tool=tool_path(),
        ca_key_encrypted=True,
    )


# --- export --format bundle ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bundle:
    name: str
    serial: str
    data: bytes  # a .tar.gz with one folder, NAME/
    configs: list[Snippet]  # rendered for --dir; empty without it (install renders them)
    skipped: list[Skipped]


def export_bundle(
    home: Home, ref: str, *, folder: str | None, variables: dict[str, str], now: datetime,
) -> Bundle:
    """What the teammate needs besides their key, in one archive. With `folder` (where the files
    will live on their machine) the host configurations are rendered into it too."""
    from mcp_pki.services.inventory import issuer_chain, resolve_ref, status_of
    from mcp_pki.services.listing import Status
    from mcp_pki.store.db import open_inventory, read_session

    engine = open_inventory(home.db_url)
    try:
        with read_session(engine) as session, session.begin():
            certificate = resolve_ref(session, ref, now=now)
            status = status_of(certificate, now)
            chain = issuer_chain(session, certificate.issuer_id)
            name, serial = certificate.name, certificate.serial
            cert_pem = certificate.certificate_pem + "".join(a.certificate_pem for a in chain[:-1])
            ca_pem = chain[-1].certificate_pem
    finally:
        engine.dispose()
    if status is not Status.VALID:
        raise InvalidInput(f"{serial} ({name}) is {status.value}: a bundle is for a valid certificate")
    try:
        crl_pem = home.crl_file.read_bytes()
    except OSError:
        raise InvalidInput(f"no CRL at {home.crl_file}: run 'mcp-pki crl' first") from None
    configs: list[Snippet] = []
    skipped: list[Skipped] = []
    readme = _BUNDLE_README.format(name=name, serial=serial)
    if folder is not None:
        _check_absolute(folder)
        view = view_from_files(cert_pem, ca_pem, folder, home=home)
        configs, skipped, config_readme = render_targets(view, variables, overrides=home.templates_dir)
        readme += "\n" + config_readme
    manifest = {"format": BUNDLE_FORMAT, "name": name, "serial": serial, "variables": variables}
    members = {
        "tls.crt": cert_pem.encode("ascii"), "ca.crt": ca_pem.encode("ascii"), "crl.pem": crl_pem,
        MANIFEST: (json.dumps(manifest, indent=2) + "\n").encode("utf-8"), "README.md": readme.encode("utf-8"),
        **{f"config/{s.target.file_name}": s.text.encode("utf-8") for s in configs},
    }
    return Bundle(name, serial, _tar_gz(name, members, now), configs, skipped)


_BUNDLE_README = """\
# mcp-pki bundle for "{name}" ({serial})

Install it on your machine, in the folder where `mcp-pki request {name}` wrote `tls.key`:

    mcp-pki install {name}.tar.gz --dir FOLDER

It checks that the certificate matches your key and chains to `ca.crt`, puts `tls.crt`,
`ca.crt` and `crl.pem` next to the key, writes the configuration of every MCP host for that
folder into `config/`, and prints what to do for each host. Your key never leaves your machine.
"""


def _check_absolute(folder: str) -> None:
    if not (folder.startswith("/") or Path(folder).is_absolute() or (len(folder) > 2 and folder[1:3] == ":\\")):
        raise InvalidInput(f"--dir must be an absolute path on the teammate's machine (got {folder!r})")


def _tar_gz(name: str, members: dict[str, bytes], now: datetime) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for path, data in members.items():
            info = tarfile.TarInfo(f"{name}/{path}")
            info.size, info.mode, info.mtime = len(data), 0o644, int(now.timestamp())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- install ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Installed:
    name: str
    serial: str
    not_after: str
    folder: Path
    written: list[Path]
    configs: list[Snippet]
    skipped: list[Skipped]
    warnings: list[str]


def install_bundle(data: bytes, folder: Path, *, force: bool, now: datetime) -> Installed:
    """Check the bundle against ``tls.key`` in `folder`, then write it there with the host
    configurations rendered for that folder. Nothing is written unless every check passes."""
    members = _read_tar_gz(data)
    manifest = _manifest(members)
    name = manifest.name
    folder = folder.absolute()
    key_file = folder / KEY_FILE
    try:
        key_pem = key_file.read_bytes()
    except OSError as exc:
        raise BundleRefused(
            f"cannot read {key_file}: {exc.strerror} (install next to the key that 'mcp-pki request {name}' wrote: --dir)"
        ) from None
    warnings = []
    if key_file.stat().st_mode & 0o077:
        warnings.append(f"{key_file} is readable by others: chmod 600 {key_file}")
    chain = _certificates(members, "tls.crt")
    roots = _certificates(members, "ca.crt")
    leaf = chain[0]
    _check_key(leaf, key_pem, key_file)
    _check_chain(leaf, chain[1:], roots, now)
    _check_crl(leaf, chain[1:] + roots, members.get("crl.pem", b""), now)
    known = facts(leaf)
    if known.common_name != name:
        raise BundleRefused(f"the bundle says {name!r} but its certificate is for {known.common_name!r}")

    view = view_from_files(members["tls.crt"].decode("ascii"), members["ca.crt"].decode("ascii"), str(folder),
                           home=None)
    variables = {k: v for k, v in manifest.variables.items() if k != "command"}  # the tool is here now
    configs, skipped, readme = render_targets(view, variables, overrides=None)
    contents = {folder / f: members[f] for f in ("tls.crt", "ca.crt", "crl.pem")}
    contents |= {folder / "config" / s.target.file_name: s.text.encode("utf-8") for s in configs}
    contents[folder / "config" / "README.md"] = readme.encode("utf-8")
    refuse_existing([folder / f for f in ("tls.crt", "ca.crt", "crl.pem")], force=force,
                    hint="use --force to replace it (a renewed certificate for the same key)")
    output = OutputFiles()
    output.prepare(folder / "config")
    for path, body in contents.items():
        script = path.suffix in (".sh", ".py", ".mjs")
        output.add(path, body, mode=0o755 if script else PUBLIC)
    try:
        written = output.write(replace=True)
    except BaseException:
        output.abandon()
        raise
    return Installed(name, known.serial, iso_utc(known.not_after), folder, written, configs, skipped, warnings)


def _read_tar_gz(data: bytes) -> dict[str, bytes]:
    """The bundle's files by their path under NAME/, read in memory: nothing in the archive
    decides where anything is written."""
    members: dict[str, bytes] = {}
    top: str | None = None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for count, info in enumerate(archive):
                if count >= _MAX_MEMBERS:
                    raise BundleRefused("not an mcp-pki bundle: too many files")
                if info.isdir():
                    continue
                parts = PurePosixPath(info.name).parts
                if not info.isfile() or len(parts) < 2 or ".." in parts or info.name.startswith("/"):
                    raise BundleRefused(f"not an mcp-pki bundle: unexpected entry {info.name!r}")
                if top is None:
                    top = parts[0]
                inner = "/".join(parts[1:])
                allowed = inner in _MATERIAL or (len(parts) == 3 and parts[1] == "config")
                if parts[0] != top or not allowed or info.size > _MAX_MEMBER:
                    raise BundleRefused(f"not an mcp-pki bundle: unexpected entry {info.name!r}")
                handle = archive.extractfile(info)
                assert handle is not None  # a regular file
                members[inner] = handle.read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise BundleRefused(f"not an mcp-pki bundle (a .tar.gz from 'mcp-pki export --format bundle'): {exc}") from None
    return members


@dataclass(frozen=True, slots=True)
class _Manifest:
    name: str
    variables: dict[str, str]  # the admin's --var values: url, name


def _manifest(members: dict[str, bytes]) -> _Manifest:
    try:
        manifest = json.loads(members[MANIFEST])
    except (KeyError, ValueError):
        raise BundleRefused("not an mcp-pki bundle: no readable bundle.json") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleRefused(f"not an mcp-pki bundle of format {BUNDLE_FORMAT}")
    variables = manifest.get("variables")
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise BundleRefused("not an mcp-pki bundle: bundle.json has no variables")
    name = validate_name(str(manifest.get("name")))
    for needed in ("tls.crt", "ca.crt", "crl.pem"):
        if needed not in members:
            raise BundleRefused(f"the bundle has no {needed}")
    return _Manifest(name, {str(k): v for k, v in variables.items()})


def _certificates(members: dict[str, bytes], file: str) -> list[x509.Certificate]:
    try:
        certificates = load_pem_certificates(members[file])
    except InvalidInput:
        certificates = []
    if not certificates:
        raise BundleRefused(f"the bundle's {file} holds no certificate")
    return certificates


def _check_key(leaf: x509.Certificate, key_pem: bytes, key_file: Path) -> None:
    from mcp_pki.pki.bundles import load_private_key

    try:
        key = load_private_key(key_pem)
    except InvalidInput as exc:
        raise BundleRefused(f"{key_file}: {exc}") from None
    if not same_public_key(key.public_key(), leaf.public_key()):
        raise BundleRefused(
            f"the bundle's certificate does not match {key_file}: it was signed for another key "
            "(another request, or another teammate's bundle)"
        )


def _check_chain(leaf: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate],
                 now: datetime) -> None:
    """Verified as a server verifies a client: chain to ca.crt, validity, key usages."""
    if leaf.not_valid_after_utc <= now:
        raise BundleRefused(f"the bundle's certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    try:
        verifier = PolicyBuilder().store(Store(roots)).time(now).build_client_verifier()
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise BundleRefused(f"the bundle's certificate does not chain to its ca.crt: {exc}") from None


def _check_crl(leaf: x509.Certificate, cas: list[x509.Certificate], crl_pem: bytes, now: datetime) -> None:
    """The bundle's CRL must be signed by the leaf's issuer and must not list the leaf."""
    try:
        crls = load_crls(crl_pem)
    except InvalidInput:
        raise BundleRefused("the bundle's crl.pem is not a PEM CRL") from None
    issuer = next((ca for ca in cas if ca.subject == leaf.issuer), None)
    for crl in crls:
        if issuer is None or crl.issuer != issuer.subject:
            continue
        try:
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                continue
        except (InvalidSignature, TypeError):
            continue
        if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
            raise BundleRefused("the bundle's certificate is revoked according to its own crl.pem")
        return
    raise BundleRefused("the bundle's crl.pem holds no CRL signed by the certificate's issuer")


def peek_name(data: bytes) -> str:
    """The NAME a bundle is for: ``install`` without ``--dir`` installs into ./NAME."""
    return _manifest(_read_tar_gz(data)).name
