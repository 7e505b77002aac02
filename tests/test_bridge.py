"""bridge: an MCP host's stdio session relayed over mutual TLS to a real MCP server.

Real processes over loopback: MCP servers (the SDK's MCPServer under uvicorn, client
certificates required), the ``mcp-pki`` console script, and the MCP Python SDK's stdio client
as the host. Servers bind 127.0.0.1 only, every wait is bounded, every server is killed in
teardown.
"""

import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types.version import LATEST_MODERN_VERSION

from tests.conftest import PASSPHRASE, VENV_BIN, Cli, assert_clean_error
from tests.test_tls_revocation import (
    NGINX,
    SERVER_NAME,
    TIMEOUT,
    Nginx,
    OneShotServer,
    _free_port,
    issue_client,
    issue_server,
    server_context,
)

MCP_PKI = str(VENV_BIN / "mcp-pki")
SESSION_TIMEOUT = 60.0  # seconds: a whole SDK session, start-up included
SDK_MISSING = "Error: mcp-pki bridge needs the MCP Python SDK: pip install 'mcp-pki[bridge]'"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pipe", "version": "1"}}}

# The remote MCP server: a tool, a tool that logs to the client (a notification), a tool
# that asks the client (a server-initiated request), a tool that reports the headers its
# request came with, and a resource.
SERVER_SCRIPT = '''
import json
import ssl
import sys

import uvicorn
from pydantic import BaseModel

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

port, cert, key, ca, allowed_host = sys.argv[1:6]
server = MCPServer("bridge-test-server")


@server.tool()
def echo(text: str) -> str:
    """Returns its argument."""
    return text


@server.tool()
async def shout(text: str, ctx: Context) -> str:
    """Logs a message to the client, then returns its argument in capitals."""
    await ctx.info(f"shouting {text}")
    return text.upper()


class Colour(BaseModel):
    colour: str


@server.tool()
async def ask(ctx: Context) -> str:
    """Asks the client a question: a server-initiated request."""
    answer = await ctx.elicit("favourite colour?", Colour)
    return answer.data.colour if answer.action == "accept" and answer.data else answer.action


@server.tool()
def whoami(ctx: Context) -> str:
    """The session and protocol version headers this request arrived with."""
    headers = ctx.headers or {}
    return json.dumps({"session": headers.get("mcp-session-id"),
                       "version": headers.get("mcp-protocol-version")})


@server.resource("test://greeting")
def greeting() -> str:
    return "hello through the bridge"


app = server.streamable_http_app(
    transport_security=TransportSecuritySettings(allowed_hosts=[allowed_host]),
)
uvicorn.run(app, host="127.0.0.1", port=int(port), ssl_certfile=cert, ssl_keyfile=key,
            ssl_ca_certs=ca, ssl_cert_reqs=ssl.CERT_REQUIRED, log_level="warning")
'''


# --------------------------------------------------------------------------- helpers


class McpServer:
    """One MCP server process requiring client certificates issued by `ca_file`."""

    def __init__(self, folder: Path, srv: Path, ca_file: Path, allowed_host: str = "127.0.0.1:*") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.script = folder / "mcp_server.py"
        self.script.write_text(SERVER_SCRIPT)
        self.log = folder / "server.log"
        self.srv, self.ca_file, self.allowed_host = srv, ca_file, allowed_host
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = _free_port()
            with open(self.log, "ab") as sink:
                self.process = subprocess.Popen(
                    [sys.executable, str(self.script), str(self.port), str(self.srv / "tls.crt"),
                     str(self.srv / "tls.key"), str(self.ca_file), self.allowed_host],
                    stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True,
                )
            if self._listening():
                return
            self.stop()
            if "address already in use" not in self.log.read_text(errors="replace").lower():
                break
        raise AssertionError(f"the MCP server did not start:\n{self.log.read_text(errors='replace')}")

    def _listening(self) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # our unreaped child: its group is ours
                process.wait(5)


@contextmanager
def serve(folder: Path, srv: Path, ca_file: Path, allowed_host: str = "127.0.0.1:*") -> Iterator[McpServer]:
    server = McpServer(folder, srv, ca_file, allowed_host)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def new_ca(folder: Path, name: str) -> Cli:
    cli = Cli(folder / "home", folder / "work")
    cli.cwd.mkdir(parents=True)
    cli.ok("init-ca", "--name", name, "--org", "Example")
    return cli


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """One CA and its server certificate for the module (each test issues its own clients)."""
    cli = new_ca(tmp_path_factory.mktemp("bridge-ca"), "Bridge")
    issue_server(cli)
    return cli


@pytest.fixture(scope="module")
def server(pki: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServer]:
    with serve(tmp_path_factory.mktemp("server"), pki.cwd / "srv", pki.home / "ca.crt") as running:
        yield running


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A second, unrelated CA: its server and its clients are strangers to ours."""
    cli = new_ca(tmp_path_factory.mktemp("other-ca"), "Other")
    issue_server(cli)
    return cli


def bridge_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_PKI_")}
    return {**env, "MCP_PKI_HOME": str(home), **extra}


def run_bridge(cli: Cli, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script as a host starts it, given an `initialize` that must go nowhere."""
    return subprocess.run(
        [MCP_PKI, "bridge", *args], input=json.dumps(INITIALIZE) + "\n", capture_output=True, text=True,
        timeout=60, cwd=cli.cwd, env=env or bridge_env(cli.home), check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 1, nothing on stdout (it belongs to the protocol), one ``Error:`` line on stderr."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]


def bridge_parameters(cli: Cli, url: str, *args: str) -> StdioServerParameters:
    """How an MCP host's config launches the bridge."""
    return StdioServerParameters(command=MCP_PKI, args=["bridge", url, *args],
                                 env={"MCP_PKI_HOME": str(cli.home), "PATH": os.environ["PATH"]})


def text_of(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent), content
    return content.text


def issue_expired_client(cli: Cli, name: str) -> None:
    """A client certificate that expired an hour ago, through the service layer's clock."""
    from mcp_pki.pki.names import SubjectAltNames
    from mcp_pki.pki.profiles import CertificateKind
    from mcp_pki.services.home import resolve_home
    from mcp_pki.services.issuance import LeafRequest, OutputRequest, issue_leaf

    issue_leaf(
        resolve_home(str(cli.home), None),
        LeafRequest(kind=CertificateKind.CLIENT, name=name, sans=SubjectAltNames(), validity=timedelta(hours=1)),
        OutputRequest(cli.cwd / name), passphrase=lambda: PASSPHRASE.encode(),
        now=datetime.now(UTC) - timedelta(hours=2),
    )


# --------------------------------------------------------------------------- 1. sessions


def test_sdk_host_uses_the_remote_server_through_the_bridge(pki: Cli, server: McpServer, tmp_path: Path) -> None:
    issue_client(pki, "alice")
    logs: list[Any] = []
    questions: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async def on_elicit(_context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        questions.append(params.message)
        return types.ElicitResult(action="accept", content={"colour": "green"})

    errors = tmp_path / "bridge.stderr"

    async def host(errlog: TextIO) -> None:
        with anyio.fail_after(SESSION_TIMEOUT):
            parameters = bridge_parameters(pki, server.url, "--as", "alice")
            async with stdio_client(parameters, errlog=errlog) as (read, write), ClientSession(
                read, write, logging_callback=on_log, elicitation_callback=on_elicit,
            ) as session:
                init = await session.initialize()
                assert init.server_info.name == "bridge-test-server"  # the remote's own name
                tools = await session.list_tools()
                assert {t.name for t in tools.tools} == {"echo", "shout", "ask", "whoami"}
                assert text_of(await session.call_tool("echo", {"text": "through"})) == "through"
                assert text_of(await session.call_tool("shout", {"text": "hey"})) == "HEY"
                assert logs == ["shouting hey"]  # the notification the server sent on the way
                resource = await session.read_resource("test://greeting")
                content = resource.contents[0]
                assert isinstance(content, types.TextResourceContents)
                assert content.text == "hello through the bridge"
                assert text_of(await session.call_tool("ask", {})) == "green"
                assert questions == ["favourite colour?"]  # the server asked, the host answered
                # One session throughout, and the negotiated version on every request.
                first = json.loads(text_of(await session.call_tool("whoami", {})))
                second = json.loads(text_of(await session.call_tool("whoami", {})))
                assert first["session"] and first == second
                assert first["version"] == init.protocol_version

    with open(errors, "w") as errlog:  # the bridge's stderr, as a host keeps it in its logs
        anyio.run(host, errlog)
    lines = errors.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcp-pki bridge: relaying to"), lines
    assert "alice" in lines[0]


def test_a_2026_host_gets_the_routing_headers_it_needs(pki: Cli, server: McpServer, tmp_path: Path) -> None:
    """No handshake: each request carries its version in _meta, and streamable HTTP wants it
    mirrored in headers, which the bridge derives. Without them `auto` falls back to a
    handshake version."""
    issue_client(pki, "bea")
    logs: list[Any] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async def host(errlog: TextIO) -> None:
        with anyio.fail_after(SESSION_TIMEOUT):
            transport = stdio_client(bridge_parameters(pki, server.url, "--as", "bea"), errlog=errlog)
            async with Client(transport, mode="auto", log_level="info", logging_callback=on_log) as client:
                assert client.session.protocol_version == LATEST_MODERN_VERSION
                assert {t.name for t in (await client.list_tools()).tools} >= {"echo", "shout"}
                assert text_of(await client.call_tool("shout", {"text": "now"})) == "NOW"
                assert logs == ["shouting now"]
                resource = await client.read_resource("test://greeting")
                assert isinstance(resource.contents[0], types.TextResourceContents)
                headers = json.loads(text_of(await client.call_tool("whoami", {})))
                assert headers == {"session": None, "version": LATEST_MODERN_VERSION}

    with open(tmp_path / "bridge.stderr", "w") as errlog:
        anyio.run(host, errlog)


def test_piped_requests_are_answered_and_the_bridge_exits_0_when_stdin_closes(pki: Cli, server: McpServer) -> None:
    """A host that writes everything at once and closes stdin: the bridge holds messages until
    `initialize` is answered (the answer names the session), answers what is in flight,
    then exits 0."""
    issue_client(pki, "carol")
    messages = [
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}},
    ]
    started = time.monotonic()
    result = subprocess.run(
        [MCP_PKI, "bridge", server.url, "--as", "carol"], input="".join(json.dumps(m) + "\n" for m in messages),
        capture_output=True, text=True, timeout=60, cwd=pki.cwd, env=bridge_env(pki.home), check=False,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["id"] for a in answers] == [1, 2], answers
    assert answers[0]["result"]["serverInfo"]["name"] == "bridge-test-server"
    assert answers[1]["result"]["content"][0]["text"] == "x"
    assert "Error" not in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- 2. refusals before any traffic


def test_a_revoked_certificate_is_refused_by_the_inventory_and_by_the_crl(pki: Cli, server: McpServer) -> None:
    dave = issue_client(pki, "dave")
    pki.ok("revoke", "dave", "--reason", "key-compromise")
    assert_refused(run_bridge(pki, server.url, "--as", "dave"), "revoked", "key-compromise")
    # The same files without the inventory: the CRL in <home>/crl.pem says so too.
    files = run_bridge(pki, server.url, "--cert", str(dave / "tls.crt"), "--key", str(dave / "tls.key"))
    assert_refused(files, "revoked", "key-compromise", "crl.pem")


def test_an_expired_certificate_is_refused(pki: Cli, server: McpServer) -> None:
    issue_expired_client(pki, "erin")
    assert_refused(run_bridge(pki, server.url, "--as", "erin"), "erin", "expired")


def test_a_key_that_does_not_match_is_refused(pki: Cli, server: McpServer) -> None:
    frank, grace = issue_client(pki, "frank"), issue_client(pki, "grace")
    result = run_bridge(pki, server.url, "--cert", str(frank / "tls.crt"), "--key", str(grace / "tls.key"))
    assert_refused(result, "does not belong")


def test_a_missing_file_is_refused(pki: Cli, server: McpServer) -> None:
    hal = issue_client(pki, "hal")
    result = run_bridge(pki, server.url, "--cert", str(hal / "tls.crt"), "--key", str(hal / "nope.key"))
    assert_refused(result, "cannot read", "nope.key")


def test_a_server_certificate_from_another_ca_is_not_trusted(
    pki: Cli, other_pki: Cli, tmp_path: Path
) -> None:
    issue_client(pki, "ivan")
    with serve(tmp_path / "stranger", other_pki.cwd / "srv", other_pki.home / "ca.crt") as stranger:
        assert_refused(run_bridge(pki, stranger.url, "--as", "ivan"),
                       "not trusted", "unable to get local issuer certificate", str(pki.home / "ca.crt"))


def test_a_server_that_refuses_our_certificate_is_named(pki: Cli, other_pki: Cli, server: McpServer) -> None:
    """A client certificate of another CA passes every local check; our server closes the
    connection after the TLS 1.3 handshake, which the probe's first read turns into words."""
    mallory = issue_client(other_pki, "mallory")
    result = run_bridge(pki, server.url, "--cert", str(mallory / "tls.crt"), "--key", str(mallory / "tls.key"),
                        "--ca", str(pki.home / "ca.crt"))
    assert_refused(result, "refused our client certificate")


def test_an_nginx_front_that_refuses_our_certificate_is_named(ca: Cli, other_pki: Cli, tmp_path: Path) -> None:
    """nginx completes the handshake whatever the client certificate, then answers 400."""
    if not os.access(NGINX, os.X_OK):
        pytest.skip(f"{NGINX} is absent: .ci/run installs Debian's nginx package")
    mallory = issue_client(other_pki, "mallory-nginx")
    front = Nginx(tmp_path / "nginx", ca.home, issue_server(ca))
    try:
        front.start()
        result = run_bridge(ca, f"https://127.0.0.1:{front.port}/mcp", "--cert", str(mallory / "tls.crt"),
                            "--key", str(mallory / "tls.key"), "--ca", str(ca.home / "ca.crt"))
    finally:
        front.stop()
    assert_refused(result, "refused our client certificate (The SSL certificate error)")


def test_a_server_that_is_down_is_named(pki: Cli) -> None:
    issue_client(pki, "judy")
    port = _free_port()
    assert_refused(run_bridge(pki, f"https://127.0.0.1:{port}/mcp", "--as", "judy"),
                   f"cannot connect to 127.0.0.1:{port}: connection refused")


def test_a_server_that_does_not_accept_our_host_name_is_named(pki: Cli, tmp_path: Path) -> None:
    issue_client(pki, "kim")
    with serve(tmp_path / "strict", pki.cwd / "srv", pki.home / "ca.crt", f"{SERVER_NAME}:*") as strict:
        assert_refused(run_bridge(pki, strict.url, "--as", "kim"), "421", "allowed hosts")


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_the_probe_names_a_refusal_in_either_tls_version(ca: Cli, tls_version: ssl.TLSVersion) -> None:
    """TLS 1.2 refuses during the handshake, TLS 1.3 after it (on the first read): both read
    as a refusal of our certificate. Here a server that loads the CRL refuses a revoked client
    (the probe alone: the bridge's own checks would have stopped alice before)."""
    from mcp_pki.bridge import BridgeError
    from mcp_pki.bridge.credentials import ClientCredentials
    from mcp_pki.bridge.probe import client_context, parse_endpoint, probe

    srv, alice = issue_server(ca), issue_client(ca, "alice")
    ca.ok("revoke", "alice")
    server = OneShotServer(server_context(ca, srv, ssl.VERIFY_CRL_CHECK_LEAF, tls_version))
    context = client_context(ClientCredentials(alice / "tls.crt", alice / "tls.key", ca.home / "ca.crt"))
    with pytest.raises(BridgeError, match="refused our client certificate") as refused:
        probe(parse_endpoint(f"https://127.0.0.1:{server.port}/mcp"), context, trusted="ca.crt", timeout=TIMEOUT)
    outcome = server.result()
    assert isinstance(outcome, ssl.SSLCertVerificationError) and "revoked" in outcome.verify_message
    if tls_version is ssl.TLSVersion.TLSv1_2:
        assert "certificate revoked" in str(refused.value)


def test_losing_the_server_mid_session_ends_the_bridge_with_one_error(pki: Cli, tmp_path: Path) -> None:
    """The host still holds stdin open: the bridge must not wait for its next line to exit."""
    issue_client(pki, "lena")
    with serve(tmp_path / "doomed", pki.cwd / "srv", pki.home / "ca.crt") as doomed:
        bridge = subprocess.Popen(
            [MCP_PKI, "bridge", doomed.url, "--as", "lena"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=pki.cwd, env=bridge_env(pki.home),
        )
        try:
            assert bridge.stdin is not None and bridge.stdout is not None
            bridge.stdin.write(json.dumps(INITIALIZE) + "\n")
            bridge.stdin.flush()
            ready, _, _ = select.select([bridge.stdout], [], [], 30)
            assert ready, "no answer to initialize within 30 s"
            assert json.loads(bridge.stdout.readline())["id"] == 1
            doomed.stop()
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
            bridge.stdin.write(json.dumps(call) + "\n")
            bridge.stdin.flush()
            assert bridge.wait(TIMEOUT * 2) == 1
            assert bridge.stdout.read() == ""
            assert bridge.stderr is not None
            lines = bridge.stderr.read().splitlines()
            assert lines[-1].startswith(f"Error: lost the connection to 127.0.0.1:{doomed.port}"), lines
            assert not any("Traceback" in line for line in lines)
        finally:
            if bridge.poll() is None:
                bridge.kill()
                bridge.wait(TIMEOUT)


def test_without_the_sdk_the_bridge_says_what_to_install(pki: Cli, tmp_path: Path) -> None:
    shim = tmp_path / "no-sdk" / "mcp"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('the MCP SDK is not installed here')\n")
    result = run_bridge(pki, "https://127.0.0.1:1/mcp", "--as", "alice",
                        env=bridge_env(pki.home, PYTHONPATH=str(shim.parent)))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == SDK_MISSING


# --------------------------------------------------------------------------- 3. arguments and the inventory


def test_arguments_and_references_are_checked_first(ca: Cli) -> None:
    issue_server(ca)
    alice = issue_client(ca, "alice")
    url = "https://127.0.0.1:1/mcp"
    assert_clean_error(ca("bridge", "http://127.0.0.1:1/mcp", "--as", "alice"), "https only")
    assert_clean_error(ca("bridge", url), "--as REF, or --cert FILE --key FILE")
    assert_clean_error(ca("bridge", url, "--cert", str(alice / "tls.crt")), "--as REF, or --cert")
    assert_clean_error(ca("bridge", url, "--as", "alice", "--cert", str(alice / "tls.crt"),
                          "--key", str(alice / "tls.key")), "not both")
    assert_clean_error(ca("bridge", url, "--as", "srv"), "is a server certificate")
    assert_clean_error(ca("bridge", url, "--as", "nobody"), "no certificate matches")
    assert_clean_error(ca("bridge", url, "--as", "alice", "--ca", str(alice / "tls.key")), "cannot use ca file")


def test_as_ref_needs_the_files_issue_wrote(ca: Cli) -> None:
    import sqlite3

    alice = issue_client(ca, "alice")
    url = "https://127.0.0.1:1/mcp"
    (alice / "tls.key").rename(alice / "moved.key")
    assert_clean_error(ca("bridge", url, "--as", "alice"), "tls.key is missing")
    (alice / "moved.key").rename(alice / "tls.key")
    ca.ok("issue", "client", "alice", "--out", str(alice), "--force")  # a newer alice, same folder
    older = json.loads(ca.ok("list", "--json").stdout)[0]["serial"]
    assert_clean_error(ca("bridge", url, "--as", older), "holds another certificate")
    with sqlite3.connect(ca.db) as connection:  # as for certificates issued before 0002
        connection.execute("UPDATE certificates SET files_dir = NULL")
    assert_clean_error(ca("bridge", url, "--as", "alice"), "pass --cert FILE --key FILE")


def test_as_ref_without_an_inventory_points_to_the_files(mcp: Cli) -> None:
    """A teammate's machine: a home with ca.crt perhaps, but no inventory."""
    assert_clean_error(mcp("bridge", "https://127.0.0.1:1/mcp", "--as", "alice"),
                       "pass --cert FILE --key FILE instead")


def test_help_needs_neither_the_sdk_nor_the_heavy_libraries() -> None:
    code = (
        "import sys\nfrom mcp_pki.cli import cli\n"
        "try:\n    cli(['bridge', '--help'])\nexcept SystemExit as exc:\n    assert exc.code in (0, None)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'mcp', 'httpx2', 'anyio', 'sqlalchemy', 'cryptography'})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "--as REF" in result.stdout and "mcp-pki[bridge]" in result.stdout
