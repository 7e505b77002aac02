"""A POST whose event stream carries nothing but its answer is answered with one JSON body.

The MCP SDK's client reads an event-stream answer up to the response event and closes it
there, before the stream's last chunk; its HTTP client cannot reuse a connection whose
response was not read to the end, so every call answered over SSE costs a new connection:
over mutual TLS, a full handshake with certificate checks, which costs about as much as the
call itself. A JSON body with a Content-Length is read to its end, and the connection is
kept. Streamable HTTP lets a server answer a POST either way (the client accepts both), and
the message is the same.

Only the plain case is rewritten: a 200 event stream whose first event is a JSON-RPC
response (nothing but ``event: message`` and ``data:`` lines) and which ends right after
it. Anything else first (a notification, a server-initiated request, a keep-alive comment,
an event id for resumption) commits the answer to SSE, passed on byte for byte from there,
so progress and server requests still reach the client as they happen.
"""

import json
from typing import Any

from starlette.types import Message, Send

EVENT_STREAM = b"text/event-stream"
# Headers of the event stream that a JSON body does not carry (it gets its own length).
_STREAM_ONLY = {b"content-type", b"content-length", b"transfer-encoding", b"cache-control",
                b"connection", b"x-accel-buffering"}


def accepts_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        if key == b"accept":
            lowered = value.lower()
            return b"application/json" in lowered or b"*/*" in lowered
    return False


class JsonWhenAlone:
    """An ASGI `send` that holds a POST's event stream until it knows what it carries."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Message | None = None
        self._held = b""
        self._mode = "undecided"  # then "stream" (pass everything on) or "answered"

    async def __call__(self, message: Message) -> None:
        if self._mode == "stream":
            await self._send(message)
        elif self._mode == "answered":
            return  # the stream ended with the answer: nothing is left to send
        elif message["type"] == "http.response.start":
            if message.get("status") == 200 and _content_type(message).startswith(EVENT_STREAM):
                self._start = message
            else:
                await self._commit(message)
        elif message["type"] != "http.response.body" or self._start is None:
            await self._commit(message)
        else:
            self._held += message.get("body", b"")
            if message.get("more_body", False):
                if not _may_be_alone(self._held):
                    await self._commit({"type": "http.response.body", "body": b"", "more_body": True})
                return
            answer = _lone_answer(self._held)
            if answer is None:
                await self._commit({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await self._answer(answer)

    async def _commit(self, message: Message) -> None:
        """From here on the answer streams: what was held goes first, unchanged."""
        self._mode = "stream"
        if self._start is not None:
            await self._send(self._start)
            if self._held or message["type"] != "http.response.body":
                await self._send({"type": "http.response.body", "body": self._held, "more_body": True})
            self._held = b""
        if message["type"] != "http.response.body" or message.get("body") or not message.get("more_body", False):
            await self._send(message)

    async def _answer(self, body: bytes) -> None:
        assert self._start is not None
        self._mode = "answered"
        headers = [(k, v) for k, v in self._start.get("headers", []) if k.lower() not in _STREAM_ONLY]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _content_type(start: Message) -> bytes:
    for key, value in start.get("headers", []):
        if key.lower() == b"content-type":
            return bytes(value).lower()
    return b""


def _events(data: bytes) -> list[bytes] | None:
    """The complete events in `data` (None if one is not complete yet)."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not text.endswith(b"\n\n"):
        return None
    return [event for event in text.split(b"\n\n") if event]


def _may_be_alone(held: bytes) -> bool:
    """While the stream goes on: True until a complete event shows that it is not an answer
    alone (a second event, or a first one that is not a plain response)."""
    text = held.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    complete = [event for event in text.split(b"\n\n")[:-1] if event]
    if not complete:
        return True
    return len(complete) == 1 and _response_data(complete[0]) is not None


def _lone_answer(held: bytes) -> bytes | None:
    events = _events(held)
    if events is None or len(events) != 1:
        return None
    return _response_data(events[0])


def _response_data(event: bytes) -> bytes | None:
    """The data of an event that is one JSON-RPC response and nothing else, else None."""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"data":
            data.append(value)
        elif field != b"event" or value != b"message":
            return None  # an id, a retry, a comment, another event type: keep the stream
    body = b"\n".join(data)
    try:
        message: Any = json.loads(body)
    except ValueError:
        return None
    if not (isinstance(message, dict) and message.get("jsonrpc") == "2.0" and message.get("id") is not None
            and ("result" in message or "error" in message)):
        return None
    return body
