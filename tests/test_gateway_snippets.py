"""Where the gateway fits: the server-env entry and the systemd unit, put to work.

The server-env entry is launched exactly as written (command, args, env) and serves the
stdio toolbox over mutual TLS from its TLS_* environment; the unit passes
``systemd-analyze verify`` where that runs, and its ExecStart, with systemd's credential and
log paths filled in, serves with the policy and the tool-call log.
"""

import json
import os
import shlex
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, Cli, listening
from tests.gateway_support import TOOLBOX, RawClient, free_port, new_ca
from tests.test_snippet_proxies import SYSTEMD_ANALYZE, _systemd_analyze_works


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("snippet-ca"), "Snippets")
    cli.ok("issue", "client", "alice", "--role", "analyst")
    cli.ok("issue", "client", "bob")
    cli.ok("revoke", "bob")
    return cli


def _serve(argv: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as sink:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env,
                                   start_new_session=True)
    if not listening(port, process):
        process.kill()
        raise AssertionError(f"it did not start:\n{log.read_text(errors='replace')}")
    return process


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
        raise AssertionError("it did not stop on SIGTERM") from None


def _refused(pki: Cli, name: str, port: int) -> bool:
    client = RawClient(pki, pki.cwd / name, port)
    try:
        client.initialize()
    except (ssl.SSLError, ConnectionError, AssertionError):
        return True
    finally:
        client.close()
    return False


def test_the_server_env_entry_runs_the_server_behind_the_gateway(pki: Cli, tmp_path: Path) -> None:
    port = free_port()
    entry = json.loads(pki.ok(
        "snippet", "server-env", "srv", "--var", f"command={sys.executable}", "--var", f"args={TOOLBOX}",
        "--var", "bind=127.0.0.1", "--var", f"port={port}",
    ).stdout)["mcpServers"]["srv"]
    assert entry["command"] == str(VENV_BIN / "mcp-pki")
    assert entry["args"] == ["gateway", "--listen", f"127.0.0.1:{port}", "--", sys.executable, TOOLBOX]
    assert entry["env"]["TLS_REQUIRE_CLIENT_CERT"] == "true"
    env = {**os.environ, **entry["env"], "TOOLBOX_SIDE_EFFECTS": str(tmp_path / "appended.txt")}
    process = _serve([entry["command"], *entry["args"]], env, port, tmp_path / "gateway.log")
    try:
        alice = RawClient(pki, pki.cwd / "alice", port)
        try:
            alice.initialize()
            status, answer = alice.call("echo", text="the block is true")
            assert status == 200 and answer is not None
            assert answer["result"]["content"][0]["text"] == "the block is true"
        finally:
            alice.close()
        assert _refused(pki, "bob", port)  # TLS_CRL is in force
    finally:
        assert _stop(process) == 0


def test_the_gateway_unit_is_hardened_valid_and_its_command_serves(pki: Cli, tmp_path: Path) -> None:
    port = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text("default: deny\nroles:\n  analyst: {tools: [echo]}\n")
    unit = pki.ok("snippet", "gateway", "srv", "--var", f"command={sys.executable}", "--var", f"args={TOOLBOX}",
                  "--var", "bind=127.0.0.1", "--var", f"port={port}").stdout
    lines = [line for line in unit.splitlines() if line and not line.startswith("#")]
    settings = dict(line.split("=", 1) for line in lines if "=" in line)
    for hardening in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=read-only",
                      "PrivateTmp=yes", "LogsDirectory=mcp-pki-gateway-srv", "LimitNOFILE=65536"):
        assert hardening in lines, hardening
    srv = pki.cwd / "srv"
    assert settings["LoadCredential"] == f"tls.key:{srv / 'tls.key'}"
    assert "PRIVATE KEY" not in unit

    if _systemd_analyze_works(tmp_path):
        folder = tmp_path / "units"
        folder.mkdir()
        (folder / "mcp-pki-gateway-srv.service").write_text(unit)
        verified = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(folder / "mcp-pki-gateway-srv.service")],
                                  check=False, capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0, verified.stderr
        complaints = [line for line in verified.stderr.splitlines() if "mcp-pki-gateway-srv" in line]
        assert not complaints, complaints

    # What systemd would run, with the credential and the logs folder it would provide.
    audit = tmp_path / "calls.jsonl"
    command = settings["ExecStart"].replace("${CREDENTIALS_DIRECTORY}/tls.key", str(srv / "tls.key"))
    command = command.replace("/var/log/mcp-pki-gateway-srv/calls.jsonl", str(audit))
    command = command.replace("/etc/mcp-pki/gateway-srv-policy.yaml", str(policy))
    argv = shlex.split(command)
    assert argv[1:3] == ["gateway", "--cert"] and "--policy" in argv and argv[-2:] == [sys.executable, TOOLBOX]
    env = {**os.environ, "TOOLBOX_SIDE_EFFECTS": str(tmp_path / "appended.txt")}
    process = _serve(argv, env, port, tmp_path / "gateway.log")
    try:
        alice = RawClient(pki, pki.cwd / "alice", port)
        try:
            alice.initialize()
            status, answer = alice.request("tools/list")
            assert status == 200 and answer is not None
            assert [tool["name"] for tool in answer["result"]["tools"]] == ["echo"]  # the policy applies
        finally:
            alice.close()
    finally:
        assert _stop(process) == 0
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["method"] for line in lines if "checkpoint" not in line] == ["initialize", "tools/list"]
    assert "checkpoint" in lines[-1]  # signed with the credential's key before it stopped
