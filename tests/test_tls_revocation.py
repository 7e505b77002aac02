"""Revocation against real relying parties: ``openssl verify``, a Python TLS server, nginx.

Everything runs over 127.0.0.1 with real processes and real handshakes; every wait is bounded.
"""

import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import PASSPHRASE, Cli, listening, openssl

TIMEOUT = 5.0  # seconds: any single network wait
SERVER_NAME = "srv.example.com"
NGINX = "/usr/sbin/nginx"
X509_V_ERR_CRL_HAS_EXPIRED = 12
X509_V_ERR_CERT_REVOKED = 23
# The two-tier CA of conftest's ``ca`` fixture.
ROOT_DN, ISSUING_DN = "CN=Test Root CA,O=Example", "CN=Test Issuing CA,O=Example"


# --------------------------------------------------------------------------- helpers


def issue_client(ca: Cli, name: str) -> Path:
    ca.ok("issue", "client", name)
    return ca.cwd / name


def issue_server(ca: Cli) -> Path:
    ca.ok("issue", "server", "srv", "--dns", SERVER_NAME, "--ip", "127.0.0.1")
    return ca.cwd / "srv"


def client_context(ca: Cli, folder: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.home / "ca.crt"))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(str(folder / "tls.crt"), str(folder / "tls.key"))
    return context


def server_context(ca: Cli, srv: Path, crl_flag: ssl.VerifyFlags,
                   tls_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    """A server context that reads ``crl.pem`` now, as a server does at start."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = context.maximum_version = tls_version
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca.home / "ca.crt"))
    context.load_verify_locations(cafile=str(ca.home / "crl.pem"))
    context.verify_flags |= crl_flag
    context.load_cert_chain(str(srv / "tls.crt"), str(srv / "tls.key"))
    return context


def crls_by_issuer(ca: Cli) -> dict[str, bytes]:
    """The PEM CRLs in ``<home>/crl.pem``, by issuer DN."""
    pems = re.findall(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----\n?",
                      (ca.home / "crl.pem").read_bytes(), re.DOTALL)
    found = {x509.load_pem_x509_crl(pem).issuer.rfc4514_string(): pem for pem in pems}
    assert len(found) == len(pems), "two CRLs from the same CA in crl.pem"
    return found


def publish_expired_crls(ca: Cli) -> None:
    """Make crl.pem hold CRLs of every CA signed eight days ago for seven days, as a CA that
    nobody republished leaves it. Built with the pki layer: the tool itself refuses to sign
    with a clock earlier than its newest CRL."""
    from mcp_pki.pki.crl import (
        authority_key_id,
        build_crl,
        crl_number,
        load_crl_ders,
        revoked_entries,
    )
    from mcp_pki.pki.der import pem_encode
    from mcp_pki.services.authority import unlock_all
    from mcp_pki.store.db import open_inventory, read_session

    engine = open_inventory(f"sqlite:///{ca.db}")
    try:
        with read_session(engine) as session, session.begin():
            issuers = unlock_all(session, lambda: PASSPHRASE.encode(), now=datetime.now(UTC))
    finally:
        engine.dispose()
    current = {authority_key_id(x509.load_der_x509_crl(der)): der for der in load_crl_ders((ca.home / "crl.pem").read_bytes())}
    then = datetime.now(UTC) - timedelta(days=8)
    expired = b""
    for _, issuer in sorted(issuers.items(), reverse=True):  # the issuing CA's first, as crl.pem lists them
        key_id = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        previous = current[key_id]
        number = (crl_number(x509.load_der_x509_crl(previous)) or 0) + 1
        der = build_crl(issuer=issuer, number=number, this_update=then, next_update=then + timedelta(days=7),
                        entries=revoked_entries(previous))
        expired += pem_encode(der)
    (ca.home / "crl.pem").write_bytes(expired)


def openssl_verify(ca: Cli, folder: Path, check: str) -> subprocess.CompletedProcess[str]:
    cert = str(folder / "tls.crt")
    return openssl("verify", check, "-CRLfile", str(ca.home / "crl.pem"),
                   "-CAfile", str(ca.home / "ca.crt"), "-untrusted", cert, cert)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class OneShotServer:
    """A TLS server in a thread: accepts one connection, echoes one byte, records the outcome."""

    context: ssl.SSLContext
    outcome: list[object] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError as error:
            self.outcome.append(error)
            return
        with connection:
            connection.settimeout(TIMEOUT)
            try:
                with self.context.wrap_socket(connection, server_side=True) as tls:
                    peer = tls.getpeercert()
                    tls.sendall(tls.recv(1))
                    self.outcome.append(peer)
            except (ssl.SSLError, OSError) as error:
                self.outcome.append(error)

    def result(self) -> object:
        self.thread.join(2 * TIMEOUT)
        self.listener.close()
        assert not self.thread.is_alive(), "server thread did not finish"
        assert len(self.outcome) == 1, self.outcome
        return self.outcome[0]


def exchange(port: int, context: ssl.SSLContext) -> bytes | BaseException:
    """Handshake, write one byte, read it back. A refusal shows as an exception or EOF (b"")."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
                tls.sendall(b"x")
                return tls.recv(1)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as error:
            return error


def common_name(peer: object) -> str:
    assert isinstance(peer, dict), peer
    return dict(item for rdn in peer["subject"] for item in rdn)["commonName"]


# --------------------------------------------------------------------------- 1. openssl verify


@pytest.mark.parametrize("check", ["-crl_check_all", "-crl_check"])
def test_openssl_verify_accepts_valid_and_rejects_revoked(ca: Cli, check: str) -> None:
    alice, bob = issue_client(ca, "alice"), issue_client(ca, "bob")
    for folder in (alice, bob):
        result = openssl_verify(ca, folder, check)
        assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result

    ca.ok("revoke", "alice", "--reason", "key-compromise")

    revoked = openssl_verify(ca, alice, check)
    assert revoked.returncode != 0, revoked
    expected = f"error {X509_V_ERR_CERT_REVOKED} at 0 depth lookup: certificate revoked"
    assert expected in revoked.stdout + revoked.stderr, revoked
    still_valid = openssl_verify(ca, bob, check)
    assert still_valid.returncode == 0, still_valid


def test_crl_pem_holds_one_crl_per_ca_and_crl_check_all_needs_both(ca: Cli, tmp_path: Path) -> None:
    alice = issue_client(ca, "alice")
    crls = crls_by_issuer(ca)
    assert set(crls) == {ROOT_DN, ISSUING_DN}
    # Only the issuing CA's CRL: -crl_check is satisfied, -crl_check_all is not (the root's
    # is missing).
    issuing_only = tmp_path / "issuing-only.pem"
    issuing_only.write_bytes(crls[ISSUING_DN])
    cert = str(alice / "tls.crt")
    base = ["-CRLfile", str(issuing_only), "-CAfile", str(ca.home / "ca.crt"),
            "-untrusted", cert, cert]
    assert openssl("verify", "-crl_check", *base).returncode == 0
    missing = openssl("verify", "-crl_check_all", *base)
    assert missing.returncode != 0, missing
    assert "unable to get certificate CRL" in missing.stdout + missing.stderr, missing


def test_openssl_verify_rejects_everyone_once_the_crl_expired(ca: Cli) -> None:
    alice = issue_client(ca, "alice")
    publish_expired_crls(ca)
    expired = openssl_verify(ca, alice, "-crl_check_all")
    assert expired.returncode != 0 and "CRL has expired" in expired.stdout + expired.stderr, expired
    ca.ok("crl")
    assert openssl_verify(ca, alice, "-crl_check_all").returncode == 0


# --------------------------------------------------------------------------- 2. Python TLS server


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2],
                         ids=["tls13", "tls12"])
@pytest.mark.parametrize("crl_flag", [ssl.VERIFY_CRL_CHECK_LEAF, ssl.VERIFY_CRL_CHECK_CHAIN],
                         ids=["leaf", "chain"])
def test_python_server_rejects_a_revoked_client(ca: Cli, crl_flag: ssl.VerifyFlags,
                                                tls_version: ssl.TLSVersion) -> None:
    srv, alice, bob = issue_server(ca), issue_client(ca, "alice"), issue_client(ca, "bob")
    alice_ctx, bob_ctx = client_context(ca, alice), client_context(ca, bob)

    before = server_context(ca, srv, crl_flag, tls_version)
    server = OneShotServer(before)
    assert exchange(server.port, alice_ctx) == b"x"
    assert common_name(server.result()) == "alice"

    ca.ok("revoke", "alice", "--reason", "key-compromise")

    # A server rebuilt from the new crl.pem refuses alice at the handshake ...
    server = OneShotServer(server_context(ca, srv, crl_flag, tls_version))
    seen_by_client = exchange(server.port, alice_ctx)
    assert seen_by_client != b"x", "a revoked client exchanged data"
    refused = server.result()
    assert isinstance(refused, ssl.SSLCertVerificationError), refused
    assert refused.verify_code == X509_V_ERR_CERT_REVOKED, (refused.verify_code,
                                                            refused.verify_message)
    assert "revoked" in refused.verify_message
    if tls_version is ssl.TLSVersion.TLSv1_2:
        # TLS 1.2: the server decides before its Finished, so the client gets the alert in
        # the handshake.
        assert isinstance(seen_by_client, ssl.SSLError), seen_by_client
        assert "CERTIFICATE_REVOKED" in str(seen_by_client).upper(), seen_by_client
    else:
        # TLS 1.3: the client's handshake is done first; the refusal shows on read, as an alert,
        # an EOF or a reset depending on timing.
        assert seen_by_client == b"" or isinstance(
            seen_by_client, (ssl.SSLError, ConnectionResetError)), seen_by_client

    # ... and still serves bob.
    server = OneShotServer(server_context(ca, srv, crl_flag, tls_version))
    assert exchange(server.port, bob_ctx) == b"x"
    assert common_name(server.result()) == "bob"

    # A context built before the revocation still holds the old CRL: servers must reload.
    server = OneShotServer(before)
    assert exchange(server.port, alice_ctx) == b"x"
    assert common_name(server.result()) == "alice"


def test_python_server_with_chain_check_needs_every_cas_crl(ca: Cli, tmp_path: Path) -> None:
    """VERIFY_CRL_CHECK_CHAIN without the root's CRL rejects a valid client: crl.pem must
    hold both."""
    srv, alice = issue_server(ca), issue_client(ca, "alice")
    issuing_only = tmp_path / "issuing-only.pem"
    issuing_only.write_bytes(crls_by_issuer(ca)[ISSUING_DN])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca.home / "ca.crt"))
    context.load_verify_locations(cafile=str(issuing_only))
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    context.load_cert_chain(str(srv / "tls.crt"), str(srv / "tls.key"))
    server = OneShotServer(context)
    assert exchange(server.port, client_context(ca, alice)) != b"x"
    refused = server.result()
    assert isinstance(refused, ssl.SSLCertVerificationError), refused
    assert "unable to get certificate CRL" in refused.verify_message

    server = OneShotServer(server_context(ca, srv, ssl.VERIFY_CRL_CHECK_CHAIN))
    assert exchange(server.port, client_context(ca, alice)) == b"x"
    assert common_name(server.result()) == "alice"


# --------------------------------------------------------------------------- 3./4. nginx


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info and info[1] == pid and info[0] != "Z":
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    info = _stat(pid)
    return info is not None and info[0] != "Z"


class Nginx:
    """A foreground nginx master with its own prefix, bound to one loopback port."""

    def __init__(self, prefix: Path, home: Path, srv: Path) -> None:
        self.prefix = prefix
        self.conf = prefix / "nginx.conf"
        self.error_log = prefix / "error.log"
        for folder in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / folder).mkdir(parents=True, exist_ok=True)
        self.home, self.srv = home, srv
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def _write_conf(self) -> None:
        p = self.prefix
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {p}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        server_name {SERVER_NAME};
        ssl_certificate {self.srv}/tls.crt;
        ssl_certificate_key {self.srv}/tls.key;
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_client_certificate {self.home}/ca.crt;
        ssl_crl {self.home}/crl.pem;
        location / {{ return 200 "hello $ssl_client_s_dn\\n"; }}
    }}
}}
""")

    def _command(self, *extra: str) -> list[str]:
        return [NGINX, "-c", str(self.conf), "-p", str(self.prefix), "-e", str(self.error_log),
                *extra]

    def start(self) -> None:
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = _free_port()
            self._write_conf()
            test = subprocess.run(self._command("-t"), check=False, capture_output=True, text=True, timeout=30)
            assert test.returncode == 0, test.stderr
            with open(self.prefix / "stderr.log", "ab") as sink:
                self.process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,
                                                stdout=sink, stderr=sink, start_new_session=True)
            if self._wait_listening():
                wait_until(lambda: bool(_children(self.pid)), "nginx workers")
                return
            self.stop()
            if "Address already in use" not in self.log():
                break
        raise AssertionError(f"nginx did not start:\n{self.log()}")

    def _wait_listening(self) -> bool:
        assert self.process is not None
        return listening(self.port, self.process, 10)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def reload(self) -> None:
        """SIGHUP, then wait until the old workers are gone and new ones serve (bounded)."""
        assert self.process is not None and self.process.poll() is None
        old = _children(self.pid)
        assert old, "nginx has no workers"
        log_offset = len(self.log())
        os.kill(self.pid, signal.SIGHUP)
        wait_until(lambda: bool(_children(self.pid) - old) and not any(_alive(w) for w in old),
                   "nginx to replace its workers after a reload")
        assert "[emerg]" not in self.log()[log_offset:], self.log()[log_offset:]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                # The master is our unreaped child, so its group id cannot have been reused.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(TIMEOUT)
                return
        # The master died on its own: kill any worker it left in its (our) process group.
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                info = _stat(int(entry.name))
                if info is None or info[2] != process.pid:
                    continue
                if (entry / "comm").read_text().strip() == "nginx":
                    os.kill(int(entry.name), signal.SIGKILL)


@dataclass(frozen=True)
class Response:
    status: int | None  # None: refused at the TLS layer
    body: str
    error: str = ""


def https_get(port: int, context: ssl.SSLContext) -> Response:
    request = f"GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
                tls.sendall(request)
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as error:
            return Response(None, "", repr(error))
    if not data:
        return Response(None, "", "EOF")
    head, _, body = data.partition(b"\r\n\r\n")
    return Response(int(head.split()[1]), body.decode(errors="replace"))


def assert_refused(response: Response) -> None:
    """With ``ssl_verify_client on`` nginx completes the handshake whatever the verification
    result and answers 400 (it never aborts the handshake): anything else is another failure."""
    assert response.status == 400 and "The SSL certificate error" in response.body, response


@pytest.fixture
def nginx(ca: Cli, tmp_path: Path) -> Iterator[Nginx]:
    if not Path(NGINX).is_file() or not os.access(NGINX, os.X_OK):
        pytest.skip(f"{NGINX} is absent: .ci/run installs Debian's nginx package")
    srv = issue_server(ca)
    server = Nginx(tmp_path / "nginx", ca.home, srv)
    try:
        server.start()
        yield server
    finally:
        server.stop()
    assert server.process is None


def test_nginx_refuses_an_offboarded_client_after_reload(ca: Cli, nginx: Nginx) -> None:
    alice, bob = issue_client(ca, "alice"), issue_client(ca, "bob")
    alice_ctx, bob_ctx = client_context(ca, alice), client_context(ca, bob)
    nginx.reload()  # a reload with an unchanged CRL keeps valid clients in

    for name, context in (("alice", alice_ctx), ("bob", bob_ctx)):
        response = https_get(nginx.port, context)
        assert response.status == 200, (response, nginx.log())
        assert f"CN={name}" in response.body, response

    ca.ok("offboard", "alice")
    # nginx reads the CRL only at start and reload: alice still gets in until then.
    assert https_get(nginx.port, alice_ctx).status == 200

    nginx.reload()
    assert_refused(https_get(nginx.port, alice_ctx))
    assert f"({X509_V_ERR_CERT_REVOKED}:certificate revoked)" in nginx.log(), nginx.log()
    response = https_get(nginx.port, bob_ctx)
    assert response.status == 200 and "CN=bob" in response.body, response


def test_nginx_refuses_a_client_without_certificate(ca: Cli, nginx: Nginx) -> None:
    anonymous = ssl.create_default_context(cafile=str(ca.home / "ca.crt"))
    response = https_get(nginx.port, anonymous)
    assert response.status == 400, response
    assert "No required SSL certificate was sent" in response.body, response


def test_nginx_rejects_everyone_once_the_crl_expired(ca: Cli, nginx: Nginx) -> None:
    alice = client_context(ca, issue_client(ca, "alice"))
    bob = client_context(ca, issue_client(ca, "bob"))
    nginx.reload()
    assert https_get(nginx.port, alice).status == 200
    assert https_get(nginx.port, bob).status == 200

    publish_expired_crls(ca)
    for pem in crls_by_issuer(ca).values():
        next_update = x509.load_pem_x509_crl(pem).next_update_utc
        assert next_update is not None and next_update < datetime.now(UTC)
    nginx.reload()
    assert_refused(https_get(nginx.port, alice))
    assert_refused(https_get(nginx.port, bob))
    assert f"({X509_V_ERR_CRL_HAS_EXPIRED}:CRL has expired)" in nginx.log(), nginx.log()

    ca.ok("crl")
    nginx.reload()
    response = https_get(nginx.port, alice)
    assert response.status == 200 and "CN=alice" in response.body, (response, nginx.log())


def test_nothing_outlives_the_nginx_fixture(ca: Cli, tmp_path: Path) -> None:
    if not Path(NGINX).is_file():
        pytest.skip(f"{NGINX} is absent: .ci/run installs Debian's nginx package")
    server = Nginx(tmp_path / "nginx", ca.home, issue_server(ca))
    server.start()
    master = server.pid
    workers = _children(master)
    assert workers
    server.stop()
    assert not _alive(master)
    wait_until(lambda: not any(_alive(w) for w in workers), "nginx workers to exit")
