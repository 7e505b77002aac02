"""``mcp-pki renew``."""

import sys
from pathlib import Path
from typing import Any

import click

from mcp_pki.cli.ca import KEY_TYPES
from mcp_pki.cli.common import (
    Settings,
    emit_json,
    first_few,
    now,
    parse_duration_option,
    pass_settings,
    read_file,
    warn,
)
from mcp_pki.cli.terminal import shown
from mcp_pki.timestamps import iso_utc


@click.command()
@click.argument("ref", required=False)
@click.option("--expiring-within", metavar="DUR", help="Renew every valid certificate expiring within DUR (instead of REF).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output folder for REF [default: the folder its files were written to, else ./NAME].")
@click.option("--out-root", type=click.Path(file_okay=False), help="With --expiring-within: write each into OUT_ROOT/NAME [default: .].")
@click.option("--validity", metavar="DUR", help="Lifetime [default: that of the certificate renewed].")
@click.option("--key-type", type=click.Choice(KEY_TYPES), help="Key to generate [default: the old key's type].")
@click.option("--csr", "csr_file", type=click.Path(dir_okay=False), help="Use this CSR's key instead of a new one.")
@click.option("--revoke-old", is_flag=True, help="Revoke the renewed certificate as superseded (and republish the CRLs).")
@click.option("--allow-expired", is_flag=True, help="Renew a certificate that has already expired.")
@click.option("--force", is_flag=True,
              help="Replace existing output files; renew REF even though a valid renewal of it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_settings
def renew(
    settings: Settings, ref: str | None, expiring_within: str | None, out_dir: str | None, out_root: str | None,
    validity: str | None, key_type: str | None, csr_file: str | None, revoke_old: bool, allow_expired: bool,
    force: bool, as_json: bool,
) -> None:
    """Renew a certificate: same name, subject, names, roles and profile; a new key.

    \b
    Examples:
      mcp-pki renew alice --revoke-old
      mcp-pki renew --expiring-within 30d --out-root /etc/mcp/certs   # e.g. from cron
    A certificate that already has a valid renewal is not renewed again. Choose a window
    shorter than the certificates' lifetime (e.g. 30d for 90-day certificates): a renewal
    that already expires within the window is renewed again on the next run.
    """
    from mcp_pki.errors import InvalidInput

    if (ref is None) == (expiring_within is None):
        raise InvalidInput("give either a REF or --expiring-within DUR")
    if expiring_within is not None:
        if out_dir or validity or key_type or csr_file or allow_expired:
            raise InvalidInput("--expiring-within takes only --out-root, --revoke-old, --force and --json")
        _renew_expiring(settings, expiring_within, out_root, revoke_old, force, as_json)
        return
    if out_root:
        raise InvalidInput("--out-root is for --expiring-within; use --out with a REF")
    assert ref is not None
    _renew_one(settings, ref, out_dir, validity, key_type, csr_file, revoke_old, allow_expired, force, as_json)


def _renew_one(
    settings: Settings, ref: str, out_dir: str | None, validity: str | None, key_type: str | None,
    csr_file: str | None, revoke_old: bool, allow_expired: bool, force: bool, as_json: bool,
) -> None:
    from mcp_pki.durations import parse_lifetime
    from mcp_pki.pki.csr import load_csr
    from mcp_pki.pki.keys import parse_key_type
    from mcp_pki.services.issuance import OutputRequest
    from mcp_pki.services.renewal import RenewOptions, renew_certificate

    csr = load_csr(read_file(csr_file, "CSR")) if csr_file else None
    options = RenewOptions(
        validity=None if validity is None else parse_lifetime(validity, what="--validity"), key_type=parse_key_type(key_type) if key_type else None,
        csr=csr, revoke_old=revoke_old, allow_expired=allow_expired, again=force,
    )
    renewal = renew_certificate(
        settings.home(), ref, options,
        lambda name: OutputRequest(Path(out_dir) if out_dir else Path.cwd() / name, force=force),
        passphrase=settings.ca_passphrase, now=now(), in_place=out_dir is None,
    )
    for message in renewal.issued.warnings:
        warn(message)
    leaf = renewal.issued.facts
    if as_json:
        emit_json(_renewal_json(renewal))
        return
    click.echo(f"renewed {renewal.old_serial} as {leaf.serial} ({renewal.issued.name}), valid until {leaf.not_after:%Y-%m-%d %H:%M} UTC")
    if revoke_old:
        click.echo(f"revoked {renewal.old_serial} as superseded")
    for path in renewal.issued.files:
        click.echo(f"  wrote    {path}")


def _renew_expiring(
    settings: Settings, expiring_within: str, out_root: str | None, revoke_old: bool, force: bool, as_json: bool,
) -> None:
    from mcp_pki.errors import PkiError
    from mcp_pki.services.apply import HELD_BY_ISSUER, HELD_BY_POLICY
    from mcp_pki.services.renewal import renew_expiring

    bar: Any = None

    def start(total: int) -> None:
        nonlocal bar
        if total and sys.stderr.isatty() and not as_json:
            bar = click.progressbar(length=total, label="renewing", file=sys.stderr)
            bar.__enter__()

    try:
        result = renew_expiring(
            settings.home(), within=parse_duration_option(expiring_within),
            out_root=Path(out_root) if out_root else Path.cwd(), force=force, revoke_old=revoke_old,
            passphrase=settings.ca_passphrase, now=now(), on_start=start,
            on_progress=lambda: bar.update(1) if bar else None,
        )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    by_issuer = sorted({name for _, name, why in result.held_back if why == HELD_BY_ISSUER})
    if by_issuer:
        warn(f"not renewed: {first_few(by_issuer)}: the issuing CA expires on {result.issuer_not_after:%Y-%m-%d}, "
             "so a renewal could not outlive them (plan the CA's replacement: mcp-pki status)")
    by_policy = sorted({name for _, name, why in result.held_back if why == HELD_BY_POLICY})
    if by_policy:
        warn(f"not renewed: {first_few(by_policy)}: the policy maximum (config.yaml policy: max_validity) would "
             "end a renewal before they expire; renew one with 'mcp-pki renew NAME' to accept that")
    if result.short_lived:
        warn(f"{', '.join(sorted(set(result.short_lived)))}: lifetime not longer than the {expiring_within} "
             "window, so each renewal is due again at once; use a shorter window")
    if as_json:
        emit_json({
            "renewed": [_renewal_json(r) for r in result.renewed],
            "failed": [{"serial": s, "name": n, "error": e} for s, n, e in result.failed],
            "not_renewed": [{"serial": s, "name": n, "reason": why} for s, n, why in result.held_back],
        })
    else:
        for renewal in result.renewed:
            click.echo(f"renewed {renewal.issued.name}: {renewal.old_serial} -> {renewal.issued.facts.serial}")
        for serial, name, error in result.failed:
            click.echo(f"FAILED  {shown(name)} {shown(serial)}: {shown(error)}", err=True)
        click.echo(f"{len(result.renewed)} renewed, {len(result.failed)} failed", err=True)
    if result.failed:
        raise PkiError(f"{len(result.failed)} of {len(result.renewed) + len(result.failed)} renewals failed")


def _renewal_json(renewal: Any) -> dict[str, object]:
    leaf = renewal.issued.facts
    return {
        "old_serial": renewal.old_serial, "serial": leaf.serial, "name": renewal.issued.name,
        "kind": renewal.issued.kind.value, "not_after": iso_utc(leaf.not_after),
        "files": [str(p) for p in renewal.issued.files],
    }
