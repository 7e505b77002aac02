"""What keeps bulk commands linear: one CRL publication per bulk renewal, and the indexes
the expiry and serial lookups use. The timings themselves are in scripts/bench."""

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from sqlalchemy import event

from mcp_pki.services.renewal import expiring_unreplaced
from mcp_pki.store.db import open_inventory, read_session
from tests.conftest import Cli


def crl_numbers(ca: Cli) -> list[int]:
    with sqlite3.connect(ca.db) as connection:
        return [row[0] for row in connection.execute("SELECT number FROM crl_publications ORDER BY id")]


def test_a_bulk_renewal_revokes_every_old_certificate_with_one_crl_publication(ca: Cli) -> None:
    names = [f"svc{i:02d}" for i in range(12)]
    for name in names:
        ca.ok("issue", "client", name, "--validity", "10d")
    published_before = len(crl_numbers(ca))
    old = {c["name"]: c["serial"] for c in json.loads(ca.ok("list", "--json").stdout)}
    result = ca.ok("renew", "--expiring-within", "30d", "--revoke-old", "--out-root", "renewed", "--json")
    renewed = json.loads(result.stdout)["renewed"]
    assert sorted(r["name"] for r in renewed) == names
    assert all(r["old_serial"] == old[r["name"]] for r in renewed)
    # One publication per CA (issuing and root) for the whole run, not one per renewal.
    assert len(crl_numbers(ca)) == published_before + 2
    crls = [x509.load_pem_x509_crl(b"-----BEGIN X509 CRL" + part)
            for part in (ca.home / "crl.pem").read_bytes().split(b"-----BEGIN X509 CRL")[1:]]
    entries = {format(e.serial_number, "x"): e for crl in crls for e in crl}
    assert set(old.values()) <= set(entries)
    assert all(entries[s].extensions.get_extension_for_class(x509.CRLReason).value.reason
               == x509.ReasonFlags.superseded for s in old.values())
    for name in names:
        leaf = x509.load_pem_x509_certificates((ca.cwd / "renewed" / name / "tls.crt").read_bytes())[0]
        assert format(leaf.serial_number, "x") == next(r["serial"] for r in renewed if r["name"] == name)
    ca.ok("audit", "verify")
    assert "0 renewed" in ca.ok("renew", "--expiring-within", "5d", "--revoke-old", "--out-root", "renewed").stderr


def _plan(ca: Cli, sql: str) -> str:
    with sqlite3.connect(ca.db) as connection:
        return " | ".join(row[-1] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}"))


def test_the_expiry_query_finds_renewals_through_the_renews_index(ca: Cli) -> None:
    """Without the index, SQLite scans every certificate once per expiring certificate."""
    ca.ok("issue", "client", "one")
    engine = open_inventory(f"sqlite:///{ca.db}")
    statements: list[str] = []
    try:
        @event.listens_for(engine, "before_cursor_execute")
        def _record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
            statements.append(statement.replace("?", "'2026-01-01 00:00:00.000000'"))

        with read_session(engine) as session, session.begin():
            expiring_unreplaced(session, now=datetime.now(UTC), within=timedelta(days=30))
    finally:
        engine.dispose()
    query = next(s for s in statements if "renews_id" in s)
    plan = _plan(ca, query)
    assert "ix_certificates_renews_id" in plan, plan


def test_a_serial_prefix_is_looked_up_through_the_serial_index(ca: Cli) -> None:
    serial = json.loads(ca.ok("issue", "client", "one", "--json").stdout)["serial"]
    plan = _plan(ca, f"SELECT id FROM certificates WHERE serial >= '{serial[:8]}' AND serial < '{serial[:8]}g'")
    assert "ix_certificates_serial" in plan, plan
    assert json.loads(ca.ok("show", serial[:8].upper(), "--json").stdout)["serial"] == serial


def test_list_json_written_by_sqlite_matches_the_listing_built_in_python(ca: Cli) -> None:
    """`list --json` on SQLite has the database write each object; it must say exactly what
    the listing built row by row in Python says, for every status and filter."""
    from mcp_pki.services.inventory import ListFilter, Status, list_certificates

    ca.ok("issue", "client", "alice", "--email", "alice@example.com", "--role", "dev", "--role", "ops")
    ca.ok("issue", "server", "files", "--dns", "files.internal", "--ip", "10.0.0.5")
    ca.ok("issue", "client", "gone")
    ca.ok("revoke", "gone")
    ca.ok("issue", "client", "short", "--validity", "2h")
    ca.ok("renew", "alice", "--out", "alice2")  # alice's first certificate is now superseded
    engine = open_inventory(f"sqlite:///{ca.db}")
    filters = [ListFilter(), ListFilter(status=Status.VALID), ListFilter(status=Status.REVOKED),
               ListFilter(kind="server"), ListFilter(name="alice"), ListFilter(current=True),
               ListFilter(expiring_within=timedelta(hours=3))]
    try:
        for wanted, option in zip(filters, [[], ["--status", "valid"], ["--status", "revoked"], ["--kind", "server"],
                                            ["--name", "alice"], ["--current"], ["--expiring-within", "3h"]],
                                  strict=True):
            printed = json.loads(ca.ok("list", "--json", *option).stdout)
            built = [c.as_json() for c in list_certificates(engine, wanted, now=datetime.now(UTC))]
            assert printed == built, option
            assert printed, option
    finally:
        engine.dispose()
    # An expired certificate (as of a later clock) is listed as expired both ways.
    later = datetime.now(UTC) + timedelta(hours=5)
    from mcp_pki.services.inventory import iter_certificates_json

    engine = open_inventory(f"sqlite:///{ca.db}")
    try:
        by_sql = [json.loads(d) for d in iter_certificates_json(engine, ListFilter(), now=later)]
        assert by_sql == [c.as_json() for c in list_certificates(engine, ListFilter(), now=later)]
        assert "expired" in {d["status"] for d in by_sql}
    finally:
        engine.dispose()


def test_the_list_table_formatted_by_sqlite_matches_the_python_formatting(ca: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table rows SQLite formats (names and roles joined in SQL) equal those formatted in
    Python from decoded rows, escapes in the stored JSON included."""
    from mcp_pki.services.inventory import ListFilter, iter_table_rows

    ca.ok("issue", "client", "alice", "--email", "alice@example.com", "--role", "dev", "--role", "ops")
    ca.ok("issue", "server", "files", "--dns", "files.internal", "--ip", "10.0.0.5")
    ca.ok("issue", "client", "bare")
    ca.ok("issue", "client", "gone")
    ca.ok("revoke", "gone")
    ca.ok("renew", "alice", "--out", "alice2")
    with sqlite3.connect(ca.db) as connection:  # a role whose JSON holds an escape
        connection.execute("UPDATE certificates SET roles = ? WHERE name = 'bare'", (json.dumps(['d"q']),))
    engine = open_inventory(f"sqlite:///{ca.db}")
    try:
        now = datetime.now(UTC)
        by_sql = list(iter_table_rows(engine, ListFilter(), now=now))
        monkeypatch.setattr(engine.dialect, "name", "other")
        by_python = list(iter_table_rows(engine, ListFilter(), now=now))
    finally:
        engine.dispose()
    assert by_sql == by_python
    assert {r.status for r in by_sql} == {"valid", "superseded", "revoked"}
    assert next(r for r in by_sql if r.name == "bare").names == 'role:d"q'
    table = ca.ok("list").stdout
    assert "email:alice@example.com, role:dev, role:ops" in table and "DNS:files.internal, IP:10.0.0.5" in table


@pytest.mark.parametrize("stored", ["{not json", "[1, 2]", '"DNS:x"', '["a", 1, "b"]'])
def test_list_json_refuses_a_corrupt_row_like_the_table(ca: Cli, stored: str) -> None:
    ca.ok("issue", "client", "alice")
    with sqlite3.connect(ca.db) as connection:
        connection.execute("UPDATE certificates SET sans = ?", (stored,))
    for args in (("list",), ("list", "--json")):
        result = ca(*args)
        assert result.exit_code == 1 and "inventory is corrupt" in result.stderr, (args, result.stderr)


def test_list_formats_plain_name_lists_in_sql_and_decodes_the_rest_in_python() -> None:
    """The listing's SQL fast path (names joined by the database) must match the lists that
    json.dumps writes, and leave anything with an escape or a quote to Python's decoder."""
    from sqlalchemy import create_engine, literal, select

    from mcp_pki.services.inventory import _joined, _plain_list

    engine = create_engine("sqlite://")
    cases = {
        '["a.example", "b.example"]': (True, "a.example, b.example"),
        '["dev"]': (True, "dev"),
        "[]": (False, ""),
        '["caf\\u00e9"]': (False, None),  # an escape: Python decodes it
        '["a\\"b"]': (False, None),
        '["a", 1]': (False, None),
        '{"a": 1}': (False, None),
    }
    with engine.connect() as connection:
        for stored, (plain, joined) in cases.items():
            value = literal(stored)
            row = connection.execute(select(_plain_list(value), _joined(value, ""))).one()
            assert (bool(row[0]), row[1]) == (plain, joined), stored
    engine.dispose()
