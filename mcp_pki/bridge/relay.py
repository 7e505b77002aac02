"""The relay: JSON-RPC between the host (stdio) and the remote server (streamable HTTP).

Both ends are the MCP Python SDK's own transports, so framing, SSE streams, session ids,
resumption and redirects behave exactly as in the SDK's clients and servers. The bridge
moves `SessionMessage` objects between them, one task per direction, and adds only the
routing headers a message needs on HTTP (see `routing`).

When the server side is gone (down, or restarted and so without our session) the bridge
exits 1 instead of relaying errors forever: an MCP host restarts a stdio server only when
it exits. First it answers every request the host still waits for, so no call hangs.
"""

import logging
import os
import ssl
import sys
from io import TextIOWrapper
from typing import TYPE_CHECKING, TextIO

import anyio
import anyio.to_thread
import httpx2
from mcp.client.streamable_http import MCP_SESSION_ID, streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import (
    CONNECTION_CLOSED,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)

from mcp_pki.bridge import BridgeError, exception_leaves
from mcp_pki.bridge.probe import Endpoint
from mcp_pki.bridge.routing import RoutingHeaders

if TYPE_CHECKING:  # the SDK's stream protocols, for annotations only (a private module)
    from mcp.shared._stream_protocols import ReadStream, WriteStream

logger = logging.getLogger("mcp_pki.bridge")

# After the host closes stdin, answers still on their way get this long to arrive. The SDK's
# stdio client sends SIGTERM 2 s after closing stdin: stay well inside that, so that what is
# left unanswered is reported (and the exit code says so) rather than killed silently.
DRAIN_SECONDS = 1.0
# Once the server side is known to be gone, the SDK gets this long to hand over answers it
# still holds (the server's own "Session not found", an error for a response stream it lost)
# before the bridge answers the rest itself.
SETTLE_SECONDS = 1.0
# As the SDK's own HTTP client: 30 s to connect, write or wait for the pool; 300 s between
# reads, since a server may keep a stream open with nothing to say.
CONNECT_SECONDS, READ_SECONDS = 30.0, 300.0


class _StoppableStdin(anyio.AsyncFile[str]):
    """stdin that `stop` turns into end of input, even while a read waits for the host.

    The bridge must be able to leave while the host holds stdin open and says nothing.
    Ending the input, rather than cancelling `stdio_server`, lets its stdout writer finish
    and flush the last answers (the process ends with os._exit, which flushes nothing). The
    blocked read's thread is abandoned: nothing reads stdin afterwards.
    """

    def __init__(self, wrapped: TextIO) -> None:
        super().__init__(wrapped)
        self._stopped = False
        self._reading = anyio.CancelScope()

    async def readline(self) -> str:
        with anyio.CancelScope() as self._reading:
            if not self._stopped:
                return await anyio.to_thread.run_sync(self.wrapped.readline, abandon_on_cancel=True)
        return ""

    def stop(self) -> None:
        self._stopped = True
        self._reading.cancel()


class _Outstanding:
    """Host requests the server has not answered yet, by id, with their method."""

    def __init__(self) -> None:
        self._pending: dict[RequestId, tuple[str, anyio.Event]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def sent(self, request: JSONRPCRequest) -> None:
        self._pending[request.id] = (request.method, anyio.Event())

    def answered(self, message_id: RequestId | None) -> None:
        entry = self._pending.pop(message_id, None) if message_id is not None else None
        if entry is not None:
            entry[1].set()

    async def wait(self, message_id: RequestId) -> None:
        if (entry := self._pending.get(message_id)) is not None:
            await entry[1].wait()

    async def wait_all(self) -> None:
        for _method, event in list(self._pending.values()):
            await event.wait()

    def describe(self) -> str:
        return ", ".join(f"{method} id {message_id!r}" for message_id, (method, _) in self._pending.items())

    async def fail_all(self, host: "WriteStream[SessionMessage]", reason: str) -> None:
        """Answer each with an error: a host waits for every answer, and an error now beats a
        call that never returns. Best effort: the host may have stopped reading."""
        with anyio.move_on_after(CONNECT_SECONDS):
            for message_id in list(self._pending):
                error = ErrorData(code=CONNECTION_CLOSED, message=reason)
                try:
                    await host.send(SessionMessage(JSONRPCError(jsonrpc="2.0", id=message_id, error=error)))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return
                self.answered(message_id)


class _WatchedTransport(httpx2.AsyncBaseTransport):
    """The HTTP transport, watched for the two signs that the server side is gone for good.

    - A connection refused or timed out: the server is down.
    - HTTP 404 to a request carrying our ``Mcp-Session-Id``: the spec's way of saying the
      session is over (a restarted server has forgotten it); every later request would fail.

    The SDK reopens its GET stream a second after the server drops it, so either sign shows
    within seconds even while the host is silent, at no cost while all is well.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport, endpoint: Endpoint) -> None:
        self._inner, self._endpoint = inner, endpoint
        self.gone = anyio.Event()
        self.reason = ""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self.gone.is_set() and request.method == "DELETE":
            # The SDK's closing DELETE: no session is left to end, and a server that is down
            # would only make the exit wait for a connect timeout.
            return httpx2.Response(204, request=request)
        try:
            response = await self._inner.handle_async_request(request)
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
            self._set_gone(_lost(self._endpoint, exc))
            raise
        # (Not the closing DELETE: a 404 there only says the session had already ended.)
        if response.status_code == 404 and MCP_SESSION_ID in request.headers and request.method != "DELETE":
            self._set_gone(
                f"the server at {self._endpoint.address} ended the session (restarted?): "
                "the bridge exits so that the MCP host can start it again, with a new session"
            )
        return response

    def _set_gone(self, reason: str) -> None:
        if not self.gone.is_set():
            self.reason = reason
            self.gone.set()

    async def aclose(self) -> None:
        await self._inner.aclose()


def http_client(context: ssl.SSLContext, endpoint: Endpoint) -> tuple[httpx2.AsyncClient, _WatchedTransport]:
    """The SDK's own timeouts (long reads: a server may hold a stream open), our TLS context,
    and the transport watched for the server going away.

    ``trust_env=False``: no proxy from the environment (a proxy would also bypass the watched
    transport), so the relay takes the same direct path the probe has just proved.
    """
    watched = _WatchedTransport(httpx2.AsyncHTTPTransport(verify=context, trust_env=False), endpoint)
    timeout = httpx2.Timeout(CONNECT_SECONDS, read=READ_SECONDS)
    return httpx2.AsyncClient(transport=watched, timeout=timeout, trust_env=False), watched


class _Pumps:
    """The two directions, and what they share: routing headers and unanswered requests."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.routing = RoutingHeaders()
        self.outstanding = _Outstanding()

    async def to_server(
        self, host: "ReadStream[SessionMessage | Exception]", server: "WriteStream[SessionMessage]"
    ) -> None:
        """Until the host closes stdin."""
        async for item in host:
            if isinstance(item, Exception):
                logger.warning("ignored a line from the host that is not JSON-RPC: %s", item)
                continue
            message = item.message
            if isinstance(message, JSONRPCRequest):
                self.outstanding.sent(message)
            headers = self.routing.for_host_message(message)
            metadata = ClientMessageMetadata(headers=headers) if headers else None
            await server.send(SessionMessage(message, metadata=metadata))
            if isinstance(message, JSONRPCRequest) and message.method == "initialize":
                # The answer names the session: a message sent before it would open a session
                # of its own (hosts wait for it anyway; a pipe does not).
                await self.outstanding.wait(message.id)

    async def to_host(
        self, server: "ReadStream[SessionMessage | Exception]", host: "WriteStream[SessionMessage]"
    ) -> None:
        """Until cancelled; the transport ends this stream only when it has given up."""
        async for item in server:
            if isinstance(item, Exception):
                logger.warning("from the server: %s", item)
                continue
            self.routing.learn_from_server_message(item.message)
            await host.send(item)
            # Counted once handed over: the stdout writer finishes writing what it took.
            if isinstance(item.message, JSONRPCResponse | JSONRPCError):
                self.outstanding.answered(item.message.id)
        raise BridgeError(f"lost the connection to {self.endpoint.address}")

    async def until_gone(self, watched: _WatchedTransport) -> None:
        """Raise once the transport has seen the server side go, host input or not."""
        await watched.gone.wait()
        with anyio.move_on_after(SETTLE_SECONDS):
            await self.outstanding.wait_all()
        raise BridgeError(watched.reason)


async def relay(endpoint: Endpoint, context: ssl.SSLContext) -> None:
    """Serve the host on stdin/stdout until stdin closes; raise `BridgeError` if the server
    side is lost first, or if answers were still missing when stdin closed."""
    stdin = _StoppableStdin(TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"))
    pumps = _Pumps(endpoint)
    client, watched = http_client(context, endpoint)
    failure: BridgeError | None = None
    async with client, stdio_server(stdin=stdin) as (host_read, host_write):
        try:
            async with (
                streamable_http_client(endpoint.url, http_client=client) as (server_read, server_write),
                anyio.create_task_group() as tasks,
            ):
                tasks.start_soon(pumps.to_host, server_read, host_write)
                tasks.start_soon(pumps.until_gone, watched)
                await pumps.to_server(host_read, server_write)
                with anyio.move_on_after(DRAIN_SECONDS):
                    await pumps.outstanding.wait_all()
                tasks.cancel_scope.cancel()
            if pumps.outstanding:
                raise BridgeError(
                    f"stdin closed with {len(pumps.outstanding)} request(s) still unanswered after "
                    f"{DRAIN_SECONDS:g} s ({pumps.outstanding.describe()}): their answers are lost"
                )
        except (ExceptionGroup, BridgeError, httpx2.TransportError, OSError) as error:  # task groups raise groups
            failure = _plainly(error, endpoint, watched)
            await pumps.outstanding.fail_all(host_write, str(failure))
        finally:
            # End stdio_server without cancelling it: stop reading (a line the reader holds is
            # taken and dropped), then close stdout's stream so its writer flushes and ends.
            stdin.stop()
            async for _ in host_read:
                pass
            await host_write.aclose()
    if failure is not None:
        raise failure


def _plainly(error: Exception, endpoint: Endpoint, watched: _WatchedTransport) -> BridgeError:
    """One error line for what ended the relay; anything unforeseen is re-raised as it is."""
    if watched.gone.is_set():
        return BridgeError(watched.reason)  # says more than the errors it caused downstream
    leaves = exception_leaves(error)
    for leaf in leaves:
        if isinstance(leaf, BridgeError):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, httpx2.TransportError | OSError):
            return BridgeError(_lost(endpoint, leaf))
    raise error


def _lost(endpoint: Endpoint, error: BaseException) -> str:
    return f"lost the connection to {endpoint.address}: {_why(error)}"


def _why(error: BaseException) -> str:
    """The OS's reason ("connection refused") from deep in the chain, where the HTTP client
    has one that says less ("All connection attempts failed")."""
    cause: BaseException | None = error
    for _depth in range(8):  # a chain may loop
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()
        cause = cause.__cause__ or cause.__context__
    # An empty ReadError is how a TLS 1.3 server refuses a certificate it has stopped
    # accepting (a CRL reloaded mid-session).
    return str(error).strip() or "the server closed the connection (did it refuse our certificate?)"
