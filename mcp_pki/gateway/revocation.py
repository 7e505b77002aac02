"""Live revocation: the CRL file, reloaded when it changes, and checked on every request.

A CRL loaded into a TLS context only affects new handshakes, and an HTTP keep-alive
connection keeps its verified certificate for as long as it stays open. So the gateway does
both: each accepted CRL is added to the server context (OpenSSL uses the newest CRL of an
issuer, by thisUpdate, for the next handshakes), and every request is checked against the
current revoked set by the serial of its connection's certificate.

A CRL file that fails to load or verify, or that is older than the one in force (a
rollback to a validly signed CRL from before a revocation), leaves the previous CRLs in force
and is logged.
Past its nextUpdate a CRL is logged loudly at every refresh; serving on is the default, and
``--fail-on-stale-crl`` refuses every client instead. OpenSSL itself would refuse everyone
with an expired CRL, so while serving on a stale CRL the handshake does not check CRLs and
the request path alone does (with the stale CRL's entries).
"""

import logging
import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from mcp_pki import mtls
from mcp_pki.errors import InvalidInput
from mcp_pki.gateway import GatewayError

logger = logging.getLogger("mcp_pki.gateway")

_CRL_FLAGS = ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_CRL_CHECK_CHAIN


@dataclass(frozen=True, slots=True)
class FileState:
    """What tells a replaced or rewritten file apart: `os.replace` changes the inode, an
    in-place write the size or the modification time."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileState | None":
        try:
            stat = path.stat()
        except OSError:
            return None
        return cls(stat.st_ino, stat.st_size, stat.st_mtime_ns)


class LiveRevocation:
    """The revoked set in force, and the context whose handshakes it governs."""

    def __init__(
        self, context: ssl.SSLContext, crl_file: Path | None, trusted: tuple[x509.Certificate, ...],
        *, fail_on_stale: bool,
    ) -> None:
        self._context, self.crl_file, self._trusted = context, crl_file, trusted
        self.fail_on_stale = fail_on_stale
        self.current: mtls.RevocationSet | None = None
        self._state: FileState | None = None
        self._issuers = {ca.subject.rfc4514_string(): ca for ca in trusted}

    def load(self, *, now: datetime) -> None:
        """At start: a CRL file that cannot be used is an error, not a warning."""
        if self.crl_file is None:
            return
        self._state = FileState.of(self.crl_file)
        try:
            data = self.crl_file.read_bytes()
        except OSError as exc:
            raise GatewayError(f"cannot read the CRL file {self.crl_file}: "
                               f"{(exc.strerror or str(exc)).lower()}") from None
        try:
            revocations = mtls.verified_revocations(data, self._trusted)
        except InvalidInput as exc:
            raise GatewayError(f"cannot use the CRL file {self.crl_file}: {exc}") from None
        self._accept(revocations, now=now)

    def refresh(self, *, now: datetime) -> bool:
        """Reload the CRL file if it changed; True when a new revoked set is in force."""
        if self.crl_file is None:
            return False
        changed = False
        state = FileState.of(self.crl_file)
        if state != self._state:
            self._state = state
            changed = self._reload(now=now)
        self._warn_if_stale(now=now)
        return changed

    def _reload(self, *, now: datetime) -> bool:
        assert self.crl_file is not None
        try:
            revocations = mtls.verified_revocations(self.crl_file.read_bytes(), self._trusted)
        except (OSError, InvalidInput) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            logger.error("cannot use the changed CRL file %s (%s): keeping the previous CRLs",
                         self.crl_file, reason)
            return False
        rollback = _rollback(self.current, revocations)
        if rollback is not None:
            logger.error("refused the changed CRL file %s (%s): keeping the previous CRLs", self.crl_file, rollback)
            return False
        before = self.current.revoked if self.current else frozenset()
        self._accept(revocations, now=now)
        added = len(revocations.revoked - before)
        logger.info("reloaded the CRL file %s: %d revoked certificate(s), %d new",
                    self.crl_file, len(revocations.revoked), added)
        return True

    def _accept(self, revocations: mtls.RevocationSet, *, now: datetime) -> None:
        self.current = revocations
        # From the bytes we verified, not from the file, which may have changed since; an
        # SSLContext loads CRLs only from a file (``cadata`` takes certificates only).
        with tempfile.NamedTemporaryFile(prefix="mcp-pki-crl-", suffix=".pem") as verified:
            verified.write(revocations.pem)
            verified.flush()
            self._context.load_verify_locations(cafile=verified.name)
        self._set_handshake_flags(now=now)

    def _set_handshake_flags(self, *, now: datetime) -> None:
        flags = self._context.verify_flags & ~_CRL_FLAGS
        current = self.current
        if current is not None and (self.fail_on_stale or not current.is_stale(now)):
            # The whole chain when every CA we trust has its CRL in the file, else the leaf.
            every_ca = all(current.covers(issuer) for issuer in self._issuers)
            flags |= ssl.VERIFY_CRL_CHECK_CHAIN if every_ca else ssl.VERIFY_CRL_CHECK_LEAF
        self._context.verify_flags = flags

    def _warn_if_stale(self, *, now: datetime) -> None:
        current = self.current
        self._set_handshake_flags(now=now)
        if current is None or not current.is_stale(now) or current.next_update is None:
            return
        consequence = ("refusing every client (--fail-on-stale-crl)" if self.fail_on_stale
                       else "serving on with it; publish a new one (mcp-pki crl)")
        logger.error("the CRL in %s expired on %s UTC: %s", self.crl_file,
                     f"{current.next_update:%Y-%m-%d %H:%M}", consequence)

    def refusal(self, certificate: x509.Certificate, *, now: datetime) -> str | None:
        """Why a request on a connection with this client certificate is refused, or None."""
        if certificate.not_valid_after_utc <= now:
            return "the client certificate has expired"
        current = self.current
        if current is None:
            return None
        if self.fail_on_stale and current.is_stale(now):
            return "the gateway's CRL has expired (--fail-on-stale-crl)"
        issuer = certificate.issuer.rfc4514_string()
        if current.is_revoked(issuer, certificate.serial_number):
            return "the client certificate has been revoked"
        parent = self._issuers.get(issuer)
        if parent is not None and current.is_revoked(parent.issuer.rfc4514_string(), parent.serial_number):
            return "the CA of the client certificate has been revoked"
        return None


def _rollback(current: mtls.RevocationSet | None, new: mtls.RevocationSet) -> str | None:
    """Why `new` would roll revocations back, or None. An older CRL is validly signed too:
    put back in place of the current one, it would let revoked clients in again. So every
    issuer with a CRL in force keeps one, and none goes back to a lower CRL number (nor, with
    equal numbers or none, to an earlier thisUpdate)."""
    if current is None:
        return None
    newest = _newest_by_issuer(new)
    for issuer, order in _newest_by_issuer(current).items():
        if issuer not in newest:
            return f"it has no CRL of {issuer}, whose CRL is in force"
        if newest[issuer] < order:
            return f"its CRL of {issuer} is older than the one in force ({_describe(newest[issuer])} < {_describe(order)})"
    return None


def _newest_by_issuer(revocations: mtls.RevocationSet) -> dict[str, tuple[int, datetime]]:
    newest: dict[str, tuple[int, datetime]] = {}
    for crl in revocations.crls:
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            number = -1
        issuer, order = crl.issuer.rfc4514_string(), (number, crl.last_update_utc)
        newest[issuer] = max(newest.get(issuer, order), order)
    return newest


def _describe(order: tuple[int, datetime]) -> str:
    number, this_update = order
    return f"number {number}" if number >= 0 else f"issued {this_update:%Y-%m-%d %H:%M:%S}"
