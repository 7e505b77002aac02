"""``--upstream``: each HTTP exchange relayed to the MCP server as it came, its answer streamed back.

An HTTP upstream already speaks streamable HTTP, so nothing needs translating: a request goes
on with its body and MCP headers as the client sent them, plus the verified identity; the
answer comes back as the server wrote it, one JSON body or an event stream, chunk by chunk
(progress and server-initiated requests reach the client as they happen). The gateway reads
only what its duties need: the JSON-RPC message a POST carries (policy, a reused id, the
audit line) and, in the response, the answer to it (list filtering, the audit line, written
before the answer goes on). Everything else passes through untouched.

Sessions are the gateway's own, as with a stdio server: an id per ``initialize``, owned by
the certificate that opened it, ended on DELETE, idleness, revocation or shutdown, when the
server's session gets its DELETE too. The server's session id is kept beside it, never shown.
"""

import functools
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import anyio
import anyio.abc
import httpx2
from mcp_types import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from mcp_pki.gateway.calllog import CallLog
from mcp_pki.gateway.policy import LISTED_METHODS, Permissions
from mcp_pki.gateway.sessions import (
    NOT_ALLOWED,
    UPSTREAM_GONE,
    Peer,
    Session,
    SessionTable,
    error_response,
    header,
    is_initialize,
    json_response,
    replaying,
    reused_id_error,
)
from mcp_pki.mtls import Identity

logger = logging.getLogger("mcp_pki.gateway")

# The client's headers that go on: what frames the body, and the protocol version (the
# session id is swapped for the server's). Anything else stays at the gateway: cookies,
# credentials, X-Client-* or XFCC headers a client made up, routing headers (Mcp-Method,
# Mcp-Name) that could say other than the body the policy read, and Last-Event-ID, whose
# replay of an earlier stream would bypass the list filtering done when it first passed.
FORWARDED = frozenset({b"content-type", b"accept", b"mcp-protocol-version"})
MESSAGE_MEMBERS = frozenset({"jsonrpc", "id", "method", "params", "result", "error"})
MAX_EVENT = 32 * 1024 * 1024  # bytes of one answer held to be read: larger is refused
# The server's headers that do not come back: the gateway frames the answer itself.
NOT_RETURNED = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"date",
                          b"server", b"mcp-session-id"})
HTTP_TIMEOUT, HTTP_READ_TIMEOUT = 30.0, 300.0  # seconds to connect or write; to wait for an answer
CLOSE_WAIT = 2.0  # seconds for the server's session to end (DELETE) when ours does
IDLE_CHECK = 5.0  # seconds between looks for idle sessions, at most
# A blank line ends an event; a line ends with CRLF, LF or CR, so any two in a row.
_LINE_END = rb"(?:\r\n|\r(?!\n)|(?<!\r)\n)"
_EVENT_END = re.compile(_LINE_END + _LINE_END)


@dataclass(eq=False)
class ProxySession(Session):
    identity_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    upstream_id: str | None = None  # the server's session id, if it gave one
    last_used: float = field(default_factory=time.monotonic)
    exchanges: set[anyio.CancelScope] = field(default_factory=set)  # requests in flight

    def end(self, reason: str) -> None:
        if self.ended_because is None:
            self.ended_because = reason
        for exchange in list(self.exchanges):
            exchange.cancel()


class ProxySessionManager(SessionTable):
    """Sessions relayed to one streamable-HTTP MCP server."""

    def __init__(self, *, url: str, identity_headers: Callable[[Peer], Mapping[str, str]],
                 permissions: Callable[[Identity], Permissions], calllog: CallLog, max_sessions: int,
                 idle_seconds: float, max_per_client: int | None = None) -> None:
        super().__init__(permissions=permissions, calllog=calllog, max_sessions=max_sessions,
                         idle_seconds=idle_seconds, max_per_client=max_per_client)
        self.url, self._identity_headers = url, identity_headers
        self._client: httpx2.AsyncClient | None = None
        self._tasks: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled, ending idle sessions; then every session ends, here and upstream."""
        client = httpx2.AsyncClient(
            transport=httpx2.AsyncHTTPTransport(verify=verifying_context(), trust_env=False,
                                                limits=httpx2.Limits(max_connections=None)),
            timeout=httpx2.Timeout(HTTP_TIMEOUT, read=HTTP_READ_TIMEOUT), trust_env=False,
        )
        async with client, anyio.create_task_group() as self._tasks:
            self._client = client
            try:
                task_status.started()
                while True:
                    await anyio.sleep(min(IDLE_CHECK, self.idle_seconds / 4))
                    self.end_where(functools.partial(self._idle, now=time.monotonic()))
            finally:
                self.end_all("the gateway is stopping")  # their endings run, shielded and bounded

    def _idle(self, session: Session, *, now: float) -> str | None:
        assert isinstance(session, ProxySession)
        if session.exchanges or now - session.last_used < self.idle_seconds:
            return None
        return f"idle for {self.idle_seconds:g} s"

    def _forget(self, session: Session, reason: str) -> None:
        was_open = self.sessions.pop(session.id, None) is not None
        session.end(reason)
        if was_open and self._tasks is not None:
            self._tasks.start_soon(self._close, session)

    async def _close(self, session: Session) -> None:
        """Record what its end left unanswered and end the server's session too."""
        assert isinstance(session, ProxySession)
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_WAIT):
            if session.relay is not None:
                await session.relay.record_unanswered()
            if session.upstream_id is not None and self._client is not None:
                try:
                    await self._client.delete(self.url, headers=self._headers(session, []))
                except httpx2.HTTPError:
                    pass  # the server is gone or ends its sessions itself
        logger.info("closed %s: %s", session.label, session.ended_because or "the client ended it")

    # ------------------------------------------------------------------ requests

    async def handle(self, peer: Peer, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        session_id = header(scope, b"mcp-session-id")
        if session_id is None:
            await self._open(peer, scope, receive, send)
            return
        session = await self.owned_session(peer, session_id, scope, receive, send)
        if session is None:
            return
        assert isinstance(session, ProxySession)
        if method == "POST":
            message = await receive()  # the whole body: the body-limit middleware read it
            await self._post(session, scope, message.get("body", b""), send)
        elif method in ("GET", "DELETE"):
            await self._exchange(session, scope, b"", send)
            if method == "DELETE":
                session.upstream_id = None  # the server has had this DELETE: not another
                self._forget(session, "the client ended it")
        else:
            await error_response("Method Not Allowed", 405)(scope, receive, send)

    async def _open(self, peer: Peer, scope: Scope, receive: Receive, send: Send) -> None:
        """A session only for an initialize request, and only while there is room."""
        opening = await receive() if scope.get("method") == "POST" else {}
        body = opening.get("body", b"")
        if not is_initialize(body):
            await error_response("Bad Request: no session; open one with initialize", 400)(scope, receive, send)
            return
        receive = replaying(opening, receive)
        if await self.refuse_if_full(peer, body, scope, receive, send):
            return
        identity = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self._identity_headers(peer).items()]
        session = ProxySession(uuid4().hex, peer, identity_headers=identity)
        self.new_relay(session)
        self.sessions[session.id] = session
        if await self._post(session, scope, body, send, opening=True):
            logger.info("opened %s", session.label)
        elif session.ended_because is None and self.sessions.pop(session.id, None) is not None:
            # The server refused it (a bad version, an Accept it cannot serve): nobody holds
            # this session, and its place is free again.
            session.end("the opening request failed")

    async def _post(self, session: ProxySession, scope: Scope, body: bytes, send: Send,
                    opening: bool = False) -> bool:
        """Police and record one JSON-RPC message, then relay it; whether the server took it."""
        relay = session.relay
        assert relay is not None
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            await _reply(send, _error(None, PARSE_ERROR, "parse error: the body is not JSON"), 400)
            return False
        if not isinstance(message, dict):
            await _reply(send, _error(None, INVALID_REQUEST, "invalid request: send one JSON-RPC message per "
                                                               "request (batches are not relayed)"), 400)
            return False
        # A message that is two kinds at once (a request with an "error") or carries members
        # JSON-RPC has not: servers differ on what it is, so it is nobody's to guess.
        if not message.keys() <= MESSAGE_MEMBERS or ("method" in message and message.keys() & {"result", "error"}):
            if isinstance(message.get("method"), str):
                await relay.record_malformed(message["method"], message.get("params"))
            await _reply(send, _error(_plain_id(message.get("id")), INVALID_REQUEST,
                                      "invalid request: not one JSON-RPC message"), 400)
            return False
        try:
            parsed = jsonrpc_message_adapter.validate_python(message, by_name=False)
        except ValidationError:
            await _reply(send, _error(_plain_id(message.get("id")), INVALID_REQUEST,
                                      "invalid request: not a JSON-RPC message"), 400)
            return False
        # What goes on is the message as the gateway read it, not the client's bytes: a
        # duplicate key or an odd encoding cannot mean one thing here and another there.
        body = parsed.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8")
        answering: RequestId | None = None
        if isinstance(parsed, JSONRPCRequest):
            if relay.in_use(parsed.id):
                await relay.record_reused_id(parsed)
                await _reply(send, reused_id_error(parsed.id), 200)
                return False
            refusal = relay.track(parsed)
            if refusal is not None:
                await relay.record(parsed.id, "denied", "error")
                await _reply(send, _error(parsed.id, NOT_ALLOWED, refusal), 200)
                return False
            answering = parsed.id
        elif isinstance(parsed, JSONRPCNotification):
            if not parsed.method.startswith("notifications/"):
                await relay.drop_notification(parsed)
                await send({"type": "http.response.start", "status": 202, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return False
            if parsed.method == "notifications/cancelled":
                await relay.cancel((parsed.params or {}).get("requestId"))
        return await self._exchange(session, scope, body, send, answering=answering, opening=opening)

    async def _exchange(self, session: ProxySession, scope: Scope, body: bytes, send: Send, *,
                        answering: RequestId | None = None, opening: bool = False) -> bool:
        """One request to the server and its response back; whether it was a 2xx."""
        assert self._client is not None
        started = False

        async def noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        exchange = anyio.CancelScope()
        session.exchanges.add(exchange)
        session.last_used = time.monotonic()
        failure: httpx2.TransportError | None = None
        succeeded = False
        try:
            with exchange:
                request = self._client.build_request(scope["method"], self.url, content=body or None,
                                                     headers=self._headers(session, scope.get("headers") or []))
                try:
                    response = await self._client.send(request, stream=True)
                    try:
                        succeeded = await self._answer(session, response, noting_start, answering, opening)
                    finally:
                        await response.aclose()
                except httpx2.TransportError as exc:
                    failure = exc
        finally:
            session.exchanges.discard(exchange)
            session.last_used = time.monotonic()
        if failure is not None:
            await self._failed(session, failure, noting_start, started, answering)
        elif exchange.cancelled_caught:  # the session ended under it
            if started:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await _reply(send, _error(answering, UPSTREAM_GONE, f"the session ended: {session.ended_because}"),
                             404 if answering is None else 200)
        return succeeded

    async def _answer(self, session: ProxySession, response: httpx2.Response, send: Send,
                      answering: RequestId | None, opening: bool) -> bool:
        relay = session.relay
        assert relay is not None
        status = response.status_code
        succeeded = 200 <= status < 300
        headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in NOT_RETURNED]
        if opening and succeeded:
            session.upstream_id = response.headers.get("mcp-session-id")
            headers.append((b"mcp-session-id", session.id.encode("ascii")))
        content_type = response.headers.get("content-type", "").lower()
        if answering is not None and succeeded and content_type.startswith("application/json"):
            data = await _read_capped(response)
            data = await self._answered(session, answering, data) if data is not None else \
                await self._refuse_answer(session, answering, "too large")
            headers.append((b"content-length", str(len(data)).encode("ascii")))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if succeeded and content_type.startswith("text/event-stream"):
            # A POST's stream carries its answer; the GET stream may carry the answer to any
            # request still waiting (a server may send it there): each is read for it.
            await self._stream_events(session, response, send, answering)
        else:
            if answering is not None:
                # No answer comes in a response like this one: an error status, whose body
                # (passed on as it is) may say why.
                await relay.record(answering, "allowed", "error")
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return succeeded

    async def _stream_events(self, session: ProxySession, response: httpx2.Response, send: Send,
                             answering: RequestId | None) -> None:
        """Pass each event on as it completes; an answer once recorded (and filtered). After
        a POST's answer the rest streams on as it comes."""
        relay = session.relay
        assert relay is not None
        held, scanned = bytearray(), 0
        async for chunk in response.aiter_raw():
            held += chunk
            out = []
            while (answering is None or relay.expects(answering) is not None) and \
                    (end := _EVENT_END.search(held, max(0, scanned - 3))) is not None:
                event = bytes(held[:end.end()])
                del held[:end.end()]
                scanned = 0
                out.append(await self._maybe_answer(session, answering, event))
            scanned = len(held)
            if answering is not None and relay.expects(answering) is None:
                out.append(bytes(held))  # answered: the rest streams on as it comes
                held.clear()
            elif len(held) > MAX_EVENT:
                # An event this large is not read through: what it would carry is refused.
                if answering is not None:
                    out.append(_event(await self._refuse_answer(session, answering, "too large")))
                logger.warning("%s: an event from the MCP server is larger than %d bytes: stream ended",
                               session.label, MAX_EVENT)
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                return
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
        if held:
            await send({"type": "http.response.body", "body": bytes(held), "more_body": True})
        if answering is not None:
            await relay.record(answering, "allowed", "error")  # the stream ended unanswered

    async def _maybe_answer(self, session: ProxySession, answering: RequestId | None, event: bytes) -> bytes:
        """The event unchanged, unless it carries an answer the gateway waits for (to
        `answering`, or to any request when None): then recorded, filtered, re-made."""
        relay = session.relay
        assert relay is not None
        lines = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        data = b"\n".join(line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:"))
        try:
            message = json.loads(data) if data else None
        except (ValueError, RecursionError):
            return event
        request_id = message.get("id") if isinstance(message, dict) else None
        if answering is not None and request_id != answering:
            return event
        if relay.expects(request_id) is None or not _answers(message, request_id):  # type: ignore[arg-type]
            return event
        assert isinstance(request_id, int | str)
        answered = await self._answered(session, request_id, data)
        if answered is data:
            return event
        kept = [line for line in lines if line and not line.startswith(b"data:")]
        return b"\n".join([*kept, b"data: " + answered]) + b"\n\n"

    async def _answered(self, session: ProxySession, answering: RequestId, data: bytes) -> bytes:
        """Record the answer to `answering` (durably, before it goes on) and filter a list;
        an answer that cannot be read as one is refused, not passed on."""
        relay = session.relay
        assert relay is not None
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            message = None
        if not _answers(message, answering):
            return await self._refuse_answer(session, answering, "not a JSON-RPC answer to it")
        result = message.get("result")
        failed = "error" in message or (isinstance(result, dict) and bool(result.get("isError")))
        pending = relay.expects(answering)
        if pending is not None and pending.method in LISTED_METHODS:
            try:
                response = JSONRPCResponse.model_validate(message)
            except ValidationError:
                return await self._refuse_answer(session, answering, "not a JSON-RPC answer to it")
            filtered = relay.filtered(pending, response)
            if filtered is not response:
                data = filtered.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8")
        await relay.record(answering, "allowed", "error" if failed else "ok")
        return data

    async def _refuse_answer(self, session: ProxySession, answering: RequestId, why: str) -> bytes:
        """In place of an answer the gateway cannot read or check: an error, and its line."""
        assert session.relay is not None
        logger.warning("%s: the MCP server's answer to %r is %s: refused", session.label, answering, why)
        await session.relay.record(answering, "allowed", "error")
        return _error(answering, UPSTREAM_GONE, f"the MCP server's answer is {why}").model_dump_json(
            by_alias=True, exclude_unset=True).encode("utf-8")

    async def _failed(self, session: ProxySession, exc: httpx2.TransportError, send: Send, started: bool,
                      answering: RequestId | None) -> None:
        """The server could not be reached (the session ends, as with a dead process) or
        broke off: an answer saying so, and its line."""
        why = transport_failure(exc)
        if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
            reason = f"the MCP server at {self.url} cannot be reached ({why})"
            logger.error("%s: %s", session.label, reason)
            self._forget(session, reason)
        else:
            reason = f"the MCP server at {self.url} did not answer ({why})"
            logger.warning("%s: %s", session.label, reason)
        if answering is not None and session.relay is not None:
            await session.relay.record(answering, "allowed", "error")
        if started:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif answering is not None:
            await _reply(send, _error(answering, UPSTREAM_GONE, reason), 200)
        else:
            await _reply(send, _error(None, UPSTREAM_GONE, reason), 502)

    def _headers(self, session: ProxySession, client_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        headers = [(k, v) for k, v in client_headers if k in FORWARDED]
        if session.upstream_id is not None:
            headers.append((b"mcp-session-id", session.upstream_id.encode("latin-1")))
        return headers + session.identity_headers


def _answers(message: Any, request_id: RequestId) -> bool:
    """Whether `message` is the response or error answering `request_id`."""
    return (isinstance(message, dict) and "method" not in message and ("result" in message or "error" in message)
            and message.get("id") == request_id and type(message.get("id")) is type(request_id))


def _plain_id(value: object) -> RequestId | None:
    """A client's id fit to echo in an error: a string or an integer, else none."""
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


def _event(data: bytes) -> bytes:
    return b"event: message\ndata: " + data + b"\n\n"


async def _read_capped(response: httpx2.Response) -> bytes | None:
    """The whole body, or None past MAX_EVENT."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_EVENT:
            return None
    return bytes(body)


def _error(request_id: RequestId | None, code: int, message: str) -> JSONRPCError:
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))


async def _reply(send: Send, message: JSONRPCError, status: int) -> None:
    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    await json_response(message, status)({"type": "http"}, nothing, send)



def transport_failure(exc: httpx2.TransportError) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[0].lower() + text[1:]


@functools.cache
def verifying_context() -> ssl.SSLContext:
    """The system's trust store, for an https upstream."""
    return ssl.create_default_context()
