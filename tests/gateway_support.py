"""What the gateway tests share: a CA with a server certificate, a gateway process, and MCP
clients over mutual TLS (the SDK's own) and over stdio.

Everything is real: the ``mcp-pki`` console script as a subprocess on a free loopback port,
the SDK server in tests/mcp_servers/toolbox.py as its upstream, the SDK client with a TLS
context holding an issued client certificate. Every wait is bounded; every process is
stopped in teardown.
"""

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Self

import httpx2
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import VENV_BIN, Cli, listening

MCP_PKI = str(VENV_BIN / "mcp-pki")
TOOLBOX = str(Path(__file__).parent / "mcp_servers" / "toolbox.py")
SERVER_NAME = "srv.example.com"
TIMEOUT = 10.0


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def new_ca(folder: Path, name: str) -> Cli:
    cli = Cli(folder / "home", folder / "work")
    cli.cwd.mkdir(parents=True)
    cli.ok("init-ca", "--name", name, "--org", "Example")
    cli.ok("issue", "server", "srv", "--dns", SERVER_NAME, "--ip", "127.0.0.1")
    return cli


def toolbox_env(side_effects: Path) -> dict[str, str]:
    return {**os.environ, "TOOLBOX_SIDE_EFFECTS": str(side_effects)}


class Gateway:
    """One ``mcp-pki gateway`` process on a free port of 127.0.0.1."""

    def __init__(self, cli: Cli, *args: str, command: list[str] | None = None, env: dict[str, str] | None = None,
                 log: Path, open_files: int | None = None) -> None:
        self.cli, self.args, self.log, self.open_files = cli, args, log, open_files
        self.command = [sys.executable, TOOLBOX] if command is None else command
        self.env = {**os.environ, "MCP_PKI_HOME": str(cli.home), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mcp"

    def start(self) -> Self:
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            argv = [MCP_PKI, "gateway", "--listen", f"127.0.0.1:{self.port}", *self.args]
            if self.open_files is not None:  # soft and hard: the gateway cannot raise it
                argv = ["prlimit", f"--nofile={self.open_files}:{self.open_files}", "--", *argv]
            if self.command:
                argv += ["--", *self.command]
            with open(self.log, "ab") as sink:
                self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                                env=self.env, start_new_session=True)
            if listening(self.port, self.process, timeout=30):
                return self
            self.process.wait(TIMEOUT)
            if "port is in use" not in self.stderr():
                break
        raise AssertionError(f"the gateway did not start:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


    def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(sig)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(TIMEOUT)
                raise AssertionError(f"the gateway did not stop within {timeout} s") from None
        return process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(TIMEOUT)


def client_context(cli: Cli, folder: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cli.home / "ca.crt"))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(str(folder / "tls.crt"), str(folder / "tls.key"))
    return context


@asynccontextmanager
async def mtls_session(cli: Cli, folder: Path, url: str, **callbacks: Any) -> AsyncIterator[ClientSession]:
    """An initialized SDK client session through the gateway, presenting `folder`'s certificate."""
    client = httpx2.AsyncClient(verify=client_context(cli, folder), timeout=httpx2.Timeout(TIMEOUT, read=60))
    async with client, streamable_http_client(url, http_client=client) as (read, write), \
            ClientSession(read, write, **callbacks) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def http_session(url: str, **callbacks: Any) -> AsyncIterator[ClientSession]:
    async with streamable_http_client(url) as (read, write), ClientSession(read, write, **callbacks) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def stdio_session(env: dict[str, str], **callbacks: Any) -> AsyncIterator[ClientSession]:
    """The toolbox over stdio, its stderr (a file: the SDK needs a descriptor) discarded."""
    parameters = StdioServerParameters(command=sys.executable, args=[TOOLBOX], env=env)
    errlog = open(os.devnull, "w")  # noqa: ASYNC230, SIM115 - opening /dev/null does not block
    try:
        async with stdio_client(parameters, errlog=errlog) as (read, write), \
                ClientSession(read, write, **callbacks) as session:
            await session.initialize()
            yield session
    finally:
        errlog.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> float:
    """Seconds it took for `condition` to hold."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def dump(result: Any) -> Any:
    """An SDK result as plain data, for comparing two paths to the same server."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


PROTOCOL_VERSION = "2025-06-18"


class RawClient:
    """MCP over one keep-alive HTTPS connection, by hand: what tests of a connection's fate
    need (the SDK's client pools and reconnects on its own)."""

    def __init__(self, cli: Cli, folder: Path | None, port: int, context: ssl.SSLContext | None = None) -> None:
        import http.client

        self.connection = http.client.HTTPSConnection(
            "127.0.0.1", port, context=context or client_context(cli, folder or Path()), timeout=TIMEOUT)
        self.session: str | None = None
        self._next_id = 0

    def post(self, message: dict[str, Any], session: str | None = None) -> tuple[int, list[dict[str, Any]], dict[str, str]]:
        """(status, the JSON-RPC messages of the answer, headers)."""
        import json

        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": PROTOCOL_VERSION}
        if session or self.session:
            headers["Mcp-Session-Id"] = session or self.session or ""
        self.connection.request("POST", "/mcp", json.dumps(message).encode(), headers)
        response = self.connection.getresponse()
        body = response.read().decode("utf-8", errors="replace")
        found = dict(response.getheaders())
        if found.get("content-type", "").startswith("text/event-stream"):
            messages = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:") and line[5:].strip()]
        else:
            messages = [json.loads(body)] if body.strip() else []
        return response.status, messages, found

    def request(self, method: str, params: dict[str, Any] | None = None) -> tuple[int, dict[str, Any] | None]:
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            message["params"] = params
        status, messages, _ = self.post(message)
        answer = next((m for m in messages if m.get("id") == self._next_id), None)
        return status, answer

    def initialize(self) -> dict[str, Any]:
        self._next_id += 1
        status, messages, headers = self.post({"jsonrpc": "2.0", "id": self._next_id, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
        assert status == 200, (status, messages)
        self.session = headers.get("mcp-session-id")
        assert self.session, headers
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return messages[-1]

    def call(self, tool: str, **arguments: Any) -> tuple[int, dict[str, Any] | None]:
        return self.request("tools/call", {"name": tool, "arguments": arguments})

    def delete(self) -> int:
        """End the session (DELETE); the status."""
        self.connection.request("DELETE", "/mcp", headers={"Mcp-Session-Id": self.session or "",
                                                           "MCP-Protocol-Version": PROTOCOL_VERSION})
        response = self.connection.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.connection.close()


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs. A zombie counts as gone: it only waits for its
    parent to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class CountingRelay:
    """A TCP relay on loopback in front of `port` that counts the connections it is given:
    how many connections a client opened, seen from outside it."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.target, self.accepted = port, 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                inbound, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            outbound = socket.create_connection(("127.0.0.1", self.target))
            for source, sink in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: Any, sink: Any) -> None:
        import socket

        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


@contextmanager
def toolbox_behind(mode: str, side_effects: Path) -> Iterator[tuple[list[str], list[str] | None]]:
    """The gateway's arguments for the toolbox as its upstream: a process per session over
    stdio (``"stdio"``), or one plain-HTTP server on loopback (``"upstream"``, --upstream).
    Yields (extra gateway arguments, the command after --, None for the toolbox itself)."""
    if mode == "stdio":
        yield [], None
        return
    port = free_port()
    process = subprocess.Popen([sys.executable, TOOLBOX, "--http", str(port)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **toolbox_env(side_effects)})
    try:
        assert listening(port, process), "the toolbox HTTP server did not start"
        yield ["--upstream", f"http://127.0.0.1:{port}/mcp"], []
    finally:
        process.terminate()
        process.wait(TIMEOUT)


MODES = ("stdio", "upstream")  # a stdio server behind the gateway, or an HTTP one
