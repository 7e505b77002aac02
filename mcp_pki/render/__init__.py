"""Rendering configuration snippets from Jinja templates.

Templates are data: they receive a small frozen view of one certificate (names, paths,
public PEMs) and the target's variables, never a private key. A file of the same name in
``<home>/templates`` overrides the packaged one.

Three layers keep a value in its place: every value is validated first (the view refuses a
control character in any field, and each ``--var`` is checked for its kind); every
``{{ ... }}`` must go through the filter of its file's language, or rendering fails; and
templates, the user's overrides included, run in Jinja's sandbox, where they can reach
neither Python's internals nor the environment.
"""

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

import jinja2
import jinja2.sandbox

from mcp_pki.errors import InvalidInput
from mcp_pki.render import values as checks
from mcp_pki.render.filters import FILTERS, finalize
from mcp_pki.render.targets import TARGETS, Target, Variable, find_target

# PEM as we store it: armour lines and base64, nothing a template could be tricked by.
_PEM = re.compile(r"(?:-----(?:BEGIN|END) [A-Z0-9 ]+-----\n|[A-Za-z0-9+/=]{1,76}\n)+")

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

    def __post_init__(self) -> None:
        """A row of the inventory is text someone wrote: refuse what no template may print."""
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("cert_pem", "ca_pem"):
                if not _PEM.fullmatch(value):
                    raise InvalidInput(f"certificate {self.serial!r}: {item.name} is not PEM text")
                continue
            for text in value if isinstance(value, tuple) else (value,):
                if isinstance(text, str):
                    checks.refuse_control_characters(text, f"certificate {self.serial!r}: {item.name}")

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
    return {v.name: check_value(v, given.get(v.name, v.default or "")) for v in target.variables}


def check_value(variable: Variable, value: str) -> str:
    """The value in its canonical form, or an error: a value that would render a config which
    fails later, somewhere else, or that would leave its place in the file."""
    what = f"--var {variable.name}"
    checks.refuse_control_characters(value, what)
    if len(value) > checks.MAX_VALUE_LENGTH:
        raise InvalidInput(f"{what}: at most {checks.MAX_VALUE_LENGTH} characters")
    if not value and variable.kind != "port":
        return value  # an optional value left empty: the template's default applies
    if variable.kind == "port":
        return checks.check_port(value, what)
    if variable.kind == "address":
        return checks.check_address(value, what)
    if variable.kind == "https-url":
        return checks.check_url(value, what, scheme="https", path=True)
    if variable.kind == "upstream":
        return checks.check_url(value, what, scheme="http", path=False)
    if variable.kind == "path":
        return checks.check_absolute_path(value, what)
    if variable.kind == "k8s-label":
        return checks.check_k8s_label(value, what)
    if variable.kind == "k8s-name":
        return checks.check_k8s_name(value, what)
    if variable.kind == "server-name":
        return checks.check_server_name(value, what)
    if variable.kind == "flag":
        if value not in ("true", "false"):
            raise InvalidInput(f"{what}={value!r}: must be true or false")
        return value
    assert variable.kind == "text", variable.kind
    return value


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
    """One sandboxed environment for packaged templates and overrides alike: an override is
    a file anyone with write access to the home can drop, and ``snippet`` is a read-only
    command that must not hand it the passphrase in the environment or a shell."""
    search = [str(overrides)] if overrides is not None and overrides.is_dir() else []
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader([*search, str(packaged_templates())]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # HTML escaping is for HTML: each value gets its format's filter
        finalize=finalize,
    )
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
