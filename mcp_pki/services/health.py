"""``status``: is the CA healthy, and will anything stop working soon?"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum
from pathlib import Path

from sqlalchemy import Engine, func, select

from mcp_pki.errors import InvalidInput
from mcp_pki.pki.crl import authority_key_id, crl_number, load_crls
from mcp_pki.services.inventory import ListedCertificate, Status, count_by_status
from mcp_pki.services.renewal import expiring_unreplaced_columns
from mcp_pki.store.db import read_session
from mcp_pki.store.models import Authority, Certificate, CrlPublication


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
    with read_session(engine) as session, session.begin():
        # A certificate that already has a valid renewal is taken care of: no warning.
        expiring = [
            ListedCertificate(
                serial=c.serial, name=c.name, kind=c.kind, owner=c.owner, status=Status.VALID,
                not_after=c.not_after, sans=tuple(c.sans), roles=tuple(c.roles),
            )
            for c in expiring_unreplaced_columns(
                session, Certificate.serial, Certificate.name, Certificate.kind, Certificate.owner,
                Certificate.not_after, Certificate.sans, Certificate.roles, now=now, within=warn_within,
            )
        ]
    for certificate in expiring:
        findings.append(Finding(
            Level.WARNING,
            f"{certificate.kind} certificate {certificate.name} ({certificate.serial}) expires "
            f"{certificate.not_after:%Y-%m-%d %H:%M} UTC",
        ))
    return HealthReport(authorities, count_by_status(engine, now=now), expiring, findings)


def _authorities(engine: Engine) -> list[AuthorityHealth]:
    newest = (
        select(CrlPublication.authority_id, func.max(CrlPublication.number).label("number"))
        .group_by(CrlPublication.authority_id)
        .subquery()
    )
    query = (
        select(Authority.role, Authority.subject, Authority.not_after,
               CrlPublication.number, CrlPublication.this_update, CrlPublication.next_update)
        .outerjoin(newest, newest.c.authority_id == Authority.id)
        .outerjoin(CrlPublication, (CrlPublication.authority_id == Authority.id) & (CrlPublication.number == newest.c.number))
        .order_by(Authority.id.desc())
    )
    with read_session(engine) as session, session.begin():
        rows = session.execute(query).all()
    if not rows:
        raise InvalidInput("this inventory has no CA yet: run 'mcp-pki init-ca' first")
    return [AuthorityHealth(*row) for row in rows]


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
