"""Starting a bridge: every check first, then the relay.

Split in two so that the command can say who it connects as between the checks and the
relay: `prepare_bridge` (certificate, trust and the TLS path, each failure one
`BridgeError`), then `PreparedBridge.run`.
"""

import logging
import ssl
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mcp_pki.bridge import BridgeError, require_sdk
from mcp_pki.bridge.credentials import CheckedCertificate, check, from_files, from_inventory
from mcp_pki.bridge.probe import Endpoint, client_context, parse_endpoint, probe
from mcp_pki.services.home import Home


@dataclass(frozen=True, slots=True)
class CertificateSource:
    """``--as REF``, or ``--cert FILE --key FILE``; ``--ca FILE`` with either."""

    ref: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class PreparedBridge:
    endpoint: Endpoint
    certificate: CheckedCertificate
    context: ssl.SSLContext

    def run(self, *, verbose: bool = False) -> None:
        """Relay until the host closes stdin (return) or the server is lost (`BridgeError`)."""
        import anyio

        from mcp_pki.bridge.relay import relay

        # stdout carries the protocol: every log line, ours and the SDK's, goes to stderr.
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO if verbose else logging.WARNING,
            format="mcp-pki bridge: %(levelname)s %(name)s: %(message)s",
        )
        try:
            anyio.run(relay, self.endpoint.url, self.context)
        except BaseExceptionGroup as group:
            _raise_plainly(group, self.endpoint)


def prepare_bridge(home: Home, url: str, source: CertificateSource, *, now: datetime) -> PreparedBridge:
    """Check the SDK, the URL, our certificate and the TLS path to the server, in that order."""
    require_sdk()
    endpoint = parse_endpoint(url)
    if source.ref is not None:
        if source.cert_file or source.key_file:
            raise BridgeError("give either --as REF or --cert FILE --key FILE, not both")
        credentials = from_inventory(home, source.ref, source.ca_file, now=now)
    elif source.cert_file and source.key_file:
        credentials = from_files(home, source.cert_file, source.key_file, source.ca_file)
    else:
        raise BridgeError("give the client certificate: --as REF, or --cert FILE --key FILE")
    certificate = check(credentials, home.crl_file, now=now)
    context = client_context(credentials)
    probe(endpoint, context, trusted=str(credentials.ca_file))
    return PreparedBridge(endpoint, certificate, context)


def _raise_plainly(group: BaseExceptionGroup, endpoint: Endpoint) -> None:
    """Turn what the relay's task groups raised into one error line, or nothing at all."""
    import httpx2

    leaves = list(_leaves(group))
    for leaf in leaves:
        if isinstance(leaf, BridgeError):
            raise leaf from None
    for leaf in leaves:
        if isinstance(leaf, httpx2.TransportError | OSError) and not isinstance(leaf, BrokenPipeError):
            # An empty ReadError is how a TLS 1.3 server refuses a certificate it has stopped
            # accepting (a CRL reloaded mid-session).
            reason = str(leaf).strip() or "the server closed the connection (did it refuse our certificate?)"
            raise BridgeError(f"lost the connection to {endpoint.address}: {reason}") from None
    if all(isinstance(leaf, BrokenPipeError) for leaf in leaves):
        return  # the host closed our stdout: it is gone, nobody is left to tell
    raise group


def _leaves(error: BaseException) -> "list[BaseException]":
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
