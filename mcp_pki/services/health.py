"""``status``: is the CA healthy, and will anything stop working soon?"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum
from pathlib import Path

from sqlalchemy import Engine, func, select

from mcp_pki.errors import InvalidInput
from mcp_pki.pki.crl import authority_key_id, crl_number, load_crls
from mcp_pki.services.listing import ListedCertificate, count_by_status, list_expiring
from mcp_pki.store.db import read_transaction
from mcp_pki.store.tables import authorities as authority_table
from mcp_pki.store.tables import crl_publications


class Level(IntEnum):
    """Also the exit code of ``mcp-pki status``."""

    OK = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    message: str


@dataclass(frozen=True, slots=True)
class AuthorityHealth:
    role: str
    subject: str
    not_after: datetime
    crl_number: int | None
    crl_this_update: datetime | None
    crl_next_update: datetime | None


@dataclass(frozen=True, slots=True)
class HealthReport:
    authorities: list[AuthorityHealth]
    counts: dict[str, int]
    expiring: list[ListedCertificate]
    findings: list[Finding] = field(default_factory=list)

    @property
    def level(self) -> Level:
        return max((f.level for f in self.findings), default=Level.OK)


def check_health(engine: Engine, *, now: datetime, warn_within: timedelta, crl_file: Path) -> HealthReport:
    authorities = _authorities(engine)
    findings = []
    for authority in authorities:
        findings += _authority_findings(authority, now=now, warn_within=warn_within)
    findings += _published_file_findings(crl_file, authorities, now=now)
    # A certificate that already has a valid renewal is taken care of: no warning.
    expiring = list_expiring(engine, now=now, within=warn_within)
    for certificate in expiring:
        findings.append(Finding(
            Level.WARNING,
            f"{certificate.kind} certificate {certificate.name} ({certificate.serial}) expires "
            f"{certificate.not_after:%Y-%m-%d %H:%M} UTC",
        ))
    return HealthReport(authorities, count_by_status(engine, now=now), expiring, findings)


def _authorities(engine: Engine) -> list[AuthorityHealth]:
    crls = crl_publications
    newest = (
        select(crls.c.authority_id, func.max(crls.c.number).label("number"))
        .group_by(crls.c.authority_id)
        .subquery()
    )
    query = (
        select(authority_table.c.role, authority_table.c.subject, authority_table.c.not_after,
               crls.c.number, crls.c.this_update, crls.c.next_update)
        .outerjoin(newest, newest.c.authority_id == authority_table.c.id)
        .outerjoin(crls, (crls.c.authority_id == authority_table.c.id) & (crls.c.number == newest.c.number))
        .order_by(authority_table.c.id.desc())
    )
    with read_transaction(engine) as connection:
        rows = connection.execute(query).all()
    if not rows:
        raise InvalidInput("this inventory has no CA yet: run 'mcp-pki init-ca' first")
    return [
        AuthorityHealth(
            role=row.role, subject=row.subject, not_after=row.not_after, crl_number=row.number,
            crl_this_update=row.this_update, crl_next_update=row.next_update,
        )
        for row in rows
    ]


def _authority_findings(authority: AuthorityHealth, *, now: datetime, warn_within: timedelta) -> list[Finding]:
    findings = []
    name = f"{authority.role} CA {authority.subject}"
    if authority.not_after <= now:
        findings.append(Finding(Level.CRITICAL, f"{name} expired on {authority.not_after:%Y-%m-%d}"))
    elif authority.not_after <= now + warn_within:
        findings.append(Finding(Level.CRITICAL, f"{name} expires {authority.not_after:%Y-%m-%d}: plan its replacement"))
    if authority.crl_next_update is None or authority.crl_this_update is None:
        findings.append(Finding(Level.CRITICAL, f"{name} has no CRL: run 'mcp-pki crl'"))
    elif authority.crl_next_update <= now:
        findings.append(Finding(
            Level.CRITICAL,
            f"the CRL of {name} expired {authority.crl_next_update:%Y-%m-%d %H:%M} UTC: servers reject "
            "every client; run 'mcp-pki crl'",
        ))
    elif authority.crl_next_update - now < (authority.crl_next_update - authority.crl_this_update) / 2:
        findings.append(Finding(
            Level.WARNING,
            f"the CRL of {name} expires {authority.crl_next_update:%Y-%m-%d %H:%M} UTC: run 'mcp-pki crl'",
        ))
    return findings


def _published_file_findings(crl_file: Path, authorities: list[AuthorityHealth], *, now: datetime) -> list[Finding]:
    """crl.pem is what this machine's servers load. It may lag the inventory (another machine
    sharing the database published, or a write failed), so its own dates count too."""
    try:
        published = load_crls(crl_file.read_bytes())
    except OSError:
        return [Finding(Level.WARNING, f"{crl_file} is missing: run 'mcp-pki crl'")]
    except InvalidInput:
        return [Finding(Level.WARNING, f"{crl_file} is not a valid CRL bundle: run 'mcp-pki crl'")]
    findings = []
    for crl in published:
        next_update = crl.next_update_utc
        if next_update is None:
            continue
        if next_update <= now:
            findings.append(Finding(
                Level.CRITICAL,
                f"{crl_file} holds a CRL that expired {next_update:%Y-%m-%d %H:%M} UTC: servers loading it "
                "reject every client; run 'mcp-pki crl' and reload them",
            ))
            break
    newest_published = max((crl_number(c) or 0 for c in published if authority_key_id(c)), default=0)
    newest_recorded = max((a.crl_number or 0 for a in authorities), default=0)
    if newest_published < newest_recorded:
        findings.append(Finding(Level.WARNING, f"{crl_file} is older than the inventory's CRLs: run 'mcp-pki crl'"))
    return findings
