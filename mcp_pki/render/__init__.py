"""Rendering configuration snippets from Jinja templates.

Templates are data: they receive a small frozen view of one certificate (names, paths,
public facts) and never a private key. A file of the same name in ``<home>/templates``
overrides the packaged one.
"""

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from mcp_pki.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    template: str
    kinds: tuple[str, ...]
    description: str
    variables: dict[str, str] = field(default_factory=dict)  # name -> what it means


TARGETS = (
    Target(
        "server-env", "server-env.sh.j2", ("server",),
        "environment block for an MCP server run by uvicorn: TLS with client certificates required",
    ),
    Target(
        "nginx", "nginx.conf.j2", ("server",),
        "nginx server block terminating mTLS in front of an MCP server, with the CRL and "
        "verified client identity forwarded",
        {"port": "port nginx listens on (8443)", "upstream": "where the MCP server listens (http://127.0.0.1:8000)"},
    ),
)


@dataclass(frozen=True, slots=True)
class CertificateView:
    """All a template may know about a certificate."""

    name: str
    kind: str
    serial: str
    subject: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    roles: tuple[str, ...]
    not_after: str
    cert_file: str
    key_file: str
    ca_file: str
    crl_file: str


def find_target(name: str) -> Target:
    for target in TARGETS:
        if target.name == name:
            return target
    raise InvalidInput(f"unknown snippet target {name!r}: choose one of {', '.join(t.name for t in TARGETS)}")


def packaged_templates() -> Path:
    """Inside the wheel as ``mcp_pki/templates``; in a checkout, the top-level folder."""
    installed = Path(__file__).resolve().parent.parent / "templates"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "templates"


def render(target: Target, view: CertificateView, variables: dict[str, str], *, overrides: Path | None) -> str:
    unknown = set(variables) - set(target.variables)
    if unknown:
        known = ", ".join(target.variables) or "none"
        raise InvalidInput(f"{target.name} has no variable {', '.join(sorted(unknown))} (known: {known})")
    if view.kind not in target.kinds:
        raise InvalidInput(f"{target.name} is for {' or '.join(target.kinds)} certificates, not {view.kind}")
    search = [str(overrides)] if overrides is not None and overrides.is_dir() else []
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*search, str(packaged_templates())]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters["shell"] = shlex.quote  # a path with a space stays one word
    try:
        return environment.get_template(target.template).render(cert=view, var=variables)
    except jinja2.TemplateError as exc:
        raise InvalidInput(f"template {target.template} failed: {exc}") from None
