"""Creating the CA and unlocking it for signing."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from sqlalchemy import Connection, Row, insert, select

from mcp_pki.errors import Conflict, InvalidInput, InventoryError, PassphraseError, PolicyViolation
from mcp_pki.pki import keys, profiles
from mcp_pki.pki.constraints import NamePolicy
from mcp_pki.pki.inspect import from_pem, pem
from mcp_pki.services import audit
from mcp_pki.services.crls import publish_crls, write_crl_file
from mcp_pki.services.files import OutputFiles, refuse_existing
from mcp_pki.services.home import Home
from mcp_pki.store.db import (
    connection_of,
    is_memory_database,
    open_inventory,
    redacted_url,
    write_transaction,
)
from mcp_pki.store.tables import authorities

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

PassphraseSource = Callable[[], bytes | None]
MIN_PASSPHRASE_LENGTH = 8


@dataclass(frozen=True, slots=True)
class CaRequest:
    common_name: str
    org: str | None
    key_type: keys.KeyType
    validity: timedelta
    single_tier: bool
    permitted_dns: tuple[str, ...]
    passphrase: bytes | None  # None only with --no-passphrase
    # The other --permit-* options; with any --permit-* given, every name type is
    # constrained (see mcp_pki.pki.constraints).
    permitted_ips: tuple[str, ...] = ()
    permitted_emails: tuple[str, ...] = ()
    permitted_uris: tuple[str, ...] = ()

    def name_policy(self) -> NamePolicy:
        return NamePolicy.parse(
            dns=self.permitted_dns, ips=self.permitted_ips, emails=self.permitted_emails,
            uris=self.permitted_uris,
        )


@dataclass(frozen=True, slots=True)
class CreatedCa:
    root: x509.Certificate
    issuing: x509.Certificate | None
    root_file: Path


def init_ca(home: Home, request: CaRequest, *, now: datetime) -> CreatedCa:
    """Create the root (and the issuing CA it signs), store both encrypted, write ca.crt."""
    if request.passphrase is not None and len(request.passphrase) < MIN_PASSPHRASE_LENGTH:
        raise PassphraseError(f"the CA passphrase must have at least {MIN_PASSPHRASE_LENGTH} characters")
    refuse_existing(
        [home.root_certificate_file, home.crl_file], force=False,
        hint="this home already has a CA (a CA is never replaced; use another --home)",
    )
    if is_memory_database(home.db_url):
        raise InvalidInput(
            "init-ca needs a database that outlives the command: an in-memory SQLite database "
            "would take the CA keys with it (give a file or a server URL with --db)"
        )
    name_policy = request.name_policy()  # bad --permit-* values fail before anything exists
    policy = home.policy()  # a bad config.yaml fails here, before the inventory exists
    if policy.crl_validity <= timedelta(0):
        raise InvalidInput("config.yaml: crl.next_update must be greater than zero")
    engine = open_inventory(home.db_url, create=True)
    output = OutputFiles()
    try:
        output.prepare(home.path)
        with write_transaction(engine) as connection:
            if connection.scalar(select(authorities.c.id).limit(1)) is not None:
                raise Conflict(f"this inventory already has a CA ({redacted_url(home.db_url)}): a CA is never replaced")
            root, issuing, signers = _create_authorities(connection, request, name_policy, now=now)
            # Publish empty CRLs at once: servers configured with ssl_crl need a CRL from
            # every CA in the chain before the first revocation ever happens.
            crls = publish_crls(
                connection, dict(signers), now=now, validity=policy.crl_validity, published_file=home.crl_file,
            )
            audit.append_record(
                connection,
                now=now,
                action="init-ca",
                target_serial=profiles.serial_hex(root.serial_number),
                target_name=request.common_name,
                details={
                    "created_serials": [
                        profiles.serial_hex(c.serial_number) for c in (root, issuing) if c
                    ],
                    "key_type": request.key_type.value,
                    "single_tier": request.single_tier,
                    "permitted_dns": list(name_policy.dns),
                    "name_constraints": name_policy.summary() if name_policy.constrained else None,
                    "key_encrypted": request.passphrase is not None,
                    "crl_numbers": [c.number for c in crls],
                },
                signer=signers[-1][1],  # the CA that signs leaves, as in every later checkpoint
            )
            output.add(home.root_certificate_file, pem(root).encode("ascii"))
    except BaseException:
        output.abandon()
        raise
    finally:
        engine.dispose()
    output.write()
    write_crl_file(home.crl_file, crls)
    return CreatedCa(root=root, issuing=issuing, root_file=home.root_certificate_file)


def _create_authorities(
    connection: Connection, request: CaRequest, name_policy: NamePolicy, *, now: datetime
) -> tuple[x509.Certificate, x509.Certificate | None, list[tuple[int, profiles.Issuer]]]:
    """The root (and the issuing CA), stored; with each CA's id and signing key."""
    root_key = keys.generate_private_key(request.key_type)
    constraints = name_policy.extension()
    root_not_after = now + request.validity
    root_cert = profiles.build_root_ca(
        key=root_key,
        subject=profiles.ca_name(f"{request.common_name} Root CA", request.org),
        serial=profiles.new_serial(),
        not_before=now - profiles.BACKDATE,
        not_after=root_not_after,
        name_constraints=constraints if request.single_tier else None,
    )
    root = _authority_row(
        "root", root_cert, root_key, request, name_policy.dns if request.single_tier else (),
        signs_leaves=request.single_tier, now=now,
    )
    root_id = _insert_authority(connection, root)
    signers = [(root_id, profiles.Issuer(root_cert, root_key))]
    issuing_cert = None
    if not request.single_tier:
        issuing_key = keys.generate_private_key(request.key_type)
        # The issuing CA lives half as long as the root (5 of 10 years by default), so it
        # can be replaced under the same root long before the root itself expires.
        issuing_cert = profiles.build_issuing_ca(
            public_key=issuing_key.public_key(),
            subject=profiles.ca_name(f"{request.common_name} Issuing CA", request.org),
            issuer=profiles.Issuer(root_cert, root_key),
            serial=profiles.new_serial(),
            not_before=now - profiles.BACKDATE,
            not_after=now + request.validity / 2,
            name_constraints=constraints,
        )
        issuing = _authority_row(
            "issuing", issuing_cert, issuing_key, request, name_policy.dns, signs_leaves=True, now=now
        )
        issuing_id = _insert_authority(connection, {**issuing, "parent_id": root_id})
        signers.append((issuing_id, profiles.Issuer(issuing_cert, issuing_key)))
    return root_cert, issuing_cert, signers


def _insert_authority(connection: Connection, row: dict[str, Any]) -> int:
    key = connection.execute(insert(authorities).values(row)).inserted_primary_key
    assert key is not None
    return int(key[0])


def _authority_row(
    role: str,
    certificate: x509.Certificate,
    key: keys.SigningKey,
    request: CaRequest,
    permitted_dns: tuple[str, ...],
    *,
    signs_leaves: bool,
    now: datetime,
) -> dict[str, Any]:
    return {
        "role": role,
        "signs_leaves": signs_leaves,
        "serial": profiles.serial_hex(certificate.serial_number),
        "subject": certificate.subject.rfc4514_string(),
        "key_type": request.key_type.value,
        "certificate_pem": pem(certificate),
        "encrypted_key_pem": keys.encrypt_private_key(key, request.passphrase),
        "key_encrypted": request.passphrase is not None,
        # Kept for display; issuance enforces the CA certificate's own name constraints.
        "permitted_dns": list(permitted_dns),
        "not_before": certificate.not_valid_before_utc,
        "not_after": certificate.not_valid_after_utc,
        "created_at": now,
    }


@dataclass(frozen=True, slots=True)
class Chain:
    """The CA certificates a leaf needs: its issuer first, the root last."""

    signer: Row[Any]  # a row of the authorities table
    authorities: tuple[Row[Any], ...]

    @property
    def root(self) -> Row[Any]:
        return self.authorities[-1]

    def intermediates(self) -> tuple[Row[Any], ...]:
        """What a server sends after its own certificate: every CA except the root."""
        return self.authorities[:-1]


def signing_chain(db: "Connection | Session") -> Chain:
    by_id = {row.id: row for row in connection_of(db).execute(select(authorities)).all()}
    signer = max((row for row in by_id.values() if row.signs_leaves), key=lambda row: row.id, default=None)
    if signer is None:
        raise InventoryError("this inventory has no CA yet: run 'mcp-pki init-ca' first")
    chain, current = [signer], signer
    while current.parent_id is not None:
        current = by_id[current.parent_id]
        chain.append(current)
    return Chain(signer=signer, authorities=tuple(chain))


def unlock(authority: Row[Any], passphrase: PassphraseSource, *, now: datetime) -> profiles.Issuer:
    """The CA's certificate and decrypted key, refusing an expired CA."""
    if authority.not_after <= now:
        raise PolicyViolation(
            f"the CA {authority.subject} expired on {authority.not_after:%Y-%m-%d}: it cannot sign"
        )
    secret = passphrase() if authority.key_encrypted else None
    key = keys.decrypt_private_key(authority.encrypted_key_pem, secret)
    certificate = from_pem(authority.certificate_pem)
    return profiles.Issuer(certificate, key)


def record_refused_passphrase(home: Home, *, command: str | None, now: datetime) -> None:
    """An audit record of a passphrase the CA key refused, in a transaction of its own (the
    command's transaction has rolled back). It names the command, never what was typed."""
    engine = open_inventory(home.db_url)
    try:
        with write_transaction(engine) as connection:
            audit.append_record(
                connection, now=now, action="passphrase-refused", outcome="refused",
                details={"command": command, "reason": "wrong CA passphrase"},
            )
    finally:
        engine.dispose()


def unlock_all(db: "Connection | Session", passphrase: PassphraseSource, *, now: datetime) -> dict[int, profiles.Issuer]:
    """Every CA key, decrypted: each CA signs its own CRL."""
    return {a.id: unlock(a, passphrase, now=now) for a in connection_of(db).execute(select(authorities)).all()}
