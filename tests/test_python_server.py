"""The rendered python-server re-reads the CRL when the file changes and logs who sent each
request: a real server, real clients, a real revocation, no restart."""

import os
import shutil
import sys
import time
from pathlib import Path

from tests.test_snippet_mcp import McpSetup, Server, render, run, setup, url
from tests.test_tls_revocation import _free_port

__all__ = ["setup"]  # a fixture, shared with test_snippet_mcp


def _replace(source: Path, destination: Path) -> None:
    """As a deployment copies a new crl.pem: whole, in one rename."""
    shutil.copyfile(source, destination.with_suffix(".new"))
    os.replace(destination.with_suffix(".new"), destination)


def test_a_revocation_reaches_new_connections_without_a_restart(setup: McpSetup, tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"  # the server's own copy, as on a server without the CA home
    shutil.copyfile(setup.ca.home / "crl.pem", crl)
    port = _free_port()
    script = render(setup.ca, "python-server", "srv", setup.work / "server.py",
                    "--var", "bind=127.0.0.1", "--var", f"port={port}")
    log = setup.work / "server.log"
    server = Server([sys.executable, str(script)], port, log, env={**os.environ, "TLS_CRL": str(crl)})
    try:
        setup.ca.ok("issue", "client", "carol")
        client = render(setup.ca, "python-client", "carol", setup.work / "carol.py", "--var", f"url={url(port)}")
        first = run(sys.executable, client)
        assert first.returncode == 0, first.stderr
        serial = setup.ca.ok("show", "carol", "--json").stdout.split('"serial": "')[1].split('"')[0]
        logged = log.read_text()
        assert "POST /mcp from carol (serial " in logged
        assert serial.upper().lstrip("0") in logged.upper()

        setup.ca.ok("revoke", "carol")
        time.sleep(0.01)  # a new modification time even on coarse file systems
        _replace(setup.ca.home / "crl.pem", crl)
        refused = run(sys.executable, client)
        assert refused.returncode == 1 and "refused this client certificate" in refused.stderr, refused.stderr
        assert server.process.poll() is None  # the same process, not restarted

        # A CRL file that cannot be read leaves the last good CRL in force.
        crl.write_text("-----BEGIN X509 CRL-----\nbroken\n")
        again = run(sys.executable, client)
        assert again.returncode == 1, again.stderr
        assert "keeping the previous one" in log.read_text()
        alice = render(setup.ca, "python-client", "alice", setup.work / "alice.py", "--var", f"url={url(port)}")
        assert run(sys.executable, alice).returncode == 0
    finally:
        server.stop()
