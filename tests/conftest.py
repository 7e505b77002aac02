"""Shared fixtures: a real home folder, a real SQLite inventory, the real CLI in-process."""

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcp_pki.cli import cli

PASSPHRASE = "correct horse battery"
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None


class Cli:
    """Runs ``mcp-pki`` in-process against one home folder."""

    def __init__(self, home: Path, cwd: Path) -> None:
        self.home = home
        self.cwd = cwd
        self.env = {"MCP_PKI_HOME": str(home), "MCP_PKI_PASSPHRASE": PASSPHRASE,
                    "MCP_PKI_DB": None, "MCP_PKI_P12_PASSPHRASE": None}

    def __call__(self, *args: str, env: dict[str, str | None] | None = None, input: str | None = None) -> Result:
        runner = CliRunner()
        previous = os.getcwd()
        os.chdir(self.cwd)
        try:
            result = runner.invoke(cli, list(args), env={**self.env, **(env or {})}, input=input)
        finally:
            os.chdir(previous)
        exception = None if isinstance(result.exception, SystemExit) else result.exception
        return Result(result.exit_code, result.stdout, result.stderr, exception)

    def ok(self, *args: str, **kwargs: object) -> Result:
        result = self(*args, **kwargs)  # type: ignore[arg-type]
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result

    @property
    def db(self) -> Path:
        return self.home / "inventory.db"


def assert_clean_error(result: Result, fragment: str, *, exit_code: int = 1) -> None:
    """One ``Error: ...`` line naming the problem, the expected exit code, no traceback."""
    assert result.exception is None, result.exception
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert fragment.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def table_counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    with sqlite3.connect(db) as connection:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: connection.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def tree(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Snapshot:
    """Everything a failed command must leave untouched: rows, home files, work files."""

    cli: Cli

    def __post_init__(self) -> None:
        self.before = self._take()

    def _take(self) -> tuple[dict[str, int], dict[str, bytes], dict[str, bytes]]:
        home_files = {k: v for k, v in tree(self.cli.home).items() if not k.startswith("inventory.db")}
        return table_counts(self.cli.db), home_files, tree(self.cli.cwd)

    def assert_unchanged(self) -> None:
        assert self._take() == self.before


@pytest.fixture
def mcp(tmp_path: Path) -> Cli:
    """A CLI with an empty home (no CA yet)."""
    work = tmp_path / "work"
    work.mkdir()
    return Cli(tmp_path / "home", work)


_CA_TEMPLATE: dict[str, Path] = {}


@pytest.fixture
def ca(mcp: Cli, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A CLI whose home holds a two-tier CA (made once, copied per test)."""
    if "two-tier" not in _CA_TEMPLATE:
        template = tmp_path_factory.mktemp("ca-template")
        Cli(template, template).ok("init-ca", "--name", "Test", "--org", "Example")
        _CA_TEMPLATE["two-tier"] = template
    shutil.copytree(_CA_TEMPLATE["two-tier"], mcp.home)
    return mcp


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], check=False, capture_output=True, text=True, timeout=60,
                          input=None if input is None else input.decode())


def pkilint_cert(path: Path) -> str:
    """pkilint's RFC 5280 findings of WARNING or worse; empty when clean."""
    result = subprocess.run(
        [str(VENV_BIN / "lint_pkix_cert"), "lint", "-s", "WARNING", str(path)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    if result.returncode and not result.stdout.strip():  # pkilint itself failed: never "clean"
        raise AssertionError(f"pkilint could not lint {path}: {result.stderr.strip()}")
    return result.stdout.strip() if result.returncode else ""


def listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    """Whether `process` listens on 127.0.0.1:`port` within `timeout` seconds (False as soon
    as it has exited): how the tests wait for the real servers they start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False
