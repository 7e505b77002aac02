"""gateway: a POST answered by nothing but its response goes out as one JSON body, so that
the SDK client keeps its TLS connection; anything else streams as SSE, byte for byte."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from mcp_pki.gateway.answers import JsonWhenAlone
from tests.conftest import Cli
from tests.gateway_support import TIMEOUT, Gateway, RawClient, client_context, new_ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("answers-ca"), "Answers")
    cli.ok("issue", "client", "alice")
    return cli


@pytest.fixture(scope="module")
def gateway(pki: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("gateway")
    with Gateway(pki, "--as", "srv", log=folder / "gateway.log",
                 env={"TOOLBOX_SIDE_EFFECTS": str(folder / "appended.txt")}) as running:
        yield running


def test_a_lone_answer_is_json_and_a_call_with_a_notification_streams(pki: Cli, gateway: Gateway) -> None:
    client = RawClient(pki, pki.cwd / "alice", gateway.port)
    try:
        client.initialize()
        status, messages, headers = client.post(
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}})
        assert status == 200 and headers["content-type"] == "application/json"
        assert int(headers["content-length"]) > 0
        assert messages[0]["id"] == 7 and messages[0]["result"]["content"][0]["text"] == "hi"
        # `shout` logs to the client before it answers: the notification streams first.
        status, messages, headers = client.post(
            {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "shout", "arguments": {"text": "hey"}}})
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert [m.get("method") for m in messages] == ["notifications/message", None]
        assert messages[1]["id"] == 8 and messages[1]["result"]["content"][0]["text"] == "HEY"
    finally:
        client.close()


def test_the_sdk_client_keeps_its_tls_connection_across_calls(pki: Cli, gateway: Gateway, tmp_path: Path) -> None:
    """Over SSE the SDK client drops its connection after every answer (a handshake per call)."""
    context = client_context(pki, pki.cwd / "alice")
    calls = 12

    async def run() -> list[str]:
        with anyio.fail_after(60):
            http = httpx2.AsyncClient(verify=context, timeout=httpx2.Timeout(TIMEOUT, read=60))
            async with http, streamable_http_client(gateway.url, http_client=http) as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                texts = []
                for index in range(calls):
                    result = await session.call_tool("echo", {"text": str(index)})
                    texts.append(result.content[0].text)  # type: ignore[union-attr]
                return texts

    assert anyio.run(run) == [str(index) for index in range(calls)]
    # The POSTs share one connection; the session's GET stream may hold another.
    assert context.session_stats()["connect"] <= 3, context.session_stats()


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def _stream(chunks: list[bytes], status: int = 200, content_type: bytes = b"text/event-stream") -> list[dict[str, Any]]:
    recorder = _Recorder()
    send = JsonWhenAlone(recorder)

    async def run() -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type), (b"mcp-session-id", b"abc"),
                                (b"cache-control", b"no-store")]})
        for index, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1})

    anyio.run(run)
    return recorder.sent


def _body(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


ANSWER = {"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "a\nb"}]}}
NOTE = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}}


def _event(message: dict[str, Any], extra: bytes = b"") -> bytes:
    return extra + b"event: message\r\ndata: " + json.dumps(message).encode() + b"\r\n\r\n"


def test_a_lone_answer_split_across_writes_becomes_one_json_body_with_its_headers() -> None:
    event = _event(ANSWER)
    sent = _stream([event[:10], event[10:], b""])
    start = sent[0]
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json" and headers[b"mcp-session-id"] == b"abc"
    assert b"cache-control" not in headers
    assert json.loads(_body(sent)) == ANSWER and int(headers[b"content-length"]) == len(_body(sent))
    assert sent[-1]["more_body"] is False


@pytest.mark.parametrize("chunks", [
    [_event(NOTE), _event(ANSWER), b""],                 # a notification first
    [_event(NOTE) + _event(ANSWER)],                     # the same in one write
    [b": ping\r\n\r\n", _event(ANSWER), b""],           # a keep-alive comment first
    [_event(ANSWER, extra=b"id: 1\r\n"), b""],           # an event id: resumable, kept as is
    [_event(ANSWER), _event(NOTE), b""],                 # more after the answer
    [_event({"jsonrpc": "2.0", "id": 4, "method": "sampling/createMessage", "params": {}}), b""],
    [b"event: message\r\ndata: {not json\r\n\r\n", b""],
    [b""],                                               # nothing at all
])
def test_anything_but_a_lone_answer_streams_unchanged(chunks: list[bytes]) -> None:
    sent = _stream(chunks)
    assert dict(sent[0]["headers"])[b"content-type"] == b"text/event-stream"
    assert _body(sent) == b"".join(chunks)
    assert sent[-1]["more_body"] is False
    assert all(m["more_body"] for m in sent[1:-1])


def test_other_answers_pass_untouched() -> None:
    body = json.dumps(ANSWER).encode()
    for status, content_type in ((200, b"application/json"), (404, b"text/event-stream")):
        sent = _stream([body], status=status, content_type=content_type)
        assert sent[0]["status"] == status and dict(sent[0]["headers"])[b"content-type"] == content_type
        assert _body(sent) == body and sent[-1]["more_body"] is False
