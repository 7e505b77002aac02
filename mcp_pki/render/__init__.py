"""Rendering configuration snippets from Jinja templates.

Templates are data: they receive a small frozen view of one certificate (names, paths,
public PEMs) and the target's variables, never a private key. A file of the same name in
``<home>/templates`` overrides the packaged one.
"""

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jinja2

from mcp_pki.errors import InvalidInput
from mcp_pki.render.filters import FILTERS
from mcp_pki.render.targets import TARGETS, Target, Variable, find_target

__all__ = ["TARGETS", "CertificateView", "Target", "Variable", "find_target", "render", "target_variables"]


@dataclass(frozen=True, slots=True)
class CertificateView:
    """All a template may know about a certificate and the tool."""

    name: str
    kind: str
    serial: str
    subject: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    uris: tuple[str, ...]
    emails: tuple[str, ...]
    roles: tuple[str, ...]
    not_after: str
    folder: str  # where the files live on the machine that uses them
    local: bool  # no --dir: that machine is this one, where the CA home is
    cert_file: str
    key_file: str
    ca_file: str
    crl_file: str
    cert_pem: str  # the certificate then its intermediates, as in tls.crt
    ca_pem: str
    home: str  # the CA home folder, for commands run where the CA lives
    home_owner: str  # the user owning it: scheduled jobs run as that user
    tool: str  # the mcp-pki executable, by absolute path when it can be found
    ca_key_encrypted: bool

    @property
    def hosts(self) -> tuple[str, ...]:
        """The names a client may put in a Host header: DNS names and IPs (IPv6 in brackets)."""
        return self.dns_names + tuple(f"[{ip}]" if ":" in ip else ip for ip in self.ip_addresses)


def target_variables(target: Target, given: dict[str, str]) -> dict[str, str]:
    """The target's variables: the given ones, then defaults; a missing required one is an error."""
    unknown = sorted(set(given) - {v.name for v in target.variables})
    if unknown:
        known = ", ".join(v.name for v in target.variables) or "none"
        raise InvalidInput(f"{target.name} has no variable {', '.join(unknown)} (known: {known})")
    missing = [v for v in target.variables if v.required and not given.get(v.name)]
    if missing:
        raise InvalidInput(f"{target.name} needs {_describe_missing(missing)}")
    values = {v.name: given.get(v.name, v.default or "") for v in target.variables}
    for variable in target.variables:
        check_value(variable, values[variable.name])
    return values


def check_value(variable: Variable, value: str) -> None:
    """Refuse a value that would render a config which fails later, somewhere else."""
    problem = None
    if variable.kind == "port":
        problem = None if value.isdigit() and 1 <= int(value) <= 65535 else "a port number from 1 to 65535"
    elif variable.kind == "address" and value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            problem = "an IP address such as 127.0.0.1 or 0.0.0.0"
    elif variable.kind == "https-url":
        parts = urlsplit(value)
        problem = None if parts.scheme == "https" and parts.hostname else "an https:// URL (mutual TLS needs https)"
    elif variable.kind == "upstream":
        parts = urlsplit(value)
        try:
            _ = parts.port  # a port that is not a number raises here
            plain = parts.scheme == "http" and bool(parts.hostname) and parts.path in ("", "/") and not parts.query
        except ValueError:
            plain = False
        problem = None if plain else "http://HOST:PORT with no path (the plain-HTTP MCP server)"
    if problem:
        raise InvalidInput(f"--var {variable.name}={value!r}: must be {problem}")


def _describe_missing(missing: list[Variable]) -> str:
    return "; ".join(f"--var {v.name}=... ({v.meaning})" for v in missing)


def packaged_templates() -> Path:
    """Inside the wheel as ``mcp_pki/templates``; in a checkout, the top-level folder."""
    installed = Path(__file__).resolve().parent.parent / "templates"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "templates"


def render(target: Target, view: CertificateView, variables: dict[str, str], *, overrides: Path | None) -> str:
    if view.kind not in target.kinds:
        raise InvalidInput(f"{target.name} is for {' or '.join(target.kinds)} certificates, not {view.kind}")
    values = target_variables(target, variables)
    environment = _environment(overrides)
    text = _render_template(environment, target.template, cert=view, var=values, target=target)
    _check_syntax(target, text)
    return text


def render_page(template: str, *, overrides: Path | None, **context: object) -> str:
    """A template that is not a target, such as the README of a ``snippet --all`` bundle."""
    return _render_template(_environment(overrides), template, **context)


def _render_template(environment: jinja2.Environment, template: str, **context: object) -> str:
    try:
        return environment.get_template(template).render(**context)
    except InvalidInput:
        raise
    except jinja2.TemplateError as exc:
        raise InvalidInput(f"template {template} failed: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a user's override can fail in any way Python can: name it
        raise InvalidInput(f"template {template} failed: {type(exc).__name__}: {exc}") from None


def _environment(overrides: Path | None) -> jinja2.Environment:
    search = [str(overrides)] if overrides is not None and overrides.is_dir() else []
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*search, str(packaged_templates())]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.policies["json.dumps_kwargs"] = {"sort_keys": False}  # keys in the order written
    environment.filters.update(FILTERS)
    return environment


def _check_syntax(target: Target, text: str) -> None:
    """Parse what can be parsed here, so a broken override fails now and names its template."""
    import yaml  # PyYAML is a dependency; imported here to keep start-up light

    try:
        if target.syntax == "json":
            json.loads(text)
        elif target.syntax == "yaml":
            list(yaml.safe_load_all(text))
        elif target.syntax == "python":
            compile(text, target.file_name, "exec")
    except (ValueError, SyntaxError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInput(f"template {target.template} rendered invalid {target.syntax}: {first}") from None
