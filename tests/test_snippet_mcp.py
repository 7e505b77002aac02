"""The MCP targets run for real: rendered servers, clients and fronts speak MCP over mutual TLS.

Every process here is what `mcp-pki snippet` printed, started as its header says, on loopback.
"""

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli, listening
from tests.test_snippet import RenderedNginx
from tests.test_tls_revocation import (
    NGINX,
    SERVER_NAME,
    TIMEOUT,
    _free_port,
    https_get,
    issue_client,
    issue_server,
)

NODE_MODULES = Path(__file__).parent / "node" / "node_modules"
RUN_TIMEOUT = 60


def render(ca: Cli, target: str, ref: str, out: Path, *options: str) -> Path:
    ca.ok("snippet", target, ref, *options, "--out", str(out))
    return out


def run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          cwd=cwd, env=env, check=False)


class Server:
    """A server process on a loopback port, stopped however the test ends."""

    def __init__(self, command: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.port, self.log = port, log
        with open(log, "ab") as sink:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                            env=env, start_new_session=True)
        if not listening(port, self.process, 20):
            self.stop()
            raise AssertionError(f"{command[:2]} did not listen on {port}: {log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)


@dataclass
class McpSetup:
    ca: Cli
    srv: Path
    alice: Path  # valid client
    bob: Path  # revoked client
    work: Path


@pytest.fixture
def setup(ca: Cli, tmp_path: Path) -> McpSetup:
    srv = issue_server(ca)
    alice, bob = issue_client(ca, "alice"), issue_client(ca, "bob")
    ca.ok("revoke", "bob")
    work = tmp_path / "rendered"
    work.mkdir()
    return McpSetup(ca, srv, alice, bob, work)


def start_python_server(s: McpSetup, *options: str, env: dict[str, str] | None = None) -> Server:
    port = _free_port()
    script = render(s.ca, "python-server", "srv", s.work / f"server-{port}.py",
                    "--var", "bind=127.0.0.1", "--var", f"port={port}", *options)
    return Server([sys.executable, str(script)], port, s.work / f"server-{port}.log", env)


@pytest.fixture
def python_server(setup: McpSetup) -> Iterator[Server]:
    server = start_python_server(setup)
    try:
        yield server
    finally:
        server.stop()


def url(port: int) -> str:
    return f"https://127.0.0.1:{port}/mcp"


def test_rendered_python_client_lists_and_calls_the_rendered_servers_tools(setup: McpSetup, python_server: Server) -> None:
    client = render(setup.ca, "python-client", "alice", setup.work / "client.py", "--var", f"url={url(python_server.port)}")
    listed = run(sys.executable, client)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith("echo\t")
    assert "connected to srv" in listed.stderr
    called = run(sys.executable, client, "echo", "text=hello over mTLS")
    assert (called.returncode, called.stdout) == (0, "hello over mTLS\n"), called.stderr
    failed = run(sys.executable, client, "echo")  # a required argument missing: the tool fails
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert "text" in failed.stdout + failed.stderr


def test_rendered_python_server_refuses_no_certificate_and_a_revoked_one(setup: McpSetup, python_server: Server) -> None:
    anonymous = ssl.create_default_context(cafile=str(setup.ca.home / "ca.crt"))
    assert https_get(python_server.port, anonymous).status is None  # no HTTP without a certificate
    client = render(setup.ca, "python-client", "bob", setup.work / "bob.py", "--var", f"url={url(python_server.port)}")
    refused = run(sys.executable, client)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: the server closed the connection: it refused this client certificate")
    assert "Traceback" not in refused.stderr


def test_rendered_python_client_trusts_only_our_root(setup: McpSetup, tmp_path: Path) -> None:
    other = Cli(tmp_path / "other-home", setup.work)
    other.ok("init-ca", "--name", "Other", "--org", "Elsewhere")
    other.ok("issue", "server", "srv", "--ip", "127.0.0.1", "--out", str(setup.work / "other-srv"))
    port = _free_port()
    script = render(other, "python-server", "srv", setup.work / "other.py", "--var", "bind=127.0.0.1", "--var", f"port={port}")
    server = Server([sys.executable, str(script)], port, setup.work / "other.log")
    try:
        client = render(setup.ca, "python-client", "alice", setup.work / "c.py", "--var", f"url={url(port)}")
        result = run(sys.executable, client)
        assert result.returncode == 1 and result.stdout == ""
        assert "the server's certificate is not trusted by" in result.stderr
    finally:
        server.stop()


def test_curl_smoke_test_initializes_and_fails_for_a_revoked_client(setup: McpSetup, python_server: Server) -> None:
    alice = render(setup.ca, "curl", "alice", setup.work / "curl.sh", "--var", f"url={url(python_server.port)}")
    answer = run("sh", alice)
    assert answer.returncode == 0, answer.stderr
    data = next(line for line in answer.stdout.splitlines() if line.startswith("data: "))
    assert json.loads(data.removeprefix("data: "))["result"]["serverInfo"]["name"] == "srv"
    bob = render(setup.ca, "curl", "bob", setup.work / "bob.sh", "--var", f"url={url(python_server.port)}")
    refused = run("sh", bob)
    assert refused.returncode != 0 and "serverInfo" not in refused.stdout


def test_node_client_lists_and_calls_tools_and_is_refused_when_revoked(setup: McpSetup, python_server: Server) -> None:
    if shutil.which("node") is None or not NODE_MODULES.is_dir():
        pytest.skip("needs node and tests/node/node_modules (scripts/test runs npm ci there)")
    # Node resolves packages from the script's folder upwards: render beside tests/node.
    folder = NODE_MODULES.parent
    client = render(setup.ca, "node-client", "alice", folder / f"alice-{os.getpid()}.mjs",
                    "--var", f"url={url(python_server.port)}")
    bob = render(setup.ca, "node-client", "bob", folder / f"bob-{os.getpid()}.mjs",
                 "--var", f"url={url(python_server.port)}")
    try:
        listed = run("node", client)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith("echo\t")
        called = run("node", client, "echo", "text=from node")
        assert (called.returncode, called.stdout) == (0, "from node\n"), called.stderr
        refused = run("node", bob)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "refused this client certificate" in refused.stderr
    finally:
        client.unlink()
        bob.unlink()


# The server-env entry runs a stdio server behind mcp-pki gateway: tests/test_gateway_snippets.py
# launches it as written.


# --- nginx in front of a plain-HTTP MCP server ---------------------------------------------------

PLAIN_MCP_SERVER = '''
import json, sys
import uvicorn
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("plain-upstream")

@mcp.tool()
def echo(text: str) -> str:
    return text

inner = mcp.streamable_http_app()
seen = open(sys.argv[2], "a", buffering=1)

async def app(scope, receive, send):
    # Record the identity headers of every request, as the MCP server receives them.
    if scope["type"] == "http":
        headers = [[k.decode(), v.decode()] for k, v in scope["headers"] if k.lower().startswith(b"x-client")]
        seen.write(json.dumps(headers) + "\\n")
    await inner(scope, receive, send)

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
'''


def _seen(log: Path) -> list[list[list[str]]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _forged_initialize(port: int, folder: Path, ca_file: Path) -> int:
    """POST an MCP initialize through nginx with a valid certificate and forged identity headers."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "forger", "version": "1"}}})
    request = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\nX-Client-DN: CN=admin,O=Example\r\n"
        f"X-Client-Verify: SUCCESS\r\nx-client-serial: 01\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n{body}"
    ).encode()
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(folder / "tls.crt"), str(folder / "tls.key"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        tls.sendall(request)
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
    return int(data.split()[1])


def test_rendered_nginx_fronts_a_plain_mcp_server_with_verified_identity(setup: McpSetup, tmp_path: Path) -> None:
    if not os.access(NGINX, os.X_OK):
        pytest.skip(f"{NGINX} is absent: .ci/run installs Debian's nginx package")
    ca = setup.ca
    upstream_port, seen = _free_port(), tmp_path / "seen.jsonl"
    (tmp_path / "plain.py").write_text(PLAIN_MCP_SERVER)
    upstream = Server([sys.executable, str(tmp_path / "plain.py"), str(upstream_port), str(seen)],
                      upstream_port, tmp_path / "plain.log")
    shutil.copy(ca.home / "crl.pem", setup.srv / "crl.pem")  # as the snippet's header asks
    nginx = RenderedNginx(tmp_path / "nginx", ca, setup.srv, upstream_port)
    try:
        nginx.start()
        client = render(ca, "python-client", "alice", setup.work / "c.py", "--var", f"url={url(nginx.port)}")
        listed = run(sys.executable, client)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith("echo\t")
        alice_serial = json.loads(ca.ok("show", "alice", "--json").stdout)["serial"]
        for headers in _seen(seen):
            identity = dict(headers)
            assert identity["x-client-dn"] == "CN=alice,O=Example"
            assert identity["x-client-verify"] == "SUCCESS"
            assert identity["x-client-serial"].lower().lstrip("0") == alice_serial
            assert len(identity["x-client-fingerprint"]) == 40  # nginx's SHA-1 of the certificate

        before = len(_seen(seen))
        assert _forged_initialize(nginx.port, setup.alice, ca.home / "ca.crt") == 200
        forged = _seen(seen)[before:]
        assert len(forged) == 1
        names = [name for name, _ in forged[0]]
        assert sorted(names) == sorted(set(names)), forged  # one of each: the client's copies are gone
        assert dict(forged[0])["x-client-dn"] == "CN=alice,O=Example"
        assert dict(forged[0])["x-client-serial"] != "01"

        anonymous = ssl.create_default_context(cafile=str(ca.home / "ca.crt"))
        refused = https_get(nginx.port, anonymous)
        assert refused.status == 400 and "No required SSL certificate was sent" in refused.body, refused
        before = len(_seen(seen))
        bob = render(ca, "python-client", "bob", setup.work / "b.py", "--var", f"url={url(nginx.port)}")
        bob_result = run(sys.executable, bob)
        assert bob_result.returncode == 1
        assert bob_result.stderr == "error: the server answered HTTP 400 The SSL certificate error\n"

        ca.ok("offboard", "alice")
        shutil.copy(ca.home / "crl.pem", setup.srv / "crl.pem")
        nginx.reload()
        assert run(sys.executable, client).returncode == 1
        assert len(_seen(seen)) == before  # neither refused client reached the MCP server
    finally:
        nginx.stop()
        upstream.stop()
