"""Issuing server and client certificates."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from sqlalchemy import Connection, Engine, func, insert, select

from mcp_pki.durations import check_lifetime
from mcp_pki.errors import Conflict, InvalidInput
from mcp_pki.pki import keys, profiles
from mcp_pki.pki.bundles import pkcs12_bytes
from mcp_pki.pki.constraints import check_name_constraints
from mcp_pki.pki.crl import RevocationReason
from mcp_pki.pki.csr import VerifiedRequest
from mcp_pki.pki.inspect import CertificateFacts, facts, from_pem, pem
from mcp_pki.pki.names import MAX_ROLES, MAX_SANS, SubjectAltNames
from mcp_pki.pki.profiles import CertificateKind
from mcp_pki.services import audit
from mcp_pki.services.authority import Chain, PassphraseSource, signing_chain, unlock, unlock_all
from mcp_pki.services.crls import PublishedCrl, new_revocation, publish_crls, write_crl_file
from mcp_pki.services.files import PRIVATE, FilesNotWritten, OutputFiles, refuse_existing
from mcp_pki.services.home import Home
from mcp_pki.store.db import connection_of, open_inventory, read_transaction, write_transaction
from mcp_pki.store.tables import audit_log, certificates, revocations

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class LeafRequest:
    kind: CertificateKind
    name: str
    sans: SubjectAltNames
    roles: tuple[str, ...] = ()
    owner: str | None = None
    validity: timedelta = profiles.LEAF_VALIDITY
    key_type: keys.KeyType = keys.KeyType.P256
    csr: VerifiedRequest | None = None
    renews_id: int | None = None


@dataclass(frozen=True, slots=True)
class OutputRequest:
    folder: Path
    force: bool = False
    p12_passphrase: bytes | None = None  # a tls.p12 is written when set
    p12_legacy: bool = False


@dataclass(frozen=True, slots=True)
class IssuedLeaf:
    kind: CertificateKind
    name: str
    owner: str | None
    facts: CertificateFacts
    files: list[Path]
    warnings: list[str] = field(default_factory=list)


def issue_leaf(
    home: Home,
    request: LeafRequest,
    output: OutputRequest,
    *,
    passphrase: PassphraseSource,
    now: datetime,
    engine: Engine | None = None,
    supersedes: int | None = None,
    unlocked: dict[int, profiles.Issuer] | None = None,
    run_began: int | None = None,
) -> IssuedLeaf:
    """Sign one leaf certificate, record it, then write its files.

    The certificate row and its audit record commit in one transaction before any file
    holding the certificate is renamed into place. With `supersedes`, that certificate is
    revoked as superseded and the CRLs republished in the same transaction. Bulk callers
    pass the CA keys `unlocked` once (scrypt makes each unlock cost ~30 ms on purpose).
    A renewal re-checks in its write transaction that the certificate it renews is still
    unrevoked and, given `run_began` (the `audit_mark` when the run read its work), that the
    owner was not offboarded since: offboarding wins over a renewal already under way.
    """
    _check_request(request, output)
    paths = _output_paths(request, output)
    refuse_existing(list(paths.values()), force=output.force)
    policy = home.policy()
    own_engine = engine is None
    engine = engine or open_inventory(home.db_url)
    try:
        with read_transaction(engine) as connection:
            chain = signing_chain(connection)
            check_constraints(chain_constraints(chain), request)
            issuers = unlocked or (unlock_all(connection, passphrase, now=now) if supersedes else {})
        issuer = issuers.get(chain.signer.id) or unlock(chain.signer, passphrase, now=now)
        private_key = None if request.csr else keys.generate_private_key(request.key_type)
        public_key = request.csr.public_key if request.csr else private_key.public_key()  # type: ignore[union-attr]
        validity = profiles.leaf_validity(
            now=now, requested=request.validity, policy_max=policy.max_validity,
            issuer_not_after=chain.signer.not_after,
        )
        org = _organisation(issuer.certificate)
        certificate = profiles.build_leaf(
            kind=request.kind,
            public_key=public_key,
            subject=profiles.leaf_name(request.name, org, request.roles),
            sans=request.sans,
            issuer=issuer,
            serial=profiles.new_serial(),
            validity=validity,
        )
        leaf_facts = facts(certificate)
        intermediates = [from_pem(a.certificate_pem) for a in chain.intermediates()]
        root_pem = chain.root.certificate_pem

        # Everything the files hold is computed before the transaction, so that nothing but
        # disk IO remains once the certificate is recorded.
        chain_pem = pem(certificate) + "".join(pem(c) for c in intermediates)
        files = OutputFiles()
        files.add(paths["tls.crt"], chain_pem.encode("ascii"))
        files.add(paths["ca.crt"], root_pem.encode("ascii"))
        if private_key is not None:
            files.add(paths["tls.key"], keys.private_key_pem(private_key), mode=PRIVATE)
            if output.p12_passphrase is not None:
                bundle = pkcs12_bytes(
                    name=request.name, key=private_key, certificate=certificate,
                    ca_certificates=[*intermediates, from_pem(root_pem)],
                    passphrase=output.p12_passphrase, legacy=output.p12_legacy,
                )
                files.add(paths["tls.p12"], bundle, mode=PRIVATE)
        superseded_crls: list[PublishedCrl] = []
        generated: frozenset[bytes] = frozenset()
        try:
            files.prepare(output.folder)
            with write_transaction(engine) as connection:
                if output.force and request.csr is not None:
                    generated = generated_keys(connection, request.name)
                if request.renews_id is not None:
                    refuse_stale_renewal(connection, request.renews_id, request.owner, run_began=run_began)
                connection.execute(insert(certificates).values(
                    _certificate_row(request, certificate, leaf_facts, chain.signer.id, output.folder, now)
                ))
                details: dict[str, object] = {
                    "kind": request.kind.value, "sans": list(leaf_facts.sans),
                    "roles": list(request.roles), "not_after": leaf_facts.not_after.isoformat(),
                    "key_type": leaf_facts.key_type, "from_csr": request.csr is not None,
                }
                if request.renews_id is not None:
                    details["renews"] = _serial_of(connection, request.renews_id)
                if supersedes is not None:
                    superseded_crls = _revoke_superseded(connection, supersedes, issuers, home=home, now=now)
                    details["revoked_old"] = True
                    details["crl_numbers"] = [c.number for c in superseded_crls]
                audit.append_record(
                    connection, now=now, action="renew" if request.renews_id else "issue",
                    target_serial=leaf_facts.serial, target_name=request.name, details=details,
                    signer=issuer,
                )
        except BaseException:
            files.abandon()
            raise
        if superseded_crls:
            write_crl_file(home.crl_file, superseded_crls)
        try:
            written = files.write(replace=output.force)
        except FilesNotWritten as exc:
            raise FilesNotWritten(
                f"certificate {leaf_facts.serial} is recorded but its files were not written ({exc}): "
                f"revoke it with 'mcp-pki revoke {leaf_facts.serial}' and issue again"
            ) from None
    finally:
        if own_engine:
            engine.dispose()

    warnings = []
    if output.force:
        for stale in remove_stale_files(output.folder, written, certificate_key=keys.public_key_der(certificate.public_key()),
                                        generated=generated):
            warnings.append(f"removed {stale}, which belonged to the replaced certificate")
    if validity.capped_by:
        warnings.append(
            f"validity shortened to end {validity.not_after:%Y-%m-%d %H:%M} UTC by {validity.capped_by}"
        )
    if request.csr:
        ignored = [n for n in request.csr.requested_names if n.split(":", 1)[1] not in _approved(request)]
        if ignored:
            warnings.append(
                "names in the CSR that were not approved on the command line were not signed: "
                + ", ".join(ignored)
            )
    return IssuedLeaf(request.kind, request.name, request.owner, leaf_facts, written, warnings)


def remove_stale_files(
    folder: Path, written: list[Path], *, certificate_key: bytes, generated: frozenset[bytes],
) -> list[Path]:
    """Remove what a replaced certificate left in `folder` that the new one did not write:
    its PKCS#12 bundle, and a ``tls.key`` that would pair with the wrong certificate.

    A private key is removed only when it is one we generated for an earlier certificate of
    this name (`generated`, from `generated_keys`) and not the new certificate's own key.
    Any other ``tls.key`` beside a certificate signed from a CSR is the requester's (their
    current key, or a newer one they have not sent a CSR for yet) and stays, and so does
    one we cannot read."""
    removed = []
    for stale in (folder / "tls.key", folder / "tls.p12"):
        if stale in written or not (stale.exists() or stale.is_symlink()):
            continue
        if stale.name == "tls.key":
            held = key_file_public_key(stale)
            if held is None or held == certificate_key or held not in generated:
                continue
        stale.unlink()
        removed.append(stale)
    return removed


def generated_keys(connection: Connection, name: str) -> frozenset[bytes]:
    """The public keys (DER SubjectPublicKeyInfo) of the certificates of NAME whose private
    key this tool generated, and so may have written into a folder."""
    pems: Iterable[str] = connection.scalars(
        select(certificates.c.certificate_pem).where(certificates.c.name == name, certificates.c.from_csr.is_(False))
    )
    return frozenset(keys.public_key_der(from_pem(p).public_key()) for p in pems)


def key_file_public_key(key_file: Path) -> bytes | None:
    """The public half of the private key in `key_file` (DER SubjectPublicKeyInfo), or
    None when it cannot be read or loaded (encrypted by its owner, say)."""
    from mcp_pki.pki.bundles import load_private_key

    try:
        return keys.public_key_der(load_private_key(key_file.read_bytes()).public_key())
    except (OSError, InvalidInput):
        return None


def audit_mark(db: "Connection | Session") -> int:
    """The newest audit record's position: what happened after it happened during this run."""
    return connection_of(db).scalar(select(func.coalesce(func.max(audit_log.c.seq), 0))) or 0


def refuse_stale_renewal(connection: Connection, renews_id: int, owner: str | None, *, run_began: int | None) -> None:
    """Inside the write transaction: refuse to renew a certificate revoked since the run read
    it, or one whose owner was offboarded since `run_began` (offboarding wins)."""
    revoked = connection.execute(
        select(certificates.c.serial, revocations.c.revoked_at)
        .join(revocations, revocations.c.certificate_id == certificates.c.id)
        .where(certificates.c.id == renews_id)
    ).first()
    if revoked is not None:
        raise Conflict(f"certificate {revoked.serial} was revoked meanwhile: not renewed")
    if owner is not None and run_began is not None:
        offboarded = connection.scalar(
            select(audit_log.c.seq)
            .where(audit_log.c.seq > run_began, audit_log.c.action == "offboard", audit_log.c.target_name == owner)
            .limit(1)
        )
        if offboarded is not None:
            raise Conflict(f"{owner} was offboarded meanwhile: not renewed")


def _serial_of(connection: Connection, certificate_id: int) -> str:
    serial = connection.scalar(select(certificates.c.serial).where(certificates.c.id == certificate_id))
    assert serial is not None
    return str(serial)


def _revoke_superseded(
    connection: Connection, certificate_id: int, issuers: dict[int, profiles.Issuer], *, home: Home, now: datetime
) -> list[PublishedCrl]:
    old = connection.execute(
        select(certificates.c.serial, revocations.c.certificate_id.label("revoked"))
        .outerjoin(revocations, revocations.c.certificate_id == certificates.c.id)
        .where(certificates.c.id == certificate_id)
    ).one()
    if old.revoked is not None:
        raise Conflict(f"certificate {old.serial} was revoked meanwhile: not renewed")
    connection.execute(insert(revocations).values(
        new_revocation(certificate_id, old.serial, reason=RevocationReason.SUPERSEDED, invalidity_date=None, now=now)
    ))
    return publish_crls(
        connection, issuers, now=now, validity=home.policy().crl_validity, published_file=home.crl_file
    )


def chain_constraints(chain: Chain) -> list[x509.NameConstraints]:
    """The name constraints in the chain's CA certificates: what relying parties enforce."""
    found = []
    for authority in chain.authorities:
        try:
            found.append(from_pem(authority.certificate_pem).extensions.get_extension_for_class(
                x509.NameConstraints
            ).value)
        except x509.ExtensionNotFound:
            continue
    return found


def check_constraints(constraints: list[x509.NameConstraints], request: LeafRequest) -> None:
    """Refuse before signing what any CA of the chain may not sign (see `chain_constraints`)."""
    for constraint in constraints:
        check_name_constraints(request.sans, constraint, common_name=request.name)


def _check_request(request: LeafRequest, output: OutputRequest) -> None:
    check_limits(request)
    if request.kind is CertificateKind.SERVER and not (request.sans.dns or request.sans.ips):
        raise InvalidInput("a server certificate needs at least one --dns or --ip name")
    if request.csr and output.p12_passphrase is not None:
        raise InvalidInput("--p12 needs the private key, which stays with the requester when --csr is used")


def check_limits(request: LeafRequest) -> None:
    """What one certificate may carry, enforced here as well as on the command line: every
    way to sign a leaf (issue, renew, apply) passes here."""
    if len(request.sans.labels()) > MAX_SANS:
        raise InvalidInput(f"{len(request.sans.labels())} subject alternative names refused: at most {MAX_SANS}")
    check_lifetime(request.validity, what="the validity")
    if len(request.roles) > MAX_ROLES:
        raise InvalidInput(f"{len(request.roles)} roles refused: at most {MAX_ROLES} per certificate")


def _output_paths(request: LeafRequest, output: OutputRequest) -> dict[str, Path]:
    names = ["tls.crt", "ca.crt"]
    if request.csr is None:
        names.append("tls.key")
        if output.p12_passphrase is not None:
            names.append("tls.p12")
    return {name: output.folder / name for name in names}


def _certificate_row(
    request: LeafRequest, certificate: x509.Certificate, leaf: CertificateFacts, issuer_id: int,
    folder: Path, now: datetime,
) -> dict[str, Any]:
    return {
        "issuer_id": issuer_id,
        "serial": leaf.serial,
        "kind": request.kind.value,
        "name": request.name,
        "owner": request.owner,
        "subject": leaf.subject,
        "sans": list(leaf.sans),
        "roles": list(request.roles),
        "key_type": leaf.key_type,
        "from_csr": request.csr is not None,
        "not_before": leaf.not_before,
        "not_after": leaf.not_after,
        "certificate_pem": pem(certificate),
        "sha256_fingerprint": leaf.sha256_fingerprint,
        "renews_id": request.renews_id,
        "created_at": now,
        "files_dir": str(folder.absolute()),
    }


def _organisation(ca_certificate: x509.Certificate) -> str | None:
    values = ca_certificate.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    return str(values[0].value) if values else None


def _approved(request: LeafRequest) -> set[str]:
    labels = {label.split(":", 1)[1] for label in request.sans.labels()}
    return labels | {request.name}


