"""Text from a CSR, a file or the database reaches the terminal escaped, never obeyed.

A hostile CSR's names, a tampered inventory row and a file name carry ESC sequences (clear the
screen, retitle the window), CR/LF (overwrite a line, fake an "issued" line) and a bidi
override. Every human-readable output path shows them as visible escapes (\\x1b, \\r, \\u202e).
"""

import json
import sqlite3

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mcp_pki.cli.terminal import shown, shown_all
from mcp_pki.controls import is_control
from tests.conftest import Cli, Result

CLEAR = "\x1b[2J"
FAKE_LINE = "\r\nissued server certificate 00ff"
BIDI = "\u202e"
TITLE = "\x1b]0;pwned\x07"


def assert_terminal_safe(text: str) -> None:
    """Only line feeds that end lines: no ESC, CR, BEL, bidi override or other control."""
    for line in text.split("\n"):
        assert not any(is_control(c) for c in line), repr(line)
        assert not line.startswith("issued server certificate 00ff"), text


def _hostile_csr(ca: Cli) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"alice{CLEAR}{FAKE_LINE}{BIDI}")]))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(f"evil{TITLE}.example.com"), x509.DNSName(f"x{FAKE_LINE}.example.com"),
        ]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (ca.cwd / "alice.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))


def test_a_hostile_csr_is_reported_escaped_in_the_not_approved_warning(ca: Cli) -> None:
    _hostile_csr(ca)
    result = ca.ok("issue", "client", "alice", "--csr", "alice.csr")
    assert_terminal_safe(result.stdout)
    assert_terminal_safe(result.stderr)
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("Warning: names in the CSR")]
    assert "alice\\x1b[2J\\x0d\\x0aissued server certificate 00ff\\u202e" in warning
    assert "evil\\x1b]0;pwned\\x07.example.com" in warning
    assert result.stdout.startswith("issued client certificate ")


def _tamper(ca: Cli) -> str:
    """What someone with write access to the database could leave in a row."""
    ca.ok("issue", "client", "bob", "--email", "bob@example.com")
    with sqlite3.connect(ca.db) as connection:
        serial = connection.execute("SELECT serial FROM certificates WHERE name = 'bob'").fetchone()[0]
        connection.execute(
            "UPDATE certificates SET name = ?, owner = ?, sans = ?, roles = ? WHERE serial = ?",
            (f"bob{CLEAR}", f"own{FAKE_LINE}", json.dumps([f"email:b{TITLE}@example.com", f"DNS:{BIDI}x"]),
             json.dumps([f"r{CLEAR}"]), serial),
        )
    return str(serial)


def test_list_shows_tampered_rows_escaped(ca: Cli) -> None:
    _tamper(ca)
    result = ca.ok("list")
    assert_terminal_safe(result.stdout)
    assert "bob\\x1b[2J" in result.stdout and "\\u202ex" in result.stdout and "b\\x1b]0;pwned\\x07@" in result.stdout
    listed = json.loads(ca.ok("list", "--json").stdout)  # JSON keeps the data, escaped by JSON itself
    assert_terminal_safe(json.dumps(listed, ensure_ascii=True))
    assert any(row["name"] == f"bob{CLEAR}" for row in listed)


def test_show_shows_tampered_rows_escaped(ca: Cli) -> None:
    serial = _tamper(ca)
    result = ca.ok("show", serial)
    assert_terminal_safe(result.stdout)
    assert "bob\\x1b[2J (client), owner own\\x0d\\x0aissued server certificate 00ff" in result.stdout
    assert result.stdout.count("\n") == len(result.stdout.splitlines())  # one line per field, as always


def test_error_lines_quote_file_names_escaped(ca: Cli) -> None:
    result: Result = ca("issue", "client", "carol", "--csr", f"/nonexistent/{CLEAR}{FAKE_LINE}.csr")
    assert result.exit_code == 1
    assert_terminal_safe(result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: cannot read CSR")


def test_shown_escapes_controls_and_leaves_text_alone() -> None:
    assert shown("/srv/mcp pki/Zoë's files") == "/srv/mcp pki/Zoë's files"
    assert shown(f"a{CLEAR}\r\n\t\x00\x7f\x85\u2028{BIDI}\u2066\ufeff") == (
        "a\\x1b[2J\\x0d\\x0a\\x09\\x00\\x7f\\x85\\u2028\\u202e\\u2066\\ufeff")
    assert shown("\udcff") == "\\udcff"  # an undecodable byte from argv: printable, not a crash
    assert shown_all(("a\rb", "c")) == "a\\x0db, c"


def test_audit_shows_tampered_records_escaped(ca: Cli) -> None:
    ca.ok("issue", "client", "bob")
    with sqlite3.connect(ca.db) as connection:
        connection.execute("UPDATE audit_log SET operator = ?, target_name = ?", (f"op{BIDI}", f"bob{CLEAR}{FAKE_LINE}"))
    result = ca.ok("audit")
    assert_terminal_safe(result.stdout)
    assert "bob\\x1b[2J\\x0d\\x0aissued server certificate 00ff" in result.stdout


def test_warnings_logged_by_services_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from mcp_pki.cli import _WarningLine

    record = logging.LogRecord("mcp_pki.services.crls", logging.WARNING, __file__, 1, "ignored %s", (f"x{CLEAR}{FAKE_LINE}",),
                               None)
    _WarningLine(logging.WARNING).emit(record)
    err = capsys.readouterr().err
    assert err == "Warning: ignored x\\x1b[2J\\x0d\\x0aissued server certificate 00ff\n"
