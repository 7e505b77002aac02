"""Offboarding while a renewal or an `apply` runs: offboarding wins (issue 10, item 3).

The renewal run is this process, calling the service with a hook between certificates;
the offboarding is a separate `mcp-pki offboard` process on the same SQLite inventory, as a
teammate's departure would be handled while cron renews.
"""

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mcp_pki.services import apply as apply_module
from mcp_pki.services.apply import apply_plan, plan_roster
from mcp_pki.services.home import resolve_home
from mcp_pki.services.renewal import renew_expiring
from mcp_pki.services.roster import parse_roster
from mcp_pki.store.db import open_inventory
from tests.conftest import PASSPHRASE, VENV_BIN, Cli


def offboard_in_another_process(ca: Cli, owner: str) -> None:
    env = {**os.environ, "MCP_PKI_HOME": str(ca.home), "MCP_PKI_PASSPHRASE": PASSPHRASE}
    env.pop("MCP_PKI_DB", None)
    result = subprocess.run([str(VENV_BIN / "mcp-pki"), "offboard", owner], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def valid_of(ca: Cli, name: str) -> list[dict[str, object]]:
    return json.loads(ca.ok("list", "--name", name, "--status", "valid", "--json").stdout)  # type: ignore[no-any-return]


def test_a_renewal_run_does_not_renew_a_teammate_offboarded_meanwhile(ca: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    # One renewal per write transaction, so that the offboarding lands between the two.
    monkeypatch.setattr(apply_module, "BATCH_SIZE", 1)
    ca.ok("issue", "client", "erin", "--validity", "10d")
    ca.ok("issue", "client", "frank", "--validity", "20d")  # renewed second: expires later
    home = resolve_home(str(ca.home), None)
    calls = []

    def between_renewals() -> None:
        calls.append(1)
        if len(calls) == 1:
            offboard_in_another_process(ca, "frank")

    result = renew_expiring(
        home, within=timedelta(days=30), out_root=ca.cwd / "renewed", force=False,
        revoke_old=False, passphrase=lambda: PASSPHRASE.encode(), now=datetime.now(UTC),
        on_progress=between_renewals,
    )
    assert [r.issued.name for r in result.renewed] == ["erin"]
    assert [(name, "offboarded" in error or "revoked" in error) for _, name, error in result.failed] == [("frank", True)]
    assert valid_of(ca, "frank") == []
    assert len(valid_of(ca, "erin")) == 2
    assert not (ca.cwd / "renewed" / "frank").exists()
    ca.ok("audit", "verify")


def test_apply_does_not_reissue_a_teammate_offboarded_while_it_runs(ca: Cli, tmp_path: Path) -> None:
    """The roster still lists gina, who is offboarded after the plan was made: the plan's
    replacement of her certificate (a role changed) is not carried out."""
    ca.ok("issue", "client", "gina", "--role", "dev")
    ca.ok("issue", "client", "hal", "--role", "dev")
    roster_file = tmp_path / "team.yaml"
    roster_file.write_text(json.dumps({"clients": [{"name": "gina", "roles": ["admin"]},
                                                   {"name": "hal", "roles": ["admin"]}]}))
    roster = parse_roster(roster_file.read_bytes(), source="team.yaml", base_dir=tmp_path)
    home = resolve_home(str(ca.home), None)
    now = datetime.now(UTC)
    engine = open_inventory(home.db_url)
    try:
        plan = plan_roster(engine, roster, out_root=ca.cwd, renew_within=timedelta(days=30),
                           prune=False, crl_file=home.crl_file, now=now)
    finally:
        engine.dispose()
    assert [(s.action.value, s.name) for s in plan.steps] == [("replace", "gina"), ("replace", "hal")]
    offboard_in_another_process(ca, "gina")
    result = apply_plan(home, plan, out_root=ca.cwd, passphrase=lambda: PASSPHRASE.encode(), now=now)
    outcomes = {o.step.name: o for o in result.outcomes}
    assert outcomes["gina"].skipped and "offboarded" in outcomes["gina"].skipped
    assert outcomes["hal"].serial
    assert valid_of(ca, "gina") == []
    assert [c["roles"] for c in valid_of(ca, "hal")] == [["admin"]]
    ca.ok("audit", "verify")
