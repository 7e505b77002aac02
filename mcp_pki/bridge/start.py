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

from mcp_pki.bridge import BridgeError, exception_leaves, require_sdk
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
    warnings: tuple[str, ...] = ()  # for the start-up lines: what the checks could not do

    def run(self, *, verbose: bool = False) -> None:
        """Relay until the host closes stdin (return) or the server is lost (`BridgeError`)."""
        import anyio

        from mcp_pki.bridge.relay import relay

        # stdout carries the protocol: every log line, ours and the SDK's, goes to stderr.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter((logging.Formatter if verbose else _OneLineFormatter)(_LOG_FORMAT))
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
        try:
            anyio.run(relay, self.endpoint, self.context)
        except BaseExceptionGroup as group:
            _raise_plainly(group)


_LOG_FORMAT = "mcp-pki bridge: %(levelname)s %(name)s: %(message)s"


class _OneLineFormatter(logging.Formatter):
    """Each record on one line, without traceback: the SDK logs whole tracebacks for an answer
    it cannot parse (and answers the host with an error anyway), which a host's log would
    show as the bridge crashing. The exception's type stays; ``-v`` shows everything."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        text = self.formatMessage(record)
        if record.exc_info and record.exc_info[0] is not None:
            text += f" ({record.exc_info[0].__name__})"
        return " ".join(line.strip() for line in text.splitlines() if line.strip())


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
    # Said at every start, so that a teammate's bridge does not skip the check in silence.
    unchecked = certificate.revocation_unchecked
    warnings = (f"{unchecked}; revocation is left to the server",) if unchecked else ()
    return PreparedBridge(endpoint, certificate, context, warnings)


def _raise_plainly(group: BaseExceptionGroup) -> None:
    """What escaped the relay's task groups: its one error line, or nothing at all."""
    leaves = exception_leaves(group)
    for leaf in leaves:
        if isinstance(leaf, BridgeError):
            raise leaf from None
    if all(isinstance(leaf, BrokenPipeError) for leaf in leaves):
        return  # the host closed our stdout: it is gone, nobody is left to tell
    raise group

