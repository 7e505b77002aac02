"""The lifecycle of issue 3: revoke, offboard, CRLs, renew, status and verify.

Real keys, a real SQLite inventory, OpenSSL and pkilint as subprocesses. Whatever depends on
the clock calls the service functions with a fixed `now` instead of waiting.
"""

import json
import sqlite3
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from mcp_pki.errors import Conflict, PolicyViolation
from mcp_pki.pki.crl import RevocationReason, authority_key_id, crl_number, load_crls
from mcp_pki.pki.keys import KeyType
from mcp_pki.pki.names import SubjectAltNames
from mcp_pki.pki.profiles import CertificateKind
from mcp_pki.services.authority import CaRequest, init_ca, unlock_all
from mcp_pki.services.health import Level, check_health
from mcp_pki.services.home import Home, resolve_home
from mcp_pki.services.issuance import LeafRequest, OutputRequest, issue_leaf
from mcp_pki.services.renewal import RenewOptions, renew_certificate, renew_expiring
from mcp_pki.services.revocation import offboard, republish, revoke_certificate
from mcp_pki.services.verification import VerificationFailed, verify_certificate
from mcp_pki.store.db import open_inventory, read_session
from tests.conftest import (
    PASSPHRASE,
    VENV_BIN,
    Cli,
    Snapshot,
    assert_clean_error,
    openssl,
    table_counts,
)


def passphrase() -> bytes:
    return PASSPHRASE.encode()


REASON_FLAGS = {
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def home_of(cli: Cli) -> Home:
    return resolve_home(str(cli.home), None)


def issue(cli: Cli, kind: str, name: str, *args: str) -> dict:
    return json.loads(cli.ok("issue", kind, name, *args, "--json").stdout)


def show(cli: Cli, ref: str) -> dict:
    return json.loads(cli.ok("show", ref, "--json").stdout)


def bundle(cli: Cli) -> list[x509.CertificateRevocationList]:
    """The CRLs of <home>/crl.pem, in file order (issuing CA, then root)."""
    return load_crls((cli.home / "crl.pem").read_bytes())


def numbers(cli: Cli) -> list[int]:
    numbers = [crl_number(c) for c in bundle(cli)]
    assert all(isinstance(n, int) for n in numbers)
    return numbers  # type: ignore[return-value]


def authority_certificate(cli: Cli, role: str) -> x509.Certificate:
    with sqlite3.connect(cli.db) as connection:
        (text,) = connection.execute("SELECT certificate_pem FROM authorities WHERE role = ?", (role,)).fetchone()
    return x509.load_pem_x509_certificate(text.encode())


def entry(crl: x509.CertificateRevocationList, serial: str) -> x509.RevokedCertificate | None:
    return crl.get_revoked_certificate_by_serial_number(int(serial, 16))


def reason_of(revoked: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def audit_actions(cli: Cli, *, checkpoints: bool = False) -> list[str]:
    """The actions in the audit log, without the checkpoints that sign it unless asked."""
    with sqlite3.connect(cli.db) as connection:
        actions = [row[0] for row in connection.execute("SELECT action FROM audit_log ORDER BY seq")]
    return actions if checkpoints else [a for a in actions if a != "checkpoint"]


def leaf_of(cli: Cli, folder: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates((cli.cwd / folder / "tls.crt").read_bytes())[0]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def sqlite_backup(source: Path, destination: Path) -> None:
    """SQLite's online backup API, as an operator's backup job would use it."""
    src, dst = sqlite3.connect(source), sqlite3.connect(destination)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def lint_crl(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "lint_crl"), "lint", "-t", "CRL", "-p", "PKIX", "-f", "JSON", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def serious_findings(result: subprocess.CompletedProcess[str]) -> list[str]:
    """pkilint's findings of WARNING or worse (its exit code counts all findings)."""
    document = json.loads(result.stdout)
    return [
        f"{r['validator']}: {d['code']} ({d['severity']})"
        for r in document["results"] for d in r["finding_descriptions"]
        if d["severity"] in {"WARNING", "ERROR", "FATAL"}
    ]


def issue_many(home: Home, names: list[str], *, out: Path, now: datetime, owner: str | None = None,
               validity: Callable[[int], timedelta] = lambda i: timedelta(days=90)) -> dict[str, tuple[str, datetime]]:
    """Client certificates through the service layer, one engine for all: name -> (serial, not_after)."""
    engine = open_inventory(home.db_url)
    issued = {}
    with read_session(engine) as session, session.begin():
        unlocked = unlock_all(session, passphrase, now=now)  # once: each unlock costs scrypt
    try:
        for index, name in enumerate(names):
            leaf = issue_leaf(
                home,
                LeafRequest(kind=CertificateKind.CLIENT, name=name, sans=SubjectAltNames(), owner=owner or name,
                            validity=validity(index)),
                OutputRequest(out / name), passphrase=passphrase, now=now, engine=engine, unlocked=unlocked,
            )
            issued[name] = (leaf.facts.serial, leaf.facts.not_after)
    finally:
        engine.dispose()
    return issued


# --------------------------------------------------------------------------------------
# revoke
# --------------------------------------------------------------------------------------


def test_revoke_with_each_reason_puts_that_reason_code_on_the_crl(ca: Cli) -> None:
    serials = {reason: issue(ca, "client", f"user-{reason}")["serial"] for reason in REASON_FLAGS}
    for reason, serial in serials.items():
        result = json.loads(ca.ok("revoke", serial, "--reason", reason, "--json").stdout)
        assert [(r["serial"], r["reason"]) for r in result["revoked"]] == [(serial, reason)]
    issuing_crl = bundle(ca)[0]
    assert len(issuing_crl) == len(REASON_FLAGS)
    for reason, serial in serials.items():
        revoked = entry(issuing_crl, serial)
        assert revoked is not None, reason
        assert reason_of(revoked) == REASON_FLAGS[reason]
        shown = show(ca, serial)
        assert (shown["status"], shown["revocation_reason"]) == ("revoked", reason)
        assert when(shown["revoked_at"]).replace(microsecond=0) == revoked.revocation_date_utc


def test_revoke_without_reason_has_no_reason_code_and_invalidity_date_is_kept(ca: Cli) -> None:
    plain = issue(ca, "client", "plain")["serial"]
    spelled = issue(ca, "client", "spelled")["serial"]
    dated = issue(ca, "client", "dated")["serial"]
    offset = issue(ca, "client", "offset")["serial"]
    text = ca.ok("revoke", plain).stdout
    assert f"revoked client plain {plain} (unspecified)" in text
    ca.ok("revoke", spelled, "--reason", "unspecified")
    ca.ok("revoke", dated, "--reason", "key-compromise", "--invalidity-date", "2024-01-02T03:04:05Z")
    ca.ok("revoke", offset, "--invalidity-date", "2024-01-02T05:04:05+02:00")
    issuing_crl = bundle(ca)[0]
    for serial in (plain, spelled):
        revoked = entry(issuing_crl, serial)
        assert revoked is not None
        assert [e.oid for e in revoked.extensions] == []  # no reasonCode, no invalidity date
        assert show(ca, serial)["revocation_reason"] == "unspecified"
    for serial, reason in ((dated, x509.ReasonFlags.key_compromise), (offset, None)):
        revoked = entry(issuing_crl, serial)
        assert revoked is not None
        invalidity = revoked.extensions.get_extension_for_class(x509.InvalidityDate).value
        assert invalidity.invalidity_date_utc == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert reason_of(revoked) == reason


def test_revoking_twice_is_refused_and_keeps_the_first_revocation(ca: Cli) -> None:
    serial = issue(ca, "client", "alice")["serial"]
    ca.ok("revoke", "alice", "--reason", "key-compromise")
    first = show(ca, serial)
    first_entry = entry(bundle(ca)[0], serial)
    assert first_entry is not None
    snapshot = Snapshot(ca)
    for args in (("revoke", serial), ("revoke", serial, "--reason", "superseded"), ("revoke", "alice")):
        result = ca(*args)
        assert_clean_error(result, "already revoked")
        assert first["revoked_at"][:16].replace("T", " ") in result.stderr
    with pytest.raises(Conflict, match="already revoked"):  # a day later, through the service
        revoke_certificate(home_of(ca), serial, reason=None, invalidity_date=None, passphrase=passphrase,
                           now=datetime.now(UTC) + timedelta(days=1))
    snapshot.assert_unchanged()
    again = show(ca, serial)
    assert (again["revoked_at"], again["revocation_reason"]) == (first["revoked_at"], "key-compromise")
    second_entry = entry(bundle(ca)[0], serial)
    assert second_entry is not None
    assert second_entry.revocation_date_utc == first_entry.revocation_date_utc


@pytest.mark.parametrize(("args", "fragment"), [
    (("revoke", "nobody"), "no certificate matches"),
    (("revoke", "deadbeefdeadbeef"), "no certificate matches"),
    (("revoke", "alice", "--reason", "stolen"), "unknown revocation reason"),
    (("revoke", "alice", "--reason", "certificate-hold"), "unknown revocation reason"),
    (("revoke", "alice", "--reason", "key_compromise"), "unknown revocation reason"),
    (("revoke", "alice", "--invalidity-date", "yesterday"), "invalid date"),
    (("revoke", "alice", "--invalidity-date", "2999-01-01T00:00:00Z"), "future"),
    (("offboard", "nobody"), "nothing to revoke"),
    (("offboard", "alice", "--reason", "stolen"), "unknown revocation reason"),
    (("crl", "--next-update", "0d"), "greater than zero"),
    (("crl", "--next-update", "soon"), "invalid duration"),
    (("renew",), "either a REF or --expiring-within"),
    (("renew", "alice", "--expiring-within", "30d"), "either a REF or --expiring-within"),
    (("renew", "--expiring-within", "30d", "--validity", "10d"), "takes only"),
    (("renew", "--expiring-within", "0d"), "greater than zero"),
    (("renew", "alice", "--out-root", "elsewhere"), "--out-root"),
])
def test_bad_lifecycle_input_is_a_clean_error_that_changes_nothing(
    ca: Cli, args: tuple[str, ...], fragment: str
) -> None:
    issue(ca, "client", "alice")
    snapshot = Snapshot(ca)
    assert_clean_error(ca(*args), fragment)
    snapshot.assert_unchanged()
    assert show(ca, "alice")["status"] == "valid"


# --------------------------------------------------------------------------------------
# CRLs
# --------------------------------------------------------------------------------------


def test_init_ca_publishes_one_numbered_v2_crl_per_ca(ca: Cli) -> None:
    issuing, root = authority_certificate(ca, "issuing"), authority_certificate(ca, "root")
    assert root == x509.load_pem_x509_certificate((ca.home / "ca.crt").read_bytes())
    crls = bundle(ca)
    assert [c.issuer for c in crls] == [issuing.subject, root.subject]
    for crl, ca_cert in zip(crls, (issuing, root)):
        assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert authority_key_id(crl) == ski
        assert crl_number(crl) is not None and crl_number(crl) >= 1
        assert len(crl) == 0
        assert crl.next_update_utc - crl.last_update_utc == timedelta(days=7)  # type: ignore[operator]
        text = openssl("crl", "-noout", "-text", input=crl.public_bytes(serialization.Encoding.PEM))
        assert "Version 2 (0x1)" in text.stdout, text.stderr


def test_every_publication_raises_each_cas_number_and_adds_one_signed_audit_record(ca: Cli) -> None:
    issue(ca, "client", "alice", "--out", "a1")
    issue(ca, "client", "alice", "--out", "a2")
    issue(ca, "client", "bob")
    carol = issue(ca, "client", "carol")["serial"]
    seen = [numbers(ca)]
    records = len(audit_actions(ca, checkpoints=True))
    steps = [
        (("revoke", "bob"), "revoke"),
        (("crl",), "publish-crl"),
        (("offboard", "alice"), "offboard"),
        (("renew", "carol", "--out", "carol2", "--revoke-old"), "renew"),
        (("crl", "--next-update", "1d"), "publish-crl"),
    ]
    for args, action in steps:
        ca.ok(*args)
        current = numbers(ca)
        assert all(new > old for new, old in zip(current, seen[-1], strict=True)), (args, seen[-1], current)
        seen.append(current)
        actions = audit_actions(ca, checkpoints=True)
        # The record, then the checkpoint in which the issuing CA signs the chain's new head.
        assert len(actions) == records + 2 and actions[-2:] == [action, "checkpoint"], (args, actions)
        records += 2
    assert show(ca, carol)["revocation_reason"] == "superseded"
    # The inventory remembers every number it published.
    with sqlite3.connect(ca.db) as connection:
        recorded = connection.execute(
            "SELECT max(number) FROM crl_publications GROUP BY authority_id ORDER BY authority_id DESC"
        ).fetchall()
    assert [n for (n,) in recorded] == seen[-1]
    assert "audit log intact" in ca.ok("audit", "verify").stdout


def test_crl_json_der_and_out(ca: Cli) -> None:
    before = numbers(ca)
    document = json.loads(ca.ok("crl", "--json", "--der", "der", "--out", "copy/crl.pem").stdout)
    crls = document["crls"]
    assert [c["role"] for c in crls] == ["issuing", "root"]
    assert [c["number"] for c in crls] == numbers(ca)
    assert all(new > old for new, old in zip(numbers(ca), before))
    for c in crls:
        assert when(c["next_update"]) - when(c["this_update"]) == timedelta(days=7)
        assert abs(when(c["this_update"]) - datetime.now(UTC)) < timedelta(minutes=5)
        assert c["entries"] == 0
    files = {(ca.cwd / p).resolve() for p in document["files"]}
    der = ca.cwd / "der"
    assert files == {(ca.home / "crl.pem").resolve(), (ca.cwd / "copy" / "crl.pem").resolve(),
                     (der / "issuing.crl").resolve(), (der / "root.crl").resolve()}
    assert (ca.cwd / "copy" / "crl.pem").read_bytes() == (ca.home / "crl.pem").read_bytes()
    assert sorted(p.name for p in der.iterdir()) == ["issuing.crl", "root.crl"]
    for c in crls:
        crl = x509.load_der_x509_crl((der / f"{c['role']}.crl").read_bytes())
        assert crl_number(crl) == c["number"]
        assert crl.is_signature_valid(authority_certificate(ca, c["role"]).public_key())  # type: ignore[arg-type]
    text = ca.ok("crl").stdout
    assert f"CRL #{numbers(ca)[0]} of CN=Test Issuing CA,O=Example: 0 entries" in text


def test_next_update_follows_config_and_option(ca: Cli) -> None:
    def intervals() -> set[timedelta]:
        return {c.next_update_utc - c.last_update_utc for c in bundle(ca)}  # type: ignore[operator]

    assert intervals() == {timedelta(days=7)}
    (ca.home / "config.yaml").write_text("crl:\n  next_update: 3d\n")
    ca.ok("crl")
    assert intervals() == {timedelta(days=3)}
    issue(ca, "client", "alice")
    ca.ok("revoke", "alice")
    assert intervals() == {timedelta(days=3)}
    document = json.loads(ca.ok("crl", "--next-update", "12h", "--json").stdout)
    assert intervals() == {timedelta(hours=12)}
    assert {when(c["next_update"]) - when(c["this_update"]) for c in document["crls"]} == {timedelta(hours=12)}
    (ca.home / "config.yaml").write_text("crl:\n  next_update: 0d\n")
    snapshot = Snapshot(ca)
    assert_clean_error(ca("crl"), "greater than zero")
    snapshot.assert_unchanged()


def test_crl_number_never_goes_back_after_restoring_an_older_inventory(ca: Cli, tmp_path: Path) -> None:
    ca.ok("crl")
    saved = tmp_path / "backup.db"
    sqlite_backup(ca.db, saved)
    for _ in range(3):
        ca.ok("crl")
    highest = numbers(ca)
    sqlite_backup(saved, ca.db)  # the inventory goes back three publications; crl.pem does not
    with sqlite3.connect(ca.db) as connection:
        (recorded,) = connection.execute("SELECT max(number) FROM crl_publications").fetchone()
    assert recorded < max(highest)
    ca.ok("crl")
    after = numbers(ca)
    assert all(new > old for new, old in zip(after, highest, strict=True)), (highest, after)
    ca.ok("crl")  # and the inventory now carries on from there
    assert all(new > old for new, old in zip(numbers(ca), after, strict=True))


def test_an_entry_stays_until_one_crl_is_published_after_expiry(ca: Cli) -> None:
    short = issue(ca, "client", "short", "--validity", "1h")
    long = issue(ca, "client", "long")["serial"]
    ca.ok("revoke", "short", "--reason", "key-compromise")
    ca.ok("revoke", "long")
    expiry = when(short["not_after"])
    home = home_of(ca)

    def publish_at(moment: datetime) -> x509.CertificateRevocationList:
        result = republish(home, passphrase=passphrase, now=moment)
        assert bundle(ca)[0].last_update_utc == moment.replace(microsecond=0)
        return x509.load_der_x509_crl(result.crls[0].der)

    before = publish_at(expiry - timedelta(minutes=1))
    assert entry(before, short["serial"]) is not None
    first_after = publish_at(expiry + timedelta(minutes=1))
    assert entry(first_after, short["serial"]) is not None  # RFC 5280 3.3: one more CRL
    second_after = publish_at(expiry + timedelta(minutes=2))
    assert entry(second_after, short["serial"]) is None
    assert entry(second_after, long) is not None
    assert entry(bundle(ca)[0], short["serial"]) is None and len(bundle(ca)[0]) == 1


def test_crls_with_zero_one_and_many_entries_lint_clean_and_verify(ca: Cli, tmp_path: Path) -> None:
    home = home_of(ca)
    stages: dict[str, Path] = {}
    ca.ok("crl", "--der", "zero")
    stages["zero"] = ca.cwd / "zero"
    ca.ok("issue", "client", "one")
    ca.ok("revoke", "one", "--reason", "key-compromise", "--invalidity-date", "2024-01-01T00:00:00Z")
    ca.ok("crl", "--der", "one-entry")
    stages["one"] = ca.cwd / "one-entry"
    # 49 more: every reason, with and without invalidity dates, and a team offboarded at once.
    now = datetime.now(UTC)
    singles = issue_many(home, [f"single{i}" for i in range(14)], out=tmp_path / "issued", now=now)
    reasons = [None, *RevocationReason]
    for index, (name, (serial, _)) in enumerate(singles.items()):
        revoke_certificate(
            home, serial, reason=reasons[index % len(reasons)],
            invalidity_date=now - timedelta(days=index) if index % 2 else None, passphrase=passphrase, now=now,
        )
    issue_many(home, [f"team{i}" for i in range(35)], out=tmp_path / "issued", now=now, owner="team")
    offboard(home, "team", reason=RevocationReason.CESSATION_OF_OPERATION, passphrase=passphrase, now=now)
    document = json.loads(ca.ok("crl", "--der", "many", "--json").stdout)
    assert [c["entries"] for c in document["crls"]] == [50, 0]
    stages["many"] = ca.cwd / "many"
    many = x509.load_der_x509_crl((stages["many"] / "issuing.crl").read_bytes())
    assert {reason_of(e) for e in many} == {None, *REASON_FLAGS.values()}
    assert sum(1 for e in many for x in e.extensions if isinstance(x.value, x509.InvalidityDate)) == 8
    with sqlite3.connect(ca.db) as connection:
        recorded = connection.execute(
            "SELECT c.serial, r.revoked_at, r.reason, r.invalidity_date FROM revocations r "
            "JOIN certificates c ON c.id = r.certificate_id").fetchall()

    def stored(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC, microsecond=0)

    def listed(e: x509.RevokedCertificate) -> tuple[object, ...]:
        try:
            invalidity = e.extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc
        except x509.ExtensionNotFound:
            invalidity = None
        return format(e.serial_number, "x"), e.revocation_date_utc, reason_of(e), invalidity

    assert sorted(map(listed, many), key=str) == sorted(
        ((serial, stored(at), REASON_FLAGS[reason] if reason else None, stored(invalid))
         for serial, at, reason, invalid in recorded), key=str)

    issuing_pem = tmp_path / "issuing.pem"
    issuing_pem.write_bytes(authority_certificate(ca, "issuing").public_bytes(serialization.Encoding.PEM))
    files = [(stage / f"{role}.crl", issuing_pem if role == "issuing" else ca.home / "ca.crt")
             for stage in stages.values() for role in ("issuing", "root")]
    with ThreadPoolExecutor(len(files)) as pool:
        lints = list(pool.map(lambda f: lint_crl(f[0]), files))
    for (crl_file, issuer), lint in zip(files, lints):
        assert lint.stdout.strip().startswith("{"), (crl_file, lint.stderr)
        assert serious_findings(lint) == [], crl_file
        checked = openssl("crl", "-verify", "-noout", "-inform", "DER", "-in", str(crl_file), "-CAfile", str(issuer))
        assert checked.returncode == 0 and "verify OK" in checked.stderr, (crl_file, checked.stderr)
    # The same check can fail: the root's key does not sign the issuing CA's CRL.
    wrong = openssl("crl", "-verify", "-noout", "-inform", "DER", "-in", str(stages["many"] / "issuing.crl"),
                    "-CAfile", str(ca.home / "ca.crt"))
    assert wrong.returncode != 0

    # OpenSSL with every CA's CRL rejects a revoked leaf and accepts a valid one.
    ca.ok("issue", "client", "fine")
    for folder, expected in (("fine", True), ("one", False)):
        leaf = tmp_path / f"{folder}.pem"
        leaf.write_bytes(leaf_of(ca, folder).public_bytes(serialization.Encoding.PEM))
        result = openssl("verify", "-crl_check_all", "-CAfile", str(ca.home / "ca.crt"), "-untrusted",
                         str(issuing_pem), "-CRLfile", str(ca.home / "crl.pem"), str(leaf))
        assert (result.returncode == 0) is expected, (folder, result.stdout, result.stderr)
        if not expected:
            assert "revoked" in result.stdout + result.stderr


@pytest.mark.parametrize("options", [("--key-type", "p384"), ("--key-type", "ed25519"), ("--key-type", "rsa2048"),
                                     ("--single-tier",)])
def test_crls_of_every_ca_key_type_and_of_a_single_tier_ca_verify(mcp: Cli, options: tuple[str, ...]) -> None:
    mcp.ok("init-ca", "--name", "Kind", "--org", "Example", *options)
    mcp.ok("issue", "client", "fine")
    mcp.ok("issue", "client", "gone")
    mcp.ok("revoke", "gone", "--reason", "key-compromise", "--invalidity-date", "2024-01-01T00:00:00Z")
    document = json.loads(mcp.ok("crl", "--der", "der", "--json").stdout)
    roles = ["root"] if options == ("--single-tier",) else ["issuing", "root"]
    assert [c["role"] for c in document["crls"]] == roles
    assert [c["entries"] for c in document["crls"]] == [1, 0][: len(roles)]
    assert sorted(p.name for p in (mcp.cwd / "der").iterdir()) == sorted(f"{r}.crl" for r in roles)
    signer = mcp.cwd / "signer.pem"
    signer.write_bytes(authority_certificate(mcp, roles[0]).public_bytes(serialization.Encoding.PEM))
    crl_file = mcp.cwd / "der" / f"{roles[0]}.crl"
    crl = x509.load_der_x509_crl(crl_file.read_bytes())
    assert crl.is_signature_valid(authority_certificate(mcp, roles[0]).public_key())  # type: ignore[arg-type]
    assert len(crl) == 1
    checked = openssl("crl", "-verify", "-noout", "-inform", "DER", "-in", str(crl_file), "-CAfile", str(signer))
    assert checked.returncode == 0 and "verify OK" in checked.stderr, checked.stderr
    assert serious_findings(lint_crl(crl_file)) == []
    untrusted = ["-untrusted", str(signer)] if len(roles) == 2 else []
    for name, expected in (("fine", True), ("gone", False)):
        result = openssl("verify", "-crl_check_all", "-CAfile", str(mcp.home / "ca.crt"), *untrusted,
                         "-CRLfile", str(mcp.home / "crl.pem"), str(mcp.cwd / name / "tls.crt"))
        assert (result.returncode == 0) is expected, (name, result.stdout, result.stderr)
    assert_clean_error(mcp("verify", "gone/tls.crt"), "revoked (key-compromise) on")
    mcp.ok("verify", "fine/tls.crt")


def test_the_crl_lint_helper_reports_a_crl_without_number_or_aki(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sloppy CA")])
    now = datetime.now(UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
           .next_update(now + timedelta(days=7)).sign(key, hashes.SHA256()))
    path = tmp_path / "sloppy.crl"
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    assert len(serious_findings(lint_crl(path))) == 2


# --------------------------------------------------------------------------------------
# offboard
# --------------------------------------------------------------------------------------


def test_offboard_revokes_everything_the_name_holds_and_nothing_else(ca: Cli) -> None:
    first = issue(ca, "client", "alice", "--out", "laptop")["serial"]
    second = issue(ca, "client", "alice", "--out", "desktop")["serial"]
    renewal = json.loads(ca.ok("renew", first, "--out", "laptop2", "--json").stdout)["serial"]
    server = issue(ca, "server", "alice-notes", "--dns", "notes.example.com", "--owner", "alice")["serial"]
    agent = issue(ca, "client", "agent7", "--owner", "alice")["serial"]
    old = issue(ca, "client", "alice", "--out", "old")["serial"]
    ca.ok("revoke", old, "--reason", "superseded")
    bob = issue(ca, "client", "bob")["serial"]
    files = issue(ca, "server", "files", "--dns", "files.example.com")["serial"]
    before = numbers(ca)

    document = json.loads(ca.ok("offboard", "alice", "--json").stdout)
    revoked = {r["serial"]: r for r in document["revoked"]}
    assert set(revoked) == {first, second, renewal, server, agent}
    assert {r["reason"] for r in revoked.values()} == {"affiliation-changed"}
    assert revoked[server]["kind"] == "server"
    assert [c["number"] for c in document["crls"]] == numbers(ca)
    assert all(new > old_ for new, old_ in zip(numbers(ca), before))
    issuing_crl = bundle(ca)[0]
    for serial in revoked:
        listed = entry(issuing_crl, serial)
        assert listed is not None and reason_of(listed) == x509.ReasonFlags.affiliation_changed
        assert show(ca, serial)["status"] == "revoked"
    assert show(ca, old)["revocation_reason"] == "superseded"  # not revoked twice
    assert reason_of(entry(issuing_crl, old)) == x509.ReasonFlags.superseded  # type: ignore[arg-type]
    for serial in (bob, files):
        assert entry(issuing_crl, serial) is None
        assert show(ca, serial)["status"] == "valid"

    snapshot = Snapshot(ca)
    assert_clean_error(ca("offboard", "alice"), "nothing to revoke")
    snapshot.assert_unchanged()

    text = ca.ok("offboard", "bob", "--reason", "key-compromise").stdout
    assert f"revoked client bob {bob} (key-compromise)" in text
    assert f"CRL #{numbers(ca)[0]} of CN=Test Issuing CA,O=Example: 7 entries" in text
    assert reason_of(entry(bundle(ca)[0], bob)) == x509.ReasonFlags.key_compromise  # type: ignore[arg-type]
    assert show(ca, files)["status"] == "valid"


# --------------------------------------------------------------------------------------
# renew
# --------------------------------------------------------------------------------------


def _extensions(certificate: x509.Certificate) -> dict[x509.ObjectIdentifier, tuple[bool, object]]:
    return {e.oid: (e.critical, e.value) for e in certificate.extensions}


@pytest.mark.parametrize(("kind", "args"), [
    ("client", ("--email", "alice@example.com", "--uri", "spiffe://example.com/alice", "--role", "admin",
                "--role", "ops", "--key-type", "p384", "--validity", "30d")),
    ("server", ("--dns", "api.example.com", "--ip", "10.1.2.3", "--ip", "fd00::1", "--key-type", "rsa2048")),
])
def test_renew_keeps_identity_with_a_new_key_and_fresh_extensions(ca: Cli, kind: str, args: tuple[str, ...]) -> None:
    old_doc = issue(ca, kind, "subject", *args, "--out", "old")
    old = leaf_of(ca, "old")
    records = len(audit_actions(ca))
    renewed = json.loads(ca.ok("renew", "subject", "--out", "new", "--json").stdout)
    new = leaf_of(ca, "new")
    assert renewed["old_serial"] == old_doc["serial"]
    assert renewed["serial"] == format(new.serial_number, "x") != old_doc["serial"]
    assert (renewed["name"], renewed["kind"]) == ("subject", kind)
    assert new.subject == old.subject and new.issuer == old.issuer
    assert new.public_key() != old.public_key()
    assert type(new.public_key()) is type(old.public_key())
    key = load_pem_private_key((ca.cwd / "new" / "tls.key").read_bytes(), None)
    assert key.public_key() == new.public_key()
    assert new.not_valid_after_utc - new.not_valid_before_utc == old.not_valid_after_utc - old.not_valid_before_utc

    shown, before = show(ca, renewed["serial"]), show(ca, old_doc["serial"])
    assert shown["renews"] == old_doc["serial"] and before["renews"] is None
    for field in ("name", "kind", "owner", "sans", "roles", "extended_key_usage", "key_type", "subject"):
        assert shown[field] == before[field], field
    assert before["status"] == "valid"  # no --revoke-old

    # Extensions come from the profile, not from the old certificate.
    issuing = authority_certificate(ca, "issuing")
    issuing_ski = issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if kind == "client" else ExtendedKeyUsageOID.SERVER_AUTH
    expected = {
        ExtensionOID.BASIC_CONSTRAINTS: (True, x509.BasicConstraints(ca=False, path_length=None)),
        ExtensionOID.KEY_USAGE: (True, x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=isinstance(new.public_key(), rsa.RSAPublicKey), data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)),
        ExtensionOID.EXTENDED_KEY_USAGE: (False, x509.ExtendedKeyUsage([usage])),
        ExtensionOID.SUBJECT_KEY_IDENTIFIER: (
            False, x509.SubjectKeyIdentifier.from_public_key(new.public_key())),  # type: ignore[arg-type]
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER: (
            False, x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuing_ski)),
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME: (
            False, old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value),
    }
    assert _extensions(new) == expected
    assert [e.oid for e in new.extensions] == [e.oid for e in old.extensions]
    actions = audit_actions(ca)
    assert len(actions) == records + 1 and actions[-1] == "renew"


def test_renew_revoke_old_supersedes_it_on_the_crl(ca: Cli) -> None:
    old = issue(ca, "client", "alice")["serial"]
    before = numbers(ca)
    result = ca.ok("renew", "alice", "--out", "alice2", "--revoke-old")
    assert f"revoked {old} as superseded" in result.stdout
    assert all(new > prev for new, prev in zip(numbers(ca), before))
    shown = show(ca, old)
    assert (shown["status"], shown["revocation_reason"]) == ("revoked", "superseded")
    listed = entry(bundle(ca)[0], old)
    assert listed is not None and reason_of(listed) == x509.ReasonFlags.superseded
    new = format(leaf_of(ca, "alice2").serial_number, "x")
    assert show(ca, "alice")["serial"] == new and show(ca, new)["status"] == "valid"

    snapshot = Snapshot(ca)
    assert_clean_error(ca("renew", old, "--out", "again"), "revoked")
    snapshot.assert_unchanged()


def test_renewing_an_expired_certificate_needs_allow_expired(ca: Cli) -> None:
    old = issue(ca, "client", "brief", "--validity", "1h")
    later = when(old["not_after"]) + timedelta(minutes=1)
    home = home_of(ca)
    counts = table_counts(ca.db)
    with pytest.raises(PolicyViolation, match="--allow-expired"):
        renew_certificate(home, old["serial"], RenewOptions(), lambda name: OutputRequest(ca.cwd / "late"),
                          passphrase=passphrase, now=later)
    assert table_counts(ca.db) == counts and not (ca.cwd / "late").exists()
    renewal = renew_certificate(home, old["serial"], RenewOptions(allow_expired=True),
                                lambda name: OutputRequest(ca.cwd / name / "late"), passphrase=passphrase, now=later)
    assert renewal.old_serial == old["serial"]
    assert renewal.issued.facts.not_after == later.replace(microsecond=0) + timedelta(hours=1)
    assert (ca.cwd / "brief" / "late" / "tls.key").exists()
    assert show(ca, renewal.issued.facts.serial)["renews"] == old["serial"]


def test_renew_with_a_csr_takes_only_its_key(ca: Cli) -> None:
    old = issue(ca, "client", "alice", "--email", "alice@example.com", "--role", "admin")["serial"]
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example.com")]), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(key, hashes.SHA256()))
    (ca.cwd / "alice.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    result = ca.ok("renew", "alice", "--csr", "alice.csr", "--out", "renewed", "--json")
    renewed = json.loads(result.stdout)
    assert "evil.example.com" in result.stderr  # named as not signed
    new = leaf_of(ca, "renewed")
    assert new.public_key() == key.public_key()
    assert not (ca.cwd / "renewed" / "tls.key").exists()
    assert sorted(Path(p).name for p in renewed["files"]) == ["ca.crt", "tls.crt"]
    assert new.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert new.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    shown = show(ca, renewed["serial"])
    assert shown["sans"] == ["email:alice@example.com"] and shown["roles"] == ["admin"]
    assert shown["from_csr"] is True and shown["renews"] == old


def test_renew_expiring_within_renews_exactly_the_window_and_only_once(mcp: Cli) -> None:
    """A CA made 200 days ago with 90-day certificates near the end of their life."""
    home = home_of(mcp)
    now = datetime.now(UTC)
    request = CaRequest(common_name="Old", org="Example", key_type=KeyType.P256, validity=timedelta(days=3650),
                        single_tier=False, permitted_dns=(), passphrase=passphrase())
    init_ca(home, request, now=now - timedelta(days=200))
    made = mcp.cwd / "made"
    left = {"ten": 80, "twenty": 70, "sixty": 30, "gone": 80, "replaced": 80}  # issued that many days ago
    serial = {
        name: issue_many(home, [name], out=made, now=now - timedelta(days=ago))[name][0] for name, ago in left.items()
    }
    engine = open_inventory(home.db_url)
    try:
        request_api = LeafRequest(kind=CertificateKind.SERVER, name="api", sans=SubjectAltNames(dns=("api.example.com",)))
        server = issue_leaf(home, request_api, OutputRequest(made / "api"), passphrase=passphrase,
                            now=now - timedelta(days=85), engine=engine)
    finally:
        engine.dispose()
    revoke_certificate(home, serial["gone"], reason=None, invalidity_date=None, passphrase=passphrase,
                       now=now - timedelta(days=10))
    renew_certificate(home, serial["replaced"], RenewOptions(), lambda name: OutputRequest(made / "replaced2"),
                      passphrase=passphrase, now=now - timedelta(days=5))

    listed = {c["serial"] for c in json.loads(mcp.ok("list", "--expiring-within", "30d", "--json").stdout)}
    assert listed == {serial["ten"], serial["twenty"], serial["replaced"], server.facts.serial}
    records = len(audit_actions(mcp))
    document = json.loads(mcp.ok("renew", "--expiring-within", "30d", "--out-root", "out", "--json").stdout)
    assert document["failed"] == []
    renewed = {r["old_serial"]: r for r in document["renewed"]}
    assert set(renewed) == {serial["ten"], serial["twenty"], server.facts.serial}
    for name, old_serial in (("ten", serial["ten"]), ("twenty", serial["twenty"]), ("api", server.facts.serial)):
        leaf = leaf_of(mcp, f"out/{name}")
        assert format(leaf.serial_number, "x") == renewed[old_serial]["serial"]
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(days=90, minutes=5)
        assert show(mcp, renewed[old_serial]["serial"])["renews"] == old_serial
        assert show(mcp, old_serial)["status"] == "valid"
    assert len(audit_actions(mcp)) == records + 3

    second = mcp.ok("renew", "--expiring-within", "30d", "--out-root", "out")
    assert second.stdout == "" and "0 renewed, 0 failed" in second.stderr
    assert len(audit_actions(mcp)) == records + 3
    assert mcp("status").exit_code == 2  # the CRLs of 10 days ago have expired


def test_a_window_longer_than_the_lifetime_renews_with_a_warning(ca: Cli) -> None:
    """The window is exact: a 10-day certificate in a 30-day window is renewed, and since its
    renewal is in the window too, the tool says the window suits it badly."""
    short = issue(ca, "client", "short", "--validity", "10d")["serial"]
    first = ca("renew", "--expiring-within", "30d", "--out-root", "out", "--json")
    assert first.exit_code == 0, first.stderr
    assert [r["old_serial"] for r in json.loads(first.stdout)["renewed"]] == [short]
    assert "short: lifetime not longer than the 30d window" in first.stderr
    assert ca("renew", "--expiring-within", "5d", "--out-root", "out", "--json").stdout.count("old_serial") == 0


def test_renew_expiring_checks_every_output_folder_before_signing_anything(ca: Cli, tmp_path: Path) -> None:
    home = home_of(ca)
    start = datetime.now(UTC)
    issue_many(home, ["one", "two"], out=tmp_path / "issued", now=start)
    at = start + timedelta(days=70)  # 20 days of 90 left: both due in a 30-day window
    (ca.cwd / "out" / "two").mkdir(parents=True)
    (ca.cwd / "out" / "two" / "tls.crt").write_text("an operator's file")
    snapshot = Snapshot(ca)
    with pytest.raises(Conflict, match="already exists"):
        renew_expiring(home, within=timedelta(days=30), out_root=ca.cwd / "out", force=False, revoke_old=False,
                       passphrase=passphrase, now=at)
    snapshot.assert_unchanged()
    result = renew_expiring(home, within=timedelta(days=30), out_root=ca.cwd / "out", force=True,
                            revoke_old=False, passphrase=passphrase, now=at)
    assert sorted(r.issued.name for r in result.renewed) == ["one", "two"]
    assert (ca.cwd / "out" / "two" / "tls.crt").read_text() != "an operator's file"


def test_renew_expiring_over_500_certificates_renews_exactly_the_window(ca: Cli, tmp_path: Path) -> None:
    home = home_of(ca)
    start = datetime.now(UTC)
    lifetimes = [45, 60, 70, 95]  # at start + 50 days: expired, in the window, in the window, outside
    names = [f"agent{i:03}" for i in range(500)]
    issued = issue_many(home, names, out=tmp_path / "issued", now=start,
                        validity=lambda i: timedelta(days=lifetimes[i % 4]))
    leaving = [f"leaver{i}" for i in range(20)]
    issued |= issue_many(home, leaving, out=tmp_path / "issued", now=start, owner="leaver",
                         validity=lambda i: timedelta(days=60))
    offboard(home, "leaver", reason=None, passphrase=passphrase, now=start + timedelta(days=1))

    at = start + timedelta(days=50)
    window = timedelta(days=30)
    expected = {serial for name, (serial, not_after) in issued.items()
                if at < not_after <= at + window and not name.startswith("leaver")}
    assert len(expected) == 250
    result = renew_expiring(home, within=window, out_root=tmp_path / "renewed", force=False, revoke_old=False,
                            passphrase=passphrase, now=at)
    assert result.failed == []
    assert {r.old_serial for r in result.renewed} == expected
    by_serial = {serial: name for name, (serial, _) in issued.items()}
    assert all(r.issued.name == by_serial[r.old_serial] for r in result.renewed)
    assert len({r.issued.facts.serial for r in result.renewed}) == 250
    assert sum(1 for _ in (tmp_path / "renewed").iterdir()) == 250
    again = renew_expiring(home, within=window, out_root=tmp_path / "renewed", force=False, revoke_old=False,
                           passphrase=passphrase, now=at)
    assert again.renewed == [] and again.failed == []


# --------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------


def test_status_is_ok_on_a_fresh_ca(ca: Cli) -> None:
    result = ca("status", "--json")
    assert result.exit_code == 0, result.stdout
    document = json.loads(result.stdout)
    assert document["status"] == "ok" and document["findings"] == []
    assert document["counts"] == {"valid": 0, "revoked": 0, "expired": 0}
    assert [a["crl_number"] for a in document["authorities"]] == numbers(ca)
    assert ca("status").stdout.rstrip().endswith("status: ok")


def test_status_warns_about_certificates_expiring_within_the_window(ca: Cli) -> None:
    soon = issue(ca, "client", "soon", "--validity", "10d")["serial"]
    issue(ca, "client", "later")
    result = ca("status", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["status"] == "warning"
    assert [f["level"] for f in document["findings"]] == ["warning"]
    assert soon in document["findings"][0]["message"]
    assert [c["serial"] for c in document["expiring"]] == [soon]
    assert document["counts"] == {"valid": 2, "revoked": 0, "expired": 0}
    assert ca("status", "--warn-within", "5d").exit_code == 0
    ca.ok("renew", "soon", "--validity", "90d", "--out", "soon2")  # taken care of
    assert ca("status").exit_code == 0
    doomed = issue(ca, "client", "doomed", "--validity", "10d")["serial"]
    assert ca("status").exit_code == 1
    ca.ok("revoke", doomed)
    assert ca("status").exit_code == 0


def test_status_follows_crl_freshness(ca: Cli) -> None:
    home = home_of(ca)
    this_update = bundle(ca)[0].last_update_utc
    engine = open_inventory(home.db_url)
    try:
        def level(days: float) -> tuple[Level, list[str]]:
            report = check_health(engine, now=this_update + timedelta(days=days), warn_within=timedelta(days=30),
                                  crl_file=home.crl_file)
            return report.level, [f.message for f in report.findings]

        assert level(3)[0] is Level.OK  # 4 of 7 days left
        warning, messages = level(4)  # 3 of 7 days left: less than half
        assert warning is Level.WARNING and len(messages) == 2 and all("CRL" in m for m in messages)
        critical, messages = level(8)
        assert critical is Level.CRITICAL and all("expired" in m for m in messages)
    finally:
        engine.dispose()


def test_status_is_critical_when_a_ca_expires_within_the_window(ca: Cli) -> None:
    result = ca("status", "--warn-within", "4000d", "--json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["status"] == "critical"
    assert {f["level"] for f in document["findings"]} == {"critical"} and len(document["findings"]) == 2
    result = ca("status", "--warn-within", "1900d", "--json")  # only the 5-year issuing CA
    assert result.exit_code == 2
    findings = json.loads(result.stdout)["findings"]
    assert len(findings) == 1 and findings[0]["message"].startswith("issuing CA CN=Test Issuing CA")
    assert ca("status", "--warn-within", "1800d").exit_code == 0


def test_status_is_critical_when_the_crl_pem_servers_load_has_expired(ca: Cli, tmp_path: Path) -> None:
    home = home_of(ca)
    published = bundle(ca)[0].last_update_utc
    other_machine = resolve_home(str(tmp_path / "other-home"), home.db_url)  # same inventory, own crl.pem
    republish(other_machine, passphrase=passphrase, now=published + timedelta(days=6))
    engine = open_inventory(home.db_url)
    try:
        report = check_health(engine, now=published + timedelta(days=8), warn_within=timedelta(days=30),
                              crl_file=home.crl_file)
    finally:
        engine.dispose()
    assert all(c.next_update_utc < published + timedelta(days=8) for c in bundle(ca))  # type: ignore[operator]
    assert report.level is Level.CRITICAL, [f.message for f in report.findings]


def test_status_warns_when_crl_pem_is_older_than_the_inventory(ca: Cli) -> None:
    stale = (ca.home / "crl.pem").read_bytes()
    ca.ok("crl")
    (ca.home / "crl.pem").write_bytes(stale)
    result = ca("status")
    assert result.exit_code == 1 and "older than the inventory" in result.stdout


def test_status_help_documents_the_exit_codes(ca: Cli) -> None:
    text = " ".join(ca.ok("status", "--help").stdout.split())
    for fragment in ("0 ok", "1 warning", "2 critical", "--warn-within"):
        assert fragment in text


# --------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------


def test_verify_accepts_a_valid_certificate(ca: Cli) -> None:
    serial = issue(ca, "server", "files", "--dns", "files.example.com")["serial"]
    assert f"({serial})" in ca.ok("verify", "files/tls.crt").stdout
    document = json.loads(ca.ok("verify", "files/tls.crt", "--json").stdout)
    assert document["ok"] is True and document["serial"] == serial
    assert document["chain"] == ["CN=Test Issuing CA,O=Example", "CN=Test Root CA,O=Example"]
    assert document["crl_numbers"] == numbers(ca)


def test_verify_reports_revocation_with_reason_and_date(ca: Cli) -> None:
    issue(ca, "client", "alice")
    issue(ca, "client", "bob")
    ca.ok("revoke", "alice", "--reason", "key-compromise")
    ca.ok("revoke", "bob")
    revoked_at = show(ca, "alice")["revoked_at"][:16].replace("T", " ")
    assert_clean_error(ca("verify", "alice/tls.crt"), f"revoked (key-compromise) on {revoked_at}")
    assert_clean_error(ca("verify", "bob/tls.crt"), "revoked (unspecified) on")


def test_verify_reports_expiry_at_a_later_time(ca: Cli) -> None:
    issued = issue(ca, "client", "brief", "--validity", "1h")
    data = (ca.cwd / "brief" / "tls.crt").read_bytes()
    engine = open_inventory(home_of(ca).db_url)
    try:
        expiry = when(issued["not_after"])
        assert verify_certificate(engine, data, now=expiry - timedelta(minutes=1)).leaf.serial == issued["serial"]
        with pytest.raises(VerificationFailed, match="expired"):
            verify_certificate(engine, data, now=expiry + timedelta(minutes=1))
        crl_expiry = bundle(ca)[0].next_update_utc
        assert crl_expiry is not None
        long_lived = (ca.cwd / "long" / "tls.crt")
        ca.ok("issue", "client", "long")
        with pytest.raises(VerificationFailed, match="revocation unknown: the CRL of .* has expired"):
            verify_certificate(engine, long_lived.read_bytes(), now=crl_expiry + timedelta(minutes=1))
    finally:
        engine.dispose()


def test_verify_refuses_a_certificate_of_another_ca_with_the_same_names(ca: Cli, tmp_path: Path) -> None:
    other = Cli(tmp_path / "other-home", ca.cwd)
    other.ok("init-ca", "--name", "Test", "--org", "Example")  # same subjects, other keys
    other.ok("issue", "client", "stranger")
    assert_clean_error(ca("verify", "stranger/tls.crt"), "unknown issuer")


def test_verify_notices_a_certificate_missing_from_the_inventory(ca: Cli) -> None:
    serial = issue(ca, "client", "ghost")["serial"]
    ca.ok("verify", "ghost/tls.crt")
    with sqlite3.connect(ca.db) as connection:
        assert connection.execute("DELETE FROM certificates WHERE serial = ?", (serial,)).rowcount == 1
    assert_clean_error(ca("verify", "ghost/tls.crt"), "missing from the inventory")


def test_verify_does_not_call_our_own_ca_certificates_missing(ca: Cli) -> None:
    issuing = ca.cwd / "issuing.pem"
    issuing.write_bytes(authority_certificate(ca, "issuing").public_bytes(serialization.Encoding.PEM))
    for path in (ca.home / "ca.crt", issuing):
        result = ca("verify", str(path))
        assert result.exception is None
        assert "missing from the inventory" not in result.stderr, result.stderr


@pytest.mark.parametrize(("content", "fragment"), [
    (b"", "not a certificate"),
    (b"not a certificate at all", "not a certificate"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a certificate"),
    (None, "cannot read"),
])
def test_verify_garbage_is_a_clean_error(ca: Cli, content: bytes | None, fragment: str) -> None:
    if content is not None:
        (ca.cwd / "garbage.pem").write_bytes(content)
    snapshot = Snapshot(ca)
    assert_clean_error(ca("verify", "garbage.pem"), fragment)
    snapshot.assert_unchanged()
