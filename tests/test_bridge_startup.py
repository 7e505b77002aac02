"""bridge start-up: what a host's launch pays for before its `initialize` is answered.

Hosts start the bridge at every launch, so the `--cert/--key` path must not load what only
the CA side needs (SQLAlchemy, Jinja, YAML). Checked on a real launch over loopback, to the
answer, with the interpreter's own import log (`python -X importtime`), so that an import
that happens late (in the relay) counts too. Timing itself is scripts/bench-bridge's job.
"""

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import Cli
from tests.test_bridge import INITIALIZE, McpServer, bridge_env, new_ca, serve
from tests.test_tls_revocation import issue_client, issue_server

# Only the CA side needs these; the bridge with files needs none of them.
CA_SIDE = ("sqlalchemy", "alembic", "jinja2", "yaml")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("startup-ca"), "Startup")
    issue_server(cli)
    cli.ok("crl")  # a crl.pem in the home: the bridge's own revocation check runs too
    return cli


@pytest.fixture(scope="module")
def server(pki: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServer]:
    with serve(tmp_path_factory.mktemp("startup-server"), pki.cwd / "srv", pki.home / "ca.crt") as running:
        yield running


def imported_modules(importtime_log: str) -> set[str]:
    """Module names from ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    names = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_the_bridge_with_files_loads_nothing_of_the_ca_side(pki: Cli, server: McpServer) -> None:
    alice = issue_client(pki, "alice")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mcp_pki", "bridge", server.url,
         "--cert", str(alice / "tls.crt"), "--key", str(alice / "tls.key"), "--ca", str(alice / "ca.crt")],
        input=json.dumps(INITIALIZE) + "\n", capture_output=True, text=True, timeout=60, cwd=pki.cwd,
        env={**bridge_env(pki.home), "PYTHONDONTWRITEBYTECODE": "1"}, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.splitlines()[0])
    assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"] == "bridge-test-server"
    modules = imported_modules(result.stderr)
    # The log is real: the SDK, the HTTP client and our checks are in it.
    assert {"mcp.client.streamable_http", "httpx2", "mcp_pki.bridge.credentials", "mcp_pki.bridge.relay"} <= modules
    loaded = sorted(m for m in modules if m.split(".")[0] in CA_SIDE)
    assert loaded == [], loaded


def test_the_bridge_by_name_still_reads_the_inventory(pki: Cli, server: McpServer) -> None:
    """The other path, for contrast: ``--as REF`` needs the inventory, so SQLAlchemy loads."""
    issue_client(pki, "bob")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mcp_pki", "bridge", server.url, "--as", "bob"],
        input=json.dumps(INITIALIZE) + "\n", capture_output=True, text=True, timeout=60, cwd=pki.cwd,
        env={**bridge_env(pki.home), "PYTHONDONTWRITEBYTECODE": "1"}, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[0])["id"] == 1
    assert "sqlalchemy" in imported_modules(result.stderr)

