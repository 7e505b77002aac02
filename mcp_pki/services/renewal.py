"""Renewing certificates: one by REF, or every certificate about to expire."""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, contains_eager

from mcp_pki.errors import Conflict, InvalidInput, PolicyViolation
from mcp_pki.pki import keys, profiles
from mcp_pki.pki.crl import RevocationReason
from mcp_pki.pki.csr import VerifiedRequest
from mcp_pki.pki.names import SubjectAltNames
from mcp_pki.pki.profiles import CertificateKind, Issuer
from mcp_pki.services import listing
from mcp_pki.services.apply import Action, Held, Outcome, Plan, Step, apply_plan, renewal_held_back
from mcp_pki.services.authority import PassphraseSource, signing_chain
from mcp_pki.services.files import refuse_existing
from mcp_pki.services.home import Home
from mcp_pki.services.inventory import resolve_ref, status_of
from mcp_pki.services.issuance import IssuedLeaf, LeafRequest, OutputRequest, audit_mark, issue_leaf
from mcp_pki.services.listing import Status
from mcp_pki.services.roster import RosterEntry
from mcp_pki.store.db import open_inventory, read_session
from mcp_pki.store.models import Certificate, Revocation


@dataclass(frozen=True, slots=True)
class RenewOptions:
    validity: timedelta | None = None  # None: as long as the certificate it renews
    key_type: keys.KeyType | None = None  # None: the same type as the old key
    csr: VerifiedRequest | None = None
    revoke_old: bool = False
    allow_expired: bool = False
    again: bool = False  # renew even though a valid renewal of it exists (--force)


@dataclass(frozen=True, slots=True)
class Renewal:
    old_serial: str
    issued: IssuedLeaf


def renew_certificate(
    home: Home, ref: str, options: RenewOptions, output: Callable[[str], OutputRequest], *,
    passphrase: PassphraseSource, now: datetime, in_place: bool = False,
) -> Renewal:
    """A new certificate with the old one's name, subject, names, roles and profile.

    `output` maps the certificate's NAME to where its files go; `in_place` writes them to the
    folder recorded for the old certificate instead, where its servers and hosts read them,
    replacing its own files there (and nothing else without `force`). Extensions are built
    afresh from the profile, never copied from the old certificate.

    A certificate that a valid renewal already supersedes is renewed again only with
    `options.again`: two valid renewals of one certificate are nearly always a mistake, such
    as renewing by an old serial from a script.
    """
    engine = open_inventory(home.db_url)
    try:
        with read_session(engine) as session, session.begin():
            old = resolve_ref(session, ref, now=now)
            request = _renewal_request(old, options, now=now)
            if not options.again:
                _refuse_renewed(session, old, now)
            run_began = audit_mark(session)
        target = output(old.name)
        if in_place and old.files_dir:
            folder = Path(old.files_dir)
            target = replace(target, folder=folder, force=target.force or _holds(folder, old))
        return _renew(home, engine, old, request, target, options, passphrase, now, run_began=run_began)
    finally:
        engine.dispose()


def _refuse_renewed(session: Session, old: Certificate, now: datetime) -> None:
    renewal = session.scalar(
        select(Certificate).outerjoin(Certificate.revocation)
        .where(Certificate.renews_id == old.id, Revocation.certificate_id.is_(None), Certificate.not_after > now)
        .order_by(Certificate.not_before.desc()).limit(1)
    )
    if renewal is not None:
        raise Conflict(
            f"{old.serial} ({old.name}) is already renewed as {renewal.serial}, valid until "
            f"{renewal.not_after:%Y-%m-%d}: renew that one (mcp-pki renew {renewal.serial}), or pass --force "
            "to renew this one again"
        )


def _holds(folder: Path, old: Certificate) -> bool:
    """Whether `folder` holds the old certificate's own files (so renewing replaces them)."""
    try:
        first = (folder / "tls.crt").read_text("ascii").split("-----END CERTIFICATE-----")[0]
    except (OSError, UnicodeDecodeError):
        return False
    return first.strip() == old.certificate_pem.split("-----END CERTIFICATE-----")[0].strip()


def _renew(
    home: Home, engine: Engine, old: Certificate, request: LeafRequest, output: OutputRequest,
    options: RenewOptions, passphrase: PassphraseSource, now: datetime,
    unlocked: dict[int, Issuer] | None = None, *, run_began: int,
) -> Renewal:
    issued = issue_leaf(
        home, request, output, passphrase=passphrase, now=now, engine=engine,
        supersedes=old.id if options.revoke_old else None, unlocked=unlocked, run_began=run_began,
    )
    return Renewal(old.serial, issued)


def _renewal_request(old: Certificate, options: RenewOptions, *, now: datetime) -> LeafRequest:
    status = status_of(old, now)
    if status is Status.REVOKED:
        raise Conflict(f"certificate {old.serial} ({old.name}) is revoked: issue a new one instead")
    if status is Status.EXPIRED and not options.allow_expired:
        raise PolicyViolation(
            f"certificate {old.serial} ({old.name}) expired on {old.not_after:%Y-%m-%d}: "
            "pass --allow-expired to renew it anyway"
        )
    if options.key_type is not None and options.csr is not None:
        raise InvalidInput("--key-type cannot be used with --csr: the requester chose the key")
    return LeafRequest(
        kind=CertificateKind(old.kind),
        name=old.name,
        sans=SubjectAltNames.from_labels(old.sans),
        roles=tuple(old.roles),
        owner=old.owner,
        validity=options.validity or (old.not_after - old.not_before - profiles.BACKDATE),
        key_type=options.key_type or _same_key_type(old),
        csr=options.csr,
        renews_id=old.id,
    )


def _same_key_type(old: Certificate) -> keys.KeyType:
    try:
        return keys.KeyType(old.key_type)
    except ValueError:
        raise InvalidInput(
            f"certificate {old.serial} has a {old.key_type} key, which we do not generate: "
            "pass --key-type or --csr"
        ) from None


def expiring_unreplaced(session: Session, *, now: datetime, within: timedelta) -> list[Certificate]:
    """Valid certificates expiring within the window that no valid renewal replaces yet."""
    # None of them is revoked: the revocation is loaded with them (as None), which saves a
    # query per certificate when it is asked for.
    query = select(Certificate).options(contains_eager(Certificate.revocation))
    return list(session.scalars(listing.expiring_unreplaced(query, now=now, within=within)))


@dataclass(frozen=True, slots=True)
class BulkResult:
    renewed: list[Renewal]
    failed: list[tuple[str, str, str]]  # serial, name, reason
    # Renewed certificates that live no longer than the window: their renewals are due
    # again at once, so the window suits them badly.
    short_lived: list[str]
    # Due, but not renewed, because a renewal could not outlive them and each run would sign
    # the same window again: (serial, name, why), why from `apply.renewal_held_back`.
    held_back: list[tuple[str, str, str]] = field(default_factory=list)
    issuer_not_after: datetime | None = None


def renew_expiring(
    home: Home, *, within: timedelta, out_root: Path, force: bool, revoke_old: bool,
    passphrase: PassphraseSource, now: datetime,
    on_start: Callable[[int], None] = lambda total: None,
    on_progress: Callable[[], None] = lambda: None,
) -> BulkResult:
    """Renew every certificate in the window into ``<out_root>/<name>``.

    Output folders are checked before anything is signed; a certificate that fails later
    (revoked or its owner offboarded meanwhile) is reported and the others go on. The
    renewals are signed and recorded in batches, as `apply` does, and with `revoke_old`
    the old certificates are revoked together and the CRLs published once, at the end:
    republishing per renewal made the run quadratic in the size of the CRL.
    """
    engine = open_inventory(home.db_url)
    try:
        with read_session(engine) as session, session.begin():
            due = expiring_unreplaced(session, now=now, within=within)
            run_began = audit_mark(session)
            issuer_not_after = signing_chain(session).signer.not_after
            max_validity = home.policy().max_validity
            steps = []
            held_back: list[tuple[str, str, str]] = []
            folders: set[Path] = set()
            for old in due:
                request = _renewal_request(old, RenewOptions(revoke_old=revoke_old), now=now)
                why = renewal_held_back(now=now, requested=request.validity, max_validity=max_validity,
                                        issuer_not_after=issuer_not_after, current_not_after=old.not_after)
                if why is not None:
                    held_back.append((old.serial, old.name, why))
                    continue
                folder = out_root / old.name
                if folder in folders:  # two certificates of one name: keep both apart
                    folder = out_root / f"{old.name}-{old.serial[:8]}"
                folders.add(folder)
                held = Held(old.id, old.serial, request.kind, old.name, old.owner, old.not_after)
                entry = RosterEntry(
                    kind=request.kind, name=request.name, position=old.serial, sans=request.sans,
                    roles=request.roles, owner=request.owner, validity=request.validity, key_type=request.key_type,
                )
                steps.append(Step(
                    Action.RENEW, request.kind, old.name, f"expires {old.not_after:%Y-%m-%d}", entry=entry,
                    renews=held, revokes=(held,) if revoke_old else (),
                    reason=RevocationReason.SUPERSEDED if revoke_old else None, folder=folder,
                ))
    finally:
        engine.dispose()
    for step in steps:
        assert step.folder is not None
        refuse_existing([step.folder / n for n in ("tls.crt", "tls.key", "ca.crt")], force=force)
    on_start(len(steps))
    renewed: list[Renewal] = []
    failed: list[tuple[str, str, str]] = []

    def done(outcome: Outcome) -> None:
        step = outcome.step
        assert step.renews is not None and step.entry is not None
        if outcome.skipped:
            failed.append((step.renews.serial, step.name, outcome.skipped))
        elif outcome.facts is not None:
            issued = IssuedLeaf(step.kind, step.name, step.entry.owner, outcome.facts, list(outcome.files))
            renewed.append(Renewal(step.renews.serial, issued))
        else:
            return  # the revocation of the old certificate, reported with its renewal
        on_progress()

    plan = Plan(tuple(steps), 0, (), False, run_began)
    apply_plan(home, plan, out_root=out_root, passphrase=passphrase, now=now, on_done=done, replace_files=force)
    not_renewed = {serial for serial, _, _ in held_back}
    short_lived = [c.name for c in due if c.not_after - c.not_before <= within and c.serial not in not_renewed]
    return BulkResult(renewed, failed, short_lived, held_back, issuer_not_after)
