"""The rendered python-server re-reads the CRL when the file changes, logs who sent each
request and each refused handshake: a real server, real clients, a real revocation, no restart."""

import os
import shutil
import socket
import ssl
import sys
import time
from pathlib import Path

from tests.conftest import Cli
from tests.test_snippet_mcp import McpSetup, Server, render, run, setup, start_python_server, url
from tests.test_tls_revocation import TIMEOUT, _free_port, issue_client

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


def _refused_handshake(port: int, ca_file: Path, client: Path | None) -> int:
    """A TLS client the server must refuse; returns its local port, as the server sees it.

    Under TLS 1.3 the client's side of the handshake ends before the server has checked the
    client certificate: the refusal arrives on the first read, as an alert or a closed socket.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(str(client / "tls.crt"), str(client / "tls.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        local_port = int(raw.getsockname()[1])
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert tls.recv(1024) == b"", "the server answered a client it must refuse"
        except (ssl.SSLError, ConnectionResetError):
            pass
    return local_port


def _logged(log: Path, fragment: str) -> str:
    """The log line holding `fragment`, waiting for the server to write it (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if fragment in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line with {fragment!r} in the server log:\n{log.read_text(errors='replace')}")


def test_each_refused_handshake_is_logged_with_its_reason_and_peer(setup: McpSetup, tmp_path: Path) -> None:
    server = start_python_server(setup)
    try:
        ca_file = setup.ca.home / "ca.crt"
        no_certificate = _refused_handshake(server.port, ca_file, None)
        revoked = _refused_handshake(server.port, ca_file, setup.bob)
        stranger_ca = Cli(tmp_path / "stranger-home", tmp_path / "stranger")
        stranger_ca.cwd.mkdir()
        stranger_ca.ok("init-ca", "--name", "Stranger", "--org", "Elsewhere")
        stranger = _refused_handshake(server.port, ca_file, issue_client(stranger_ca, "mallory"))

        line = _logged(server.log, f"from 127.0.0.1:{no_certificate}:")
        assert "refused a TLS connection" in line and "certificate" in line.lower(), line
        assert "certificate revoked" in _logged(server.log, f"from 127.0.0.1:{revoked}:")
        assert "unable to get local issuer certificate" in _logged(server.log, f"from 127.0.0.1:{stranger}:")

        # One line per refusal, and a valid client is still served by the same process.
        alice = render(setup.ca, "python-client", "alice", setup.work / "alice.py", "--var", f"url={url(server.port)}")
        assert run(sys.executable, alice).returncode == 0
        text = server.log.read_text(errors="replace")
        for port in (no_certificate, revoked, stranger):
            assert text.count(f"from 127.0.0.1:{port}:") == 1, text
        assert "Traceback" not in text, text
        assert "POST /mcp from alice (serial " in text
    finally:
        server.stop()
