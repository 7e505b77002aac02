"""HTTPS on uvicorn, with the verified client certificate handed to the app.

uvicorn does not put the peer certificate in the ASGI scope. Its HTTP protocol object (the
httptools one: its C parser costs a fraction of h11's) is made per connection, after the TLS
handshake, so a subclass that wraps the app in
`connection_made` gives every request of that connection the certificate, as the ASGI
``tls`` extension (``client_cert_chain``) and as a parsed `Peer`. The gateway binds its
listening socket itself, so that a port in use is one error line, with ``TCP_NODELAY``, so
that small TLS records are not held back ~40 ms by Nagle's algorithm.

`GatewayApp` is the request path: the endpoint path, the revocation check (every request,
so a keep-alive connection cannot outlive its certificate), the body limit, then the session.
"""

import asyncio
import errno
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import uvicorn
from cryptography import x509
from mcp.server.transport_security import RequestBodyLimitMiddleware
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mcp_pki.gateway import GatewayError
from mcp_pki.gateway.answers import JsonWhenAlone, accepts_json
from mcp_pki.gateway.revocation import LiveRevocation
from mcp_pki.gateway.sessions import Peer, SessionTable, error_response, header
from mcp_pki.mtls import identity_of

logger = logging.getLogger("mcp_pki.gateway")

ENDPOINT = "/mcp"
PEER_KEY = "mcp_pki.peer"
SHUTDOWN_GRACE = 2.0  # seconds for open requests at SIGTERM before streams are cut
METHOD_NOT_FOUND = -32601
KEEP_ALIVE = 75  # seconds an idle connection stays open, as nginx's default
DRAIN_LIMIT = 1024 * 1024  # bytes of an oversized body read before answering 413
HEAD_TIMEOUT = 10.0  # seconds from a request's first byte to the end of its head
MAX_CONNECTIONS, MIN_CONNECTIONS = 4096, 16  # open at once, within the open-file limit
FDS_PER_SESSION, FDS_RESERVED = 6, 64  # a session's pipes and upstream; logs, CRL, policy...


class _PeerProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, giving the app the connection's verified certificate,
    and bounding what a connection may hold without doing anything: past the connection
    limit it is closed at once; a connection must start a request within the keep-alive time
    and complete its head within HEAD_TIMEOUT (uvicorn times neither), so that idle or slow
    connections cannot use up the gateway's file descriptors."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if self.limit_concurrency is not None and len(self.connections) >= self.limit_concurrency:
            _refused_connections.note(len(self.connections))
            self.transport.close()
            return
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            certificate = x509.load_der_x509_certificate(der)
            self.app = _WithPeer(self.app, Peer(certificate, identity_of(certificate)), der)
        # As after a response: a connection that never sends a request is an idle one.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()  # the head is complete: the request runs
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            logger.warning("closed a connection from %s: no complete request head within %g s", peer, HEAD_TIMEOUT)
            self.transport.close()


class _RefusedConnections:
    """Connections closed at the limit: logged at most once per interval, with a count."""

    INTERVAL = 10.0

    def __init__(self) -> None:
        self.count, self._last = 0, float("-inf")

    def note(self, open_now: int) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self.INTERVAL:
            logger.warning("refused %d connection(s): %d are open, the limit for the open-file limit "
                           "(raise LimitNOFILE= or ulimit -n)", self.count, open_now)
            self.count, self._last = 0, now


_refused_connections = _RefusedConnections()


def connection_limit(max_sessions: int) -> tuple[int, int]:
    """(connections the gateway accepts at once, the open-file limit), after raising the
    process's soft open-file limit towards its hard limit as far as they need. Each
    session's process takes descriptors too (its pipes), and the gateway its files. (No
    such limit to read on Windows: MAX_CONNECTIONS, and 0 for the limit.)"""
    try:
        import resource
    except ImportError:
        return MAX_CONNECTIONS, 0

    reserved = FDS_RESERVED + FDS_PER_SESSION * max_sessions
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = reserved + MAX_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass  # the limit stays; the connections fit under it
    limit = wanted if soft == resource.RLIM_INFINITY else soft
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, limit - reserved)), limit


class _WithPeer:
    def __init__(self, app: ASGIApp, peer: Peer, der: bytes) -> None:
        self.app, self.peer = app, peer
        pem = ssl.DER_cert_to_PEM_cert(der)
        self.tls = {"client_cert_chain": [pem], "client_cert_name": peer.identity.subject,
                    "client_cert_error": None, "tls_version": None, "cipher_suite": None, "server_cert": None}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("extensions", {})["tls"] = self.tls
        scope[PEER_KEY] = self.peer
        await self.app(scope, receive, send)


class GatewayApp:
    """The ASGI application: one endpoint, every request checked, then its session."""

    def __init__(self, sessions: SessionTable, revocation: LiveRevocation, body_limit: int,
                 now: Callable[[], datetime]) -> None:
        self.sessions, self.revocation, self.now, self.body_limit = sessions, revocation, now, body_limit
        self._limited = RequestBodyLimitMiddleware(self._session, body_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        peer: Peer | None = scope.get(PEER_KEY)
        if peer is None:  # the handshake requires a certificate: this cannot happen
            await error_response("Forbidden: no client certificate", 403)(scope, receive, send)
            return
        refusal = self.revocation.refusal(peer.certificate, now=self.now())
        if refusal is not None:
            serial = peer.identity.serial
            ended = self.sessions.end_where(lambda s: refusal if s.owner.identity.serial == serial else None)
            logger.warning("refused %s: %s%s", peer.identity.label, refusal,
                           f" (ended {ended} session(s))" if ended else "")
            if scope["method"] == "POST":
                body = await _read_body(receive, self.body_limit)
                if body is not None:
                    session_id = header(scope, b"mcp-session-id")
                    await self.sessions.record_refused(peer, session_id, body)
            await error_response(f"Forbidden: {refusal}", 403)(scope, receive, send)
            return
        if scope["path"].rstrip("/") != ENDPOINT:
            await error_response(f"Not Found: the MCP endpoint is {ENDPOINT}", 404)(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.body_limit:
            # Read what was sent (up to a bound) before answering: closing a TLS connection
            # with unread data makes the kernel reset it, and the client never sees the 413.
            await _drain(receive, DRAIN_LIMIT)
            await self._refuse_too_large(peer, scope, receive, send)
            return
        refused_as_too_large = False

        async def noting_refusal(message: Message) -> None:
            nonlocal refused_as_too_large
            if message["type"] == "http.response.start" and message["status"] == 413:
                refused_as_too_large = True  # a body without Content-Length, past the limit
            await send(message)

        await self._limited(scope, receive, noting_refusal)
        if refused_as_too_large:
            await self._record_too_large(peer, scope)

    async def _refuse_too_large(self, peer: Peer, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response("Request body too large", 413)(scope, receive, send)
        await self._record_too_large(peer, scope)

    async def _record_too_large(self, peer: Peer, scope: Scope) -> None:
        """Refused unread, it names no method; its line says who sent it, in which session."""
        logger.warning("refused a request from %s: its body is larger than %d bytes (--max-body)",
                       peer.identity.label, self.body_limit)
        await self.sessions.record_refused(peer, header(scope, b"mcp-session-id"), None)

    async def _session(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer: Peer = scope[PEER_KEY]
        version = header(scope, b"mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS and scope["method"] == "POST":
            await _modern_refusal(scope, receive, send, version)
            return
        if scope["method"] == "POST" and accepts_json(scope.get("headers") or []):
            # A lone answer as JSON: the client keeps its connection (see answers.py).
            send = JsonWhenAlone(send)
        await self.sessions.handle(peer, scope, receive, send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None past `limit` (what is read of it is drained all the same)."""
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:
            await _drain(receive, DRAIN_LIMIT)
            return None
        if message.get("type") != "http.request" or not message.get("more_body"):
            return bytes(body)


async def _drain(receive: Receive, limit: int) -> None:
    read = 0
    while read <= limit:
        message = await receive()
        read += len(message.get("body", b""))
        if message.get("type") != "http.request" or not message.get("more_body"):
            return



async def _modern_refusal(scope: Scope, receive: Receive, send: Send, version: str) -> None:
    """A session-less (2026-era) request: the gateway gives every client its own upstream
    session, which needs the ``initialize`` handshake. A JSON-RPC error makes an SDK client
    in ``auto`` mode fall back to it."""
    import json

    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    try:
        request_id = json.loads(body).get("id")
    except (ValueError, AttributeError):
        request_id = None
    answer = {"jsonrpc": "2.0", "id": request_id, "error": {
        "code": METHOD_NOT_FOUND,
        "message": f"protocol version {version} is not served here: use initialize (versions "
                   f"{', '.join(HANDSHAKE_PROTOCOL_VERSIONS)})"}}
    data = json.dumps(answer).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or one sentence saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Linux passes it on to accepted sockets: every response leaves at once.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        raise GatewayError(f"cannot listen on {address}: {reason}") from None
    sock.set_inheritable(False)
    return sock


@dataclass
class Watchers:
    """The periodic work beside serving: CRL and policy reloads."""

    revocation: LiveRevocation
    sessions: SessionTable
    refresh_seconds: float
    reload_policy: Callable[[], None]
    now: Callable[[], datetime]

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.refresh_seconds)
            self.tick()

    def tick(self) -> None:
        # Each reload on its own guard: an unforeseen failure of one is logged in one line and
        # the next tick goes on, instead of ending this task and with it the whole gateway.
        try:
            self._refresh_crl()
        except Exception as exc:  # noqa: BLE001 - see above
            logger.error("the CRL refresh failed (%s: %s): keeping the previous CRL", type(exc).__name__, exc)
        try:
            self.reload_policy()
        except Exception as exc:  # noqa: BLE001 - see above
            logger.error("the policy reload failed (%s: %s): keeping the previous policy", type(exc).__name__, exc)

    def _refresh_crl(self) -> None:
        now = self.now()
        if self.revocation.refresh(now=now):
            ended = self.sessions.end_where(
                lambda s: self.revocation.refusal(s.owner.certificate, now=now))
            if ended:
                logger.warning("ended %d session(s) whose certificate the new CRL refuses", ended)


async def serve(app: GatewayApp, sock: socket.socket, context: ssl.SSLContext, watchers: Watchers,
                sessions: SessionTable) -> None:
    """Serve until SIGTERM or SIGINT; then stop accepting, end every session, return."""
    connections, open_files = connection_limit(sessions.max_sessions)
    logger.info("accepting up to %d connections at once (open-file limit %d)", connections, open_files)
    config = uvicorn.Config(
        app, http=_PeerProtocol, lifespan="off", log_level="warning", access_log=False,
        limit_concurrency=connections + 1,  # uvicorn's own check counts the asking connection
        ssl_context_factory=lambda _config, _default: context,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE), server_header=False,
        # MCP clients pause between calls far longer than uvicorn's 5 s default; a new TLS
        # handshake per call would cost more than the call.
        timeout_keep_alive=KEEP_ALIVE,
    )
    server = _Server(config, sessions)
    async with anyio.create_task_group() as tasks:
        await tasks.start(sessions.run)
        tasks.start_soon(watchers.run)
        await server.serve(sockets=[sock])
        tasks.cancel_scope.cancel()


class _Server(uvicorn.Server):
    """uvicorn's server, ending the MCP sessions as soon as a signal asks it to stop: their
    open event streams would otherwise hold the graceful shutdown for its whole grace."""

    def __init__(self, config: uvicorn.Config, sessions: SessionTable) -> None:
        super().__init__(config)
        self._sessions = sessions

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # uvicorn raises the signal again once it has shut down, so that the process dies of
        # it; a gateway asked to stop has stopped as asked, and exits 0.
        self._captured_signals.clear()
        asyncio.get_event_loop().call_soon_threadsafe(self._stop, signal.Signals(sig).name)

    def _stop(self, name: str) -> None:
        logger.info("%s: stopping (%d session(s) open)", name, len(self._sessions.sessions))
        self._sessions.end_all("the gateway is stopping")


def utc_now() -> datetime:
    return datetime.now(UTC)
