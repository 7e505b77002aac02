"""Defects found in review, each pinned by a test that failed before its fix."""

import json
import os
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from mcp_pki.pki.crl import load_crls
from tests.conftest import PASSPHRASE, VENV_BIN, Cli, Snapshot, assert_clean_error, openssl
from tests.test_bad_input import write_csr
from tests.test_robustness import console_env


def test_a_serial_as_openssl_prints_it_finds_the_certificate(ca: Cli) -> None:
    issued = json.loads(ca.ok("issue", "client", "alice", "--json").stdout)
    printed = openssl("x509", "-in", str(ca.cwd / "alice" / "tls.crt"), "-noout", "-serial").stdout
    as_openssl_prints = printed.strip().split("=", 1)[1]  # upper case, padded to whole octets
    padded = issued["serial"].upper().zfill(40)  # a leading zero, as for 1 serial in 8
    for ref in (as_openssl_prints, padded, padded[:12], "0x" + issued["serial"]):
        assert json.loads(ca.ok("show", ref, "--json").stdout)["serial"] == issued["serial"], ref


def test_the_inventory_and_its_folder_are_private(mcp: Cli) -> None:
    mcp.ok("init-ca", "--name", "Test")
    mcp.ok("issue", "client", "alice")
    assert stat.S_IMODE(mcp.home.stat().st_mode) == 0o700
    for path in mcp.home.glob("inventory.db*"):  # the -wal and -shm files too
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_ca_keys_use_scrypt_and_openssl_can_read_them(ca: Cli, tmp_path: Path) -> None:
    with sqlite3.connect(ca.db) as connection:
        key_pem = connection.execute("SELECT encrypted_key_pem FROM authorities LIMIT 1").fetchone()[0]
    (tmp_path / "ca.key").write_text(key_pem)
    assert ":scrypt" in openssl("asn1parse", "-in", str(tmp_path / "ca.key")).stdout
    os.environ["TEST_CA_PASS"] = PASSPHRASE
    try:
        assert openssl("pkey", "-in", str(tmp_path / "ca.key"), "-passin", "env:TEST_CA_PASS", "-noout").returncode == 0
        os.environ["TEST_CA_PASS"] = "wrong passphrase"
        assert openssl("pkey", "-in", str(tmp_path / "ca.key"), "-passin", "env:TEST_CA_PASS", "-noout").returncode != 0
    finally:
        del os.environ["TEST_CA_PASS"]


def test_concurrent_revocations_leave_every_one_on_the_published_crl(ca: Cli) -> None:
    names = [f"agent{i}" for i in range(6)]
    serials = [json.loads(ca.ok("issue", "client", n, "--json").stdout)["serial"] for n in names]
    processes = [
        subprocess.Popen([str(VENV_BIN / "mcp-pki"), "revoke", name], cwd=ca.cwd, env=console_env(ca.home),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for name in names
    ]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    issuing_crl = load_crls((ca.home / "crl.pem").read_bytes())[0]
    assert {format(r.serial_number, "x") for r in issuing_crl} == set(serials)
    with sqlite3.connect(ca.db) as connection:
        newest = connection.execute("SELECT max(number) FROM crl_publications").fetchone()[0]
    assert issuing_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == newest
    ca.ok("audit", "verify")


def test_a_late_writer_never_puts_back_an_older_crl(ca: Cli) -> None:
    """Run A commits its revocation first but writes crl.pem last: B's newer CRLs stay."""
    slow_writer = """
import sys, time
from mcp_pki.services import crls, revocation

original = crls.write_crl_file
marker = sys.argv[1]

def write_crl_file(path, published):
    open(marker, "w").close()  # committed: let the other run go
    time.sleep(1.5)
    return original(path, published)

revocation.write_crl_file = write_crl_file
from mcp_pki.cli import main
sys.argv = ["mcp-pki", "revoke", "bob"]
main()
"""
    bob = json.loads(ca.ok("issue", "client", "bob", "--json").stdout)["serial"]
    carol = json.loads(ca.ok("issue", "client", "carol", "--json").stdout)["serial"]
    committed = ca.cwd / "committed"
    slow = subprocess.Popen([str(VENV_BIN / "python"), "-c", slow_writer, str(committed)], cwd=ca.cwd,
                            env=console_env(ca.home), stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            if committed.exists() or slow.poll() is not None:
                break
            time.sleep(0.02)
        assert committed.exists(), f"run A did not reach its CRL write: {slow.poll()}"
        ca.ok("revoke", "carol")  # B: commits after A, writes before A
    finally:
        _, err = slow.communicate(timeout=60)
    assert slow.returncode == 0, err
    issuing_crl = load_crls((ca.home / "crl.pem").read_bytes())[0]
    assert {format(r.serial_number, "x") for r in issuing_crl} == {bob, carol}


@pytest.mark.parametrize("args", [
    ("issue", "client", "bob", "--validity", "9000y"),
    ("list", "--expiring-within", "999999y"),
    ("status", "--warn-within", "9000y"),
    ("crl", "--next-update", "9000y"),
])
def test_huge_durations_are_clean_errors(ca: Cli, args: tuple[str, ...]) -> None:
    snap = Snapshot(ca)
    assert_clean_error(ca(*args), "at most 100y")
    snap.assert_unchanged()


def test_init_ca_with_a_bad_config_creates_nothing(mcp: Cli) -> None:
    mcp.home.mkdir()
    (mcp.home / "config.yaml").write_text("crl: {next_update: 0d}\n")
    assert_clean_error(mcp("init-ca"), "greater than zero")
    assert sorted(p.name for p in mcp.home.iterdir()) == ["config.yaml"]
    (mcp.home / "config.yaml").unlink()
    (mcp.home / "config.yaml").mkdir()  # unreadable as a file
    assert_clean_error(mcp("init-ca"), "cannot read")


def test_the_audit_operator_is_the_account_not_the_environment(ca: Cli) -> None:
    import pwd

    ca.ok("issue", "client", "alice", env={"USER": "mallory", "LOGNAME": "mallory"})
    records = json.loads(ca.ok("audit", "--json").stdout)
    assert records[-1]["operator"] == pwd.getpwuid(os.geteuid()).pw_name


def test_a_single_label_permitted_domain_is_accepted(mcp: Cli) -> None:
    mcp.ok("init-ca", "--name", "Test", "--permit-dns", "internal")
    mcp.ok("issue", "server", "files", "--dns", "files.internal")
    assert_clean_error(mcp("issue", "server", "web", "--dns", "web.example.com"), "outside this CA's permitted")


def test_force_removes_the_key_of_the_certificate_it_replaces(ca: Cli) -> None:
    ca.ok("issue", "client", "bob", "--out", "bob")
    write_csr(ca.cwd / "bob.csr")
    result = ca.ok("issue", "client", "bob", "--csr", "bob.csr", "--out", "bob", "--force")
    assert not (ca.cwd / "bob" / "tls.key").exists()
    assert "removed" in result.stderr


def test_removing_the_newest_revocation_record_is_detected(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    ca.ok("revoke", "alice")
    with sqlite3.connect(ca.db) as connection:  # the record and the checkpoint that signs it
        connection.execute("DELETE FROM audit_log WHERE seq >= (SELECT max(seq) - 1 FROM audit_log)")
    assert_clean_error(ca("audit", "verify"), "no audit record")


def test_removing_the_newest_crl_record_is_detected(ca: Cli) -> None:
    ca.ok("crl")
    with sqlite3.connect(ca.db) as connection:  # the record and the checkpoint that signs it
        connection.execute("DELETE FROM audit_log WHERE seq >= (SELECT max(seq) - 1 FROM audit_log)")
    assert_clean_error(ca("audit", "verify"), "CRL number")


def test_a_file_written_meanwhile_by_another_run_is_not_overwritten(ca: Cli) -> None:
    """Two runs into one folder: the second finds the first's files only when it publishes."""
    code = """
import sys
from mcp_pki.services import files

original = files.OutputFiles.write

def write(self, *, replace=True):
    target = self._files[0][0]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("written by another run")  # appears after the existence check
    return original(self, replace=replace)

files.OutputFiles.write = write
from mcp_pki.cli import main
sys.argv = ["mcp-pki", "issue", "client", "dave", "--out", sys.argv[1]]
main()
"""
    out = ca.cwd / "dave"
    result = subprocess.run([str(VENV_BIN / "python"), "-c", code, str(out)], check=False, env=console_env(ca.home),
                            cwd=ca.cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "is recorded but its files were not written" in result.stderr
    assert (out / "tls.crt").read_text() == "written by another run"
    assert sorted(p.name for p in out.iterdir()) == ["tls.crt"]  # nothing of ours left behind
