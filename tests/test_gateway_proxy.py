"""gateway --upstream: sessions relayed to an HTTP MCP server behave as those with a stdio one.

Each session is the gateway's own, owned by the certificate that opened it and mapped to the
server's; it ends on DELETE, idleness, revocation and shutdown. Answers stream through as
the server writes them: a notification before an answer arrives as an event before it.
"""

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.gateway_support import Gateway, RawClient, new_ca, toolbox_behind, wait_until

REFRESH = 0.5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("proxy-ca"), "Proxy")
    for name in ("alice", "bob", "carol"):
        cli.ok("issue", "client", name)
    return cli


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    with toolbox_behind("upstream", tmp_path_factory.mktemp("effects") / "appended.txt") as (args, _command):
        yield args


def test_a_session_belongs_to_its_certificate_streams_its_events_and_ends_on_delete(
        pki: Cli, upstream: list[str], tmp_path: Path) -> None:
    with Gateway(pki, "--as", "srv", *upstream, "--audit-log", str(tmp_path / "calls.jsonl"), command=[],
                 log=tmp_path / "gateway.log") as gateway:
        alice, bob = RawClient(pki, pki.cwd / "alice", gateway.port), RawClient(pki, pki.cwd / "bob", gateway.port)
        try:
            alice.initialize()
            assert alice.session is not None and len(alice.session) == 32  # the gateway's id, not the server's
            status, messages, _ = bob.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, session=alice.session)
            assert status == 404, (status, messages)
            # The notification `shout` sends before answering reaches the client first, as an event.
            status, messages, headers = alice.post(
                {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "shout", "arguments": {"text": "hi"}}})
            assert status == 200 and headers["content-type"].startswith("text/event-stream"), headers
            assert [m.get("method") for m in messages] == ["notifications/message", None]
            assert messages[1]["result"]["content"][0]["text"] == "HI"
            assert alice.delete() == 200
            status, _answer = alice.request("ping")
            assert status == 404
        finally:
            alice.close()
            bob.close()
        wait_until(lambda: "the client ended it" in gateway.stderr(), "the session's end in the log")
        calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
        calls = [c for c in calls if "checkpoint" not in c]
        assert [(c["name"], c["method"], c["decision"]) for c in calls] == [
            ("alice", "initialize", "allowed"), ("bob", "ping", "denied"), ("alice", "tools/call", "allowed"),
            ("alice", "ping", "denied")]


def test_idle_and_revoked_sessions_end_and_shutdown_is_prompt(pki: Cli, upstream: list[str], tmp_path: Path) -> None:
    with Gateway(pki, "--as", "srv", *upstream, "--session-idle", "2s", "--crl-refresh", str(REFRESH), command=[],
                 log=tmp_path / "gateway.log") as gateway:
        alice, carol = RawClient(pki, pki.cwd / "alice", gateway.port), RawClient(pki, pki.cwd / "carol", gateway.port)
        try:
            alice.initialize()
            wait_until(lambda: "idle for 2 s" in gateway.stderr(), "the idle end", timeout=10)
            assert alice.request("ping")[0] == 404
            carol.initialize()
            assert carol.call("echo", text="before")[0] == 200
            pki.ok("revoke", "carol")
            wait_until(lambda: carol.request("ping")[0] == 403, "carol refused", timeout=4 * REFRESH + 5)
            wait_until(lambda: "has been revoked" in gateway.stderr() and "closed session" in gateway.stderr(),
                       "the revoked session's end")
            alice.session = None
            alice.initialize()  # a session open at shutdown
            started = time.monotonic()
            assert gateway.stop(signal.SIGTERM) == 0
            assert time.monotonic() - started < 10
        finally:
            alice.close()
            carol.close()
        log = gateway.stderr()
        assert "the gateway is stopping" in log and "Traceback" not in log


def test_one_certificate_cannot_take_every_session_place(pki: Cli, upstream: list[str], tmp_path: Path) -> None:
    with Gateway(pki, "--as", "srv", *upstream, "--max-sessions", "4", "--max-sessions-per-client", "2",
                 command=[], log=tmp_path / "gateway.log") as gateway:
        clients = [RawClient(pki, pki.cwd / "alice", gateway.port) for _ in range(3)]
        bob = RawClient(pki, pki.cwd / "bob", gateway.port)
        try:
            clients[0].initialize()
            clients[1].initialize()
            status, messages, _ = clients[2].post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}})
            assert status == 503 and "for this client certificate" in messages[0]["error"]["message"]
            bob.initialize()  # another certificate still gets a place
            assert bob.call("echo", text="bob")[0] == 200
        finally:
            for client in [*clients, bob]:
                client.close()
        assert "(--max-sessions-per-client)" in gateway.stderr()
