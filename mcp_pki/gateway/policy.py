"""Per-role tool policy: which tools, resources and prompts a client certificate may use.

```yaml
default: deny            # allow | deny: for a client that no rule below names
roles:                   # the OU values of the client certificate (`issue client --role`)
  admin:   {tools: ["*"], resources: ["*"], prompts: ["*"]}
  analyst: {tools: ["query", "list_*"], resources: ["db://*"]}
clients:                 # by certificate name (subject CN)
  ci-bot:  {tools: ["run_tests"]}
```

`tools/call`, `resources/read`, `resources/subscribe`, `prompts/get` and
`completion/complete` (as the prompt or resource template it completes) are allowed by
name; list answers are filtered to the names a client may use.

A client's permissions are the union of the rules naming one of its roles or its name;
patterns are shell-style globs, matched case-sensitively (tool names are). A client that no
rule names gets everything (``default: allow``) or nothing (``deny``).
"""

from dataclasses import dataclass
from enum import Enum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from mcp_pki.errors import InvalidInput
from mcp_pki.mtls import Identity


class Kind(Enum):
    TOOL = "tools"
    RESOURCE = "resources"
    PROMPT = "prompts"


# Requests that use one named thing: the parameter holding its name.
GUARDED_METHODS: dict[str, tuple[Kind, str]] = {
    "tools/call": (Kind.TOOL, "name"),
    "resources/read": (Kind.RESOURCE, "uri"),
    "resources/subscribe": (Kind.RESOURCE, "uri"),
    "prompts/get": (Kind.PROMPT, "name"),
}
# completion/complete names what it completes in its `ref`: a prompt, or a resource template.
COMPLETION_REFS: dict[str, tuple[Kind, str]] = {
    "ref/prompt": (Kind.PROMPT, "name"),
    "ref/resource": (Kind.RESOURCE, "uri"),
}
# List answers: the list in the result and the field naming each entry.
LISTED_METHODS: dict[str, tuple[Kind, str, str]] = {
    "tools/list": (Kind.TOOL, "tools", "name"),
    "resources/list": (Kind.RESOURCE, "resources", "uri"),
    "resources/templates/list": (Kind.RESOURCE, "resourceTemplates", "uriTemplate"),
    "prompts/list": (Kind.PROMPT, "prompts", "name"),
}


def guarded_target(method: str, params: dict[str, Any]) -> tuple[Kind, object] | None:
    """For a request the policy guards, the kind of thing it uses and the name it gives
    (whatever the request holds there: a name that is not a string is refused); None for
    a request that uses no one named thing (initialize, the lists, ping...)."""
    if method == "completion/complete":
        ref = params.get("ref")
        ref_type = ref.get("type") if isinstance(ref, dict) else None
        kind_and_field = COMPLETION_REFS.get(ref_type) if isinstance(ref_type, str) else None
        if not isinstance(ref, dict) or kind_and_field is None:
            return Kind.PROMPT, None  # completes something unnamed: nothing a rule can allow
        return kind_and_field[0], ref.get(kind_and_field[1])
    guarded = GUARDED_METHODS.get(method)
    return None if guarded is None else (guarded[0], params.get(guarded[1]))


@dataclass(frozen=True, slots=True)
class Permissions:
    """Glob patterns per kind; `everything` for a client the policy does not restrict."""

    patterns: dict[Kind, tuple[str, ...]]
    everything: bool = False

    def allows(self, kind: Kind, name: str) -> bool:
        return self.everything or any(fnmatchcase(name, p) for p in self.patterns.get(kind, ()))


ALLOW_ALL = Permissions({}, everything=True)
DENY_ALL = Permissions({})


@dataclass(frozen=True, slots=True)
class Policy:
    default_allow: bool
    roles: dict[str, dict[Kind, tuple[str, ...]]]
    clients: dict[str, dict[Kind, tuple[str, ...]]]

    def permissions(self, identity: Identity) -> Permissions:
        rules = [self.roles[r] for r in identity.roles if r in self.roles]
        if identity.name in self.clients:
            rules.append(self.clients[identity.name])
        if not rules:
            return ALLOW_ALL if self.default_allow else DENY_ALL
        merged = {kind: tuple(p for rule in rules for p in rule.get(kind, ())) for kind in Kind}
        return Permissions(merged)

    def describe(self) -> str:
        return (f"default {'allow' if self.default_allow else 'deny'}, {len(self.roles)} role rule(s), "
                f"{len(self.clients)} client rule(s)")


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; every mistake is an `InvalidInput` naming its place."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidInput(f"cannot read the policy file {path}: {reason.lower()}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InvalidInput(f"the policy file {path} is not valid YAML{where}") from None
    except Exception as exc:  # noqa: BLE001 - whatever PyYAML raises, the file is at fault
        # PyYAML's constructors raise plain errors too: a date out of range (`2026-02-30`)
        # is a ValueError, a deeply nested list a RecursionError. Each is a bad file, not a
        # crash of the gateway reading it.
        raise InvalidInput(f"the policy file {path} is not valid YAML ({type(exc).__name__})") from None
    try:
        return parse_policy(data)
    except InvalidInput as exc:
        raise InvalidInput(f"the policy file {path}: {exc}") from None


def parse_policy(data: Any) -> Policy:
    if not isinstance(data, dict):
        raise InvalidInput("expected a mapping with default, roles and clients")
    unknown = set(data) - {"default", "roles", "clients"}
    if unknown:
        raise InvalidInput(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}: "
                           "expected default, roles and clients")
    default = data.get("default", "deny")
    if default not in ("allow", "deny"):
        raise InvalidInput(f"default must be allow or deny, not {default!r}")
    return Policy(default == "allow", _rules(data.get("roles"), "roles"), _rules(data.get("clients"), "clients"))


def _rules(section: Any, where: str) -> dict[str, dict[Kind, tuple[str, ...]]]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise InvalidInput(f"{where} must be a mapping of names to rules")
    rules: dict[str, dict[Kind, tuple[str, ...]]] = {}
    for name, rule in section.items():
        place = f"{where}.{name}"
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}: every name must be a non-empty string, not {name!r}")
        if rule is None:
            rule = {}
        if not isinstance(rule, dict):
            raise InvalidInput(f"{place} must be a mapping with tools, resources and/or prompts")
        known = {kind.value for kind in Kind}
        unknown = set(rule) - known
        if unknown:
            raise InvalidInput(f"{place}: unknown key(s) {', '.join(sorted(map(str, unknown)))}: "
                               "expected tools, resources and prompts")
        parsed: dict[Kind, tuple[str, ...]] = {}
        for kind in Kind:
            patterns = rule.get(kind.value, [])
            if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
                raise InvalidInput(f"{place}.{kind.value} must be a list of names or glob patterns")
            parsed[kind] = tuple(patterns)
        rules[name] = parsed
    return rules
