"""The README's first command: scripts/demo runs the main job end to end."""

import os
import subprocess

from tests.conftest import REPO


def test_the_demo_issues_certificates_and_completes_a_mutual_tls_handshake() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MCP_PKI_")}
    result = subprocess.run([str(REPO / "scripts" / "demo")], check=False, capture_output=True, text=True,
                            timeout=600, env=environment)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for step in ("init-ca", "issue server mcp-files", "issue client alice", "issue client build-agent",
                 "mcp-pki list", "mcp-pki show alice", "mutual TLS handshake: OK"):
        assert step in result.stdout, step
    assert "server: client roles (OU): admin" in result.stdout
    workdir = next(line.split(" in ", 1)[1].strip() for line in result.stdout.splitlines()
                   if line.startswith("# working in "))
    subprocess.run(["rm", "-rf", workdir], check=True)
