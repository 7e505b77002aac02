"""The Claude Code targets, run with the real Claude Code CLI (pinned in tests/claude-code).

Each rendered script runs as a teammate would run it, with a throwaway HOME; then the CLI
itself connects to a real MCP server that requires client certificates (`claude mcp get`
and `claude mcp list` start every configured server and report whether it connected).
"""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.conftest import VENV_BIN
from tests.test_snippet_hosts import _commented_json, _initialize
from tests.test_snippet_mcp import McpSetup, Server, setup, start_python_server, url

__all__ = ["setup"]  # a fixture, shared with test_snippet_mcp

CLAUDE_BIN = Path(__file__).parent / "claude-code" / "node_modules" / ".bin"
CLI_TIMEOUT = 90

pytestmark = pytest.mark.skipif(
    not (CLAUDE_BIN / "claude").exists(), reason="Claude Code CLI not installed (scripts/test runs npm ci in tests/claude-code)"
)


@pytest.fixture
def remote(setup: McpSetup) -> Iterator[Server]:
    server = start_python_server(setup)
    try:
        yield server
    finally:
        server.stop()


def _env(home: Path) -> dict[str, str]:
    # Only what a login shell would have: the CLI, python3 and sh, a HOME of its own.
    return {"HOME": str(home), "PATH": f"{CLAUDE_BIN}:/usr/bin:/bin", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}


def _run(command: list[str], home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT, env={**_env(home), **extra},
                          check=False)


def _script(setup: McpSetup, target: str, ref: str, port: int, *options: str) -> Path:
    path = setup.work / f"{target}-{ref}.sh"
    setup.ca.ok("snippet", target, ref, "--var", f"url={url(port)}", "--out", str(path), *options)
    return path


def _status(home: Path, name: str) -> str:
    """What `claude mcp get` says of the server after starting it."""
    result = _run(["claude", "mcp", "get", name], home)
    assert result.returncode == 0, result.stderr
    return next(line.split(":", 1)[1].strip() for line in result.stdout.splitlines() if line.strip().startswith("Status:"))


def test_claude_code_script_adds_a_bridge_entry_that_claude_code_connects(
    setup: McpSetup, remote: Server, tmp_path: Path,
) -> None:
    home = tmp_path / "user"
    home.mkdir()
    added = _run(["sh", str(_script(setup, "claude-code", "alice", remote.port))], home)
    assert added.returncode == 0, added.stdout + added.stderr  # it failed: "Invalid environment variable format"
    assert "Connected" in _status(home, "mcp-server")

    entry = json.loads((home / ".claude.json").read_text())["mcpServers"]["mcp-server"]
    assert entry["type"] == "stdio" and entry["env"] == {"MCP_PKI_HOME": str(setup.ca.home)}
    with open(tmp_path / "bridge.stderr", "w") as log:  # launched as a host launches it
        assert anyio.run(_initialize, entry, home, log) == ("srv", {"echo"})


def test_claude_code_shows_a_revoked_teammates_bridge_entry_failed(setup: McpSetup, remote: Server, tmp_path: Path) -> None:
    home = tmp_path / "user"
    home.mkdir()
    added = _run(["sh", str(_script(setup, "claude-code", "bob", remote.port, "--var", "name=files"))], home)
    assert added.returncode == 0, added.stdout + added.stderr
    assert "Failed" in _status(home, "files")


def test_claude_code_http_connects_with_the_certificate_it_sets_and_not_without(
    setup: McpSetup, remote: Server, tmp_path: Path,
) -> None:
    home = tmp_path / "user"
    (home / ".claude").mkdir(parents=True)
    settings = home / ".claude" / "settings.json"
    settings.write_text(json.dumps({"theme": "dark", "env": {"EDITOR": "vi"}}))
    # A teammate's machine: the files in their own folder, no CA home.
    added = _run(["sh", str(_script(setup, "claude-code-http", "alice", remote.port, "--dir", str(setup.alice)))], home)
    assert added.returncode == 0, added.stdout + added.stderr
    written = json.loads(settings.read_text())
    assert written == {"theme": "dark", "env": {
        "EDITOR": "vi", "CLAUDE_CODE_CLIENT_CERT": str(setup.alice / "tls.crt"),
        "CLAUDE_CODE_CLIENT_KEY": str(setup.alice / "tls.key"), "NODE_EXTRA_CA_CERTS": str(setup.alice / "ca.crt"),
    }}
    entry = json.loads((home / ".claude.json").read_text())["mcpServers"]["mcp-server"]
    assert entry == {"type": "http", "url": url(remote.port)}

    listed = _run(["claude", "mcp", "list"], home)
    assert listed.returncode == 0 and "Connected" in listed.stdout, listed.stdout + listed.stderr

    # The same server, trusted but without a client certificate: the server refuses Claude Code.
    written["env"] = {"NODE_EXTRA_CA_CERTS": str(setup.alice / "ca.crt")}
    settings.write_text(json.dumps(written))
    assert "Failed" in _status(home, "mcp-server")


def test_claude_code_http_with_a_revoked_certificate_fails_to_connect(
    setup: McpSetup, remote: Server, tmp_path: Path,
) -> None:
    home = tmp_path / "user"
    home.mkdir()
    added = _run(["sh", str(_script(setup, "claude-code-http", "bob", remote.port))], home)
    assert added.returncode == 0, added.stdout + added.stderr
    assert "Failed" in _status(home, "mcp-server")


def test_claude_code_http_leaves_a_settings_file_it_cannot_read_alone(setup: McpSetup, tmp_path: Path) -> None:
    home = tmp_path / "user"
    (home / ".claude").mkdir(parents=True)
    settings = home / ".claude" / "settings.json"
    settings.write_text("{ not json")
    result = _run(["sh", str(_script(setup, "claude-code-http", "alice", 8443))], home)
    assert result.returncode == 1 and result.stderr.startswith("Error: ") and "not JSON" in result.stderr
    assert settings.read_text() == "{ not json"
    assert not (home / ".claude.json").exists() or "mcpServers" not in (home / ".claude.json").read_text()


def _teammate_home(tmp_path: Path, setup: McpSetup, who: str, server: str) -> Path:
    """A teammate's HOME holding their certificate where portable entries look for it."""
    home = tmp_path / who
    (home / ".mcp-pki" / server).mkdir(parents=True)
    (home / ".claude").mkdir()
    # The teammate trusts the project's .mcp.json (what answering Claude Code's prompt records).
    (home / ".claude" / "settings.json").write_text(json.dumps({"enableAllProjectMcpServers": True}))
    return home


def test_a_portable_mcp_json_works_for_every_teammate_in_claude_code(
    setup: McpSetup, remote: Server, tmp_path: Path,
) -> None:
    script = _script(setup, "claude-code", "alice", remote.port, "--var", "portable=true")
    project = tmp_path / "project"
    project.mkdir()
    shared = _commented_json(script.read_text())
    (project / ".mcp.json").write_text(json.dumps(shared))  # committed once, for everyone
    assert str(setup.alice) not in script.read_text() and str(setup.ca.home) not in script.read_text()

    setup.ca.ok("issue", "client", "carol")
    for who, folder in (("alice", setup.alice), ("carol", setup.ca.cwd / "carol")):
        home = _teammate_home(tmp_path, setup, who, "mcp-server")
        for name in ("tls.crt", "tls.key", "ca.crt"):
            (home / ".mcp-pki" / "mcp-server" / name).write_bytes((folder / name).read_bytes())
        env = {**_env(home), "PATH": f"{CLAUDE_BIN}:{VENV_BIN}:/usr/bin:/bin"}
        got = subprocess.run(["claude", "mcp", "get", "mcp-server"], capture_output=True, text=True, cwd=project,
                             timeout=CLI_TIMEOUT, env=env, check=False)
        assert "Project config" in got.stdout and "Connected" in got.stdout, (who, got.stdout + got.stderr)

    # The script itself adds the same portable entry for one user.
    home = _teammate_home(tmp_path, setup, "dave", "mcp-server")
    added = _run(["sh", str(script)], home)
    assert added.returncode == 0, added.stdout + added.stderr
    assert json.loads((home / ".claude.json").read_text())["mcpServers"]["mcp-server"]["args"][3] == (
        "${HOME}/.mcp-pki/mcp-server/tls.crt")
