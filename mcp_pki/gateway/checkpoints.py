"""Signed checkpoints in the tool-call log: the gateway's own key vouches for the chain.

A hash chain shows that a line was edited, removed or moved, but whoever can write the file
can also cut off its last lines or rewrite every line with fresh hashes. So the gateway
signs the chain's head now and then with its server key, in a ``checkpoint`` line: rewriting
anything up to the last checkpoint needs that key. The line carries the signer's certificate
fingerprint and, in the first checkpoint of each process, the certificates themselves (leaf
then intermediates, from the server's certificate file), so that checking a log needs only
our root certificate. Lines after the last checkpoint, and a cut exactly at a checkpoint, are
only as safe as access to the file.

A checkpoint signs a message of its own (`checkpoint_message`), never the CA audit log's: a
signature cannot be carried from one log to the other.
"""

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from mcp_pki import mtls
from mcp_pki.pki.keys import SigningKey
from mcp_pki.pki.signatures import is_issued_by, is_signed_by, sign

CHECKPOINT = "checkpoint"
MAX_INTERMEDIATES = 3  # our chains have one (or none with --single-tier); a bound, not a policy


def checkpoint_message(signed_seq: int, signed_hash: str, time: str) -> bytes:
    """What a checkpoint signs: the position and hash of the line it vouches for (whose hash
    covers every line before it) and when it was signed, so that the time shown is vouched."""
    return f"mcp-pki gateway call-log checkpoint\n{signed_seq}\n{signed_hash}\n{time}".encode()


def is_checkpoint(record: dict[str, Any]) -> bool:
    return CHECKPOINT in record


@dataclass(frozen=True, slots=True)
class CheckpointSigner:
    """The gateway's server key and certificate chain (leaf first)."""

    key: SigningKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]

    @property
    def fingerprint(self) -> str:
        return self.chain[0].fingerprint(hashes.SHA256()).hex()

    def fields(self, signed_seq: int, signed_hash: str, time: str, *, with_certificates: bool) -> dict[str, Any]:
        """The fields of a checkpoint line signing the line (`signed_seq`, `signed_hash`)."""
        body: dict[str, Any] = {"signed_seq": signed_seq, "signed_hash": signed_hash, "signer": self.fingerprint}
        if with_certificates:
            body["certificates"] = [base64.b64encode(c.public_bytes(Encoding.DER)).decode("ascii")
                                    for c in self.chain]
        signature = sign(self.key, checkpoint_message(signed_seq, signed_hash, time))
        body["signature"] = base64.b64encode(signature).decode("ascii")
        return {"time": time, CHECKPOINT: body}


class CheckpointError(Exception):
    """A checkpoint that does not vouch for the chain; the message names what is wrong."""


class CheckpointVerifier:
    """Checks checkpoints in file order, remembering the signers already found to chain to
    one of `anchors` (our root, or the CA certificates of a ``--ca`` file)."""

    def __init__(self, anchors: Sequence[x509.Certificate]) -> None:
        self.anchors = [a for a in anchors if mtls.is_ca(a)]
        self._signers: dict[str, x509.Certificate] = {}

    def check(self, record: dict[str, Any], prev_seq: int, prev_hash: str) -> None:
        """Raise `CheckpointError` unless `record` signs the line before it (`prev_seq`,
        `prev_hash`) with the key of a gateway certificate of ours."""
        body = record.get(CHECKPOINT)
        if not isinstance(body, dict):
            raise CheckpointError("is malformed: its checkpoint is not an object")
        if body.get("signed_seq") != prev_seq or body.get("signed_hash") != prev_hash:
            raise CheckpointError(f"vouches for a line that is not the one before it (seq {prev_seq})")
        fingerprint = body.get("signer")
        if not isinstance(fingerprint, str):
            raise CheckpointError("names no signer")
        signer = self._signer(fingerprint, body.get("certificates"))
        time = record.get("time")
        try:
            signature = base64.b64decode(str(body.get("signature", "")), validate=True)
        except (binascii.Error, ValueError):
            signature = b""
        if not isinstance(time, str) or not is_signed_by(signer, signature,
                                                          checkpoint_message(prev_seq, prev_hash, time)):
            raise CheckpointError(f"has an invalid signature: lines up to seq {prev_seq} were rewritten")

    def _signer(self, fingerprint: str, encoded: object) -> x509.Certificate:
        if encoded is None:
            known = self._signers.get(fingerprint)
            if known is None:
                raise CheckpointError("names a signer whose certificate no earlier checkpoint carries")
            return known
        chain = _decode_chain(encoded)
        leaf = chain[0]
        if leaf.fingerprint(hashes.SHA256()).hex() != fingerprint:
            raise CheckpointError("names a signer other than the certificate it carries")
        if fingerprint not in self._signers:
            label = mtls.identity_of(leaf).label
            if mtls.is_ca(leaf) or ExtendedKeyUsageOID.SERVER_AUTH not in (mtls.extended_key_usages(leaf) or []):
                raise CheckpointError(f"is signed by {label}, which is not a server certificate")
            if not self._chains_to_anchor(leaf, chain[1:]):
                raise CheckpointError(f"is signed by {label}, whose certificate does not chain to our CA")
            self._signers[fingerprint] = leaf
        return self._signers[fingerprint]

    def _chains_to_anchor(self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate]) -> bool:
        current = leaf
        for _ in range(MAX_INTERMEDIATES + 1):
            if any(is_issued_by(current, anchor) for anchor in self.anchors):
                return True
            issuer = next((c for c in intermediates if mtls.is_ca(c) and is_issued_by(current, c)), None)
            if issuer is None:
                return False
            current = issuer
        return False


def _decode_chain(encoded: object) -> list[x509.Certificate]:
    if not isinstance(encoded, list) or not encoded:
        raise CheckpointError("carries no readable certificate")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(str(item), validate=True)) for item in encoded]
    except (binascii.Error, ValueError):
        raise CheckpointError("carries no readable certificate") from None
