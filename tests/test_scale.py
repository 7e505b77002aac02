"""What keeps bulk commands linear: one CRL publication per bulk renewal, and the indexes
the expiry and serial lookups use. The timings themselves are in scripts/bench."""

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
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
    from mcp_pki.services.listing import ListFilter, Status, list_certificates

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
    from mcp_pki.services.listing import iter_certificates_json

    engine = open_inventory(f"sqlite:///{ca.db}")
    try:
        by_sql = [json.loads(d) for d in iter_certificates_json(engine, ListFilter(), now=later)]
        assert by_sql == [c.as_json() for c in list_certificates(engine, ListFilter(), now=later)]
        assert "expired" in {d["status"] for d in by_sql}
    finally:
        engine.dispose()


def test_the_list_table_formatted_by_sqlite_matches_the_python_formatting(ca: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table rows SQLite formats (columns padded by printf, names split as text) equal
    those formatted in Python from decoded rows: escapes in the stored JSON, names wider
    than their column and names beyond ASCII included, at both serial widths."""
    from mcp_pki.services.listing import ListFilter, iter_table_rows

    ca.ok("issue", "client", "alice", "--email", "alice@example.com", "--role", "dev", "--role", "ops")
    ca.ok("issue", "server", "files", "--dns", "files.internal", "--ip", "10.0.0.5")
    ca.ok("issue", "client", "bare")
    ca.ok("issue", "client", "gone")
    ca.ok("issue", "client", "a-name-longer-than-its-column")
    ca.ok("revoke", "gone")
    ca.ok("renew", "alice", "--out", "alice2")
    with sqlite3.connect(ca.db) as connection:  # a role whose JSON holds an escape, a name beyond ASCII
        connection.execute("UPDATE certificates SET roles = ? WHERE name = 'bare'", (json.dumps(['d"q']),))
        connection.execute("UPDATE certificates SET name = 'gonë' WHERE name = 'gone'")
    engine = open_inventory(f"sqlite:///{ca.db}")
    try:
        now = datetime.now(UTC)
        for width in (12, 40):
            by_sql = list(iter_table_rows(engine, ListFilter(), now=now, serial_width=width))
            with monkeypatch.context() as patch:
                patch.setattr(engine.dialect, "name", "other")
                by_python = list(iter_table_rows(engine, ListFilter(), now=now, serial_width=width))
            assert by_sql == by_python
    finally:
        engine.dispose()
    assert {r.status for r in by_sql} == {"valid", "superseded", "revoked"}
    assert next(r for r in by_sql if " bare " in r.head).names == 'role:d"q'
    assert next(r for r in by_sql if "gonë" in r.head).head.endswith("gonë" + " " * 18)
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


def test_list_copies_plain_name_lists_as_text_and_decodes_the_rest() -> None:
    """The listing's fast path (a stored list split or copied as text) must take exactly the
    lists that json.dumps writes, and leave anything escaped, quoted or unprintable to the
    JSON decoder, which refuses what is not a list of text."""
    from mcp_pki.errors import InventoryError
    from mcp_pki.services.listing import _json_list, _names_text, _plain_inner

    cases = {
        '["a.example", "b.example"]': "a.example, b.example",
        '["dev"]': "dev",
        '[""]': "",
        '["caf\\u00e9"]': None,  # an escape: decoded
        '["a\\"b"]': None,
        '["a","b"]': None,  # not as json.dumps writes it: decoded
        '["a\tb"]': None,  # a raw control character is not JSON: refused by the decoder
    }
    for stored, inner_joined in cases.items():
        assert (_plain_inner(stored) is not None) == (inner_joined is not None), stored
        if inner_joined is not None:
            assert _names_text(stored) == inner_joined and _json_list(stored) == stored
    assert _names_text('["caf\\u00e9", "x"]', "role:") == "role:caf\u00e9, role:x"
    assert json.loads(_json_list('["a\\"b"]')) == ['a"b']
    for corrupt in ('["a", 1]', '{"a": 1}', "[1, 2]", '"DNS:x"', '["]', '["a\tb"]', "{not json"):
        with pytest.raises(InventoryError):
            _names_text(corrupt)
        with pytest.raises(InventoryError):
            _json_list(corrupt)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=4))
def test_any_stored_list_of_names_lists_as_decoded(names: list[str]) -> None:
    from mcp_pki.services.listing import _json_list, _names_text

    for stored in (json.dumps(names), json.dumps(names, ensure_ascii=False)):
        assert _names_text(stored, "role:") == ", ".join(f"role:{n}" for n in names)
        assert json.loads(_json_list(stored)) == names


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='[]", \\ab1{}:\t', max_size=16))
def test_any_stored_text_lists_as_decoded_or_is_refused(stored: str) -> None:
    from mcp_pki.errors import InventoryError
    from mcp_pki.services.listing import _json_list, _names_text

    try:
        decoded = json.loads(stored)
    except ValueError:
        decoded = None
    if isinstance(decoded, list) and all(isinstance(n, str) for n in decoded):
        assert _names_text(stored) == ", ".join(decoded)
        assert json.loads(_json_list(stored)) == decoded
    else:
        with pytest.raises(InventoryError):
            _names_text(stored)
        with pytest.raises(InventoryError):
            _json_list(stored)
