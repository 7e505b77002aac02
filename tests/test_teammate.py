"""The teammate keeps the key: ``request`` on their machine, ``issue --csr`` and ``export --format
bundle`` on the CA's, ``install`` back on theirs, then a real MCP session over mutual TLS."""

import io
import json
import os
import re
import shutil
import stat
import tarfile
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import VENV_BIN, Cli, Snapshot, assert_clean_error, tree
from tests.test_snippet_hosts import _initialize, launch_entry
from tests.test_snippet_mcp import McpSetup, setup, start_python_server, url

__all__ = ["setup"]  # a fixture, shared with test_snippet_mcp


@pytest.fixture
def laptop(tmp_path: Path) -> Cli:
    """The teammate's machine: mcp-pki installed, no CA home."""
    work = tmp_path / "laptop"
    work.mkdir()
    return Cli(tmp_path / "laptop-has-no-ca", work)


def _request(laptop: Cli, name: str = "carol") -> Path:
    result = laptop.ok("request", name, "--email", f"{name}@example.com")
    assert f"mcp-pki issue client {name} --csr {name}.csr --email {name}@example.com" in result.stdout
    return laptop.cwd / name


def _sign(ca: Cli, csr: Path, name: str = "carol", *options: str) -> Path:
    ca.ok("issue", "client", name, "--csr", str(csr), "--email", f"{name}@example.com", "--role", "dev")
    bundle = ca.cwd / f"{name}.tar.gz"
    ca.ok("export", name, "--format", "bundle", "--out", str(bundle), *options)
    return bundle


def test_request_writes_a_private_key_and_a_csr_the_ca_signs(laptop: Cli, ca: Cli) -> None:
    folder = _request(laptop)
    key_file, csr_file = folder / "tls.key", folder / "carol.csr"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=carol"
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert csr.public_key() == key.public_key()
    assert not laptop.home.exists()  # no CA, no inventory on the teammate's machine

    _sign(ca, csr_file)
    issued = x509.load_pem_x509_certificate((ca.cwd / "carol" / "tls.crt").read_bytes())
    assert issued.public_key() == key.public_key()
    assert not (ca.cwd / "carol" / "tls.key").exists()  # the key never left the laptop


def test_request_never_replaces_a_key_without_force(laptop: Cli) -> None:
    folder = _request(laptop)
    before = tree(folder)
    assert_clean_error(laptop("request", "carol"), "already exists")
    assert tree(folder) == before
    laptop.ok("request", "carol", "--force")
    assert tree(folder)["tls.key"] != before["tls.key"]


def test_request_refuses_bad_input_and_writes_nothing(laptop: Cli) -> None:
    assert_clean_error(laptop("request", "../evil"), "invalid name")
    assert_clean_error(laptop("request", "carol", "--email", "not-an-email"), "email")
    assert_clean_error(laptop("request", "carol", "--key-type", "rsa1024"), "unknown key type")
    assert tree(laptop.cwd) == {}


def test_bundle_installs_next_to_the_key_and_its_host_entry_answers_initialize(
    setup: McpSetup, laptop: Cli, tmp_path: Path,
) -> None:
    server = start_python_server(setup)
    try:
        folder = _request(laptop)
        bundle = _sign(setup.ca, folder / "carol.csr", "carol", "--var", f"url={url(server.port)}")
        with tarfile.open(bundle) as archive:
            names = archive.getnames()
        assert sorted(names) == ["carol/README.md", "carol/bundle.json", "carol/ca.crt", "carol/crl.pem", "carol/tls.crt"]

        result = laptop.ok("install", str(bundle))  # default: ./carol, where request wrote the key
        assert "installed carol" in result.stderr
        assert f"claude-desktop   {folder / 'config' / 'claude_desktop_config.json'}:" in result.stdout
        assert (folder / "crl.pem").read_bytes() == (setup.ca.home / "crl.pem").read_bytes()
        assert stat.S_IMODE((folder / "tls.key").stat().st_mode) == 0o600

        # The entry names the teammate's own files, and works from a HOME with no CA in it.
        entry = launch_entry("claude-desktop", (folder / "config" / "claude_desktop_config.json").read_text())
        assert entry["args"] == ["bridge", url(server.port), "--cert", str(folder / "tls.crt"),
                                 "--key", str(folder / "tls.key"), "--ca", str(folder / "ca.crt")]
        assert entry["env"] == {}
        with open(tmp_path / "bridge.stderr", "w") as log:
            assert anyio.run(_initialize, entry, tmp_path, log) == ("srv", {"echo"})
    finally:
        server.stop()


def test_bundle_with_dir_carries_host_configs_for_the_teammates_folder(laptop: Cli, ca: Cli) -> None:
    folder = _request(laptop)
    bundle = _sign(ca, folder / "carol.csr", "carol", "--dir", "/home/carol/mcp",
                   "--var", "url=https://files.example.com:8443/mcp")
    with tarfile.open(bundle) as archive:
        entry = launch_entry("vscode", archive.extractfile("carol/config/vscode-mcp.json").read().decode())  # type: ignore[union-attr]
        readme = archive.extractfile("carol/README.md").read().decode()  # type: ignore[union-attr]
    assert entry["args"][2:] == ["--cert", "/home/carol/mcp/tls.crt", "--key", "/home/carol/mcp/tls.key",
                                 "--ca", "/home/carol/mcp/ca.crt"]
    assert "mcp-pki install carol.tar.gz" in readme and "vscode-mcp.json" in readme


def test_install_refuses_another_teammates_bundle_and_writes_nothing(laptop: Cli, ca: Cli) -> None:
    folder = _request(laptop)
    ca.ok("issue", "client", "carol")  # the CA made a key of its own: not the one on the laptop
    ca.ok("export", "carol", "--format", "bundle", "--out", "carol.tar.gz", "--var", "url=https://f.example.com/mcp")
    before = Snapshot(laptop)
    assert_clean_error(laptop("install", str(ca.cwd / "carol.tar.gz")), "does not match")
    before.assert_unchanged()
    assert sorted(tree(folder)) == ["carol.csr", "tls.key"]


def test_install_refuses_a_certificate_its_crl_lists(laptop: Cli, ca: Cli) -> None:
    folder = _request(laptop)
    bundle = _sign(ca, folder / "carol.csr")
    ca.ok("revoke", "carol", "--reason", "key-compromise")
    tampered = _rewrite(bundle, {"carol/crl.pem": (ca.home / "crl.pem").read_bytes()})
    before = Snapshot(laptop)
    assert_clean_error(laptop("install", str(tampered)), "revoked")
    before.assert_unchanged()
    # And the CA refuses to export a bundle for it in the first place.
    assert_clean_error(ca("export", "carol", "--format", "bundle", "--out", "again.tar.gz"), "revoked")


def test_install_refuses_a_chain_to_another_root(laptop: Cli, ca: Cli, tmp_path: Path) -> None:
    folder = _request(laptop)
    bundle = _sign(ca, folder / "carol.csr")
    other = Cli(tmp_path / "other-home", tmp_path)
    other.ok("init-ca", "--name", "Other", "--org", "Elsewhere")
    tampered = _rewrite(bundle, {"carol/ca.crt": (other.home / "ca.crt").read_bytes()})
    assert_clean_error(laptop("install", str(tampered)), "does not chain")
    assert sorted(tree(folder)) == ["carol.csr", "tls.key"]


@pytest.mark.parametrize("entry", ["carol/../../evil", "/etc/evil", "carol/config/../../evil", "carol/bin/sh"])
def test_install_refuses_archives_that_are_not_our_bundles(laptop: Cli, ca: Cli, entry: str) -> None:
    folder = _request(laptop)
    bundle = _sign(ca, folder / "carol.csr")
    tampered = _rewrite(bundle, {entry: b"#!/bin/sh\n"})
    before = Snapshot(laptop)
    assert_clean_error(laptop("install", str(tampered)), "not an mcp-pki bundle")
    before.assert_unchanged()


def test_install_refuses_garbage_and_a_missing_key(laptop: Cli, ca: Cli) -> None:
    (laptop.cwd / "junk.tar.gz").write_bytes(b"not a tar")
    assert_clean_error(laptop("install", "junk.tar.gz"), "not an mcp-pki bundle")
    folder = _request(laptop)
    bundle = _sign(ca, folder / "carol.csr")
    assert_clean_error(laptop("install", str(bundle), "--dir", "elsewhere"), "cannot read")
    assert not (laptop.cwd / "elsewhere").exists()


def test_install_again_needs_force_and_replaces_the_certificate(laptop: Cli, ca: Cli) -> None:
    folder = _request(laptop)
    bundle = _sign(ca, folder / "carol.csr")
    laptop.ok("install", str(bundle))
    ca.ok("renew", "carol", "--csr", str(folder / "carol.csr"), "--out", str(ca.cwd / "renewed"), "--force")
    ca.ok("export", "carol", "--format", "bundle", "--out", "renewed.tar.gz")
    renewed = ca.cwd / "renewed.tar.gz"
    assert_clean_error(laptop("install", str(renewed)), "already exists")
    laptop.ok("install", str(renewed), "--force")
    serial = json.loads(ca.ok("show", "carol", "--json").stdout)["serial"]
    installed = x509.load_pem_x509_certificate((folder / "tls.crt").read_bytes())
    assert format(installed.serial_number, "x") == serial.lstrip("0")


def test_export_bundle_needs_out_and_takes_dir_and_var_only_as_a_bundle(ca: Cli) -> None:
    ca.ok("issue", "client", "carol")
    assert_clean_error(ca("export", "carol", "--format", "bundle"), "needs --out")
    assert_clean_error(ca("export", "carol", "--var", "url=https://x.example.com/mcp"), "only used with --format bundle")
    assert_clean_error(ca("export", "carol", "--format", "bundle", "--out", "b.tgz", "--dir", "relative"), "absolute")


def _rewrite(bundle: Path, replace: dict[str, bytes]) -> Path:
    """A copy of `bundle` with some members replaced or added, as a tampered archive would be."""
    members: dict[str, bytes] = {}
    with tarfile.open(bundle) as archive:
        for info in archive:
            handle = archive.extractfile(info)
            assert handle is not None
            members[info.name] = handle.read()
    members.update(replace)
    out = bundle.with_name("tampered-" + bundle.name)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    out.write_bytes(buffer.getvalue())
    return out


def test_snippet_all_renders_what_it_can_and_says_what_it_skipped(ca: Cli) -> None:
    ca.ok("issue", "client", "carol")
    result = ca.ok("snippet", "--all", "carol", "--out", "carol-config")  # no --var url
    assert "skipped python-client: needs --var url=" in result.stderr
    written = sorted(tree(ca.cwd / "carol-config"))
    assert written == ["README.md", "kustomization.yaml"]
    readme = (ca.cwd / "carol-config" / "README.md").read_text()
    skipped = readme[readme.index("Not rendered"):]
    assert "| `python-client` | needs --var url=..." in skipped and "| `claude-code-http` |" in skipped
    assert "`kustomization.yaml`" in readme[:readme.index("Not rendered")]
    ca.ok("issue", "server", "files", "--ip", "127.0.0.1")
    result = ca.ok("snippet", "--all", "files", "--out", "files-config")
    assert "skipped server-env: needs --var command=" in result.stderr
    assert "nginx.conf" in tree(ca.cwd / "files-config")
    # A typo in a variable name is still an error: it would skip targets silently.
    before = Snapshot(ca)
    assert_clean_error(ca("snippet", "--all", "carol", "--out", "x", "--var", "ulr=https://f.example.com/mcp"),
                       "no client target has variable ulr")
    before.assert_unchanged()


def _expand_vscode(value: str, home: Path) -> str:
    """VS Code's and Cursor's variable substitution in mcp.json: ${userHome}, ${env:NAME}."""
    value = value.replace("${userHome}", str(home))
    return re.sub(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: os.environ.get(m[1], ""), value)


@pytest.mark.parametrize("target", ["vscode", "cursor"])
def test_a_portable_project_file_works_for_every_teammate(setup: McpSetup, tmp_path: Path, target: str) -> None:
    server = start_python_server(setup)
    try:
        setup.ca.ok("issue", "client", "carol")
        text = setup.ca.ok("snippet", target, "alice", "--var", f"url={url(server.port)}",
                           "--var", "portable=true").stdout
        assert str(setup.alice) not in text and str(setup.ca.home) not in text  # no one's own paths
        entry = launch_entry(target, text)
        assert entry["command"] == "mcp-pki" and entry["env"] == {}
        for who, folder in (("alice", setup.alice), ("carol", setup.ca.cwd / "carol")):
            home = tmp_path / who
            (home / ".mcp-pki" / "mcp-server").mkdir(parents=True)
            for name in ("tls.crt", "tls.key", "ca.crt"):
                (home / ".mcp-pki" / "mcp-server" / name).write_bytes((folder / name).read_bytes())
            # As the host launches it: variables substituted, mcp-pki found on PATH.
            expanded = {**entry, "command": shutil.which("mcp-pki", path=str(VENV_BIN)),
                        "args": [_expand_vscode(a, home) for a in entry["args"]]}
            with open(tmp_path / f"{who}.stderr", "w") as log:
                assert anyio.run(_initialize, expanded, home, log) == ("srv", {"echo"}), who
    finally:
        server.stop()


def test_portable_takes_true_or_false_and_only_where_a_file_is_shared(ca: Cli) -> None:
    ca.ok("issue", "client", "carol")
    assert_clean_error(ca("snippet", "vscode", "carol", "--var", "url=https://f.example.com/mcp", "--var", "portable=yes"),
                       "must be true or false")
    assert_clean_error(ca("snippet", "claude-desktop", "carol", "--var", "url=https://f.example.com/mcp",
                          "--var", "portable=true"), "has no variable portable")
