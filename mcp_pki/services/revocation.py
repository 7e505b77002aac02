"""Revoking certificates, offboarding a teammate, and republishing CRLs."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from mcp_pki.errors import Conflict, InvalidInput, NotFound
from mcp_pki.pki.crl import RevocationReason
from mcp_pki.pki.profiles import Issuer
from mcp_pki.services import audit
from mcp_pki.services.authority import PassphraseSource, unlock_all
from mcp_pki.services.crls import (
    PublishedCrl,
    crl_bundle,
    new_revocation,
    publish_crls,
    write_crl_file,
)
from mcp_pki.services.files import OutputFiles
from mcp_pki.services.home import Home
from mcp_pki.services.inventory import resolve_ref
from mcp_pki.store.db import open_inventory, read_session, write_session
from mcp_pki.store.models import Certificate, Revocation


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
            )
        for path, data in (extra_outputs(crls) if extra_outputs else {}).items():
            files.add(path, data)
    except BaseException:
        files.abandon()
        raise
    finally:
        engine.dispose()
    written = files.write()
    if write_crl_file(home.crl_file, crls):
        written.insert(0, home.crl_file)
    return RevocationResult(done.revoked, crls, written)


def revoke_certificate(
    home: Home, ref: str, *, reason: RevocationReason | None, invalidity_date: datetime | None,
    passphrase: PassphraseSource, now: datetime,
) -> RevocationResult:
    """Revoke one certificate and republish every CRL."""
    if invalidity_date is not None and invalidity_date > now:
        raise InvalidInput("the invalidity date cannot be in the future")
    target_ids: list[int] = []

    def prepare(session: Session) -> None:
        target = resolve_ref(session, ref, now=now)
        _refuse_revoked(target)  # before asking for the passphrase
        target_ids.append(target.id)

    def change(session: Session) -> _Change:
        certificate = session.get(Certificate, target_ids[0])
        assert certificate is not None
        _refuse_revoked(certificate)  # another process may have revoked it meanwhile
        revoked = _revoke(session, certificate, reason, invalidity_date, now)
        return _Change([revoked], "revoke", {"reason": _reason_name(reason)}, certificate.serial, certificate.name)

    return _change_and_publish(home, passphrase=passphrase, now=now, change=change, prepare=prepare)


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
    session.add(new_revocation(certificate, reason=reason, invalidity_date=invalidity_date, now=now))
    return RevokedCertificate(certificate.serial, certificate.name, certificate.kind, now, reason)


def _reason_name(reason: RevocationReason | None) -> str:
    return reason.value if reason else "unspecified"
