"""The tamper-evident audit log: a hash chain over every CA operation, signed at every
signing operation.

Each record's hash covers its own fields and the previous record's hash, so editing or
deleting a record breaks the chain at that point. A hash chain alone does not stop someone
who can write the database: they can rewrite every record and recompute every hash. So each
command that signs with a CA key also signs the chain's head with the issuing CA key, in a
"checkpoint" record: history up to the last checkpoint cannot be rewritten without the CA
passphrase. Deleting the newest records leaves a valid chain, so `verify_audit_log` also
checks that every CA, certificate, revocation and CRL number in the inventory has the
record that made it, and that every revocation the log records is still in the inventory.
"""

import base64
import binascii
import getpass
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from sqlalchemy import Connection, Engine, Row, insert, select

from mcp_pki.pki.crl import entry_serial, revoked_entries
from mcp_pki.pki.profiles import Issuer, serial_hex
from mcp_pki.pki.signatures import is_issued_by, is_signed_by, sign
from mcp_pki.services.crls import newest_signed_crls
from mcp_pki.store.db import connection_of, read_transaction
from mcp_pki.store.tables import audit_log, authorities, certificates, crl_publications, revocations

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

GENESIS_HASH = "0" * 64
CHECKPOINT = "checkpoint"


def current_operator() -> str:
    """The OS account running the command, from its user id: $USER and $LOGNAME are the
    caller's to set, so they are used only where there are no user ids (Windows)."""
    if hasattr(os, "geteuid"):
        import pwd

        try:
            return pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            return f"uid:{os.geteuid()}"
    return getpass.getuser()


def append_record(
    db: "Connection | Session",
    *,
    now: datetime,
    action: str,
    target_serial: str | None = None,
    target_name: str | None = None,
    details: dict[str, Any] | None = None,
    signer: Issuer | None = None,
    outcome: str = "success",
) -> None:
    """Add one record to the chain inside the caller's transaction (`db`). Never pass secrets.

    A command that fails rolls back and changes nothing, its record included; the outcome
    is "success" but for the few refusals recorded on their own (a wrong CA passphrase). A
    command that signed with a CA key passes the issuing CA as `signer`, which signs the
    new head of the chain in a checkpoint record.
    """
    chain = AuditChain(db, now=now)
    chain.append(action=action, target_serial=target_serial, target_name=target_name, details=details,
                 signer=signer, outcome=outcome)
    chain.write()


class AuditChain:
    """Records chained in memory and inserted together, inside the caller's transaction:
    a bulk command's thousand records cost one insert, not a thousand reads of the head.
    Nothing else may append to the log until `write`: the write lock ensures that."""

    def __init__(self, db: "Connection | Session", *, now: datetime) -> None:
        self._connection = connection_of(db)
        last = self._connection.execute(
            select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
        ).first()
        self._seq: int = last.seq if last else 0
        self._hash: str = last.hash if last else GENESIS_HASH
        self._now, self._operator = now, current_operator()
        self._pending: list[dict[str, Any]] = []

    def append(
        self, *, action: str, target_serial: str | None = None, target_name: str | None = None,
        details: dict[str, Any] | None = None, signer: Issuer | None = None, outcome: str = "success",
    ) -> None:
        """Chain one record; with `signer`, a checkpoint signing the chain up to it."""
        self._add(action=action, target_serial=target_serial, target_name=target_name, outcome=outcome,
                  details=details or {})
        if signer is not None:
            signature = sign(signer.key, checkpoint_message(self._seq, self._hash))
            self._add(
                action=CHECKPOINT, target_serial=serial_hex(signer.certificate.serial_number), target_name=None,
                outcome="success",
                details={"signed_seq": self._seq, "signed_hash": self._hash,
                         "signature": base64.b64encode(signature).decode("ascii")},
            )

    def write(self) -> None:
        if self._pending:
            self._connection.execute(insert(audit_log), self._pending)
            self._pending = []

    def _add(self, **fields: Any) -> None:
        record = {"seq": self._seq + 1, "at": self._now, "operator": self._operator, **fields,
                  "prev_hash": self._hash}
        record["hash"] = _hash(record)
        self._pending.append(record)
        self._seq, self._hash = record["seq"], record["hash"]


def checkpoint_message(seq: int, head_hash: str) -> bytes:
    """What a checkpoint signs: the position and hash of the record it vouches for, whose
    hash covers every record before it."""
    return f"mcp-pki audit checkpoint\n{seq}\n{head_hash}".encode("ascii")


_HASHED = ("seq", "at", "operator", "action", "target_serial", "target_name", "outcome", "details", "prev_hash")


def record_hash(record: Any) -> str:
    """The hash of a record: a row read back, or an ORM object being written."""
    return _hash({name: getattr(record, name) for name in _HASHED})


def _hash(record: dict[str, Any]) -> str:
    canonical = json.dumps(
        {name: record[name].isoformat() if name == "at" else record[name] for name in _HASHED},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def list_records(engine: Engine, *, since: datetime | None = None) -> list[Row[Any]]:
    query = select(audit_log).order_by(audit_log.c.seq)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    with read_transaction(engine) as connection:
        return list(connection.execute(query).all())


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    records: int
    problem: str | None  # None when the chain is intact
    checkpoints: int = 0
    # Records after the last checkpoint: they are only as safe as access to the database.
    unsigned_tail: int = 0

    @property
    def operations(self) -> int:
        """The records of CA operations, without the checkpoints that sign them."""
        return self.records - self.checkpoints

    @property
    def ok(self) -> bool:
        return self.problem is None


def _vouches(record: Row[Any]) -> bool:
    """Whether the record stands for something signed: a CA, certificate, revocation or CRL.
    Such a record is followed by its checkpoint once the log has checkpoints."""
    details = record.details
    return record.action in {"init-ca", "issue", "renew", "revoke", "offboard", "publish-crl"} or any(
        details.get(key) for key in ("created_serials", "revoked_serials", "crl_numbers")
    )


class _ChainError(Exception):
    pass


def verify_audit_log(engine: Engine, *, root_pem: bytes | None = None, crl_file: Path | None = None) -> AuditVerdict:
    """Check the chain and its signed checkpoints, then that every CA, certificate,
    revocation and CRL number in the inventory has the record that made it, and that every
    revocation the log records is still in the inventory.

    `root_pem` is the root certificate distributed from the home folder (``ca.crt``):
    checkpoints must be signed by a CA that chains to it, so that a CA row planted in the
    database cannot vouch for a rewritten log. The revocations are also compared, both
    ways, with the newest CRL each CA signed (in the inventory or in `crl_file`).
    """
    with read_transaction(engine) as connection:
        records = list(connection.execute(select(audit_log).order_by(audit_log.c.seq)).all())
        try:
            signers = _checkpoint_signers(connection, root_pem)
            checkpoints, last_signed = _verify_chain(records, signers)
        except _ChainError as exc:
            return AuditVerdict(len(records), str(exc))
        created: set[Any] = set()
        revoked: set[Any] = set()
        crl_numbers: set[Any] = set()
        for record in records:
            details = record.details
            if record.action in {"init-ca", "issue", "renew"}:
                created.add(record.target_serial)
                created.update(details.get("created_serials", []))
            if record.action == "revoke" and record.target_serial:
                revoked.add(record.target_serial)
            revoked.update(details.get("revoked_serials", []))
            if details.get("revoked_old"):
                revoked.add(details["renews"])
            crl_numbers.update(details.get("crl_numbers", []))
        inventory_revoked: set[str] = set(connection.scalars(
            select(certificates.c.serial).join(revocations, revocations.c.certificate_id == certificates.c.id)))
        ca_serials: list[str] = list(connection.scalars(select(authorities.c.serial)))
        serials: list[str] = list(connection.scalars(select(certificates.c.serial)))
        numbers: list[int] = list(connection.scalars(select(crl_publications.c.number).distinct()))
        expectations: list[tuple[str, object, set[Any]]] = [
            *((f"CA {s}", s, created) for s in ca_serials),
            *((f"certificate {s}", s, created) for s in serials),
            *((f"the revocation of {s}", s, revoked) for s in inventory_revoked),
            *((f"CRL number {n}", n, crl_numbers) for n in numbers),
        ]
        for what, key, recorded in expectations:
            if key not in recorded:
                return AuditVerdict(len(records), f"{what} has no audit record: records were removed")
        for serial in sorted(revoked - inventory_revoked):
            return AuditVerdict(
                len(records),
                f"the audit log records the revocation of {serial}, but the inventory has no revocation "
                f"for it: a revocation was removed from the database",
            )
        problem = _compare_with_signed_crls(connection, crl_file)
        if problem is not None:
            return AuditVerdict(len(records), problem)
    return AuditVerdict(
        len(records), None, checkpoints=checkpoints, unsigned_tail=len(records) - last_signed,
    )


def _compare_with_signed_crls(connection: Connection, crl_file: Path | None) -> str | None:
    """The first disagreement between the inventory's revocations and the newest CRL each CA
    signed: a serial on the CRL that the inventory does not hold as revoked, or a revocation
    that the CRL should list but does not."""
    cas = {a.id: a for a in connection.execute(select(authorities)).all()}
    ca_certificates = {i: x509.load_pem_x509_certificate(a.certificate_pem.encode()) for i, a in cas.items()}
    for authority_id, signed in newest_signed_crls(connection, ca_certificates, crl_file).items():
        listed = {entry_serial(entry) for entry in revoked_entries(signed.der)}
        rows: Any = connection.execute(  # unpacked below: reading columns by name costs more
            select(certificates.c.serial, certificates.c.not_after, revocations.c.revoked_at)
            .join(revocations, revocations.c.certificate_id == certificates.c.id)
            .where(certificates.c.issuer_id == authority_id)
        ).all()
        held: dict[int, tuple[datetime, datetime]] = {
            int(serial, 16): (not_after, revoked_at) for serial, not_after, revoked_at in rows
        }
        where = f"CRL #{signed.number} of {cas[authority_id].subject} ({signed.source})"
        for serial in sorted(listed - held.keys()):
            return f"certificate {serial:x} is revoked on {where}, but the inventory has no revocation for it"
        for serial, (not_after, revoked_at) in sorted(held.items()):
            if serial not in listed and revoked_at <= signed.this_update <= not_after:
                return f"the revocation of {serial:x} is missing from {where}"
    return None


def _checkpoint_signers(connection: Connection, root_pem: bytes | None) -> dict[str, x509.Certificate]:
    """Our CA certificates by serial, each one checked to chain to the distributed root."""
    cas = connection.execute(select(authorities)).all()
    ca_certificates = {}
    for authority in cas:
        try:
            ca_certificates[authority.serial] = x509.load_pem_x509_certificate(authority.certificate_pem.encode())
        except ValueError:
            raise _ChainError(f"CA {authority.serial} has an unreadable certificate in the inventory") from None
    roots = [c for a, c in zip(cas, ca_certificates.values(), strict=True) if a.parent_id is None]
    if root_pem is not None:
        try:
            distributed = x509.load_pem_x509_certificate(root_pem)
        except ValueError:
            distributed = None
        if distributed is not None and distributed not in roots:
            raise _ChainError("the inventory's root CA is not the one in ca.crt: the CA rows were replaced")
    trusted = {}
    for serial, certificate in ca_certificates.items():
        if any(certificate == root or is_issued_by(certificate, root) for root in roots):
            trusted[serial] = certificate
    return trusted


def _verify_chain(records: list[Row[Any]], signers: dict[str, x509.Certificate]) -> tuple[int, int]:
    """Walk the hash chain and check every checkpoint; return the number of checkpoints and
    the position of the last one (which, through the chain, signs every record before it)."""
    expected_prev = GENESIS_HASH
    checkpoints, last_signed = 0, 0
    last_vouching: Row[Any] | None = None
    for position, record in enumerate(records, start=1):
        if record.seq != position:
            raise _ChainError(f"record {position} is missing (next is {record.seq})")
        if record.prev_hash != expected_prev:
            raise _ChainError(f"record {record.seq} does not link to record {position - 1}")
        if record_hash(record) != record.hash:
            raise _ChainError(f"record {record.seq} ({record.action}) was altered")
        if record.action == CHECKPOINT:
            _check_checkpoint(record, records, signers)
            checkpoints += 1
            last_signed = position
        elif _vouches(record):
            last_vouching = record
        expected_prev = record.hash
    # Once the log has checkpoints, every record that vouches for something signed is
    # followed by one. Rewriting history breaks every later checkpoint's signature; dropping
    # those checkpoints leaves the later records unsigned, which is caught here.
    if checkpoints and last_vouching is not None and last_vouching.seq > last_signed:
        raise _ChainError(
            f"record {last_vouching.seq} ({last_vouching.action}) has no signed checkpoint after it: "
            f"the log was rewritten without the CA key"
        )
    return checkpoints, last_signed


def _check_checkpoint(record: Row[Any], records: list[Row[Any]], signers: dict[str, x509.Certificate]) -> None:
    details = record.details
    signed_seq, signed_hash = details.get("signed_seq"), details.get("signed_hash")
    if signed_seq != record.seq - 1 or signed_hash != records[record.seq - 2].hash:
        raise _ChainError(f"checkpoint {record.seq} does not sign the record before it")
    certificate = signers.get(record.target_serial or "")
    if certificate is None:
        raise _ChainError(f"checkpoint {record.seq} names a signer that is not one of our CAs")
    try:
        signature = base64.b64decode(str(details.get("signature", "")), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if not is_signed_by(certificate, signature, checkpoint_message(signed_seq, signed_hash)):
        raise _ChainError(
            f"checkpoint {record.seq} has an invalid signature: records up to {signed_seq} were rewritten"
        )
