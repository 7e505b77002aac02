"""Small things a new user trips over: help text, option placement, typos, names."""

import subprocess
from pathlib import Path

from cryptography import x509

from mcp_pki.cli import globals_first
from tests.conftest import REPO, Cli, assert_clean_error


def test_offboard_help_shows_one_default(ca: Cli) -> None:
    text = " ".join(ca.ok("offboard", "--help").stdout.split())
    assert text.count("[default:") == 1 and "[default: affiliation-changed]" in text


def test_global_options_work_after_the_command_too(ca: Cli, tmp_path: Path) -> None:
    ca.ok("issue", "client", "alice")
    elsewhere = Cli(tmp_path / "no-such-home", ca.cwd)  # its env points at an empty home
    after = elsewhere.ok("list", "--json", "--home", str(ca.home)).stdout
    assert '"alice"' in after
    assert after == elsewhere.ok("--home", str(ca.home), "list", "--json").stdout
    assert "alice (client)" in elsewhere.ok("show", "alice", f"--home={ca.home}").stdout
    # Nothing after "--" moves: it is the gateway's own server command.
    command = ["gateway", "--as", "srv", "--", "server", "--home", "/srv", "--db", "x"]
    assert globals_first(command) == command
    assert globals_first(["list", "--db", "sqlite://", "--json"]) == ["--db", "sqlite://", "list", "--json"]


def test_a_mistyped_name_gets_a_suggestion(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    assert_clean_error(ca("show", "alcie"), "no certificate matches 'alcie': did you mean 'alice'?")
    result = ca("show", "zebra")
    assert "did you mean" not in result.stderr


def test_issue_without_a_kind_says_which_command_was_meant(ca: Cli) -> None:
    result = ca("issue", "alice")
    assert result.exit_code == 2
    assert "'mcp-pki issue client alice'" in result.stderr and "'mcp-pki issue server alice" in result.stderr


def test_a_ca_name_ending_in_ca_is_not_doubled(mcp: Cli) -> None:
    mcp.ok("init-ca", "--name", "Example MCP CA", "--org", "Example")
    root = x509.load_pem_x509_certificate((mcp.home / "ca.crt").read_bytes())
    assert root.subject.rfc4514_string() == "CN=Example MCP Root CA,O=Example"


def test_the_python_server_and_the_readme_check_the_whole_chain_against_the_crl() -> None:
    template = (REPO / "templates" / "python-server.py.j2").read_text()
    readme = (REPO / "README.md").read_text()
    assert "VERIFY_CRL_CHECK_CHAIN" in template and "VERIFY_CRL_CHECK_LEAF" not in template
    assert "VERIFY_CRL_CHECK_CHAIN" in readme and "VERIFY_CRL_CHECK_LEAF" not in readme


def test_scripts_parse() -> None:
    for script in ("demo", "test"):
        subprocess.run(["sh", "-n", str(REPO / "scripts" / script)], check=True, timeout=30)


def test_status_names_the_home_and_audit_has_a_header_row(ca: Cli) -> None:
    ca.ok("issue", "client", "alice")
    status = ca("status")
    assert status.stdout.splitlines()[0].split() == ["home", str(ca.home)]
    assert "\x1b[" not in status.stdout  # colour only on a terminal
    lines = ca.ok("audit").stdout.splitlines()
    assert lines[0].split() == ["SEQ", "AT", "(UTC)", "OPERATOR", "ACTION", "OUTCOME", "TARGET"]
    assert lines[1].split()[0] == "1" and "issue" in ca.ok("audit").stdout


def test_uvicorn_env_says_it_checks_no_crl_and_what_does(ca: Cli) -> None:
    ca.ok("issue", "server", "files", "--ip", "127.0.0.1")
    header = ca.ok("snippet", "uvicorn-env", "files").stdout.splitlines()[1:3]
    assert "uvicorn checks no CRL" in header[0] and "gateway" in header[1] and "nginx" in header[1]
    listed = next(line for line in ca.ok("snippet", "--list").stdout.splitlines() if line.startswith("uvicorn-env "))
    assert "NO CRL" in listed and "gateway" in listed


def _on_a_terminal(home: Path, answers: list[str]) -> str:
    """init-ca run on a pseudo-terminal, answering each prompt in turn; everything it printed."""
    import os
    import pty
    import select
    import time

    from tests.conftest import VENV_BIN

    controller, terminal = pty.openpty()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home.parent), "MCP_PKI_HOME": str(home)}
    process = subprocess.Popen([str(VENV_BIN / "mcp-pki"), "init-ca", "--name", "T"], stdin=terminal,
                               stdout=terminal, stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    seen, pending = b"", list(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 1024)
                except OSError:  # the process closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                if pending and seen.endswith(b": "):  # a prompt waits for its answer
                    os.write(controller, pending.pop(0).encode() + b"\n")
            elif process.poll() is not None:
                break
    finally:
        os.close(controller)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
    return seen.decode(errors="replace")


def test_a_short_passphrase_is_refused_before_the_confirmation(tmp_path: Path) -> None:
    home = tmp_path / "home"
    shown = _on_a_terminal(home, ["short", "short"])
    assert "at least 8 characters" in shown and "Repeat" not in shown, shown
    assert not (home / "ca.crt").exists()
    differ = _on_a_terminal(tmp_path / "home2", ["long enough 1", "long enough 2"])
    assert "Repeat for confirmation" in differ and "differ" in differ, differ
    ok = _on_a_terminal(tmp_path / "home3", ["long enough 1", "long enough 1"])
    assert (tmp_path / "home3" / "ca.crt").exists(), ok
