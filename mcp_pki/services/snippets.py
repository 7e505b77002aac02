"""``snippet``: configuration for one certificate, rendered from templates."""

from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from mcp_pki.render import TARGETS, CertificateView, Target, find_target, render
from mcp_pki.services.home import Home
from mcp_pki.services.inventory import resolve_ref
from mcp_pki.store.db import open_inventory, read_session
from mcp_pki.timestamps import iso_utc


@dataclass(frozen=True, slots=True)
class Snippet:
    target: Target
    text: str


def render_snippets(
    home: Home, ref: str, targets: list[str] | None, *, folder: str | None, variables: dict[str, str], now: datetime
) -> list[Snippet]:
    """Render the named targets (or every target that fits the certificate's kind).

    `folder` is where tls.crt, tls.key and ca.crt live on the machine that uses them
    (default: ``/etc/mcp-pki/NAME``); crl.pem is expected beside them.
    """
    engine = open_inventory(home.db_url)
    try:
        with read_session(engine) as session, session.begin():
            certificate = resolve_ref(session, ref, now=now)
            base = PurePosixPath(folder or f"/etc/mcp-pki/{certificate.name}")
            view = CertificateView(
                name=certificate.name, kind=certificate.kind, serial=certificate.serial,
                subject=certificate.subject,
                dns_names=tuple(s[4:] for s in certificate.sans if s.startswith("DNS:")),
                ip_addresses=tuple(s[3:] for s in certificate.sans if s.startswith("IP:")),
                roles=tuple(certificate.roles),
                not_after=iso_utc(certificate.not_after),
                cert_file=str(base / "tls.crt"), key_file=str(base / "tls.key"),
                ca_file=str(base / "ca.crt"), crl_file=str(base / "crl.pem"),
            )
    finally:
        engine.dispose()
    chosen = [find_target(t) for t in targets] if targets else [t for t in TARGETS if view.kind in t.kinds]
    overrides = home.templates_dir
    return [Snippet(t, render(t, view, _for(t, variables, all_targets=not targets), overrides=overrides)) for t in chosen]


def _for(target: Target, variables: dict[str, str], *, all_targets: bool) -> dict[str, str]:
    # With --all, each target takes the variables it knows; named targets must know them all.
    return {k: v for k, v in variables.items() if k in target.variables} if all_targets else variables


def snippet_file_name(target: Target) -> str:
    return target.template.removesuffix(".j2")

