"""``mcp-pki revoke``, ``offboard`` and ``crl``."""

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mcp_pki.cli.common import Settings, emit_json, now, pass_settings
from mcp_pki.cli.terminal import shown
from mcp_pki.timestamps import iso_utc

if TYPE_CHECKING:
    from mcp_pki.services.revocation import RevocationResult

# Kept in step with mcp_pki.pki.crl.RevocationReason by a test (no cryptography import here).
REASONS = (
    "key-compromise", "ca-compromise", "affiliation-changed", "superseded",
    "cessation-of-operation", "privilege-withdrawn",
)
REASON_HELP = "RFC 5280 reason: " + ", ".join(REASONS) + " [default: unspecified]."


@click.command()
@click.argument("ref")
@click.option("--reason", metavar="REASON", help=REASON_HELP)
@click.option("--invalidity-date", metavar="DATE", help="When the key was known or suspected compromised (ISO 8601, UTC).")
@click.option("--all", "all_of_name", is_flag=True, help="Revoke every valid certificate of the NAME.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_settings
def revoke(
    settings: Settings, ref: str, reason: str | None, invalidity_date: str | None, all_of_name: bool, as_json: bool,
) -> None:
    """Revoke a certificate and republish the CRLs.

    REF is a serial or a NAME. A NAME with several valid certificates (after a renewal
    without --revoke-old) is an error listing them: give a serial, or --all to revoke
    them all. Servers that load <home>/crl.pem reject the certificate once they reload it.

    \b
    Examples:
      mcp-pki revoke alice --reason key-compromise
      mcp-pki revoke alice --all --reason key-compromise
    """
    from mcp_pki.pki.crl import parse_reason
    from mcp_pki.services.revocation import revoke_certificate

    result = revoke_certificate(
        settings.home(), ref, reason=parse_reason(reason), invalidity_date=_parse_date(invalidity_date),
        passphrase=settings.ca_passphrase, now=now(), all_of_name=all_of_name,
    )
    _report(result, as_json)


@click.command()
@click.argument("name")
@click.option("--reason", metavar="REASON", default="affiliation-changed", show_default=True,
              help="RFC 5280 reason: " + ", ".join(REASONS) + ".")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_settings
def offboard(settings: Settings, name: str, reason: str, as_json: bool) -> None:
    """Revoke every valid certificate NAME holds (renewals included) and republish the CRLs.

    \b
    Example: mcp-pki offboard alice
    """
    from mcp_pki.pki.crl import parse_reason
    from mcp_pki.services.revocation import offboard as revoke_all

    result = revoke_all(settings.home(), name, reason=parse_reason(reason), passphrase=settings.ca_passphrase, now=now())
    _report(result, as_json)


@click.command()
@click.option("--next-update", metavar="DUR", help="How long the CRLs stay current [default: config crl.next_update, else 7d].")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Also write the PEM bundle here.")
@click.option("--der", "der_dir", type=click.Path(file_okay=False), help="Also write one DER file per CA into this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print numbers, update times and paths as JSON.")
@pass_settings
def crl(settings: Settings, next_update: str | None, out_file: str | None, der_dir: str | None, as_json: bool) -> None:
    """Republish every CA's CRL (new CRL number) into <home>/crl.pem.

    CRLs expire (7 days by default) and servers then reject every client: run this
    regularly, e.g. daily from cron. `mcp-pki status` warns when half the time is gone.
    """
    from mcp_pki.durations import parse_lifetime
    from mcp_pki.services.revocation import republish

    result = republish(
        settings.home(), passphrase=settings.ca_passphrase, now=now(),
        validity=None if next_update is None else parse_lifetime(next_update, what="--next-update"),
        copy_to=Path(out_file) if out_file else None, der_folder=Path(der_dir) if der_dir else None,
    )
    _report(result, as_json)


def _report(result: "RevocationResult", as_json: bool) -> None:
    if as_json:
        emit_json({
            "revoked": [
                {"serial": r.serial, "name": r.name, "kind": r.kind, "revoked_at": iso_utc(r.revoked_at),
                 "reason": r.reason.value if r.reason else "unspecified"}
                for r in result.revoked
            ],
            "crls": [
                {"ca": c.subject, "role": c.role, "number": c.number, "this_update": iso_utc(c.this_update),
                 "next_update": iso_utc(c.next_update), "entries": c.entries}
                for c in result.crls
            ],
            "files": [str(p) for p in result.files],
        })
        return
    for r in result.revoked:
        reason = r.reason.value if r.reason else "unspecified"
        click.echo(f"revoked {r.kind} {shown(r.name)} {shown(r.serial)} ({reason})")
    for c in result.crls:
        click.echo(f"CRL #{c.number} of {shown(c.subject)}: {c.entries} entries, next update {c.next_update:%Y-%m-%d %H:%M} UTC")
    for path in result.files:
        click.echo(f"wrote {path}")


def _parse_date(text: str | None) -> datetime | None:
    if text is None:
        return None
    from mcp_pki.errors import InvalidInput

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"invalid date {text!r}: use ISO 8601, e.g. 2026-11-20T09:00:00Z") from None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
