"""Revocation that cannot be undone quietly: the adversarial review's revocation findings,
each pinned by a test that failed before its fix."""

import base64
import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mcp_pki.pki.crl import crl_number, load_crls
from mcp_pki.pki.signatures import is_signed_by
from mcp_pki.services.audit import GENESIS_HASH, checkpoint_message, record_hash
from mcp_pki.services.home import Home
from mcp_pki.services.revocation import republish
from mcp_pki.store.models import AuditRecord
from tests.conftest import PASSPHRASE, Cli, Snapshot, assert_clean_error


def _issue(cli: Cli, *args: str) -> dict[str, object]:
    return json.loads(cli.ok("issue", *args, "--json").stdout)  # type: ignore[no-any-return]


def _status(cli: Cli, serial: str) -> str:
    return str(json.loads(cli.ok("show", serial, "--json").stdout)["status"])


def _crl_serials(cli: Cli) -> set[int]:
    return {entry.serial_number for crl in load_crls((cli.home / "crl.pem").read_bytes()) for entry in crl}


# 1. revoke NAME with several valid certificates ------------------------------------------

def test_revoke_name_with_several_valid_certificates_lists_them_and_changes_nothing(ca: Cli) -> None:
    old = _issue(ca, "client", "alice", "--out", "old")
    ca.ok("renew", "alice", "--out", "new")
    new = json.loads(ca.ok("show", "alice", "--json").stdout)
    assert new["serial"] != old["serial"]
    snapshot = Snapshot(ca)
    result = ca("revoke", "alice", "--reason", "key-compromise")
    assert_clean_error(result, "has 2 valid certificates")
    for serial in (old["serial"], new["serial"]):
        assert str(serial) in result.stderr
    assert str(ca.cwd / "old") in result.stderr and "--all" in result.stderr
    snapshot.assert_unchanged()
    assert _status(ca, str(old["serial"])) == _status(ca, str(new["serial"])) == "valid"


def test_revoke_name_all_revokes_every_valid_certificate_and_records_them(ca: Cli) -> None:
    old = _issue(ca, "client", "alice", "--out", "old")
    ca.ok("renew", "alice", "--out", "new")
    new = json.loads(ca.ok("show", "alice", "--json").stdout)
    result = json.loads(ca.ok("revoke", "alice", "--all", "--reason", "key-compromise", "--json").stdout)
    assert {r["serial"] for r in result["revoked"]} == {old["serial"], new["serial"]}
    assert {int(str(s), 16) for s in (old["serial"], new["serial"])} <= _crl_serials(ca)
    assert "intact" in ca.ok("audit", "verify").stdout


def test_revoke_all_takes_a_name_not_a_serial(ca: Cli) -> None:
    serial = str(_issue(ca, "client", "alice")["serial"])
    assert_clean_error(ca("revoke", serial, "--all"), "--all takes a NAME")


def test_revoke_name_with_one_valid_certificate_still_works(ca: Cli) -> None:
    old = _issue(ca, "client", "alice", "--out", "old")
    ca.ok("renew", "alice", "--out", "new", "--revoke-old")
    ca.ok("revoke", "alice")
    assert _status(ca, str(old["serial"])) == "revoked"
    assert _status(ca, "alice") == "revoked"


def test_read_only_commands_keep_newest_valid_for_a_name(ca: Cli) -> None:
    old = _issue(ca, "client", "alice", "--out", "old")
    ca.ok("renew", "alice", "--out", "new")
    shown = json.loads(ca.ok("show", "alice", "--json").stdout)
    assert shown["renews"] == old["serial"]  # the renewal, i.e. the newest


# 2. a database writer without the passphrase cannot undo a revocation ---------------------

def _sql(cli: Cli, *statements: str) -> None:
    with sqlite3.connect(cli.db) as connection:
        for statement in statements:
            connection.execute(statement)


def _revoked_alice(ca: Cli) -> str:
    serial = str(_issue(ca, "client", "alice")["serial"])
    _issue(ca, "client", "bob")
    ca.ok("revoke", "alice", "--reason", "key-compromise")
    return serial


def _rechain(
    cli: Cli, *, drop: Callable[[dict[str, Any]], bool],
    edit: Callable[[dict[str, Any]], dict[str, Any]] = lambda r: r,
) -> None:
    """What a database writer without the CA key can do: drop and edit records, renumber the
    rest and recompute every hash, so that the bare hash chain is consistent again."""
    with sqlite3.connect(cli.db) as connection:
        connection.row_factory = sqlite3.Row
        rows = [{**r, "details": json.loads(r["details"])} for r in map(dict, connection.execute(
            "SELECT * FROM audit_log ORDER BY seq"))]
        kept = [edit(r) for r in rows if not drop(r)]
        for row in kept:
            row["details"] = json.dumps(row["details"])
        connection.execute("DELETE FROM audit_log")
        previous = GENESIS_HASH
        for seq, row in enumerate(kept, start=1):
            record = AuditRecord(
                seq=seq, at=datetime.fromisoformat(row["at"]).replace(tzinfo=UTC), operator=row["operator"],
                action=row["action"], target_serial=row["target_serial"], target_name=row["target_name"],
                outcome=row["outcome"], details=json.loads(row["details"]), prev_hash=previous,
            )
            record.hash = record_hash(record)
            connection.execute(
                "INSERT INTO audit_log (seq, at, operator, action, target_serial, target_name, outcome, details,"
                " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, row["at"], row["operator"], row["action"], row["target_serial"], row["target_name"],
                 row["outcome"], row["details"], previous, record.hash),
            )
            previous = record.hash


def test_every_signing_command_signs_the_chain_head_with_the_issuing_ca(ca: Cli) -> None:
    _revoked_alice(ca)
    ca.ok("crl")
    records = json.loads(ca.ok("audit", "--json").stdout)
    issuing = x509.load_pem_x509_certificates((ca.cwd / "bob" / "tls.crt").read_bytes())[1]
    checkpoints = [r for r in records if r["action"] == "checkpoint"]
    assert [r["action"] for r in records[1::2]] == ["checkpoint"] * len(checkpoints) == ["checkpoint"] * 5
    for checkpoint in checkpoints:
        signed = records[checkpoint["seq"] - 2]
        details = checkpoint["details"]
        assert (details["signed_seq"], details["signed_hash"]) == (signed["seq"], signed["hash"])
        assert checkpoint["target_serial"] == format(issuing.serial_number, "x")
        message = checkpoint_message(signed["seq"], signed["hash"])
        assert is_signed_by(issuing, base64.b64decode(details["signature"]), message)
        assert not is_signed_by(issuing, base64.b64decode(details["signature"]), message + b"x")
    assert "5 records, 5 signed checkpoints" in ca.ok("audit", "verify").stdout


def test_deleting_a_revocation_is_refused_by_the_next_crl_and_reported_by_audit_verify(ca: Cli) -> None:
    serial = _revoked_alice(ca)
    _sql(ca, f"DELETE FROM revocations WHERE certificate_id = (SELECT id FROM certificates WHERE serial = '{serial}')")
    snapshot = Snapshot(ca)
    for args in (("crl",), ("revoke", "bob")):
        result = ca(*args)
        assert_clean_error(result, "refusing to publish")
        assert serial in result.stderr and "audit verify" in result.stderr
    snapshot.assert_unchanged()
    assert int(serial, 16) in _crl_serials(ca)
    assert_clean_error(ca("audit", "verify"), f"revocation of {serial}")


def test_rewriting_the_chain_without_the_ca_key_breaks_the_later_checkpoints(ca: Cli) -> None:
    serial = _revoked_alice(ca)
    ca.ok("issue", "client", "carol")  # a later signing operation, whose checkpoint is kept
    _sql(ca, f"DELETE FROM revocations WHERE certificate_id = (SELECT id FROM certificates WHERE serial = '{serial}')")
    _rechain(ca, drop=lambda r: r["action"] == "revoke")
    result = ca("audit", "verify")
    assert_clean_error(result, "checkpoint")
    assert "rewritten" in result.stderr or "does not sign" in result.stderr


def test_dropping_the_checkpoints_after_a_rewrite_leaves_signed_records_unsigned(ca: Cli) -> None:
    serial = _revoked_alice(ca)
    ca.ok("issue", "client", "carol")
    _sql(ca, f"DELETE FROM revocations WHERE certificate_id = (SELECT id FROM certificates WHERE serial = '{serial}')")
    _rechain(ca, drop=lambda r: r["action"] == "revoke" or (r["action"] == "checkpoint" and r["seq"] > 6))
    assert_clean_error(ca("audit", "verify"), "has no signed checkpoint after it")


def test_dropping_every_checkpoint_is_caught_by_the_signed_crl(ca: Cli) -> None:
    serial = _revoked_alice(ca)
    _sql(ca, f"DELETE FROM revocations WHERE certificate_id = (SELECT id FROM certificates WHERE serial = '{serial}')")

    def as_plain_publication(record: dict[str, Any]) -> dict[str, Any]:
        if record["action"] != "revoke":
            return record
        return {**record, "action": "publish-crl", "target_serial": None, "target_name": None,
                "details": {"crl_numbers": record["details"]["crl_numbers"]}}

    _rechain(ca, drop=lambda r: r["action"] == "checkpoint", edit=as_plain_publication)
    result = ca("audit", "verify")
    assert_clean_error(result, f"certificate {serial} is revoked on CRL")


def test_a_revocation_missing_from_the_newest_signed_crl_is_reported(ca: Cli) -> None:
    _issue(ca, "client", "alice")
    serial = _revoked_alice_after_crl(ca)
    assert_clean_error(ca("audit", "verify"), f"revocation of {serial} is missing from CRL")


def _revoked_alice_after_crl(ca: Cli) -> str:
    """A revocation row added behind the tool's back, with an audit record claiming it: the
    newest signed CRL does not list it."""
    serial = str(json.loads(ca.ok("show", "alice", "--json").stdout)["serial"])
    with sqlite3.connect(ca.db) as connection:
        (certificate_id,) = connection.execute("SELECT id FROM certificates WHERE serial = ?", (serial,)).fetchone()
        connection.execute(
            "INSERT INTO revocations (certificate_id, revoked_at, reason, invalidity_date, crl_entry) "
            "VALUES (?, '2000-01-01 00:00:00.000000', NULL, NULL, x'00')", (certificate_id,))

    def claim_revocation(record: dict[str, Any]) -> dict[str, Any]:
        if record["action"] == "issue" and record["target_serial"] == serial:
            return {**record, "details": {**record["details"], "revoked_serials": [serial]}}
        return record

    _rechain(ca, drop=lambda r: r["action"] == "checkpoint", edit=claim_revocation)
    return serial


# 6. CRL numbers from unsigned CRLs ------------------------------------------------------

def _forged_crl(ca: Cli, number: int) -> bytes:
    """A CRL naming our issuing CA, with its key identifier, signed by another key."""
    issuing = x509.load_pem_x509_certificates((ca.cwd / "bob" / "tls.crt").read_bytes())[1]
    ski = issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuing.subject).last_update(now).next_update(now + timedelta(days=7))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .add_extension(x509.CRLNumber(number), False)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM)


def test_a_forged_crl_with_a_huge_number_is_ignored_with_a_warning(ca: Cli) -> None:
    _issue(ca, "client", "bob")
    before = {crl_number(c) for c in load_crls((ca.home / "crl.pem").read_bytes())}
    for number in (2**63 - 1, 2**159):
        (ca.home / "crl.pem").write_bytes(_forged_crl(ca, number) + (ca.home / "crl.pem").read_bytes())
        result = ca.ok("crl")
        assert "not signed by this CA" in result.stderr or "did not sign" in result.stderr
        numbers = {crl_number(c) for c in load_crls((ca.home / "crl.pem").read_bytes())}
        assert max(n for n in numbers if n is not None) < 100, numbers
        assert numbers != before
    ca.ok("revoke", "bob")
    assert "intact" in ca.ok("audit", "verify").stdout


def test_the_crl_number_bound_is_a_clean_error(ca: Cli) -> None:
    _sql(ca, f"UPDATE crl_publications SET number = {2**63 - 1} WHERE id = (SELECT max(id) FROM crl_publications)")
    snapshot = Snapshot(ca)
    assert_clean_error(ca("crl"), "largest")
    snapshot.assert_unchanged()


# 5. the clock -----------------------------------------------------------------------------

def test_a_crl_signed_with_the_clock_ahead_makes_later_publication_refuse_not_drop(ca: Cli) -> None:
    serial = str(_issue(ca, "client", "short", "--validity", "2h")["serial"])
    ca.ok("revoke", "short")
    home = Home(ca.home, f"sqlite:///{ca.db}")
    republish(home, passphrase=lambda: PASSPHRASE.encode(), now=datetime.now(UTC) + timedelta(days=365))
    snapshot = Snapshot(ca)
    assert_clean_error(ca("crl"), "clock is behind")
    snapshot.assert_unchanged()
    assert int(serial, 16) in _crl_serials(ca)


# 4. an empty database -----------------------------------------------------------------------

def test_an_empty_inventory_file_is_refused_by_every_command(ca: Cli) -> None:
    for leftover in ca.home.glob("inventory.db*"):
        leftover.unlink()
    ca.db.touch(mode=0o600)
    crl_before = (ca.home / "crl.pem").read_bytes()
    for args in (("crl",), ("audit", "verify"), ("list",), ("status",), ("issue", "client", "x")):
        assert_clean_error(ca(*args), "holds no mcp-pki inventory")
    assert (ca.home / "crl.pem").read_bytes() == crl_before
    assert ca.db.stat().st_size == 0
    assert_clean_error(ca("init-ca", "--name", "Again"), "already has a CA")


def test_init_ca_still_creates_an_inventory_in_an_empty_file(mcp: Cli) -> None:
    mcp.home.mkdir(mode=0o700)
    (mcp.home / "inventory.db").touch(mode=0o600)
    mcp.ok("init-ca", "--name", "Fresh")
    assert "intact" in mcp.ok("audit", "verify").stdout


# 7. exit codes after a commit ----------------------------------------------------------------

def test_a_crl_file_that_cannot_be_written_says_the_revocation_is_recorded(ca: Cli) -> None:
    serial = str(_issue(ca, "client", "alice")["serial"])
    (ca.home / "crl.pem").unlink()
    (ca.home / "crl.pem").mkdir()  # a path the CRL cannot be written to, even as root
    result = ca("revoke", "alice")
    assert_clean_error(result, "revocation recorded in the inventory; crl.pem not written")
    assert "mcp-pki crl" in result.stderr
    assert _status(ca, serial) == "revoked"
    (ca.home / "crl.pem").rmdir()
    retried = ca.ok("revoke", "alice")  # the retry publishes what is missing, exit 0
    assert "already revoked" in retried.stderr and "republishing" in retried.stderr
    assert int(serial, 16) in _crl_serials(ca)
    assert_clean_error(ca("revoke", "alice"), "already revoked")  # now it is published
    assert "intact" in ca.ok("audit", "verify").stdout
