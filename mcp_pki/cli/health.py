"""``mcp-pki status`` and ``verify``."""

import sys

import click

from mcp_pki.cli.common import (
    Settings,
    emit_json,
    now,
    parse_duration_option,
    pass_settings,
    read_file,
    settings_of,
)
from mcp_pki.cli.terminal import shown, shown_all
from mcp_pki.timestamps import iso_utc

_LEVEL_COLOURS = {"ok": "green", "warning": "yellow", "critical": "red"}


@click.command()
@click.option("--warn-within", metavar="DUR", default="30d", show_default=True, help="Warn about expiry within DUR.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def status(ctx: click.Context, warn_within: str, as_json: bool) -> None:
    """Health of the CA: CA and CRL expiry, certificates expiring soon, counts.

    \b
    Exit codes, for cron jobs and monitoring checks:
      0  ok
      1  warning: a certificate expires within --warn-within, or a CRL has
         less than half of its validity left
      2  critical: a CA or CRL has expired, or a CA expires within --warn-within
    """
    from mcp_pki.services.health import check_health
    from mcp_pki.services.home import open_existing

    settings = settings_of(ctx)
    home = settings.home()
    engine = open_existing(home)
    try:
        report = check_health(engine, now=now(), warn_within=parse_duration_option(warn_within), crl_file=home.crl_file)
    finally:
        engine.dispose()
    if as_json:
        emit_json({
            "status": report.level.name.lower(),
            "findings": [{"level": f.level.name.lower(), "message": f.message} for f in report.findings],
            "counts": report.counts,
            "authorities": [
                {"role": a.role, "subject": a.subject, "not_after": iso_utc(a.not_after), "crl_number": a.crl_number,
                 "crl_next_update": iso_utc(a.crl_next_update) if a.crl_next_update else None}
                for a in report.authorities
            ],
            "expiring": [c.as_json() for c in report.expiring],
        })
    else:
        colour = sys.stdout.isatty()  # escape codes only on a terminal, never in a log or pipe

        def level(name: str) -> str:
            return click.style(name, fg=_LEVEL_COLOURS.get(name.lower())) if colour else name

        click.echo(f"{'home':8} {shown(str(home.path.absolute()))}")
        for a in report.authorities:
            crl = f"CRL #{a.crl_number} until {a.crl_next_update:%Y-%m-%d %H:%M}" if a.crl_next_update else "no CRL"
            click.echo(f"{a.role:8} {shown(a.subject)}: until {a.not_after:%Y-%m-%d}, {crl}")
        click.echo("certificates: " + ", ".join(f"{n} {s}" for s, n in report.counts.items()))
        # One write for what may be ten thousand expiring certificates.
        click.echo("".join(f"{level(f.level.name)}: {shown(f.message)}\n" for f in report.findings), nl=False)
        click.echo(f"status: {level(report.level.name.lower())}")
    ctx.exit(int(report.level))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@pass_settings
def verify(settings: Settings, file: str, as_json: bool) -> None:
    """Check a certificate file against this inventory's CAs and current CRLs.

    Exit 0 when a server trusting our root and loading crl.pem would accept it;
    exit 1 with the reason (revoked, expired, unknown issuer, ...) otherwise.
    """
    from mcp_pki.services.home import open_existing
    from mcp_pki.services.verification import VerificationFailed, verify_certificate

    data = read_file(file, "certificate file")
    engine = open_existing(settings.home())
    try:
        verdict = verify_certificate(engine, data, now=now())
    except VerificationFailed as exc:
        raise VerificationFailed(f"{file}: {exc}") from None
    finally:
        engine.dispose()
    leaf = verdict.leaf
    if as_json:
        emit_json({"ok": True, "serial": leaf.serial, "subject": leaf.subject, "not_after": iso_utc(leaf.not_after),
                   "chain": verdict.chain, "crl_numbers": verdict.crl_numbers})
        return
    # The file is anyone's: its subject is shown, never obeyed, by the terminal.
    click.echo(f"OK: {shown(leaf.subject)} ({leaf.serial}) valid until {leaf.not_after:%Y-%m-%d %H:%M} UTC, "
               f"not revoked; chain: {shown_all(verdict.chain, ' <- ')}")
