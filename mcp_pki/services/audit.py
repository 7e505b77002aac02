"""The tamper-evident audit log: a hash chain over every CA operation.

Each record's hash covers its own fields and the previous record's hash, so editing or
deleting a record breaks the chain at that point. Deleting the newest records leaves a
valid chain, so `verify_audit_log` also checks that every CA and certificate in the
inventory has the record that created it.
"""

import getpass
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from mcp_pki.store.db import read_session
from mcp_pki.store.models import AuditRecord, Authority, Certificate, CrlPublication, Revocation

GENESIS_HASH = "0" * 64


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
    session: Session,
    *,
    now: datetime,
    action: str,
    target_serial: str | None = None,
    target_name: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditRecord:
    """Add one record to the chain inside the caller's transaction. Never pass secrets.

    The outcome is always "success": a command that fails rolls back and changes nothing,
    its record included.
    """
    last = session.execute(
        select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (last.seq + 1, last.hash) if last else (1, GENESIS_HASH)
    record = AuditRecord(
        seq=seq, at=now, operator=current_operator(), action=action,
        target_serial=target_serial, target_name=target_name, outcome="success",
        details=details or {}, prev_hash=prev_hash,
    )
    record.hash = record_hash(record)
    session.add(record)
    return record


def record_hash(record: AuditRecord) -> str:
    canonical = json.dumps(
        {
            "seq": record.seq,
            "at": record.at.isoformat(),
            "operator": record.operator,
            "action": record.action,
            "target_serial": record.target_serial,
            "target_name": record.target_name,
            "outcome": record.outcome,
            "details": record.details,
            "prev_hash": record.prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def list_records(engine: Engine, *, since: datetime | None = None) -> list[AuditRecord]:
    query = select(AuditRecord).order_by(AuditRecord.seq)
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    with read_session(engine) as session, session.begin():
        return list(session.scalars(query))


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    records: int
    problem: str | None  # None when the chain is intact

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_audit_log(engine: Engine) -> AuditVerdict:
    """Check the chain, then that every CA, certificate, revocation and CRL number in the
    inventory has the record that made it: removing the newest records leaves the chain
    itself intact, but not that."""
    with read_session(engine) as session, session.begin():
        records = list(session.scalars(select(AuditRecord).order_by(AuditRecord.seq)))
        expected_prev = GENESIS_HASH
        created: set[Any] = set()
        revoked: set[Any] = set()
        crl_numbers: set[Any] = set()
        for position, record in enumerate(records, start=1):
            if record.seq != position:
                return AuditVerdict(len(records), f"record {position} is missing (next is {record.seq})")
            if record.prev_hash != expected_prev:
                return AuditVerdict(len(records), f"record {record.seq} does not link to record {position - 1}")
            if record_hash(record) != record.hash:
                return AuditVerdict(len(records), f"record {record.seq} ({record.action}) was altered")
            expected_prev = record.hash
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
        expectations: list[tuple[str, object, set[Any]]] = [
            *((f"CA {s}", s, created) for s in session.scalars(select(Authority.serial))),
            *((f"certificate {s}", s, created) for s in session.scalars(select(Certificate.serial))),
            *((f"the revocation of {s}", s, revoked) for s in session.scalars(
                select(Certificate.serial).join(Revocation, Revocation.certificate_id == Certificate.id))),
            *((f"CRL number {n}", n, crl_numbers) for n in session.scalars(select(CrlPublication.number).distinct())),
        ]
        for what, key, recorded in expectations:
            if key not in recorded:
                return AuditVerdict(len(records), f"{what} has no audit record: records were removed")
    return AuditVerdict(len(records), None)
