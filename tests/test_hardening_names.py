"""Name constraints for every name type, and the limits on what one certificate may carry.

A constrained CA (any ``--permit-*``) must refuse, and make relying parties refuse, every
name outside its policy: DNS, IP, email and URI alike. Everything is real: the CLI
in-process, the inventory's own CA key, OpenSSL and pkilint as subprocesses, and Python TLS
handshakes over 127.0.0.1 bounded by timeouts.
"""

import ipaddress
import socket
import sqlite3
import ssl
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import PASSPHRASE, Cli, Snapshot, assert_clean_error, openssl, pkilint_cert

TIMEOUT = 5.0  # seconds, for every socket and thread below
ALL_IPV4, ALL_IPV6 = ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")


def issuing_ca(cli: Cli) -> x509.Certificate:
    with closing(sqlite3.connect(cli.db)) as connection:
        (pem,) = connection.execute("SELECT certificate_pem FROM authorities WHERE role = 'issuing'").fetchone()
    return x509.load_pem_x509_certificate(pem.encode())


def constraints_of(certificate: x509.Certificate) -> x509.NameConstraints:
    extension = certificate.extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical
    return extension.value


def openssl_verify(root: Path, chain: Path, purpose: str) -> str:
    """`openssl verify` trusting only `root`; returns "" when it verifies, else its output."""
    result = openssl("verify", "-no-CApath", "-no-CAstore", "-x509_strict", "-purpose", purpose,
                     "-CAfile", str(root), "-untrusted", str(chain), str(chain))
    return "" if result.returncode == 0 else result.stdout + result.stderr


def lint_clean(certificate: x509.Certificate, path: Path) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    assert pkilint_cert(path) == ""


def hand_signed_server(cli: Cli, folder: Path, *names: x509.GeneralName) -> Path:
    """A server certificate signed outside the tool with the issuing CA's own key, as an
    attacker holding the key (or a buggy signer) would make it: tls.crt (with the issuing CA)
    and tls.key in `folder`."""
    issuing = issuing_ca(cli)
    with closing(sqlite3.connect(cli.db)) as connection:
        (encrypted,) = connection.execute(
            "SELECT encrypted_key_pem FROM authorities WHERE role = 'issuing'").fetchone()
    issuer_key = load_pem_private_key(encrypted.encode(), PASSPHRASE.encode())
    assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made")]))
        .issuer_name(issuing.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    folder.mkdir()
    (folder / "tls.crt").write_bytes(b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (leaf, issuing)))
    (folder / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder


def handshake(root: Path, server_folder: Path, server_hostname: str) -> str:
    """One TLS handshake over loopback: a Python ssl server presenting the folder's
    certificate, a strict Python client trusting only `root`. Returns "" on success, else the
    client's verification error."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server_folder / "tls.crt", server_folder / "tls.key")
    client_context = ssl.create_default_context(cafile=str(root))
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.settimeout(TIMEOUT)
            try:
                with server_context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused us: what the failing case expects

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
                    client_context.wrap_socket(raw, server_hostname=server_hostname):
                outcome = ""
        except ssl.SSLCertVerificationError as exc:
            outcome = exc.verify_message
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    return outcome


# --- item 11: every name type is constrained ----------------------------------------------


def test_permit_dns_alone_shuts_off_ip_email_and_uri_names(mcp: Cli, tmp_path: Path) -> None:
    """A "DNS-only" CA used to sign IP:8.8.8.8, URI:spiffe://evil.com and email:ceo@evil.com."""
    mcp.ok("init-ca", "--name", "Test", "--permit-dns", "example.com")
    constraints = constraints_of(issuing_ca(mcp))
    assert x509.DNSName("example.com") in (constraints.permitted_subtrees or [])
    excluded = constraints.excluded_subtrees or []
    assert x509.IPAddress(ALL_IPV4) in excluded and x509.IPAddress(ALL_IPV6) in excluded
    lint_clean(issuing_ca(mcp), tmp_path / "issuing.pem")

    snapshot = Snapshot(mcp)
    for args, fragment in (
        (("server", "web", "--dns", "web.example.com", "--ip", "8.8.8.8"), "IP address 8.8.8.8"),
        (("server", "web", "--dns", "web.example.com", "--ip", "::1"), "IP address ::1"),
        (("client", "bob", "--uri", "spiffe://evil.com/agent"), "URI 'spiffe://evil.com/agent'"),
        (("client", "bob", "--uri", "spiffe://example.com/agent"), "URI 'spiffe://example.com/agent'"),
        (("client", "bob", "--email", "ceo@evil.com"), "email address 'ceo@evil.com'"),
        (("client", "bob", "--email", "bob@example.com"), "email address 'bob@example.com'"),
        (("server", "web", "--dns", "web.evil.com"), "DNS name 'web.evil.com'"),
    ):
        result = mcp("issue", *args)
        assert_clean_error(result, fragment)
        assert "outside this CA's permitted names" in result.stderr
        assert "IP: none; email: none; URI: none" in result.stderr
    snapshot.assert_unchanged()
    mcp.ok("issue", "server", "web", "--dns", "web.example.com")
    mcp.ok("issue", "client", "bob")


def test_permit_ip_email_and_uri_allow_exactly_their_rfc5280_forms(mcp: Cli, tmp_path: Path) -> None:
    mcp.ok("init-ca", "--name", "Test", "--permit-dns", "example.com", "--permit-ip", "127.0.0.0/8",
           "--permit-ip", "fd00::/8", "--permit-email", "example.com", "--permit-email", ".corp.example.com",
           "--permit-uri", ".agents.example.com")
    issuing = issuing_ca(mcp)
    constraints = constraints_of(issuing)
    assert constraints.permitted_subtrees == [
        x509.DNSName("example.com"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")), x509.IPAddress(ipaddress.ip_network("fd00::/8")),
        x509.RFC822Name("example.com"), x509.RFC822Name(".corp.example.com"),
        x509.UniformResourceIdentifier(".agents.example.com"),
    ]
    assert constraints.excluded_subtrees is None
    lint_clean(issuing, tmp_path / "issuing.pem")

    mcp.ok("issue", "server", "web", "--dns", "web.example.com", "--ip", "127.0.0.1", "--ip", "fd00::5")
    mcp.ok("issue", "client", "alice", "--email", "alice@example.com", "--email", "alice@eu.corp.example.com",
           "--uri", "spiffe://build.agents.example.com/ci")
    root = mcp.home / "ca.crt"
    assert openssl_verify(root, mcp.cwd / "web" / "tls.crt", "sslserver") == ""
    assert openssl_verify(root, mcp.cwd / "alice" / "tls.crt", "sslclient") == ""

    snapshot = Snapshot(mcp)
    for args, fragment in (
        (("server", "x", "--ip", "10.0.0.1"), "IP address 10.0.0.1"),
        (("server", "x", "--ip", "fe80::1"), "IP address fe80::1"),
        # a host form covers that host only, a .domain form only the hosts below it
        (("client", "x", "--email", "x@sub.example.com"), "email address 'x@sub.example.com'"),
        (("client", "x", "--email", "x@corp.example.com"), "email address 'x@corp.example.com'"),
        (("client", "x", "--uri", "spiffe://agents.example.com/ci"), "URI 'spiffe://agents.example.com/ci'"),
        # a URI without a host name is under no URI constraint's reach: refused
        (("client", "x", "--uri", "urn:example:agent"), "URI 'urn:example:agent'"),
        (("client", "x", "--uri", "https://127.0.0.1/x"), "URI 'https://127.0.0.1/x'"),
    ):
        assert_clean_error(mcp("issue", *args), fragment)
    snapshot.assert_unchanged()


def test_names_approved_for_a_csr_are_checked_like_any_other(mcp: Cli, tmp_path: Path) -> None:
    mcp.ok("init-ca", "--name", "Test", "--permit-dns", "example.com")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bob")]))
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("8.8.8.8"))]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    (tmp_path / "bob.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    snapshot = Snapshot(mcp)
    assert_clean_error(
        mcp("issue", "server", "bob", "--csr", str(tmp_path / "bob.csr"), "--ip", "8.8.8.8"), "IP address 8.8.8.8")
    assert_clean_error(
        mcp("issue", "client", "bob", "--csr", str(tmp_path / "bob.csr"), "--email", "bob@evil.com"),
        "email address 'bob@evil.com'")
    snapshot.assert_unchanged()


def test_relying_parties_refuse_a_certificate_for_an_excluded_ip(mcp: Cli, tmp_path: Path) -> None:
    """The constraint binds the CA key itself: a leaf signed with it outside the tool for an
    excluded IP fails `openssl verify` and a Python TLS handshake; the same key's leaf for a
    permitted DNS name passes both (the control)."""
    mcp.ok("init-ca", "--name", "Test", "--permit-dns", "example.com")
    root = mcp.home / "ca.crt"
    assert_clean_error(mcp("issue", "server", "web", "--dns", "web.example.com", "--ip", "127.0.0.1"),
                       "IP address 127.0.0.1")
    by_ip = hand_signed_server(mcp, tmp_path / "by-ip", x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    by_dns = hand_signed_server(mcp, tmp_path / "by-dns", x509.DNSName("web.example.com"))

    assert "excluded subtree violation" in openssl_verify(root, by_ip / "tls.crt", "sslserver")
    assert openssl_verify(root, by_dns / "tls.crt", "sslserver") == ""
    assert "excluded subtree violation" in handshake(root, by_ip, "127.0.0.1")
    assert handshake(root, by_dns, "web.example.com") == ""


def test_a_permitted_ip_certificate_from_the_tool_completes_a_handshake(mcp: Cli, tmp_path: Path) -> None:
    mcp.ok("init-ca", "--name", "Test", "--single-tier", "--permit-ip", "127.0.0.1/32")
    root_certificate = x509.load_pem_x509_certificate((mcp.home / "ca.crt").read_bytes())
    constraints = constraints_of(root_certificate)
    assert constraints.excluded_subtrees == [x509.DNSName("")]  # no --permit-dns: no DNS name
    lint_clean(root_certificate, tmp_path / "root.pem")
    assert_clean_error(mcp("issue", "server", "web", "--dns", "web.example.com", "--ip", "127.0.0.1"),
                       "DNS name 'web.example.com'")
    mcp.ok("issue", "server", "web", "--ip", "127.0.0.1")
    assert handshake(mcp.home / "ca.crt", mcp.cwd / "web", "127.0.0.1") == ""
    # a dotted NAME would be read as a DNS name by OpenSSL: refused before signing
    assert_clean_error(mcp("issue", "client", "ci.runner"), "ci.runner")


@pytest.mark.parametrize(("option", "value", "fragment"), [
    ("--permit-ip", "10.0.0.1/8", "invalid --permit-ip"),  # host bits set
    ("--permit-ip", "fe80::%eth0/64", "invalid --permit-ip"),
    ("--permit-ip", "10.0.0.0/\u0668", "invalid --permit-ip"),
    ("--permit-ip", "example.com", "invalid --permit-ip"),
    ("--permit-email", "internal", "invalid --permit-email"),  # pkilint: not an FQDN
    ("--permit-email", "@example.com", "invalid email"),
    ("--permit-uri", "spiffe://example.com", "invalid --permit-uri"),
    ("--permit-uri", "ops@example.com", "invalid --permit-uri"),
])
def test_bad_permit_values_change_nothing(mcp: Cli, option: str, value: str, fragment: str) -> None:
    result = mcp("init-ca", "--name", "Test", option, value, env={"MCP_PKI_PASSPHRASE": None})
    assert_clean_error(result, fragment)
    assert not mcp.home.exists()


# --- item 12: limits -----------------------------------------------------------------------


def test_at_most_100_names_32_roles_and_2048_character_uris(ca: Cli) -> None:
    snapshot = Snapshot(ca)
    dns = [arg for i in range(101) for arg in ("--dns", f"h{i}.example.com")]
    assert_clean_error(ca("issue", "server", "web", *dns), "at most 100")
    roles = [arg for i in range(33) for arg in ("--role", f"r{i}")]
    assert_clean_error(ca("issue", "client", "bob", *roles), "at most 32")
    long_uri = "https://example.com/" + "a" * (2049 - len("https://example.com/"))
    assert_clean_error(ca("issue", "client", "bob", "--uri", long_uri), "at most 2048")
    snapshot.assert_unchanged()
    ca.ok("issue", "server", "web", *dns[:200])
    ca.ok("issue", "client", "bob", *roles[:64], "--uri", long_uri[:2048])


def test_validities_and_crl_lifetimes_under_an_hour_are_refused(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    snapshot = Snapshot(ca)
    assert_clean_error(ca("issue", "client", "bob", "--validity", "59m"), "at least 1h")
    assert_clean_error(ca("renew", "alice", "--validity", "30m"), "at least 1h")
    assert_clean_error(ca("crl", "--next-update", "10m"), "at least 1h")
    (ca.home / "config.yaml").write_text("crl:\n  next_update: 5m\n")
    assert_clean_error(ca("crl"), "at least 1h")
    (ca.home / "config.yaml").unlink()
    snapshot.assert_unchanged()
    ca.ok("issue", "client", "bob", "--validity", "60m")


@pytest.mark.parametrize("text", ["\u0663d", "1\u0e53h", "\uff19\uff10d", "\u0968\u0966d"])
def test_unicode_digits_are_not_durations(ca: Cli, text: str) -> None:
    assert_clean_error(ca("issue", "client", "bob", "--validity", text), "invalid duration")
    assert_clean_error(ca("list", "--expiring-within", text), "invalid duration")


def test_an_ipv6_zone_id_is_refused_not_dropped(ca: Cli) -> None:
    snapshot = Snapshot(ca)
    assert_clean_error(ca("issue", "server", "web", "--ip", "fe80::1%eth0"), "zone id")
    assert_clean_error(ca("issue", "server", "web", "--ip", "fe80::1%1"), "zone id")
    snapshot.assert_unchanged()


def test_a_roster_is_held_to_the_same_limits(ca: Cli) -> None:
    roles = ", ".join(f"r{i}" for i in range(33))
    roster = ca.cwd / "team.yaml"
    roster.write_text(
        "clients:\n"
        f"  - name: alice\n    roles: [{roles}]\n"
        "  - name: bob\n    validity: 30m\n"
    )
    snapshot = Snapshot(ca)
    result = ca("apply", str(roster), "--out-root", str(ca.cwd / "certs"))
    assert_clean_error(result, "at most 32")
    assert "at least 1h" in result.stderr
    snapshot.assert_unchanged()
