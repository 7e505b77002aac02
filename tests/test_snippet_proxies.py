"""snippet caddy, envoy, k8s and crl-refresh: each rendered file tried on the real program it is for.

Caddy runs for real over loopback; kustomize (kubectl) builds the Secret offline; the crl-refresh
cron command runs for real and its systemd units go through ``systemd-analyze verify``. No Envoy
binary can be installed here, so its config is checked field by field. Everything binds
127.0.0.1, every wait is bounded and every process started is stopped in ``finally``.
"""

import base64
import configparser
import http.client
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.conftest import PASSPHRASE, VENV_BIN, Cli, listening
from tests.test_tls_revocation import (
    SERVER_NAME,
    TIMEOUT,
    X509_V_ERR_CERT_REVOKED,
    _free_port,
    client_context,
    issue_client,
    issue_server,
    openssl_verify,
)

CADDY = shutil.which("caddy") or "/usr/bin/caddy"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
START_TIMEOUT = 10.0  # seconds: a server process coming up
CRON_PREFIX = "# 17 3 * * * "


# --------------------------------------------------------------------------- helpers


def _usable(program: str) -> bool:
    return Path(program).is_file() and os.access(program, os.X_OK)


@dataclass
class Upstream:
    """The plain-HTTP MCP server stand-in behind a proxy: records and echoes every request's headers."""

    port: int
    seen: list[dict[str, list[str]]] = field(default_factory=list)


class _EchoHeaders(BaseHTTPRequestHandler):
    """Answers with every header it received, as {lower-case name: [values]}: duplicates show."""

    def do_GET(self) -> None:
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        self.server.seen.append(headers)  # type: ignore[attr-defined]
        body = json.dumps(headers).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHeaders)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Upstream(server.server_address[1], server.seen)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer at all (refused during or right after the handshake)
    body: str
    error: str = ""

    def json(self) -> dict[str, list[str]]:
        return json.loads(self.body)


def https_request(port: int, context: ssl.SSLContext, *, host: str = SERVER_NAME,
                  headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    """GET / over TLS with SNI = SERVER_NAME, a chosen Host header and extra (possibly repeated) headers."""
    lines = ["GET / HTTP/1.1", f"Host: {host}", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
                tls.sendall(request)
                response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
                response.begin()
                return Answer(response.status, response.read().decode(errors="replace"))
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as error:
            return Answer(None, "", repr(error))


def _anonymous_context(ca: Cli) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.home / "ca.crt"))


def _leaf(folder: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((folder / "tls.crt").read_bytes())  # the first PEM block


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    if not listening(port, process, START_TIMEOUT):
        raise AssertionError(f"nothing listens on 127.0.0.1:{port} (exit code {process.poll()}):\n"
                             f"{log.read_text(errors='replace')}")


# --------------------------------------------------------------------------- 1. caddy


def _render_caddy(ca: Cli, port: int, upstream: int) -> str:
    return ca.ok("snippet", "caddy", "srv", "--var", "bind=127.0.0.1", "--var", f"port={port}",
                 "--var", f"upstream=http://127.0.0.1:{upstream}").stdout


@contextmanager
def running_caddy(ca: Cli, tmp_path: Path, upstream: Upstream) -> Iterator[int]:
    """Caddy running the rendered Caddyfile; yields its TLS port."""
    if not _usable(CADDY):
        pytest.skip(f"{CADDY} is absent: .ci/run installs Debian's caddy package")
    port, admin = _free_port(), _free_port()
    folder = tmp_path / "caddy"
    (folder / "data").mkdir(parents=True)
    (folder / "config").mkdir()
    caddyfile = folder / "Caddyfile"
    caddyfile.write_text(_render_caddy(ca, port, upstream.port))  # run exactly as printed
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder),
           "XDG_DATA_HOME": str(folder / "data"), "XDG_CONFIG_HOME": str(folder / "config"),
           "CADDY_ADMIN": f"127.0.0.1:{admin}"}
    log = folder / "caddy.log"
    with log.open("wb") as output:
        process = subprocess.Popen([CADDY, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                                   cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_listening(port, process, log)
            yield port
        finally:
            _stop(process)
    assert process.poll() is not None


def test_caddy_forwards_only_the_verified_client(ca: Cli, tmp_path: Path, upstream: Upstream) -> None:
    issue_server(ca)
    alice = issue_client(ca, "alice")
    leaf = _leaf(alice)
    verified = {
        "x-client-verify": ["SUCCESS"],
        "x-client-dn": ["CN=alice,O=Example"],
        "x-client-serial": [str(leaf.serial_number)],
        "x-client-fingerprint": [leaf.fingerprint(hashes.SHA256()).hex()],
    }
    forged = (("X-Client-DN", "CN=mallory,O=Example"), ("X-Client-DN", "CN=root"), ("X-Client-Verify", "FORGED"),
              ("X-Client-Serial", "1"), ("X-Client-Fingerprint", "00" * 32))
    with running_caddy(ca, tmp_path, upstream) as port:
        plain = https_request(port, client_context(ca, alice))
        assert plain.status == 200, plain
        assert {k: v for k, v in plain.json().items() if k.startswith("x-client-")} == verified

        # Forged identity headers, one of them twice: the upstream sees exactly one of each, Caddy's.
        spoofed = https_request(port, client_context(ca, alice), headers=forged)
        assert spoofed.status == 200, spoofed
        assert {k: v for k, v in spoofed.json().items() if k.startswith("x-client-")} == verified

        # As the Caddyfile warns: with client auth on, a Host other than the TLS server name is a 421.
        requests = len(upstream.seen)
        misdirected = https_request(port, client_context(ca, alice), host="other.example.com")
        assert misdirected.status == 421, misdirected

        # No client certificate: refused in the TLS layer, no HTTP answer.
        anonymous = https_request(port, _anonymous_context(ca))
        assert anonymous.status is None, anonymous
        assert len(upstream.seen) == requests  # neither reached the upstream


def test_caddy_checks_no_crl_so_a_revoked_client_still_gets_in(ca: Cli, tmp_path: Path, upstream: Upstream) -> None:
    issue_server(ca)
    bob = issue_client(ca, "bob")
    ca.ok("revoke", "bob", "--reason", "key-compromise")
    # The revocation is real: the CRL the home publishes lists bob...
    revoked = openssl_verify(ca, bob, "-crl_check_all")
    assert f"error {X509_V_ERR_CERT_REVOKED} at 0 depth lookup: certificate revoked" in revoked.stdout + revoked.stderr
    # ...and the Caddyfile says, and is, blind to it: no CRL is configured anywhere.
    text = _render_caddy(ca, 8443, 8000)
    assert "# WARNING: Caddy does not check CRLs." in text
    words = [w for line in text.splitlines() if not line.lstrip().startswith("#") for w in line.split()]
    assert not [w for w in words if "crl" in w.lower() and not w.startswith("/")], words  # paths hold test names
    assert "crl.pem" not in text
    with running_caddy(ca, tmp_path, upstream) as port:
        answer = https_request(port, client_context(ca, bob))
    # The documented limitation, pinned: should Caddy ever refuse bob, update the template's warning.
    assert answer.status == 200, answer
    assert answer.json()["x-client-dn"] == ["CN=bob,O=Example"]


# --------------------------------------------------------------------------- 2. envoy


def _envoy(text: str) -> tuple[dict, dict, dict, dict]:
    """(listener, DownstreamTlsContext, HttpConnectionManager, cluster) of a rendered envoy.yaml."""
    config = yaml.safe_load(text)
    resources = config["static_resources"]
    [listener] = resources["listeners"]
    [cluster] = resources["clusters"]
    [chain] = listener["filter_chains"]
    tls = chain["transport_socket"]
    assert tls["name"] == "envoy.transport_sockets.tls"
    assert tls["typed_config"]["@type"] == (
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")
    [manager] = chain["filters"]
    assert manager["name"] == "envoy.filters.network.http_connection_manager"
    assert manager["typed_config"]["@type"] == ("type.googleapis.com/envoy.extensions.filters.network."
                                                "http_connection_manager.v3.HttpConnectionManager")
    return listener, tls["typed_config"], manager["typed_config"], cluster


def _envoy_files(tls: dict) -> dict[str, str]:
    common = tls["common_tls_context"]
    [pair] = common["tls_certificates"]
    validation = common["validation_context"]
    return {"cert": pair["certificate_chain"]["filename"], "key": pair["private_key"]["filename"],
            "ca": validation["trusted_ca"]["filename"], "crl": validation["crl"]["filename"]}


def test_envoy_config_has_the_listener_tls_identity_and_cluster_asked_for(ca: Cli) -> None:
    srv = issue_server(ca)
    text = ca.ok("snippet", "envoy", "srv", "--var", "bind=127.0.0.1", "--var", "port=9443",
                 "--var", "upstream=http://mcp-backend.internal:8123").stdout
    listener, tls, manager, cluster = _envoy(text)

    assert listener["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 9443}}
    assert tls["require_client_certificate"] is True
    assert tls["common_tls_context"]["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2"}
    # The files `issue` wrote, and the CRL the home publishes (both CAs' CRLs, as Envoy requires).
    files = _envoy_files(tls)
    assert files == {"cert": str(srv / "tls.crt"), "key": str(srv / "tls.key"), "ca": str(srv / "ca.crt"),
                     "crl": str(ca.home / "crl.pem")}
    for path in files.values():
        assert Path(path).is_absolute() and Path(path).is_file(), path
    assert _leaf(Path(files["cert"]).parent).subject.rfc4514_string() == "CN=srv,O=Example"
    assert len(re.findall(r"BEGIN X509 CRL", Path(files["crl"]).read_text())) == 2

    assert manager["forward_client_cert_details"] == "SANITIZE_SET"
    assert manager["set_current_client_cert_details"]["subject"] is True
    [host] = manager["route_config"]["virtual_hosts"]
    # The identity headers the other fronts set: never the client's own copies.
    assert set(host["request_headers_to_remove"]) == {"x-client-verify", "x-client-dn", "x-client-serial",
                                                      "x-client-fingerprint"}
    [route] = host["routes"]
    assert route["match"] == {"prefix": "/"}
    assert route["route"]["cluster"] == cluster["name"] == "mcp_upstream"
    assert route["route"]["timeout"] == "0s"  # a streamed MCP response is never cut off
    assert route["route"]["host_rewrite_literal"] == "mcp-backend.internal:8123"  # passes DNS-rebinding checks
    [router] = manager["http_filters"]
    assert router["name"] == "envoy.filters.http.router"

    assert cluster["load_assignment"]["cluster_name"] == "mcp_upstream"
    [group] = cluster["load_assignment"]["endpoints"]
    [endpoint] = group["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {"socket_address": {"address": "mcp-backend.internal",
                                                                  "port_value": 8123}}
    assert "PRIVATE KEY" not in text


def test_envoy_defaults_and_dir(ca: Cli) -> None:
    issue_server(ca)
    listener, tls, _, cluster = _envoy(ca.ok("snippet", "envoy", "srv", "--dir", "/etc/mcp/srv",
                                             "--var", "upstream=http://localhost").stdout)
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8443}
    # With --dir, all four files live in that folder, the CRL included.
    assert _envoy_files(tls) == {"cert": "/etc/mcp/srv/tls.crt", "key": "/etc/mcp/srv/tls.key",
                                 "ca": "/etc/mcp/srv/ca.crt", "crl": "/etc/mcp/srv/crl.pem"}
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "localhost", "port_value": 80}}


# --------------------------------------------------------------------------- 3. k8s


def _kustomize(folder: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``kubectl kustomize``: a local build, no cluster; HOME and KUBECONFIG point at nothing real."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "kube-home"),
           "KUBECONFIG": str(tmp_path / "kube-home" / "no-such-config")}
    return subprocess.run([KUBECTL, "kustomize", str(folder)], check=False, capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("kind", ["server", "client"])
def test_k8s_kustomization_builds_the_tls_secret_from_the_issued_files(ca: Cli, tmp_path: Path, kind: str) -> None:
    if not _usable(KUBECTL):
        pytest.skip(f"{KUBECTL} is absent")
    name, folder = ("srv", issue_server(ca)) if kind == "server" else ("alice", issue_client(ca, "alice"))
    expected_files = ["tls.crt", "tls.key", "ca.crt"] + (["crl.pem"] if kind == "server" else [])
    key = (folder / "tls.key").read_text()
    key_lines = [line for line in key.splitlines() if line and not line.startswith("-----")]

    for options, secret, namespace in (([], f"mcp-tls-{name}", "default"),
                                       (["--var", "secret=files-mtls", "--var", "namespace=mcp-prod"],
                                        "files-mtls", "mcp-prod")):
        text = ca.ok("snippet", "k8s", name, *options).stdout
        # No key material in the kustomization: kustomize reads tls.key from the folder.
        assert "PRIVATE KEY" not in text and not any(line in text for line in key_lines)
        assert base64.b64encode(key.encode()).decode()[:40] not in text
        (folder / "kustomization.yaml").write_text(text)

        if kind == "server" and not (folder / "crl.pem").exists():
            # The comment says to copy the CRL beside the files: without it the build fails...
            missing = _kustomize(folder, tmp_path)
            assert missing.returncode != 0 and "crl.pem" in missing.stderr, missing
            # ...and its own cp command is the fix.
            [command] = re.findall(r"^# and a copy of the CRL \((cp [^)]*)\)", text, re.MULTILINE)
            assert command == f"cp {ca.home / 'crl.pem'} {folder}/crl.pem"
            subprocess.run(shlex.split(command), check=True, timeout=30)
        elif kind == "client":
            assert "crl" not in text.lower(), text  # a client checks no CRL: none to ship

        built = _kustomize(folder, tmp_path)
        assert built.returncode == 0, built.stderr
        documents = [d for d in yaml.safe_load_all(built.stdout) if d is not None]
        assert len(documents) == 1, documents
        [document] = documents
        assert document["apiVersion"] == "v1" and document["kind"] == "Secret"
        assert document["type"] == "kubernetes.io/tls"
        assert document["metadata"]["name"] == secret
        assert document["metadata"]["namespace"] == namespace
        assert document["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "mcp-pki"}
        assert sorted(document["data"]) == sorted(expected_files)
        for file_name, encoded in document["data"].items():
            assert base64.b64decode(encoded) == (folder / file_name).read_bytes(), file_name


# --------------------------------------------------------------------------- 4. crl-refresh


def _cron_command(script: str) -> str:
    [line] = [line for line in script.splitlines() if line.startswith(CRON_PREFIX)]
    fields = line.removeprefix("# ").split(None, 5)
    assert fields[:5] == ["17", "3", "*", "*", "*"], line
    return fields[5]


def _units(script: str) -> dict[str, str]:
    """The unit files the script writes, by path, from its ``cat > PATH <<'UNIT'`` heredocs."""
    found = re.findall(r"^cat > (\S+) <<'UNIT'\n(.*?)^UNIT$", script, re.MULTILINE | re.DOTALL)
    return dict(found)


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def _crl_numbers(path: Path) -> dict[str, int]:
    """The CRL number of each CRL in a PEM bundle, by issuer DN."""
    pems = re.findall(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----\n?", path.read_bytes(), re.DOTALL)
    numbers = {}
    for pem in pems:
        crl = x509.load_pem_x509_crl(pem)
        numbers[crl.issuer.rfc4514_string()] = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert len(numbers) == len(pems) == 2, numbers
    return numbers


def _passphrase_file(tmp_path: Path, content: str) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    path = secrets / "ca-passphrase"
    path.write_text(content + "\n")
    path.chmod(0o600)
    return path


def _render_refresh(ca: Cli, *options: str) -> str:
    return ca.ok("snippet", "crl-refresh", "srv", *options).stdout


def test_crl_refresh_script_parses_and_names_the_passphrase_file_never_the_passphrase(
        ca: Cli, tmp_path: Path) -> None:
    issue_server(ca)
    passfile = _passphrase_file(tmp_path, PASSPHRASE)
    for options, named in ((["--var", f"passphrase_file={passfile}"], str(passfile)),
                           ([], "/etc/credstore/mcp-pki-ca-passphrase")):  # away from the CA home
        script = _render_refresh(ca, *options)
        path = tmp_path / "crl-refresh.sh"
        path.write_text(script)
        checked = subprocess.run(["sh", "-n", str(path)], check=False, capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        assert PASSPHRASE not in script
        assert named in script
        assert f"--passphrase-file {shlex.quote(named)} crl" in _cron_command(script)
    # Without --dir the CRL is the home's own: nothing to copy, publish then reload.
    command = _cron_command(_render_refresh(ca))
    assert command.endswith(" crl >/dev/null && systemctl reload nginx"), command
    assert "install" not in command


def test_crl_refresh_cron_command_republishes_copies_atomically_and_reloads(ca: Cli, tmp_path: Path) -> None:
    issue_server(ca)
    tool = VENV_BIN / "mcp-pki"
    assert tool.is_file() and os.access(tool, os.X_OK), tool
    deployed = tmp_path / "deployed"
    deployed.mkdir()
    shutil.copy(ca.home / "crl.pem", deployed / "crl.pem")  # what the server reads today
    os.link(deployed / "crl.pem", tmp_path / "old-crl-link")  # to see whether that file is rewritten or replaced
    old = (deployed / "crl.pem").read_bytes()
    marker = tmp_path / "reloaded"
    passfile = _passphrase_file(tmp_path, "not the passphrase")
    script = _render_refresh(ca, "--dir", str(deployed), "--var", f"reload=touch {shlex.quote(str(marker))}",
                             "--var", f"passphrase_file={passfile}")
    command = _cron_command(script)
    owner = pwd.getpwuid(ca.home.stat().st_uid).pw_name  # the job runs as the home's owner
    assert command.startswith(f"runuser -u {owner} -- {shlex.quote(str(tool))} --home {shlex.quote(str(ca.home))} "), command
    # cron's environment: no MCP_PKI_* variables, the passphrase comes from the file only.
    cron_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", command], check=False, cwd=tmp_path, env=cron_env, capture_output=True, text=True,
                              timeout=60)

    before = _crl_numbers(ca.home / "crl.pem")
    # A wrong passphrase: publishing fails, so nothing is copied and nothing reloaded.
    failed = run()
    assert failed.returncode != 0 and "passphrase" in failed.stderr.lower(), failed
    assert not marker.exists()
    assert (deployed / "crl.pem").read_bytes() == old and _crl_numbers(ca.home / "crl.pem") == before

    passfile.write_text(PASSPHRASE + "\n")
    done = run()
    assert done.returncode == 0, done
    after = _crl_numbers(ca.home / "crl.pem")
    assert after.keys() == before.keys()
    assert all(after[issuer] > before[issuer] for issuer in before), (before, after)
    assert marker.is_file()
    published = (ca.home / "crl.pem").read_bytes()
    assert (deployed / "crl.pem").read_bytes() == published != old
    assert stat.S_IMODE((deployed / "crl.pem").stat().st_mode) == 0o644
    assert sorted(p.name for p in deployed.iterdir()) == ["crl.pem"]  # no crl.pem.new left behind
    # Atomic: a new file renamed over the old one. The old inode, still open in a reader, is intact.
    assert (deployed / "crl.pem").stat().st_ino != (tmp_path / "old-crl-link").stat().st_ino
    assert (tmp_path / "old-crl-link").read_bytes() == old


def _systemd_analyze_works(tmp_path: Path) -> bool:
    """Whether ``systemd-analyze verify`` runs here (it needs no PID 1 systemd, but may be absent)."""
    if not _usable(SYSTEMD_ANALYZE):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "mcp-probe.service").write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    try:
        result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(probe / "mcp-probe.service")],
                                check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def test_crl_refresh_systemd_units_are_valid_and_do_what_the_cron_line_does(ca: Cli, tmp_path: Path) -> None:
    issue_server(ca)
    passfile = _passphrase_file(tmp_path, PASSPHRASE)
    deployed = tmp_path / "deployed"
    script = _render_refresh(ca, "--dir", str(deployed), "--var", "reload=systemctl reload nginx",
                             "--var", f"passphrase_file={passfile}")
    units = _units(script)
    # One pair of units per server, so a second server's install does not replace the first's.
    assert sorted(units) == ["/etc/systemd/system/mcp-pki-crl-refresh-srv.service",
                             "/etc/systemd/system/mcp-pki-crl-refresh-srv.timer"]
    service_text = units["/etc/systemd/system/mcp-pki-crl-refresh-srv.service"]
    timer_text = units["/etc/systemd/system/mcp-pki-crl-refresh-srv.timer"]
    assert PASSPHRASE not in service_text + timer_text

    service = _ini(service_text)["Service"]
    publish = f"{shlex.quote(str(VENV_BIN / 'mcp-pki'))} --home {shlex.quote(str(ca.home))}"
    assert service["Type"] == "oneshot"
    assert service["User"] == pwd.getpwuid(ca.home.stat().st_uid).pw_name
    # systemd hands the passphrase file over as a credential; the command line names only its path.
    assert service["LoadCredential"] == f"ca-passphrase:{passfile}"
    assert service["ExecStart"] == f"{publish} --passphrase-file ${{CREDENTIALS_DIRECTORY}}/ca-passphrase crl"
    # After publishing: the same copy-then-reload as the cron line.
    cron = _cron_command(script)
    owner = service["User"]
    assert cron.startswith(f"runuser -u {owner} -- {publish} --passphrase-file {shlex.quote(str(passfile))} crl >/dev/null && ")
    after_publish = cron.split(" crl >/dev/null && ", 1)[1]
    # "+": root runs the copy and the reload; systemd's double quotes hold the shell command.
    assert shlex.split(service["ExecStartPost"]) == ["+/bin/sh", "-c", after_publish]
    assert after_publish.startswith(f"install -m 0644 {ca.home / 'crl.pem'} {deployed / 'crl.pem.new'} && mv ")

    timer = _ini(timer_text)
    assert timer["Timer"]["OnCalendar"] == "daily"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"

    if not _systemd_analyze_works(tmp_path):
        return  # the INI checks above are all that can be done without systemd-analyze
    folder = tmp_path / "units"
    folder.mkdir()
    paths = []
    for path, text in units.items():
        paths.append(folder / Path(path).name)
        paths[-1].write_text(text)
    verified = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, paths)],
                              check=False, capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr
    # Unknown keys and unparsable values are only warnings (exit 0): none may name our units.
    complaints = [line for line in verified.stderr.splitlines() if "mcp-pki-crl-refresh" in line]
    assert not complaints, complaints
