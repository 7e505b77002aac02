"""gateway: a stdio MCP server behind mutual TLS, used through the MCP SDK's own client.

Real processes over loopback: the ``mcp-pki gateway`` console script, the SDK server in
tests/mcp_servers/toolbox.py as its upstream (a process per session), and the SDK client
presenting certificates our CA issued. Servers bind 127.0.0.1 only; every wait is bounded.
"""

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession

from tests.conftest import Cli
from tests.gateway_support import (
    SERVER_NAME,
    TIMEOUT,
    Gateway,
    dump,
    mtls_session,
    new_ca,
    stdio_session,
    toolbox_env,
    wait_until,
)
from tests.test_bridge import issue_expired_client

SESSION_TIMEOUT = 60.0
REFRESH = 1.0  # --crl-refresh, seconds


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("gateway-ca"), "Gateway")
    cli.ok("issue", "client", "alice", "--role", "analyst")
    cli.ok("issue", "client", "bob", "--role", "admin")
    return cli


@pytest.fixture(scope="module")
def side_effects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("effects") / "appended.txt"


@pytest.fixture(scope="module")
def gateway(pki: Cli, side_effects: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with Gateway(pki, "--as", "srv", "--crl-refresh", str(REFRESH), log=log, env={"TOOLBOX_SIDE_EFFECTS": str(side_effects)}) as running:
        yield running


async def _conversation(session: ClientSession, logs: list[Any]) -> dict[str, Any]:
    """Everything the toolbox offers, as plain data."""
    return {
        "tools": dump(await session.list_tools()),
        "echo": dump(await session.call_tool("echo", {"text": "through"})),
        "query": dump(await session.call_tool("query", {"sql": "select 1"})),
        "shout": dump(await session.call_tool("shout", {"text": "hey"})),
        "logs": list(logs),
        "unknown": dump(await session.call_tool("no_such_tool", {})),
        "resources": dump(await session.list_resources()),
        "templates": dump(await session.list_resource_templates()),
        "read": dump(await session.read_resource("db://tables")),
        "read_template": dump(await session.read_resource("db://table/users")),
        "prompts": dump(await session.list_prompts()),
        "prompt": dump(await session.get_prompt("summarise", {"topic": "sales"})),
    }


def test_results_through_the_gateway_equal_those_over_stdio(pki: Cli, gateway: Gateway, side_effects: Path) -> None:
    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        with anyio.fail_after(SESSION_TIMEOUT):
            direct_logs: list[Any] = []
            relayed_logs: list[Any] = []

            async def on_direct(params: Any) -> None:
                direct_logs.append(params.data)

            async def on_relayed(params: Any) -> None:
                relayed_logs.append(params.data)

            async with stdio_session(toolbox_env(side_effects), logging_callback=on_direct) as session:
                direct = await _conversation(session, direct_logs)
            async with mtls_session(pki, pki.cwd / "bob", gateway.url, logging_callback=on_relayed) as session:
                assert session.initialize_result is not None
                assert session.initialize_result.server_info.name == "toolbox"  # the upstream's own name
                relayed = await _conversation(session, relayed_logs)
            return direct, relayed

    direct, relayed = anyio.run(both)
    assert relayed == direct
    assert relayed["logs"] == ["shouting hey"]  # the notification made it through
    assert {t["name"] for t in relayed["tools"]["tools"]} >= {"echo", "query", "list_tables", "append"}


# --------------------------------------------------------------------------- refused at the handshake


def _exchange(port: int, context: ssl.SSLContext) -> bytes | BaseException:
    """Handshake, send a GET, read the answer's first bytes; a refusal is an error or EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
                tls.sendall(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return tls.recv(64)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as error:
            return error


def _context(cli: Cli, folder: Path | None, tls_version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cli.home / "ca.crt"))
    context.maximum_version = tls_version
    if folder is not None:
        context.load_cert_chain(str(folder / "tls.crt"), str(folder / "tls.key"))
    return context


@pytest.fixture(scope="module")
def strangers(pki: Cli, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Certificates the gateway must refuse, each for another reason."""
    other = new_ca(tmp_path_factory.mktemp("other-ca"), "Other")
    other.ok("issue", "client", "eve")
    pki.ok("issue", "client", "mallory")
    pki.ok("revoke", "mallory")
    return {
        "another CA": other.cwd / "eve",
        "a server certificate": pki.cwd / "srv",
        "expired": issue_expired_client(pki, "old-timer"),
        "revoked": pki.cwd / "mallory",
    }


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_handshake_refuses_what_is_not_a_valid_client_certificate_of_ours(
    pki: Cli, gateway: Gateway, strangers: dict[str, Path], tls_version: ssl.TLSVersion,
) -> None:
    wait_until(lambda: "reloaded the CRL" in gateway.stderr() or True, "the CRL")  # loaded at start or since
    time.sleep(2 * REFRESH)  # the revocation above is picked up by now
    accepted = _exchange(gateway.port, _context(pki, pki.cwd / "bob", tls_version))
    assert isinstance(accepted, bytes) and accepted.startswith(b"HTTP/1.1 "), accepted
    cases = {"no certificate": None, **strangers}
    for case, folder in cases.items():
        outcome = _exchange(gateway.port, _context(pki, folder, tls_version))
        if tls_version == ssl.TLSVersion.TLSv1_2:
            # TLS 1.2 settles the client certificate inside the handshake itself.
            assert isinstance(outcome, ssl.SSLError), (case, outcome)
        else:
            assert isinstance(outcome, ssl.SSLError | ConnectionResetError) or outcome == b"", (case, outcome)
