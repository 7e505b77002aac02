"""Revoking certificates, offboarding a teammate, and republishing CRLs."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from mcp_pki.errors import Ambiguous, Conflict, InvalidInput, NotFound
from mcp_pki.pki.crl import RevocationReason, entry_serial, load_crl_ders, revoked_entries
from mcp_pki.pki.profiles import Issuer
from mcp_pki.services import audit
from mcp_pki.services.authority import PassphraseSource, signing_chain, unlock_all
from mcp_pki.services.crls import (
    PublishedCrl,
    crl_bundle,
    new_revocation,
    publish_crls,
    write_crl_file,
)
from mcp_pki.services.files import FilesNotWritten, OutputFiles
from mcp_pki.services.home import Home
from mcp_pki.services.inventory import resolve_ref
from mcp_pki.store.db import open_inventory, read_session, write_session
from mcp_pki.store.models import Certificate, Revocation

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RevokedCertificate:
    serial: str
    name: str
    kind: str
    revoked_at: datetime
    reason: RevocationReason | None


@dataclass(frozen=True, slots=True)
class RevocationResult:
    revoked: list[RevokedCertificate]
    crls: list[PublishedCrl]
    files: list[Path]


@dataclass(frozen=True, slots=True)
class _Change:
    """What a change did inside the transaction, and how the audit log names it."""

    revoked: list[RevokedCertificate]
    action: str
    details: dict[str, object]
    target_serial: str | None = None
    target_name: str | None = None


def _change_and_publish(
    home: Home, *, passphrase: PassphraseSource, now: datetime, change: Callable[[Session], _Change],
    crl_validity: timedelta | None = None, prepare: Callable[[Session], None] | None = None,
    extra_outputs: Callable[[list[PublishedCrl]], dict[Path, bytes]] | None = None,
    extra_folders: tuple[Path, ...] = (),
) -> RevocationResult:
    """One transaction: the change, new CRLs for every CA, one audit record; then crl.pem.

    CA keys are unlocked before the write lock is taken, so that a passphrase prompt never
    holds other writers up.
    """
    validity = crl_validity or home.policy().crl_validity
    if validity <= timedelta(0):
        raise InvalidInput("the CRL validity must be greater than zero")
    engine = open_inventory(home.db_url)
    files = OutputFiles()
    try:
        with read_session(engine) as session, session.begin():
            if prepare is not None:
                prepare(session)
            issuers: dict[int, Issuer] = unlock_all(session, passphrase, now=now)
        for folder in (home.path, *extra_folders):
            files.prepare(folder)
        with write_session(engine) as session, session.begin():
            done = change(session)
            crls = publish_crls(session, issuers, now=now, validity=validity, published_file=home.crl_file)
            audit.append_record(
                session, now=now, action=done.action, target_serial=done.target_serial,
                target_name=done.target_name,
                details={**done.details, "crl_numbers": [c.number for c in crls]},
                signer=issuers[signing_chain(session).signer.id],
            )
        for path, data in (extra_outputs(crls) if extra_outputs else {}).items():
            files.add(path, data)
    except BaseException:
        files.abandon()
        raise
    finally:
        engine.dispose()
    # The change is committed: a file that cannot be written now must not read as if nothing
    # happened, or a retry would find the revocation done and crl.pem still without it.
    try:
        written = files.write()
        if write_crl_file(home.crl_file, crls):
            written.insert(0, home.crl_file)
    except (FilesNotWritten, OSError) as exc:
        what = {"revoke": "revocation", "offboard": "revocations"}.get(done.action, "new CRLs")
        reason = str(exc).removeprefix("cannot write ") if isinstance(exc, FilesNotWritten) else exc.strerror
        raise FilesNotWritten(
            f"{what} recorded in the inventory; {home.crl_file.name} not written ({reason}): "
            f"fix that, then run 'mcp-pki crl'"
        ) from None
    return RevocationResult(done.revoked, crls, written)


def revoke_certificate(
    home: Home, ref: str, *, reason: RevocationReason | None, invalidity_date: datetime | None,
    passphrase: PassphraseSource, now: datetime, all_of_name: bool = False,
) -> RevocationResult:
    """Revoke one certificate, or with `all_of_name` every valid one of a NAME, and republish
    every CRL.

    A NAME that matches several valid certificates is an error here, unlike in reading
    commands: after a renewal the older certificate may hold the compromised key, and
    revoking only the newest would leave it valid while reporting success.
    """
    if invalidity_date is not None and invalidity_date > now:
        raise InvalidInput("the invalidity date cannot be in the future")
    target_ids: list[int] = []

    def prepare(session: Session) -> None:
        targets = _revocation_targets(session, ref, now=now, all_of_name=all_of_name)
        for target in targets:
            if target.revocation is not None and target.not_after > now and not _published(home, target):
                raise _RepublishInstead(target.serial, target.name)
            _refuse_revoked(target)  # before asking for the passphrase
        target_ids.extend(t.id for t in targets)

    def change(session: Session) -> _Change:
        revoked = []
        for target_id in target_ids:
            certificate = session.get(Certificate, target_id)
            assert certificate is not None
            _refuse_revoked(certificate)  # another process may have revoked it meanwhile
            revoked.append(_revoke(session, certificate, reason, invalidity_date, now))
        details: dict[str, object] = {"reason": _reason_name(reason)}
        if len(revoked) > 1:
            details["revoked_serials"] = [r.serial for r in revoked]
        first = revoked[0]
        return _Change(revoked, "revoke", details, first.serial, first.name)

    try:
        return _change_and_publish(home, passphrase=passphrase, now=now, change=change, prepare=prepare)
    except _RepublishInstead as pending:
        # Revoked earlier, but crl.pem could not be written then: the retry that the error
        # message suggested publishes it instead of saying "already revoked".
        logger.warning(
            "certificate %s (%s) was already revoked, but %s lacked it: republishing",
            pending.serial, pending.name, home.crl_file.name,
        )
        return republish(home, passphrase=passphrase, now=now)


class _RepublishInstead(Exception):
    def __init__(self, serial: str, name: str) -> None:
        super().__init__(serial)
        self.serial, self.name = serial, name


def _published(home: Home, certificate: Certificate) -> bool:
    """Whether crl.pem lists the revoked `certificate` (or it has since expired off it)."""
    try:
        crls = load_crl_ders(home.crl_file.read_bytes())
    except (OSError, InvalidInput):
        return False
    serial = int(certificate.serial, 16)
    return any(entry_serial(e) == serial for crl in crls for e in revoked_entries(crl))


def _revocation_targets(session: Session, ref: str, *, now: datetime, all_of_name: bool) -> list[Certificate]:
    """What `revoke REF` revokes: a serial's certificate, or a NAME's only valid certificate
    (all of them with `all_of_name`)."""
    valid_of_name = list(session.scalars(
        select(Certificate)
        .outerjoin(Certificate.revocation)
        .where(Certificate.name == ref, Revocation.certificate_id.is_(None), Certificate.not_after > now)
        .order_by(Certificate.not_before.desc(), Certificate.id.desc())
    ))
    if all_of_name and valid_of_name:
        return valid_of_name
    target = resolve_ref(session, ref, now=now)  # a serial, or the errors of an unknown REF
    if all_of_name and target.name != ref:
        raise InvalidInput(f"--all takes a NAME, not a serial: {ref!r} is certificate {target.serial}")
    if len(valid_of_name) > 1 and target.name == ref:
        listing = "; ".join(
            f"{c.serial} ({c.kind} {c.name}, not after {c.not_after:%Y-%m-%d}, files {c.files_dir or 'unknown'})"
            for c in valid_of_name
        )
        raise Ambiguous(
            f"{ref!r} has {len(valid_of_name)} valid certificates: {listing}. "
            f"Revoke one by serial, or all of them with --all"
        )
    return [target]


def offboard(
    home: Home, owner: str, *, reason: RevocationReason | None, passphrase: PassphraseSource, now: datetime,
) -> RevocationResult:
    """Revoke every valid certificate that `owner` holds, renewals included."""

    def prepare(session: Session) -> None:
        if not _valid_owned(session, owner, now):
            raise NotFound(f"{owner!r} holds no valid certificate: nothing to revoke")

    def change(session: Session) -> _Change:
        holdings = _valid_owned(session, owner, now)
        if not holdings:
            raise NotFound(f"{owner!r} holds no valid certificate: nothing to revoke")
        revoked = [_revoke(session, c, reason, None, now) for c in holdings]
        details: dict[str, object] = {"reason": _reason_name(reason), "revoked_serials": [r.serial for r in revoked]}
        return _Change(revoked, "offboard", details, target_name=owner)

    return _change_and_publish(home, passphrase=passphrase, now=now, change=change, prepare=prepare)


def republish(
    home: Home, *, passphrase: PassphraseSource, now: datetime, validity: timedelta | None = None,
    copy_to: Path | None = None, der_folder: Path | None = None,
) -> RevocationResult:
    """Publish fresh CRLs (new numbers, new nextUpdate) for every CA, e.g. daily from cron."""

    def change(session: Session) -> _Change:
        return _Change([], "publish-crl", {})

    def outputs(crls: list[PublishedCrl]) -> dict[Path, bytes]:
        elsewhere = copy_to is not None and copy_to.absolute() != home.crl_file.absolute()
        files = {copy_to: crl_bundle(crls)} if copy_to and elsewhere else {}
        if der_folder is not None:
            files.update({der_folder / f"{crl.role}.crl": crl.der for crl in crls})
        return files

    folders = tuple(p for p in (copy_to.parent if copy_to else None, der_folder) if p is not None)
    return _change_and_publish(
        home, passphrase=passphrase, now=now, change=change, crl_validity=validity, extra_outputs=outputs,
        extra_folders=folders,
    )


def _valid_owned(session: Session, owner: str, now: datetime) -> list[Certificate]:
    return list(session.scalars(
        select(Certificate)
        .outerjoin(Certificate.revocation)
        .where(Certificate.owner == owner, Revocation.certificate_id.is_(None), Certificate.not_after > now)
        .order_by(Certificate.id)
    ))


def _refuse_revoked(certificate: Certificate) -> None:
    if certificate.revocation is not None:
        raise Conflict(
            f"certificate {certificate.serial} ({certificate.name}) was already revoked on "
            f"{certificate.revocation.revoked_at:%Y-%m-%d %H:%M} UTC"
        )


def _revoke(
    session: Session, certificate: Certificate, reason: RevocationReason | None,
    invalidity_date: datetime | None, now: datetime,
) -> RevokedCertificate:
    session.add(Revocation(**new_revocation(
        certificate.id, certificate.serial, reason=reason, invalidity_date=invalidity_date, now=now,
    )))
    return RevokedCertificate(certificate.serial, certificate.name, certificate.kind, now, reason)


def _reason_name(reason: RevocationReason | None) -> str:
    return reason.value if reason else "unspecified"
