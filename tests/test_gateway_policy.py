"""gateway: per-role tool policy and the hash-chained tool-call audit log.

The toolbox's ``append`` tool writes to a file, so a call the policy denies is proved never
to have reached the server. The audit log is checked with ``mcp-pki audit verify --file``
as it is, and after a line is edited, removed or moved.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import Cli, assert_clean_error
from tests.gateway_support import (
    MODES,
    Gateway,
    dump,
    mtls_session,
    new_ca,
    toolbox_behind,
    wait_until,
)

REFRESH = 1.0

POLICY = """\
default: deny
roles:
  admin:   {tools: ["*"], resources: ["*"], prompts: ["*"]}
  analyst: {tools: ["query", "list_*"], resources: ["db://*"]}
clients:
  ci-bot:  {tools: ["append", "echo"]}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("policy-ca"), "Policy")
    cli.ok("issue", "client", "alice", "--role", "analyst")
    cli.ok("issue", "client", "bob", "--role", "admin")
    cli.ok("issue", "client", "ci-bot")
    cli.ok("issue", "client", "nobody")
    return cli


@pytest.fixture(scope="module", params=MODES)
def files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each mode (see `gateway`) with files of its own."""
    folder = tmp_path_factory.mktemp("policy-files")
    (folder / "policy.yaml").write_text(POLICY)
    return {"policy": folder / "policy.yaml", "audit": folder / "calls.jsonl", "effects": folder / "appended.txt",
            "mode": request.param}


@pytest.fixture(scope="module")
def gateway(pki: Cli, files: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The policy and the log hold alike in front of a stdio server and an HTTP one."""
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with toolbox_behind(files["mode"], files["effects"]) as (upstream, command), \
            Gateway(pki, "--as", "srv", "--crl-refresh", str(REFRESH), "--policy", str(files["policy"]),
                    "--audit-log", str(files["audit"]), *upstream, command=command, log=log,
                    env={"TOOLBOX_SIDE_EFFECTS": str(files["effects"])}) as running:
        yield running


def _names(listing: dict[str, Any], key: str, field: str = "name") -> set[str]:
    return {entry[field] for entry in listing[key]}


def _run(pki: Cli, who: str, gateway: Gateway, body: Any) -> Any:
    async def session() -> Any:
        with anyio.fail_after(60):
            async with mtls_session(pki, pki.cwd / who, gateway.url) as client:
                return await body(client)

    return anyio.run(session)


def _denied(error: MCPError) -> bool:
    return "not allowed" in str(error)


def test_an_analyst_sees_and_uses_only_what_the_policy_allows(pki: Cli, gateway: Gateway,
                                                               files: dict[str, Any]) -> None:
    async def analyst(client: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {
            "tools": _names(dump(await client.list_tools()), "tools"),
            "resources": _names(dump(await client.list_resources()), "resources", "uri"),
            "templates": _names(dump(await client.list_resource_templates()), "resourceTemplates", "uriTemplate"),
            "prompts": _names(dump(await client.list_prompts()), "prompts"),
            "query": dump(await client.call_tool("query", {"sql": "x"}))["content"][0]["text"],
            "read": dump(await client.read_resource("db://tables"))["contents"][0]["text"],
        }
        refusals = []
        for attempt in (client.call_tool("append", {"line": "from alice"}), client.read_resource("file://notes"),
                        client.get_prompt("summarise", {"topic": "x"})):
            try:
                await attempt
                refusals.append(False)
            except MCPError as error:
                refusals.append(_denied(error))
        seen["refusals"] = refusals
        return seen

    seen = _run(pki, "alice", gateway, analyst)
    assert seen["tools"] == {"query", "list_tables"}
    assert seen["resources"] == {"db://tables"}
    assert seen["templates"] == {"db://table/{name}"}
    assert seen["prompts"] == set()
    assert seen["query"] == "42 rows for x" and seen["read"] == "users,orders"
    assert seen["refusals"] == [True, True, True]
    assert not files["effects"].exists()  # the denied append never reached the server


def test_completions_are_allowed_as_what_they_complete(pki: Cli, gateway: Gateway) -> None:
    """completion/complete names a prompt or a resource template: the policy of that thing
    decides, so a client cannot learn through completions what it may not use."""
    from mcp_types import PromptReference, ResourceTemplateReference

    prompt = PromptReference(type="ref/prompt", name="summarise")
    template = ResourceTemplateReference(type="ref/resource", uri="db://table/{name}")

    async def complete_both(client: Any) -> list[Any]:
        answers: list[Any] = []
        for ref in (prompt, template):
            try:
                answers.append((await client.complete(ref, {"name": "topic", "value": "us"})).completion.values)
            except MCPError as error:
                answers.append("denied" if _denied(error) else str(error))
        return answers

    assert _run(pki, "alice", gateway, complete_both) == ["denied", ["us1", "us2"]]  # an analyst: no prompts
    assert _run(pki, "bob", gateway, complete_both) == [["us1", "us2"], ["us1", "us2"]]  # an admin
    assert _run(pki, "nobody", gateway, complete_both) == ["denied", "denied"]


def test_admins_see_everything_and_strangers_nothing(pki: Cli, gateway: Gateway) -> None:
    async def tools(client: Any) -> set[str]:
        return _names(dump(await client.list_tools()), "tools")

    assert {"echo", "query", "append", "shout", "pid"} <= _run(pki, "bob", gateway, tools)
    assert _run(pki, "nobody", gateway, tools) == set()  # default: deny
    assert _run(pki, "ci-bot", gateway, tools) == {"append", "echo"}  # by name


def test_a_policy_edit_takes_effect_without_restart(pki: Cli, gateway: Gateway, files: dict[str, Any]) -> None:
    policy = files["policy"]
    try:
        policy.write_text(POLICY.replace('tools: ["query", "list_*"]', 'tools: ["query", "list_*", "append"]'))
        wait_until(lambda: "reloaded the policy" in gateway.stderr(), "the policy reload", timeout=5 * REFRESH)

        async def append(client: Any) -> str:
            return str(dump(await client.call_tool("append", {"line": "allowed now"}))["content"][0]["text"])

        assert _run(pki, "alice", gateway, append) == "appended"
        assert files["effects"].read_text() == "allowed now\n"
        # A broken edit keeps the policy in force and says why.
        policy.write_text("default: maybe\n")
        wait_until(lambda: "keeping the previous policy" in gateway.stderr(), "the refusal", timeout=5 * REFRESH)
        assert "default must be allow or deny" in gateway.stderr()
        assert _run(pki, "alice", gateway, append) == "appended"
    finally:
        policy.write_text(POLICY)
        time.sleep(2 * REFRESH)


def test_every_request_has_its_chained_line_and_tampering_is_named(
    pki: Cli, gateway: Gateway, files: dict[str, Any], tmp_path: Path,
) -> None:
    log = files["audit"]
    before = len(log.read_text().splitlines()) if log.exists() else 0

    async def calls(client: Any) -> None:
        await client.list_tools()
        await client.call_tool("query", {"sql": "secret-value"})
        try:
            await client.call_tool("append", {"line": "no"})
        except MCPError:
            pass

    _run(pki, "alice", gateway, calls)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [r for r in lines[before:] if "checkpoint" not in r]  # the gateway's signed checkpoints aside
    assert [(r["method"], r["target"], r["decision"], r["outcome"]) for r in mine] == [
        ("initialize", None, "allowed", "ok"),
        ("tools/list", None, "allowed", "ok"),
        ("tools/call", "query", "allowed", "ok"),
        ("tools/call", "append", "denied", "error"),
    ]
    assert all(r["name"] == "alice" and r["roles"] == ["analyst"] and r["session"] == mine[0]["session"] for r in mine)
    assert all(isinstance(r["duration_ms"], float | int) and len(r["serial"]) >= 16 for r in mine)
    assert "secret-value" not in log.read_text()  # only the arguments' SHA-256
    assert mine[2]["arguments_sha256"] and len(mine[2]["arguments_sha256"]) == 64

    intact = pki("audit", "verify", "--file", str(log))
    assert intact.exit_code == 0 and f"tool-call log intact: {len(lines)} lines" in intact.stdout, intact

    original = log.read_text().splitlines(keepends=True)
    edited = [*original]
    at = next(i for i, line in enumerate(original) if i >= 2 and '"allowed"' in line)  # a call, not a checkpoint
    edited[at] = edited[at].replace('"allowed"', '"denied"', 1)
    removed = original[:1] + original[2:]
    moved = [original[0], original[2], original[1], *original[3:]]
    for name, content, expected in (("edited", edited, f"line {at + 1} (seq {at + 1}) was altered"),
                                    ("removed", removed, "line 2 (seq 3): seq 2 was expected"),
                                    ("moved", moved, "line 2 (seq 3): seq 2 was expected")):
        copy = tmp_path / f"{name}.jsonl"
        copy.write_text("".join(content))
        assert_clean_error(pki("audit", "verify", "--file", str(copy)), expected)


def test_a_restarted_gateway_continues_the_chain(pki: Cli, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    for run in range(2):
        with Gateway(pki, "--as", "srv", "--audit-log", str(log), log=tmp_path / f"gateway{run}.log") as gateway:
            async def one(client: Any) -> None:
                await client.list_tools()

            _run(pki, "bob", gateway, one)
            assert gateway.stop() == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert len([r for r in records if "checkpoint" not in r]) == 4
    assert pki("audit", "verify", "--file", str(log)).exit_code == 0
    # A log whose last line is not ours is not continued blindly.
    log.write_text(log.read_text() + '{"not": "ours"}\n')
    result = pki("gateway", "--as", "srv", "--audit-log", str(log), "--", "true")
    assert_clean_error(result, "is not an intact gateway record")
