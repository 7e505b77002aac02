"""``mcp-pki apply ROSTER``: the team as a YAML roster."""

import sys
from pathlib import Path
from typing import Any

import click

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
from mcp_pki.errors import PkiError

# Below this much work a progress bar is noise.
_PROGRESS_FROM = 20
_DONE = {"issue": "issued", "replace": "replaced", "renew": "renewed", "revoke": "revoked"}


@click.command()
@click.argument("roster_file", metavar="ROSTER", type=click.Path(dir_okay=False))
@click.option("--out-root", type=click.Path(file_okay=False), help="Write each certificate into OUT_ROOT/NAME [default: .].")
@click.option("--renew-within", metavar="DUR", default="30d", show_default=True,
              help="Renew certificates that expire within DUR.")
@click.option("--prune", is_flag=True, help="Revoke valid certificates whose name the roster no longer lists.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document: the actions, names and serials.")
@pass_settings
def apply(
    settings: Settings, roster_file: str, out_root: str | None, renew_within: str, prune: bool, dry_run: bool,
    as_json: bool,
) -> None:
    """Make the CA match the roster ROSTER (YAML): issue, replace, renew, and with --prune revoke.

    \b
    defaults: {validity: 90d, key_type: p256}
    servers:
      - {name: mcp-files, dns: [mcp-files.internal], ip: [10.0.0.5]}
    clients:
      - {name: alice, email: [alice@example.com], roles: [admin]}
      - {name: bob, roles: [analyst], csr: bob.csr}   # bob keeps his own key
    \b
    A certificate whose names, roles, owner or key type differ from the roster is
    replaced and the old one revoked as superseded. The whole roster is checked before
    anything is signed; every problem is reported. Running it again changes nothing.
    Examples:
      mcp-pki apply team.yaml --dry-run
      mcp-pki apply team.yaml --out-root /srv/mcp-certs --prune
    """
    from mcp_pki.services.apply import apply_plan, plan_roster
    from mcp_pki.services.files import MAX_ROSTER
    from mcp_pki.services.roster import read_roster
    from mcp_pki.store.db import open_inventory

    path = Path(roster_file)
    roster = read_roster(read_file(roster_file, "roster", limit=MAX_ROSTER), source=str(path), base_dir=path.parent)
    within = parse_duration_option(renew_within)
    root = Path(out_root).absolute() if out_root else Path.cwd()
    home = settings.home()
    longest = home.policy().max_validity
    engine = open_inventory(home.db_url)
    try:
        plan = plan_roster(
            engine, roster, out_root=root, renew_within=within, prune=prune, crl_file=home.crl_file, now=now(),
            max_validity=longest,
        )
    finally:
        engine.dispose()
    for held in plan.not_in_roster:
        warn(f"{held.kind.value} {held.name} ({held.serial}) is not in the roster: --prune revokes it")
    if plan.held_back:
        warn(f"not renewed: {first_few(h.name for h in plan.held_back)}: the issuing CA expires on "
             f"{plan.issuer_not_after:%Y-%m-%d}, so a renewal could not outlive them "
             "(plan the CA's replacement: mcp-pki status)")
    capped = [s.name for s in plan.steps if s.entry is not None and s.entry.validity > longest]
    if capped:
        # As `issue` says when it shortens a validity; a roster may ask for many at once.
        warn(f"validity shortened to the policy maximum ({longest.days}d) for {first_few(capped)}")
    if dry_run or plan.nothing_to_do:
        _print_plan(plan, as_json, dry_run)
        return
    bar: Any = None
    work = len(plan.steps)
    if work > _PROGRESS_FROM and sys.stderr.isatty() and not as_json:
        bar = click.progressbar(length=work, label="applying", file=sys.stderr)
        bar.__enter__()

    printing = not as_json
    finished: list[Any] = []

    def done(outcome: Any) -> None:
        nonlocal printing
        finished.append(outcome)
        if bar is not None:
            bar.update(1)
        if printing:
            try:
                click.echo(_outcome_line(outcome))
            except BrokenPipeError:  # the reader went away (| head): the run still completes
                printing = False

    try:
        try:
            result = apply_plan(home, plan, out_root=root, passphrase=settings.ca_passphrase, now=now(), on_done=done)
        finally:
            if bar is not None:  # before any warning, which would land inside the bar
                bar.__exit__(None, None, None)
    except Exception as exc:
        signed = sum(1 for o in finished if o.serial)
        if as_json and finished:
            # Certificates were signed before the run stopped: a script must still learn which.
            emit_json({
                "dry_run": False, "complete": False, "error": _reason(exc), "totals": _totals(plan),
                "actions": [_outcome_json(o) for o in finished],
                "not_in_roster": [_held_json(h) for h in plan.not_in_roster],
                "not_renewed": [_held_json(h) for h in plan.held_back],
            })
        if signed:
            # The error line follows (the command group prints it); what was done is kept.
            warn(f"{signed} certificates were signed and recorded before the run stopped; "
                 "run apply again to complete the rest")
        raise
    skipped = [o for o in result.outcomes if o.skipped]
    for outcome in skipped:
        warn(f"{outcome.step.action.value} {outcome.step.kind.value} {outcome.step.name} not done: {outcome.skipped}")
    if as_json:
        emit_json({
            "dry_run": False, "complete": True, "totals": _totals(plan),
            "actions": [_outcome_json(o) for o in result.outcomes],
            "not_in_roster": [_held_json(h) for h in plan.not_in_roster],
            "not_renewed": [_held_json(h) for h in plan.held_back],
            "crl_numbers": result.crl_numbers,
        })
        return
    click.echo(_summary(plan, done=True), err=True)


def _reason(exc: Exception) -> str:
    """What stopped a run, as its one error line will say it."""
    if isinstance(exc, PkiError):
        return str(exc)
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def _print_plan(plan: Any, as_json: bool, dry_run: bool) -> None:
    if as_json:
        document = {
            "dry_run": dry_run, "totals": _totals(plan),
            "actions": [_step_json(s) for s in plan.steps],
            "not_in_roster": [_held_json(h) for h in plan.not_in_roster],
            "not_renewed": [_held_json(h) for h in plan.held_back],
            "republish_crls": plan.republish,
        }
        if not dry_run:  # nothing to do: as complete as a run that did something
            document["complete"] = True
        emit_json(document)
        return
    if plan.nothing_to_do:
        click.echo(f"nothing to do ({plan.unchanged} unchanged)", err=True)
        return
    for step in plan.steps:
        click.echo(_step_line(step))
    if plan.republish:
        click.echo("publish CRLs (crl.pem is older than the inventory)")
    click.echo(_summary(plan, done=False), err=True)


def _totals(plan: Any) -> dict[str, int]:
    from mcp_pki.services.apply import Action

    return {
        "issue": plan.count(Action.ISSUE), "replace": plan.count(Action.REPLACE), "renew": plan.count(Action.RENEW),
        "revoke": plan.count(Action.REVOKE), "unchanged": plan.unchanged, "not_in_roster": len(plan.not_in_roster),
    }


def _summary(plan: Any, *, done: bool) -> str:
    totals = _totals(plan)
    if done:
        words = [("issued", "issue"), ("replaced", "replace"), ("renewed", "renew"), ("revoked", "revoke")]
        return ", ".join(f"{totals[key]} {word}" for word, key in words) + f", {plan.unchanged} unchanged"
    return (
        f"{totals['issue']} to issue, {totals['replace']} to replace, {totals['renew']} to renew, "
        f"{totals['revoke']} to revoke, {plan.unchanged} unchanged"
    )


def _step_line(step: Any) -> str:
    old = ", ".join(h.serial for h in (*((step.renews,) if step.renews else ()), *step.revokes))
    reason = f" as {step.reason.value}" if step.revokes and step.reason else ""
    return f"{step.action.value:8} {step.kind.value:6} {step.name}: {step.why}" + (
        f" ({old}{reason})" if old else ""
    )


def _outcome_line(outcome: Any) -> str:
    step = outcome.step
    if outcome.skipped:
        return f"skipped  {step.kind.value:6} {step.name}: {outcome.skipped}"
    if outcome.serial:
        old = [h.serial for h in ((step.renews,) if step.renews else step.revokes)]
        arrow = f"{', '.join(old)} -> " if old else ""
        missing = f" (files not written: {outcome.files_error})" if outcome.files_error else ""
        return f"{_DONE[step.action.value]:8} {step.kind.value:6} {step.name}: {arrow}{outcome.serial}{missing}"
    return f"revoked  {step.kind.value:6} {step.name}: {', '.join(outcome.revoked)} ({step.why})"


def _held_json(held: Any) -> dict[str, object]:
    return {"serial": held.serial, "kind": held.kind.value, "name": held.name}


def _step_json(step: Any) -> dict[str, object]:
    return {
        "action": step.action.value, "kind": step.kind.value, "name": step.name, "why": step.why,
        "renews": step.renews.serial if step.renews else None,
        "revokes": [h.serial for h in step.revokes],
        "reason": step.reason.value if step.revokes and step.reason else None,
    }


def _outcome_json(outcome: Any) -> dict[str, object]:
    document = _step_json(outcome.step)
    document.update({"serial": outcome.serial, "skipped": outcome.skipped, "files": [str(p) for p in outcome.files]})
    if outcome.files_error:
        document["files_error"] = outcome.files_error
    if outcome.revoked:
        document["revokes"] = list(outcome.revoked)
    return document
