"""bridge: an MCP host's stdio session relayed over mutual TLS to a real MCP server.

Real processes over loopback: MCP servers (the SDK's MCPServer under uvicorn, client
certificates required), the ``mcp-pki`` console script, and the MCP Python SDK's stdio client
as the host. Servers bind 127.0.0.1 only, every wait is bounded, every server is killed in
teardown.
"""

import json
import os
import queue
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self, TextIO

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types.version import LATEST_MODERN_VERSION

from tests.conftest import PASSPHRASE, VENV_BIN, Cli, assert_clean_error, listening
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
# The exact command for the interpreter the console script runs on (its shebang: ours).
SDK_MISSING = f"Error: mcp-pki bridge needs the MCP Python SDK: {sys.executable} -m pip install 'mcp>=2.3,<3'"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pipe", "version": "1"}}}

# The remote MCP server: a tool, a tool that logs to the client (a notification), a tool
# that asks the client (a server-initiated request), a tool that reports the headers its
# request came with, a slow tool, a tool that notifies the client after it has answered
# (outside any request: on the GET stream), and a resource.
SERVER_SCRIPT = '''
import asyncio
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


@server.tool()
async def slow(seconds: float, ctx: Context) -> str:
    """Says it started (so the client knows the server has the request), then takes its time."""
    await ctx.info("sleeping")
    await asyncio.sleep(seconds)
    return "done"


later = set()


@server.tool()
async def announce(ctx: Context) -> str:
    """Answers at once; half a second later tells the client its tools changed."""
    session = ctx.session

    async def notify() -> None:
        await asyncio.sleep(0.5)
        await session.send_tool_list_changed()

    task = asyncio.get_running_loop().create_task(notify())
    later.add(task)
    task.add_done_callback(later.discard)
    return "announced"


@server.resource("test://greeting")
def greeting() -> str:
    return "hello through the bridge"


app = server.streamable_http_app(
    transport_security=TransportSecuritySettings(allowed_hosts=[allowed_host]),
)
uvicorn.run(app, host="127.0.0.1", port=int(port), ssl_certfile=cert, ssl_keyfile=key,
            ssl_ca_certs=ca, ssl_cert_reqs=ssl.CERT_REQUIRED, log_level="warning")
'''

# A small HTTP server in front of which the bridge must fail or cope: 401 or 403 at the paths
# of those names; at any other path a session-less MCP endpoint that answers `initialize`,
# then cuts every other answer short (invalid JSON).
FAKE_SERVER_SCRIPT = '''
import json
import ssl
import sys

import uvicorn

port, cert, key, ca = sys.argv[1:5]


async def app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] in ("/401", "/403"):
        return await answer(send, int(scope["path"][1:]), b"{}")
    if scope["method"] != "POST":
        return await answer(send, 405, b"")
    request = json.loads(body)
    if "id" not in request:
        return await answer(send, 202, b"")
    if request["method"] == "initialize":
        result = {"protocolVersion": request["params"]["protocolVersion"], "capabilities": {},
                  "serverInfo": {"name": "fake", "version": "1"}}
        return await answer(send, 200, json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode())
    return await answer(send, 200, b\'{"jsonrpc": "2.0", "id": %d, "result": {"conte\' % request["id"])


async def answer(send, status, body):
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


uvicorn.run(app, host="127.0.0.1", port=int(port), ssl_certfile=cert, ssl_keyfile=key, ssl_ca_certs=ca,
            ssl_cert_reqs=ssl.CERT_REQUIRED, lifespan="off", log_level="warning")
'''


# --------------------------------------------------------------------------- helpers


class McpServer:
    """One MCP server process requiring client certificates issued by `ca_file`."""

    def __init__(self, folder: Path, srv: Path, ca_file: Path, allowed_host: str = "127.0.0.1:*",
                 script: str = SERVER_SCRIPT) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.script = folder / "mcp_server.py"
        self.script.write_text(script)
        self.log = folder / "server.log"
        self.srv, self.ca_file, self.allowed_host = srv, ca_file, allowed_host
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mcp"

    def start(self, port: int | None = None) -> None:
        """On `port`, else on a free one."""
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = port or _free_port()
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

    def restart(self) -> None:
        """A new server process on the same port: it knows none of the old sessions."""
        self.stop()
        self.start(self.port)

    def _listening(self) -> bool:
        assert self.process is not None
        return listening(self.port, self.process)

    def kill(self) -> None:
        """Dies at once, as in a crash: no graceful shutdown closes its streams."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # our unreaped child: its group is ours
            self.process.wait(5)
        self.process = None

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
def serve(folder: Path, srv: Path, ca_file: Path, allowed_host: str = "127.0.0.1:*",
          script: str = SERVER_SCRIPT) -> Iterator[McpServer]:
    server = McpServer(folder, srv, ca_file, allowed_host, script)
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


class PipedBridge:
    """The bridge as a host runs it, driven a line at a time: stdin and stdout are pipes."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.process = subprocess.Popen(
            [MCP_PKI, "bridge", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=cli.cwd, env=bridge_env(cli.home),
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def send(self, *messages: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("".join(json.dumps(m) + "\n" for m in messages))
        self.process.stdin.flush()

    def receive(self, timeout: float = 30) -> dict[str, Any]:
        try:
            message: dict[str, Any] = json.loads(self._lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"no message from the bridge within {timeout} s") from None
        return message

    def receive_until(self, condition: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """The first message that meets `condition`, skipping others (notifications)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if condition(message := self.receive(left)):
                return message
        raise AssertionError(f"no such message from the bridge within {timeout} s")

    def exit_code(self, timeout: float) -> int:
        """Waits for the exit: the host still holds stdin open, the bridge must leave on its own."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the bridge still runs after {timeout} s") from None

    def stderr_lines(self) -> list[str]:
        assert self.process.stderr is not None and self.process.poll() is not None
        return self.process.stderr.read().splitlines()

    def unread(self) -> list[str]:
        """What the bridge wrote to stdout that no test has read (once it has exited)."""
        self._reader.join(TIMEOUT)
        return [self._lines.get() for _ in range(self._lines.qsize())]

    def assert_failed_with(self, prefix: str) -> None:
        """The bridge exited 1 by itself, its last line says why, and it left nothing unsaid."""
        assert self.exit_code(TIMEOUT * 3) == 1
        lines = self.stderr_lines()
        assert lines[-1].startswith(prefix), lines
        assert not any("Traceback" in line for line in lines)
        assert self.unread() == []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)


def call(message_id: int, tool: str, **arguments: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": message_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def bridge_parameters(cli: Cli, url: str, *args: str) -> StdioServerParameters:
    """How an MCP host's config launches the bridge."""
    return StdioServerParameters(command=MCP_PKI, args=["bridge", url, *args],
                                 env={"MCP_PKI_HOME": str(cli.home), "PATH": os.environ["PATH"]})


def text_of(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent), content
    return content.text


def issue_expired_client(cli: Cli, name: str) -> Path:
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
    return cli.cwd / name


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
                assert {t.name for t in tools.tools} == {"echo", "shout", "ask", "whoami", "slow", "announce"}
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


def test_a_notification_outside_any_request_reaches_the_host(pki: Cli, server: McpServer, tmp_path: Path) -> None:
    """Sent after the tool has answered, with no request in flight: it comes on the GET stream."""
    issue_client(pki, "nora")
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async def host(errlog: TextIO) -> None:
        with anyio.fail_after(SESSION_TIMEOUT):
            async with stdio_client(bridge_parameters(pki, server.url, "--as", "nora"), errlog=errlog) as (
                read, write,
            ), ClientSession(read, write, message_handler=on_message) as session:
                await session.initialize()
                assert text_of(await session.call_tool("announce", {})) == "announced"
                assert not changed.is_set()
                with anyio.fail_after(TIMEOUT):
                    await changed.wait()

    with open(tmp_path / "bridge.stderr", "w") as errlog:
        anyio.run(host, errlog)


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


def test_an_expired_certificate_given_as_files_is_refused(pki: Cli, server: McpServer) -> None:
    otto = issue_expired_client(pki, "otto")
    result = run_bridge(pki, server.url, "--cert", str(otto / "tls.crt"), "--key", str(otto / "tls.key"))
    assert_refused(result, "otto", "expired", "renew it")


def test_a_server_certificate_for_another_name_is_named(pki: Cli, tmp_path: Path) -> None:
    """Our CA issued it, so it is trusted: the name is what is wrong, and the error says so."""
    issue_client(pki, "quinn")
    pki.ok("issue", "server", "elsewhere", "--dns", "elsewhere.example.com")
    with serve(tmp_path / "elsewhere", pki.cwd / "elsewhere", pki.home / "ca.crt") as elsewhere:
        result = run_bridge(pki, elsewhere.url, "--as", "quinn")
    assert_refused(result, "not valid for 127.0.0.1 (hostname mismatch)", "--ip 127.0.0.1")
    assert "not trusted" not in result.stderr


def test_a_wrong_path_is_named(pki: Cli, server: McpServer) -> None:
    issue_client(pki, "sam")
    url = server.url.replace("/mcp", "/nothing-here")
    assert_refused(run_bridge(pki, url, "--as", "sam"), f"no MCP endpoint at {url} (HTTP 404): check the path")


@pytest.mark.parametrize("status", [401, 403])
def test_a_server_that_wants_other_authentication_is_named(pki: Cli, tmp_path: Path, status: int) -> None:
    issue_client(pki, f"tess{status}")
    with serve(tmp_path / "fake", pki.cwd / "srv", pki.home / "ca.crt", script=FAKE_SERVER_SCRIPT) as fake:
        url = f"https://127.0.0.1:{fake.port}/{status}"
        assert_refused(run_bridge(pki, url, "--as", f"tess{status}"),
                       f"the server at {url} wants other authentication (HTTP {status})")


def test_the_ca_beside_the_certificate_wins_over_the_homes(pki: Cli, other_pki: Cli, server: McpServer) -> None:
    """A teammate's home holds the root of another CA (their own): the ca.crt that came with
    the certificate decides whom the bridge trusts."""
    uma = issue_client(pki, "uma")
    result = run_bridge(pki, server.url, "--cert", str(uma / "tls.crt"), "--key", str(uma / "tls.key"),
                        env=bridge_env(other_pki.home))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"]["serverInfo"]["name"] == "bridge-test-server"
    # Nor does that home's crl.pem, which cannot speak for our CA: the bridge says so.
    crl = other_pki.home / "crl.pem"
    assert result.stderr.splitlines()[1:] == [
        f"mcp-pki bridge: warning: {crl} holds no CRL of CN=Bridge Issuing CA,O=Example; revocation is left to the server"
    ]


def test_without_a_crl_the_bridge_says_that_it_cannot_check_revocation(
    pki: Cli, server: McpServer, tmp_path: Path
) -> None:
    vic = issue_client(pki, "vic")
    home = tmp_path / "teammate-home"  # no CA, no inventory, no crl.pem: only the bundle
    home.mkdir()
    result = run_bridge(pki, server.url, "--cert", str(vic / "tls.crt"), "--key", str(vic / "tls.key"),
                        env=bridge_env(home))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[1:] == [f"mcp-pki bridge: warning: no CRL at {home / 'crl.pem'}; revocation is left to the server"]


def test_the_sdks_tracebacks_stay_out_of_the_hosts_log(pki: Cli, tmp_path: Path) -> None:
    """An answer cut short: the SDK answers the host with a parse error and logs the whole
    traceback, which a host shows as a crash. Without -v: one line."""
    issue_client(pki, "walt")
    messages = [INITIALIZE, INITIALIZED, call(2, "echo", text="x")]
    with serve(tmp_path / "fake", pki.cwd / "srv", pki.home / "ca.crt", script=FAKE_SERVER_SCRIPT) as fake:
        result = subprocess.run(
            [MCP_PKI, "bridge", fake.url, "--as", "walt"], input="".join(json.dumps(m) + "\n" for m in messages),
            capture_output=True, text=True, timeout=60, cwd=pki.cwd, env=bridge_env(pki.home), check=False,
        )
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["id"] for a in answers] == [1, 2] and answers[1]["error"]["code"] == -32700, answers
    assert "Traceback" not in result.stderr
    logged = result.stderr.splitlines()[1:]
    assert len(logged) == 1 and "Error parsing JSON response" in logged[0], logged


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
                       "not trusted", "unable to get local issuer certificate", str(pki.cwd / "ivan" / "ca.crt"))


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


# --------------------------------------------------------------------------- 3. the server side goes away


def test_a_restarted_server_ends_the_bridge_after_answering_the_request(pki: Cli, tmp_path: Path) -> None:
    """The new server process does not know our session: every request would fail. The host
    gets the server's own answer, then the bridge exits 1, which makes the host start it
    again (with a new session). No `notifications/initialized`: no GET stream, so the request
    is what meets the 404."""
    issue_client(pki, "ruth")
    with serve(tmp_path / "restarting", pki.cwd / "srv", pki.home / "ca.crt") as restarting, \
            PipedBridge(pki, restarting.url, "--as", "ruth") as bridge:
        bridge.send(INITIALIZE)
        assert bridge.receive()["id"] == 1
        restarting.restart()
        bridge.send(call(2, "echo", text="x"))
        answer = bridge.receive()
        assert answer["id"] == 2 and answer["error"]["message"] == "Session not found", answer
        bridge.assert_failed_with(f"Error: the server at 127.0.0.1:{restarting.port} ended the session")


def test_a_server_that_dies_while_the_host_is_silent_ends_the_bridge(pki: Cli, tmp_path: Path) -> None:
    """The host still holds stdin open and sends nothing more: the bridge leaves by itself."""
    issue_client(pki, "lena")
    with serve(tmp_path / "doomed", pki.cwd / "srv", pki.home / "ca.crt") as doomed, \
            PipedBridge(pki, doomed.url, "--as", "lena") as bridge:
        bridge.send(INITIALIZE)
        assert bridge.receive()["id"] == 1
        # Once `ping` is answered, the notification before it has been posted: the GET stream opens.
        bridge.send(INITIALIZED, {"jsonrpc": "2.0", "id": 2, "method": "ping"})
        assert bridge.receive()["id"] == 2
        doomed.kill()
        bridge.assert_failed_with(f"Error: lost the connection to 127.0.0.1:{doomed.port}")


def test_a_request_in_flight_when_the_server_dies_gets_an_error(pki: Cli, tmp_path: Path) -> None:
    issue_client(pki, "mona")
    with serve(tmp_path / "doomed", pki.cwd / "srv", pki.home / "ca.crt") as doomed, \
            PipedBridge(pki, doomed.url, "--as", "mona") as bridge:
        bridge.send(INITIALIZE)
        assert bridge.receive()["id"] == 1
        bridge.send(INITIALIZED, call(2, "slow", seconds=60))
        log = bridge.receive_until(lambda m: m.get("method") == "notifications/message")
        assert log["params"]["data"] == "sleeping"  # the server has the request
        doomed.kill()
        answer = bridge.receive_until(lambda m: "id" in m, timeout=TIMEOUT * 3)
        assert answer["id"] == 2 and answer["error"]["code"] == -32000, answer
        bridge.assert_failed_with(f"Error: lost the connection to 127.0.0.1:{doomed.port}")


def test_answers_still_missing_when_stdin_closes_are_reported(pki: Cli, server: McpServer) -> None:
    """The bridge drains for 1 s only (the SDK's stdio client sends SIGTERM 2 s after closing
    stdin): what is left gets an error answer, a count on stderr and exit 1, not silence."""
    issue_client(pki, "paul")
    messages = [INITIALIZE, INITIALIZED, call(2, "slow", seconds=3)]
    started = time.monotonic()
    result = subprocess.run(
        [MCP_PKI, "bridge", server.url, "--as", "paul"], input="".join(json.dumps(m) + "\n" for m in messages),
        capture_output=True, text=True, timeout=60, cwd=pki.cwd, env=bridge_env(pki.home), check=False,
    )
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 10
    answers = [m for m in map(json.loads, result.stdout.splitlines()) if "id" in m]
    assert [a["id"] for a in answers] == [1, 2], answers
    assert "stdin closed" in answers[1]["error"]["message"]
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("Error: stdin closed with 1 request(s) still unanswered"), lines
    assert "tools/call id 2" in lines[-1]


def test_without_the_sdk_the_bridge_says_what_to_install(pki: Cli, tmp_path: Path) -> None:
    shim = tmp_path / "no-sdk" / "mcp"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('the MCP SDK is not installed here')\n")
    result = run_bridge(pki, "https://127.0.0.1:1/mcp", "--as", "alice",
                        env=bridge_env(pki.home, PYTHONPATH=str(shim.parent)))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == SDK_MISSING


# --------------------------------------------------------------------------- 4. arguments and the inventory


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
    assert "--as REF" in result.stdout and "mcp>=2.3,<3" in result.stdout and "mcp-pki[bridge]" not in result.stdout
