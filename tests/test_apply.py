"""`mcp-pki apply ROSTER`: the team as a YAML roster (issue 11).

Real keys, a real SQLite inventory, OpenSSL as a subprocess. Rosters are written as a
newcomer would write them.
"""

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_pki.errors import InvalidInput
from mcp_pki.services.roster import parse_roster
from tests.conftest import Cli, Snapshot, assert_clean_error, openssl, table_counts


def roster(clients: list[dict[str, object]], servers: list[dict[str, object]] | None = None) -> str:
    return json.dumps({"servers": servers or [], "clients": clients})  # JSON is YAML


def team(size: int, *, changed: dict[str, list[str]] | None = None, without: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    clients = [
        {"name": f"user{i:02d}", "email": [f"user{i:02d}@example.com"], "roles": (changed or {}).get(f"user{i:02d}", ["dev"])}
        for i in range(size) if f"user{i:02d}" not in without
    ]
    servers = [{"name": "mcp-files", "dns": ["mcp-files.internal"], "ip": ["10.0.0.5"]},
               {"name": "mcp-search", "dns": ["mcp-search.internal"]}]
    return roster(clients, servers)


def leaf(folder: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates((folder / "tls.crt").read_bytes())[0]


def verify_with_crls(ca: Cli, folder: Path) -> bool:
    chain = str(folder / "tls.crt")
    result = openssl("verify", "-crl_check_all", "-CAfile", str(ca.home / "ca.crt"), "-untrusted", chain,
                     "-CRLfile", str(ca.home / "crl.pem"), chain)
    return result.returncode == 0


def revoked_serials(ca: Cli) -> set[int]:
    crls = [x509.load_pem_x509_crl(b"-----BEGIN X509 CRL" + part)
            for part in (ca.home / "crl.pem").read_bytes().split(b"-----BEGIN X509 CRL")[1:]]
    return {entry.serial_number for crl in crls for entry in crl}


def test_a_roster_is_issued_replaced_pruned_and_reapplied_as_planned(ca: Cli) -> None:
    file = ca.cwd / "team.yaml"
    file.write_text(team(24))

    before = Snapshot(ca)
    planned = json.loads(ca.ok("apply", "team.yaml", "--dry-run", "--json", "--out-root", "certs").stdout)
    before.assert_unchanged()
    assert planned["totals"] == {"issue": 26, "replace": 0, "renew": 0, "revoke": 0, "unchanged": 0,
                                 "not_in_roster": 0}
    text_plan = ca.ok("apply", "team.yaml", "--dry-run", "--out-root", "certs")
    assert "26 to issue, 0 to replace, 0 to renew, 0 to revoke, 0 unchanged" in text_plan.stderr
    before.assert_unchanged()

    done = json.loads(ca.ok("apply", "team.yaml", "--json", "--out-root", "certs").stdout)
    assert [(a["action"], a["name"]) for a in done["actions"]] == [(a["action"], a["name"]) for a in planned["actions"]]
    assert len({a["serial"] for a in done["actions"]}) == 26
    certs = ca.cwd / "certs"
    for name in ("user00", "user23", "mcp-files"):
        folder = certs / name
        assert stat.S_IMODE(os.stat(folder / "tls.key").st_mode) == 0o600
        assert verify_with_crls(ca, folder)
        key = serialization.load_pem_private_key((folder / "tls.key").read_bytes(), None)
        assert key.public_key() == leaf(folder).public_key()
    alice = leaf(certs / "user03")
    assert [a.value for a in alice.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)] == ["dev"]
    assert alice.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.RFC822Name) == ["user03@example.com"]

    # Applying again changes nothing at all.
    again = Snapshot(ca)
    result = ca.ok("apply", "team.yaml", "--out-root", "certs")
    assert "nothing to do (26 unchanged)" in result.stderr
    again.assert_unchanged()

    # One role changes: exactly that certificate is replaced, the old one superseded.
    old = leaf(certs / "user05")
    file.write_text(team(24, changed={"user05": ["dev", "admin"]}))
    plan = json.loads(ca.ok("apply", "team.yaml", "--dry-run", "--json", "--out-root", "certs").stdout)
    assert [(a["action"], a["name"], a["why"]) for a in plan["actions"]] == [("replace", "user05", "roles differ")]
    assert plan["totals"]["unchanged"] == 25
    ca.ok("apply", "team.yaml", "--out-root", "certs")
    new = leaf(certs / "user05")
    assert new.serial_number != old.serial_number
    assert sorted(a.value for a in new.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)) == ["admin", "dev"]
    crl = x509.load_pem_x509_crl(b"-----BEGIN X509 CRL" + (ca.home / "crl.pem").read_bytes().split(b"-----BEGIN X509 CRL")[1])
    entry = crl.get_revoked_certificate_by_serial_number(old.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.superseded

    # A teammate leaves: reported, then revoked with --prune, and refused by OpenSSL.
    file.write_text(team(24, changed={"user05": ["dev", "admin"]}, without={"user07"}))
    reported = ca.ok("apply", "team.yaml", "--out-root", "certs")
    assert "user07" in reported.stderr and "not in the roster" in reported.stderr
    assert verify_with_crls(ca, certs / "user07")
    pruned = json.loads(ca.ok("apply", "team.yaml", "--out-root", "certs", "--prune", "--dry-run", "--json").stdout)
    assert [(a["action"], a["name"], a["reason"]) for a in pruned["actions"]] == [
        ("revoke", "user07", "affiliation-changed")]
    ca.ok("apply", "team.yaml", "--out-root", "certs", "--prune")
    assert not verify_with_crls(ca, certs / "user07")
    assert leaf(certs / "user07").serial_number in revoked_serials(ca)
    assert verify_with_crls(ca, certs / "user06")
    assert "nothing to do" in ca.ok("apply", "team.yaml", "--out-root", "certs", "--prune").stderr
    ca.ok("audit", "verify")


def test_renewal_keeps_the_old_certificate_and_a_changed_key_type_replaces(ca: Cli) -> None:
    (ca.cwd / "r.yaml").write_text(roster([{"name": "short", "validity": "10d"}, {"name": "long"}]))
    ca.ok("apply", "r.yaml", "--renew-within", "5d")
    first = leaf(ca.cwd / "short")
    # Ten days left, and the team now wants 40-day certificates renewed 30 days ahead.
    (ca.cwd / "r.yaml").write_text(roster([{"name": "short", "validity": "40d"}, {"name": "long"}]))
    plan = json.loads(ca.ok("apply", "r.yaml", "--dry-run", "--json").stdout)
    assert [(a["action"], a["name"], a["renews"]) for a in plan["actions"]] == [
        ("renew", "short", format(first.serial_number, "x"))]
    ca.ok("apply", "r.yaml", "--renew-within", "5d")  # outside that window: nothing
    assert leaf(ca.cwd / "short").serial_number == first.serial_number
    ca.ok("apply", "r.yaml")
    renewed = leaf(ca.cwd / "short")
    assert renewed.serial_number != first.serial_number
    listing = json.loads(ca.ok("list", "--name", "short", "--json").stdout)
    assert sorted(c["status"] for c in listing) == ["valid", "valid"]  # renewal overlaps the old one

    (ca.cwd / "r.yaml").write_text(roster([{"name": "short", "validity": "40d"}, {"name": "long", "key_type": "p384"}]))
    ca.ok("apply", "r.yaml", "--renew-within", "1d")
    assert isinstance(leaf(ca.cwd / "long").public_key(), ec.EllipticCurvePublicKey)
    assert leaf(ca.cwd / "long").public_key().curve.name == "secp384r1"  # type: ignore[union-attr]


def test_two_matching_certificates_that_are_not_renewals_leave_one_valid(ca: Cli) -> None:
    """A run killed between issuing a replacement and revoking the old certificate (or an
    `issue` beside the roster) leaves two valid certificates that both match: the next run
    keeps the newest, and revokes the other as superseded. A renewal's overlap stays."""
    ca.ok("issue", "client", "dana", "--role", "dev", "--out", "old")
    ca.ok("issue", "client", "dana", "--role", "dev", "--out", "dana")
    (ca.cwd / "r.yaml").write_text(roster([{"name": "dana", "roles": ["dev"]}]))
    plan = json.loads(ca.ok("apply", "r.yaml", "--dry-run", "--json").stdout)
    assert [(a["action"], a["name"]) for a in plan["actions"]] == [("revoke", "dana")]
    ca.ok("apply", "r.yaml")
    listing = json.loads(ca.ok("list", "--name", "dana", "--json").stdout)
    assert sorted(c["status"] for c in listing) == ["revoked", "valid"]
    valid = next(c for c in listing if c["status"] == "valid")
    assert valid["serial"] == format(leaf(ca.cwd / "dana").serial_number, "x")
    assert int(next(c for c in listing if c["status"] == "revoked")["serial"], 16) in revoked_serials(ca)
    assert "nothing to do" in ca.ok("apply", "r.yaml").stderr


def test_a_roster_entry_with_a_csr_keeps_the_requesters_key(ca: Cli) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carol")]))
           .sign(key, hashes.SHA256()))
    requests = ca.cwd / "roster"
    requests.mkdir()
    (requests / "carol.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    (requests / "team.yaml").write_text(roster([{"name": "carol", "roles": ["ops"], "csr": "carol.csr"}]))
    ca.ok("apply", "roster/team.yaml", "--out-root", "out")
    folder = ca.cwd / "out" / "carol"
    assert not (folder / "tls.key").exists()
    assert leaf(folder).public_key() == key.public_key()
    assert "nothing to do" in ca.ok("apply", "roster/team.yaml", "--out-root", "out").stderr


def test_a_csr_entry_signed_into_the_requesters_folder_leaves_their_key_in_place(ca: Cli) -> None:
    """`mcp-pki request carol` writes carol/tls.key and carol/carol.csr; applying a roster
    that names that CSR writes tls.crt beside the key and must never remove it. A key of
    another certificate (the one a roster entry used to generate) is removed as stale."""
    ca.ok("request", "carol")
    ca.ok("request", "dave", "--out", "requests/dave")
    (ca.cwd / "team.yaml").write_text(roster([
        {"name": "carol", "roles": ["ops"], "csr": "carol/carol.csr"},
        {"name": "dave", "roles": ["ops"]},
    ]))
    carol_key = (ca.cwd / "carol" / "tls.key").read_bytes()
    old_csr = (ca.cwd / "carol" / "carol.csr").read_bytes()
    ca.ok("apply", "team.yaml")
    assert (ca.cwd / "carol" / "tls.key").read_bytes() == carol_key
    assert leaf(ca.cwd / "carol").public_key() == serialization.load_pem_private_key(carol_key, None).public_key()
    # dave switches to his own key: the roster now names his CSR, signed into his old folder.
    generated = (ca.cwd / "dave" / "tls.key").read_bytes()
    (ca.cwd / "team.yaml").write_text(roster([
        {"name": "carol", "roles": ["ops", "admin"], "csr": "carol/carol.csr"},
        {"name": "dave", "roles": ["ops"], "csr": "requests/dave/dave.csr"},
    ]))
    ca.ok("apply", "team.yaml")
    assert (ca.cwd / "carol" / "tls.key").read_bytes() == carol_key  # replaced for a role, key kept
    assert "admin" in str(leaf(ca.cwd / "carol").subject)
    assert not (ca.cwd / "dave" / "tls.key").exists(), "the generated key no longer pairs with tls.crt"
    assert generated != (ca.cwd / "requests" / "dave" / "tls.key").read_bytes()
    assert "nothing to do" in ca.ok("apply", "team.yaml").stderr
    # A run killed after dave's new tls.crt but before it removed the generated key left it
    # there: the plan finds the folder's key pairs with nothing, and the run repairs it.
    (ca.cwd / "dave" / "tls.key").write_bytes(generated)
    plan = json.loads(ca.ok("apply", "team.yaml", "--dry-run", "--json").stdout)
    assert [(a["action"], a["name"]) for a in plan["actions"]] == [("replace", "dave")]
    ca.ok("apply", "team.yaml")
    assert not (ca.cwd / "dave" / "tls.key").exists()
    # The roster keeps its own copy of carol's CSR. She makes a new key before sending a
    # new CSR: her folder now holds a key the CA never saw. It is hers, maybe the only
    # copy: nothing is signed over it, and nothing removes it.
    (ca.cwd / "csrs").mkdir()
    (ca.cwd / "csrs" / "carol.csr").write_bytes(old_csr)
    carol = {"name": "carol", "roles": ["ops", "admin"], "csr": "csrs/carol.csr"}
    dave = {"name": "dave", "roles": ["ops"], "csr": "requests/dave/dave.csr"}
    (ca.cwd / "team.yaml").write_text(roster([carol, dave]))
    assert "nothing to do" in ca.ok("apply", "team.yaml").stderr
    ca.ok("request", "carol", "--force")
    newer = (ca.cwd / "carol" / "tls.key").read_bytes()
    assert "nothing to do" in ca.ok("apply", "team.yaml").stderr
    (ca.cwd / "team.yaml").write_text(roster([{**carol, "roles": ["ops"]}, dave]))
    ca.ok("apply", "team.yaml")  # a role change re-signs her old CSR: her newer key stays
    assert (ca.cwd / "carol" / "tls.key").read_bytes() == newer


def test_issue_force_from_a_csr_keeps_the_requesters_key_beside_it(ca: Cli) -> None:
    ca.ok("request", "erin")
    key = (ca.cwd / "erin" / "tls.key").read_bytes()
    ca.ok("issue", "client", "erin", "--csr", "erin/erin.csr", "--out", "erin")
    ca.ok("issue", "client", "erin", "--csr", "erin/erin.csr", "--out", "erin", "--force", "--role", "ops")
    assert (ca.cwd / "erin" / "tls.key").read_bytes() == key


def test_an_interrupted_run_is_completed_by_the_next_one(ca: Cli) -> None:
    """A certificate recorded but whose files never reached its folder (the run was killed
    after the commit) is replaced; an old certificate left valid beside its replacement is
    revoked; nothing else is touched."""
    (ca.cwd / "t.yaml").write_text(team(4))
    ca.ok("apply", "t.yaml")
    lost = leaf(ca.cwd / "user01")
    (ca.cwd / "user01" / "tls.crt").unlink()
    plan = json.loads(ca.ok("apply", "t.yaml", "--dry-run", "--json").stdout)
    assert [(a["action"], a["name"]) for a in plan["actions"]] == [("replace", "user01")]
    assert "tls.crt is missing" in plan["actions"][0]["why"]
    ca.ok("apply", "t.yaml")
    assert lost.serial_number in revoked_serials(ca)
    assert verify_with_crls(ca, ca.cwd / "user01")
    # A run killed between putting a new certificate's tls.key in place and its tls.crt
    # leaves the folder's certificate paired with a key we generated for another one.
    earlier_key = (ca.cwd / "user03" / "tls.key").read_bytes()
    (ca.cwd / "t.yaml").write_text(team(4, changed={"user03": ["dev", "ops"]}))
    ca.ok("apply", "t.yaml")
    current = leaf(ca.cwd / "user03")
    (ca.cwd / "user03" / "tls.key").write_bytes(earlier_key)
    plan = json.loads(ca.ok("apply", "t.yaml", "--dry-run", "--json").stdout)
    assert [(a["action"], a["name"]) for a in plan["actions"]] == [("replace", "user03")]
    assert "tls.key holds the key of another certificate of user03" in plan["actions"][0]["why"]
    ca.ok("apply", "t.yaml")
    assert current.serial_number in revoked_serials(ca)
    key = serialization.load_pem_private_key((ca.cwd / "user03" / "tls.key").read_bytes(), None)
    assert key.public_key() == leaf(ca.cwd / "user03").public_key()
    # A key we never generated is someone's own (a teammate who ran `mcp-pki request` there
    # before sending the CSR): never replaced over, never removed.
    theirs = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (ca.cwd / "user00" / "tls.key").write_bytes(theirs)
    assert "nothing to do" in ca.ok("apply", "t.yaml").stderr
    assert (ca.cwd / "user00" / "tls.key").read_bytes() == theirs
    # A folder moved away on purpose (the key handed over) is not a reason to reissue.
    (ca.cwd / "user02").rename(ca.cwd / "handed-over")
    assert "nothing to do" in ca.ok("apply", "t.yaml").stderr


BAD_ROSTERS = [
    ("clients: [name: alice", ["not valid YAML"]),
    ("clients:\n  - name: alice\n    role: [admin]\n", ["clients[0] (line 2) alice: unknown key 'role' (did you mean 'roles'?)"]),
    ("clients:\n  - name: alice\n  - name: bob\n  - name: alice\n",
     ["clients[2] (line 4) alice: duplicate name 'alice' (also clients[0] (line 2) alice)"]),
    ("servers:\n  - name: web\n    dns: [bad_name.internal]\n", ["servers[0] (line 2) web: invalid DNS name"]),
    ("servers:\n  - name: web\n", ["a server needs at least one dns: or ip: name"]),
    ("clients:\n  - name: alice\n    name: bob\n", ["line 3: duplicate key 'name'"]),
    ("teams: []\nclients: []\n", ["unknown key 'teams'"]),
    ("clients:\n  - name: al/ice\n  - name: bob\n    email: [not-an-address]\n  - name: carol\n    validity: 0d\n",
     ["clients[0] (line 2) al/ice: invalid name", "clients[1] (line 3) bob: invalid email address",
      "clients[2] (line 5) carol: invalid duration", "has 3 problems"]),
    ("clients:\n  - name: dave\n    csr: missing.csr\n", ["cannot read CSR"]),
    ("", ["it is empty"]),
    # An alias can make a few lines stand for an endless document, or a cyclic one.
    ("clients: &c\n  - name: alice\n  - *c\n", ["line 3: alias *c refused"]),
    ("a: &a [x, x, x, x, x, x, x, x, x]\n"
     + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))
     + "clients: [{name: x, roles: *i}]\n", ["line 2: alias *a refused", "line 10: alias *i refused"]),
    ("clients:\n  - name: dave\n    csr: /dev/zero\n", ["CSR /dev/zero is larger than 16 MiB"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_ROSTERS)
def test_a_malformed_roster_is_one_error_listing_every_problem(ca: Cli, text: str, fragments: list[str]) -> None:
    (ca.cwd / "bad.yaml").write_text(text)
    before = Snapshot(ca)
    result = ca("apply", "bad.yaml")
    assert_clean_error(result, fragments[0])
    for fragment in fragments[1:]:
        assert fragment in result.stderr, result.stderr
    before.assert_unchanged()


def test_a_run_stopped_by_a_failure_still_reports_what_it_signed(ca: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up in the second batch: --json still prints one document naming every
    certificate signed, those without files marked so, and the run as incomplete; the next
    run completes the rest."""
    from mcp_pki.services import apply as service
    from mcp_pki.services.files import FilesNotWritten

    monkeypatch.setattr(service, "BATCH_SIZE", 10)
    real_write = service._write_files
    calls = 0

    def disk_full_from_the_fifteenth(item: object, *, replace: bool) -> list[Path]:
        nonlocal calls
        calls += 1
        if 15 <= calls <= 17:
            raise FilesNotWritten("cannot write tls.key: No space left on device")
        return real_write(item, replace=replace)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "_write_files", disk_full_from_the_fifteenth)
    (ca.cwd / "t.yaml").write_text(team(24))
    result = ca("apply", "t.yaml", "--json")
    assert result.exit_code == 1
    warning, error = result.stderr.splitlines()
    assert warning == "Warning: 20 certificates were signed and recorded before the run stopped; run apply again " \
        "to complete the rest"
    assert error == "Error: cannot write tls.key: No space left on device"
    document = json.loads(result.stdout)
    assert document["complete"] is False and "No space left" in document["error"]
    recorded = {c["serial"] for c in json.loads(ca.ok("list", "--json").stdout)}
    assert {a["serial"] for a in document["actions"]} == recorded and len(recorded) == 20
    assert sum(1 for a in document["actions"] if "files_error" in a) == 3

    monkeypatch.setattr(service, "_write_files", real_write)
    after = json.loads(ca.ok("apply", "t.yaml", "--json").stdout)
    assert after["complete"] is True
    assert sorted(a["action"] for a in after["actions"]).count("replace") == 3  # the three without files
    done = json.loads(ca.ok("apply", "t.yaml", "--json").stdout)
    assert done["complete"] is True and done["actions"] == []
    assert len(json.loads(ca.ok("list", "--status", "valid", "--json").stdout)) == 26


def test_a_database_lost_between_batches_still_reports_the_first(ca: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3 as driver

    from sqlalchemy.exc import OperationalError

    from mcp_pki.services import apply as service

    monkeypatch.setattr(service, "BATCH_SIZE", 10)
    real_batch = service._sign_batch
    batches = 0

    def locked_on_the_second(*args: object, **kwargs: object) -> object:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise OperationalError("BEGIN IMMEDIATE", {}, driver.OperationalError("database is locked"))
        return real_batch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "_sign_batch", locked_on_the_second)
    (ca.cwd / "t.yaml").write_text(team(24))
    result = ca("apply", "t.yaml", "--json")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == "Error: database error: database is locked"
    assert "10 certificates were signed and recorded before the run stopped" in result.stderr
    document = json.loads(result.stdout)
    assert document["complete"] is False and document["error"] == "database is locked"
    assert len(document["actions"]) == 10


def test_a_roster_that_never_ends_is_refused_unread(ca: Cli) -> None:
    before = Snapshot(ca)
    assert_clean_error(ca("apply", "/dev/zero"), "roster /dev/zero is larger than 64 MiB")
    before.assert_unchanged()


def test_names_outside_the_permitted_names_are_refused_before_anything_is_signed(mcp: Cli) -> None:
    mcp.ok("init-ca", "--name", "Narrow", "--permit-dns", "corp.internal")
    (mcp.cwd / "team.yaml").write_text(roster(
        [{"name": "ok"}],
        [{"name": "inside", "dns": ["a.corp.internal"]}, {"name": "outside", "dns": ["evil.example.com"]},
         {"name": "also", "dns": ["b.other.internal"]}],
    ))
    counts = table_counts(mcp.db)
    before = Snapshot(mcp)
    result = mcp("apply", "team.yaml")
    assert_clean_error(result, "has 2 problems")
    assert "servers[1] (line 1) outside" in result.stderr and "servers[2] (line 1) also" in result.stderr
    assert "evil.example.com" in result.stderr and "b.other.internal" in result.stderr
    before.assert_unchanged()
    assert table_counts(mcp.db) == counts


def test_every_problem_is_reported_in_one_round_with_the_names_the_ca_may_not_sign(mcp: Cli) -> None:
    """Schema problems, duplicate names among broken entries, every bad name of an entry,
    and names outside --permit-*: one error, so a roster is fixed in one round."""
    mcp.ok("init-ca", "--name", "Narrow", "--permit-dns", "example.internal")
    (mcp.cwd / "team.yaml").write_text(
        "servers:\n"
        "  - {name: web, dns: [web.other.org]}\n"
        "  - {name: api, dns: [bad..one, bad_two.example.internal], ip: [999.1.1.1]}\n"
        "clients:\n"
        "  - {name: alice, roles: [admin]}\n"
        "  - {name: alice, role: [admin]}\n"
        "  - {name: bob, colour: blue}\n"
    )
    before = Snapshot(mcp)
    result = mcp("apply", "team.yaml", "--dry-run")
    assert_clean_error(result, "has 7 problems")
    for fragment in ("clients[1] (line 6) alice: unknown key 'role'", "clients[1] (line 6) alice: duplicate name 'alice'",
                     "clients[2] (line 7) bob: unknown key 'colour'", "'bad..one'", "'bad_two.example.internal'",
                     "'999.1.1.1'", "servers[0] (line 2) web:", "web.other.org"):
        assert fragment in result.stderr, (fragment, result.stderr)
    before.assert_unchanged()


def test_a_validity_inside_the_renewal_window_is_refused_as_a_renewal_on_every_run(ca: Cli) -> None:
    (ca.cwd / "r.yaml").write_text(roster([{"name": "shorty", "validity": "20d"}, {"name": "fine"}]))
    before = Snapshot(ca)
    result = ca("apply", "r.yaml")
    assert_clean_error(result, "clients[0] (line 1) shorty: a validity of 20d is within --renew-within (30d)")
    before.assert_unchanged()
    ca.ok("apply", "r.yaml", "--renew-within", "7d")
    assert "nothing to do" in ca.ok("apply", "r.yaml", "--renew-within", "7d").stderr


def test_a_validity_the_policy_shortens_into_the_renewal_window_is_refused(ca: Cli) -> None:
    (ca.cwd / "r.yaml").write_text("defaults: {validity: 500d}\nclients: [{name: c1}]\n")
    before = Snapshot(ca)
    result = ca("apply", "r.yaml", "--renew-within", "400d")
    assert_clean_error(result, "a validity of 500d, shortened to the policy maximum of 397d, is within --renew-within")
    before.assert_unchanged()


def test_certificates_that_expire_with_the_issuing_ca_are_not_renewed_on_every_run(mcp: Cli) -> None:
    """The issuing CA has 20 days left, inside the 30-day renewal window: every certificate
    ends with it, and a renewal would end there too. Reported once, and nothing signed."""
    mcp.ok("init-ca", "--name", "Short", "--validity", "40d")
    (mcp.cwd / "r.yaml").write_text(roster([{"name": "c1"}, {"name": "c2"}]))
    mcp.ok("apply", "r.yaml")
    result = mcp.ok("apply", "r.yaml")
    assert "nothing to do (2 unchanged)" in result.stderr
    assert "Warning: not renewed: c1, c2: the issuing CA expires on" in result.stderr
    assert len(json.loads(mcp.ok("list", "--json").stdout)) == 2
    # The same for the nightly `renew --expiring-within`.
    renewed = mcp.ok("renew", "--expiring-within", "30d", "--out-root", "renewed", "--json")
    assert "Warning: not renewed: c1, c2: the issuing CA expires on" in renewed.stderr
    document = json.loads(renewed.stdout)
    assert document["renewed"] == [] and [c["name"] for c in document["not_renewed"]] == ["c1", "c2"]
    assert len(json.loads(mcp.ok("list", "--json").stdout)) == 2


def test_renew_names_the_policy_when_it_would_end_a_renewal_before_the_certificate(ca: Cli) -> None:
    ca.ok("issue", "client", "dave", "--validity", "25d")
    (ca.home / "config.yaml").write_text("policy: {max_validity: 20d}\n")
    renewed = ca.ok("renew", "--expiring-within", "30d", "--out-root", "renewed", "--json")
    assert "Warning: not renewed: dave: the policy maximum (config.yaml policy: max_validity) would end a " \
        "renewal before they expire" in renewed.stderr
    assert "issuing CA" not in renewed.stderr
    document = json.loads(renewed.stdout)
    assert document["not_renewed"][0]["reason"] == "the policy maximum ends a renewal sooner"
    assert document["renewed"] == []


def test_a_validity_beyond_the_policy_is_shortened_with_a_warning(ca: Cli) -> None:
    (ca.cwd / "r.yaml").write_text(roster([{"name": "longy", "validity": "100y"}, {"name": "fine"}]))
    result = ca.ok("apply", "r.yaml")
    assert "Warning: validity shortened to the policy maximum (397d) for longy\n" in result.stderr
    lifetime = leaf(ca.cwd / "longy").not_valid_after_utc - leaf(ca.cwd / "longy").not_valid_before_utc
    assert 397 <= lifetime.days <= 398  # backdated a little, as every leaf


def test_an_output_folder_that_cannot_be_written_is_found_by_the_plan(ca: Cli) -> None:
    """Found while planning (in a dry run too), not after a batch has been signed."""
    (ca.cwd / "t.yaml").write_text(team(12))
    out = ca.cwd / "out"
    out.mkdir()
    (out / "user07").write_text("not a folder")
    (out / "user09").mkdir()
    (out / "user09" / "tls.crt").mkdir()
    (out / "user11").symlink_to(ca.cwd / "nowhere")
    before = Snapshot(ca)
    for dry_run in (["--dry-run"], []):
        result = ca("apply", "t.yaml", "--out-root", "out", *dry_run)
        assert_clean_error(result, "has 3 problems")
        assert f"user11: cannot write into {out / 'user11'}: {out / 'user11'} is not a folder" in result.stderr
        assert f"user07: cannot write into {out / 'user07'}: {out / 'user07'} is not a folder" in result.stderr
        assert f"user09: {out / 'user09' / 'tls.crt'} is a folder" in result.stderr
        before.assert_unchanged()


def test_a_name_moving_between_servers_and_clients_never_overwrites_a_valid_certificates_files(ca: Cli) -> None:
    (ca.cwd / "r.yaml").write_text(roster([], [{"name": "files", "dns": ["files.internal"]}]))
    ca.ok("apply", "r.yaml")
    server = leaf(ca.cwd / "files")
    (ca.cwd / "r.yaml").write_text(roster([{"name": "files", "roles": ["bot"]}]))
    before = Snapshot(ca)
    result = ca("apply", "r.yaml")
    assert_clean_error(result, f"holds the files of the valid server certificate {server.serial_number:x}")
    assert "--prune" in result.stderr
    before.assert_unchanged()
    # The same folder, however it is spelled.
    (ca.cwd / "link").symlink_to(ca.cwd)
    for out_root in ("out/..", "link"):
        assert_clean_error(ca("apply", "r.yaml", "--out-root", out_root), "holds the files of the valid server")
    before.assert_unchanged()
    ca.ok("apply", "r.yaml", "--prune")  # the move, on purpose: the server certificate is revoked
    assert server.serial_number in revoked_serials(ca)
    assert leaf(ca.cwd / "files").extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])


# --- properties of roster validation ----------------------------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
ROLES = st.lists(st.from_regex(r"[a-z][a-z0-9._:-]{0,15}", fullmatch=True), max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(NAMES, ROLES, min_size=1, max_size=12))
def test_every_valid_roster_parses_to_its_entries(people: dict[str, list[str]]) -> None:
    text = roster([{"name": n, "roles": r} for n, r in people.items()])
    parsed = parse_roster(text.encode(), source="r.yaml", base_dir=Path("."))
    assert [(e.name, list(e.roles), e.owner) for e in parsed.entries] == [
        (n, list(dict.fromkeys(r)), n) for n, r in people.items()]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(NAMES, ROLES, min_size=1, max_size=12), st.data())
def test_any_unknown_key_is_reported_at_its_entry(people: dict[str, list[str]], data: st.DataObject) -> None:
    entries: list[dict[str, object]] = [{"name": n, "roles": r} for n, r in people.items()]
    position = data.draw(st.integers(0, len(entries) - 1))
    key = data.draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(
        lambda k: k not in {"name", "uri", "owner", "validity", "key_type", "csr", "email", "roles"}))
    entries[position][key] = "x"
    with pytest.raises(InvalidInput) as caught:
        parse_roster(roster(entries).encode(), source="r.yaml", base_dir=Path("."))
    message = str(caught.value)
    assert f"clients[{position}]" in message and f"unknown key {key!r}" in message
    assert "1 problem:" in message


@settings(max_examples=40, deadline=None)
@given(st.lists(NAMES, min_size=2, max_size=10))
def test_duplicate_names_are_each_reported(names: list[str]) -> None:
    text = roster([{"name": n} for n in names])
    duplicates = len(names) - len(set(names))
    if not duplicates:
        assert len(parse_roster(text.encode(), source="r", base_dir=Path(".")).entries) == len(names)
        return
    with pytest.raises(InvalidInput) as caught:
        parse_roster(text.encode(), source="r", base_dir=Path("."))
    assert str(caught.value).count("duplicate name") == duplicates


def test_the_readme_roster_applies_as_pasted(ca: Cli) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Manage the team as a roster", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (ca.cwd / "team.yaml").write_text(example)
    (ca.cwd / "requests").mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carol")])).sign(key, hashes.SHA256()))
    (ca.cwd / "requests" / "carol.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    plan = json.loads(ca.ok("apply", "team.yaml", "--dry-run", "--json").stdout)
    assert sorted(a["name"] for a in plan["actions"]) == ["alice", "bob", "carol", "mcp-files"]
    ca.ok("apply", "team.yaml", "--out-root", "certs")
    assert verify_with_crls(ca, ca.cwd / "certs" / "mcp-files")
    assert leaf(ca.cwd / "certs" / "carol").public_key() == key.public_key()
    assert "nothing to do (4 unchanged)" in ca.ok("apply", "team.yaml", "--out-root", "certs").stderr


TEAM = [f"member{i}" for i in range(8)]
CHANGES = st.sampled_from(["same", "roles", "email", "gone"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(CHANGES, min_size=len(TEAM), max_size=len(TEAM)), st.integers(0, 3), st.booleans())
def test_the_plan_is_exactly_the_difference_between_roster_and_inventory(
    ca: Cli, changes: list[str], newcomers: int, prune: bool,
) -> None:
    """Planning reads only, so one applied roster serves every example."""
    from datetime import UTC, datetime, timedelta

    from mcp_pki.services.apply import plan_roster
    from mcp_pki.services.home import resolve_home
    from mcp_pki.store.db import open_inventory

    base = [{"name": n, "roles": ["dev"], "email": [f"{n}@example.com"]} for n in TEAM]
    if not (ca.cwd / "base.yaml").exists():
        (ca.cwd / "base.yaml").write_text(roster(base))
        ca.ok("apply", "base.yaml")
    entries = []
    for entry, change in zip(base, changes, strict=True):
        if change == "roles":
            entry = {**entry, "roles": ["dev", "ops"]}
        elif change == "email":
            entry = {**entry, "email": [f"{entry['name']}@other.example"]}
        if change != "gone":
            entries.append(entry)
    entries += [{"name": f"new{i}"} for i in range(newcomers)]
    parsed = parse_roster(roster(entries).encode(), source="r.yaml", base_dir=ca.cwd)
    home = resolve_home(str(ca.home), None)
    engine = open_inventory(home.db_url)
    try:
        plan = plan_roster(engine, parsed, out_root=ca.cwd, renew_within=timedelta(days=30), prune=prune,
                           crl_file=home.crl_file, now=datetime.now(UTC))
    finally:
        engine.dispose()
    expected = (
        [("replace", n) for n, c in zip(TEAM, changes, strict=True) if c in ("roles", "email")]
        + [("issue", f"new{i}") for i in range(newcomers)]
        + [("revoke", n) for n, c in zip(TEAM, changes, strict=True) if c == "gone" and prune]
    )
    assert sorted((s.action.value, s.name) for s in plan.steps) == sorted(expected)
    assert plan.unchanged == changes.count("same")
    assert sorted(h.name for h in plan.not_in_roster) == ([] if prune else [n for n, c in zip(TEAM, changes,
                                                                                            strict=True) if c == "gone"])
