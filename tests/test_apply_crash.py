"""`apply` killed with SIGKILL at random points, then run again: nothing lost or duplicated.

Each round starts `mcp-pki apply` as its own process on a real SQLite inventory, with a
roster that differs from the last round's (roles change, a teammate leaves and comes back,
so replacements and revocations are in flight), and kills it after a random delay. After the
rounds, one complete run must leave exactly what the roster says, with every file in place,
the CRL listing every revoked certificate, and the audit log intact.
"""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import PASSPHRASE, VENV_BIN, Cli

# Rounds run until this many were killed (at most MAX_ROUNDS): a machine fast enough to
# finish a round before its kill makes the next delays shorter, a slow one changes nothing.
KILLS = 4
MAX_ROUNDS = 12
PEOPLE = 200


def variant(round_number: int) -> str:
    clients = [
        {"name": f"p{i:02d}", "roles": ["dev", "ops"] if (i + round_number) % 3 == 0 else ["dev"]}
        for i in range(PEOPLE) if not (round_number % 2 and i % 7 == 0)
    ]
    return json.dumps({"servers": [{"name": "files", "dns": ["files.internal"]}], "clients": clients})


def start_apply(ca: Cli, roster: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MCP_PKI_HOME": str(ca.home), "MCP_PKI_PASSPHRASE": PASSPHRASE}
    env.pop("MCP_PKI_DB", None)
    return subprocess.Popen(
        [str(VENV_BIN / "mcp-pki"), "apply", str(roster), "--prune", "--out-root", str(ca.cwd / "certs")],
        env=env, cwd=ca.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def test_apply_killed_at_random_points_is_completed_by_the_next_run(ca: Cli) -> None:
    chance = random.Random(11)
    roster = ca.cwd / "team.yaml"
    killed = rounds = 0
    longest_delay = 1.2  # seconds; shortened to what a whole round took when one finishes
    while killed < KILLS and rounds < MAX_ROUNDS:
        roster.write_text(variant(rounds))
        started = time.monotonic()
        process = start_apply(ca, roster)
        time.sleep(chance.uniform(0.1, 1.0) * longest_delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        else:
            longest_delay = min(longest_delay, time.monotonic() - started)
        _, stderr = process.communicate(timeout=60)
        assert b"Traceback" not in stderr, stderr.decode()
        rounds += 1
    assert killed >= KILLS // 2, f"only {killed} of {rounds} rounds were interrupted: lengthen the roster"

    final = rounds  # a roster the last killed round had not fully applied
    roster.write_text(variant(final))
    process = start_apply(ca, roster)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()

    expected = json.loads(variant(final))
    wanted = {(c["name"], tuple(sorted(c["roles"]))) for c in expected["clients"]}
    listing = json.loads(ca.ok("list", "--status", "valid", "--json").stdout)
    valid_clients = [c for c in listing if c["kind"] == "client"]
    # Renewals are not due here, so exactly one valid certificate per roster entry.
    assert sorted((c["name"], tuple(sorted(c["roles"]))) for c in valid_clients) == sorted(wanted)
    assert [c["name"] for c in listing if c["kind"] == "server"] == ["files"]

    serials = [c["serial"] for c in json.loads(ca.ok("list", "--json").stdout)]
    assert len(serials) == len(set(serials))
    crl_entries = {
        entry.serial_number
        for part in (ca.home / "crl.pem").read_bytes().split(b"-----BEGIN X509 CRL")[1:]
        for entry in x509.load_pem_x509_crl(b"-----BEGIN X509 CRL" + part)
    }
    revoked = json.loads(ca.ok("list", "--status", "revoked", "--json").stdout)
    assert {int(c["serial"], 16) for c in revoked} <= crl_entries

    for certificate in [*valid_clients, *(c for c in listing if c["kind"] == "server")]:
        folder = ca.cwd / "certs" / certificate["name"]
        leaf = x509.load_pem_x509_certificates((folder / "tls.crt").read_bytes())[0]
        assert format(leaf.serial_number, "x") == certificate["serial"]
        key = serialization.load_pem_private_key((folder / "tls.key").read_bytes(), None)
        assert key.public_key() == leaf.public_key()

    ca.ok("audit", "verify")
    again = ca.ok("apply", str(roster), "--prune", "--out-root", str(ca.cwd / "certs"))
    assert "nothing to do" in again.stderr


def test_temporaries_a_killed_run_left_are_removed_by_the_next_write_there(ca: Cli) -> None:
    """A run killed between writing a temporary and renaming it leaves a hidden file, perhaps
    holding a private key. The next write of that file removes it once it is clearly stale;
    anything that is not one of our temporaries, and fresh ones (a run still going), stay."""
    folder = ca.cwd / "alice"
    folder.mkdir(mode=0o700)
    stale, fresh, foreign = folder / ".tls.key.0123456789ab.tmp", folder / ".tls.crt.ba9876543210.tmp", folder / ".notes.tmp"
    bundle = folder / ".tls.p12.00112233aabb.tmp"  # a file this issue does not write
    for path in (stale, fresh, foreign, bundle):
        path.write_bytes(b"leftover")
    hour_ago = time.time() - 3600
    for path in (stale, foreign, bundle):
        os.utime(path, (hour_ago, hour_ago))
    ca.ok("issue", "client", "alice", "--out", "alice")
    assert not stale.exists() and not bundle.exists()
    assert fresh.exists() and foreign.exists()


def test_apply_with_its_output_closed_still_completes(ca: Cli) -> None:
    """`mcp-pki apply team.yaml | head -1`: the reader goes away after one line; the run
    does not stop between signing and revoking the certificates it replaced."""
    roster = ca.cwd / "team.yaml"
    roster.write_text(variant(0))
    ca.ok("apply", str(roster), "--out-root", str(ca.cwd / "certs"))
    roster.write_text(variant(1))
    env = {**os.environ, "MCP_PKI_HOME": str(ca.home), "MCP_PKI_PASSPHRASE": PASSPHRASE}
    env.pop("MCP_PKI_DB", None)
    reader, writer = os.pipe()
    os.close(reader)
    try:
        subprocess.run([str(VENV_BIN / "mcp-pki"), "apply", str(roster), "--out-root", str(ca.cwd / "certs")],
                       env=env, cwd=ca.cwd, stdout=writer, stderr=subprocess.DEVNULL, timeout=120, check=False)
    finally:
        os.close(writer)
    again = ca.ok("apply", str(roster), "--out-root", str(ca.cwd / "certs"))
    assert "nothing to do" in again.stderr, again.stdout
