"""snippet: the rendered configuration works in the real servers it is written for."""

import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import VENV_BIN, Cli, Snapshot, assert_clean_error, listening
from tests.test_tls_revocation import (
    NGINX,
    SERVER_NAME,
    TIMEOUT,
    Nginx,
    _free_port,
    https_get,
    issue_client,
    issue_server,
)

TARGET_NAMES = [
    "server-env", "uvicorn-env", "python-server", "python-client", "node-client", "curl",
    "nginx", "envoy", "caddy", "k8s", "crl-refresh", "gateway",
    "claude-desktop", "claude-code", "claude-code-http", "vscode", "cursor", "windsurf", "zed", "continue",
]
URL = "https://srv.example.com:8443/mcp"
# What each target needs to render: the required variables, nothing else.
REQUIRED = {"server-env": ["--var", "command=python3"], "gateway": ["--var", "command=/usr/bin/python3"]} | {
    target: ["--var", f"url={URL}"] for target in TARGET_NAMES if target in (
        "python-client", "node-client", "curl", "claude-desktop", "claude-code", "claude-code-http", "vscode",
        "cursor", "windsurf", "zed", "continue")
}


def test_list_prints_each_target_its_kinds_and_what_it_needs(ca: Cli) -> None:
    lines = ca.ok("snippet", "--list").stdout.splitlines()
    assert [line.split()[0] for line in lines] == TARGET_NAMES
    by_name = {line.split()[0]: line.split()[1] for line in lines}
    assert by_name["nginx"] == "server" and by_name["python-client"] == "client"
    assert by_name["k8s"] == "server/client"
    assert "[needs --var url]" in next(line for line in lines if line.startswith("curl "))


def _syntax_check(target: str, text: str, tmp_path: Path) -> None:
    """Each output parses as what it claims to be."""
    if target in ("server-env", "claude-desktop", "vscode", "cursor", "windsurf", "zed"):
        json.loads(text)
    elif target in ("envoy", "k8s", "continue"):
        assert yaml.safe_load(text)
    elif target in ("python-server", "python-client"):
        compile(text, target, "exec")
    elif target in ("uvicorn-env", "curl", "crl-refresh", "claude-code", "claude-code-http"):
        script = tmp_path / f"{target}.sh"
        script.write_text(text)
        subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)
    elif target == "node-client":
        if shutil.which("node") is None:
            pytest.skip("node is absent")
        script = tmp_path / "client.mjs"
        script.write_text(text)
        subprocess.run(["node", "--check", str(script)], check=True, timeout=30)
    elif target == "nginx":
        _nginx_accepts(text, tmp_path)
    elif target == "caddy":
        _caddy_accepts(text, tmp_path)
    elif target == "gateway":  # a systemd unit: sections, then Key=Value lines
        body = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        assert body[0] == "[Unit]" and all(line.startswith("[") or "=" in line for line in body), text
    else:
        raise AssertionError(f"no syntax check for {target}")


def _nginx_accepts(server_block: str, tmp_path: Path) -> None:
    if not os.access(NGINX, os.X_OK):
        pytest.skip(f"{NGINX} is absent: .ci/run installs Debian's nginx package")
    prefix = tmp_path / "nginx-t"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"pid {prefix}/nginx.pid; error_log {prefix}/error.log;\nevents {{}}\n"
        f"http {{\n{server_block}\n}}\n"
    )
    test = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert test.returncode == 0, test.stderr


def _caddy_accepts(caddyfile: str, tmp_path: Path) -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is absent: .ci/run installs Debian's caddy package")
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile)
    check = subprocess.run([caddy, "validate", "--config", str(path), "--adapter", "caddyfile"],
                           capture_output=True, text=True, timeout=60, check=False,
                           env={**os.environ, "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)})
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_every_target_renders_for_each_kind_it_accepts_and_parses(ca: Cli, tmp_path: Path, target: str) -> None:
    issue_server(ca)
    issue_client(ca, "alice")
    kinds = {line.split()[0]: line.split()[1].split("/") for line in ca.ok("snippet", "--list").stdout.splitlines()}
    for kind, ref in (("server", "srv"), ("client", "alice")):
        if kind not in kinds[target]:
            assert_clean_error(ca("snippet", target, ref, *REQUIRED.get(target, [])), f"for {kinds[target][0]} certificates")
            continue
        result = ca.ok("snippet", target, ref, *REQUIRED.get(target, []))
        assert result.stdout.strip(), target
        assert result.stderr.startswith(f"# {target}: "), result.stderr  # where it goes, off stdout
        _syntax_check(target, result.stdout, tmp_path)


def test_no_output_holds_a_private_key(ca: Cli, tmp_path: Path) -> None:
    srv, alice = issue_server(ca), issue_client(ca, "alice")
    bodies = [(folder / "tls.key").read_text().splitlines()[1] for folder in (srv, alice)]
    ca.ok("snippet", "--all", "srv", "--var", "command=python3", "--out", "srv-config")
    ca.ok("snippet", "--all", "alice", "--var", f"url={URL}", "--out", "alice-config")
    for path in [*(ca.cwd / "srv-config").iterdir(), *(ca.cwd / "alice-config").iterdir()]:
        text = path.read_text()
        assert "PRIVATE KEY-----" not in text and not any(body in text for body in bodies), path


def test_files_default_to_where_issue_wrote_them_and_dir_moves_them(ca: Cli, tmp_path: Path) -> None:
    ca.ok("issue", "server", "srv", "--dns", SERVER_NAME, "--out", "certs/srv")
    env = json.loads(ca.ok("snippet", "server-env", "srv", "--var", "command=srv", "--var", "args=--stdio 'a b'").stdout)
    entry = env["mcpServers"]["srv"]
    assert entry["command"] == str(VENV_BIN / "mcp-pki")  # the stdio server runs behind the gateway
    assert entry["args"] == ["gateway", "--listen", "0.0.0.0:8443", "--", "srv", "--stdio", "a b"]
    assert entry["env"] == {
        "TLS_CERT": str(ca.cwd / "certs/srv/tls.crt"), "TLS_KEY": str(ca.cwd / "certs/srv/tls.key"),
        "TLS_CA": str(ca.cwd / "certs/srv/ca.crt"), "TLS_REQUIRE_CLIENT_CERT": "true",
        "TLS_CRL": str(ca.home / "crl.pem"),  # on the CA's machine: the CRL it publishes
    }
    shown = json.loads(ca.ok("show", "srv", "--json").stdout)
    assert shown["files_dir"] == str(ca.cwd / "certs/srv")
    assert f"files        {ca.cwd / 'certs/srv'}" in ca.ok("show", "srv").stdout
    moved = json.loads(ca.ok("snippet", "server-env", "srv", "--var", "command=srv", "--dir", "/etc/mcp/srv").stdout)
    assert moved["mcpServers"]["srv"]["env"]["TLS_KEY"] == "/etc/mcp/srv/tls.key"
    assert moved["mcpServers"]["srv"]["env"]["TLS_CRL"] == "/etc/mcp/srv/crl.pem"


def test_bad_targets_variables_and_kinds_are_clean_errors(ca: Cli) -> None:
    issue_server(ca)
    issue_client(ca, "alice")
    snapshot = Snapshot(ca)
    assert_clean_error(ca("snippet", "bogus", "srv"), "unknown snippet target 'bogus'")
    assert_clean_error(ca("snippet", "nginx", "srv", "--var", "colour=red"), "nginx has no variable colour")
    assert_clean_error(ca("snippet", "nginx", "srv", "--var", "port"), "invalid --var 'port'")
    assert_clean_error(ca("snippet", "nginx", "srv", "--var", "port=1", "--var", "port=2"), "--var port given twice")
    assert_clean_error(ca("snippet", "nginx", "alice"), "nginx is for server certificates, not client")
    assert_clean_error(ca("snippet", "python-client", "alice"), "python-client needs --var url=...")
    assert_clean_error(ca("snippet", "server-env", "srv"), "server-env needs --var command=...")
    for target in ("nginx", "envoy", "caddy"):  # the plain-HTTP MCP server: no path, no TLS
        for upstream in ("http://127.0.0.1:8000/mcp", "https://127.0.0.1:8443", "127.0.0.1:8000", "http://h:x"):
            assert_clean_error(ca("snippet", target, "srv", "--var", f"upstream={upstream}"),
                               f"--var upstream='{upstream}': must be http://HOST:PORT with no path")
    for port in ("abc", "0", "70000", "-1"):
        assert_clean_error(ca("snippet", "python-server", "srv", "--var", f"port={port}"),
                           "must be a port number from 1 to 65535")
    assert_clean_error(ca("snippet", "envoy", "srv", "--var", "bind=localhost"), "must be an IP address")
    for target in ("python-client", "claude-desktop"):
        assert_clean_error(ca("snippet", target, "alice", "--var", "url=http://files.example.com/mcp"),
                           "must be an https:// URL")
    assert_clean_error(ca("snippet", "nginx", "srv", "--dir", "relative/dir"), "--dir must be an absolute path")
    assert_clean_error(ca("snippet", "server-env", "srv", "--var", "command=x", "--var", "args='open"),
                       "cannot split")
    assert_clean_error(ca("snippet", "--all", "srv"), "--all needs --out DIR")
    assert_clean_error(ca("snippet", "--all", "alice", "--out", "x", "--var", f"url={URL}", "--var", "port=1"),
                       "no client target has variable port")
    assert_clean_error(ca("snippet", "nginx", "nobody"), "no certificate matches 'nobody'")
    assert_clean_error(ca("snippet", "nginx"), "give TARGET and REF")
    snapshot.assert_unchanged()


def test_user_template_overrides_the_packaged_one(ca: Cli) -> None:
    issue_server(ca)
    (ca.home / "templates").mkdir()
    (ca.home / "templates" / "uvicorn-env.sh.j2").write_text("CERT={{ cert.cert_file | shell }} {{ cert.name | shell }}\n")
    assert ca.ok("snippet", "uvicorn-env", "srv", "--dir", "/srv/x").stdout == "CERT=/srv/x/tls.crt srv\n"


def test_a_broken_override_is_a_clean_error_naming_the_template(ca: Cli) -> None:
    issue_server(ca)
    (ca.home / "templates").mkdir()
    overrides = ca.home / "templates"
    (overrides / "nginx.conf.j2").write_text("listen {{ var.nonesuch }};\n")
    assert_clean_error(ca("snippet", "nginx", "srv"), "template nginx.conf.j2 failed")
    (overrides / "server-env.json.j2").write_text("{not json {{ cert.name | json }}\n")
    assert_clean_error(ca("snippet", "server-env", "srv", "--var", "command=x"),
                       "template server-env.json.j2 rendered invalid json")
    (overrides / "python-server.py.j2").write_text("def broken(:\n")
    assert_clean_error(ca("snippet", "python-server", "srv"), "rendered invalid python")
    (overrides / "envoy.yaml.j2").write_text("a: [unclosed\n")
    assert_clean_error(ca("snippet", "envoy", "srv"), "rendered invalid yaml")
    (overrides / "uvicorn-env.sh.j2").write_text("{{ cert.private_key }}\n")  # the view has no key
    assert_clean_error(ca("snippet", "uvicorn-env", "srv"), "private_key")
    (overrides / "curl.sh.j2").write_text("{{ cert.name + 1 }}\n")  # Python's own errors, too
    issue_client(ca, "alice")
    assert_clean_error(ca("snippet", "curl", "alice", "--var", f"url={URL}"), "template curl.sh.j2 failed: TypeError")
    (overrides / "caddy.j2").write_bytes(b"\xff\xfe not utf-8")
    (overrides / "Caddyfile.j2").write_bytes(b"\xff\xfe not utf-8")
    assert_clean_error(ca("snippet", "caddy", "srv"), "template Caddyfile.j2 failed")


def test_all_writes_every_target_of_the_kind_and_a_readme(ca: Cli) -> None:
    issue_server(ca)
    issue_client(ca, "alice")
    ca.ok("snippet", "--all", "srv", "--var", "command=python3", "--var", "port=9443", "--out", "srv-config")
    server_files = sorted(p.name for p in (ca.cwd / "srv-config").iterdir())
    assert server_files == sorted([
        "README.md", "server-env.json", "uvicorn-env.sh", "python-server.py", "nginx.conf", "envoy.yaml",
        "Caddyfile", "kustomization.yaml", "crl-refresh.sh", "gateway.service",
    ])
    assert "listen 9443 ssl;" in (ca.cwd / "srv-config/nginx.conf").read_text()  # each takes what it knows
    readme = (ca.cwd / "srv-config/README.md").read_text()
    for name in set(server_files) - {"README.md"}:
        assert f"`{name}`" in readme
    assert str(ca.cwd / "srv" / "tls.key") in readme
    assert os.access(ca.cwd / "srv-config/crl-refresh.sh", os.X_OK)
    ca.ok("snippet", "--all", "alice", "--var", f"url={URL}", "--out", "alice-config")
    client_files = sorted(p.name for p in (ca.cwd / "alice-config").iterdir())
    assert client_files == sorted([
        "README.md", "python-client.py", "node-client.mjs", "curl.sh", "kustomization.yaml",
        "claude_desktop_config.json", "claude-code.sh", "claude-code-http.sh", "vscode-mcp.json", "cursor-mcp.json",
        "windsurf-mcp_config.json", "zed-settings.json", "continue-mcp.yaml",
    ])
    snapshot = Snapshot(ca)
    assert_clean_error(ca("snippet", "--all", "alice", "--var", f"url={URL}", "--out", "alice-config"),
                       "already exists")
    snapshot.assert_unchanged()
    ca.ok("snippet", "--all", "alice", "--var", f"url={URL}x", "--out", "alice-config", "--force")
    assert f"{URL}x" in (ca.cwd / "alice-config/curl.sh").read_text()


def test_certificates_from_before_the_files_folder_was_recorded_need_dir(ca: Cli) -> None:
    issue_server(ca)
    with sqlite3.connect(ca.db) as connection:
        connection.execute("UPDATE certificates SET files_dir = NULL")
    assert_clean_error(ca("snippet", "nginx", "srv"), "give --dir DIR")
    assert "/etc/x/tls.crt" in ca.ok("snippet", "nginx", "srv", "--dir", "/etc/x").stdout


class RenderedNginx(Nginx):
    """nginx running exactly the server block that `mcp-pki snippet nginx` printed."""

    def __init__(self, prefix: Path, ca: Cli, srv: Path, upstream: int) -> None:
        super().__init__(prefix, ca.home, srv)
        self.ca, self.upstream = ca, upstream

    def _write_conf(self) -> None:
        block = self.ca.ok(
            "snippet", "nginx", "srv", "--dir", str(self.srv), "--var", "bind=127.0.0.1",
            "--var", f"port={self.port}", "--var", f"upstream=http://127.0.0.1:{self.upstream}",
        ).stdout
        super()._write_conf()
        text = self.conf.read_text()
        generated = text[: text.index("    server {")] + block + "}\n"
        self.conf.write_text(generated)


def test_uvicorn_env_block_runs_uvicorn_with_client_certificates_required(ca: Cli, tmp_path: Path) -> None:
    srv = issue_server(ca)
    alice = issue_client(ca, "alice")
    spaced = tmp_path / "certs with space"
    shutil.copytree(srv, spaced)
    env_file = tmp_path / "server-env.sh"
    env_file.write_text(ca.ok("snippet", "uvicorn-env", "srv", "--dir", str(spaced)).stdout)
    # What an operator does: source the block in a shell, then start uvicorn from it.
    dump = subprocess.run(["sh", "-c", f". '{env_file}' && env -0"], capture_output=True, check=True, timeout=30)
    exported = dict(item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)
    settings = {k: v for k, v in exported.items() if k.startswith("UVICORN_SSL_")}
    assert settings["UVICORN_SSL_CERTFILE"] == str(spaced / "tls.crt")
    assert settings["UVICORN_SSL_CERT_REQS"] == "2"
    (tmp_path / "app.py").write_text(  # any uvicorn-served MCP server
        "from mcp.server.mcpserver import MCPServer\n"
        "from mcp.server.transport_security import TransportSecuritySettings\n"
        "mcp = MCPServer('env-served')\n"
        "@mcp.tool()\n"
        "def echo(text: str) -> str:\n    return text\n"
        "app = mcp.streamable_http_app(\n"
        "    transport_security=TransportSecuritySettings(allowed_hosts=['127.0.0.1:*']))\n"
    )
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **settings},
    )
    try:
        _wait_for_port(port, process)
        ca.ok("snippet", "python-client", "alice", "--var", f"url=https://127.0.0.1:{port}/mcp", "--out", "alice.py")
        called = subprocess.run([sys.executable, str(ca.cwd / "alice.py"), "echo", "text=via uvicorn-env"],
                                capture_output=True, text=True, timeout=60, check=False)
        assert (called.returncode, called.stdout) == (0, "via uvicorn-env\n"), called.stderr
        assert alice.is_dir()
        anonymous = _anonymous_context(ca)
        refused = https_get(port, anonymous)
        assert refused.status is None, refused  # no client certificate: no HTTP at all
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def _anonymous_context(ca: Cli) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.home / "ca.crt"))


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    if not listening(port, process, 15):
        raise AssertionError(process.stdout.read().decode() if process.stdout and process.poll() is not None
                             else "uvicorn did not start")


__all__ = ["SERVER_NAME"]


def test_readme_shows_the_current_target_list(ca: Cli) -> None:
    from tests.conftest import REPO

    listed = ca.ok("snippet", "--list").stdout
    readme = (REPO / "README.md").read_text()
    assert listed in readme, "README.md's `snippet --list` block is out of date"


def test_crl_refresh_escapes_percent_and_dollar_for_cron_and_systemd(ca: Cli) -> None:
    issue_server(ca)
    text = ca.ok("snippet", "crl-refresh", "srv", "--var", "reload=echo $HOME %s").stdout
    cron = next(line for line in text.splitlines() if line.startswith("# 17 3 * * * "))
    assert cron.endswith("echo $HOME \\%s")  # cron turns a bare % into a newline
    post = next(line for line in text.splitlines() if line.startswith("ExecStartPost="))
    assert post == 'ExecStartPost=+/bin/sh -c "echo $$HOME %%s"'  # systemd specifiers and variables


def test_paths_with_spaces_stay_one_word_in_nginx_and_caddy(ca: Cli, tmp_path: Path) -> None:
    srv = issue_server(ca)
    spaced = str(tmp_path / "mcp pki" / "srv")
    shutil.copytree(srv, spaced)  # nginx -t and caddy validate load the files
    shutil.copy(ca.home / "crl.pem", spaced)
    _nginx_accepts(ca.ok("snippet", "nginx", "srv", "--dir", spaced).stdout, tmp_path)
    caddyfile = ca.ok("snippet", "caddy", "srv", "--dir", spaced).stdout
    assert f'"{spaced}/tls.crt"' in caddyfile
    _caddy_accepts(caddyfile, tmp_path)


def test_a_snippet_naming_a_key_that_is_not_there_warns(ca: Cli, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carol")])).sign(key, hashes.SHA256())
    (ca.cwd / "carol.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    ca.ok("issue", "client", "carol", "--csr", "carol.csr")
    result = ca.ok("snippet", "curl", "carol", "--var", f"url={URL}")
    assert f"Warning: {ca.cwd / 'carol' / 'tls.key'} does not exist" in result.stderr
    assert "Warning" not in ca.ok("snippet", "curl", "carol", "--var", f"url={URL}", "--dir", "/home/carol/mcp").stderr
