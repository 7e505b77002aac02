"""gateway: what a service needs. Sessions and their processes, limits, signals, failures
of the upstream, and bad input at start (one ``Error:`` line each, exit 1)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, Result, assert_clean_error
from tests.gateway_support import (
    MCP_PKI,
    TOOLBOX,
    Gateway,
    RawClient,
    new_ca,
    process_alive,
    wait_until,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("service-ca"), "Service")
    for name in ("alice", "bob"):
        cli.ok("issue", "client", name)
    return cli


@pytest.fixture(scope="module")
def gateway(pki: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("gateway")
    with Gateway(pki, "--as", "srv", "--max-sessions", "3", "--max-body", "4096", log=folder / "gateway.log",
                 env={"TOOLBOX_SIDE_EFFECTS": str(folder / "appended.txt")}) as running:
        yield running


def _call_lines(gateway: Gateway) -> list[dict[str, Any]]:
    """The tool-call log's lines among the gateway's stderr (its default place)."""
    return [json.loads(line) for line in gateway.stderr().splitlines() if line.startswith("{")]


def _pid(client: RawClient) -> int:
    status, answer = client.call("pid")
    assert status == 200 and answer is not None and "result" in answer, (status, answer)
    return int(answer["result"]["content"][0]["text"])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split(") ", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def test_each_session_has_its_own_process_and_belongs_to_its_certificate(pki: Cli, gateway: Gateway) -> None:
    alice, bob = RawClient(pki, pki.cwd / "alice", gateway.port), RawClient(pki, pki.cwd / "bob", gateway.port)
    try:
        alice.initialize()
        bob.initialize()
        alice_pid, bob_pid = _pid(alice), _pid(bob)
        assert alice_pid != bob_pid and process_alive(alice_pid) and process_alive(bob_pid)
        # Bob presents alice's session id: 404, as if it did not exist, and alice's session is untouched.
        status, messages, _ = bob.post({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                                        "params": {"name": "pid", "arguments": {}}}, session=alice.session)
        assert status == 404, (status, messages)
        assert _pid(alice) == alice_pid
        assert "refused bob" in gateway.stderr()
        # DELETE ends the session and its process.
        assert alice.delete() in (200, 204)
        wait_until(lambda: not process_alive(alice_pid), "the end of alice's process")
        status, _ = alice.request("ping")
        assert status == 404
        assert bob.delete() in (200, 204)
    finally:
        alice.close()
        bob.close()


def test_limits_on_sessions_and_bodies(pki: Cli, gateway: Gateway) -> None:
    clients = [RawClient(pki, pki.cwd / "alice", gateway.port) for _ in range(4)]
    try:
        opened = []
        for client in clients[:3]:
            client.initialize()
            opened.append(client)
        status, messages, _ = clients[3].post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}})
        assert status == 503, (status, messages)
        status, _answer = opened[0].call("echo", text="x" * 8000)
        assert status == 413
        # The same without a Content-Length: the body is counted as it arrives.
        chunked = opened[2].connection
        chunked.request("POST", "/mcp", body=iter([b'{"jsonrpc": "2.0", "id": 9, "method": "ping", "x": "',
                                                   b"x" * 8000, b'"}']),
                        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                                 "Mcp-Session-Id": opened[2].session or ""}, encode_chunked=True)
        response = chunked.getresponse()
        response.read()
        assert response.status == 413
        status, answer = opened[1].call("echo", text="fits")
        assert status == 200 and answer is not None and answer["result"]["content"][0]["text"] == "fits"
        # Each refusal has its line in the tool-call log (here stderr): refused unread, no method.
        refused = [line for line in _call_lines(gateway) if line["method"] is None]
        assert [(line["session"], line["decision"], line["outcome"]) for line in refused] == [
            (opened[0].session, "denied", "error"), (opened[2].session, "denied", "error")]
        assert refused[0]["name"] == "alice" and "larger than 4096 bytes" in gateway.stderr()
    finally:
        for client in clients:
            if client.session:
                client.delete()
            client.close()


def test_an_upstream_that_dies_answers_with_an_error_and_logs_its_stderr(pki: Cli, gateway: Gateway) -> None:
    alice = RawClient(pki, pki.cwd / "alice", gateway.port)
    try:
        alice.initialize()
        status, answer = alice.call("crash")
        assert status == 200 and answer is not None and "error" in answer, answer
        assert "exited with code 3" in answer["error"]["message"]
        wait_until(lambda: "toolbox: about to crash" in gateway.stderr(), "the stderr tail in the log")
        status, _ = alice.request("ping")
        assert status == 404  # the session ended with its process
    finally:
        alice.close()


def test_idle_sessions_end(pki: Cli, tmp_path: Path) -> None:
    with Gateway(pki, "--as", "srv", "--session-idle", "2s", log=tmp_path / "gateway.log",
                 env={"TOOLBOX_SIDE_EFFECTS": str(tmp_path / "appended.txt")}) as gateway:
        idle = RawClient(pki, pki.cwd / "alice", gateway.port)
        try:
            idle.initialize()
            idle_pid = _pid(idle)
            wait_until(lambda: not process_alive(idle_pid), "the idle session's end", timeout=15)
            assert idle.request("ping")[0] == 404
            wait_until(lambda: "idle for 2 s" in gateway.stderr(), "the log line saying why it ended")
        finally:
            idle.close()


def test_an_upstream_command_that_cannot_start_answers_the_client(pki: Cli, tmp_path: Path) -> None:
    with Gateway(pki, "--as", "srv", command=[str(tmp_path / "no-such-server")], log=tmp_path / "gateway.log") as gw:
        alice = RawClient(pki, pki.cwd / "alice", gw.port)
        try:
            status, messages, _ = alice.post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}})
            errors = [m for m in messages if m.get("id") == 1 and "error" in m]
            assert errors and "cannot start" in errors[0]["error"]["message"], (status, messages)
        finally:
            alice.close()
        assert "no such file or directory" in gw.stderr()


# --------------------------------------------------------------------------- bad input


def _run_gateway(cli: Cli, *args: str, env: dict[str, str] | None = None) -> Result:
    """The console script as a subprocess, bounded: a case that wrongly starts serving fails
    the test instead of hanging it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TLS_")}
    try:
        done = subprocess.run([MCP_PKI, "gateway", *args, "--", sys.executable, TOOLBOX], check=False,
                              capture_output=True, text=True, timeout=30, env={**base, "MCP_PKI_HOME": str(cli.home), **(env or {})})
    except subprocess.TimeoutExpired:
        raise AssertionError(f"mcp-pki gateway {' '.join(args)} started serving instead of failing") from None
    return Result(done.returncode, done.stdout, done.stderr, None)


def test_bad_input_at_start_is_one_clean_error(pki: Cli, tmp_path: Path) -> None:
    srv = pki.cwd / "srv"
    files = ["--cert", str(srv / "tls.crt"), "--key", str(srv / "tls.key"), "--ca", str(pki.home / "ca.crt")]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_clean_error(_run_gateway(pki, "--as", "srv", "--listen", f"127.0.0.1:{port}"),
                           f"cannot listen on 127.0.0.1:{port}: the port is in use")
    leaf_only = tmp_path / "leaf.pem"
    leaf_only.write_text((srv / "tls.crt").read_text().split("-----END CERTIFICATE-----")[0]
                         + "-----END CERTIFICATE-----\n")
    (tmp_path / "garbage.key").write_text("not a key\n")
    (tmp_path / "policy.yaml").write_text("default: deny\nroles:\n  analyst: {tools: query}\n")
    (tmp_path / "broken.yaml").write_text("roles: [unclosed\n")
    listen = ["--listen", f"127.0.0.1:{_free_port()}"]
    environment = {"TLS_CERT": str(srv / "tls.crt"), "TLS_KEY": str(srv / "tls.key"),
                   "TLS_CA": str(pki.home / "ca.crt"), "TLS_REQUIRE_CLIENT_CERT": "false"}
    cases: list[tuple[list[str], dict[str, str] | None, str]] = [
        ([*files[:2], "--key", str(tmp_path / "missing.key"), *files[4:]], None, "cannot read the private key file"),
        ([*files[:2], "--key", str(tmp_path / "garbage.key"), *files[4:]], None, "cannot use the private key"),
        ([*files[:2], "--key", str(pki.cwd / "alice" / "tls.key"), *files[4:]], None,
         "does not belong to the certificate"),
        ([*files[:4], "--ca", str(leaf_only)], None, "holds no CA certificate"),
        (["--as", "srv", "--policy", str(tmp_path / "policy.yaml")], None, "roles.analyst.tools must be a list"),
        (["--as", "srv", "--policy", str(tmp_path / "broken.yaml")], None, "is not valid YAML"),
        ([], environment, "TLS_REQUIRE_CLIENT_CERT='false'"),
        (["--as", "alice"], None, "is a client certificate"),
        (["--as", "srv", "--session-idle", "soon"], None, "invalid --session-idle"),
        ([], None, "give the server certificate"),
    ]
    for args, env, expected in cases:
        assert_clean_error(_run_gateway(pki, *listen, *args, env=env), expected)
    assert_clean_error(_run_gateway(pki, "--as", "srv", "--listen", "nowhere"), "invalid --listen")


def test_the_environment_block_of_server_env_starts_it(pki: Cli, tmp_path: Path) -> None:
    srv = pki.cwd / "srv"
    env = {"TLS_CERT": str(srv / "tls.crt"), "TLS_KEY": str(srv / "tls.key"), "TLS_CA": str(pki.home / "ca.crt"),
           "TLS_REQUIRE_CLIENT_CERT": "true", "TLS_CRL": str(pki.home / "crl.pem"),
           "TOOLBOX_SIDE_EFFECTS": str(tmp_path / "appended.txt")}
    with Gateway(pki, env=env, log=tmp_path / "gateway.log") as gateway:
        alice = RawClient(pki, pki.cwd / "alice", gateway.port)
        try:
            alice.initialize()
            status, answer = alice.call("echo", text="from the environment")
            assert status == 200 and answer is not None, answer
            assert answer["result"]["content"][0]["text"] == "from the environment"
        finally:
            alice.close()
        assert f"CRL {pki.home / 'crl.pem'} checked" in gateway.stderr()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sigterm_ends_every_session_and_leaves_no_process(pki: Cli, gateway: Gateway) -> None:
    """Last in this module: it stops the module's gateway."""
    alice, bob = RawClient(pki, pki.cwd / "alice", gateway.port), RawClient(pki, pki.cwd / "bob", gateway.port)
    try:
        alice.initialize()
        bob.initialize()
        pids = [_pid(alice), _pid(bob)]
        assert gateway.process is not None
        assert set(pids) <= set(_children(gateway.process.pid))
        started = time.monotonic()
        assert gateway.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - started < 10
        assert not any(process_alive(pid) for pid in pids)
        assert "SIGTERM: stopping (2 session(s) open)" in gateway.stderr()
        assert "Traceback" not in gateway.stderr()
    finally:
        alice.close()
        bob.close()


def test_help_and_start_up_load_nothing_of_the_gateway() -> None:
    """`mcp-pki --help`, `gateway --help` and every other command start without the SDK,
    uvicorn or the gateway's own modules: they load only when the gateway runs."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mcp_pki.cli import cli\n"
        "for args in (['--help'], ['gateway', '--help'], ['audit', 'verify', '--help']):\n"
        "    result = CliRunner().invoke(cli, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "heavy = ('mcp', 'mcp_types', 'uvicorn', 'starlette', 'httpx2', 'anyio', 'mcp_pki.gateway', 'mcp_pki.mtls')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy[-2:])))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
