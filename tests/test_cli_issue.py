"""init-ca and issue through the command line: the happy paths and their files."""

import json
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import Cli, assert_clean_error, table_counts


def test_init_ca_creates_two_tiers_and_writes_the_root(mcp: Cli) -> None:
    result = mcp.ok("init-ca", "--name", "Acme", "--org", "Acme Corp", "--json")
    document = json.loads(result.stdout)
    assert [a["role"] for a in document["authorities"]] == ["root", "issuing"]
    root = x509.load_pem_x509_certificate((mcp.home / "ca.crt").read_bytes())
    assert root.subject.rfc4514_string() == "CN=Acme Root CA,O=Acme Corp"
    assert table_counts(mcp.db)["authorities"] == 2
    assert table_counts(mcp.db)["audit_log"] == 2  # init-ca, and the checkpoint signing it


def test_ca_keys_are_encrypted_at_rest(ca: Cli) -> None:
    raw = ca.db.read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in raw
    assert b"BEGIN PRIVATE KEY" not in raw
    assert b"correct horse" not in raw


def test_issue_server_writes_chain_key_and_root(ca: Cli) -> None:
    result = ca.ok("issue", "server", "files", "--dns", "files.internal", "--ip", "10.0.0.5", "--json")
    issued = json.loads(result.stdout)
    out = ca.cwd / "files"
    chain = x509.load_pem_x509_certificates((out / "tls.crt").read_bytes())
    assert len(chain) == 2  # leaf then the issuing CA
    leaf = chain[0]
    assert format(leaf.serial_number, "x") == issued["serial"]
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["files.internal"]
    assert (out / "ca.crt").read_bytes() == (ca.home / "ca.crt").read_bytes()
    key = load_pem_private_key((out / "tls.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == leaf.public_key()
    assert stat.S_IMODE((out / "tls.key").stat().st_mode) == 0o600
    assert [Path(p).name for p in issued["files"]] == ["tls.crt", "ca.crt", "tls.key"]


def test_issue_client_carries_name_roles_and_email(ca: Cli) -> None:
    ca.ok("issue", "client", "alice", "--email", "alice@example.com", "--role", "admin", "--role", "ops",
          "--out", "alice-certs")
    leaf = x509.load_pem_x509_certificates((ca.cwd / "alice-certs" / "tls.crt").read_bytes())[0]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    roles = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    assert roles == ["admin", "ops"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]


def test_serials_are_random_positive_and_at_most_20_octets(ca: Cli) -> None:
    serials = []
    for index in range(5):
        issued = json.loads(ca.ok("issue", "client", f"agent{index}", "--json").stdout)
        serials.append(int(issued["serial"], 16))
    assert len(set(serials)) == 5
    for serial in serials:
        assert 0 < serial < 2**159
        assert serial.bit_length() > 64  # 159 random bits: below 2**64 once in 2**95


def test_list_and_show_report_what_was_issued(ca: Cli) -> None:
    server = json.loads(ca.ok("issue", "server", "files", "--dns", "files.internal", "--json").stdout)
    ca.ok("issue", "client", "alice", "--role", "admin")
    listed = json.loads(ca.ok("list", "--json").stdout)
    assert {(c["name"], c["kind"], c["status"]) for c in listed} == {
        ("files", "server", "valid"), ("alice", "client", "valid")
    }
    for entry in listed:
        assert set(entry) >= {"serial", "name", "kind", "status", "not_after", "sans"}
    shown = json.loads(ca.ok("show", server["serial"][:10], "--json").stdout)
    assert shown["name"] == "files"
    assert shown["chain"] == ["CN=Test Issuing CA,O=Example", "CN=Test Root CA,O=Example"]
    assert 88 <= shown["days_left"] <= 90
    text = ca.ok("show", "alice").stdout
    for fragment in ("roles        admin", "clientAuth", "days left", "CN=Test Issuing CA"):
        assert fragment in text
    assert json.loads(ca.ok("list", "--kind", "client", "--json").stdout)[0]["name"] == "alice"
    for typo in ("", "ali ce"):  # a filter that can match nothing is a mistake, not an empty list
        assert_clean_error(ca("list", "--name", typo), "invalid name")


def test_export_formats(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    pem = ca.ok("export", "alice").stdout
    assert pem.count("BEGIN CERTIFICATE") == 1
    chain = ca.ok("export", "alice", "--format", "chain").stdout
    assert chain.count("BEGIN CERTIFICATE") == 2
    ca.ok("export", "alice", "--format", "der", "--out", "alice.der")
    der = x509.load_der_x509_certificate((ca.cwd / "alice.der").read_bytes())
    assert der == x509.load_pem_x509_certificate(pem.encode())


def test_force_replaces_existing_files(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    first = (ca.cwd / "alice" / "tls.crt").read_bytes()
    ca.ok("issue", "client", "alice", "--force")
    assert (ca.cwd / "alice" / "tls.crt").read_bytes() != first
    assert not [p for p in (ca.cwd / "alice").iterdir() if p.name.startswith(".")]  # no temp files


def test_db_option_and_environment_choose_the_inventory(mcp: Cli, tmp_path: Path) -> None:
    elsewhere = tmp_path / "shared" / "team.db"
    elsewhere.parent.mkdir()
    url = f"sqlite:///{elsewhere}"
    mcp.ok("--db", url, "init-ca", "--name", "Team")
    assert elsewhere.exists() and not mcp.db.exists()
    mcp.ok("--db", url, "issue", "client", "alice")
    listed = json.loads(mcp.ok("list", "--json", env={"MCP_PKI_DB": url}).stdout)
    assert [c["name"] for c in listed] == ["alice"]
    assert table_counts(elsewhere)["certificates"] == 1
