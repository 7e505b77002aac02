"""Failures that used to escape as tracebacks: each is now one ``Error: ...`` line, exit 1,
and changes nothing. Also the warnings and the audit trace that an operator relies on.

Real homes, a real SQLite inventory edited the way a careless (or hostile) hand would edit
it, OpenSSL for a SHA-1 request.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

from mcp_pki.cli.common import now
from mcp_pki.services.home import Home
from mcp_pki.services.snippets import render_one
from tests.conftest import PASSPHRASE, VENV_BIN, Cli, Snapshot, assert_clean_error, openssl

URL = "https://mcp.example.com/mcp"


def set_column(cli: Cli, column: str, value: str, name: str = "alice") -> None:
    with closing(sqlite3.connect(cli.db)) as connection, connection:
        connection.execute(f"UPDATE certificates SET {column} = ? WHERE name = ?", (value, name))


def audit_records(cli: Cli) -> list[dict[str, object]]:
    return json.loads(cli.ok("audit", "--json").stdout)


# --- the environment refuses a file ----------------------------------------------------------

UNREADABLE_HOME_COMMANDS = [
    ("list",), ("show", "alice"), ("issue", "client", "bob", "--out", "{out}"), ("crl",), ("status",),
    ("snippet", "curl", "alice", "--var", f"url={URL}"),
]

# Root reads a folder of mode 000, so as root the command runs in a child that first enters a
# new user namespace, where it holds no capability over root's files (the modules the
# commands load lazily are imported before that, while the interpreter can still read them).
AS_UNPRIVILEGED = """
import ctypes, json, sys
import mcp_pki.cli, mcp_pki.services.health, mcp_pki.services.inventory, mcp_pki.services.issuance
import mcp_pki.services.listing
import mcp_pki.services.revocation, mcp_pki.services.snippets, platformdirs, pwd, secrets, yaml
import sqlalchemy.dialects.sqlite
from click.testing import CliRunner
if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:  # CLONE_NEWUSER
    print(json.dumps(None)); sys.exit()
result = CliRunner().invoke(mcp_pki.cli.cli, sys.argv[1:])
print(json.dumps([result.exit_code, result.stderr, repr(result.exception)]))
"""


@pytest.mark.parametrize("command", UNREADABLE_HOME_COMMANDS, ids=lambda c: c[0])
def test_an_unreadable_home_is_one_error_line(ca: Cli, command: tuple[str, ...]) -> None:
    ca.ok("issue", "client", "alice")
    out = Path(tempfile.mkdtemp(dir="/tmp")) / "bob"  # a folder the child can still reach
    args = [a.replace("{out}", str(out)) for a in command]
    ca.home.chmod(0)
    try:
        if os.geteuid() != 0:
            result = ca(*args)
            assert_clean_error(result, "Permission denied")
        else:
            child = subprocess.run(
                [sys.executable, "-c", AS_UNPRIVILEGED, "--home", str(ca.home), *args],
                check=False, capture_output=True, text=True, timeout=120, cwd="/",
                env={**os.environ, "MCP_PKI_PASSPHRASE": PASSPHRASE},
            )
            assert child.stdout.strip(), child.stderr  # the child itself ran to its report
            outcome = json.loads(child.stdout.strip().splitlines()[-1])
            if outcome is None:
                pytest.skip("no user namespaces here: root cannot be made to lack read access")
            exit_code, stderr, exception = outcome
            assert exit_code == 1, (stderr, exception)
            assert stderr.strip().startswith("Error: cannot access"), stderr
            assert len(stderr.strip().splitlines()) == 1 and "Permission denied" in stderr, stderr
        assert not out.exists()
    finally:
        ca.home.chmod(0o700)
        shutil.rmtree(out.parent, ignore_errors=True)


def test_a_home_name_too_long_for_the_file_system(ca: Cli, tmp_path: Path) -> None:
    for command in UNREADABLE_HOME_COMMANDS[:2]:
        assert_clean_error(ca("--home", str(tmp_path / ("h" * 300)), *command), "File name too long")


def test_an_output_folder_name_too_long_for_the_file_system(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    snapshot = Snapshot(ca)
    too_long = "x" * 300
    assert_clean_error(ca("issue", "client", "bob", "--out", too_long), "File name too long")
    assert_clean_error(ca("renew", "alice", "--out", too_long), "File name too long")
    snapshot.assert_unchanged()


def test_a_crl_lock_that_cannot_be_opened(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    (ca.home / ".crl.lock").unlink(missing_ok=True)
    (ca.home / ".crl.lock").mkdir()  # os.open(O_RDWR) on a folder: EISDIR
    result = ca("crl")
    assert_clean_error(result, "")
    assert "Is a directory" in result.stderr
    assert_clean_error(ca("revoke", "alice"), "")


# --- values that are not what they seem --------------------------------------------------------


@pytest.mark.parametrize("port", ["\u00b2", "\u0663\u0660", "\uff18\uff10"])
def test_unicode_digits_are_not_ports(ca: Cli, port: str) -> None:
    ca.ok("issue", "server", "web", "--dns", "web.example.com")
    assert_clean_error(ca("snippet", "nginx", "web", "--var", f"port={port}"), "port")
    # a subprocess with a timeout: a gateway that took "٣٠" for port 30 would serve forever
    gateway = subprocess.run(
        [str(VENV_BIN / "mcp-pki"), "gateway", "--as", "web", "--listen", f"127.0.0.1:{port}", "--", "true"],
        check=False, capture_output=True, text=True, timeout=60, cwd=ca.cwd,
        env={**os.environ, "MCP_PKI_HOME": str(ca.home), "MCP_PKI_PASSPHRASE": PASSPHRASE},
    )
    assert gateway.returncode == 1, gateway.stderr
    assert gateway.stderr.strip().splitlines() == [gateway.stderr.strip()]
    assert gateway.stderr.startswith("Error: invalid --listen"), gateway.stderr


def test_a_passphrase_that_is_not_utf8(ca: Cli, tmp_path: Path) -> None:
    snapshot = Snapshot(ca)
    # how os.environ holds the bytes \xff\xfe of a real environment
    not_utf8 = "\udcff\udcfe" + "x" * 10
    assert_clean_error(ca("issue", "client", "bob", env={"MCP_PKI_PASSPHRASE": not_utf8}), "not valid UTF-8")
    secret_file = tmp_path / "passphrase"
    secret_file.write_bytes(b"\xff\xfe" + b"x" * 10 + b"\n")
    secret_file.chmod(0o600)
    assert_clean_error(ca("--passphrase-file", str(secret_file), "issue", "client", "bob",
                          env={"MCP_PKI_PASSPHRASE": None}), "not valid UTF-8")
    snapshot.assert_unchanged()
    fresh = Cli(tmp_path / "fresh-home", ca.cwd)
    assert_clean_error(fresh("init-ca", env={"MCP_PKI_PASSPHRASE": not_utf8}), "not valid UTF-8")
    assert not fresh.home.exists()


def test_a_database_url_with_a_bad_port_hides_its_password(ca: Cli) -> None:
    result = ca("--db", "postgresql://user:s3cretpw@db.example.com:notaport/pki", "list")
    assert_clean_error(result, "invalid database URL")
    assert "s3cretpw" not in result.stderr + result.stdout
    assert "user:***@db.example.com" in result.stderr


def test_init_ca_refuses_an_in_memory_database(mcp: Cli) -> None:
    for url in ("sqlite:///:memory:", "sqlite://"):
        assert_clean_error(mcp("--db", url, "init-ca"), "in-memory")
    assert not mcp.home.exists()


# --- an inventory edited by hand ----------------------------------------------------------------


def test_a_garbage_certificate_row(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    set_column(ca, "certificate_pem", "garbage")
    snapshot = Snapshot(ca)
    assert_clean_error(ca("show", "alice"), "inventory is corrupt")
    assert_clean_error(ca("verify", str(ca.cwd / "alice" / "tls.crt")), "inventory is corrupt")
    snapshot.assert_unchanged()


@pytest.mark.parametrize("sans", ["{not json", "[1, 2]", '"DNS:x"'])
def test_an_invalid_sans_row(ca: Cli, sans: str) -> None:
    ca.ok("issue", "client", "alice")
    set_column(ca, "sans", sans)
    snapshot = Snapshot(ca)
    for command in (("list",), ("show", "alice"), ("snippet", "curl", "alice", "--var", f"url={URL}"),
                    ("revoke", "alice"), ("renew", "alice", "--out", str(ca.cwd / "renewed"))):
        assert_clean_error(ca(*command), "inventory is corrupt")
    snapshot.assert_unchanged()


def test_a_sans_row_with_an_unknown_name_type(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    set_column(ca, "sans", '["bogus"]')
    snapshot = Snapshot(ca)
    assert_clean_error(ca("renew", "alice", "--out", str(ca.cwd / "renewed")), "inventory is corrupt")
    snapshot.assert_unchanged()


# --- what an operator must be told -------------------------------------------------------------


def test_a_passphrase_file_others_can_read_gets_a_warning(ca: Cli, tmp_path: Path) -> None:
    secret_file = tmp_path / "passphrase"
    secret_file.write_text(PASSPHRASE + "\n")
    secret_file.chmod(0o644)
    result = ca.ok("--passphrase-file", str(secret_file), "issue", "client", "bob",
                   env={"MCP_PKI_PASSPHRASE": None})
    assert "Warning: passphrase file" in result.stderr and "readable by group or others" in result.stderr
    secret_file.chmod(0o600)
    quiet = ca.ok("--passphrase-file", str(secret_file), "issue", "client", "carol",
                  env={"MCP_PKI_PASSPHRASE": None})
    assert "Warning" not in quiet.stderr


def test_a_wrong_passphrase_is_recorded_in_the_audit_log(ca: Cli) -> None:
    guess = "letmein-guess-1234"
    before = audit_records(ca)
    assert_clean_error(ca("issue", "client", "bob", env={"MCP_PKI_PASSPHRASE": guess}), "wrong CA passphrase")
    after = audit_records(ca)
    assert len(after) == len(before) + 1
    record = after[-1]
    assert (record["action"], record["outcome"]) == ("passphrase-refused", "refused")
    assert record["details"] == {"command": "issue", "reason": "wrong CA passphrase"}
    assert guess not in json.dumps(after)
    assert guess.encode() not in b"".join(p.read_bytes() for p in ca.home.glob("inventory.db*"))
    assert not (ca.cwd / "bob").exists()
    ca.ok("audit", "verify")


def test_a_snippet_for_a_revoked_or_expired_certificate_warns(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    quiet = ca.ok("snippet", "curl", "alice", "--var", f"url={URL}")
    assert "Warning" not in quiet.stderr
    ca.ok("issue", "client", "dora", "--validity", "1h")
    later = now() + timedelta(hours=2)
    rendered = render_one(Home(ca.home, f"sqlite:///{ca.db}"), "curl", "dora", folder=None,
                          variables={"url": URL}, now=later)
    assert any("is expired since" in w for w in rendered.warnings), rendered.warnings
    ca.ok("revoke", "alice")
    result = ca.ok("snippet", "curl", "alice", "--var", f"url={URL}")
    assert "Warning: certificate" in result.stderr and "is revoked since" in result.stderr


def test_a_sha1_signed_csr_is_refused_as_sha1(ca: Cli, tmp_path: Path) -> None:
    key, csr = tmp_path / "k.pem", tmp_path / "sha1.csr"
    assert openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)).returncode == 0
    made = openssl("req", "-new", "-key", str(key), "-subj", "/CN=bob", "-sha1", "-out", str(csr))
    assert made.returncode == 0, made.stderr
    snapshot = Snapshot(ca)
    result = ca("issue", "client", "bob", "--csr", str(csr))
    assert_clean_error(result, "SHA-1 signatures are refused")
    assert "altered" not in result.stderr
    snapshot.assert_unchanged()
