"""MCP host targets: each rendered entry, launched as its host would launch it, reaches a real
MCP server over mutual TLS through `mcp-pki bridge`."""

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, TextIO

import anyio
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.test_snippet_mcp import McpSetup, Server, setup, start_python_server, url

__all__ = ["setup"]  # a fixture, shared with test_snippet_mcp

HOSTS = ["claude-desktop", "claude-code", "vscode", "cursor", "windsurf", "zed", "continue"]
SESSION_TIMEOUT = 60


def _commented_json(text: str) -> dict[str, Any]:
    """The .mcp.json entry that the claude-code script carries in its comments."""
    lines = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    start, end = lines.index("{"), len(lines) - 1 - lines[::-1].index("}")
    parsed: dict[str, Any] = json.loads("\n".join(lines[start:end + 1]))
    return parsed


def launch_entry(target: str, text: str) -> dict[str, Any]:
    """The server entry in the host's own format: its name, command and args."""
    if target == "claude-code":
        command = next(line for line in text.splitlines() if line.startswith("exec claude mcp add "))
        words = shlex.split(command)
        assert words[:6] == ["exec", "claude", "mcp", "add", "--scope", "user"]
        # The name first: `-e` takes several values and would swallow a name after it.
        name, options, launched = words[6], words[7:words.index("--")], words[words.index("--") + 1:]
        env = dict(value.split("=", 1) for flag, value in zip(options[::2], options[1::2], strict=True)
                   if flag == "-e")
        entry = _commented_json(text)["mcpServers"][name]
        assert entry == {"type": "stdio", "command": launched[0], "args": launched[1:], "env": env}
        return {"name": name, **entry}
    if target == "continue":
        document = yaml.safe_load(text)
        assert document["schema"] == "v1"
        (entry,) = document["mcpServers"]
        assert entry["type"] == "stdio"
        return dict(entry)
    document = json.loads(text)
    key = {"vscode": "servers", "zed": "context_servers"}.get(target, "mcpServers")
    ((name, entry),) = document[key].items()
    if target == "vscode":
        assert entry["type"] == "stdio"
    if target == "zed":
        assert entry["source"] == "custom"
    return {"name": name, **entry}


async def _initialize(entry: dict[str, Any], home: Path, log: TextIO) -> tuple[str, set[str]]:
    # As the host launches it: the entry's own environment, a HOME with no CA in it.
    parameters = StdioServerParameters(command=entry["command"], args=entry["args"],
                                       env={**entry["env"], "HOME": str(home)})
    with anyio.fail_after(SESSION_TIMEOUT):
        async with stdio_client(parameters, errlog=log) as (read, write), ClientSession(read, write) as session:
            initialized = await session.initialize()
            tools = await session.list_tools()
            return initialized.server_info.name, {t.name for t in tools.tools}


@pytest.fixture
def remote(setup: McpSetup) -> Any:
    server = start_python_server(setup)
    try:
        yield server
    finally:
        server.stop()


def test_every_host_entry_launches_the_bridge_and_answers_initialize(
    setup: McpSetup, remote: Server, tmp_path: Path,
) -> None:
    teammate_home = tmp_path / "teammate"
    (teammate_home / "mcp").mkdir(parents=True)
    for name in ("tls.crt", "tls.key", "ca.crt"):  # what a teammate receives, in their own folder
        shutil.copy2(setup.alice / name, teammate_home / "mcp" / name)
    for target in HOSTS:
        # On the CA's machine (the entry points the bridge at the CA home, for its CRL), then
        # on a teammate's machine (--dir: their folder, no CA home).
        for options, env in (([], {"MCP_PKI_HOME": str(setup.ca.home)}), (["--dir", str(teammate_home / "mcp")], {})):
            text = setup.ca.ok("snippet", target, "alice", "--var", f"url={url(remote.port)}", *options).stdout
            entry = launch_entry(target, text)
            assert entry["name"] == "mcp-server"  # the URL names an IP: no label to take
            assert Path(entry["command"]).is_absolute() and Path(entry["command"]).name == "mcp-pki"
            assert entry["args"][:2] == ["bridge", url(remote.port)]
            assert entry["env"] == env
            errlog = tmp_path / f"{target}.stderr"
            with open(errlog, "w") as log:
                server_name, tools = anyio.run(_initialize, entry, teammate_home, log)
            assert (server_name, tools) == ("srv", {"echo"}), (target, errlog.read_text())


def test_host_entries_take_a_name_and_the_command_path_of_the_teammates_machine(setup: McpSetup) -> None:
    for target in HOSTS:
        text = setup.ca.ok("snippet", target, "alice", "--var", "url=https://files.example.com:8443/mcp").stdout
        assert launch_entry(target, text)["name"] == "files"
        moved = setup.ca.ok(
            "snippet", target, "alice", "--var", "url=https://files.example.com/mcp", "--var", "name=team files",
            "--var", "command=/opt/mcp-pki/bin/mcp-pki", "--dir", "/home/alice/.mcp-pki",
        ).stdout
        entry = launch_entry(target, moved)
        assert entry["name"] == "team files" and entry["command"] == "/opt/mcp-pki/bin/mcp-pki"
        assert entry["args"] == ["bridge", "https://files.example.com/mcp",
                                 "--cert", "/home/alice/.mcp-pki/tls.crt", "--key", "/home/alice/.mcp-pki/tls.key",
                                 "--ca", "/home/alice/.mcp-pki/ca.crt"]


def test_a_revoked_teammates_host_entry_fails_with_one_clear_line(setup: McpSetup, remote: Server, tmp_path: Path) -> None:
    text = setup.ca.ok("snippet", "claude-desktop", "bob", "--var", f"url={url(remote.port)}").stdout
    entry = launch_entry("claude-desktop", text)
    # Exactly as rendered: the entry's environment names the CA home, whose CRL lists bob.
    result = subprocess.run([entry["command"], *entry["args"]], input="", capture_output=True, text=True,
                            timeout=SESSION_TIMEOUT, env={**entry["env"], "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and "revoked" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_windows_teammates_entry_keeps_windows_paths(setup: McpSetup) -> None:
    text = setup.ca.ok("snippet", "claude-desktop", "alice", "--var", "url=https://files.example.com/mcp",
                       "--dir", "C:\\Users\\alice\\mcp", "--var", "command=C:\\Tools\\mcp-pki.exe").stdout
    entry = launch_entry("claude-desktop", text)
    assert entry["command"] == "C:\\Tools\\mcp-pki.exe"
    assert entry["args"][2:] == ["--cert", "C:\\Users\\alice\\mcp\\tls.crt", "--key", "C:\\Users\\alice\\mcp\\tls.key",
                                 "--ca", "C:\\Users\\alice\\mcp\\ca.crt"]
