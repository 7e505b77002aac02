"""Revocation that cannot be undone quietly: the adversarial review's revocation findings,
each pinned by a test that failed before its fix."""

import json
from mcp_pki.pki.crl import load_crls
from tests.conftest import Cli, Snapshot, assert_clean_error


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
