"""``mcp-pki audit`` and ``audit verify``."""

from pathlib import Path

import click

from mcp_pki.cli.common import (
    Settings,
    emit_json,
    now,
    parse_duration_option,
    pass_settings,
    settings_of,
    warn,
)
from mcp_pki.cli.terminal import shown
from mcp_pki.timestamps import iso_utc


@click.group(invoke_without_command=True)
@click.option("--since", metavar="DUR|DATE", help="Only records newer than DUR ago (e.g. 7d) or than an ISO date.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def audit(ctx: click.Context, since: str | None, as_json: bool) -> None:
    """Show the audit log of CA operations (oldest first).

    Every state-changing command adds one record, linked to the previous one by a SHA-256
    hash chain. `mcp-pki audit verify` checks the chain.
    """
    if ctx.invoked_subcommand is not None:
        return
    from mcp_pki.services.audit import list_records
    from mcp_pki.services.home import open_existing

    settings = settings_of(ctx)
    engine = open_existing(settings.home())
    try:
        records = list_records(engine, since=_since(since))
    finally:
        engine.dispose()
    if as_json:
        emit_json([
            {"seq": r.seq, "at": iso_utc(r.at), "operator": r.operator, "action": r.action,
             "target_serial": r.target_serial, "target_name": r.target_name, "outcome": r.outcome,
             "details": r.details, "hash": r.hash}
            for r in records
        ])
        return
    if records:
        click.echo(f"{'SEQ':>5}  {'AT (UTC)':20}  {'OPERATOR':12}  {'ACTION':10}  {'OUTCOME':8} TARGET")
    for r in records:
        target = " ".join(t for t in (r.target_name, r.target_serial and f"[{r.target_serial}]") if t)
        # Rows of a database others can write: shown, never obeyed, by the terminal.
        click.echo(shown(f"{r.seq:>5}  {r.at:%Y-%m-%d %H:%M:%S}Z  {r.operator:12}  {r.action:10}  {r.outcome:8} {target}"))


@audit.command()
@click.option("--file", "log_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Check a gateway's tool-call log (mcp-pki gateway --audit-log FILE) instead.")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="With --file: the root certificate its checkpoints must chain to [default: <home>/ca.crt].")
@pass_settings
def verify(settings: Settings, log_file: Path | None, ca_file: Path | None) -> None:
    """Check the audit log; exit 1 naming the first altered or missing record.

    Recomputes the hash chain, checks every checkpoint's signature by the issuing CA,
    checks that every CA, certificate, revocation and CRL number has its record, and
    cross-checks the revocations against the newest signed CRL of each CA, both ways.

    With --file, checks a gateway's tool-call log instead: its hash chain and its
    checkpoints, each signed by a gateway's server certificate that chains to our root.
    Lines after the last checkpoint are reported as an unsigned tail; a file cut just
    after a checkpoint leaves no trace, so the time of the last one is shown.
    """
    if log_file is not None:
        from mcp_pki.cli.gateway import verify_call_log

        verify_call_log(log_file, ca_file, settings.home().root_certificate_file)
        return
    if ca_file is not None:
        from mcp_pki.errors import InvalidInput

        raise InvalidInput("--ca goes with --file: the CA audit log is checked against <home>/ca.crt")
    from mcp_pki.errors import PkiError
    from mcp_pki.services.audit import verify_audit_log
    from mcp_pki.services.home import open_existing

    home = settings.home()
    engine = open_existing(home)
    try:
        root_pem = home.root_certificate_file.read_bytes() if home.root_certificate_file.is_file() else None
        verdict = verify_audit_log(engine, root_pem=root_pem, crl_file=home.crl_file)
    finally:
        engine.dispose()
    if not verdict.ok:
        raise PkiError(f"audit log broken: {verdict.problem}")
    click.echo(f"audit log intact: {verdict.operations} records, {verdict.checkpoints} signed checkpoints")
    if not verdict.checkpoints and verdict.operations:
        warn("no record is signed yet (an inventory from an older version): any signing command, "
             "e.g. 'mcp-pki crl', signs the whole log")
    elif verdict.unsigned_tail:
        click.echo(
            f"unsigned tail: {verdict.unsigned_tail} records after the last signed checkpoint, "
            f"only as safe as access to the database"
        )


def _since(text: str | None):  # type: ignore[no-untyped-def]
    if text is None:
        return None
    from datetime import UTC, datetime

    from mcp_pki.errors import InvalidInput

    try:
        return now() - parse_duration_option(text)
    except InvalidInput:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"invalid --since {text!r}: give a duration (7d) or an ISO date") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
