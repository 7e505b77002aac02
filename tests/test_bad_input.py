"""Bad input: one clear ``Error: ...`` line, exit 1 (2 for click's own usage errors), and
nothing changed: no row, no file in the home or the work folder, no database created.

Also: passphrases, existing files and CAs, databases that are missing, foreign, corrupt or
from the future, the audit chain under tampering, and secrets that must never reach the
inventory or the audit output.
"""

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import (
    PASSPHRASE,
    VENV_BIN,
    Cli,
    Result,
    Snapshot,
    assert_clean_error,
    table_counts,
    tree,
)

SERVER = ("issue", "server", "files", "--dns", "files.internal")
CLIENT = ("issue", "client", "alice")


def assert_usage_error(result: Result, fragment: str) -> None:
    """click's own usage error: exit 2, one ``Error:`` line (after click's usage lines)."""
    assert result.exception is None, result.exception
    assert result.exit_code == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert fragment.lower() in errors[0].lower(), errors[0]
    assert "Traceback" not in result.stderr + result.stdout


def write_csr(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bob")]))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))


def serials(cli: Cli) -> list[str]:
    with sqlite3.connect(cli.db) as connection:
        return [r[0] for r in connection.execute("SELECT serial FROM certificates ORDER BY id")]


def inventory_bytes(cli: Cli) -> bytes:
    """The database and whatever write-ahead log is beside it."""
    return b"".join(p.read_bytes() for p in sorted(cli.home.glob("inventory.db*")) if p.is_file())


def run_console(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it (os._exit and all)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MCP_PKI_")}
    environment.update({"MCP_PKI_HOME": str(home), "MCP_PKI_PASSPHRASE": PASSPHRASE, **(env or {})})
    return subprocess.run([str(VENV_BIN / "mcp-pki"), *args], check=False, capture_output=True, text=True,
                          env=environment, cwd=home.parent, timeout=60)


# --- values the tool refuses ---------------------------------------------------------------

BAD_ISSUE_ARGS = [
    # NAME: a folder name and a CN, never a path
    pytest.param((*CLIENT[:2], "../x"), "invalid name", id="name-dotdot"),
    pytest.param((*CLIENT[:2], "a/b"), "invalid name", id="name-slash"),
    pytest.param((*CLIENT[:2], ".hidden"), "invalid name", id="name-leading-dot"),
    pytest.param((*CLIENT[:2], "bad\x07name"), "invalid name", id="name-control-char"),
    pytest.param((*CLIENT[:2], "new\nline"), "invalid name", id="name-newline"),
    pytest.param((*CLIENT[:2], "a" * 65), "invalid name", id="name-65-chars"),
    pytest.param(("issue", "server", "../x", "--dns", "files.internal"), "invalid name", id="server-name-dotdot"),
    pytest.param((*CLIENT, "--owner", "../x"), "invalid name", id="owner-dotdot"),
    # DNS
    pytest.param(("issue", "server", "files", "--dns", "localhost"), "invalid dns name", id="dns-single-label"),
    pytest.param(("issue", "server", "files", "--dns", "a..b.com"), "invalid dns name", id="dns-empty-label"),
    pytest.param(("issue", "server", "files", "--dns", "-x.example.com"), "invalid dns name", id="dns-leading-hyphen"),
    pytest.param(("issue", "server", "files", "--dns", "exa_mple.com"), "invalid dns name", id="dns-underscore"),
    pytest.param(("issue", "server", "files", "--dns", "*.example.com"), "--allow-wildcard", id="dns-wildcard"),
    pytest.param((*SERVER, "--dns", "files.internal."), "invalid dns name", id="dns-trailing-dot"),
    # IP, URI, email, role
    pytest.param(("issue", "server", "files", "--ip", "999.0.0.1"), "invalid ip address", id="ip-octet"),
    pytest.param(("issue", "server", "files", "--ip", "files.internal"), "invalid ip address", id="ip-name"),
    pytest.param((*SERVER, "--uri", "not a uri"), "invalid uri", id="uri-spaces"),
    pytest.param((*CLIENT, "--uri", "spiffe://"), "invalid uri", id="uri-no-authority"),
    pytest.param((*CLIENT, "--email", "alice"), "invalid email", id="email-no-at"),
    pytest.param((*CLIENT, "--email", "alice@localhost"), "invalid email", id="email-bad-domain"),
    pytest.param((*CLIENT, "--role", "-admin"), "invalid role", id="role-leading-hyphen"),
    pytest.param((*CLIENT, "--role", "ad min"), "invalid role", id="role-space"),
    # durations
    pytest.param((*CLIENT, "--validity", "0d"), "greater than zero", id="validity-zero"),
    pytest.param((*CLIENT, "--validity", "soon"), "invalid duration", id="validity-word"),
    pytest.param((*SERVER, "--validity", "-5d"), "invalid duration", id="validity-negative"),
    # combinations
    pytest.param(("issue", "server", "files"), "at least one --dns or --ip", id="server-no-names"),
    pytest.param(("issue", "server", "files", "--uri", "spiffe://acme/files"), "at least one --dns or --ip",
                 id="server-uri-only"),
    pytest.param((*CLIENT, "--p12-legacy"), "--p12-legacy needs --p12", id="p12-legacy-alone"),
    pytest.param((*CLIENT, "--csr", "req.csr", "--key-type", "p384"), "--key-type cannot be used with --csr",
                 id="csr-and-key-type"),
    pytest.param((*CLIENT, "--csr", "missing.csr"), "cannot read csr", id="csr-missing"),
    pytest.param((*CLIENT, "--csr", "garbage.csr"), "malformed csr", id="csr-garbage"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD_ISSUE_ARGS)
def test_bad_issue_input_is_refused_and_changes_nothing(ca: Cli, args: tuple[str, ...], fragment: str) -> None:
    write_csr(ca.cwd / "req.csr")
    (ca.cwd / "garbage.csr").write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n")
    snap = Snapshot(ca)
    assert_clean_error(ca(*args), fragment)
    snap.assert_unchanged()
    assert not (ca.cwd.parent / "x").exists()  # ../x never escaped the work folder


def test_the_same_commands_with_good_values_succeed(ca: Cli) -> None:
    """The controls for the table above: its failures come from the bad value alone."""
    ca.ok(*SERVER, "--ip", "10.0.0.5", "--uri", "spiffe://acme/files", "--validity", "30d")
    ca.ok("issue", "server", "wild", "--dns", "*.example.com", "--allow-wildcard")
    ca.ok(*CLIENT, "--email", "alice@example.com", "--role", "admin", "--owner", "team-a", "--p12",
          env={"MCP_PKI_P12_PASSPHRASE": "p12 secret"})
    ca.ok("issue", "client", "a" * 64)
    write_csr(ca.cwd / "req.csr")
    ca.ok("issue", "client", "bob", "--csr", "req.csr")
    assert table_counts(ca.db)["certificates"] == 5


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((*CLIENT, "--key-type", "dsa"), id="issue-client"),
        pytest.param((*SERVER, "--key-type", "rsa1024"), id="issue-server"),
        pytest.param(("init-ca", "--key-type", "p192"), id="init-ca"),
    ],
)
def test_unknown_key_type_is_a_click_usage_error(ca: Cli, args: tuple[str, ...]) -> None:
    snap = Snapshot(ca)
    assert_usage_error(ca(*args), "--key-type")
    snap.assert_unchanged()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(("list", "--expiring-within", "soon"), "invalid duration", id="list-expiring-within"),
        pytest.param(("audit", "--since", "soon"), "invalid --since", id="audit-since"),
        pytest.param(("export", "alice", "--format", "pem", "--key", "tls.key"), "--key is only used",
                     id="export-key-without-p12"),
        pytest.param(("export", "alice", "--format", "p12"), "--key", id="export-p12-without-key"),
    ],
)
def test_bad_options_of_reading_commands(ca: Cli, args: tuple[str, ...], fragment: str) -> None:
    ca.ok(*CLIENT)
    snap = Snapshot(ca)
    assert_clean_error(ca(*args), fragment)
    snap.assert_unchanged()


def test_p12_with_csr_is_refused(ca: Cli) -> None:
    write_csr(ca.cwd / "req.csr")
    snap = Snapshot(ca)
    result = ca("issue", "client", "bob", "--csr", "req.csr", "--p12", env={"MCP_PKI_P12_PASSPHRASE": "p12 secret"})
    assert_clean_error(result, "--p12")
    snap.assert_unchanged()


# --- init-ca -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        pytest.param(("init-ca",), {"MCP_PKI_PASSPHRASE": None}, "needs a passphrase", id="no-passphrase-no-tty"),
        pytest.param(("init-ca",), {"MCP_PKI_PASSPHRASE": "short"}, "at least 8", id="passphrase-7-chars"),
        pytest.param(("init-ca",), {"MCP_PKI_PASSPHRASE": ""}, "empty passphrase", id="passphrase-empty"),
        pytest.param(("--passphrase-file", "nowhere.txt", "init-ca"), {"MCP_PKI_PASSPHRASE": None},
                     "cannot read passphrase file", id="passphrase-file-missing"),
        pytest.param(("init-ca", "--validity", "soon"), {}, "invalid duration", id="validity-word"),
        pytest.param(("init-ca", "--validity", "0y"), {}, "greater than zero", id="validity-zero"),
        pytest.param(("init-ca", "--permit-dns", "bad_label.example.com"), {}, "invalid --permit-dns", id="permit-dns-bad-label"),
        pytest.param(("init-ca", "--name", "   "), {}, "invalid --name", id="blank-name"),
        pytest.param(("init-ca", "--org", "a\x01b"), {}, "invalid --org", id="org-control-char"),
    ],
)
def test_bad_init_ca_creates_nothing(mcp: Cli, args: tuple[str, ...], env: dict[str, str | None], fragment: str) -> None:
    snap = Snapshot(mcp)
    assert_clean_error(mcp(*args, env=env), fragment)
    snap.assert_unchanged()
    assert not mcp.db.exists()
    assert not (mcp.home / "ca.crt").exists()


def test_passphrase_of_exactly_8_characters_is_accepted(mcp: Cli) -> None:
    mcp.ok("init-ca", env={"MCP_PKI_PASSPHRASE": "12345678"})
    (mcp.cwd / "pass.txt").write_text("12345678\n")
    mcp.ok("--passphrase-file", "pass.txt", "issue", "client", "alice", env={"MCP_PKI_PASSPHRASE": None})


def test_init_ca_twice_refuses_and_keeps_the_first_ca(ca: Cli) -> None:
    database, root = ca.db.read_bytes(), (ca.home / "ca.crt").read_bytes()
    snap = Snapshot(ca)
    assert_clean_error(ca("init-ca", "--name", "Other"), "already")
    snap.assert_unchanged()
    assert (ca.home / "ca.crt").read_bytes() == root
    assert ca.db.read_bytes() == database
    ca.ok(*CLIENT)  # the first CA still signs with its passphrase


def test_init_ca_refusal_does_not_suggest_a_missing_option(ca: Cli) -> None:
    result = ca("init-ca")
    assert_clean_error(result, "already")
    assert "--force" not in result.stderr


def test_init_ca_refuses_when_ca_crt_exists_without_inventory(mcp: Cli) -> None:
    mcp.home.mkdir()
    (mcp.home / "ca.crt").write_text("someone else's root\n")
    snap = Snapshot(mcp)
    assert_clean_error(mcp("init-ca"), "ca.crt")
    snap.assert_unchanged()
    assert not mcp.db.exists()


def test_init_ca_refuses_an_inventory_that_has_a_ca_even_without_ca_crt(ca: Cli) -> None:
    for published in ("ca.crt", "crl.pem"):  # every file init-ca writes beside the inventory
        (ca.home / published).unlink(missing_ok=True)
    snap = Snapshot(ca)
    assert_clean_error(ca("init-ca"), "already has a CA")
    snap.assert_unchanged()
    assert not (ca.home / "ca.crt").exists()


def test_no_passphrase_warns_loudly_and_stores_plain_keys(mcp: Cli) -> None:
    result = mcp.ok("init-ca", "--no-passphrase", env={"MCP_PKI_PASSPHRASE": None})
    warning = [line for line in result.stderr.splitlines() if line.strip()]
    assert warning and warning[0].startswith("Warning:"), result.stderr
    assert "UNENCRYPTED" in result.stderr and "development" in result.stderr.lower()
    assert "unencrypted" not in result.stdout.lower()  # warnings go to stderr only
    raw = inventory_bytes(mcp)
    assert raw.count(b"-----BEGIN PRIVATE KEY-----") == 2  # root and issuing CA
    assert b"ENCRYPTED PRIVATE KEY" not in raw
    records = json.loads(mcp.ok("audit", "--json").stdout)
    assert records[0]["details"]["key_encrypted"] is False
    mcp.ok(*CLIENT, env={"MCP_PKI_PASSPHRASE": None})  # no passphrase needed to sign


# --- passphrases on issue ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        pytest.param(CLIENT, {"MCP_PKI_PASSPHRASE": "wrong horse battery"}, "wrong CA passphrase", id="wrong-env"),
        pytest.param(CLIENT, {"MCP_PKI_PASSPHRASE": None}, "needs a passphrase", id="none-no-tty"),
        pytest.param(("--passphrase-file", "wrong.txt", *CLIENT), {"MCP_PKI_PASSPHRASE": None},
                     "wrong CA passphrase", id="wrong-file"),
        pytest.param(("--passphrase-file", "missing.txt", *CLIENT), {}, "cannot read passphrase file",
                     id="missing-file"),
        pytest.param(("--passphrase-file", "empty.txt", *CLIENT), {}, "empty passphrase", id="empty-file"),
    ],
)
def test_issue_without_the_right_passphrase_changes_nothing(
    ca: Cli, args: tuple[str, ...], env: dict[str, str | None], fragment: str
) -> None:
    for name, text in (("wrong.txt", "wrong horse battery\n"), ("empty.txt", "\n")):
        (ca.cwd / name).write_text(text)
        (ca.cwd / name).chmod(0o600)  # others would be warned about
    counts = table_counts(ca.db)
    home_files = {k: v for k, v in tree(ca.home).items() if not k.startswith("inventory.db")}
    assert_clean_error(ca(*args, env=env), fragment)
    if fragment == "wrong CA passphrase":  # the refusal leaves its audit record, nothing else
        counts["audit_log"] += 1
    assert table_counts(ca.db) == counts
    assert {k: v for k, v in tree(ca.home).items() if not k.startswith("inventory.db")} == home_files
    assert not (ca.cwd / "alice").exists()


def test_passphrase_file_wins_and_its_newline_is_stripped(ca: Cli) -> None:
    (ca.cwd / "right.txt").write_text(PASSPHRASE + "\n")
    ca.ok("--passphrase-file", "right.txt", *CLIENT, env={"MCP_PKI_PASSPHRASE": "wrong horse battery"})


# --- existing output -----------------------------------------------------------------------

def test_issue_twice_into_the_same_folder_keeps_the_first_files(ca: Cli) -> None:
    first = json.loads(ca.ok(*CLIENT, "--json").stdout)
    snap = Snapshot(ca)
    assert_clean_error(ca(*CLIENT), "already exists")
    snap.assert_unchanged()
    assert serials(ca) == [first["serial"]]
    leaf = x509.load_pem_x509_certificates((ca.cwd / "alice" / "tls.crt").read_bytes())[0]
    assert format(leaf.serial_number, "x") == first["serial"]


def test_issue_refuses_when_only_one_output_file_exists(ca: Cli) -> None:
    (ca.cwd / "alice").mkdir()
    (ca.cwd / "alice" / "tls.key").write_text("my own key\n")
    snap = Snapshot(ca)
    assert_clean_error(ca(*CLIENT), "tls.key")
    snap.assert_unchanged()


def test_export_refuses_to_overwrite_without_force(ca: Cli) -> None:
    ca.ok(*CLIENT)
    (ca.cwd / "alice.pem").write_text("keep me\n")
    snap = Snapshot(ca)
    assert_clean_error(ca("export", "alice", "--out", "alice.pem"), "already exists")
    snap.assert_unchanged()


# --- references ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["show", "export"])
def test_unknown_ref(ca: Cli, command: str) -> None:
    ca.ok(*CLIENT)
    snap = Snapshot(ca)
    assert_clean_error(ca(command, "nosuchname"), "no certificate matches")
    assert_clean_error(ca(command, "0123456789abcdef"), "no certificate matches")
    snap.assert_unchanged()


@pytest.mark.parametrize("command", ["show", "export"])
def test_serial_prefix_shorter_than_8_digits_is_not_a_ref(ca: Cli, command: str) -> None:
    serial = json.loads(ca.ok(*CLIENT, "--json").stdout)["serial"]
    ca.ok(command, serial[:8])  # the control: 8 digits do resolve
    snap = Snapshot(ca)
    assert_clean_error(ca(command, serial[:7]), "no certificate matches")
    snap.assert_unchanged()


@pytest.mark.parametrize("command", ["show", "export"])
def test_name_shared_by_a_server_and_a_client_is_ambiguous(ca: Cli, command: str) -> None:
    server = json.loads(ca.ok("issue", "server", "dup", "--dns", "dup.internal", "--out", "s", "--json").stdout)
    client = json.loads(ca.ok("issue", "client", "dup", "--out", "c", "--json").stdout)
    snap = Snapshot(ca)
    result = ca(command, "dup")
    assert_clean_error(result, "dup")
    assert server["serial"] in result.stderr and client["serial"] in result.stderr
    snap.assert_unchanged()
    ca.ok(command, server["serial"])  # a serial still resolves


@pytest.mark.parametrize("command", ["show", "export"])
def test_serial_prefix_matching_two_certificates_is_ambiguous(ca: Cli, command: str) -> None:
    ca.ok("issue", "client", "one")
    ca.ok("issue", "client", "two")
    crafted = ["deadbeef" + "0" * 31 + "1", "deadbeef" + "0" * 31 + "2"]
    with sqlite3.connect(ca.db) as connection:
        for serial, name in zip(crafted, ["one", "two"]):
            connection.execute("UPDATE certificates SET serial = ? WHERE name = ?", (serial, name))
    snap = Snapshot(ca)
    result = ca(command, "deadbeef")
    assert_clean_error(result, "deadbeef")
    assert crafted[0] in result.stderr and crafted[1] in result.stderr
    snap.assert_unchanged()
    ca.ok(command, "deadbeef" + "0" * 31 + "2")


# --- the inventory itself ------------------------------------------------------------------

NO_INVENTORY_COMMANDS = [
    pytest.param(("list",), id="list"),
    pytest.param(("show", "alice"), id="show"),
    pytest.param(("export", "alice"), id="export"),
    pytest.param(("audit",), id="audit"),
    pytest.param(("audit", "verify"), id="audit-verify"),
    pytest.param(("db", "upgrade"), id="db-upgrade"),
    pytest.param(CLIENT, id="issue-client"),
    pytest.param(SERVER, id="issue-server"),
]


@pytest.mark.parametrize("args", NO_INVENTORY_COMMANDS)
@pytest.mark.parametrize("home_exists", [False, True], ids=["no-home", "empty-home"])
def test_commands_on_a_home_without_inventory_create_nothing(mcp: Cli, args: tuple[str, ...], home_exists: bool) -> None:
    if home_exists:
        mcp.home.mkdir()
    snap = Snapshot(mcp)
    assert_clean_error(mcp(*args), "init-ca")
    snap.assert_unchanged()
    assert not mcp.db.exists()
    assert mcp.home.exists() == home_exists
    if home_exists:
        assert not list(mcp.home.iterdir())  # not even -wal/-shm files


def _foreign_database(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE recipes (name TEXT, minutes INTEGER)")
        connection.execute("INSERT INTO recipes VALUES ('bread', 240)")
    connection.close()


FOREIGN_DB_COMMANDS = [
    pytest.param(("list",), id="list"),
    pytest.param(("init-ca",), id="init-ca"),
    pytest.param(CLIENT, id="issue"),
    pytest.param(("audit", "verify"), id="audit-verify"),
    pytest.param(("db", "upgrade"), id="db-upgrade"),
]


@pytest.mark.parametrize("args", FOREIGN_DB_COMMANDS)
def test_a_database_that_is_not_ours_is_refused(mcp: Cli, args: tuple[str, ...]) -> None:
    _foreign_database(mcp.db)
    snap = Snapshot(mcp)
    assert_clean_error(mcp(*args), "not an mcp-pki inventory")
    snap.assert_unchanged()  # no table of ours was added, no row touched, no ca.crt written
    with sqlite3.connect(mcp.db) as connection:
        assert connection.execute("SELECT * FROM recipes").fetchall() == [("bread", 240)]


def test_a_database_that_is_not_ours_is_left_byte_for_byte(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _foreign_database(home / "inventory.db")
    before = (home / "inventory.db").read_bytes()
    result = run_console(home, "list")
    assert result.returncode == 1 and result.stderr.startswith("Error: "), result.stderr
    left = sorted(p.name for p in home.iterdir()), (home / "inventory.db").read_bytes() == before
    assert left == (["inventory.db"], True)  # no -wal/-shm beside it, the same bytes


@pytest.mark.parametrize("args", [("list",), CLIENT, ("init-ca",), ("db", "upgrade")], ids=lambda a: "-".join(a))
def test_a_corrupt_database_is_refused_untouched(mcp: Cli, args: tuple[str, ...]) -> None:
    mcp.home.mkdir()
    garbage = bytes((i * 7919 + 13) % 256 for i in range(8192))
    mcp.db.write_bytes(garbage)
    before = tree(mcp.home), tree(mcp.cwd)  # Snapshot cannot count the rows of garbage
    assert_clean_error(mcp(*args), "not a usable mcp-pki inventory")
    assert (tree(mcp.home), tree(mcp.cwd)) == before
    assert mcp.db.read_bytes() == garbage


@pytest.mark.parametrize("args", [("list",), CLIENT, ("audit", "verify"), ("db", "upgrade")],
                         ids=lambda a: "-".join(a))
def test_an_inventory_from_a_newer_version_is_refused_untouched(ca: Cli, args: tuple[str, ...]) -> None:
    ca.ok("issue", "client", "bob")
    with sqlite3.connect(ca.db) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    connection.close()
    before = ca.db.read_bytes()
    snap = Snapshot(ca)
    assert_clean_error(ca(*args), "newer than this mcp-pki")
    snap.assert_unchanged()
    assert ca.db.read_bytes() == before
    with sqlite3.connect(ca.db) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [("9999",)]


# --- the audit log -------------------------------------------------------------------------

def _sql(cli: Cli, statement: str, *params: object) -> None:
    with sqlite3.connect(cli.db) as connection:
        connection.execute(statement, params)
    connection.close()


def test_audit_verify_passes_on_a_fresh_log(ca: Cli) -> None:
    assert "intact: 1 records" in ca.ok("audit", "verify").stdout
    ca.ok(*CLIENT)
    ca.ok(*SERVER)
    assert "intact: 3 records" in ca.ok("audit", "verify").stdout
    records = json.loads(ca.ok("audit", "--json").stdout)
    assert [r["action"] for r in records if r["action"] != "checkpoint"] == ["init-ca", "issue", "issue"]


def test_audit_verify_names_an_altered_record(ca: Cli) -> None:
    ca.ok(*CLIENT)
    ca.ok(*SERVER)
    _sql(ca, "UPDATE audit_log SET details = json_set(details, '$.kind', 'server') WHERE seq = 2")
    snap = Snapshot(ca)
    assert_clean_error(ca("audit", "verify"), "record 2")
    snap.assert_unchanged()


def test_audit_verify_notices_an_altered_operator(ca: Cli) -> None:
    ca.ok(*CLIENT)
    _sql(ca, "UPDATE audit_log SET operator = 'mallory' WHERE seq = 1")
    assert_clean_error(ca("audit", "verify"), "record 1")


def test_audit_verify_notices_a_deleted_middle_record(ca: Cli) -> None:
    ca.ok(*CLIENT)
    ca.ok(*SERVER)
    _sql(ca, "DELETE FROM audit_log WHERE seq = 2")
    snap = Snapshot(ca)
    assert_clean_error(ca("audit", "verify"), "record 2")
    snap.assert_unchanged()


def test_audit_verify_notices_a_deleted_last_record(ca: Cli) -> None:
    ca.ok(*CLIENT)
    last = json.loads(ca.ok(*SERVER, "--json").stdout)["serial"]
    _sql(ca, "DELETE FROM audit_log WHERE seq >= 5")  # its record and the checkpoint signing it
    snap = Snapshot(ca)
    assert_clean_error(ca("audit", "verify"), last)
    snap.assert_unchanged()


def test_secrets_never_reach_the_inventory_or_the_audit_output(ca: Cli) -> None:
    p12_secret = "p12 passphrase 4f9c2e"
    ca.ok(*CLIENT, "--p12", env={"MCP_PKI_P12_PASSPHRASE": p12_secret})
    ca.ok(*SERVER, "--key-type", "rsa2048")
    ca.ok("issue", "client", "carol", "--key-type", "ed25519")
    audit_output = ca.ok("audit", "--json").stdout + ca.ok("audit").stdout
    stored = inventory_bytes(ca)
    assert stored and audit_output
    for secret in (PASSPHRASE, p12_secret):
        assert secret.encode() not in stored
        assert secret not in audit_output
    key_files = [ca.cwd / "alice" / "tls.key", ca.cwd / "files" / "tls.key", ca.cwd / "carol" / "tls.key"]
    for key_file in key_files:
        text = key_file.read_text()
        assert "-----BEGIN PRIVATE KEY-----" in text
        body = [line for line in text.splitlines() if line and not line.startswith("-----")]
        for line in body:
            assert line.encode() not in stored, key_file
            assert line not in audit_output, key_file
        der = serialization.load_pem_private_key(text.encode(), None).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        assert der not in stored
    assert b"-----BEGIN PRIVATE KEY-----" not in stored
    assert "PRIVATE KEY" not in audit_output
