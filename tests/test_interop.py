"""Interoperability: what mcp-pki writes is accepted by pkilint, OpenSSL, cryptography's
verifier, Python's ssl module and PKCS#12 readers, and what it must refuse it refuses.

Everything is real: keys, files, the CLI in-process, OpenSSL and pkilint as subprocesses,
TLS handshakes over 127.0.0.1 on ephemeral ports, each bounded by a timeout.
"""

import ipaddress
import os
import re
import select
import socket
import sqlite3
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tests.conftest import PASSPHRASE, Cli, Snapshot, assert_clean_error, openssl, pkilint_cert

TIMEOUT = 5.0  # seconds, for every socket, thread and subprocess below
P12_PASSPHRASE = "p12 passphrase for tests"
SERVER_DNS = "web.example.com"
LOOPBACK = "127.0.0.1"
CLIENT_EMAIL = "alice@example.com"
CLIENT_ROLES = ["admin", "ops"]


# --------------------------------------------------------------------------------------
# Issued material, made once per module and shared read-only by the tests
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """One output folder of `issue`: tls.crt (leaf then intermediates), tls.key, ca.crt."""

    folder: Path

    @property
    def crt(self) -> Path:
        return self.folder / "tls.crt"

    @property
    def key(self) -> Path:
        return self.folder / "tls.key"

    @cached_property
    def chain(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.crt.read_bytes())

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def intermediates(self) -> list[x509.Certificate]:
        return self.chain[1:]


@dataclass(frozen=True)
class Pki:
    """A CA home with a server certificate `web` and a client certificate `alice`."""

    case: str
    cli: Cli
    server: Issued
    client: Issued
    two_tier: bool

    @property
    def root_file(self) -> Path:
        return self.cli.home / "ca.crt"

    @cached_property
    def root(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.root_file.read_bytes())


# case -> (init-ca options, server --key-type, client --key-type)
# Every key type signs and is signed: each two-tier CA issues a server leaf of its own key
# type, and most client leaves have another key type than their CA. RSA-4096 is slow to
# generate, so it appears in exactly one case (the single-tier root).
PKI_CASES: dict[str, tuple[list[str], str, str]] = {
    "p256": (["--key-type", "p256"], "p256", "rsa2048"),
    "p384": (["--key-type", "p384"], "p384", "p256"),
    "rsa2048": (["--key-type", "rsa2048"], "rsa2048", "p384"),
    "ed25519": (["--key-type", "ed25519"], "ed25519", "ed25519"),
    "single-tier-rsa4096": (["--single-tier", "--key-type", "rsa4096"], "p256", "rsa3072"),
    # any --permit-* constrains every name type: the IP and email leaves need theirs
    "permit-dns": (["--permit-dns", "example.com", "--permit-ip", "127.0.0.1/32",
                    "--permit-email", "example.com"], "p256", "p256"),
}
ALL_CASES = list(PKI_CASES)
# cryptography's verifier applies a Web PKI profile that forbids Ed25519 keys and
# signatures ("Forbidden public key algorithm"); that is its policy, not our certificates'.
WEBPKI_CASES = [c for c in ALL_CASES if c != "ed25519"]


class PkiFactory:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: dict[str, Pki] = {}

    def __getitem__(self, case: str) -> Pki:
        if case not in self.made:
            self.made[case] = self._make(case)
        return self.made[case]

    def _make(self, case: str) -> Pki:
        folder = self.base / case
        work = folder / "work"
        work.mkdir(parents=True)
        cli = Cli(folder / "home", work)
        if case == "foreign":  # a second, unrelated CA: same shape, other root
            init, server_key, client_key = ["--name", "Other", "--org", "Elsewhere"], "p256", "p256"
        else:
            options, server_key, client_key = PKI_CASES[case]
            init = ["--name", "Test", "--org", "Example", *options]
        cli.ok("init-ca", *init)
        cli.ok("issue", "server", "web", "--dns", SERVER_DNS, "--ip", LOOPBACK, "--key-type", server_key)
        roles = [arg for role in CLIENT_ROLES for arg in ("--role", role)]
        cli.ok("issue", "client", "alice", "--email", CLIENT_EMAIL, *roles, "--key-type", client_key)
        return Pki(case, cli, Issued(work / "web"), Issued(work / "alice"), "--single-tier" not in init)


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> PkiFactory:
    return PkiFactory(tmp_path_factory.mktemp("interop"))


def pem_bytes(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def write_pem(certificate: x509.Certificate, path: Path) -> Path:
    path.write_bytes(pem_bytes(certificate))
    return path


def attribute_values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in name.get_attributes_for_oid(oid)]


# --------------------------------------------------------------------------------------
# 1. pkilint: RFC 5280 conformance of every certificate we produce
# --------------------------------------------------------------------------------------

FINDING = re.compile(r"^\s+([a-z0-9_]+(?:\.[a-z0-9_]+)+) \((FATAL|ERROR|WARNING)\): (.*)$", re.MULTILINE)


def lint_all(certificates: dict[str, x509.Certificate], folder: Path) -> dict[str, str]:
    """pkilint findings per label, linted in parallel, one certificate per file.

    pkilint reads exactly one certificate per file: given a bundle such as tls.crt it fails to
    load it, prints that on stderr and `pkilint_cert` (stdout only) would return "" — clean.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = {label: write_pem(c, folder / f"{label}.pem") for label, c in certificates.items()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(paths, pool.map(pkilint_cert, paths.values())))
    return {label: findings for label, findings in results.items() if findings}


def test_pkilint_reports_a_certificate_that_breaks_the_profile(tmp_path: Path) -> None:
    """The control for every clean lint below: the same helper does report real problems."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bad")])
    now = datetime.now(UTC)
    bad = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=30))
        # keyEncipherment on an EC key, and a leaf without SKI/AKI: what easy-rsa and mkcert do
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    findings = lint_all({"bad": bad}, tmp_path)
    assert "bad" in findings
    assert FINDING.search(findings["bad"]), findings


@pytest.mark.parametrize("case", ALL_CASES)
def test_pkilint_finds_nothing_in_roots_issuing_cas_and_leaves(
    pkis: PkiFactory, case: str, tmp_path: Path
) -> None:
    pki = pkis[case]
    certificates = {"root": pki.root, "server": pki.server.leaf, "client": pki.client.leaf}
    if pki.two_tier:
        assert len(pki.server.chain) == 2  # the issuing CA is linted, not skipped
        certificates["issuing"] = pki.server.intermediates[0]
    else:
        assert pki.server.intermediates == []
        assert pki.server.leaf.issuer == pki.root.subject
    # the client carries what pkilint must see: an email SAN and roles as OUs
    sans = pki.client.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.RFC822Name) == [CLIENT_EMAIL]
    assert attribute_values(pki.client.leaf.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == CLIENT_ROLES
    assert lint_all(certificates, tmp_path) == {}


def test_permit_dns_puts_critical_name_constraints_on_the_issuing_ca(pkis: PkiFactory) -> None:
    pki = pkis["permit-dns"]
    issuing = pki.server.intermediates[0]
    constraints = issuing.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [
        x509.DNSName("example.com"), x509.IPAddress(ipaddress.ip_network("127.0.0.1/32")),
        x509.RFC822Name("example.com"), x509.UniformResourceIdentifier("nothing.invalid"),
    ]
    assert constraints.value.excluded_subtrees is None
    with pytest.raises(x509.ExtensionNotFound):  # the root of a two-tier CA stays unconstrained
        pki.root.extensions.get_extension_for_class(x509.NameConstraints)


def test_single_tier_root_with_permit_dns_is_constrained_and_lints_clean(
    mcp: Cli, tmp_path: Path
) -> None:
    mcp.ok("init-ca", "--name", "Solo", "--single-tier", "--permit-dns", "example.com")
    mcp.ok("issue", "server", "web", "--dns", SERVER_DNS)
    root = x509.load_pem_x509_certificate((mcp.home / "ca.crt").read_bytes())
    constraints = root.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [
        x509.DNSName("example.com"), x509.RFC822Name("nothing.invalid"),
        x509.UniformResourceIdentifier("nothing.invalid"),
    ]
    leaf = Issued(mcp.cwd / "web")
    assert len(leaf.chain) == 1
    assert lint_all({"root": root, "server": leaf.leaf}, tmp_path) == {}
    verified = openssl_verify(mcp.home / "ca.crt", leaf.crt, "sslserver",
                              "-verify_hostname", SERVER_DNS)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_spiffe_uri_is_pkilints_only_finding_a_known_false_positive(ca: Cli, tmp_path: Path) -> None:
    """pkilint 0.13.3 checks URI SANs with `validators.url`, which knows only URL-like schemes:
    it flags spiffe:// (and urn:) URIs as pkix.invalid_uri_syntax although they are valid
    RFC 3986 URIs. That must stay the one and only finding; an https URI lints clean."""
    ca.ok("issue", "client", "agent", "--uri", "spiffe://example.com/agent/build",
          "--email", CLIENT_EMAIL)
    ca.ok("issue", "client", "agent2", "--uri", "https://agents.example.com/build")
    leaves = {"spiffe": Issued(ca.cwd / "agent").leaf, "https": Issued(ca.cwd / "agent2").leaf}
    findings = lint_all(leaves, tmp_path)
    assert set(findings) == {"spiffe"}
    codes = FINDING.findall(findings["spiffe"])
    assert [code for code, _, _ in codes] == ["pkix.invalid_uri_syntax"], findings["spiffe"]
    assert "spiffe://example.com/agent/build" in codes[0][2]


# --------------------------------------------------------------------------------------
# 2. openssl verify
# --------------------------------------------------------------------------------------


def openssl_verify(
    root: Path, chain: Path, purpose: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Trust only `root` (no system store); intermediates come from the chain file itself."""
    return openssl(
        "verify", "-no-CApath", "-no-CAstore", "-x509_strict", "-purpose", purpose, *extra,
        "-CAfile", str(root), "-untrusted", str(chain), str(chain),
    )


@pytest.mark.parametrize("case", ALL_CASES)
def test_openssl_verify_accepts_each_leaf_for_its_purpose(pkis: PkiFactory, case: str) -> None:
    pki = pkis[case]
    server = openssl_verify(pki.root_file, pki.server.crt, "sslserver",
                            "-verify_hostname", SERVER_DNS, "-verify_ip", LOOPBACK)
    assert server.returncode == 0, server.stdout + server.stderr
    assert server.stdout.strip() == f"{pki.server.crt}: OK"
    client = openssl_verify(pki.root_file, pki.client.crt, "sslclient",
                            "-verify_email", CLIENT_EMAIL)
    assert client.returncode == 0, client.stdout + client.stderr
    assert client.stdout.strip() == f"{pki.client.crt}: OK"


@pytest.mark.parametrize("case", ALL_CASES)
def test_openssl_verify_rejects_the_wrong_purpose(pkis: PkiFactory, case: str) -> None:
    pki = pkis[case]
    for chain, purpose in ((pki.client.crt, "sslserver"), (pki.server.crt, "sslclient")):
        result = openssl_verify(pki.root_file, chain, purpose)
        assert result.returncode != 0, (chain, purpose)
        # OpenSSL 3 says "unsuitable", OpenSSL 1.1 "unsupported"; error 26 either way
        output = result.stdout + result.stderr
        assert re.search(r"error 26 at 0 depth.*certificate purpose", output), output


def test_openssl_verify_rejects_another_cas_certificate(pkis: PkiFactory) -> None:
    ours, theirs = pkis["p256"], pkis["foreign"]
    result = openssl_verify(ours.root_file, theirs.client.crt, "sslclient")
    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stdout + result.stderr


def test_name_constraints_bind_what_the_issuing_ca_signs(pkis: PkiFactory, tmp_path: Path) -> None:
    """The constraint is effective, not decorative: leaves signed with the issuing CA's key
    outside the tool verify under example.com and fail for another domain. (The key is read
    from the inventory's `authorities` table and decrypted with the test passphrase.)"""
    pki = pkis["permit-dns"]
    issuing = pki.server.intermediates[0]
    with closing(sqlite3.connect(pki.cli.db)) as connection:
        (encrypted,) = connection.execute(
            "SELECT encrypted_key_pem FROM authorities WHERE role = 'issuing'"
        ).fetchone()
    issuer_key = load_pem_private_key(encrypted.encode(), PASSPHRASE.encode())
    issuer_public_key = issuing.public_key()
    assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
    assert isinstance(issuer_public_key, ec.EllipticCurvePublicKey)
    assert issuer_key.public_key() == issuer_public_key

    def signed_for(dns_name: str) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made")])
        leaf = (
            x509.CertificateBuilder().subject_name(subject)
            .issuer_name(issuing.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .sign(issuer_key, hashes.SHA256())
        )
        chain = tmp_path / f"{dns_name}.crt"
        chain.write_bytes(b"".join(pem_bytes(c) for c in (leaf, issuing)))
        return chain

    inside = openssl_verify(pki.root_file, signed_for("api.example.com"), "sslserver")
    assert inside.returncode == 0, inside.stdout + inside.stderr
    outside = openssl_verify(pki.root_file, signed_for("api.example.org"), "sslserver")
    assert outside.returncode != 0
    assert "permitted subtree violation" in outside.stdout + outside.stderr


def test_permit_dns_never_issues_a_certificate_that_openssl_rejects(mcp: Cli) -> None:
    mcp.ok("init-ca", "--name", "Test", "--permit-dns", "example.com")
    for kind, name, extra in (("client", "ci.runner", ["--email", "ci@example.com"]),
                              ("server", "files.internal", ["--ip", "10.0.0.5"])):
        result = mcp("issue", kind, name, *extra)
        if result.exit_code != 0:
            assert_clean_error(result, name)
            continue
        purpose = "sslclient" if kind == "client" else "sslserver"
        chain = mcp.cwd / name / "tls.crt"
        verified = openssl_verify(mcp.home / "ca.crt", chain, purpose)
        assert verified.returncode == 0, verified.stdout + verified.stderr


# --------------------------------------------------------------------------------------
# 3. cryptography's verifier, the way a client or server built on it checks a chain
# --------------------------------------------------------------------------------------


def policy(pki: Pki) -> PolicyBuilder:
    return PolicyBuilder().store(Store([pki.root])).time(datetime.now(UTC))


@pytest.mark.parametrize("case", WEBPKI_CASES)
def test_cryptography_verifies_the_server_chain_by_name_and_ip(pkis: PkiFactory, case: str) -> None:
    pki = pkis[case]
    expected = [pki.server.leaf, *pki.server.intermediates, pki.root]
    for subject in (x509.DNSName(SERVER_DNS), x509.IPAddress(ipaddress.ip_address(LOOPBACK))):
        verifier = policy(pki).build_server_verifier(subject)
        assert verifier.verify(pki.server.leaf, pki.server.intermediates) == expected
    with pytest.raises(VerificationError):
        policy(pki).build_server_verifier(x509.DNSName("other.example.com")).verify(
            pki.server.leaf, pki.server.intermediates)


@pytest.mark.parametrize("case", WEBPKI_CASES)
def test_cryptography_verifies_the_client_chain(pkis: PkiFactory, case: str) -> None:
    pki = pkis[case]
    verifier = policy(pki).build_client_verifier()
    verified = verifier.verify(pki.client.leaf, pki.client.intermediates)
    assert verified.chain == [pki.client.leaf, *pki.client.intermediates, pki.root]
    assert verified.subjects == [x509.RFC822Name(CLIENT_EMAIL)]


def test_cryptography_refuses_wrong_purposes_and_foreign_roots(pkis: PkiFactory) -> None:
    pki, foreign = pkis["p256"], pkis["foreign"]
    server_verifier = policy(pki).build_server_verifier(x509.DNSName(SERVER_DNS))
    client_verifier = policy(pki).build_client_verifier()
    with pytest.raises(VerificationError):  # a client certificate as a server's
        server_verifier.verify(pki.client.leaf, pki.client.intermediates)
    with pytest.raises(VerificationError):  # a server certificate as a client's
        client_verifier.verify(pki.server.leaf, pki.server.intermediates)
    with pytest.raises(VerificationError):  # another CA's client
        client_verifier.verify(foreign.client.leaf, foreign.client.intermediates)
    with pytest.raises(VerificationError):  # another CA's server
        server_verifier.verify(foreign.server.leaf, foreign.server.intermediates)


# --------------------------------------------------------------------------------------
# 4. Real mutual TLS over loopback with Python's ssl module
# --------------------------------------------------------------------------------------

TLS13 = ssl.TLSVersion.TLSv1_3
TLS_VERSIONS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": TLS13}


def strict(context: ssl.SSLContext) -> ssl.SSLContext:
    """Python 3.13's defaults, on every Python: strict X.509 and partial chains."""
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
    return context


def server_context(root: Path, chain: Path, key: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = strict(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(root)))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(chain), str(key))
    context.minimum_version = context.maximum_version = version
    return context


def client_context(root: Path, chain: Path | None, key: Path | None) -> ssl.SSLContext:
    context = strict(ssl.create_default_context(cafile=str(root)))
    if chain is not None:
        context.load_cert_chain(str(chain), str(key))
    return context


@dataclass
class ServerSide:
    thread: threading.Thread | None = None
    port: int = 0
    peer: dict[str, Any] | None = None
    received: bytes = b""
    error: BaseException | None = None

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "TLS server thread did not finish"


def serve_once(context: ssl.SSLContext) -> ServerSide:
    """Accept one connection on an ephemeral loopback port, handshake, echo one message."""
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(TIMEOUT)
    side = ServerSide(port=listener.getsockname()[1])

    def run() -> None:
        try:
            connection, _ = listener.accept()
            connection.settimeout(TIMEOUT)
            with context.wrap_socket(connection, server_side=True) as tls:
                side.peer = tls.getpeercert()
                side.received = tls.recv(64)
                tls.sendall(b"pong:" + side.received)
                try:  # close_notify: OpenSSL 3 peers treat a bare TCP close as an error
                    tls.unwrap()
                except (OSError, ssl.SSLError):
                    pass  # the peer may close without answering with its own close_notify
        except (OSError, ssl.SSLError) as exc:
            side.error = exc
        finally:
            listener.close()

    side.thread = threading.Thread(target=run, daemon=True)
    side.thread.start()
    return side


def talk(port: int, context: ssl.SSLContext, server_hostname: str) -> tuple[bytes, str | None]:
    """Handshake, then write and read: under TLS 1.3 a server's refusal of our certificate
    arrives after the client's handshake has completed, on the first read."""
    with (
        socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(b"ping")
        reply = tls.recv(64)
        if not reply:
            raise ConnectionResetError("server closed the connection")
        return reply, tls.version()


def peer_attributes(peer: dict[str, Any], key: str) -> list[str]:
    return [value for rdn in peer["subject"] for name, value in rdn if name == key]


@pytest.mark.parametrize("version", TLS_VERSIONS)
@pytest.mark.parametrize("case", ALL_CASES)
def test_mutual_tls_handshake_carries_the_clients_identity(
    pkis: PkiFactory, case: str, version: str
) -> None:
    pki = pkis[case]
    side = serve_once(server_context(pki.root_file, pki.server.crt, pki.server.key,
                                     TLS_VERSIONS[version]))
    client = client_context(pki.root_file, pki.client.crt, pki.client.key)
    reply, negotiated = talk(side.port, client, SERVER_DNS)
    side.join()
    assert side.error is None, side.error
    assert reply == b"pong:ping" and side.received == b"ping"
    assert negotiated == {"tls1.2": "TLSv1.2", "tls1.3": "TLSv1.3"}[version]
    assert side.peer is not None
    assert peer_attributes(side.peer, "commonName") == ["alice"]
    assert peer_attributes(side.peer, "organizationalUnitName") == CLIENT_ROLES
    assert ("email", CLIENT_EMAIL) in side.peer["subjectAltName"]


def test_client_checks_the_server_by_ip_address(pkis: PkiFactory) -> None:
    pki = pkis["p256"]
    side = serve_once(server_context(pki.root_file, pki.server.crt, pki.server.key, TLS13))
    client = client_context(pki.root_file, pki.client.crt, pki.client.key)
    reply, _ = talk(side.port, client, LOOPBACK)
    side.join()
    assert side.error is None and reply == b"pong:ping"


def refused_handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = SERVER_DNS
) -> tuple[ServerSide, BaseException]:
    """A handshake that must fail: the server side's record and the client's exception."""
    side = serve_once(server)
    with pytest.raises((ssl.SSLError, OSError)) as refused:
        talk(side.port, client, hostname)
    side.join()
    return side, refused.value


def assert_client_told(error: BaseException, alert: str) -> None:
    """The client learns why through the server's alert. Under TLS 1.3 it arrives on the first
    read, after the client's "ping" is already on its way; if the server closes with that
    record unread, the kernel may send a reset that overtakes the alert, so a reset is
    tolerated (the server-side verify code is what each test insists on)."""
    if isinstance(error, ssl.SSLError) and error.reason is not None:
        assert error.reason == alert, error
    else:
        assert isinstance(error, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)), error


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_server_refuses_a_client_of_another_ca(pkis: PkiFactory, version: str) -> None:
    pki, foreign = pkis["p256"], pkis["foreign"]
    side, error = refused_handshake(
        server_context(pki.root_file, pki.server.crt, pki.server.key, TLS_VERSIONS[version]),
        client_context(pki.root_file, foreign.client.crt, foreign.client.key),
    )
    assert isinstance(side.error, ssl.SSLCertVerificationError), side.error
    assert side.error.verify_code == 20  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    assert side.peer is None and side.received == b""
    assert_client_told(error, "TLSV1_ALERT_UNKNOWN_CA")


@pytest.mark.parametrize("version", TLS_VERSIONS)
def test_server_refuses_a_server_certificate_presented_by_a_client(
    pkis: PkiFactory, version: str
) -> None:
    pki = pkis["p256"]
    side, error = refused_handshake(
        server_context(pki.root_file, pki.server.crt, pki.server.key, TLS_VERSIONS[version]),
        client_context(pki.root_file, pki.server.crt, pki.server.key),  # EKU serverAuth only
    )
    assert isinstance(side.error, ssl.SSLCertVerificationError), side.error
    assert side.error.verify_code == 26  # X509_V_ERR_INVALID_PURPOSE
    assert side.received == b""
    assert_client_told(error, "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE")


def test_server_refuses_a_client_without_a_certificate(pkis: PkiFactory) -> None:
    pki = pkis["p256"]
    side, error = refused_handshake(
        server_context(pki.root_file, pki.server.crt, pki.server.key, TLS13),
        client_context(pki.root_file, None, None),
    )
    assert isinstance(side.error, ssl.SSLError), side.error
    assert side.error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert side.received == b""
    assert_client_told(error, "TLSV13_ALERT_CERTIFICATE_REQUIRED")


def test_client_refuses_a_client_certificate_presented_by_a_server(pkis: PkiFactory) -> None:
    pki = pkis["p256"]
    _, error = refused_handshake(
        server_context(pki.root_file, pki.client.crt, pki.client.key, TLS13),
        client_context(pki.root_file, pki.client.crt, pki.client.key),
        hostname=CLIENT_EMAIL.split("@")[1],
    )
    assert isinstance(error, ssl.SSLCertVerificationError), error
    assert error.verify_code == 26  # X509_V_ERR_INVALID_PURPOSE


def test_client_refuses_a_server_with_another_name(pkis: PkiFactory) -> None:
    pki = pkis["p256"]
    _, error = refused_handshake(
        server_context(pki.root_file, pki.server.crt, pki.server.key, TLS13),
        client_context(pki.root_file, pki.client.crt, pki.client.key),
        hostname="other.example.com",
    )
    assert isinstance(error, ssl.SSLCertVerificationError), error
    assert error.verify_code == 62  # X509_V_ERR_HOSTNAME_MISMATCH


# --------------------------------------------------------------------------------------
# 4b. The same identities against OpenSSL's own TLS server and client
# --------------------------------------------------------------------------------------


def intermediates_file(issued: Issued, folder: Path) -> Path:
    path = folder / f"{issued.folder.name}-intermediates.pem"
    path.write_bytes(b"".join(pem_bytes(c) for c in issued.intermediates))
    return path


def read_until_line(process: subprocess.Popen[bytes], prefix: bytes) -> tuple[bytes, bytes]:
    """Read stdout until a line starting with `prefix` (or fail after TIMEOUT): that line and
    everything read so far. Raw reads on the descriptor: select() does not see data that a
    buffered reader has already pulled in, which made a line-based version flaky."""
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    deadline = datetime.now(UTC) + timedelta(seconds=TIMEOUT)
    seen = b""
    while datetime.now(UTC) < deadline:
        ready, _, _ = select.select([descriptor], [], [], 0.1)
        if ready:
            chunk = os.read(descriptor, 4096)
            if not chunk:
                break
            seen += chunk
            for line in seen.splitlines(keepends=True):
                if line.startswith(prefix) and line.endswith(b"\n"):
                    return line, seen
    raise AssertionError(f"no {prefix!r} line from {process.args!r}: {seen!r}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; any still running at its end are killed by pid."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)


def test_openssl_s_server_accepts_our_client_and_reads_its_identity(
    pkis: PkiFactory, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    pki = pkis["p256"]
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"{LOOPBACK}:0", "-naccept", "1", "-rev",
         "-cert", str(pki.server.crt), "-key", str(pki.server.key),
         "-cert_chain", str(intermediates_file(pki.server, tmp_path)),
         "-CAfile", str(pki.root_file), "-no-CApath", "-no-CAstore",
         "-Verify", "2", "-verify_return_error", "-x509_strict", "-purpose", "sslclient"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    processes.append(server)
    accept_line, early_output = read_until_line(server, b"ACCEPT")
    port = int(accept_line.strip().rsplit(b":", 1)[1])
    context = client_context(pki.root_file, pki.client.crt, pki.client.key)
    with (
        socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_DNS) as tls,
    ):
        tls.sendall(b"ping\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = tls.recv(64)
            assert chunk, "s_server closed without answering"
            reply += chunk
    assert reply == b"gnip\n"  # -rev: the server echoes each line reversed
    rest, _ = server.communicate(timeout=TIMEOUT)
    output = (early_output + rest).decode(errors="replace")
    assert server.returncode == 0, output
    assert "Peer certificate: O = Example, OU = admin, OU = ops, CN = alice" in output, output
    assert "Verification: OK" in output and "verify error" not in output


def test_openssl_s_client_talks_to_our_server_and_checks_the_root(
    pkis: PkiFactory, tmp_path: Path
) -> None:
    pki, foreign = pkis["p256"], pkis["foreign"]

    def s_client(root: Path) -> tuple[subprocess.CompletedProcess[str], ServerSide]:
        side = serve_once(server_context(pki.root_file, pki.server.crt, pki.server.key, TLS13))
        result = subprocess.run(
            ["openssl", "s_client", "-connect", f"{LOOPBACK}:{side.port}", "-servername", SERVER_DNS,
             "-CAfile", str(root), "-no-CApath", "-no-CAstore", "-verify_return_error",
             "-verify_hostname", SERVER_DNS, "-x509_strict", "-purpose", "sslserver",
             "-cert", str(pki.client.crt), "-key", str(pki.client.key),
             "-cert_chain", str(intermediates_file(pki.client, tmp_path)), "-quiet"],
            input="ping", capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )
        side.join()
        return result, side

    accepted, side = s_client(pki.root_file)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout == "pong:ping"
    assert side.peer is not None and peer_attributes(side.peer, "commonName") == ["alice"]

    refused, side = s_client(foreign.root_file)  # a client that trusts another root
    assert refused.returncode != 0
    assert "pong" not in refused.stdout
    assert side.received == b""


# --------------------------------------------------------------------------------------
# 5. PKCS#12 bundles
# --------------------------------------------------------------------------------------

P12_ENV: dict[str, str | None] = {"MCP_PKI_P12_PASSPHRASE": P12_PASSPHRASE}


def p12_info(path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """`openssl pkcs12 -info` with the passphrase from the environment, never from argv."""
    monkeypatch.setenv("TEST_P12_PASS", P12_PASSPHRASE)
    result = openssl("pkcs12", "-info", "-nokeys", "-nocerts", "-in", str(path), "-passin", "env:TEST_P12_PASS")
    assert result.returncode == 0, result.stderr
    # Only the structure: certificate bodies are base64, where any three letters turn up.
    return result.stdout + result.stderr


def assert_bundle_holds(path: Path, issued: Issued, root: Path, friendly_name: bytes) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    bundle = pkcs12.load_pkcs12(path.read_bytes(), P12_PASSPHRASE.encode())
    key = load_pem_private_key(issued.key.read_bytes(), None)
    assert bundle.key is not None and bundle.key.public_key() == key.public_key()
    assert bundle.cert is not None and bundle.cert.certificate == issued.leaf
    assert bundle.cert.friendly_name == friendly_name
    assert [c.certificate for c in bundle.additional_certs] == [
        *issued.intermediates, x509.load_pem_x509_certificate(root.read_bytes())
    ]
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(path.read_bytes(), b"not the passphrase")


def test_issue_p12_is_aes256_pbkdf2_and_holds_key_and_chain(
    ca: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca.ok("issue", "client", "alice", "--email", CLIENT_EMAIL, "--p12", env=P12_ENV)
    issued = Issued(ca.cwd / "alice")
    assert_bundle_holds(issued.folder / "tls.p12", issued, ca.home / "ca.crt", b"alice")
    info = p12_info(issued.folder / "tls.p12", monkeypatch)
    assert "MAC: sha256" in info
    assert info.count("PBES2, PBKDF2, AES-256-CBC") == 2, info  # certificates and key alike
    assert "TripleDES" not in info and "RC2" not in info


def test_issue_p12_legacy_is_3des_with_a_sha1_mac(ca: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """For old macOS keychains and Java. OpenSSL 3 reads it without -legacy: 3DES is in its
    default provider, only RC2 and single DES moved to the legacy one."""
    ca.ok("issue", "server", "web", "--dns", SERVER_DNS, "--p12", "--p12-legacy", env=P12_ENV)
    issued = Issued(ca.cwd / "web")
    assert_bundle_holds(issued.folder / "tls.p12", issued, ca.home / "ca.crt", b"web")
    info = p12_info(issued.folder / "tls.p12", monkeypatch)
    assert "MAC: sha1" in info
    assert info.count("pbeWithSHA1And3-KeyTripleDES-CBC") == 2, info
    assert "AES" not in info


def test_export_p12_with_the_key_you_hold(ca: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    ca.ok("issue", "client", "alice", "--role", "admin")
    issued = Issued(ca.cwd / "alice")
    ca.ok("export", "alice", "--format", "p12", "--key", "alice/tls.key", "--out", "alice.p12",
          env=P12_ENV)
    assert_bundle_holds(ca.cwd / "alice.p12", issued, ca.home / "ca.crt", b"alice")
    assert "PBES2, PBKDF2, AES-256-CBC" in p12_info(ca.cwd / "alice.p12", monkeypatch)


def test_p12_refusals_are_clean_and_change_nothing(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    ca.ok("issue", "client", "bob")
    snapshot = Snapshot(ca)
    # no passphrase for the bundle (the CLI runner is not a terminal, so no prompt)
    export = ("export", "alice", "--format", "p12", "--out", "a.p12")
    assert_clean_error(ca("issue", "client", "carol", "--p12"), "passphrase")
    assert_clean_error(ca(*export, "--key", "alice/tls.key"), "passphrase")
    # someone else's key (option conflicts are covered in test_bad_input.py)
    assert_clean_error(ca(*export, "--key", "bob/tls.key", env=P12_ENV), "does not belong")
    snapshot.assert_unchanged()


# --------------------------------------------------------------------------------------
# 6. Certificate signing requests: only the key and the approved names are taken
# --------------------------------------------------------------------------------------


P256 = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")


def make_csr(folder: Path, *options: str, der: bool = False, name: str = "req") -> Path:
    """A CSR made by `openssl req`, its key next to it as NAME.key."""
    path = folder / (f"{name}.der" if der else f"{name}.pem")
    result = openssl("req", "-new", "-nodes", "-keyout", str(folder / f"{name}.key"),
                     "-out", str(path), *(["-outform", "DER"] if der else []), *options)
    assert result.returncode == 0, result.stderr
    return path


EVIL_CSR = (
    *P256, "-subj", "/CN=evil/OU=admin",
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "subjectAltName=DNS:evil.example.com",
    "-addext", "keyUsage=keyCertSign",
)


def test_csr_gives_only_its_public_key(ca: Cli, tmp_path: Path) -> None:
    request_file = make_csr(tmp_path, *EVIL_CSR)
    request = x509.load_pem_x509_csr(request_file.read_bytes())
    assert request.extensions.get_extension_for_class(x509.BasicConstraints).value.ca  # it did ask
    result = ca.ok("issue", "server", "web", "--csr", str(request_file), "--dns", SERVER_DNS)

    out = ca.cwd / "web"
    # no tls.key: the key stays with the requester
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt"]
    leaf = Issued(out).leaf
    requester_key = load_pem_private_key((tmp_path / "req.key").read_bytes(), None)
    assert leaf.public_key() == request.public_key() == requester_key.public_key()
    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value == x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.DNSName(SERVER_DNS)]
    assert attribute_values(leaf.subject, NameOID.COMMON_NAME) == ["web"]
    assert attribute_values(leaf.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == []  # the CSR's OU=admin is no role

    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1, result.stderr
    assert "DNS:evil.example.com" in warnings[0] and "CN:evil" in warnings[0]
    verified = openssl_verify(ca.home / "ca.crt", out / "tls.crt", "sslserver",
                              "-verify_hostname", SERVER_DNS)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_csr_client_gets_roles_from_the_command_line_only(ca: Cli, tmp_path: Path) -> None:
    request_file = make_csr(tmp_path, *EVIL_CSR)
    ca.ok("issue", "client", "alice", "--csr", str(request_file), "--role", "reader")
    leaf = Issued(ca.cwd / "alice").leaf
    assert attribute_values(leaf.subject, NameOID.COMMON_NAME) == ["alice"]
    assert attribute_values(leaf.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["reader"]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(x509.ExtensionNotFound):  # no name approved, none signed
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize("key_options", [
    ("-newkey", "rsa:2048"),
    ("-newkey", "ed25519"),
    ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"),
], ids=["rsa2048", "ed25519", "p384"])
def test_csr_key_types_we_accept(ca: Cli, tmp_path: Path, key_options: tuple[str, ...]) -> None:
    request_file = make_csr(tmp_path, *key_options, "-subj", "/CN=web", der=True)
    ca.ok("issue", "server", "web", "--csr", str(request_file), "--dns", SERVER_DNS)
    leaf = Issued(ca.cwd / "web").leaf
    assert leaf.public_key() == x509.load_der_x509_csr(request_file.read_bytes()).public_key()
    verified = openssl_verify(ca.home / "ca.crt", ca.cwd / "web" / "tls.crt", "sslserver")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize(("key_options", "fragment"), [
    (("-newkey", "rsa:1024"), "1024 bits"),
    (("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"), "secp256k1"),
], ids=["rsa1024", "secp256k1"])
def test_csr_with_a_weak_key_is_refused(
    ca: Cli, key_options: tuple[str, ...], fragment: str
) -> None:
    request_file = make_csr(ca.cwd, *key_options, "-subj", "/CN=web")
    snapshot = Snapshot(ca)
    result = ca("issue", "server", "web", "--csr", str(request_file), "--dns", SERVER_DNS)
    assert_clean_error(result, fragment)
    snapshot.assert_unchanged()


@pytest.mark.parametrize("key_options", [P256, ("-newkey", "rsa:2048")], ids=["p256", "rsa2048"])
def test_csr_with_a_broken_signature_is_refused(ca: Cli, key_options: tuple[str, ...]) -> None:
    request_file = make_csr(ca.cwd, *key_options, "-subj", "/CN=web", der=True)
    data = bytearray(request_file.read_bytes())
    data[-1] ^= 0x01  # the last byte of the signature: the DER structure stays intact
    request_file.write_bytes(bytes(data))
    tampered = x509.load_der_x509_csr(bytes(data))  # still parses: the signature check must catch it
    assert not tampered.is_signature_valid
    snapshot = Snapshot(ca)
    result = ca("issue", "server", "web", "--csr", str(request_file), "--dns", SERVER_DNS)
    assert_clean_error(result, "signature")
    snapshot.assert_unchanged()


@pytest.mark.parametrize("content", [
    b"this is not a certificate request\n",
    b"",
    b"\x30\x82\x01\x00garbage",
    b"-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgcmVxdWVzdA==\n-----END CERTIFICATE REQUEST-----\n",
    None,  # a certificate, not a request
], ids=["text", "empty", "truncated-der", "bad-pem", "a-certificate"])
def test_garbage_csr_is_refused(ca: Cli, content: bytes | None) -> None:
    certificate = (ca.home / "ca.crt").read_bytes()
    (ca.cwd / "request.pem").write_bytes(certificate if content is None else content)
    snapshot = Snapshot(ca)
    result = ca("issue", "server", "web", "--csr", "request.pem", "--dns", SERVER_DNS)
    assert_clean_error(result, "malformed CSR")
    snapshot.assert_unchanged()
