"""``apply``: make the CA match a roster, as a plan first, then in batches.

The plan compares each roster entry with the valid certificates of its name and kind:
none → issue; one that differs (names, roles, owner, key) → replace and revoke the old as
superseded; one expiring within the renewal window → renew; else unchanged. Valid
certificates of names the roster does not list are reported, and revoked with ``--prune``.

Carrying it out: the issuing CA key is unlocked once; certificates are signed and recorded
in batches, one transaction each, and their files written after that commit (the key
first, ``tls.crt`` last, so a folder whose ``tls.crt`` holds the certificate is complete);
every revocation and the one CRL publication go in a last transaction. Killed at any
point, the next run's plan finds what is left: a recorded certificate whose folder lacks
its files is replaced (its key was never written), an old certificate still valid beside
its replacement is revoked, and a crl.pem behind the inventory is republished.
"""

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Row, func, insert, select

from mcp_pki.errors import PkiError
from mcp_pki.pki import keys, profiles
from mcp_pki.pki.crl import RevocationReason, crl_number, load_crls
from mcp_pki.pki.inspect import CertificateFacts, facts, from_pem, pem
from mcp_pki.pki.profiles import CertificateKind, Issuer
from mcp_pki.services import audit
from mcp_pki.services.authority import PassphraseSource, signing_chain, unlock
from mcp_pki.services.crls import new_revocation
from mcp_pki.services.files import PRIVATE, FilesNotWritten, OutputFiles, folder_problem
from mcp_pki.services.home import LEAF_MAX_VALIDITY, Home
from mcp_pki.services.issuance import (
    LeafRequest,
    _certificate_row,
    _organisation,
    audit_mark,
    chain_constraints,
    check_constraints,
    check_limits,
    generated_keys,
    key_file_public_key,
    remove_stale_files,
)
from mcp_pki.services.roster import Roster, RosterEntry, roster_error
from mcp_pki.store.db import connection_of, open_inventory, read_transaction, write_transaction
from mcp_pki.store.tables import audit_log, certificates, crl_publications, revocations

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# Rows per write transaction: large enough that commits (fsync-ed) cost little per
# certificate, small enough that a crash loses little work and writers wait briefly.
BATCH_SIZE = 250
# Files are fsync-ed one by one; a few threads overlap those waits (they release the GIL).
_WRITER_THREADS = 8
_PRUNE_REASON = {
    CertificateKind.CLIENT: RevocationReason.AFFILIATION_CHANGED,
    CertificateKind.SERVER: RevocationReason.CESSATION_OF_OPERATION,
}


class Action(Enum):
    ISSUE = "issue"
    REPLACE = "replace"
    RENEW = "renew"
    REVOKE = "revoke"


@dataclass(frozen=True, slots=True)
class Held:
    """A valid certificate the plan looks at."""

    id: int
    serial: str
    kind: CertificateKind
    name: str
    owner: str | None
    not_after: datetime


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    kind: CertificateKind
    name: str
    why: str
    entry: RosterEntry | None = None
    renews: Held | None = None  # RENEW: the certificate renewed (it stays valid)
    revokes: tuple[Held, ...] = ()  # REPLACE: the superseded ones; REVOKE: the targets
    reason: RevocationReason | None = None  # of the revocations
    folder: Path | None = None  # where the files go, when not OUT_ROOT/NAME

    @property
    def signs(self) -> bool:
        return self.action is not Action.REVOKE


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...]
    unchanged: int
    not_in_roster: tuple[Held, ...]
    # crl.pem is older than the inventory's newest CRLs (a run was cut off after publishing).
    republish: bool
    # The newest audit record when the plan was made: offboarding after it wins.
    audit_mark: int
    # Due for renewal, but a renewal could not outlive them: the issuing CA expires first.
    held_back: tuple[Held, ...] = ()
    issuer_not_after: datetime | None = None

    def count(self, action: Action) -> int:
        if action is Action.REVOKE:
            return sum(len(s.revokes) for s in self.steps if s.action is Action.REVOKE)
        return sum(1 for s in self.steps if s.action is action)

    @property
    def nothing_to_do(self) -> bool:
        return not self.steps and not self.republish


@dataclass(frozen=True, slots=True)
class Outcome:
    """One step carried out (or skipped, and why)."""

    step: Step
    serial: str | None = None  # the new certificate's serial
    revoked: tuple[str, ...] = ()
    skipped: str | None = None
    files: tuple[Path, ...] = ()
    facts: CertificateFacts | None = None  # the new certificate's
    files_error: str | None = None  # signed and recorded, but its files could not be written


@dataclass
class ApplyResult:
    outcomes: list[Outcome] = field(default_factory=list)
    crl_numbers: list[int] = field(default_factory=list)
    crl_file_written: bool = False


# --- planning -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    held: Held
    sans: frozenset[str]
    roles: frozenset[str]
    key_type: str
    from_csr: bool
    files_dir: str | None
    renews_id: int | None = None


def plan_roster(
    engine: Engine, roster: Roster, *, out_root: Path, renew_within: timedelta, prune: bool,
    crl_file: Path, now: datetime, max_validity: timedelta = LEAF_MAX_VALIDITY,
) -> Plan:
    """What `apply` would do, read in one transaction.

    Refuses the roster with one error listing its own problems and those only the CA and
    the inventory show: names this CA may not sign, a validity every run would renew, an
    output folder that cannot take its files, or one that holds a certificate left valid.
    Found here, in a dry run too, none of them can stop a run halfway."""
    with read_transaction(engine) as connection:
        chain = signing_chain(connection)
        constraints = chain_constraints(chain)
        problems = list(roster.problems)
        for entry in roster.entries:
            request = _request(entry)
            try:
                check_limits(request)
                check_constraints(constraints, request)
            except PkiError as exc:
                problems.append(f"{entry.position}: {exc}")
            granted = min(entry.validity, max_validity)
            if granted <= renew_within:
                shortened = f", shortened to the policy maximum of {_days(granted)}," if granted < entry.validity else ""
                problems.append(
                    f"{entry.position}: a validity of {_days(entry.validity)}{shortened} is within --renew-within "
                    f"({_days(renew_within)}): every run would renew it (lengthen the validity or shorten "
                    "--renew-within)"
                )
        run_began = audit_mark(connection)
        held: dict[tuple[CertificateKind, str], list[_Row]] = {}
        for row in _valid_rows(connection, now):
            held.setdefault((row.held.kind, row.held.name), []).append(row)
        wanted = {(e.kind, e.name) for e in roster.entries}
        pems = _Pems(connection, [r.held.id for key, rows in held.items() if key in wanted for r in rows])
        steps: list[Step] = []
        unchanged = 0
        renewal = _Renewal(now, renew_within, max_validity, chain.signer.not_after)
        # Read only for a folder whose tls.key is not its certificate's.
        generated = cache(partial(generated_keys, connection))
        for entry in roster.entries:
            step = _entry_step(entry, held.pop((entry.kind, entry.name), []), pems, out_root, renewal, generated)
            if step is None:
                unchanged += 1
            else:
                steps.append(step)
        problems += _output_problems(steps, out_root)
        if not prune:
            problems += _overwritten(steps, [r for rows in held.values() for r in rows], out_root)
        if problems:
            raise roster_error(roster.source, problems)
        leftovers = sorted((r.held for rows in held.values() for r in rows), key=lambda h: (h.name, h.kind.value, h.id))
        if prune:
            for one in leftovers:
                steps.append(Step(
                    Action.REVOKE, one.kind, one.name, "not in roster", revokes=(one,),
                    reason=_PRUNE_REASON[one.kind],
                ))
        republish = _crl_file_behind(connection, crl_file)
    return Plan(
        tuple(steps), unchanged, () if prune else tuple(leftovers), republish, run_began,
        tuple(renewal.held_back), renewal.issuer_not_after,
    )


def _days(duration: timedelta) -> str:
    return f"{duration.days}d" if duration % timedelta(days=1) == timedelta(0) else f"{duration / timedelta(hours=1):g}h"


def _output_folder(step: Step, out_root: Path) -> Path:
    return step.folder or out_root / step.name


def _output_problems(steps: list[Step], out_root: Path) -> list[str]:
    """Output folders that cannot take their files, as `OutputFiles` would find them."""
    problems = []
    for step in steps:
        if not step.signs or step.entry is None:
            continue
        folder = _output_folder(step, out_root)
        problem = folder_problem(folder)
        if problem is not None:
            problems.append(f"{step.entry.position}: cannot write into {folder}: {problem}")
        elif folder.is_dir():
            taken = [f for f in ("tls.key", "ca.crt", "tls.crt") if (folder / f).is_dir()]
            if taken:
                problems.append(f"{step.entry.position}: {folder / taken[0]} is a folder")
    return problems


def _overwritten(steps: list[Step], others: list[_Row], out_root: Path) -> list[str]:
    """Entries whose folder holds the files of a valid certificate the run leaves valid: a
    name that moved from servers: to clients: (or back) without --prune, say. Signing would
    replace that certificate's key while it stays in use."""
    # Resolved: out/../out or a symlink to the folder is the same folder.
    folders = {_output_folder(s, out_root).resolve(): s for s in steps if s.signs and s.entry is not None}
    problems = []
    for row in others:
        folder = (Path(row.files_dir) if row.files_dir else out_root / row.held.name).resolve()
        step = folders.get(folder)
        if step is not None and step.entry is not None:
            problems.append(
                f"{step.entry.position}: {folder} holds the files of the valid {row.held.kind.value} certificate "
                f"{row.held.serial}, which the roster no longer lists: revoke it first, or apply with --prune"
            )
    return problems


def _valid_rows(connection: Connection, now: datetime) -> Iterator[_Row]:
    c = certificates.c
    query = (
        select(c.id, c.serial, c.kind, c.name, c.owner, c.not_after, c.sans, c.roles, c.key_type, c.from_csr,
               c.files_dir, c.renews_id)
        .outerjoin(revocations, revocations.c.certificate_id == c.id)
        .where(revocations.c.certificate_id.is_(None), c.not_after > now)
        # Newest first: the newest certificate that matches the roster is the current one.
        .order_by(c.not_before.desc(), c.id.desc())
    )
    rows: Any = connection.execute(query).all()  # unpacked: reading columns by name costs more
    for id_, serial, kind, name, owner, not_after, sans, roles, key_type, from_csr, files_dir, renews_id in rows:
        yield _Row(
            Held(id_, serial, CertificateKind(kind), name, owner, not_after),
            frozenset(sans), frozenset(roles), key_type, from_csr, files_dir, renews_id,
        )


class _Pems:
    """Certificate PEMs of the rows the roster names, read in a few chunked queries."""

    _CHUNK = 500

    def __init__(self, connection: Connection, ids: list[int]) -> None:
        self._pems: dict[int, str] = {}
        for start in range(0, len(ids), self._CHUNK):
            chunk = ids[start:start + self._CHUNK]
            query = select(certificates.c.id, certificates.c.certificate_pem).where(certificates.c.id.in_(chunk))
            rows: Any = connection.execute(query).all()
            self._pems.update(rows)

    def __call__(self, certificate_id: int) -> str:
        return self._pems.get(certificate_id, "")


@dataclass
class _Renewal:
    """When a certificate is due for renewal, and whether renewing it would help."""

    now: datetime
    within: timedelta
    max_validity: timedelta
    issuer_not_after: datetime
    held_back: list[Held] = field(default_factory=list)

    def due(self, entry: RosterEntry, current: Held) -> bool:
        if current.not_after > self.now + self.within:
            return False
        if renewal_held_back(now=self.now, requested=entry.validity, max_validity=self.max_validity,
                             issuer_not_after=self.issuer_not_after, current_not_after=current.not_after):
            self.held_back.append(current)
            return False
        return True


HELD_BY_ISSUER = "the issuing CA expires first"
HELD_BY_POLICY = "the policy maximum ends a renewal sooner"


def renewal_held_back(
    *, now: datetime, requested: timedelta, max_validity: timedelta, issuer_not_after: datetime,
    current_not_after: datetime,
) -> str | None:
    """Why renewing a certificate now would not help (HELD_BY_ISSUER or HELD_BY_POLICY):
    its renewal, cut short by the issuing CA's expiry or the policy maximum, would end no
    later than it does, and every run would sign the same window again. None when a
    renewal outlives it."""
    renewal = profiles.leaf_validity(
        now=now, requested=requested, policy_max=max_validity, issuer_not_after=issuer_not_after,
    )
    if renewal.not_after > current_not_after:
        return None
    return HELD_BY_ISSUER if renewal.not_after == issuer_not_after else HELD_BY_POLICY


def _entry_step(
    entry: RosterEntry, rows: list[_Row], pems: _Pems, out_root: Path, renewal: _Renewal,
    generated: Callable[[str], frozenset[bytes]],
) -> Step | None:
    differences = {r.held.id: _difference(entry, r, pems) for r in rows}
    matching = [r for r in rows if differences[r.held.id] is None]
    if not matching:
        if not rows:
            return Step(Action.ISSUE, entry.kind, entry.name, "new", entry=entry)
        return Step(
            Action.REPLACE, entry.kind, entry.name, differences[rows[0].held.id] or "", entry=entry,
            revokes=tuple(r.held for r in rows), reason=RevocationReason.SUPERSEDED,
        )
    current = matching[0]
    # Older certificates that still match and that a valid one renews are earlier renewals,
    # valid until they expire. The others were replaced, by a run that stopped before it
    # revoked them (or issued beside the roster): one valid certificate per entry.
    renewed = {r.renews_id for r in rows if r.renews_id is not None}
    stale = tuple(r.held for r in rows
                  if r is not current and (differences[r.held.id] is not None or r.held.id not in renewed))
    missing = _files_missing(current, pems, out_root, generated)
    if missing:
        return Step(
            Action.REPLACE, entry.kind, entry.name, missing, entry=entry,
            revokes=(current.held, *stale), reason=RevocationReason.SUPERSEDED,
        )
    if renewal.due(entry, current.held):
        return Step(
            Action.RENEW, entry.kind, entry.name, f"expires {current.held.not_after:%Y-%m-%d}", entry=entry,
            renews=current.held, revokes=stale, reason=RevocationReason.SUPERSEDED,
        )
    if stale:
        return Step(
            Action.REVOKE, entry.kind, entry.name, f"superseded by {current.held.serial}", revokes=stale,
            reason=RevocationReason.SUPERSEDED,
        )
    return None


def _difference(entry: RosterEntry, row: _Row, pems: _Pems) -> str | None:
    """Why the certificate does not match its roster entry; None when it does."""
    if row.sans != frozenset(entry.sans.labels()):
        return "names differ"
    if row.roles != frozenset(entry.roles):
        return "roles differ"
    if row.held.owner != entry.owner:
        return "owner differs"
    if entry.csr is not None:
        if not row.from_csr or not _same_key(pems(row.held.id), entry.csr.public_key):
            return "the CSR's key differs"
    elif row.from_csr or row.key_type != entry.key_type.value:
        return "key type differs"
    return None


def _same_key(certificate_pem: str, public_key: Any) -> bool:
    return keys.same_public_key(from_pem(certificate_pem).public_key(), public_key)


def _files_missing(
    current: _Row, pems: _Pems, out_root: Path, generated: Callable[[str], frozenset[bytes]],
) -> str | None:
    """Whether the certificate's folder exists without it: an interrupted run recorded the
    certificate but never wrote its files, so its key is gone; or it put the key of another
    certificate it generated there and was killed before that one's tls.crt (or before it
    removed the old key, beside a certificate from a CSR). A key we never generated is the
    requester's, perhaps newer than the CSR the roster names, and is left alone, as is a
    folder that no longer exists: it was moved or handed over on purpose."""
    folder = Path(current.files_dir) if current.files_dir else out_root / current.held.name
    if not folder.is_dir():
        return None
    certificate_pem = pems(current.held.id)
    try:
        written = (folder / "tls.crt").read_text(encoding="ascii", errors="replace")
    except OSError:
        return f"{folder}/tls.crt is missing"
    if not written.startswith(certificate_pem):
        return f"{folder}/tls.crt holds another certificate"
    key_file = folder / "tls.key"
    held = key_file_public_key(key_file)
    if held is not None and held != keys.public_key_der(from_pem(certificate_pem).public_key()) and held in generated(
        current.held.name
    ):
        return f"{key_file} holds the key of another certificate of {current.held.name}"
    return None


def _crl_file_behind(connection: Connection, crl_file: Path) -> bool:
    recorded = connection.scalar(select(func.max(crl_publications.c.number))) or 0
    try:
        published = max((crl_number(c) or 0 for c in load_crls(crl_file.read_bytes())), default=0)
    except (OSError, PkiError):
        published = 0
    return published < recorded


def _request(entry: RosterEntry, *, renews_id: int | None = None) -> LeafRequest:
    return LeafRequest(
        kind=entry.kind, name=entry.name, sans=entry.sans, roles=entry.roles, owner=entry.owner,
        validity=entry.validity, key_type=entry.key_type, csr=entry.csr, renews_id=renews_id,
    )


# --- carrying it out ----------------------------------------------------------------------


@dataclass
class _Signed:
    step: Step
    request: LeafRequest
    row: dict[str, Any]  # the certificate's row, as inserted
    details: dict[str, object]
    files: OutputFiles
    folder: Path
    facts: CertificateFacts
    # From a CSR: the keys we generated for this name, which a tls.key left there may hold.
    generated: frozenset[bytes] = frozenset()


def apply_plan(
    home: Home, plan: Plan, *, out_root: Path, passphrase: PassphraseSource, now: datetime,
    on_done: Callable[[Outcome], None] = lambda outcome: None, replace_files: bool = True,
) -> ApplyResult:
    """Carry out `plan`: sign in batches, then revoke and republish the CRLs once.

    Without `replace_files`, a file that appeared in an output folder since the caller
    checked it (another run writing there) is never overwritten.
    """
    result = ApplyResult()
    if plan.nothing_to_do:
        return result
    engine = open_inventory(home.db_url)
    try:
        signing = [s for s in plan.steps if s.signs]
        if signing:
            with read_transaction(engine) as connection:
                chain = signing_chain(connection)
                issuer = unlock(chain.signer, passphrase, now=now)
                intermediates = [from_pem(a.certificate_pem) for a in chain.intermediates()]
                root_pem, signer_id, signer_not_after = chain.root.certificate_pem, chain.signer.id, chain.signer.not_after
            context = _SigningContext(
                issuer, signer_id, signer_not_after, intermediates, root_pem, home.policy().max_validity,
            )
            for start in range(0, len(signing), BATCH_SIZE):
                batch = signing[start:start + BATCH_SIZE]
                outcomes, failure = _sign_batch(engine, batch, context, plan, out_root, now, replace_files)
                for outcome in outcomes:
                    result.outcomes.append(outcome)
                    on_done(outcome)
                if failure is not None:  # each certificate of the batch was reported first
                    raise failure
        skipped = {id(o.step) for o in result.outcomes if o.skipped}
        revoking = [s for s in plan.steps if s.revokes and id(s) not in skipped]
        if revoking or plan.republish:
            _revoke_and_publish(home, revoking, plan, result, passphrase=passphrase, now=now, on_done=on_done)
    finally:
        engine.dispose()
    return result


@dataclass(frozen=True, slots=True)
class _SigningContext:
    issuer: Issuer
    signer_id: int
    signer_not_after: datetime
    intermediates: list[Any]
    root_pem: str
    max_validity: timedelta


def _sign_batch(
    engine: Engine, steps: list[Step], context: _SigningContext, plan: Plan, out_root: Path, now: datetime,
    replace_files: bool,
) -> tuple[list[Outcome], PkiError | None]:
    """Sign and record one batch, then write its files: what was done, and the first
    failure to write files, if any (the batch is recorded; the next run completes it)."""
    signed = [_sign(step, context, out_root, now) for step in steps]
    outcomes: list[Outcome] = []
    committed: list[_Signed] = []
    try:
        for item in signed:
            item.files.prepare(item.folder)
        with write_transaction(engine) as connection:
            offboarded = _offboarded_since(connection, plan.audit_mark, {s.request.owner for s in signed})
            renewed_ids = [s.step.renews.id for s in signed if s.step.renews is not None]
            revoked_meanwhile: set[int] = set(connection.scalars(
                select(revocations.c.certificate_id).where(revocations.c.certificate_id.in_(renewed_ids))
            )) if renewed_ids else set()
            chain = audit.AuditChain(connection, now=now)
            for item in signed:
                # Offboarding wins over a roster that still lists the teammate, and over a
                # renewal planned before the certificate was revoked.
                why = None
                if item.request.owner is not None and item.request.owner in offboarded:
                    why = f"{item.request.owner} was offboarded while this ran"
                elif item.step.renews is not None and item.step.renews.id in revoked_meanwhile:
                    why = f"{item.step.renews.serial} was revoked while this ran"
                if why:
                    item.files.abandon()  # the folders it created for nothing
                    outcomes.append(Outcome(item.step, skipped=why))
                    continue
                committed.append(item)
            if committed:
                connection.execute(insert(certificates), [item.row for item in committed])
            for item in committed:
                if item.request.csr is not None:
                    item.generated = generated_keys(connection, item.row["name"])
            for number, item in enumerate(committed, start=1):
                # The batch's last record is followed by a checkpoint: the issuing CA key signs
                # the chain's new head.
                chain.append(
                    action="renew" if item.step.renews else "issue", target_serial=item.row["serial"],
                    target_name=item.row["name"], details=item.details,
                    signer=context.issuer if number == len(committed) else None,
                )
            chain.write()
    except BaseException:
        for item in signed:
            item.files.abandon()
        raise
    with ThreadPoolExecutor(_WRITER_THREADS) as pool:
        writes = [pool.submit(_write_files, item, replace=replace_files) for item in committed]
    # Every certificate recorded here is reported, with its files or why they are missing
    # (a full disk, say): the caller must learn its serial even when the run stops here.
    failure: PkiError | None = None
    for item, write in zip(committed, writes, strict=True):
        try:
            paths = write.result()
        except FilesNotWritten as exc:
            failure = failure or exc
            outcomes.append(Outcome(item.step, serial=item.row["serial"], facts=item.facts, files_error=str(exc)))
        else:
            outcomes.append(Outcome(item.step, serial=item.row["serial"], files=tuple(paths), facts=item.facts))
    order = {id(s): i for i, s in enumerate(steps)}
    return sorted(outcomes, key=lambda o: order.get(id(o.step), 0)), failure


def _sign(step: Step, context: _SigningContext, out_root: Path, now: datetime) -> _Signed:
    entry = step.entry
    assert entry is not None
    request = _request(entry, renews_id=step.renews.id if step.renews else None)
    private_key = None if entry.csr else keys.generate_private_key(entry.key_type)
    public_key = entry.csr.public_key if entry.csr else private_key.public_key()  # type: ignore[union-attr]
    validity = profiles.leaf_validity(
        now=now, requested=entry.validity, policy_max=context.max_validity,
        issuer_not_after=context.signer_not_after,
    )
    certificate = profiles.build_leaf(
        kind=entry.kind, public_key=public_key,
        subject=profiles.leaf_name(entry.name, _organisation(context.issuer.certificate), entry.roles),
        sans=entry.sans, issuer=context.issuer, serial=profiles.new_serial(), validity=validity,
    )
    leaf = facts(certificate)
    folder = step.folder or out_root / entry.name
    files = OutputFiles()
    # The key first and tls.crt last: a tls.crt holding the certificate means the folder is
    # complete, which is what the next run's plan checks.
    if private_key is not None:
        files.add(folder / "tls.key", keys.private_key_pem(private_key), mode=PRIVATE)
    files.add(folder / "ca.crt", context.root_pem.encode("ascii"))
    chain_pem = pem(certificate) + "".join(pem(c) for c in context.intermediates)
    files.add(folder / "tls.crt", chain_pem.encode("ascii"))
    details: dict[str, object] = {
        "kind": entry.kind.value, "sans": list(leaf.sans), "roles": list(entry.roles),
        "not_after": leaf.not_after.isoformat(), "key_type": leaf.key_type, "from_csr": entry.csr is not None,
        "by": "apply",
    }
    if step.renews is not None:
        details["renews"] = step.renews.serial
    if step.action is Action.REPLACE:
        details["replaces"] = [h.serial for h in step.revokes]
    row = _certificate_row(request, certificate, leaf, context.signer_id, folder, now)
    return _Signed(step, request, row, details, files, folder, leaf)


def _write_files(item: _Signed, *, replace: bool) -> list[Path]:
    written = item.files.write(replace=replace)
    csr = item.request.csr  # without one, tls.key was just written and only a bundle is stale
    certificate_key = keys.public_key_der(csr.public_key) if csr is not None else b""
    remove_stale_files(item.folder, written, certificate_key=certificate_key, generated=item.generated)
    return written


def _offboarded_since(connection: Connection, mark: int, owners: set[str | None]) -> set[str]:
    names = [o for o in owners if o is not None]
    if not names:
        return set()
    return set(connection.scalars(
        select(audit_log.c.target_name).where(
            audit_log.c.seq > mark, audit_log.c.action == "offboard", audit_log.c.target_name.in_(names),
        )
    ))


def _still_valid(connection: Connection, ids: list[int]) -> dict[int, Row[Any]]:
    """Of the certificates `ids`, those not revoked: id, serial, name and kind, by id."""
    found: dict[int, Row[Any]] = {}
    for start in range(0, len(ids), 500):  # within any backend's limit on bound parameters
        found.update((row.id, row) for row in connection.execute(
            select(certificates.c.id, certificates.c.serial, certificates.c.name, certificates.c.kind)
            .outerjoin(revocations, revocations.c.certificate_id == certificates.c.id)
            .where(certificates.c.id.in_(ids[start:start + 500]), revocations.c.certificate_id.is_(None))
        ))
    return found


def _revoke_and_publish(
    home: Home, steps: list[Step], plan: Plan, result: ApplyResult, *, passphrase: PassphraseSource,
    now: datetime, on_done: Callable[[Outcome], None],
) -> None:
    """Every revocation of the run, one audit record each, and one CRL publication."""
    # Revocation works on ORM objects: imported only by the runs that revoke, so that a run
    # with nothing to do starts without the ORM.
    from mcp_pki.services.revocation import RevokedCertificate, _Change, _change_and_publish

    done: list[Outcome] = []

    def change(session: "Session") -> _Change:
        # Read and written in bulk: a renewal of thousands revokes thousands.
        connection = connection_of(session)
        held = _still_valid(connection, [h.id for step in steps for h in step.revokes])
        chain = audit.AuditChain(connection, now=now)
        rows: list[dict[str, Any]] = []
        revoked_all: list[RevokedCertificate] = []
        for step in steps:
            revoked_here = []
            for certificate in (held.pop(h.id, None) for h in step.revokes):
                if certificate is None:
                    continue  # revoked meanwhile (offboarded, say): nothing left to do
                rows.append(new_revocation(certificate.id, certificate.serial, reason=step.reason,
                                           invalidity_date=None, now=now))
                chain.append(
                    action="revoke", target_serial=certificate.serial, target_name=certificate.name,
                    details={"reason": step.reason.value if step.reason else "unspecified", "by": "apply"},
                )
                revoked_all.append(RevokedCertificate(
                    certificate.serial, certificate.name, certificate.kind, now, step.reason,
                ))
                revoked_here.append(certificate.serial)
            if step.action is Action.REVOKE:
                done.append(Outcome(step, revoked=tuple(revoked_here),
                                    skipped=None if revoked_here else "already revoked"))
        if rows:
            connection.execute(insert(revocations), rows)
        chain.write()
        return _Change(revoked_all, "apply", {"revoked_serials": [r.serial for r in revoked_all]})

    published = _change_and_publish(home, passphrase=passphrase, now=now, change=change)
    result.crl_numbers = [c.number for c in published.crls]
    result.crl_file_written = home.crl_file in published.files
    for outcome in done:
        result.outcomes.append(outcome)
        on_done(outcome)
