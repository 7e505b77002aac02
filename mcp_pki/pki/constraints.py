"""Name constraints: what a constrained CA may sign, for every name type we issue.

A CA made with any ``--permit-*`` option is constrained for DNS names, IP addresses, email
addresses and URIs alike: a type without a ``--permit-*`` option is shut off entirely, so a
"DNS-only" CA cannot be used to sign ``IP:8.8.8.8`` or ``URI:spiffe://evil.com``. The same
extension is then checked by us before signing (some TLS stacks skip name constraints) and
by every relying party afterwards.
"""

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from cryptography import x509

from mcp_pki.errors import InvalidInput, PolicyViolation
from mcp_pki.pki.names import (
    LOOKS_LIKE_HOST,
    SubjectAltNames,
    validate_dns_name,
    validate_dns_suffix,
    validate_email,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")

# RFC 5280 has no "nothing" form for email and URI constraints (an empty excluded name
# matches nothing in OpenSSL, and pkilint rightly calls it invalid syntax), so a type that
# is shut off is permitted only under a reserved name that can never be registered
# (RFC 6761: .invalid). Our own issuance refuses such names anyway.
NOTHING = "nothing.invalid"
# An empty dNSName excludes every DNS name (CA/Browser Forum BR 7.1.2.10.8), and the two
# all-address ranges exclude every IP address.
_ALL_DNS = x509.DNSName("")
_ALL_IPS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True, slots=True)
class NamePolicy:
    """The ``--permit-*`` options of ``init-ca``, validated.

    `emails` holds RFC 5280 rfc822Name forms: a mailbox (``ops@example.com``), a host
    (``example.com``: every mailbox there) or a domain (``.example.com``: every mailbox at
    any host under it). `uri_hosts` holds URI forms: a host (``agents.example.com``) or a
    domain (``.example.com``: any host under it, not the domain itself).
    """

    dns: tuple[str, ...] = ()
    ips: tuple[IPNetwork, ...] = ()
    emails: tuple[str, ...] = ()
    uri_hosts: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        *,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        emails: Iterable[str] = (),
        uris: Iterable[str] = (),
    ) -> "NamePolicy":
        return cls(
            dns=_unique(validate_dns_suffix(d) for d in dns),
            ips=_unique(_parse_network(i) for i in ips),
            emails=_unique(_parse_email_form(e) for e in emails),
            uri_hosts=_unique(_parse_uri_form(u) for u in uris),
        )

    @property
    def constrained(self) -> bool:
        return bool(self.dns or self.ips or self.emails or self.uri_hosts)

    def extension(self) -> x509.NameConstraints | None:
        """The NameConstraints extension of a CA with this policy; None when unconstrained."""
        if not self.constrained:
            return None
        permitted: list[x509.GeneralName] = [x509.DNSName(d) for d in self.dns]
        permitted += [x509.IPAddress(n) for n in self.ips]
        permitted += [x509.RFC822Name(e) for e in self.emails or (NOTHING,)]
        permitted += [x509.UniformResourceIdentifier(u) for u in self.uri_hosts or (NOTHING,)]
        excluded: list[x509.GeneralName] = []
        if not self.dns:
            excluded.append(_ALL_DNS)
        if not self.ips:
            excluded += [x509.IPAddress(n) for n in _ALL_IPS]
        return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded or None)

    def summary(self) -> dict[str, list[str]]:
        """For the audit record and JSON output."""
        return {
            "dns": list(self.dns), "ip": [str(n) for n in self.ips],
            "email": list(self.emails), "uri": list(self.uri_hosts),
        }


def check_name_constraints(
    sans: SubjectAltNames, constraints: x509.NameConstraints, *, common_name: str
) -> None:
    """Refuse, before signing, any name that `constraints` (a CA's extension) forbids.

    RFC 5280 4.2.1.10 semantics for the four types we issue: a name is refused when an
    excluded subtree of its type matches it, or when its type has permitted subtrees and
    none matches. Checked against the CA certificate itself, so that what we enforce is
    exactly what relying parties enforce.
    """
    permitted = list(constraints.permitted_subtrees or ())
    excluded = list(constraints.excluded_subtrees or ())
    # With no DNS name in the SANs, OpenSSL checks a subject CN that looks like a host name
    # (dotted, host-name characters only) against the DNS constraints, and rejects it.
    cn_is_host = not sans.dns and LOOKS_LIKE_HOST.fullmatch(common_name)
    if cn_is_host and not _allowed(x509.DNSName, common_name.lower(), permitted, excluded):
        raise PolicyViolation(
            f"name {common_name!r} looks like a DNS name outside this CA's permitted names "
            f"({describe(constraints)}), so OpenSSL-based peers would reject the certificate: "
            "choose a name without dots, or one under a permitted suffix"
        )
    candidates: list[tuple[type[x509.GeneralName], object, str]] = (
        [(x509.DNSName, d, f"DNS name {d!r}") for d in sans.dns]
        + [(x509.IPAddress, i, f"IP address {i}") for i in sans.ips]
        + [(x509.RFC822Name, e, f"email address {e!r}") for e in sans.emails]
        + [(x509.UniformResourceIdentifier, u, f"URI {u!r}") for u in sans.uris]
    )
    for kind, value, label in candidates:
        if not _allowed(kind, value, permitted, excluded):
            raise PolicyViolation(f"{label} is outside this CA's permitted names ({describe(constraints)})")


def describe(constraints: x509.NameConstraints) -> str:
    """``DNS: example.com; IP: none; email: example.com; URI: none``: what a CA may sign."""
    permitted = list(constraints.permitted_subtrees or ())
    excluded = list(constraints.excluded_subtrees or ())
    parts = []
    for kind, label in ((x509.DNSName, "DNS"), (x509.IPAddress, "IP"), (x509.RFC822Name, "email"),
                        (x509.UniformResourceIdentifier, "URI")):
        allowed = [str(g.value) for g in permitted if type(g) is kind and g.value != NOTHING]
        if _excludes_everything(kind, excluded) or (
            any(type(g) is kind for g in permitted) and not allowed
        ):
            parts.append(f"{label}: none")
        elif allowed:
            parts.append(f"{label}: {', '.join(allowed)}")
        else:
            parts.append(f"{label}: any")
    return "; ".join(parts)


def _allowed(
    kind: type[x509.GeneralName], value: object,
    permitted: list[x509.GeneralName], excluded: list[x509.GeneralName],
) -> bool:
    if any(type(g) is kind and _matches(g, value) for g in excluded):
        return False
    bases = [g for g in permitted if type(g) is kind]
    return not bases or any(_matches(g, value) for g in bases)


def _matches(base: x509.GeneralName, value: object) -> bool:
    if isinstance(base, x509.DNSName):
        assert isinstance(value, str)
        # A wildcard is checked as the domain it stands for: "*.a.example.com" is within
        # "a.example.com", never within "b.a.example.com" (OpenSSL lets wildcards slip past
        # excluded subtrees; we do not).
        return _within_domain(value.removeprefix("*."), base.value.lower())
    if isinstance(base, x509.IPAddress):
        assert isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address)
        network = base.value
        return isinstance(network, IPNetwork) and value.version == network.version and value in network
    if isinstance(base, x509.RFC822Name):
        assert isinstance(value, str)
        return _email_matches(base.value, value)
    if isinstance(base, x509.UniformResourceIdentifier):
        assert isinstance(value, str)
        host = _uri_host(value)
        # A URI without a host name (urn:..., an IP literal) matches no URI constraint;
        # OpenSSL refuses such names under any URI constraint.
        return host is not None and _host_matches(base.value.lower(), host)
    return False


def _within_domain(name: str, base: str) -> bool:
    """DNS constraint matching: `base` and any name with labels added on its left."""
    if not base:
        return True
    if base.startswith("."):
        return name.endswith(base)
    return name == base or name.endswith("." + base)


def _host_matches(base: str, host: str) -> bool:
    """rfc822Name host part and URI forms: ``.domain`` is any host below it, else one host."""
    return host.endswith(base) if base.startswith(".") else host == base


def _email_matches(base: str, address: str) -> bool:
    local, _, domain = address.rpartition("@")
    if "@" in base:
        base_local, _, base_domain = base.rpartition("@")
        return local == base_local and domain.lower() == base_domain.lower()
    return _host_matches(base.lower(), domain.lower())


def _uri_host(uri: str) -> str | None:
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
    return None


def _excludes_everything(kind: type[x509.GeneralName], excluded: list[x509.GeneralName]) -> bool:
    if kind is x509.DNSName:
        return any(isinstance(g, x509.DNSName) and g.value == "" for g in excluded)
    if kind is x509.IPAddress:
        networks = {g.value for g in excluded if isinstance(g, x509.IPAddress)}
        return all(n in networks for n in _ALL_IPS)
    return False


def _parse_network(text: str) -> IPNetwork:
    if "%" in text or not text.isascii():
        raise InvalidInput(f"invalid --permit-ip {text!r}: give a network such as 10.0.0.0/8 or 127.0.0.1/32")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidInput(
            f"invalid --permit-ip {text!r}: give a network such as 10.0.0.0/8 or 127.0.0.1/32 ({exc})"
        ) from None


def _parse_email_form(text: str) -> str:
    """A mailbox, a host, or ``.domain`` (RFC 5280 4.2.1.10 rfc822Name forms)."""
    if "@" in text:
        return validate_email(text)
    return _domain_form(text, "--permit-email", "example.com, .example.com or ops@example.com")


def _parse_uri_form(text: str) -> str:
    """A host or ``.domain``: URI constraints apply to the host part (RFC 5280 4.2.1.10)."""
    return _domain_form(text, "--permit-uri", "agents.example.com or .example.com")


def _domain_form(text: str, option: str, examples: str) -> str:
    domain = text.removeprefix(".")
    try:
        # A fully qualified name: RFC 5280 asks for one in URI constraints, and pkilint
        # reads single-label email and URI constraints as invalid syntax.
        validate_dns_name(domain)
    except InvalidInput:
        raise InvalidInput(f"invalid {option} {text!r}: give {examples}") from None
    return text.lower()


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))
