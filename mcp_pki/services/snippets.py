"""``snippet``: configuration for one certificate, rendered from templates."""

import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

from mcp_pki.errors import InvalidInput
from mcp_pki.render import TARGETS, CertificateView, Target, find_target, render, render_page
from mcp_pki.render.values import refuse_control_characters
from mcp_pki.services.home import Home
from mcp_pki.services.inventory import issuer_chain, resolve_ref, status_of
from mcp_pki.services.listing import Status
from mcp_pki.store.db import open_inventory, read_session
from mcp_pki.store.models import Certificate
from mcp_pki.timestamps import iso_utc

BUNDLE_README = "bundle-README.md.j2"


@dataclass(frozen=True, slots=True)
class Snippet:
    target: Target
    text: str


def missing_files(view: CertificateView) -> list[str]:
    """Files the snippet names that are not on this machine, when they should be here (no
    --dir): a tls.key that stayed with the requester of a CSR, a removed folder."""
    return [f for f in (view.cert_file, view.key_file, view.ca_file) if not Path(f).is_file()]


def certificate_view(home: Home, ref: str, *, folder: str | None, now: datetime) -> CertificateView:
    """The template view of REF. Without `folder`, the files are where ``issue`` wrote them
    and the CRL is the home's own ``crl.pem``; with it, all four live in that folder."""
    return _certificate_view(home, ref, folder=folder, now=now)[0]


def _certificate_view(
    home: Home, ref: str, *, folder: str | None, now: datetime
) -> tuple[CertificateView, list[str]]:
    """The view, and a warning when the certificate is revoked or expired: a configuration
    for it renders, but no peer will accept it."""
    engine = open_inventory(home.db_url)
    try:
        with read_session(engine) as session, session.begin():
            certificate = resolve_ref(session, ref, now=now)
            chain = issuer_chain(session, certificate.issuer_id)
            intermediates = "".join(a.certificate_pem for a in chain[:-1])
            view = _view(home, certificate, folder, cert_pem=certificate.certificate_pem + intermediates,
                         ca_pem=chain[-1].certificate_pem, ca_key_encrypted=chain[0].key_encrypted)
            status = status_of(certificate, now)
            since = certificate.revocation.revoked_at if certificate.revocation else certificate.not_after
    finally:
        engine.dispose()
    if status is Status.VALID:
        return view, []
    warning = (f"certificate {certificate.serial} ({certificate.name}) is {status.value} since "
               f"{since:%Y-%m-%d %H:%M} UTC: peers will refuse it; issue or renew one first")
    return view, [warning]


def _view(
    home: Home, certificate: Certificate, folder: str | None, *, cert_pem: str, ca_pem: str, ca_key_encrypted: bool
) -> CertificateView:
    if folder is not None:
        refuse_control_characters(folder, "--dir")  # before anything else reads it
    if folder is not None and not (PurePosixPath(folder).is_absolute() or PureWindowsPath(folder).is_absolute()):
        # Servers resolve a relative path against their own folder (nginx: its prefix;
        # systemd: /), not against where this command ran.
        raise InvalidInput(f"--dir must be an absolute path on the machine that uses the files (got {folder!r})")
    if folder is None and certificate.files_dir is None:
        raise InvalidInput(
            f"no folder is on record for {certificate.serial}'s files (issued by an older mcp-pki): "
            "give --dir DIR"
        )
    # A --dir names a folder on another machine: keep it as written, with that machine's
    # separators (C:\\Users\\alice\\mcp for a teammate's Claude Desktop on Windows).
    base: PurePath
    if folder is None:
        base = Path(certificate.files_dir or "")
    elif PurePosixPath(folder).is_absolute():
        base = PurePosixPath(folder)
    else:
        base = PureWindowsPath(folder)
    crl = base / "crl.pem" if folder is not None else home.crl_file.absolute()

    def sans(prefix: str) -> tuple[str, ...]:
        return tuple(s.removeprefix(prefix) for s in certificate.sans if s.startswith(prefix))

    return CertificateView(
        name=certificate.name, kind=certificate.kind, serial=certificate.serial, subject=certificate.subject,
        dns_names=sans("DNS:"), ip_addresses=sans("IP:"), uris=sans("URI:"), emails=sans("email:"),
        roles=tuple(certificate.roles), not_after=iso_utc(certificate.not_after),
        folder=str(base), local=folder is None, cert_file=str(base / "tls.crt"), key_file=str(base / "tls.key"),
        ca_file=str(base / "ca.crt"), crl_file=str(crl), cert_pem=cert_pem, ca_pem=ca_pem,
        home=str(home.path.absolute()), home_owner=_owner(home.path), tool=tool_path(),
        ca_key_encrypted=ca_key_encrypted,
    )


def _owner(path: Path) -> str:
    import os
    import pwd

    uid = path.stat().st_uid if path.exists() else os.getuid()  # a PostgreSQL inventory needs no home
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no name (a container's): systemd and runuser take numbers too
        return str(uid)


def tool_path() -> str:
    """The mcp-pki executable by absolute path, so that services and MCP hosts, which run
    with a minimal PATH, find the same installation."""
    beside_python = Path(sys.executable).parent / "mcp-pki"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("mcp-pki") or "mcp-pki"


@dataclass(frozen=True, slots=True)
class Rendered:
    snippets: list[Snippet]
    readme: str | None  # with --all: which file goes where
    warnings: list[str]


def render_one(home: Home, target_name: str, ref: str, *, folder: str | None,
               variables: dict[str, str], now: datetime) -> Rendered:
    target = find_target(target_name)
    view, status_warnings = _certificate_view(home, ref, folder=folder, now=now)
    snippet = Snippet(target, render(target, view, variables, overrides=home.templates_dir))
    return Rendered([snippet], None, status_warnings + _warnings(view, folder))


def _warnings(view: CertificateView, folder: str | None) -> list[str]:
    if folder is not None:
        return []  # another machine's folder: nothing to check here
    return [f"{path} does not exist (issued from a CSR? moved?): put it there or give --dir"
            for path in missing_files(view)]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A target that ``--all`` could not render, and what it needs."""

    target: Target
    reason: str


def render_all(home: Home, ref: str, *, folder: str | None, variables: dict[str, str],
               now: datetime) -> Rendered:
    """Every target for REF's kind that the given variables allow, and the README that says
    which file goes where and which targets were skipped for want of a ``--var``.

    A variable no target knows is an error (a typo would otherwise skip targets silently);
    so is a set of variables with which no target renders at all.
    """
    view, status_warnings = _certificate_view(home, ref, folder=folder, now=now)
    snippets, skipped, readme = render_targets(view, variables, overrides=home.templates_dir)
    warnings = status_warnings + _warnings(view, folder) + [f"skipped {s.target.name}: {s.reason}" for s in skipped]
    return Rendered(snippets, readme, warnings)


def render_targets(view: CertificateView, variables: dict[str, str], *,
                   overrides: Path | None) -> tuple[list[Snippet], list[Skipped], str]:
    """Each target for the view's kind, or the reason it was skipped; and the bundle README."""
    targets = [t for t in TARGETS if view.kind in t.kinds]
    known = {v.name for t in targets for v in t.variables}
    unknown = sorted(set(variables) - known)
    if unknown:
        raise InvalidInput(
            f"no {view.kind} target has variable {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    snippets: list[Snippet] = []
    skipped: list[Skipped] = []
    for target in targets:
        missing = [v for v in target.variables if v.required and not variables.get(v.name)]
        if missing:
            needs = "; ".join(f"--var {v.name}=... ({v.meaning})" for v in missing)
            skipped.append(Skipped(target, f"needs {needs}"))
            continue
        mine = {k: v for k, v in variables.items() if target.variable(k) is not None}
        snippets.append(Snippet(target, render(target, view, mine, overrides=overrides)))
    if not snippets:
        reasons = sorted({s.reason for s in skipped})
        raise InvalidInput(f"no {view.kind} target can be rendered: {'; '.join(reasons)}")
    readme = render_page(BUNDLE_README, overrides=overrides, cert=view, snippets=snippets, skipped=skipped)
    return snippets, skipped, readme
