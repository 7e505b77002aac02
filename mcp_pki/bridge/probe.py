"""The TLS path to the server, proved once before the host says anything.

Once the relay runs, a refused certificate surfaces as an empty ``ReadError`` deep inside
the HTTP client, and the host only sees its MCP server die. So the bridge first connects
on its own, with the very TLS context the relay will use, and sends one small HTTP request:
each way this can fail gets its own sentence.
"""

import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from mcp_pki import mtls
from mcp_pki.bridge import BridgeError
from mcp_pki.bridge.credentials import ClientCredentials

TIMEOUT = 10.0  # seconds, for each of connect, handshake and the first response
_HEAD_LIMIT = 16 * 1024
_BODY_LIMIT = 4096
# TLS alerts a server sends about the certificate we presented (TLS 1.2 sends them during
# the handshake; TLS 1.3 after it, on our first read).
_CERTIFICATE_ALERTS = (
    "BAD_CERTIFICATE", "UNSUPPORTED_CERTIFICATE", "CERTIFICATE_REVOKED", "CERTIFICATE_EXPIRED",
    "CERTIFICATE_UNKNOWN", "UNKNOWN_CA", "ACCESS_DENIED", "CERTIFICATE_REQUIRED",
)
# nginx with `ssl_verify_client on` completes the handshake, then answers 400 with one of these.
_NGINX_REFUSALS = (b"No required SSL certificate was sent", b"The SSL certificate error")
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCHES = (62, 64)


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    host: str
    port: int
    target: str  # the request target: path and query

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def host_header(self) -> str:
        """What an HTTP client sends as Host, which DNS-rebinding protection checks."""
        return self.address if self.port != 443 else self.address.rsplit(":", 1)[0]


def parse_endpoint(url: str) -> Endpoint:
    """An ``https://`` URL; anything else would send the protocol, or the identity, in clear."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise BridgeError(f"the bridge speaks HTTPS only (mutual TLS), not {parts.scheme or 'a bare host'}: {url}")
    try:
        port = parts.port or 443
    except ValueError:
        raise BridgeError(f"invalid port in {url}") from None
    if not parts.hostname:
        raise BridgeError(f"no host in {url}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Endpoint(url, parts.hostname, port, target)


def client_context(credentials: ClientCredentials) -> ssl.SSLContext:
    """Verify the server against our CA only (not the system store), present our chain."""
    try:
        return mtls.client_context(str(credentials.ca_file), str(credentials.cert_file), str(credentials.key_file))
    except mtls.TlsSetupError as exc:
        raise BridgeError(str(exc)) from None


def probe(endpoint: Endpoint, context: ssl.SSLContext, *, trusted: str, timeout: float = TIMEOUT) -> None:
    """Connect, handshake, send a GET and read the answer's head; raise on any refusal.

    An MCP endpoint answers a bare GET with 400 or 405 (or opens a stream), and any answer
    proves the server took our certificate. These say the relay would fail: nginx's 400 about
    the client certificate, 421 (a host name the server does not accept), 404 (nothing at that
    path) and 401/403 (the server wants credentials the bridge cannot send).
    """
    status, body = _ask(endpoint, context, trusted, timeout, _get(endpoint))
    if status == 404:
        # A server that routes only POST to its endpoint answers a GET with 404, not 405:
        # a POST is the proof (a ping, harmless wherever it lands).
        status, body = _ask(endpoint, context, trusted, timeout, _post_ping(endpoint))
    if status == 421:
        raise BridgeError(
            f"the server at {endpoint.address} does not accept the host name {endpoint.host_header} "
            "(HTTP 421): add it to the server's allowed hosts"
        )
    if status == 404:
        raise BridgeError(f"no MCP endpoint at {endpoint.url} (HTTP 404): check the path")
    if status in (401, 403):
        raise BridgeError(
            f"the server at {endpoint.url} wants other authentication (HTTP {status}): "
            "the bridge presents only the client certificate"
        )
    refusal = next((sign for sign in _NGINX_REFUSALS if sign in body), None)
    if status == 400 and refusal is not None:
        raise _refused(endpoint, refusal.decode("ascii"))


def _ask(
    endpoint: Endpoint, context: ssl.SSLContext, trusted: str, timeout: float, request: bytes
) -> tuple[int, bytes]:
    """One request on a connection of its own: (status, start of the body)."""
    raw = _connect(endpoint, timeout)
    with raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=endpoint.host)
        except ssl.SSLCertVerificationError as exc:
            raise _untrusted(endpoint, exc, trusted) from None
        except ssl.SSLError as exc:
            if _is_certificate_alert(exc):
                raise _refused(endpoint, mtls.ssl_reason(exc)) from None
            raise BridgeError(f"TLS handshake with {endpoint.address} failed: {mtls.ssl_reason(exc)}") from None
        except TimeoutError:
            raise BridgeError(f"TLS handshake with {endpoint.address} timed out after {timeout:g} s") from None
        except OSError as exc:
            raise _refused(endpoint, mtls.ssl_reason(exc)) from None
        with tls:
            return _exchange(tls, endpoint, timeout, request)


def _untrusted(endpoint: Endpoint, exc: ssl.SSLCertVerificationError, trusted: str) -> BridgeError:
    if exc.verify_code in _NAME_MISMATCHES:
        # Our CA may well have issued it: the name is what is wrong, not the trust.
        option = "--ip" if _is_address(endpoint.host) else "--dns"
        return BridgeError(
            f"the server certificate of {endpoint.address} is not valid for {endpoint.host} "
            f"(hostname mismatch): connect by a name the certificate holds, or reissue it with "
            f"{option} {endpoint.host}"
        )
    return BridgeError(
        f"the server certificate of {endpoint.address} is not trusted: {exc.verify_message.rstrip('.')} "
        f"(the bridge trusts only {trusted})"
    )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _connect(endpoint: Endpoint, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except socket.gaierror as exc:
        raise BridgeError(f"cannot resolve {endpoint.host}: {exc.strerror}") from None
    except ConnectionRefusedError:
        raise BridgeError(f"cannot connect to {endpoint.address}: connection refused") from None
    except TimeoutError:
        raise BridgeError(f"cannot connect to {endpoint.address}: no answer after {timeout:g} s") from None
    except OSError as exc:
        raise BridgeError(f"cannot connect to {endpoint.address}: {mtls.ssl_reason(exc)}") from None


def _get(endpoint: Endpoint) -> bytes:
    return (
        f"GET {endpoint.target} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n"
        "Accept: text/event-stream\r\nUser-Agent: mcp-pki-bridge\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


def _post_ping(endpoint: Endpoint) -> bytes:
    body = b'{"jsonrpc":"2.0","id":"mcp-pki-bridge-probe","method":"ping"}'
    return (
        f"POST {endpoint.target} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n"
        "Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nUser-Agent: mcp-pki-bridge\r\nConnection: close\r\n\r\n"
    ).encode("ascii") + body


def _exchange(tls: ssl.SSLSocket, endpoint: Endpoint, timeout: float, request: bytes) -> tuple[int, bytes]:
    """(status, start of the body) of the request. Under TLS 1.3 a refusal of our
    certificate arrives here, as an alert or a closed connection."""
    try:
        tls.sendall(request)
        data = _receive(tls, lambda data: b"\r\n\r\n" in data)
    except TimeoutError:
        raise BridgeError(f"{endpoint.address} sent no HTTP answer within {timeout:g} s") from None
    except (ssl.SSLError, OSError) as exc:
        raise _refused(endpoint, mtls.ssl_reason(exc)) from None
    if not data:
        raise _refused(endpoint, "it closed the connection after the TLS handshake")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status_line = lines[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
        raise BridgeError(f"{endpoint.address} does not answer HTTP over TLS")
    # Only a short body is worth waiting for (nginx's refusal page); an event stream never ends.
    length = next((int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                   if k.strip().lower() == b"content-length" and v.strip().isdigit()), 0)
    if len(body) < length <= _BODY_LIMIT:
        try:
            body += _receive(tls, lambda more: len(body) + len(more) >= length)
        except (TimeoutError, ssl.SSLError, OSError):
            pass  # the status is what matters
    return int(status_line[1]), body


def _receive(tls: ssl.SSLSocket, enough: Callable[[bytes], bool]) -> bytes:
    """Bytes until `enough` says so, the peer closes, or the head limit is reached."""
    data = b""
    while not enough(data) and len(data) < _HEAD_LIMIT:
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _refused(endpoint: Endpoint, detail: str) -> BridgeError:
    return BridgeError(f"the server at {endpoint.address} refused our client certificate ({detail})")


def _is_certificate_alert(exc: ssl.SSLError) -> bool:
    reason = (exc.reason or "").upper()
    return "ALERT" in reason and any(alert in reason for alert in _CERTIFICATE_ALERTS)
