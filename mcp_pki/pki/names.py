"""Validation of the names we put into certificates.

Everything here is strict on purpose: a name that reaches a certificate can never be taken
back, and TLS stacks disagree on the odd cases (trailing dots, IDNs, embedded wildcards).
"""

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography import x509

from mcp_pki.errors import InvalidInput, InventoryError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_T = TypeVar("_T")

# NAME is a folder name and a subject CN (upper bound 64): no separators, no control
# characters, no leading dot, so it can never climb out of the output folder.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_TOP_LABEL = re.compile(r"[a-z0-9-]{0,62}[a-z]")
_URI_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
# What OpenSSL reads as a host name in a subject CN, and checks against DNS constraints.
LOOKS_LIKE_HOST = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+")
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Bounds on what one certificate may carry: far above any real MCP server or teammate, low
# enough that a typo in a script cannot mint a megabyte certificate that clients choke on.
MAX_SANS = 100
MAX_ROLES = 32
MAX_URI_LENGTH = 2048


def validate_name(name: str) -> str:
    """A certificate NAME: the server's or teammate's handle, also the default folder."""
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid name {name!r}: use 1-64 letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    return name


def validate_dns_name(text: str, *, allow_wildcard: bool = False) -> str:
    name = text.lower()
    if not name or len(name) > 253:
        raise InvalidInput(f"invalid DNS name {text!r}: must be 1-253 characters")
    if not name.isascii():
        raise InvalidInput(f"invalid DNS name {text!r}: write internationalised names as xn-- labels")
    labels = name.split(".")
    if labels[0] == "*":
        if not allow_wildcard:
            raise InvalidInput(f"wildcard DNS name {text!r} refused: pass --allow-wildcard to permit it")
        if len(labels) < 3:
            raise InvalidInput(f"invalid DNS name {text!r}: a wildcard needs at least two labels after it")
        labels = labels[1:]
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidInput(
                f"invalid DNS name {text!r}: labels are letters, digits and inner hyphens "
                "(no empty labels, trailing dots, underscores or wildcards inside)"
            )
    # RFC 5280's preferred name syntax as linters read it: a host name under a top-level
    # label that ends in a letter. "localhost" or "db" alone are not such names.
    if len(labels) < 2 or not _TOP_LABEL.fullmatch(labels[-1]):
        raise InvalidInput(
            f"invalid DNS name {text!r}: give a fully qualified name such as files.internal "
            "(for loopback use --ip 127.0.0.1, or a name under .localhost)"
        )
    return name


def validate_dns_suffix(text: str) -> str:
    """A ``--permit-dns`` subtree: one or more labels, a single one such as ``internal``
    included (RFC 5280 name constraints allow any domain; ``.internal`` is for private use)."""
    name = text.lower().removeprefix(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidInput(f"invalid --permit-dns {text!r}: give a domain such as mcp.example.com or internal")
    return name


def parse_ip(text: str) -> IPAddress:
    # ipaddress accepts an IPv6 zone id ("fe80::1%eth0"), but a certificate cannot hold
    # one: it would be dropped silently and the certificate name another address.
    if "%" in text:
        raise InvalidInput(f"invalid IP address {text!r}: zone ids (%...) cannot be put in a certificate")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInput(f"invalid IP address {text!r}") from None


def validate_uri(text: str) -> str:
    if len(text) > MAX_URI_LENGTH:
        raise InvalidInput(f"URI of {len(text)} characters refused: at most {MAX_URI_LENGTH}")
    scheme, colon, rest = text.partition(":")
    if (
        not colon
        or not _URI_SCHEME.fullmatch(scheme)
        or not rest
        or not text.isascii()
        or any(ch.isspace() or ord(ch) < 32 for ch in text)
        or (rest.startswith("//") and len(rest.removeprefix("//").split("/", 1)[0]) == 0)
    ):
        raise InvalidInput(f"invalid URI {text!r}: write an absolute URI such as spiffe://team/agent/build")
    return text


def validate_email(text: str) -> str:
    local, at, domain = text.rpartition("@")
    if not at or not _EMAIL_LOCAL.fullmatch(local):
        raise InvalidInput(f"invalid email address {text!r}")
    try:
        validate_dns_name(domain)
    except InvalidInput:
        raise InvalidInput(f"invalid email address {text!r}: bad domain") from None
    return f"{local}@{domain.lower()}"


def validate_role(text: str) -> str:
    if not _ROLE.fullmatch(text):
        raise InvalidInput(
            f"invalid role {text!r}: use 1-64 letters, digits and . _ : -, starting with a letter or digit"
        )
    return text


def validate_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Roles of a client certificate, duplicates collapsed, at most `MAX_ROLES`."""
    unique = _unique(validate_role(r) for r in roles)
    if len(unique) > MAX_ROLES:
        raise InvalidInput(f"{len(unique)} roles refused: at most {MAX_ROLES} per certificate")
    return unique


@dataclass(frozen=True, slots=True)
class SubjectAltNames:
    """The subject alternative names of one certificate, already validated."""

    dns: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()
    uris: tuple[str, ...] = ()
    emails: tuple[str, ...] = field(default=())

    @classmethod
    def parse(
        cls,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        emails: tuple[str, ...] = (),
        allow_wildcard: bool = False,
    ) -> "SubjectAltNames":
        """Validate command-line values; duplicates collapse, order is kept."""
        sans = cls(
            dns=_unique(validate_dns_name(d, allow_wildcard=allow_wildcard) for d in dns),
            ips=_unique(parse_ip(i) for i in ips),
            uris=_unique(validate_uri(u) for u in uris),
            emails=_unique(validate_email(e) for e in emails),
        )
        count = len(sans.dns) + len(sans.ips) + len(sans.uris) + len(sans.emails)
        if count > MAX_SANS:
            raise InvalidInput(f"{count} subject alternative names refused: at most {MAX_SANS} per certificate")
        return sans

    @classmethod
    def from_labels(cls, labels: list[str]) -> "SubjectAltNames":
        """Inverse of `labels`: rebuilds the names as stored in the inventory."""
        by_kind: dict[str, list[str]] = {"DNS": [], "IP": [], "URI": [], "email": []}
        for label in labels:
            kind, _, value = label.partition(":")
            if kind not in by_kind:
                raise InventoryError(f"the inventory is corrupt: a stored name {label!r} has no known type")
            by_kind[kind].append(value)
        try:
            ips = tuple(ipaddress.ip_address(i) for i in by_kind["IP"])
        except ValueError:
            raise InventoryError("the inventory is corrupt: a stored IP address does not parse") from None
        return cls(dns=tuple(by_kind["DNS"]), ips=ips, uris=tuple(by_kind["URI"]), emails=tuple(by_kind["email"]))

    def __bool__(self) -> bool:
        return bool(self.dns or self.ips or self.uris or self.emails)

    def labels(self) -> list[str]:
        """``DNS:x``, ``IP:y``, ``URI:z``, ``email:w``: how OpenSSL prints them too."""
        return (
            [f"DNS:{d}" for d in self.dns]
            + [f"IP:{i}" for i in self.ips]
            + [f"URI:{u}" for u in self.uris]
            + [f"email:{e}" for e in self.emails]
        )

    def general_names(self) -> list[x509.GeneralName]:
        return (
            [x509.DNSName(d) for d in self.dns]
            + [x509.IPAddress(i) for i in self.ips]
            + [x509.UniformResourceIdentifier(u) for u in self.uris]
            + [x509.RFC822Name(e) for e in self.emails]
        )


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))
