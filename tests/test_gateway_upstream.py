"""gateway --upstream, and the whole stack: host -> bridge -> gateway -> stdio server.

The upstream is the toolbox served over plain streamable HTTP by uvicorn on loopback; it
must see the verified identity in the X-Client-* headers, never a value a client sent.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Cli, listening
from tests.gateway_support import (
    TOOLBOX,
    CountingRelay,
    Gateway,
    client_context,
    dump,
    free_port,
    http_session,
    mtls_session,
    new_ca,
)
from tests.test_bridge import bridge_parameters


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("upstream-ca"), "Upstream")
    cli.ok("issue", "client", "alice", "--role", "analyst", "--role", "ops")
    return cli


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The toolbox over plain HTTP on 127.0.0.1, as an MCP server behind a front listens."""
    port = free_port()
    effects = tmp_path_factory.mktemp("effects") / "appended.txt"
    process = subprocess.Popen([sys.executable, TOOLBOX, "--http", str(port)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "TOOLBOX_SIDE_EFFECTS": str(effects)})
    try:
        assert listening(port, process), "the toolbox HTTP server did not start"
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def gateway(pki: Cli, http_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with Gateway(pki, "--as", "srv", "--upstream", http_server, command=[], log=log) as running:
        yield running


async def _conversation(session: ClientSession) -> dict[str, Any]:
    return {
        "tools": dump(await session.list_tools()),
        "echo": dump(await session.call_tool("echo", {"text": "relayed"})),
        "resources": dump(await session.list_resources()),
        "read": dump(await session.read_resource("db://tables")),
        "prompt": dump(await session.get_prompt("summarise", {"topic": "x"})),
    }


def test_upstream_results_equal_direct_http_and_identity_headers_are_ours(
    pki: Cli, http_server: str, gateway: Gateway,
) -> None:
    async def both() -> tuple[dict[str, Any], dict[str, Any], dict[str, str], dict[str, str]]:
        with anyio.fail_after(60):
            async with http_session(http_server) as session:
                direct = await _conversation(session)
            async with mtls_session(pki, pki.cwd / "alice", gateway.url) as session:
                relayed = await _conversation(session)
                seen = json.loads(dump(await session.call_tool("headers", {}))["content"][0]["text"])
            # A client that sends identity headers of its own: they never arrive.
            forged = {"X-Client-DN": "CN=admin", "X-Client-Verify": "SUCCESS", "X-Client-Serial": "01"}
            client = httpx2.AsyncClient(verify=client_context(pki, pki.cwd / "alice"), headers=forged)
            async with client, streamable_http_client(gateway.url, http_client=client) as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                after_forgery = json.loads(dump(await session.call_tool("headers", {}))["content"][0]["text"])
            return direct, relayed, seen, after_forgery

    direct, relayed, seen, after_forgery = anyio.run(both)
    assert relayed == direct
    serial = pki.ok("list", "--json", "--name", "alice").stdout
    alice = json.loads(serial)[0]
    assert seen["x-client-verify"] == "SUCCESS"
    assert seen["x-client-serial"] == alice["serial"].upper()
    assert "CN=alice" in seen["x-client-dn"] and "OU=analyst" in seen["x-client-dn"]
    assert len(seen["x-client-fingerprint"]) == 40
    assert after_forgery == seen


def test_the_gateway_keeps_its_connection_to_the_upstream_across_calls(
    pki: Cli, http_server: str, tmp_path: Path,
) -> None:
    """The SDK client closes an answer's event stream before its end; the gateway reads the
    rest, so its calls share a connection instead of opening one each."""
    relay = CountingRelay(int(http_server.split(":")[2].split("/")[0]))
    calls = 12
    try:
        with Gateway(pki, "--as", "srv", "--upstream", f"http://127.0.0.1:{relay.port}/mcp", command=[],
                     log=tmp_path / "gateway.log") as running:
            async def run() -> list[str]:
                with anyio.fail_after(60):
                    async with mtls_session(pki, pki.cwd / "alice", running.url) as session:
                        return [dump(await session.call_tool("echo", {"text": str(i)}))["content"][0]["text"]
                                for i in range(calls)]

            assert anyio.run(run) == [str(i) for i in range(calls)]
    finally:
        relay.close()
    # The POSTs share one connection; the session's GET stream and its DELETE may hold others.
    assert relay.accepted <= 4, f"{relay.accepted} connections for {calls} calls"


def test_a_host_reaches_a_stdio_server_through_bridge_and_gateway(pki: Cli, tmp_path: Path) -> None:
    """The MCP host entry the snippet targets write: the host launches `mcp-pki bridge URL
    --as alice`, which crosses mutual TLS to the gateway, which runs the stdio server."""
    with Gateway(pki, "--as", "srv", log=tmp_path / "gateway.log",
                 env={"TOOLBOX_SIDE_EFFECTS": str(tmp_path / "appended.txt")}) as gateway:
        async def host(errlog: TextIO) -> tuple[str, str]:
            with anyio.fail_after(60):
                parameters = bridge_parameters(pki, gateway.url, "--as", "alice")
                async with stdio_client(parameters, errlog=errlog) as (read, write), \
                        ClientSession(read, write) as session:
                    init = await session.initialize()
                    echoed = dump(await session.call_tool("echo", {"text": "end to end"}))
                    return init.server_info.name, echoed["content"][0]["text"]

        with open(tmp_path / "bridge.stderr", "w") as errlog:
            assert anyio.run(host, errlog) == ("toolbox", "end to end")
        assert gateway.stop() == 0
    assert "opened session" in (tmp_path / "gateway.log").read_text()
