"""A session's upstream: its own process of the stdio server, or an HTTP MCP server.

Both look the same to the relay: `send` a JSON-RPC message, iterate `messages` until the
upstream is gone, then `why_gone` says why in one sentence for the client and the log.

The stdio process gets the MCP stdio transport's shutdown: stdin closed, a moment to exit,
then SIGTERM, then SIGKILL. Its stderr is passed on to ours, each line prefixed with the
session, and its last lines are kept to explain a crash.
"""

import collections
import functools
import logging
import math
import os
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import anyio
import anyio.abc
import httpx2
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import JSONRPCMessage, jsonrpc_message_adapter
from pydantic import ValidationError

from mcp_pki.bridge.routing import RoutingHeaders

logger = logging.getLogger("mcp_pki.gateway")

MAX_LINE = 64 * 1024 * 1024  # one JSON-RPC message on stdout; more is a broken server
STDERR_TAIL = 20  # lines kept to explain an exit
EXIT_WAIT, TERM_WAIT = 1.0, 2.0  # seconds after closing stdin, then after SIGTERM
HTTP_TIMEOUT, HTTP_READ_TIMEOUT = 30.0, 300.0
UPSTREAM_UNREACHABLE = -32000  # implementation-defined server error, as for a dead process
# What an answer's event stream may still hold after the answer, read to keep its connection.
DRAIN_SECONDS, DRAIN_BYTES = 0.25, 64 * 1024


class UpstreamFailed(Exception):
    """The upstream could not be started or reached: the session cannot go on."""


class Upstream(Protocol):
    async def send(self, message: JSONRPCMessage) -> None: ...

    def messages(self) -> AsyncIterator[JSONRPCMessage]: ...

    async def why_gone(self) -> str: ...


class StdioUpstream:
    def __init__(self, process: anyio.abc.Process, label: str) -> None:
        self.process, self.label = process, label
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._send_lock = anyio.Lock()

    async def send(self, message: JSONRPCMessage) -> None:
        data = message.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8") + b"\n"
        assert self.process.stdin is not None
        async with self._send_lock:
            try:
                await self.process.stdin.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the reader sees the end and says why

    async def messages(self) -> AsyncIterator[JSONRPCMessage]:
        assert self.process.stdout is not None
        stdout = BufferedByteReceiveStream(self.process.stdout)
        while True:
            try:
                line = await stdout.receive_until(b"\n", MAX_LINE)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except anyio.DelimiterNotFound:
                logger.error("%s: the server wrote a line longer than %d bytes: ending the session",
                             self.label, MAX_LINE)
                return
            if not line.strip():
                continue
            try:
                yield jsonrpc_message_adapter.validate_json(line, by_name=False)
            except ValidationError:
                logger.warning("%s: ignored a line from the server that is not JSON-RPC", self.label)

    async def why_gone(self) -> str:
        # Its stdout closes as it dies: the exit status follows in a moment.
        with anyio.move_on_after(EXIT_WAIT):
            await self.process.wait()
        code = self.process.returncode
        how = "exited" if code is None else (
            f"was killed by signal {-code}" if code < 0 else f"exited with code {code}")
        return f"the MCP server process {how}"

    async def drain_stderr(self) -> None:
        if self.process.stderr is None:
            return
        stream = BufferedByteReceiveStream(self.process.stderr)
        while True:
            try:
                raw = await stream.receive_until(b"\n", 64 * 1024)
            except anyio.DelimiterNotFound:
                raw = await stream.receive(64 * 1024)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            text = raw.decode("utf-8", errors="replace").rstrip()
            if text:
                self.stderr_tail.append(text)
                logger.debug("%s stderr: %s", self.label, text)

    async def stop(self) -> None:
        """Close stdin, then SIGTERM, then SIGKILL, each after a short wait."""
        process = self.process
        if process.stdin is not None:
            try:
                await process.stdin.aclose()
            except (anyio.BrokenResourceError, OSError):
                pass
        for wait, next_signal in ((EXIT_WAIT, signal.SIGTERM), (TERM_WAIT, signal.SIGKILL)):
            with anyio.move_on_after(wait):
                await process.wait()
                return
            try:
                os.killpg(process.pid, next_signal)  # its own group: helpers it started go too
            except (ProcessLookupError, PermissionError):
                process.send_signal(next_signal)
        with anyio.move_on_after(TERM_WAIT):
            await process.wait()


@asynccontextmanager
async def stdio_upstream(command: Sequence[str], label: str,
                         environ: Mapping[str, str] | None = None) -> AsyncIterator[StdioUpstream]:
    """A new process of `command`, stopped when the context ends (however it ends)."""
    try:
        process = await anyio.open_process(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, env=dict(environ) if environ is not None else None,
        )
    except OSError as exc:
        raise UpstreamFailed(f"cannot start {command[0]}: {(exc.strerror or str(exc)).lower()}") from None
    upstream = StdioUpstream(process, label)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(upstream.drain_stderr)
        try:
            yield upstream
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.stop()
            tasks.cancel_scope.cancel()


class HttpUpstream:
    """A streamable-HTTP MCP server, through the SDK's own client transport.

    Its messages come through a stream of our own, so that an unreachable server can end
    them (`lost`): the SDK's client keeps its session open however often a POST fails.
    """

    def __init__(self, incoming: "anyio.abc.ObjectReceiveStream[SessionMessage | Exception]",
                 write: "anyio.abc.ObjectSendStream[SessionMessage]", url: str, label: str) -> None:
        self._incoming, self._write, self.url, self.label = incoming, write, url, label
        self._routing = RoutingHeaders()
        self._reason = f"the MCP server at {url} closed the session"

    async def send(self, message: JSONRPCMessage) -> None:
        headers = self._routing.for_host_message(message)
        metadata = ClientMessageMetadata(headers=headers) if headers else None
        try:
            await self._write.send(SessionMessage(message, metadata=metadata))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def messages(self) -> AsyncIterator[JSONRPCMessage]:
        async for item in self._incoming:
            if isinstance(item, Exception):
                logger.warning("%s: from %s: %s", self.label, self.url, str(item) or type(item).__name__)
                continue
            self._routing.learn_from_server_message(item.message)
            yield item.message

    async def why_gone(self) -> str:
        return self._reason

    def lost(self, reason: str) -> None:
        """The server cannot be reached: the session's messages end, for `reason`."""
        self._reason = reason


class _KeepAliveTransport(httpx2.AsyncBaseTransport):
    """httpx's transport, keeping the connection of a POST whose answer came as an event stream.

    The SDK client stops reading such a stream at the answer's event and closes it, before the
    chunk that ends it; a connection with an unread response cannot be reused, so every call
    would open a new one (a TCP handshake, and the server's per-connection set-up). The rest
    of the stream follows the answer at once: reading it, within a short bound, returns the
    connection to the pool. Only POST answers are drained; a GET stream never ends by itself.
    """

    def __init__(self, url: str, on_unreachable: Callable[[str], None]) -> None:
        self._inner = httpx2.AsyncHTTPTransport(verify=_verifying_context(), trust_env=False)
        self._url, self._on_unreachable = url, on_unreachable

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except httpx2.TransportError as exc:
            if request.method != "POST":
                raise  # the SDK's GET and DELETE handle their own failures
            # A JSON-RPC error in an HTTP error status: the SDK client answers the request with
            # it, where an exception would end its whole transport with a traceback.
            why = _transport_failure(exc)
            if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
                reason = f"the MCP server at {self._url} cannot be reached ({why})"
                self._on_unreachable(reason)
            else:
                reason = f"the MCP server at {self._url} did not answer ({why})"
                logger.warning("%s", reason)
            return httpx2.Response(502, json={"jsonrpc": "2.0", "id": None, "error": {
                "code": UPSTREAM_UNREACHABLE, "message": reason}})
        if request.method == "POST":
            response.stream = _DrainedOnClose(response.stream)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _transport_failure(exc: httpx2.TransportError) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[0].lower() + text[1:]


@functools.cache
def _verifying_context() -> ssl.SSLContext:
    """The system's trust store for an https upstream, loaded once rather than per session
    (loading it costs more than a call)."""
    return ssl.create_default_context()


class _DrainedOnClose(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._inner = inner
        self._parts = inner.__aiter__()
        self._ended = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._parts:
            yield part
        self._ended = True

    async def aclose(self) -> None:
        try:
            if not self._ended:
                with anyio.move_on_after(DRAIN_SECONDS):
                    read = 0
                    async for part in self._parts:
                        read += len(part)
                        if read > DRAIN_BYTES:
                            break  # more than an answer's tail: let the connection go
        except httpx2.TransportError as exc:  # a failed drain only costs the connection
            logger.debug("the rest of an answer from the upstream could not be read: %s", exc)
        finally:
            await self._inner.aclose()


@asynccontextmanager
async def http_upstream(url: str, headers: Mapping[str, str], label: str) -> AsyncIterator[HttpUpstream]:
    """A session with the HTTP server, carrying the verified identity in `headers` on every
    request; the client's own headers never reach it (only message bodies are relayed)."""
    incoming, messages = anyio.create_memory_object_stream[SessionMessage | Exception](math.inf)
    upstream: HttpUpstream | None = None

    def unreachable(reason: str) -> None:
        if upstream is not None:
            upstream.lost(reason)
        incoming.close()  # the relay sees the end, answers what waits and ends the session

    client = httpx2.AsyncClient(
        headers=dict(headers), timeout=httpx2.Timeout(HTTP_TIMEOUT, read=HTTP_READ_TIMEOUT), trust_env=False,
        transport=_KeepAliveTransport(url, unreachable),
    )
    async with client, streamable_http_client(url, http_client=client) as (read, write), messages, \
            anyio.create_task_group() as tasks:
        async def pump() -> None:
            with incoming:
                try:
                    async for item in read:
                        await incoming.send(item)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # closed by `unreachable`, or the session is over

        tasks.start_soon(pump)
        upstream = HttpUpstream(messages, write, url, label)  # type: ignore[arg-type]
        try:
            yield upstream
        finally:
            tasks.cancel_scope.cancel()
