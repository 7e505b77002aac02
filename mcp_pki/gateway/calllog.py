"""The tool-call audit log: one hash-chained JSON line per MCP request through the gateway.

Each line holds who asked (serial, name, roles), in which session, what (method and the
tool, resource or prompt name), a SHA-256 of the arguments (never the arguments: they may
hold secrets or personal data), the decision, the outcome and the duration; then ``seq``,
``prev`` (the previous line's hash) and ``hash``, a SHA-256 over the line's canonical JSON
without ``hash``. Editing, removing or reordering a line breaks the chain at that line, as
in the CA's own audit log. A restarted gateway reads the last line and continues the chain.

Appends are durable: each line is written with one ``write`` at once (so the file's order is
the order of the answers) and fsync-ed before the answer it records goes back to the client.
An fsync costs milliseconds (6.6 ms per line on the benchmark machine, against 2 us for the
write), so it runs in a worker thread and is shared: the lines written while one fsync runs
are all made durable by the next (group commit), and the event loop never waits on the disk.

Given the server's key (`CheckpointSigner`), the log also signs its head in a ``checkpoint``
line (see `checkpoints`): at start-up when it continues a file, at most `CHECKPOINT_DELAY`
after the first unsigned line, after every `CHECKPOINT_EVERY` lines, and at close. Not per
line: a signature costs 47 us with a P-256 key here, far more with RSA. A restarted gateway
links the lines after the file's last checkpoint before its own checkpoint vouches for them,
and refuses a file without one among its last `CHECKPOINT_EVERY` + 1 lines (an older
version's, or one rewritten without the key): it would sign the rewrite. `verify_file`
checks every line and every signature.
"""

import asyncio
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mcp_pki.errors import InvalidInput, PkiError
from mcp_pki.gateway.checkpoints import CHECKPOINT
from mcp_pki.timestamps import iso_utc

if TYPE_CHECKING:
    from cryptography import x509

    from mcp_pki.gateway.checkpoints import CheckpointSigner

logger = logging.getLogger("mcp_pki.gateway")

GENESIS_HASH = "0" * 64
FIELDS = ("time", "serial", "name", "roles", "session", "method", "target", "arguments_sha256",
          "decision", "outcome", "duration_ms")
CHECKPOINT_EVERY = 256  # lines: a busy log is signed this often
CHECKPOINT_DELAY = 1.0  # seconds: a quiet one this soon after its first unsigned line


def line_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def arguments_digest(arguments: Any) -> str | None:
    """SHA-256 of the arguments' canonical JSON, so equal arguments give equal digests."""
    if arguments is None:
        return None
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class CallLog:
    """Appends chained lines to a file (fsync per line, signed checkpoints when given a
    signer) or to stderr (no fsync, no checkpoints)."""

    def __init__(self, path: Path | None, signer: "CheckpointSigner | None" = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.path = path
        self._seq, self._prev = 0, GENESIS_HASH
        self._fd: int | None = None
        self._stream: TextIO | None = None
        self._written = self._synced = 0  # lines written, lines known to be on disk
        self._syncing: Any = None  # an anyio.Event while an fsync runs
        self._signer = signer if path is not None else None
        self._clock = clock
        self._signed_seq = 0  # the last checkpoint written, or 0
        self._sent_certificates = False  # the first checkpoint of a process carries them
        self._timer: asyncio.Task[None] | None = None
        # Lines after the file's last checkpoint when this process took it over: a gateway
        # that stopped without signing them, which the start-up checkpoint now vouches for.
        self.unsigned_at_start = 0
        if self._signer is not None and clock is None:
            raise ValueError("a signed call log needs a clock")
        if path is None:
            self._stream = sys.stderr
            return
        self._seq, self._prev, self.unsigned_at_start = _chain_end(path, signed=self._signer is not None)
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InvalidInput(f"cannot open the audit log {path}: {(exc.strerror or str(exc)).lower()}") from None
        if self._signer is not None and self._seq:
            # Vouch for the chain this process continues, and name its signer from here on.
            try:
                self._checkpoint()
                os.fsync(self._fd)
            except OSError as exc:
                os.close(self._fd)
                self._fd = None
                raise InvalidInput(f"cannot write to the audit log {path}: "
                                   f"{(exc.strerror or str(exc)).lower()}") from None
            self._synced = self._written

    @property
    def unsigned(self) -> int:
        """Lines written since the last checkpoint (always 0 without a signer)."""
        return self._seq - self._signed_seq if self._signer is not None else 0

    def write(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Chain and write one line now (not yet durable: see `append`), then a checkpoint
        if `CHECKPOINT_EVERY` lines are unsigned."""
        record = self._write_line(fields)
        if self.unsigned >= CHECKPOINT_EVERY:
            self._checkpoint()
        return record

    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Write one line and return once it is on disk, sharing fsyncs with concurrent calls."""
        record = self.write(fields)
        if self._fd is None:
            return record
        if self.unsigned and self._timer is None:
            # The gateway runs on anyio's asyncio backend; a task of the loop itself needs no
            # task group threaded through every caller, and the loop cancels it at exit.
            self._timer = asyncio.get_running_loop().create_task(self._sign_soon())
        await self._durable(self._written)
        return record

    async def _durable(self, upto: int) -> None:
        """Return once the first `upto` lines written are on disk."""
        import anyio
        import anyio.to_thread

        while self._synced < upto and self._fd is not None:
            if self._syncing is not None:
                await self._syncing.wait()  # an fsync that may have started before our write
                continue
            self._syncing = done = anyio.Event()
            written = self._written
            try:
                await anyio.to_thread.run_sync(os.fsync, self._fd)
                self._synced = max(self._synced, written)
            finally:
                self._syncing = None
                done.set()

    async def _sign_soon(self) -> None:
        import anyio

        await anyio.sleep(CHECKPOINT_DELAY)
        self._timer = None  # before the fsync: a line written meanwhile arms the next one
        if self._fd is None or not self.unsigned:
            return
        try:
            self._checkpoint()
            await self._durable(self._written)
        except OSError as exc:
            logger.error("cannot write a checkpoint to the audit log %s: %s", self.path,
                         (exc.strerror or str(exc)).lower())

    def _checkpoint(self) -> None:
        assert self._signer is not None and self._clock is not None
        fields = self._signer.fields(self._seq, self._prev, iso_utc(self._clock()),
                                     with_certificates=not self._sent_certificates)
        self._write_line(fields)
        self._sent_certificates = True
        self._signed_seq = self._seq

    def _write_line(self, fields: dict[str, Any]) -> dict[str, Any]:
        record = {**fields, "seq": self._seq + 1, "prev": self._prev}
        record["hash"] = line_hash(record)
        line = json.dumps(record, sort_keys=False, separators=(",", ":"), ensure_ascii=False) + "\n"
        if self._fd is not None:
            os.write(self._fd, line.encode("utf-8"))
            self._written += 1
        else:
            assert self._stream is not None
            self._stream.write(line)
            self._stream.flush()
        self._seq, self._prev = record["seq"], record["hash"]
        return record

    def close(self) -> None:
        """Sign what is unsigned, make it durable and close: the last line of a gateway that
        stopped cleanly is a checkpoint."""
        if self._fd is None:
            return
        try:
            if self.unsigned:
                self._checkpoint()
            if self._synced < self._written:  # an fsync the stopping event loop cancelled
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None


def _chain_end(path: Path, *, signed: bool) -> tuple[int, str, int]:
    """(seq, hash) of the last line, to continue the chain, and the number of lines after the
    last checkpoint. An unusable end is an error. So is, for a signed log, a tail that does
    not link or that is longer than a gateway of this version leaves unsigned: the start-up
    checkpoint would otherwise vouch for a file rewritten without the key while it was down."""
    wanted = CHECKPOINT_EVERY + 1 if signed else 1
    try:
        tail = _last_lines(path, wanted)
    except FileNotFoundError:
        return 0, GENESIS_HASH, 0
    except OSError as exc:
        raise InvalidInput(f"cannot read the audit log {path}: {(exc.strerror or str(exc)).lower()}") from None
    if not tail:
        return 0, GENESIS_HASH, 0
    advice = "check it with mcp-pki audit verify --file, then start a new file"
    later: dict[str, Any] | None = None
    for raw in reversed(tail):
        try:
            record = json.loads(raw)
            if line_hash(record) != record["hash"] or not isinstance(record["seq"], int):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            if later is None:
                raise InvalidInput(f"the last line of the audit log {path} is not an intact gateway record: "
                                   f"{advice}") from None
            raise InvalidInput(f"the audit log {path} is damaged before seq {later['seq']}: {advice}") from None
        if later is None:
            last = record
        elif later.get("prev") != record["hash"] or later["seq"] != record["seq"] + 1:
            raise InvalidInput(f"the audit log {path} is damaged before seq {later['seq']}: {advice}")
        if not signed or CHECKPOINT in record:
            return last["seq"], last["hash"], last["seq"] - record["seq"]
        later = record
    raise InvalidInput(f"the audit log {path} has no signed checkpoint in its last {len(tail)} lines (a log of "
                       f"an older version, or one rewritten without the gateway's key): {advice}")


def _last_lines(path: Path, count: int) -> list[bytes]:
    """Up to `count` last lines of the file, read backwards."""
    with open(path, "rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    pieces = data.rstrip(b"\n").split(b"\n")
    if position > 0:
        pieces = pieces[1:]  # may begin mid-line
    return [piece for piece in pieces if piece.strip()][-count:]


@dataclass(frozen=True, slots=True)
class FileVerdict:
    lines: int  # every line, checkpoints included; on a problem, the intact lines before it
    problem: str | None = None
    checkpoints: int = 0
    # Lines after the last checkpoint: only as safe as access to the file.
    unsigned_tail: int = 0
    last_signed: str | None = None  # the time of the last checkpoint, as it signed it

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_file(path: Path, anchors: "Sequence[x509.Certificate]") -> FileVerdict:
    """Walk the chain and check every checkpoint's signature, by a gateway certificate that
    chains to one of `anchors`; name the first line that was altered, removed, moved or
    rewritten. Cutting the file just after a checkpoint leaves no trace in it: the caller
    shows `last_signed` so that an operator can notice."""
    from mcp_pki.gateway.checkpoints import CheckpointError, CheckpointVerifier, is_checkpoint

    verifier = CheckpointVerifier(anchors)
    prev, expected_seq = GENESIS_HASH, 1
    checkpoints, last_checkpoint, last_signed = 0, 0, None
    position = 0
    # Line by line: a log of months is larger than the memory of the machine checking it.
    for position, (number, raw) in enumerate(_lines(path), start=1):
        try:
            record = json.loads(raw)
            seq, stored_prev, stored_hash = record["seq"], record["prev"], record["hash"]
        except (ValueError, KeyError, TypeError):
            return FileVerdict(number - 1, f"line {number} is not a gateway audit record")
        if line_hash(record) != stored_hash:
            return FileVerdict(number - 1, f"line {number} (seq {seq}) was altered: its hash does not match")
        if seq != expected_seq or stored_prev != prev:
            return FileVerdict(number - 1, f"line {number} (seq {seq}): seq {expected_seq} was expected "
                                           "here: a line was removed or moved")
        if is_checkpoint(record):
            try:
                verifier.check(record, seq - 1, prev)
            except CheckpointError as exc:
                return FileVerdict(number - 1, f"line {number} (seq {seq}), a checkpoint, {exc}")
            checkpoints, last_checkpoint, last_signed = checkpoints + 1, position, record["time"]
        prev, expected_seq = stored_hash, seq + 1
    return FileVerdict(position, None, checkpoints, position - last_checkpoint, last_signed)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    yield number, raw
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None
