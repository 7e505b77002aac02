"""Rendering configuration snippets from Jinja templates.

Templates are data: they receive a small frozen view of one certificate (names, paths,
public PEMs) and the target's variables, never a private key. A file of the same name in
``<home>/templates`` overrides the packaged one.
"""

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jinja2

from mcp_pki.errors import InvalidInput
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
    cert_file: str
    key_file: str
    ca_file: str
    crl_file: str
    cert_pem: str  # the certificate then its intermediates, as in tls.crt
    ca_pem: str
    home: str  # the CA home folder, for commands run where the CA lives
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
    return {v.name: given.get(v.name, v.default or "") for v in target.variables}


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
    try:
        text = environment.get_template(target.template).render(cert=view, var=values, target=target)
    except jinja2.TemplateError as exc:
        raise InvalidInput(f"template {target.template} failed: {exc}") from None
    _check_syntax(target, text)
    return text


def render_page(template: str, *, overrides: Path | None, **context: object) -> str:
    """A template that is not a target, such as the README of a ``snippet --all`` bundle."""
    try:
        return _environment(overrides).get_template(template).render(**context)
    except jinja2.TemplateError as exc:
        raise InvalidInput(f"template {template} failed: {exc}") from None


def _environment(overrides: Path | None) -> jinja2.Environment:
    search = [str(overrides)] if overrides is not None and overrides.is_dir() else []
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*search, str(packaged_templates())]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.policies["json.dumps_kwargs"] = {"sort_keys": False}  # keys in the order written
    environment.filters["shell"] = shlex.quote  # a path with a space stays one word
    environment.filters["shell_words"] = _shell_words
    environment.filters["url_host"] = lambda url: _split_url(url)[0]
    environment.filters["url_port"] = lambda url: _split_url(url)[1]
    environment.filters["http_upstream"] = _http_upstream
    environment.filters["cron"] = lambda text: text.replace("%", "\\%")  # cron reads % as a newline
    environment.filters["systemd"] = lambda text: text.replace("%", "%%").replace("$", "$$")  # specifiers
    return environment


def _shell_words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise InvalidInput(f"cannot split {text!r} into shell words: {exc}") from None


def _split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"not an http(s) URL: {url!r}")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _http_upstream(url: str) -> str:
    """An upstream that Envoy's cluster and Caddy's reverse_proxy can take: http://host:port only."""
    parts = urlsplit(url)
    _split_url(url)
    if parts.scheme != "http" or parts.path not in ("", "/") or parts.query:
        raise InvalidInput(f"upstream must be http://HOST:PORT with no path (got {url!r})")
    return url.rstrip("/")


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
