"""gateway: the tool-call log's signed checkpoints, and what `audit verify --file` proves.

The hash chain names an edited, removed or moved line; the checkpoints, signed with the
gateway's own server key, make a rewrite of the whole chain and a cut into signed lines
show. Most tests drive `CallLog` directly with a real key issued by a real CA (fast); one
runs real gateway processes over mutual TLS. What the file alone cannot show, a cut exactly
at a checkpoint, is written down here as a test too, so that nobody believes otherwise.
"""

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mcp_pki.errors import InvalidInput
from mcp_pki.gateway.calllog import CHECKPOINT_DELAY, CHECKPOINT_EVERY, CallLog, line_hash
from mcp_pki.gateway.checkpoints import CheckpointSigner
from mcp_pki.pki.bundles import load_private_key
from tests.conftest import Cli, assert_clean_error
from tests.gateway_support import Gateway, free_port, mtls_session, new_ca, wait_until

SIGNED_AT = datetime(2026, 12, 2, 7, 1, 2, tzinfo=UTC)


def fixed_clock() -> datetime:
    return SIGNED_AT


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = new_ca(tmp_path_factory.mktemp("calllog-ca"), "Calls")
    cli.ok("issue", "client", "alice", "--role", "analyst")
    return cli


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return new_ca(tmp_path_factory.mktemp("other-ca"), "Other")


def signer_of(folder: Path) -> CheckpointSigner:
    chain = x509.load_pem_x509_certificates((folder / "tls.crt").read_bytes())
    return CheckpointSigner(load_private_key((folder / "tls.key").read_bytes()), tuple(chain))


def call(n: int) -> dict[str, Any]:
    return {"time": "2026-12-02T07:00:00Z", "serial": "ab" * 8, "name": "alice", "roles": ["analyst"],
            "session": "s1", "method": "tools/call", "target": "query", "arguments_sha256": f"{n:064x}",
            "decision": "allowed", "outcome": "ok", "duration_ms": 1.5}


def write_log(path: Path, signer: CheckpointSigner | None, lines: int) -> None:
    """`lines` calls by one process that stops cleanly (with a signer: a final checkpoint)."""
    log = CallLog(path, signer, fixed_clock if signer else None)
    for n in range(lines):
        log.write(call(n))
    log.close()


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def save(path: Path, rows: list[dict[str, Any]], *, rechain: bool = False) -> Path:
    """Write `rows` back; with `rechain`, as a forger without the key would: every seq,
    prev and hash recomputed from line 1."""
    if rechain:
        prev = "0" * 64
        for seq, row in enumerate(rows, start=1):
            row.update(seq=seq, prev=prev)
            row.pop("hash", None)
            row["hash"] = prev = line_hash(row)
    path.write_text("".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows))
    return path


def verify(pki: Cli, path: Path, *extra: str) -> Any:
    return pki("audit", "verify", "--file", str(path), *extra)


def test_a_busy_log_is_signed_every_n_lines_and_at_close(pki: Cli, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    write_log(path, signer_of(pki.cwd / "srv"), CHECKPOINT_EVERY + 10)
    rows = records(path)
    marks = [row["seq"] for row in rows if "checkpoint" in row]
    assert marks == [CHECKPOINT_EVERY + 1, len(rows)]  # after N lines, and the last line at close
    first, last = (rows[seq - 1]["checkpoint"] for seq in marks)
    assert first["signed_seq"] == CHECKPOINT_EVERY and first["signed_hash"] == rows[CHECKPOINT_EVERY - 1]["hash"]
    # The process's first checkpoint carries the chain; later ones only name it.
    assert len(first["certificates"]) == 2 and "certificates" not in last
    assert first["signer"] == last["signer"] == signer_of(pki.cwd / "srv").fingerprint

    result = verify(pki, path)
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"tool-call log intact: {len(rows)} lines, 2 signed checkpoints "
                             "(last signed 2026-12-02T07:01:02Z)\n")


def test_a_quiet_log_is_signed_within_a_second_while_the_gateway_runs(pki: Cli, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    log = CallLog(path, signer_of(pki.cwd / "srv"), fixed_clock)

    async def one_call_then_wait() -> None:
        await log.append(call(1))
        assert len(records(path)) == 1  # durable before it returns; not signed per line
        with anyio.fail_after(CHECKPOINT_DELAY + 5):
            while len(records(path)) < 2:
                await anyio.sleep(0.02)
        await log.append(call(2))  # the next unsigned line arms the timer again
        with anyio.fail_after(CHECKPOINT_DELAY + 5):
            while len(records(path)) < 4:
                await anyio.sleep(0.02)

    anyio.run(one_call_then_wait)
    assert ["checkpoint" in row for row in records(path)] == [False, True, False, True]
    log.close()  # nothing left unsigned: no extra checkpoint
    assert len(records(path)) == 4
    assert verify(pki, path).stdout.startswith("tool-call log intact: 4 lines, 2 signed checkpoints")


def test_cuts_and_their_limits(pki: Cli, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    write_log(path, signer_of(pki.cwd / "srv"), 3)  # 3 calls, checkpoint 4
    write_log(path, None, 3)  # a process that died before signing: 3 unsigned lines
    rows = records(path)
    assert len(rows) == 7 and "checkpoint" in rows[3]

    tail = verify(pki, path)
    assert tail.exit_code == 0, tail.output
    assert "unsigned tail: 3 lines after the last signed checkpoint, only as safe as access to the file" in tail.stdout
    # A cut in the unsigned tail is only that: fewer unsigned lines.
    assert "unsigned tail: 1 lines" in verify(pki, save(tmp_path / "tail.jsonl", rows[:5])).stdout
    # A cut exactly after a checkpoint leaves a file that proves nothing was cut: the limit
    # of any log that signs itself. The time of the last signature is what an operator sees.
    at_mark = verify(pki, save(tmp_path / "mark.jsonl", rows[:4]))
    assert at_mark.exit_code == 0 and at_mark.stdout == (
        "tool-call log intact: 4 lines, 1 signed checkpoints (last signed 2026-12-02T07:01:02Z)\n")
    # A cut into signed lines removes their checkpoint: nothing is signed any more.
    assert_clean_error(verify(pki, save(tmp_path / "cut.jsonl", rows[:3])),
                       "tool-call log not signed: none of its 3 line(s) is vouched for")


def test_a_log_rewritten_from_line_1_without_the_key_fails(pki: Cli, other: Cli, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    write_log(path, signer_of(pki.cwd / "srv"), 5)  # calls 1-5, checkpoint 6
    assert verify(pki, path).exit_code == 0

    forged = records(path)
    forged[1]["decision"] = "denied"
    assert_clean_error(verify(pki, save(tmp_path / "kept.jsonl", forged, rechain=True)),
                       "line 6 (seq 6), a checkpoint, vouches for a line that is not the one before it (seq 5)")
    forged[5]["checkpoint"]["signed_hash"] = forged[4]["hash"]
    assert_clean_error(verify(pki, save(tmp_path / "resigned.jsonl", forged, rechain=True)),
                       "line 6 (seq 6), a checkpoint, has an invalid signature: lines up to seq 5 were rewritten")
    # Dropping the checkpoints instead leaves a log with nothing signed.
    assert_clean_error(verify(pki, save(tmp_path / "dropped.jsonl", forged[:5], rechain=True)),
                       "tool-call log not signed")
    # A forger's own key, certified by another CA, does not chain to ours; --ca names the
    # root to check against on a machine without the home.
    theirs = records(save(tmp_path / "theirs.jsonl", forged[:5], rechain=True))
    theirs.append(signer_of(other.cwd / "srv").fields(5, theirs[4]["hash"], "2026-12-02T07:01:02Z",
                                                      with_certificates=True))
    resigned = save(tmp_path / "theirs.jsonl", theirs, rechain=True)
    assert_clean_error(verify(pki, resigned), "line 6 (seq 6), a checkpoint, is signed by srv (serial")
    assert_clean_error(verify(pki, resigned), "whose certificate does not chain to our CA")
    assert verify(pki, resigned, "--ca", str(other.home / "ca.crt")).exit_code == 0
    assert_clean_error(verify(pki, path, "--ca", str(other.home / "ca.crt")), "does not chain to our CA")


def test_only_a_server_certificate_of_ours_may_sign(pki: Cli, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    write_log(path, signer_of(pki.cwd / "alice"), 2)  # a client certificate of our CA
    assert_clean_error(verify(pki, path), "line 3 (seq 3), a checkpoint, is signed by alice (serial")
    assert_clean_error(verify(pki, path), "which is not a server certificate")


def test_a_checkpoint_must_carry_or_follow_its_certificate(pki: Cli, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    write_log(path, signer_of(pki.cwd / "srv"), 2)
    rows = records(path)
    del rows[2]["checkpoint"]["certificates"]
    assert_clean_error(verify(pki, save(tmp_path / "bare.jsonl", rows, rechain=True)),
                       "line 3 (seq 3), a checkpoint, names a signer whose certificate no earlier checkpoint carries")
    rows[2]["checkpoint"] = "signed"
    assert_clean_error(verify(pki, save(tmp_path / "odd.jsonl", rows, rechain=True)),
                       "line 3 (seq 3), a checkpoint, is malformed")


def test_a_restarted_log_vouches_for_the_chain_it_continues(pki: Cli, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    srv = signer_of(pki.cwd / "srv")
    write_log(path, srv, 2)  # calls 1-2, checkpoint 3
    write_log(path, None, 2)  # calls 4-5 by a gateway that stopped before signing them
    log = CallLog(path, srv, fixed_clock)
    assert log.unsigned_at_start == 2  # what the start-up line warns about
    log.write(call(6))
    log.close()
    rows = records(path)
    assert ["checkpoint" in row for row in rows] == [False, False, True, False, False, True, False, True]
    restart = rows[5]["checkpoint"]
    assert restart["signed_seq"] == 5 and "certificates" in restart  # each process names its signer in full
    assert verify(pki, path).stdout.startswith("tool-call log intact: 8 lines, 3 signed checkpoints")


def test_a_gateway_does_not_vouch_for_a_log_it_cannot_trust(pki: Cli, tmp_path: Path) -> None:
    """A log rewritten without checkpoints while the gateway was down, or one of an older
    version, is not continued: the start-up checkpoint would sign the rewrite."""
    srv = signer_of(pki.cwd / "srv")
    unsigned = tmp_path / "unsigned.jsonl"
    write_log(unsigned, None, 3)
    with pytest.raises(InvalidInput, match="has no signed checkpoint in its last 3 lines"):
        CallLog(unsigned, srv, fixed_clock)
    long_tail = tmp_path / "long.jsonl"
    write_log(long_tail, srv, 1)
    write_log(long_tail, None, CHECKPOINT_EVERY + 1)  # longer than a gateway of this version leaves
    with pytest.raises(InvalidInput, match=f"no signed checkpoint in its last {CHECKPOINT_EVERY + 1} lines"):
        CallLog(long_tail, srv, fixed_clock)
    broken = tmp_path / "broken.jsonl"
    write_log(broken, srv, 3)
    write_log(broken, None, 2)
    rows = records(broken)
    rows[4]["outcome"] = "error"  # an unsigned line edited: its hash no longer matches
    save(broken, rows)
    with pytest.raises(InvalidInput, match="is damaged before seq 6"):
        CallLog(broken, srv, fixed_clock)
    # The command says so in one line and writes nothing.
    before = unsigned.read_bytes()
    result = pki("gateway", "--as", "srv", "--listen", f"127.0.0.1:{free_port()}", "--audit-log", str(unsigned),
                 "--", "true")
    assert_clean_error(result, "has no signed checkpoint")
    assert unsigned.read_bytes() == before


def test_the_stderr_log_has_no_checkpoints(pki: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    log = CallLog(None, signer_of(pki.cwd / "srv"), fixed_clock)
    for n in range(CHECKPOINT_EVERY + 1):
        log.write(call(n))
    log.close()
    assert "checkpoint" not in capsys.readouterr().err


def test_no_secret_reaches_the_log(pki: Cli, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    signer = signer_of(pki.cwd / "srv")
    write_log(path, signer, 3)
    text = path.read_text()
    der = signer.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    scalar = signer.key.private_numbers().private_value  # type: ignore[union-attr]
    for secret in (base64.b64encode(der).decode(), der.hex(), f"{scalar:x}", str(scalar)):
        assert secret not in text
    assert "PRIVATE" not in text and "key=" not in repr(signer)


def test_verify_needs_our_root(pki: Cli, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    write_log(path, signer_of(pki.cwd / "srv"), 1)
    assert_clean_error(verify(pki, path, "--ca", str(tmp_path / "missing.crt")), "cannot read the CA file")
    leaf = tmp_path / "leaf.crt"
    leaf.write_bytes(x509.load_pem_x509_certificates((pki.cwd / "alice" / "tls.crt").read_bytes())[0]
                     .public_bytes(serialization.Encoding.PEM))
    assert_clean_error(verify(pki, path, "--ca", str(leaf)), f"the CA file {leaf} holds no CA certificate")
    # The issuing CA alone, as a chain file holds it, is a CA of ours too.
    assert verify(pki, path, "--ca", str(pki.cwd / "alice" / "tls.crt")).exit_code == 0
    assert_clean_error(pki("audit", "verify", "--ca", str(pki.home / "ca.crt")), "--ca goes with --file")
    homeless = Cli(tmp_path / "no-home", tmp_path)
    assert_clean_error(homeless("audit", "verify", "--file", str(path)), "pass --ca FILE")


def test_a_real_gateway_signs_its_log_and_a_restart_continues_it(pki: Cli, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    for run in range(2):
        with Gateway(pki, "--as", "srv", "--audit-log", str(log), log=tmp_path / f"gateway{run}.log") as gateway:
            async def two_calls() -> None:
                async with mtls_session(pki, pki.cwd / "alice", gateway.url) as client:
                    await client.list_tools()

            anyio.run(two_calls)
            # Signed while it runs, within about CHECKPOINT_DELAY of the calls.
            wait_until(lambda: "checkpoint" in records(log)[-1], "a checkpoint")
            assert gateway.stop() == 0
        if run == 0:  # a line of a gateway that died before signing it
            crashed = CallLog(log)
            crashed.write(call(0))
            crashed.close()
    assert "ended with 1 line(s) after its last signed checkpoint" in (tmp_path / "gateway1.log").read_text()
    rows = records(log)
    calls = [r for r in rows if "checkpoint" not in r]
    assert [r["method"] for r in calls] == ["initialize", "tools/list", "tools/call", "initialize", "tools/list"]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    # The restart vouched for the chain it found, carrying its certificate again.
    restart = rows[rows.index(calls[2]) + 1]["checkpoint"]
    assert restart["signed_seq"] == calls[2]["seq"] and "certificates" in restart
    result = verify(pki, log)
    assert result.exit_code == 0, result.output
    signed = len(rows) - len(calls)
    assert result.stdout.startswith(f"tool-call log intact: {len(rows)} lines, {signed} signed checkpoints "
                                    f"(last signed {rows[-1]['time']})")
    assert "unsigned tail" not in result.stdout
