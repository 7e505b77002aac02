"""``mcp-pki init-ca``."""

import click

from mcp_pki.cli.common import Settings, emit_json, now, pass_settings, warn
from mcp_pki.timestamps import iso_utc

# Kept in step with mcp_pki.pki.keys.KeyType by a test; spelled out here so that --help
# does not import cryptography.
KEY_TYPES = ("p256", "p384", "ed25519", "rsa2048", "rsa3072", "rsa4096")


@click.command("init-ca")
@click.option("--name", default="MCP", show_default=True, help="CA name; subjects become '<name> Root CA' and '<name> Issuing CA' (a trailing 'CA' in the name is not doubled).")
@click.option("--org", help="Organisation (O) in every subject.")
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="p256", show_default=True)
@click.option("--validity", default="10y", show_default=True, help="Root lifetime; the issuing CA gets half of it.")
@click.option("--single-tier", is_flag=True, help="No issuing CA: the root signs leaves itself.")
@click.option("--permit-dns", multiple=True, metavar="SUFFIX", help="Only DNS names under SUFFIX may be issued (name constraints). Repeatable.")
@click.option("--permit-ip", multiple=True, metavar="CIDR", help="Only IP addresses in CIDR may be issued. Repeatable.")
@click.option("--permit-email", multiple=True, metavar="DOMAIN", help="Only email addresses at DOMAIN (.DOMAIN: below it; or one mailbox). Repeatable.")
@click.option("--permit-uri", multiple=True, metavar="HOST", help="Only URIs whose host is HOST (.DOMAIN: any host below it). Repeatable.")
@click.option("--no-passphrase", is_flag=True, help="Store CA keys unencrypted. Development only.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_settings
def init_ca(
    settings: Settings, name: str, org: str | None, key_type: str, validity: str, single_tier: bool,
    permit_dns: tuple[str, ...], permit_ip: tuple[str, ...], permit_email: tuple[str, ...],
    permit_uri: tuple[str, ...], no_passphrase: bool, as_json: bool,
) -> None:
    """Create the root CA and an issuing CA signed by it.

    CA keys are stored in the inventory encrypted with the passphrase (PKCS#8, AES-256).
    An existing CA is never replaced. The root certificate is written to <home>/ca.crt:
    distribute it to every server and client.

    With any --permit-* option the issuing CA carries name constraints for every name type
    (DNS, IP, email, URI): a type without its --permit-* option cannot be issued at all, and
    relying parties refuse it too. Issuance checks the same before signing.

    \b
    Examples:
      MCP_PKI_PASSPHRASE=... mcp-pki init-ca --name "Acme MCP" --org Acme
      mcp-pki init-ca --permit-dns mcp.acme.internal --key-type p384
      mcp-pki init-ca --permit-dns acme.internal --permit-ip 10.0.0.0/8 --permit-email acme.test
    """
    from mcp_pki.durations import parse_lifetime
    from mcp_pki.errors import InvalidInput
    from mcp_pki.pki.constraints import NamePolicy
    from mcp_pki.pki.keys import parse_key_type
    from mcp_pki.services.authority import CaRequest
    from mcp_pki.services.authority import init_ca as create

    # The subjects add " Root CA" and " Issuing CA": "Example MCP CA" would become
    # "Example MCP CA Root CA", so a trailing "CA" in the name is dropped first.
    common_name = name.strip()
    if common_name.upper().endswith(" CA"):
        common_name = common_name[:-3].rstrip()
    if not common_name or len(common_name) > 50 or not common_name.isprintable():
        raise InvalidInput("invalid --name: 1-50 printable characters")
    if org is not None and (not org.strip() or len(org) > 64 or not org.isprintable()):
        raise InvalidInput("invalid --org: 1-64 printable characters")
    # Validated before the passphrase is asked for.
    NamePolicy.parse(dns=permit_dns, ips=permit_ip, emails=permit_email, uris=permit_uri)
    request = CaRequest(
        common_name=common_name,
        org=org,
        key_type=parse_key_type(key_type),
        validity=parse_lifetime(validity, what="--validity"),
        single_tier=single_tier,
        permitted_dns=permit_dns,
        passphrase=None if no_passphrase else settings.new_ca_passphrase(),
        permitted_ips=permit_ip,
        permitted_emails=permit_email,
        permitted_uris=permit_uri,
    )
    if no_passphrase:
        warn("!!! CA keys will be stored UNENCRYPTED (--no-passphrase). Anyone who can read "
             "the inventory can issue certificates. Use this for development only. !!!")
    created = create(settings.home(), request, now=now())
    certificates = [("root", created.root)] + ([("issuing", created.issuing)] if created.issuing else [])
    if as_json:
        emit_json({
            "root_file": str(created.root_file),
            "authorities": [
                {"role": role, "subject": c.subject.rfc4514_string(), "serial": format(c.serial_number, "x"),
                 "not_after": iso_utc(c.not_valid_after_utc)}
                for role, c in certificates
            ],
        })
        return
    for role, certificate in certificates:
        click.echo(f"{role:8} {certificate.subject.rfc4514_string()}  (until {certificate.not_valid_after_utc:%Y-%m-%d})")
    click.echo(f"root certificate written to {created.root_file}")
