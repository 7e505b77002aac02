"""MCP sessions: one upstream per session, owned by the certificate that opened it.

The HTTP side of each session is the MCP SDK's own `StreamableHTTPServerTransport` (framing,
SSE streams, session ids, the idle timeout), so the gateway speaks streamable HTTP exactly
as an SDK server does. Between it and the upstream, `Relay` moves JSON-RPC messages both
ways unchanged, except that it

- answers a call the policy does not allow itself (the upstream never sees it),
- filters list answers down to what the client may use,
- writes one audit line per client request once it is answered,
- and, when the upstream is gone, answers every pending request with an error.

A stdio server does not say which request a notification or a server-initiated request
belongs to; the relay attaches it to the request whose progress token it carries, else to
the newest request still waiting, else to the session's GET stream, which is where an SDK
server would have sent it.
"""

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import anyio
import anyio.abc
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)
from starlette.responses import Response

if TYPE_CHECKING:  # the SDK's stream protocols, for annotations only (a private module)
    from mcp.shared._stream_protocols import WriteStream
from starlette.types import Message, Receive, Scope, Send

from mcp_pki.gateway.calllog import CallLog, arguments_digest
from mcp_pki.gateway.policy import LISTED_METHODS, Permissions, guarded_target
from mcp_pki.gateway.upstream import Upstream, UpstreamFailed
from mcp_pki.mtls import Identity
from mcp_pki.timestamps import iso_utc

logger = logging.getLogger("mcp_pki.gateway")

NOT_ALLOWED = -32003  # implementation-defined server error: the policy refuses the call
UPSTREAM_GONE = -32000
# After answering what waits on a lost upstream, before the session's streams close: the
# transport writes each answer to its event stream in a task of its own.
SETTLE_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Peer:
    """The verified client certificate of the connection a request came on."""

    certificate: Any  # x509.Certificate
    identity: Identity


UpstreamFactory = Callable[["Session"], AbstractAsyncContextManager[Upstream]]


@dataclass
class _Pending:
    method: str | None
    target: str | None
    arguments_sha256: str | None
    started: float
    at: datetime
    progress_token: Any = None


@dataclass
class Session:
    id: str
    owner: Peer
    transport: StreamableHTTPServerTransport | None = None  # None: relayed to an HTTP upstream
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ended_because: str | None = None
    relay: "Relay | None" = None

    @property
    def label(self) -> str:
        return f"session {self.id[:8]} of {self.owner.identity.label}"

    def end(self, reason: str) -> None:
        if self.ended_because is None:
            self.ended_because = reason
        self.scope.cancel()

    def owned_by(self, peer: Peer) -> bool:
        mine, theirs = self.owner.identity, peer.identity
        return (mine.serial, mine.issuer) == (theirs.serial, theirs.issuer)


class Relay:
    """Both directions of one session, and what they share."""

    def __init__(self, session: Session, permissions: Callable[[], Permissions], calllog: CallLog) -> None:
        self.session, self._permissions, self._calllog = session, permissions, calllog
        self.pending: dict[RequestId, _Pending] = {}
        self.cancelled: dict[RequestId, _Pending] = {}  # recorded as cancelled, not yet answered

    async def from_client(self, client: AsyncIterator[SessionMessage | Exception],
                          to_client: "WriteStream[SessionMessage]", upstream: Upstream) -> None:
        try:
            async for item in client:
                if isinstance(item, Exception):
                    continue  # the transport has answered the client already
                message = item.message
                if isinstance(message, JSONRPCRequest):
                    if self.in_use(message.id):
                        await self._refuse_reused_id(to_client, message)
                        continue
                    refusal = self.track(message)
                    if refusal is not None:
                        await self._answer(to_client, JSONRPCError(
                            jsonrpc="2.0", id=message.id, error=ErrorData(code=NOT_ALLOWED, message=refusal)))
                        continue
                elif isinstance(message, JSONRPCNotification) and not message.method.startswith("notifications/"):
                    await self.drop_notification(message)
                    continue
                elif isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
                    await self.cancel((message.params or {}).get("requestId"))
                await upstream.send(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the session was ended (DELETE, idle, revocation): its streams are closed

    async def from_upstream(self, upstream: Upstream, to_client: "WriteStream[SessionMessage]") -> None:
        async for message in upstream.messages():
            if isinstance(message, JSONRPCResponse | JSONRPCError):
                pending = self.expects(message.id)
                if pending is not None and isinstance(message, JSONRPCResponse):
                    message = self.filtered(pending, message)
                await self._answer(to_client, message)
                continue
            related = self._related_request(message)
            metadata = ServerMessageMetadata(related_request_id=related) if related is not None else None
            await to_client.send(SessionMessage(message, metadata=metadata))

    async def record_unanswered(self) -> None:
        """The session ends (DELETE, revocation, idle, shutdown) with requests unanswered:
        each still gets its line in the tool-call log, as an error."""
        for request_id in list(self.pending):
            await self.record(request_id, "allowed", "error")
        self.cancelled.clear()

    def expects(self, request_id: object) -> _Pending | None:
        """The client request an answer with this id answers: pending, or cancelled (a
        server may answer anyway, and a list must then be filtered all the same). The id's
        type must match too: True is not 1, nor "1"."""
        if not isinstance(request_id, int | str) or isinstance(request_id, bool):
            return None
        return self.pending.get(request_id) or self.cancelled.get(request_id)

    async def cancel(self, request_id: object) -> None:
        """The client cancelled a request: its line now (a server answers a cancelled request
        with nothing), while what it was stays known, should an answer come all the same."""
        if not isinstance(request_id, int | str) or isinstance(request_id, bool):
            return
        pending = self.pending.pop(request_id, None)
        if pending is not None:
            self.cancelled[request_id] = pending
            await self._write(pending, "allowed", "cancelled")

    async def fail_pending(self, to_client: "WriteStream[SessionMessage]", reason: str) -> None:
        """Answer every request still waiting: an error now beats a call that never returns."""
        for request_id in list(self.pending):
            error = JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=UPSTREAM_GONE, message=reason))
            try:
                await self._answer(to_client, error)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.record(request_id, "allowed", "error")

    # ------------------------------------------------------------------ helpers

    def in_use(self, request_id: RequestId) -> bool:
        # The transport routes answers by the id's text, so 1 and "1" are one id there too.
        return any(str(k) == str(request_id) for k in (*self.pending, *self.cancelled))

    async def _refuse_reused_id(self, to_client: "WriteStream[SessionMessage]", request: JSONRPCRequest) -> None:
        """Refuse a request whose id a pending one holds, unforwarded: the answers, the list
        filtering and the audit line all find their request by id, so a second request under
        the same id would take the first one's place (a tools/call logged as the ping beside it,
        a list answered unfiltered). `SessionManager.handle` refuses it before the transport
        sees it; this catches one that races the first into the relay."""
        await self.record_reused_id(request)
        await to_client.send(SessionMessage(reused_id_error(request.id)))

    async def record_reused_id(self, request: JSONRPCRequest) -> None:
        identity = self.session.owner.identity
        logger.warning("refused a %s from %s in %s: its id %r is in use by a pending request",
                       request.method, identity.label, self.session.label, request.id)
        await self._write(self._pending_of(request), "denied", "error")

    async def record_malformed(self, method: str, params: object) -> None:
        """A message refused as malformed that names a method (a tools/call with an "error"
        member, say) still gets its line, as denied: what it tried is on record."""
        guarded = guarded_target(method, params if isinstance(params, dict) else {})
        target = guarded[1] if guarded is not None and isinstance(guarded[1], str) else None
        await self._write(_Pending(method, target, None, time.monotonic(), datetime.now(UTC)), "denied", "error")

    async def drop_notification(self, message: JSONRPCNotification) -> None:
        """A request without an id (a tools/call as a notification) is outside the protocol,
        and forwarding it would bypass the policy and the audit: a server that executes it
        anyway would run a call nobody checked or recorded."""
        identity = self.session.owner.identity
        logger.warning("dropped a %s notification from %s in %s: a request needs an id",
                       message.method, identity.label, self.session.label)
        await self._write(self._pending_of(message), "denied", "error")

    @staticmethod
    def _pending_of(request: JSONRPCRequest | JSONRPCNotification | None) -> _Pending:
        """What a line records of a request (None: a body refused unread, too large to name)."""
        if request is None:
            return _Pending(None, None, None, time.monotonic(), datetime.now(UTC))
        params = request.params or {}
        guarded = guarded_target(request.method, params)
        target = guarded[1] if guarded else None
        if request.method == "tools/call" or request.method == "prompts/get":
            arguments = params.get("arguments")
        else:
            arguments = None
        meta = params.get("_meta")
        return _Pending(
            request.method, target if isinstance(target, str) else None, arguments_digest(arguments),
            time.monotonic(), datetime.now(UTC),
            meta.get("progressToken") if isinstance(meta, dict) else None,
        )

    def track(self, request: JSONRPCRequest) -> str | None:
        """Note a client request; return why the policy refuses it, or None."""
        self.pending[request.id] = pending = self._pending_of(request)
        guarded = guarded_target(request.method, request.params or {})
        target = pending.target
        if guarded is None:
            return None
        kind = guarded[0]
        if isinstance(target, str) and self._permissions().allows(kind, target):
            return None
        identity = self.session.owner.identity
        what = f"{kind.value[:-1]} {target!r}" if isinstance(target, str) else f"{request.method} without a name"
        logger.warning("denied %s to %s (roles: %s) in %s", what, identity.label,
                       ", ".join(identity.roles) or "none", self.session.label)
        return f"not allowed: the {what} is outside what the certificate {identity.name} may use"

    async def _answer(self, to_client: "WriteStream[SessionMessage]",
                      message: JSONRPCResponse | JSONRPCError) -> None:
        """Record the answer, durably, then send it: the log never misses a call a client saw."""
        if message.id is not None and message.id in self.pending:
            denied = isinstance(message, JSONRPCError) and message.error.code == NOT_ALLOWED
            failed = isinstance(message, JSONRPCError) or bool(
                isinstance(message.result, dict) and message.result.get("isError"))
            await self.record(message.id, "denied" if denied else "allowed", "error" if failed else "ok")
        elif message.id is not None:
            self.cancelled.pop(message.id, None)  # answered after all: its line is written
        await to_client.send(SessionMessage(message))

    async def record(self, request_id: RequestId, decision: str, outcome: str) -> None:
        """The request's line, once: a cancelled request has had its own."""
        pending = self.pending.pop(request_id, None)
        if pending is not None:
            await self._write(pending, decision, outcome)
        else:
            self.cancelled.pop(request_id, None)

    async def _write(self, pending: _Pending, decision: str, outcome: str) -> None:
        await self._calllog.append(_line(pending, self.session.owner.identity, self.session.id, decision, outcome))

    def filtered(self, pending: _Pending, response: JSONRPCResponse) -> JSONRPCResponse:
        listed = LISTED_METHODS.get(pending.method) if pending.method is not None else None
        if listed is None or not isinstance(response.result, dict):
            return response
        kind, key, name_field = listed
        entries = response.result.get(key)
        if not isinstance(entries, list):
            return response
        permissions = self._permissions()
        if permissions.everything:
            return response
        kept = [e for e in entries if isinstance(e, dict) and isinstance(e.get(name_field), str)
                and permissions.allows(kind, e[name_field])]
        return response.model_copy(update={"result": {**response.result, key: kept}})

    def _related_request(self, message: JSONRPCMessage) -> RequestId | None:
        if not self.pending:
            return None
        if isinstance(message, JSONRPCNotification) and message.method == "notifications/progress":
            token = (message.params or {}).get("progressToken")
            for request_id, pending in self.pending.items():
                if pending.progress_token is not None and pending.progress_token == token:
                    return request_id
        return next(reversed(self.pending))


class SessionTable:
    """The open sessions of one gateway, each owned by the certificate that opened it: what
    revocation, shutdown and the tool-call log need of them, whatever the upstream."""

    def __init__(self, *, permissions: Callable[[Identity], Permissions], calllog: CallLog, max_sessions: int,
                 idle_seconds: float, max_per_client: int | None = None) -> None:
        self._permissions, self._calllog = permissions, calllog
        self.max_sessions, self.idle_seconds = max_sessions, idle_seconds
        self.max_per_client = max_sessions if max_per_client is None else max_per_client
        self.sessions: dict[str, Session] = {}

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled; then every session ends and its upstream with it."""
        raise NotImplementedError

    async def handle(self, peer: Peer, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP request to the MCP endpoint, from a client whose certificate is valid."""
        raise NotImplementedError

    def _forget(self, session: Session, reason: str) -> None:
        self.sessions.pop(session.id, None)
        session.end(reason)

    def end_all(self, reason: str) -> None:
        for session in list(self.sessions.values()):
            self._forget(session, reason)

    def end_where(self, condition: Callable[[Session], str | None]) -> int:
        """End the sessions for which `condition` gives a reason; how many were ended."""
        ended = 0
        for session in list(self.sessions.values()):
            reason = condition(session)
            if reason is not None:
                self._forget(session, reason)
                ended += 1
        return ended

    async def owned_session(self, peer: Peer, session_id: str, scope: Scope, receive: Receive,
                            send: Send) -> Session | None:
        """The session `session_id` if `peer` owns it; else None, once the request is
        answered 404 (and, a POST, recorded as denied): its owner's session is untouched."""
        session = self.sessions.get(session_id)
        if session is not None and session.owned_by(peer):
            return session
        if session is not None:
            logger.warning("refused %s the session of %s (the session id of another certificate)",
                           peer.identity.label, session.owner.identity.label)
        if scope.get("method") == "POST":
            refused = await receive()
            receive = replaying(refused, receive)
            await self.record_refused(peer, session_id, refused.get("body", b""))
        await error_response("Session not found", 404)(scope, receive, send)
        return None

    async def refuse_if_full(self, peer: Peer, opening: bytes, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer 503 (and record it) when --max-sessions are open, or when this certificate
        holds --max-sessions-per-client of them (one client must not take every place until
        they idle out); whether it did."""
        owned = sum(1 for session in self.sessions.values() if session.owned_by(peer))
        if owned >= self.max_per_client:
            logger.warning("refused a new session for %s: it holds %d sessions (--max-sessions-per-client)",
                           peer.identity.label, owned)
            reason = "Too many open sessions for this client certificate"
        elif len(self.sessions) >= self.max_sessions:
            logger.warning("refused a new session for %s: %d sessions are open (--max-sessions)",
                           peer.identity.label, len(self.sessions))
            reason = "Too many open sessions"
        else:
            return False
        await self.record_refused(peer, None, opening)
        await error_response(reason, 503, INTERNAL_ERROR)(scope, receive, send)
        return True

    async def record_refused(self, peer: Peer, session_id: str | None, body: bytes | None) -> None:
        """A request refused before any session relayed it (a revoked or expired certificate,
        another certificate's session id, no place for a new session, a body past the limit:
        None) still gets its line in the tool-call log, as denied."""
        request = _request(body) if body is not None else None
        if body is not None and request is None:
            return  # not a request: nothing that a line could name
        await self._calllog.append(_line(Relay._pending_of(request), peer.identity, session_id, "denied", "error"))

    def new_relay(self, session: Session) -> "Relay":
        session.relay = Relay(session, lambda: self._permissions(session.owner.identity), self._calllog)
        return session.relay


class SessionManager(SessionTable):
    """Sessions with a stdio server: one process each, behind the SDK's server transport."""

    def __init__(self, *, upstream: UpstreamFactory, permissions: Callable[[Identity], Permissions],
                 calllog: CallLog, max_sessions: int, idle_seconds: float, max_per_client: int | None = None) -> None:
        super().__init__(permissions=permissions, calllog=calllog, max_sessions=max_sessions,
                         idle_seconds=idle_seconds, max_per_client=max_per_client)
        self._upstream = upstream
        self._tasks: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled; then every session ends and its upstream stops."""
        try:
            async with anyio.create_task_group() as self._tasks:
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tasks = None

    async def handle(self, peer: Peer, scope: Scope, receive: Receive, send: Send) -> None:
        session_id = header(scope, MCP_SESSION_ID_HEADER.lower().encode("ascii"))
        if session_id is not None:
            session = await self.owned_session(peer, session_id, scope, receive, send)
            if session is None:
                return
            assert session.transport is not None
            if scope.get("method") == "POST" and session.relay is not None:
                # The transport keeps one answer stream per request id: a second request under
                # a pending id would take the first one's stream, and its answer with it.
                first = await receive()
                receive = replaying(first, receive)
                reused = _request(first.get("body", b""))
                if reused is not None and session.relay.in_use(reused.id):
                    await session.relay.record_reused_id(reused)
                    await json_response(reused_id_error(reused.id), 200)(scope, receive, send)
                    return
            await session.transport.handle_request(scope, receive, send)
            if session.transport.is_terminated:
                # The client ended it (DELETE): its id answers 404 and frees its place at once,
                # while its process stops in the background.
                self._forget(session, "the client ended it")
            return
        if scope.get("method") != "POST":
            await error_response("Bad Request: no session; open one with initialize", 400)(scope, receive, send)
            return
        # A session (and its upstream process, which holds a --max-sessions place until idle)
        # only for an initialize request: the body-limit middleware has read the body already
        # and hands it over whole in its first message.
        opening = await receive()
        if not is_initialize(opening.get("body", b"") if opening.get("type") == "http.request" else b""):
            await error_response("Bad Request: no session; open one with initialize", 400)(scope, receive, send)
            return
        receive = replaying(opening, receive)
        if await self.refuse_if_full(peer, opening.get("body", b""), scope, receive, send):
            return
        assert self._tasks is not None
        transport = StreamableHTTPServerTransport(mcp_session_id=uuid4().hex, idle_timeout=self.idle_seconds)
        assert transport.mcp_session_id is not None
        session = Session(transport.mcp_session_id, peer, transport)
        self.sessions[session.id] = session
        await self._tasks.start(self._serve, session)
        status: list[int] = []

        async def noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await transport.handle_request(scope, receive, noting_status)
        if (transport.is_terminated or status[:1] != [200]) and session.id in self.sessions:
            # Refused by the transport (an Accept header without both types, a bad version):
            # no client holds this session, so it must not hold a place until it idles out.
            self._forget(session, "the opening request failed")

    async def _serve(self, session: Session, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        transport = session.transport
        assert transport is not None
        relay = self.new_relay(session)
        with session.scope:
            try:
                async with transport.connect() as (client, to_client):
                    task_status.started()
                    try:
                        await self._relay(session, relay, client, to_client)
                    finally:
                        # Terminated inside `connect`, so that the transport knows its streams
                        # close on purpose (and its id answers 404 from now on).
                        self.sessions.pop(session.id, None)
                        with anyio.CancelScope(shield=True):
                            if not transport.is_terminated:
                                await transport.terminate()
                            # After terminate: a request racing the end gets the transport's
                            # own refusal rather than a stream closed under it.
                            await relay.record_unanswered()
            except Exception:
                # One session's failure is its own: the gateway and the other sessions go on.
                logger.exception("%s failed", session.label)
                session.ended_because = session.ended_because or "it failed (a bug: see the traceback above)"
            finally:
                self.sessions.pop(session.id, None)
                logger.info("closed %s: %s", session.label, session.ended_because or "the client ended it")

    async def _relay(self, session: Session, relay: Relay, client: AsyncIterator[SessionMessage | Exception],
                     to_client: "WriteStream[SessionMessage]") -> None:
        assert session.transport is not None
        idle = session.transport.idle_scope or anyio.CancelScope()
        with idle:
            try:
                async with self._upstream(session) as upstream:
                    logger.info("opened %s", session.label)
                    async with anyio.create_task_group() as tasks:
                        async def upstream_side() -> None:
                            await relay.from_upstream(upstream, to_client)
                            # The upstream is gone: answer what waits, then end the session.
                            reason = await upstream.why_gone()
                            tail = getattr(upstream, "stderr_tail", None)
                            logger.error("%s: %s%s", session.label, reason,
                                         f"; its stderr ended with: {' | '.join(tail)}" if tail else "")
                            session.ended_because = reason
                            self.sessions.pop(session.id, None)  # new requests: 404
                            await relay.fail_pending(to_client, reason)
                            await anyio.sleep(SETTLE_SECONDS)
                            tasks.cancel_scope.cancel()

                        tasks.start_soon(upstream_side)
                        await relay.from_client(client, to_client, upstream)
                        tasks.cancel_scope.cancel()
            except UpstreamFailed as exc:
                reason = str(exc)
                logger.error("%s: %s", session.label, reason)
                session.ended_because = reason
                self.sessions.pop(session.id, None)
                # Answer the opening request (and any other) with the reason, briefly.
                with anyio.move_on_after(1.0):
                    async for item in client:
                        if isinstance(item, SessionMessage) and isinstance(item.message, JSONRPCRequest):
                            relay.track(item.message)
                            await relay.fail_pending(to_client, reason)
                            await anyio.sleep(SETTLE_SECONDS)
                            break
        if idle.cancelled_caught:
            session.ended_because = f"idle for {self.idle_seconds:g} s"


def _line(pending: _Pending, identity: Identity, session_id: str | None, decision: str,
          outcome: str) -> dict[str, Any]:
    """One tool-call log entry: who, which session, what was asked (the arguments' digest
    only), what the gateway decided, how it ended, and how long it took."""
    return {
        "time": iso_utc(pending.at), "serial": identity.serial, "name": identity.name,
        "roles": list(identity.roles), "session": session_id, "method": pending.method,
        "target": pending.target, "arguments_sha256": pending.arguments_sha256,
        "decision": decision, "outcome": outcome,
        "duration_ms": round((time.monotonic() - pending.started) * 1000, 3),
    }


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (``name`` in lower case, as ASGI gives it), or None."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _request(body: bytes) -> JSONRPCRequest | None:
    try:
        return JSONRPCRequest.model_validate_json(body)
    except ValueError:
        return None


def reused_id_error(request_id: RequestId) -> JSONRPCError:
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(
        code=INVALID_REQUEST, message=f"invalid request: the id {request_id!r} is in use by a pending request"))


def is_initialize(body: bytes) -> bool:
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(message, dict) and message.get("method") == "initialize" and message.get("id") is not None


def replaying(first: Message, receive: Receive) -> Receive:
    """`receive` with `first`, already read, handed out again first."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def error_response(message: str, status: int, code: int = -32600) -> Response:
    """A JSON-RPC error body (no request id) with the given HTTP status, as the SDK answers."""
    return json_response(JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=code, message=message)), status)


def json_response(message: JSONRPCError, status: int) -> Response:
    return Response(message.model_dump_json(by_alias=True, exclude_unset=True), status_code=status,
                    media_type="application/json")
