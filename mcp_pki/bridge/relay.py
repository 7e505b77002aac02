"""The relay: JSON-RPC between the host (stdio) and the remote server (streamable HTTP).

Both ends are the MCP Python SDK's own transports, so framing, SSE streams, session ids,
resumption and redirects behave exactly as in the SDK's clients and servers. The bridge
moves `SessionMessage` objects between them, one task per direction, and adds only the
routing headers a message needs on HTTP (see `routing`).
"""

import logging
import ssl
import sys
from io import TextIOWrapper
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import JSONRPCError, JSONRPCRequest, JSONRPCResponse, RequestId

from mcp_pki.bridge import BridgeError
from mcp_pki.bridge.routing import RoutingHeaders

if TYPE_CHECKING:  # the SDK's stream protocols, for annotations only (a private module)
    from mcp.shared._stream_protocols import ReadStream, WriteStream

logger = logging.getLogger("mcp_pki.bridge")

# After the host closes stdin, answers still on their way get this long to arrive. The SDK's
# stdio client sends SIGTERM 2 s after closing stdin: stay well inside that.
DRAIN_SECONDS = 1.0
# As the SDK's own HTTP client: 30 s to connect, write or wait for the pool; 300 s between
# reads, since a server may keep a stream open with nothing to say.
CONNECT_SECONDS, READ_SECONDS = 30.0, 300.0


class _AbandonableStdin(anyio.AsyncFile[str]):
    """stdin whose blocking read is abandoned on cancellation.

    anyio's own file reads wait for their worker thread, so a bridge whose server went away
    could not exit until the host wrote another line. Nothing reads stdin after an abandoned
    read: the process exits.
    """

    async def readline(self) -> str:
        return await anyio.to_thread.run_sync(self.wrapped.readline, abandon_on_cancel=True)


class _Outstanding:
    """Host requests the server has not answered yet."""

    def __init__(self) -> None:
        self._answered: dict[RequestId, anyio.Event] = {}

    def sent(self, message_id: RequestId) -> None:
        self._answered[message_id] = anyio.Event()

    def answered(self, message_id: RequestId | None) -> None:
        event = self._answered.pop(message_id, None) if message_id is not None else None
        if event is not None:
            event.set()

    async def wait(self, message_id: RequestId) -> None:
        if (event := self._answered.get(message_id)) is not None:
            await event.wait()

    async def wait_all(self) -> None:
        for event in list(self._answered.values()):
            await event.wait()


def http_client(context: ssl.SSLContext) -> httpx2.AsyncClient:
    """The SDK's own timeouts (long reads: a server may hold a stream open), our TLS context.

    ``trust_env=False``: no proxy from the environment, so the relay takes the same direct
    path the probe has just proved.
    """
    timeout = httpx2.Timeout(CONNECT_SECONDS, read=READ_SECONDS)
    return httpx2.AsyncClient(verify=context, timeout=timeout, trust_env=False)


class _Pumps:
    """The two directions, and what they share: routing headers and unanswered requests."""

    def __init__(self, url: str) -> None:
        self.url = url
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
                self.outstanding.sent(message.id)
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
        raise BridgeError(f"lost the connection to {self.url}")


async def relay(url: str, context: ssl.SSLContext) -> None:
    """Serve the host on stdin/stdout until stdin closes; raise `BridgeError` if the server
    connection is lost first."""
    stdin = _AbandonableStdin(TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"))
    pumps = _Pumps(url)
    async with http_client(context) as client, stdio_server(stdin=stdin) as (host_read, host_write):
        try:
            async with (
                streamable_http_client(url, http_client=client) as (server_read, server_write),
                anyio.create_task_group() as tasks,
            ):
                tasks.start_soon(pumps.to_host, server_read, host_write)
                await pumps.to_server(host_read, server_write)
                with anyio.move_on_after(DRAIN_SECONDS):
                    await pumps.outstanding.wait_all()
                tasks.cancel_scope.cancel()
        finally:
            # stdio_server waits for its stdout writer, which ends when this stream closes.
            await host_write.aclose()
