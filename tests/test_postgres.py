"""The inventory on PostgreSQL, as a team shares it: a real server on loopback."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSPHRASE, VENV_BIN, Cli

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None) if Path("/usr/lib/postgresql").exists() else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway cluster owned by the postgres user (the server refuses to run as root);
    its folder is outside pytest's private temporary tree, which that user cannot enter."""
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL server binaries are absent: .ci/run installs Debian's postgresql")
    pytest.importorskip("psycopg")
    folder = Path(tempfile.mkdtemp(prefix="mcp-pki-pg."))
    data = folder / "data"
    try:
        yield from _serve(folder, data)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _serve(folder: Path, data: Path) -> Iterator[str]:
    assert PG_BIN is not None
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres")
    subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=120)
    port = _free_port()
    server = subprocess.Popen(
        [*as_postgres, str(PG_BIN / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
         "-k", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             check=False, capture_output=True).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, "postgres did not start"
            time.sleep(0.1)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        server.terminate()
        server.wait(30)


def _fresh_database(admin_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def test_the_whole_lifecycle_runs_on_postgresql(postgres: str, mcp: Cli) -> None:
    url = _fresh_database(postgres, "lifecycle")
    env = {"MCP_PKI_DB": url}
    mcp.ok("init-ca", "--name", "Team", "--org", "Example", env=env)
    alice = json.loads(mcp.ok("issue", "client", "alice", "--role", "admin", "--json", env=env).stdout)
    mcp.ok("issue", "server", "files", "--dns", "files.example.com", env=env)
    mcp.ok("revoke", "alice", "--reason", "key-compromise", env=env)
    shown = json.loads(mcp.ok("show", alice["serial"], "--json", env=env).stdout)
    assert shown["status"] == "revoked" and shown["revocation_reason"] == "key-compromise"
    assert "revoked (key-compromise)" in mcp("verify", "alice/tls.crt", env=env).stderr
    mcp.ok("renew", "files", "--out", "files2", "--revoke-old", env=env)
    mcp.ok("crl", env=env)
    assert mcp("status", env=env).exit_code == 0
    mcp.ok("audit", "verify", env=env)
    assert not mcp.db.exists()  # nothing went to the default SQLite file


def test_concurrent_issuers_share_one_postgresql_inventory(postgres: str, mcp: Cli) -> None:
    url = _fresh_database(postgres, "concurrent")
    mcp.ok("init-ca", "--name", "Team", env={"MCP_PKI_DB": url})
    env = {**os.environ, "MCP_PKI_HOME": str(mcp.home), "MCP_PKI_DB": url, "MCP_PKI_PASSPHRASE": PASSPHRASE}
    processes = [
        subprocess.Popen([str(VENV_BIN / "mcp-pki"), "issue", "client", f"agent{i}", "--json"], cwd=mcp.cwd,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(6)
    ]
    serials = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        serials.append(json.loads(out)["serial"])
    assert len(set(serials)) == 6
    listed = json.loads(mcp.ok("list", "--json", env={"MCP_PKI_DB": url}).stdout)
    assert sorted(c["serial"] for c in listed) == sorted(serials)
    assert "7 records" in mcp.ok("audit", "verify", env={"MCP_PKI_DB": url}).stdout  # the chain held


def test_concurrent_revocations_wait_for_each_other_on_postgresql(postgres: str, mcp: Cli) -> None:
    url = _fresh_database(postgres, "revocations")
    db_env = {"MCP_PKI_DB": url}
    mcp.ok("init-ca", "--name", "Team", env=db_env)
    names = [f"agent{i}" for i in range(5)]
    for name in names:
        mcp.ok("issue", "client", name, env=db_env)
    env = {**os.environ, "MCP_PKI_HOME": str(mcp.home), "MCP_PKI_DB": url, "MCP_PKI_PASSPHRASE": PASSPHRASE}
    processes = [
        subprocess.Popen([str(VENV_BIN / "mcp-pki"), "revoke", name], cwd=mcp.cwd, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for name in names
    ]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    listed = json.loads(mcp.ok("list", "--status", "revoked", "--json", env=db_env).stdout)
    assert sorted(c["name"] for c in listed) == names
    mcp.ok("audit", "verify", env=db_env)


def test_a_revocation_deleted_on_postgresql_is_refused_and_reported(postgres: str, mcp: Cli) -> None:
    """Anyone who can write a shared database could delete a revocation: the next CRL
    refuses to drop it, and audit verify names it."""
    import psycopg

    url = _fresh_database(postgres, "undo")
    env = {"MCP_PKI_DB": url}
    mcp.ok("init-ca", "--name", "Team", env=env)
    alice = json.loads(mcp.ok("issue", "client", "alice", "--json", env=env).stdout)["serial"]
    mcp.ok("revoke", "alice", env=env)
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as connection:
        connection.execute(
            "DELETE FROM revocations WHERE certificate_id = (SELECT id FROM certificates WHERE serial = %s)",
            (alice,),
        )
    refused = mcp("crl", env=env)
    assert refused.exit_code == 1 and "refusing to publish" in refused.stderr and alice in refused.stderr
    broken = mcp("audit", "verify", env=env)
    assert broken.exit_code == 1 and alice in broken.stderr
