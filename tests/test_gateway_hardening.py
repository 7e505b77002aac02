"""gateway: what an adversarial review found, each case through a real gateway process over
loopback. A policy file PyYAML cannot construct, two requests with one id, notifications of
guarded methods, an older CRL, a non-ASCII subject through --upstream, absurd --crl-refresh
values and requests that open no session."""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, Result, assert_clean_error, listening
from tests.gateway_support import (
    MCP_PKI,
    MODES,
    SERVER_NAME,
    TIMEOUT,
    TOOLBOX,
    Gateway,
    RawClient,
    free_port,
    new_ca,
    toolbox_behind,
    wait_until,
)

REFRESH = 0.5

POLICY = "default: allow\nroles:\n  analyst: {tools: [echo, append]}\n"

# Files that parse as YAML but that PyYAML's constructors cannot build.
UNCONSTRUCTIBLE = {
    "impossible-date.yaml": "default: deny\nroles:\n  analyst: {tools: [query, 2026-02-30]}\n",
    "month-13.yaml": "default: deny\nroles:\n  analyst: {tools: [2026-13-01]}\n",
    "deep.yaml": "default: deny\nroles: " + "[" * 5000 + "]" * 5000 + "\n",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("hardening-ca"), "Hardening")
    cli.ok("issue", "client", "alice", "--role", "analyst")
    cli.ok("issue", "client", "bob")
    return cli


def _run_gateway(cli: Cli, *args: str) -> Result:
    """The console script, bounded: a case that wrongly starts serving fails instead of hanging."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TLS_")}
    try:
        done = subprocess.run([MCP_PKI, "gateway", *args, "--", sys.executable, TOOLBOX], check=False,
                              capture_output=True, text=True, timeout=30, env={**base, "MCP_PKI_HOME": str(cli.home)})
    except subprocess.TimeoutExpired:
        raise AssertionError(f"mcp-pki gateway {' '.join(args)} started serving instead of failing") from None
    return Result(done.returncode, done.stdout, done.stderr, None)


def test_an_unconstructible_policy_at_start_is_one_clean_error(pki: Cli, tmp_path: Path) -> None:
    for name, text in UNCONSTRUCTIBLE.items():
        (tmp_path / name).write_text(text)
        assert_clean_error(_run_gateway(pki, "--as", "srv", "--listen", "127.0.0.1:1", "--policy", str(tmp_path / name)),
                           "is not valid YAML")


@pytest.fixture(scope="module", params=MODES)
def policy_gateway(request: pytest.FixtureRequest, pki: Cli,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    """A gateway with a policy, a tool-call log (calls.jsonl) and a side-effect file
    (appended.txt) beside the policy file, in front of a stdio server or an HTTP one."""
    folder = tmp_path_factory.mktemp("policy-gateway")
    policy = folder / "policy.yaml"
    policy.write_text(POLICY)
    with toolbox_behind(request.param, folder / "appended.txt") as (upstream, command), \
            Gateway(pki, "--as", "srv", "--crl-refresh", str(REFRESH), "--policy", str(policy),
                    "--audit-log", str(folder / "calls.jsonl"), *upstream, command=command, log=folder / "gateway.log",
                    env={"TOOLBOX_SIDE_EFFECTS": str(folder / "appended.txt")}) as running:
        yield running, policy


def test_an_unconstructible_policy_at_reload_keeps_the_gateway_serving(
        pki: Cli, policy_gateway: tuple[Gateway, Path]) -> None:
    gateway, policy = policy_gateway
    for count, text in enumerate(UNCONSTRUCTIBLE.values(), start=1):
        policy.write_text(text)
        wait_until(lambda: gateway.stderr().count("keeping the previous policy") >= count,  # noqa: B023
                   "the refused reload", timeout=10 * REFRESH + 5)
        assert gateway.process is not None and gateway.process.poll() is None, gateway.stderr()
    time.sleep(3 * REFRESH)  # later ticks run on
    assert gateway.process is not None and gateway.process.poll() is None, gateway.stderr()
    assert "Traceback" not in gateway.stderr()
    alice = RawClient(pki, pki.cwd / "alice", gateway.port)
    try:
        alice.initialize()
        status, answer = alice.call("echo", text="still serving")
        assert status == 200 and answer is not None and answer["result"]["content"][0]["text"] == "still serving"
    finally:
        alice.close()
    # A good edit afterwards is taken: the watcher is alive.
    policy.write_text(POLICY.replace("default: allow", "default: deny"))
    reloads = gateway.stderr().count("reloaded the policy")
    wait_until(lambda: gateway.stderr().count("reloaded the policy") > reloads, "the policy reload",
               timeout=10 * REFRESH + 5)
    policy.write_text(POLICY)  # and back, before the next test uses this gateway
    wait_until(lambda: gateway.stderr().count("reloaded the policy") > reloads + 1, "the policy put back",
               timeout=10 * REFRESH + 5)


def _calls(folder: Path) -> list[dict[str, object]]:
    path = folder / "calls.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [line for line in lines if "checkpoint" not in line]  # the calls, not the signed checkpoints


def test_a_request_reusing_a_pending_id_is_refused_and_never_forwarded(
        pki: Cli, policy_gateway: tuple[Gateway, Path]) -> None:
    """Answers, list filtering and the audit line find their request by id: a second request
    under a pending id must not take the first one's place."""
    gateway, policy = policy_gateway
    folder = policy.parent
    first = RawClient(pki, pki.cwd / "bob", gateway.port)  # no role: default allow
    second = RawClient(pki, pki.cwd / "bob", gateway.port)
    try:
        first.initialize()
        second.session = first.session
        assert first.connection.sock is not None
        first.connection.sock.settimeout(5)  # bounded, should its answer be lost
        first_answers: list[object] = []
        waiting = threading.Thread(target=lambda: _quietly(lambda: first_answers.append(first.post(
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "wait", "arguments": {"seconds": 1.5}}}))))
        waiting.start()
        effects = folder / "appended.txt"
        wait_until(lambda: "waiting 1.5 s" in (effects.read_text() if effects.exists() else ""),
                   "the first call pending at the server")
        status, messages, _ = second.post({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                           "params": {"name": "append", "arguments": {"line": "reused id"}}})
        waiting.join(10)
        assert not waiting.is_alive()
        assert status == 200 and len(messages) == 1, (status, messages)
        assert messages[0]["id"] == 7 and messages[0]["error"]["code"] == -32600, messages
        assert "in use" in messages[0]["error"]["message"]
        # The first request still gets its own answer.
        assert len(first_answers) == 1, "the first request's answer was lost"
        first_status, first_messages, _ = first_answers[0]  # type: ignore[misc]
        assert first_status == 200 and first_messages[-1]["id"] == 7 and "result" in first_messages[-1], first_messages
        assert "reused id" not in (effects.read_text() if effects.exists() else "")
        # Both calls are in the log as what they were: the first allowed, the second refused.
        wait_until(lambda: any(c["target"] == "wait" for c in _calls(folder)), "the first call's line")
        session = [c for c in _calls(folder) if c["session"] == first.session and c["method"] == "tools/call"]
        assert [(c["target"], c["decision"]) for c in session] == [("append", "denied"), ("wait", "allowed")], session
        # The session goes on: the id is free again once answered.
        status, answer = second.request("tools/call", {"name": "echo", "arguments": {"text": "after"}})
        assert status == 200 and answer is not None and answer["result"]["content"][0]["text"] == "after", answer
    finally:
        first.close()
        second.close()


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except OSError:
        pass  # no answer within the socket's timeout: the test says so


def test_a_guarded_method_sent_as_a_notification_is_dropped_and_recorded(
        pki: Cli, policy_gateway: tuple[Gateway, Path]) -> None:
    """Without an id a tools/call would pass the policy and the audit unchecked."""
    gateway, policy = policy_gateway
    folder = policy.parent
    client = RawClient(pki, pki.cwd / "bob", gateway.port)
    try:
        client.initialize()
        for line, extra in (("no id", {}), ("null id", {"id": None})):
            status, messages, _ = client.post({"jsonrpc": "2.0", "method": "tools/call", **extra,
                                               "params": {"name": "append", "arguments": {"line": line}}})
            assert status == 202 and messages == [], (status, messages)
        # The notification still allowed through: the client's own kind.
        status, _messages, _ = client.post({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
        assert status == 202
        status, answer = client.request("tools/call", {"name": "echo", "arguments": {"text": "in order"}})
        assert status == 200 and answer is not None and answer["result"]["content"][0]["text"] == "in order"
        effects = folder / "appended.txt"
        assert not {"no id", "null id"} & set((effects.read_text() if effects.exists() else "").splitlines())
        session = [c for c in _calls(folder) if c["session"] == client.session]
        assert [(c["method"], c["target"], c["decision"]) for c in session if c["decision"] == "denied"] == [
            ("tools/call", "append", "denied"), ("tools/call", "append", "denied")], session
        assert gateway.stderr().count("dropped a tools/call notification from bob") == 2
    finally:
        client.close()


def test_an_older_crl_put_back_is_refused_and_revoked_clients_stay_out(
        pki: Cli, policy_gateway: tuple[Gateway, Path]) -> None:
    """A validly signed CRL from before a revocation must not un-revoke anyone."""
    gateway, _policy = policy_gateway
    name = f"carol-{gateway.port}"  # a new client for each gateway of the module
    pki.ok("issue", "client", name)
    crl = pki.home / "crl.pem"
    before = crl.read_bytes()
    carol = RawClient(pki, pki.cwd / name, gateway.port)
    try:
        carol.initialize()
        reloads = gateway.stderr().count("reloaded the CRL file")
        pki.ok("revoke", name)
        wait_until(lambda: gateway.stderr().count("reloaded the CRL file") > reloads, "the CRL reload",
                   timeout=10 * REFRESH + 5)
        status, _answer = carol.call("echo", text="revoked")
        assert status == 403  # and her connection stays open
        rolled_back = crl.with_name("crl.pem.old")
        rolled_back.write_bytes(before)
        os.replace(rolled_back, crl)
        wait_until(lambda: "older than the one in force" in gateway.stderr(), "the refused rollback",
                   timeout=10 * REFRESH + 5)
        assert "keeping the previous CRLs" in gateway.stderr()
        # On the connection she holds, the request check still refuses her: the revoked set in
        # force is the newer one.
        carol.session = None
        status, _answer = carol.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                                       "clientInfo": {"name": "raw", "version": "1"}})
        assert status == 403
        refused = [(c["method"], c["target"]) for c in _calls(_policy.parent)
                   if c["name"] == name and c["decision"] == "denied"]
        assert refused == [("tools/call", "echo"), ("initialize", None)], refused  # both 403s
        # And a new handshake (OpenSSL keeps the newest CRL it was given).
        with pytest.raises(OSError):
            RawClient(pki, pki.cwd / name, gateway.port).initialize()
    finally:
        carol.close()


def test_a_non_ascii_subject_reaches_the_upstream_escaped_as_nginx_writes_it(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("unicode-ca")
    cli = Cli(folder / "home", folder / "work")
    cli.cwd.mkdir(parents=True)
    cli.ok("init-ca", "--name", "Unicode", "--org", "Société Générale")
    cli.ok("issue", "server", "srv", "--dns", SERVER_NAME, "--ip", "127.0.0.1")
    cli.ok("issue", "client", "zoe")
    port = free_port()
    upstream = subprocess.Popen([sys.executable, TOOLBOX, "--http", str(port)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "TOOLBOX_SIDE_EFFECTS": str(folder / "appended.txt")})
    try:
        assert listening(port, upstream), "the toolbox HTTP server did not start"
        with Gateway(cli, "--as", "srv", "--upstream", f"http://127.0.0.1:{port}/mcp", command=[],
                     log=folder / "gateway.log") as gateway:
            client = RawClient(cli, cli.cwd / "zoe", gateway.port)
            try:
                client.initialize()
                status, answer = client.call("headers")
            finally:
                client.close()
            assert status == 200 and answer is not None and "result" in answer, (answer, gateway.stderr())
            seen = json.loads(answer["result"]["content"][0]["text"])
            assert seen["x-client-verify"] == "SUCCESS"
            dn = seen["x-client-dn"]
            assert dn.isascii(), dn
            assert "CN=zoe" in dn and "O=Soci\\C3\\A9t\\C3\\A9 G\\C3\\A9n\\C3\\A9rale" in dn, dn
            assert "Traceback" not in gateway.stderr()
    finally:
        upstream.terminate()
        upstream.wait(10)


def test_a_crl_refresh_that_is_not_a_sane_number_of_seconds_is_refused(pki: Cli) -> None:
    for value in ("inf", "nan", "-1", "0", "0.01", "1e9"):
        assert_clean_error(_run_gateway(pki, "--as", "srv", "--listen", "127.0.0.1:1", "--crl-refresh", value),
                           "invalid --crl-refresh")


def test_requests_that_open_no_session_hold_no_place(pki: Cli, tmp_path: Path) -> None:
    """With --max-sessions 1, bodies that are not an initialize and an initialize the transport
    refuses (an Accept header without event streams) leave the one place free."""
    with Gateway(pki, "--as", "srv", "--max-sessions", "1", "--audit-log", str(tmp_path / "calls.jsonl"),
                 log=tmp_path / "gateway.log",
                 env={"TOOLBOX_SIDE_EFFECTS": str(tmp_path / "appended.txt")}) as gateway:
        client = RawClient(pki, pki.cwd / "bob", gateway.port)
        try:
            initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
            for body in ({}, [], {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                         {"jsonrpc": "2.0", "method": "initialize"}):
                status, _messages, headers = client.post(body)  # type: ignore[arg-type]
                assert status == 400 and "mcp-session-id" not in headers, (body, status)
            client.connection.request("POST", "/mcp", json.dumps(initialize).encode(),
                                      {"Content-Type": "application/json", "Accept": "application/json"})
            refused = client.connection.getresponse()
            refused.read()
            assert refused.status == 406, refused.status
            client.initialize()  # the place is still free
            status, answer = client.call("echo", text="one place")
            assert status == 200 and answer is not None and answer["result"]["content"][0]["text"] == "one place"
            # The place taken, the next initialize is refused (503), and that is in the log too.
            second = RawClient(pki, pki.cwd / "alice", gateway.port)
            try:
                status, _messages, _ = second.post(initialize)
            finally:
                second.close()
            assert status == 503
            refused = [c for c in _calls(tmp_path) if c["decision"] == "denied"]
            assert [(c["name"], c["method"], c["session"]) for c in refused] == [("alice", "initialize", None)], refused
        finally:
            client.close()


def test_calls_unanswered_when_a_session_ends_or_cancelled_get_their_line(
        pki: Cli, policy_gateway: tuple[Gateway, Path]) -> None:
    gateway, policy = policy_gateway
    folder = policy.parent

    effects = folder / "appended.txt"

    def waiting() -> int:
        return (effects.read_text() if effects.exists() else "").count("waiting 20 s")

    def pending_call(client: RawClient, request_id: int) -> threading.Thread:
        assert client.connection.sock is not None
        client.connection.sock.settimeout(3)  # no answer comes: bounded
        before = waiting()
        thread = threading.Thread(target=lambda: _quietly(lambda: client.post(
            {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
             "params": {"name": "wait", "arguments": {"seconds": 20}}})))
        thread.start()
        wait_until(lambda: waiting() > before, "the call pending at the server")
        return thread

    def lines(session: str | None) -> list[tuple[object, object]]:
        return [(c["target"], c["outcome"]) for c in _calls(folder)
                if c["session"] == session and c["method"] == "tools/call"]

    caller, other = RawClient(pki, pki.cwd / "bob", gateway.port), RawClient(pki, pki.cwd / "bob", gateway.port)
    try:
        caller.initialize()
        other.session = caller.session
        thread = pending_call(caller, 11)
        status, _messages, _ = other.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                           "params": {"requestId": 11, "reason": "changed my mind"}})
        assert status == 202
        wait_until(lambda: lines(caller.session) == [("wait", "cancelled")], "the cancelled call's line")
        thread.join(10)
        caller.close()
        caller = RawClient(pki, pki.cwd / "bob", gateway.port)
        caller.initialize()
        other.session = caller.session
        thread = pending_call(caller, 12)
        assert other.delete() == 200
        wait_until(lambda: lines(caller.session) == [("wait", "error")], "the ended session's line")
        thread.join(10)
    finally:
        caller.close()
        other.close()


def test_a_request_on_another_certificates_session_is_in_the_log_as_denied(
        pki: Cli, policy_gateway: tuple[Gateway, Path]) -> None:
    gateway, policy = policy_gateway
    owner, thief = RawClient(pki, pki.cwd / "bob", gateway.port), RawClient(pki, pki.cwd / "alice", gateway.port)
    try:
        owner.initialize()
        status, _messages, _ = thief.post({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                           "params": {"name": "append", "arguments": {"line": "stolen"}}},
                                          session=owner.session)
        assert status == 404
        refused = [c for c in _calls(policy.parent) if c["session"] == owner.session and c["name"] == "alice"]
        assert [(c["method"], c["target"], c["decision"]) for c in refused] == [("tools/call", "append", "denied")]
    finally:
        owner.close()
        thief.close()


def test_an_http_upstream_that_is_down_is_a_json_rpc_error_and_frees_the_session(
        pki: Cli, tmp_path: Path) -> None:
    """Nothing listening behind --upstream, then a server that dies mid-session: each waiting
    request gets a JSON-RPC error naming the server, the log one line (no traceback), and the
    session its end, so that it holds no --max-sessions place."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with Gateway(pki, "--as", "srv", "--upstream", url, "--max-sessions", "1", "--audit-log",
                 str(tmp_path / "calls.jsonl"), command=[], log=tmp_path / "gateway.log") as gateway:
        for _attempt in range(2):  # the second would get 503 if the first held its place
            client = RawClient(pki, pki.cwd / "alice", gateway.port)
            try:
                status, messages, _ = client.post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
            finally:
                client.close()
            assert status == 200 and messages[0]["id"] == 1, (status, messages)
            assert messages[0]["error"]["code"] == -32000
            assert f"the MCP server at {url} cannot be reached" in messages[0]["error"]["message"]
        wait_until(lambda: gateway.stderr().count("cannot be reached") >= 4, "the sessions' ends in the log")

        # Now a server that answers, then dies under an open session.
        upstream = subprocess.Popen([sys.executable, TOOLBOX, "--http", str(port)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "TOOLBOX_SIDE_EFFECTS": str(tmp_path / "appended.txt")})
        try:
            assert listening(port, upstream), "the toolbox HTTP server did not start"
            client = RawClient(pki, pki.cwd / "alice", gateway.port)
            client.initialize()
            assert client.call("echo", text="up")[1]["result"]["content"][0]["text"] == "up"  # type: ignore[index]
        finally:
            upstream.kill()
            upstream.wait(10)
        try:
            status, answer = client.call("echo", text="down")
        finally:
            client.close()
        assert answer is not None and answer["error"]["code"] == -32000, answer
        assert "cannot be reached" in answer["error"]["message"]
        stderr = gateway.stderr()
    assert "Traceback" not in stderr and "a bug" not in stderr, stderr
    lines = _calls(tmp_path)
    assert [(line["method"], line["outcome"]) for line in lines if line["method"] != "notifications/initialized"] == [
        ("initialize", "error"), ("initialize", "error"), ("initialize", "ok"), ("tools/call", "ok"),
        ("tools/call", "error")]


def test_idle_and_slow_connections_cannot_use_up_the_gateways_file_descriptors(
        pki: Cli, tmp_path: Path) -> None:
    """Under a low open-file limit the gateway accepts as many connections as fit, closes
    the ones past that at once, closes a connection whose request head does not complete
    in time, and goes on serving."""
    import re
    import socket
    import ssl

    from mcp_pki.gateway.server import HEAD_TIMEOUT
    from tests.gateway_support import client_context

    context = client_context(pki, pki.cwd / "alice")

    def connect(port: int) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        return context.wrap_socket(raw, server_hostname=SERVER_NAME)

    def closed_by_server(conn: ssl.SSLSocket, within: float) -> bool:
        conn.settimeout(within)
        try:
            return conn.recv(1) == b""
        except (ssl.SSLError, ConnectionError):
            return True
        except TimeoutError:
            return False

    with Gateway(pki, "--as", "srv", "--max-sessions", "1", log=tmp_path / "gateway.log",
                 open_files=100) as gateway:
        pattern = r"accepting up to (\d+) connections at once \(open-file limit 100\)"
        wait_until(lambda: re.search(pattern, gateway.stderr()) is not None, "the connection limit in the log")
        found = re.search(pattern, gateway.stderr())
        assert found is not None
        limit = int(found.group(1))
        assert 16 <= limit <= 40
        slow = connect(gateway.port)
        slow.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        slow_since = time.monotonic()
        idle = [connect(gateway.port) for _ in range(limit - 1)]
        try:
            extra = connect(gateway.port)
            assert closed_by_server(extra, 5.0), "a connection past the limit was kept"
            extra.close()
            wait_until(lambda: "refused 1 connection(s)" in gateway.stderr(), "the refusal in the log")
            for conn in idle[:4]:
                conn.close()
            del idle[:4]
            client = RawClient(pki, pki.cwd / "alice", gateway.port)
            try:
                client.initialize()
                assert client.call("echo", text="still here")[1]["result"]["content"][0]["text"] == "still here"  # type: ignore[index]
            finally:
                client.close()
            assert closed_by_server(slow, HEAD_TIMEOUT + 5 - (time.monotonic() - slow_since)), \
                "a connection kept sending no complete head"
            assert time.monotonic() - slow_since >= HEAD_TIMEOUT - 1
            assert "no complete request head" in gateway.stderr()
        finally:
            for conn in [slow, *idle]:
                conn.close()
        assert "Traceback" not in gateway.stderr()


def test_a_cancelled_list_is_still_filtered_and_recorded_once(
        pki: Cli, policy_gateway: tuple[Gateway, Path]) -> None:
    """A server may answer a request the client cancelled: the answer must be filtered all
    the same (an analyst cancelling her own tools/list saw every tool)."""
    gateway, policy = policy_gateway
    lister, canceller = RawClient(pki, pki.cwd / "alice", gateway.port), RawClient(pki, pki.cwd / "alice", gateway.port)
    seen: list[set[str]] = []
    try:
        lister.initialize()
        canceller.session = lister.session
        for request_id in range(100, 108):
            def cancel(request_id: int = request_id) -> None:
                canceller.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                "params": {"requestId": request_id}})

            thread = threading.Thread(target=cancel)
            thread.start()
            _status, messages, _ = lister.post({"jsonrpc": "2.0", "id": request_id, "method": "tools/list"})
            thread.join(TIMEOUT)
            for message in messages:
                if message.get("id") == request_id and "result" in message:
                    seen.append({tool["name"] for tool in message["result"]["tools"]})
    finally:
        lister.close()
        canceller.close()
    assert all(names <= {"echo", "append"} for names in seen), seen
    lines = [c for c in _calls(policy.parent) if c["session"] == lister.session and c["method"] == "tools/list"]
    assert len(lines) == 8 and {c["outcome"] for c in lines} <= {"ok", "cancelled"}, lines


def test_messages_that_are_two_kinds_at_once_or_have_bad_ids_are_refused_cleanly(
        pki: Cli, policy_gateway: tuple[Gateway, Path]) -> None:
    """A tools/call that also carries "error" is a response to a parser that looks at the
    members, a request to one that looks at "method": it never reaches the server as either."""
    gateway, policy = policy_gateway
    client = RawClient(pki, pki.cwd / "alice", gateway.port)
    try:
        client.initialize()
        for smuggled in (
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "error": {"code": 0, "message": "x"},
             "params": {"name": "append", "arguments": {"line": "smuggled"}}},
            {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "result": {},
             "params": {"name": "append", "arguments": {"line": "smuggled"}}},
            {"jsonrpc": "2.0", "id": [1], "method": "ping"},
            {"jsonrpc": "2.0", "id": True, "method": "ping"},
        ):
            status, _messages, _ = client.post(smuggled)
            assert status in (200, 202, 400), (smuggled, status)
        status, answer = client.call("echo", text="after")
        assert status == 200 and answer is not None and answer["result"]["content"][0]["text"] == "after"
    finally:
        client.close()
    # Whatever a message was taken for, the server ran no call the gateway did not check and
    # record: each append that ran has its allowed line (alice may append).
    effects = policy.parent / "appended.txt"
    ran = (effects.read_text() if effects.exists() else "").splitlines().count("smuggled")
    recorded = [c for c in _calls(policy.parent) if c["session"] == client.session and c["target"] == "append"
                and c["decision"] == "allowed"]
    assert ran <= len(recorded), (ran, recorded)
    if "--upstream" in gateway.args:  # refused there as malformed: each attempt is on record
        refused = [c for c in _calls(policy.parent) if c["session"] == client.session and c["target"] == "append"
                   and c["decision"] == "denied"]
        assert len(refused) == 2, refused
    assert "Traceback" not in gateway.stderr()


@pytest.mark.parametrize("ending", [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n", b"\r\r\n"])
def test_an_event_ends_at_any_blank_line_sse_allows(ending: bytes) -> None:
    from mcp_pki.gateway.proxy import _EVENT_END

    line_end = ending[:2] if ending.startswith(b"\r\n") else ending[:1]
    stream = b"event: message" + line_end + b'data: {"id": 1}' + ending + b"data: next"
    found = _EVENT_END.search(stream)
    assert found is not None and stream[found.end():] == b"data: next", ending
    assert _EVENT_END.search(b"data: one\r\ndata: two\r\n") is None  # CRLF is one line end
