"""gateway: revocation is live, on open connections and sessions as on new handshakes.

`mcp-pki revoke` republishes ``<home>/crl.pem``; the running gateway (``--as srv`` reads that
file) must shut the client out within two refresh intervals, on the keep-alive connection it
already has, in the session it already has (whose process ends), and at the next handshake,
while other clients go on. A CRL that does not verify changes nothing.
"""

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.gateway_support import Gateway, RawClient, new_ca, process_alive, wait_until
from tests.test_tls_revocation import publish_expired_crls

REFRESH = 1.0  # --crl-refresh, seconds


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("revocation-ca"), "Revocation")
    for name in ("carol", "dave", "erin"):
        cli.ok("issue", "client", name)
    return cli


@pytest.fixture(scope="module")
def gateway(pki: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with Gateway(pki, "--as", "srv", "--crl-refresh", str(REFRESH), log=log) as running:
        yield running


def _refused(client: RawClient) -> bool:
    status, _answer = client.request("ping")
    return status == 403


def _handshake_refused(pki: Cli, folder: Path, port: int) -> bool:
    fresh = RawClient(pki, folder, port)
    try:
        fresh.initialize()
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    except AssertionError:
        return True  # answered, but not with a session (403)
    finally:
        fresh.close()
    return False


def test_a_revoked_client_is_shut_out_of_its_open_connection_and_session(pki: Cli, gateway: Gateway) -> None:
    carol, dave = RawClient(pki, pki.cwd / "carol", gateway.port), RawClient(pki, pki.cwd / "dave", gateway.port)
    try:
        carol.initialize()
        dave.initialize()
        status, answer = carol.call("pid")
        assert status == 200 and answer is not None, answer
        carol_pid = int(answer["result"]["content"][0]["text"])
        socket_before = carol.connection.sock
        assert process_alive(carol_pid)

        crl = pki.home / "crl.pem"
        published_before = crl.stat().st_mtime
        pki.ok("revoke", "carol")
        published = crl.stat().st_mtime
        assert published != published_before
        # The bound is on the gateway: a request sent 2 x --crl-refresh after the new CRL was
        # written is refused (what a request then costs on a busy machine is not its doing).
        asked = time.time()
        while not _refused(carol):
            assert time.time() - published < 4 * REFRESH + 5, "carol is still served"
            time.sleep(0.05)
            asked = time.time()
        took = asked - published
        assert took <= 2 * REFRESH, f"the request sent {took:.2f} s after the new CRL was still served"
        assert carol.connection.sock is socket_before  # the same keep-alive connection
        # Her session ended with its process; a new connection fails at the handshake.
        wait_until(lambda: not process_alive(carol_pid), "the end of carol's server process", timeout=5)
        assert _handshake_refused(pki, pki.cwd / "carol", gateway.port)
        # Dave is unaffected: same session, same connection.
        status, answer = dave.call("echo", text="still here")
        assert status == 200 and answer is not None and "error" not in answer, answer
    finally:
        carol.close()
        dave.close()
    log = gateway.stderr()
    assert "the client certificate has been revoked" in log
    assert "Traceback" not in log


def test_a_crl_that_does_not_verify_keeps_the_previous_one(pki: Cli, gateway: Gateway, tmp_path: Path) -> None:
    crl = pki.home / "crl.pem"
    good = crl.read_bytes()
    erin = RawClient(pki, pki.cwd / "erin", gateway.port)
    try:
        erin.initialize()
        crl.write_bytes(good.replace(b"-----BEGIN X509 CRL-----\n", b"-----BEGIN X509 CRL-----\nAAAA", 1))
        wait_until(lambda: "cannot use the changed CRL file" in gateway.stderr(), "the error", timeout=4 * REFRESH)
        status, answer = erin.call("echo", text="unchanged")
        assert status == 200 and answer is not None and "result" in answer, answer
        assert _handshake_refused(pki, pki.cwd / "carol", gateway.port)  # still revoked
    finally:
        crl.write_bytes(good)
        erin.close()


def test_a_stale_crl_is_logged_and_served_on_or_refuses_everyone(pki: Cli, tmp_path: Path) -> None:
    """Past nextUpdate: logged at every refresh; --fail-on-stale-crl refuses every client."""
    stale = new_ca(tmp_path / "stale", "Stale")
    stale.ok("issue", "client", "frank")
    publish_expired_crls(stale)
    for flag, expected in (((), 200), (("--fail-on-stale-crl",), 403)):
        with Gateway(stale, "--as", "srv", "--crl-refresh", str(REFRESH), *flag,
                     log=tmp_path / f"gateway{len(flag)}.log") as gateway:
            frank = RawClient(stale, stale.cwd / "frank", gateway.port)
            try:
                if expected == 200:
                    frank.initialize()
                    status, _ = frank.call("echo", text="stale")
                else:
                    try:
                        status, _, _ = frank.post({"jsonrpc": "2.0", "id": 1, "method": "ping"})
                    except (ssl.SSLError, ConnectionError):
                        status = 403  # refused at the handshake: OpenSSL checks the CRL's dates too
                assert status == expected
            finally:
                frank.close()
            wait_until(lambda: gateway.stderr().count("expired on") >= 2, "two refreshes' warnings", timeout=5)
            assert gateway.stop() == 0
