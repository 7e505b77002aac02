"""``mcp-pki issue server|client``."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mcp_pki.cli.ca import KEY_TYPES
from mcp_pki.cli.common import (
    P12_PASSPHRASE_ENV,
    Settings,
    emit_json,
    now,
    pass_settings,
    read_file,
    read_secret,
    warn,
)
from mcp_pki.cli.terminal import shown, shown_all
from mcp_pki.timestamps import iso_utc


class _KindGroup(click.Group):
    """``issue alice`` is a natural first try: say which two commands were meant."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            name = args[0]
            raise click.UsageError(
                f"issue takes the kind first: 'mcp-pki issue client {name}' for a teammate or agent, "
                f"'mcp-pki issue server {name} --dns ...' for an MCP server", ctx,
            )
        return super().resolve_command(ctx, args)


@click.group(cls=_KindGroup)
def issue() -> None:
    """Issue a server or client certificate (a new key, or a CSR you were sent)."""


def _common_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--uri", multiple=True, help="URI SAN, e.g. spiffe://acme/agent/x. Repeatable."),
        click.option("--validity", default="90d", show_default=True, help="Lifetime, e.g. 30d, 12h (capped by policy and by the CA)."),
        click.option("--key-type", type=click.Choice(KEY_TYPES), help="Key to generate [default: p256]."),
        click.option("--csr", "csr_file", type=click.Path(dir_okay=False), help="Sign this CSR instead of generating a key."),
        click.option("--owner", help="Who answers for this certificate; `offboard OWNER` revokes it."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder [default: ./NAME]."),
        click.option("--p12", is_flag=True, help="Also write tls.p12 (passphrase: MCP_PKI_P12_PASSPHRASE or a prompt)."),
        click.option("--p12-legacy", is_flag=True, help="Use 3DES/SHA-1 in tls.p12 for old macOS and Java."),
        click.option("--force", is_flag=True, help="Replace existing output files."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@issue.command("server")
@click.argument("name")
@click.option("--dns", multiple=True, help="DNS name the server answers to. Repeatable.")
@click.option("--ip", multiple=True, help="IP address the server answers on. Repeatable.")
@click.option("--allow-wildcard", is_flag=True, help="Permit a *.example.com DNS name.")
@_common_options
@pass_settings
def server(settings: Settings, name: str, dns: tuple[str, ...], ip: tuple[str, ...], allow_wildcard: bool, **options: Any) -> None:
    """Issue a server certificate for the MCP server NAME (at least one --dns or --ip).

    \b
    Writes into --out (default ./NAME): tls.crt (certificate then intermediates),
    tls.key (0600), ca.crt (root); tls.p12 with --p12.
    Example: mcp-pki issue server files --dns files.internal --ip 10.0.0.5
    """
    from mcp_pki.pki.names import SubjectAltNames

    sans = SubjectAltNames.parse(dns=dns, ips=ip, uris=options["uri"], allow_wildcard=allow_wildcard)
    _issue(settings, "server", name, sans, roles=(), **options)


@issue.command("client")
@click.argument("name")
@click.option("--email", multiple=True, help="Email SAN. Repeatable.")
@click.option("--role", multiple=True, help="Role, readable by servers as a subject OU. Repeatable.")
@_common_options
@pass_settings
def client(settings: Settings, name: str, email: tuple[str, ...], role: tuple[str, ...], **options: Any) -> None:
    """Issue a client certificate for the teammate or agent NAME (subject CN = NAME).

    \b
    Same files as `issue server`. Example:
      mcp-pki issue client alice --email alice@acme.test --role admin --role ops
    """
    from mcp_pki.pki.names import SubjectAltNames, validate_roles

    sans = SubjectAltNames.parse(uris=options["uri"], emails=email)
    roles = validate_roles(role)
    options.setdefault("owner", None)
    options["owner"] = options["owner"] or name
    _issue(settings, "client", name, sans, roles=roles, **options)


def _issue(
    settings: Settings, kind: str, name: str, sans: Any, *, roles: tuple[str, ...], uri: tuple[str, ...],
    validity: str, key_type: str | None, csr_file: str | None, owner: str | None, out_dir: str | None,
    p12: bool, p12_legacy: bool, force: bool, as_json: bool,
) -> None:
    from mcp_pki.durations import parse_lifetime
    from mcp_pki.errors import InvalidInput
    from mcp_pki.pki.csr import load_csr
    from mcp_pki.pki.keys import KeyType, parse_key_type
    from mcp_pki.pki.names import validate_name
    from mcp_pki.pki.profiles import CertificateKind
    from mcp_pki.services.issuance import LeafRequest, OutputRequest, issue_leaf

    validate_name(name)
    if owner is not None:
        validate_name(owner)
    if csr_file and key_type:
        raise InvalidInput("--key-type cannot be used with --csr: the requester chose the key")
    csr = load_csr(read_file(csr_file, "CSR")) if csr_file else None
    if p12_legacy and not p12:
        raise InvalidInput("--p12-legacy needs --p12")
    if p12 and csr_file:
        raise InvalidInput("--p12 needs the private key, which stays with the requester when --csr is used")
    request = LeafRequest(
        kind=CertificateKind(kind), name=name, sans=sans, roles=roles, owner=owner,
        validity=parse_lifetime(validity, what="--validity"),
        key_type=parse_key_type(key_type) if key_type else KeyType.P256, csr=csr,
    )
    p12_passphrase = None
    if p12 and csr is None:
        p12_passphrase = read_secret(
            file=None, env=P12_PASSPHRASE_ENV, prompt="tls.p12 passphrase", confirm=True, what="tls.p12",
            hint=f"set {P12_PASSPHRASE_ENV} or run on a terminal",
        )
    output = OutputRequest(
        folder=Path(out_dir) if out_dir else Path.cwd() / name, force=force,
        p12_passphrase=p12_passphrase, p12_legacy=p12_legacy,
    )
    issued = issue_leaf(settings.home(), request, output, passphrase=settings.ca_passphrase, now=now())
    for message in issued.warnings:
        warn(message)
    leaf = issued.facts
    if as_json:
        emit_json({
            "serial": leaf.serial, "name": issued.name, "kind": issued.kind.value, "owner": issued.owner,
            "subject": leaf.subject, "sans": list(leaf.sans), "roles": list(leaf.roles),
            "not_before": iso_utc(leaf.not_before), "not_after": iso_utc(leaf.not_after),
            "sha256_fingerprint": leaf.sha256_fingerprint, "files": [str(p) for p in issued.files],
        })
        return
    click.echo(f"issued {issued.kind.value} certificate {leaf.serial}")
    click.echo(f"  subject  {shown(leaf.subject)}")
    if leaf.sans:
        click.echo(f"  names    {shown_all(leaf.sans)}")
    click.echo(f"  valid    until {leaf.not_after:%Y-%m-%d %H:%M} UTC")
    for path in issued.files:
        click.echo(f"  wrote    {path}")
