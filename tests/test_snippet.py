"""snippet: the rendered configuration works in the real servers it is written for."""

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import Cli, assert_clean_error
from tests.test_tls_revocation import (
    NGINX,
    SERVER_NAME,
    TIMEOUT,
    Nginx,
    _free_port,
    client_context,
    https_get,
    issue_client,
    issue_server,
)


def test_list_prints_one_target_per_line_name_first(ca: Cli) -> None:
    lines = ca.ok("snippet", "--list").stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["server-env", "nginx"]


def test_unknown_target_variable_or_kind_is_a_clean_error(ca: Cli) -> None:
    issue_server(ca)
    issue_client(ca, "alice")
    assert_clean_error(ca("snippet", "bogus", "srv"), "unknown snippet target")
    assert_clean_error(ca("snippet", "nginx", "srv", "--var", "colour=red"), "no variable colour")
    assert_clean_error(ca("snippet", "nginx", "srv", "--var", "port"), "invalid --var")
    assert_clean_error(ca("snippet", "nginx", "alice"), "for server certificates")
    assert_clean_error(ca("snippet", "--all", "srv"), "--out")


def test_user_template_overrides_the_packaged_one(ca: Cli) -> None:
    issue_server(ca)
    (ca.home / "templates").mkdir()
    (ca.home / "templates" / "server-env.sh.j2").write_text("CERT={{ cert.cert_file }} {{ cert.name }}\n")
    assert ca.ok("snippet", "server-env", "srv", "--dir", "/srv/x").stdout == "CERT=/srv/x/tls.crt srv\n"


def test_all_writes_every_target_of_the_kind_and_never_a_key(ca: Cli) -> None:
    srv = issue_server(ca)
    ca.ok("snippet", "--all", "srv", "--out", "config")
    written = sorted(p.name for p in (ca.cwd / "config").iterdir())
    assert written == ["nginx.conf", "server-env.sh"]
    key_body = (srv / "tls.key").read_text().splitlines()[1]
    for path in (ca.cwd / "config").iterdir():
        assert key_body not in path.read_text()
    assert_clean_error(ca("snippet", "--all", "srv", "--out", "config"), "already exists")


class _EchoIdentity(BaseHTTPRequestHandler):
    """An upstream MCP server stand-in: echoes the identity headers nginx forwards."""

    def do_GET(self) -> None:
        body = json.dumps({k: self.headers.get(k) for k in ("X-Client-Verify", "X-Client-DN")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoIdentity)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class RenderedNginx(Nginx):
    """nginx running exactly the server block that `mcp-pki snippet nginx` printed."""

    def __init__(self, prefix: Path, ca: Cli, srv: Path, upstream: int) -> None:
        super().__init__(prefix, ca.home, srv)
        self.ca, self.upstream = ca, upstream

    def _write_conf(self) -> None:
        block = self.ca.ok(
            "snippet", "nginx", "srv", "--dir", str(self.srv),
            "--var", f"port=127.0.0.1:{self.port}", "--var", f"upstream=http://127.0.0.1:{self.upstream}",
        ).stdout
        super()._write_conf()
        text = self.conf.read_text()
        generated = text[: text.index("    server {")] + block + "}\n"
        self.conf.write_text(generated)


def test_rendered_nginx_front_forwards_the_verified_client(ca: Cli, tmp_path: Path, upstream: int) -> None:
    if not os.access(NGINX, os.X_OK):
        pytest.skip(f"{NGINX} is absent: .ci/run installs Debian's nginx package")
    srv = issue_server(ca)
    shutil.copy(ca.home / "crl.pem", srv / "crl.pem")  # as the template asks
    alice = issue_client(ca, "alice")
    server = RenderedNginx(tmp_path / "nginx", ca, srv, upstream)
    try:
        server.start()
        response = https_get(server.port, client_context(ca, alice))
        assert response.status == 200, response
        assert json.loads(response.body) == {"X-Client-Verify": "SUCCESS", "X-Client-DN": "CN=alice,O=Example"}
    finally:
        server.stop()


def test_server_env_block_runs_uvicorn_with_client_certificates_required(ca: Cli, tmp_path: Path) -> None:
    srv = issue_server(ca)
    alice = issue_client(ca, "alice")
    spaced = tmp_path / "certs with space"
    shutil.copytree(srv, spaced)
    env_file = tmp_path / "server-env.sh"
    env_file.write_text(ca.ok("snippet", "server-env", "srv", "--dir", str(spaced)).stdout)
    # What an operator does: source the block in a shell, then start uvicorn from it.
    dump = subprocess.run(["sh", "-c", f". '{env_file}' && env -0"], capture_output=True, check=True, timeout=30)
    exported = dict(item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)
    settings = {k: v for k, v in exported.items() if k.startswith("UVICORN_SSL_")}
    assert settings["UVICORN_SSL_CERTFILE"] == str(spaced / "tls.crt")
    assert settings["UVICORN_SSL_CERT_REQS"] == "2"
    (tmp_path / "app.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n        return\n"
        "    await send({'type': 'http.response.start', 'status': 200,\n"
        "                'headers': [(b'content-length', b'6')]})\n"
        "    await send({'type': 'http.response.body', 'body': b'mcp ok'})\n"
    )
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **settings},
    )
    try:
        _wait_for_port(port, process)
        assert https_get(port, client_context(ca, alice)).body == "mcp ok"
        anonymous = _anonymous_context(ca)
        refused = https_get(port, anonymous)
        assert refused.status is None, refused  # no client certificate: no HTTP at all
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def _anonymous_context(ca: Cli) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.home / "ca.crt"))


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read().decode() if process.stdout else "uvicorn exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("uvicorn did not start")


__all__ = ["SERVER_NAME"]
