"""Starting a gateway: every check first (each failure one `GatewayError`), then serving.

Split like the bridge's start, so that the command can print what it serves, as whom, and
under which policy before the first client arrives.
"""

import logging
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mcp_pki.errors import InvalidInput
from mcp_pki.gateway import GatewayError, require_runtime
from mcp_pki.gateway.calllog import CallLog
from mcp_pki.gateway.checkpoints import CheckpointSigner
from mcp_pki.gateway.policy import ALLOW_ALL, Permissions, Policy, load_policy
from mcp_pki.gateway.revocation import FileState, LiveRevocation
from mcp_pki.gateway.tls import ServerTls, TlsOptions, load_server_tls, resolve_files
from mcp_pki.mtls import Identity
from mcp_pki.services.home import Home

if TYPE_CHECKING:  # the runtime's modules load only when the gateway runs
    from contextlib import AbstractAsyncContextManager

    from mcp_pki.gateway.sessions import Peer, Session, UpstreamFactory
    from mcp_pki.gateway.upstream import Upstream

logger = logging.getLogger("mcp_pki.gateway")

DEFAULT_LISTEN = "127.0.0.1:8443"
CRL_REFRESH_MIN, CRL_REFRESH_MAX = 0.1, 24 * 3600.0


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    command: tuple[str, ...]
    upstream_url: str | None
    listen: str = DEFAULT_LISTEN
    crl_refresh: float = 5.0
    fail_on_stale_crl: bool = False
    policy_file: Path | None = None
    audit_log: Path | None = None
    session_idle: float = 30 * 60.0
    max_sessions: int = 100
    max_sessions_per_client: int = 10
    max_body: int = 4 * 1024 * 1024


class PolicyFile:
    """The policy in force, reloaded when its file changes; a bad edit keeps the previous."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.policy: Policy | None = None
        self._state: FileState | None = None
        if path is not None:
            self._state = FileState.of(path)
            try:
                self.policy = load_policy(path)
            except InvalidInput as exc:
                raise GatewayError(str(exc)) from None

    def permissions(self, identity: Identity) -> Permissions:
        return ALLOW_ALL if self.policy is None else self.policy.permissions(identity)

    def reload(self) -> None:
        if self.path is None:
            return
        state = FileState.of(self.path)
        if state == self._state:
            return
        self._state = state
        try:
            self.policy = load_policy(self.path)
        except InvalidInput as exc:
            logger.error("%s: keeping the previous policy", exc)
            return
        logger.info("reloaded the policy %s: %s", self.path, self.policy.describe())


@dataclass
class PreparedGateway:
    options: GatewayOptions
    tls: ServerTls
    host: str
    port: int
    revocation: LiveRevocation
    policy: PolicyFile
    calllog: CallLog
    sock: "socket.socket"
    warnings: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}/mcp"

    def describe_policy(self) -> str:
        if self.policy.policy is None:
            return "no --policy: every client with a valid certificate may use every tool, resource and prompt"
        return f"policy {self.policy.path} ({self.policy.policy.describe()})"

    def run(self, *, verbose: bool = False) -> None:
        """Serve until SIGTERM/SIGINT (return) or a failure to listen (`GatewayError`)."""
        import anyio

        from mcp_pki.gateway.proxy import ProxySessionManager
        from mcp_pki.gateway.server import GatewayApp, Watchers, serve, utc_now
        from mcp_pki.gateway.sessions import SessionManager, SessionTable

        sock = self.sock
        manager: SessionTable
        if self.options.upstream_url is not None:
            manager = ProxySessionManager(
                url=self.options.upstream_url, identity_headers=identity_headers, permissions=self.policy.permissions,
                calllog=self.calllog, max_sessions=self.options.max_sessions, idle_seconds=self.options.session_idle,
                max_per_client=self.options.max_sessions_per_client,
            )
        else:
            manager = SessionManager(
                upstream=self._stdio_upstream(), permissions=self.policy.permissions, calllog=self.calllog,
                max_sessions=self.options.max_sessions, idle_seconds=self.options.session_idle,
                max_per_client=self.options.max_sessions_per_client,
            )
        app = GatewayApp(manager, self.revocation, self.options.max_body, utc_now)
        watchers = Watchers(self.revocation, manager, self.options.crl_refresh, self.policy.reload, utc_now)
        try:
            anyio.run(serve, app, sock, self.tls.context, watchers, manager, backend_options=_event_loop())
        finally:
            sock.close()
            self.calllog.close()

    def _stdio_upstream(self) -> "UpstreamFactory":
        from mcp_pki.gateway.upstream import stdio_upstream

        command = self.options.command

        def factory(session: "Session") -> "AbstractAsyncContextManager[Upstream]":
            return stdio_upstream(command, session.label)

        return factory


def _event_loop() -> dict[str, bool]:
    """uvloop where it is installed (the gateway extra brings it, except on Windows): its
    event loop and TLS run a relayed call in about two thirds of asyncio's time."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def identity_headers(peer: "Peer") -> Mapping[str, str]:
    """The headers nginx's target forwards (same names, same value formats), for --upstream."""
    from cryptography.hazmat.primitives import hashes

    certificate, identity = peer.certificate, peer.identity
    return {
        "X-Client-Verify": "SUCCESS",
        "X-Client-DN": escape_dn(identity.subject),
        "X-Client-Serial": identity.serial.upper(),
        "X-Client-Fingerprint": certificate.fingerprint(hashes.SHA1()).hex(),
    }


def escape_dn(subject: str) -> str:
    """A DN as an HTTP header value, written as nginx writes $ssl_client_s_dn: every byte of
    a non-ASCII character's UTF-8 and every control character as ``\\XX`` (``Société`` is
    ``Soci\\C3\\A9t\\C3\\A9``). A header carries ASCII only, and a raw é made the relay fail."""
    return "".join(
        char if " " <= char <= "~" else "".join(f"\\{byte:02X}" for byte in char.encode("utf-8"))
        for char in subject
    )


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise GatewayError(f"invalid --listen {text!r}: give HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host, int(port)


def check_upstream_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GatewayError(f"invalid --upstream {url!r}: give the MCP server's URL, e.g. http://127.0.0.1:8000/mcp")
    return url


def prepare_gateway(home: Home, tls_options: TlsOptions, options: GatewayOptions,
                    environ: Mapping[str, str], *, now: datetime) -> PreparedGateway:
    """Check the runtime, the command, the address, TLS, CRL, policy and audit log."""
    require_runtime()
    if options.upstream_url is not None and options.command:
        raise GatewayError("give either --upstream URL or -- COMMAND, not both")
    if options.upstream_url is None and not options.command:
        raise GatewayError("give the stdio MCP server to serve after --, e.g. mcp-pki gateway --as srv -- "
                           "python server.py (or --upstream URL)")
    if options.upstream_url is not None:
        check_upstream_url(options.upstream_url)
    # Written so that NaN fails too; inf would make the watcher's sleep fail, and a refresh
    # rarer than daily leaves a revoked client in for longer than anyone means.
    if not CRL_REFRESH_MIN <= options.crl_refresh <= CRL_REFRESH_MAX:
        raise GatewayError(f"invalid --crl-refresh {options.crl_refresh:g}: give a number of seconds from "
                           f"{CRL_REFRESH_MIN:g} to {CRL_REFRESH_MAX:g} (a day)")
    host, port = parse_listen(options.listen)
    files = resolve_files(home, tls_options, environ, now=now)
    tls = load_server_tls(files, now=now)
    revocation = LiveRevocation(tls.context, files.crl_file, tls.trusted, fail_on_stale=options.fail_on_stale_crl)
    revocation.load(now=now)
    warnings: list[str] = []
    if files.crl_file is None:
        warnings.append("no CRL (--crl FILE or TLS_CRL): revoked client certificates are NOT refused")
    elif revocation.current is not None and revocation.current.is_stale(now):
        warnings.append(f"the CRL in {files.crl_file} has expired: publish a new one (mcp-pki crl)")
    policy = PolicyFile(options.policy_file)
    from mcp_pki.gateway.server import bind, utc_now

    sock = bind(host, port)  # last: every check that can fail has passed
    try:
        # The server's own key signs the log's checkpoints: whoever can rewrite the file
        # without it cannot make them match.
        calllog = CallLog(options.audit_log, CheckpointSigner(tls.key, tls.chain), utc_now)
    except InvalidInput as exc:
        sock.close()
        raise GatewayError(str(exc)) from None
    if calllog.unsigned_at_start:
        warnings.append(f"the audit log {options.audit_log} ended with {calllog.unsigned_at_start} line(s) after "
                        "its last signed checkpoint (a gateway that stopped without signing them): this "
                        "gateway's start-up checkpoint now vouches for them")
    return PreparedGateway(options, tls, host, port, revocation, policy, calllog, sock, warnings)


def configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mcp-pki gateway: %(levelname)s %(message)s"))
    root = logging.getLogger("mcp_pki.gateway")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    # The SDK's and uvicorn's own logs: warnings and worse, one line each.
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
