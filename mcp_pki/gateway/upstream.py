"""A session's upstream: its own process of the stdio server.

The relay sees it through `Upstream`: `send` a JSON-RPC message, iterate `messages` until
the upstream is gone, then `why_gone` says why in one sentence for the client and the log.
(An HTTP upstream needs no such translation: see `proxy`.)

The stdio process gets the MCP stdio transport's shutdown: stdin closed, a moment to exit,
then SIGTERM, then SIGKILL. Its stderr is passed on to ours, each line prefixed with the
session, and its last lines are kept to explain a crash.
"""

import collections
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp_types import JSONRPCMessage, jsonrpc_message_adapter
from pydantic import ValidationError

logger = logging.getLogger("mcp_pki.gateway")

MAX_LINE = 64 * 1024 * 1024  # one JSON-RPC message on stdout; more is a broken server
STDERR_TAIL = 20  # lines kept to explain an exit
EXIT_WAIT, TERM_WAIT = 1.0, 2.0  # seconds after closing stdin, then after SIGTERM


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
