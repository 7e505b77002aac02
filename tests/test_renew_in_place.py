"""``renew REF`` writes where the certificate's files are, renews a certificate once, and
``list`` tells a superseded certificate from the one in use."""

import json
from pathlib import Path

from cryptography import x509

from tests.conftest import Cli, Snapshot, assert_clean_error, tree


def _serial_in(folder: Path) -> str:
    certificate = x509.load_pem_x509_certificate((folder / "tls.crt").read_bytes())
    return format(certificate.serial_number, "040x")[-40:]


def _listed(ca: Cli, *options: str) -> dict[str, dict[str, object]]:
    return {row["serial"]: row for row in json.loads(ca.ok("list", "--json", *options).stdout)}


def test_renew_writes_to_the_recorded_folder_from_any_directory(ca: Cli, tmp_path: Path) -> None:
    ca.ok("issue", "server", "files", "--ip", "127.0.0.1", "--out", "deploy/files")
    folder = ca.cwd / "deploy" / "files"
    old_serial, old_key = _serial_in(folder), (folder / "tls.key").read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cron = Cli(ca.home, elsewhere)  # e.g. a cron job, run from /
    renewed = json.loads(cron.ok("renew", "files", "--json").stdout)
    assert renewed["old_serial"].lstrip("0") == old_serial.lstrip("0")
    assert tree(elsewhere) == {}
    assert {Path(p) for p in renewed["files"]} == {folder / "tls.crt", folder / "tls.key", folder / "ca.crt"}
    assert _serial_in(folder).lstrip("0") == renewed["serial"].lstrip("0")
    assert (folder / "tls.key").read_bytes() != old_key


def test_renew_in_place_never_replaces_someone_elses_files_without_force(ca: Cli) -> None:
    ca.ok("issue", "server", "files", "--ip", "127.0.0.1", "--out", "shared")
    ca.ok("issue", "server", "other", "--ip", "127.0.0.2", "--out", "shared", "--force")  # same folder, replaced
    snapshot = Snapshot(ca)
    assert_clean_error(ca("renew", "files"), "already exists")
    snapshot.assert_unchanged()
    ca.ok("renew", "--out", "files-new", "files")
    assert (ca.cwd / "files-new" / "tls.crt").exists()


def test_renewing_a_renewed_certificate_again_needs_force(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    old = json.loads(ca.ok("show", "alice", "--json").stdout)["serial"]
    first = json.loads(ca.ok("renew", old, "--json").stdout)["serial"]
    snapshot = Snapshot(ca)
    assert_clean_error(ca("renew", old), f"already renewed as {first}")
    snapshot.assert_unchanged()
    second = json.loads(ca.ok("renew", old, "--force", "--json").stdout)["serial"]
    # By NAME, renew takes the newest valid certificate: renewing it is not "again".
    third = json.loads(ca.ok("renew", "alice", "--json").stdout)
    assert third["old_serial"] == second and first != second


def test_list_shows_a_superseded_certificate_and_current_leaves_it_out(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    ca.ok("issue", "client", "bob")
    old = json.loads(ca.ok("show", "alice", "--json").stdout)["serial"]
    new = json.loads(ca.ok("renew", "alice", "--json").stdout)["serial"]
    bob = json.loads(ca.ok("show", "bob", "--json").stdout)["serial"]

    rows = _listed(ca, "--status", "valid")
    assert rows[old]["status"] == "valid" and rows[old]["superseded_by"] == new  # --json keeps its statuses
    assert rows[new]["superseded_by"] is None
    assert set(_listed(ca, "--status", "valid", "--current")) == {new, bob}

    table = ca.ok("list").stdout.splitlines()
    assert table[0].split() == ["SERIAL", "KIND", "NAME", "STATUS", "NOT", "AFTER", "NAMES", "/", "ROLES"]
    by_serial = {line.split()[0]: line.split() for line in table[1:]}
    assert by_serial[old[:12]][3] == "superseded" and by_serial[new[:12]][3] == "valid"
    assert "\x1b[" not in ca.ok("list").stdout  # no colour outside a terminal
    assert {line.split()[0] for line in ca.ok("list", "--wide").stdout.splitlines()[1:]} == {old, new, bob}

    # Revoking the renewal makes the old certificate current again.
    ca.ok("revoke", new)
    assert _listed(ca, "--status", "valid")[old]["superseded_by"] is None
    assert set(_listed(ca, "--status", "valid", "--current")) == {old, bob}
