"""The team roster: who holds a client certificate, and which MCP servers have one.

A roster is YAML with three sections, ``defaults``, ``servers`` and ``clients``. It is read
whole and checked whole before anything is signed: every problem is collected with the
entry's position and line, so a roster with ten typos is fixed in one round, and a typo can
never silently drop a teammate's role (unknown keys and duplicate keys are errors).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from mcp_pki.durations import parse_duration
from mcp_pki.errors import InvalidInput
from mcp_pki.pki import keys, profiles
from mcp_pki.pki.csr import VerifiedRequest, load_csr
from mcp_pki.pki.names import SubjectAltNames, validate_name, validate_role
from mcp_pki.pki.profiles import CertificateKind

_TOP_KEYS = {"defaults", "servers", "clients"}
_DEFAULT_KEYS = {"validity", "key_type"}
_COMMON_KEYS = {"name", "uri", "owner", "validity", "key_type", "csr"}
_ENTRY_KEYS = {
    CertificateKind.SERVER: _COMMON_KEYS | {"dns", "ip", "allow_wildcard"},
    CertificateKind.CLIENT: _COMMON_KEYS | {"email", "roles"},
}
_SECTION = {CertificateKind.SERVER: "servers", CertificateKind.CLIENT: "clients"}
# More than this many problems are summarised: the first ones are what to fix first.
_MAX_REPORTED = 20
# A problem quotes the value at fault; a value of a megabyte is quoted by its beginning.
_MAX_PROBLEM = 300


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """One certificate the roster asks for, validated."""

    kind: CertificateKind
    name: str
    position: str  # e.g. "clients[3] (line 12)": how errors and plans point at it
    sans: SubjectAltNames
    roles: tuple[str, ...]
    owner: str | None
    validity: timedelta
    key_type: keys.KeyType
    csr: VerifiedRequest | None = None


@dataclass(frozen=True, slots=True)
class Roster:
    source: str
    entries: tuple[RosterEntry, ...]  # those without problems
    # What is wrong with the others, by position: the plan adds what only the inventory and
    # the CA can tell (names the CA may not sign, output folders) and reports it all at once.
    problems: tuple[str, ...] = ()


class _Problems:
    """Every problem found, each with where it is."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def check(self, where: str, function: Callable[[], Any]) -> Any:
        """Run one validation; on a user error note it and return None."""
        try:
            return function()
        except InvalidInput as exc:
            self.add(where, str(exc))
            return None


def roster_error(source: str, problems: list[str]) -> InvalidInput:
    """One error line naming every problem (the first twenty, and how many more)."""
    shown = [p if len(p) <= _MAX_PROBLEM else f"{p[:_MAX_PROBLEM]}... ({len(p)} characters)"
             for p in problems[:_MAX_REPORTED]]
    more = f"; and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    noun = "problem" if len(problems) == 1 else "problems"
    return InvalidInput(f"roster {source} has {len(problems)} {noun}: {'; '.join(shown)}{more}")


def parse_roster(text: bytes, *, source: str, base_dir: Path) -> Roster:
    """Validate a roster document; CSR files are read relative to `base_dir`. Refuses a
    roster with any problem, naming each."""
    roster = read_roster(text, source=source, base_dir=base_dir)
    if roster.problems:
        raise roster_error(source, list(roster.problems))
    return roster


def read_roster(text: bytes, *, source: str, base_dir: Path) -> Roster:
    """The roster's valid entries and the problems of the others. A document that is not
    a roster at all (not YAML, not a mapping, aliases, duplicate keys) is refused here."""
    document, lines = _load(text, source)
    problems = _Problems()
    if not isinstance(document, dict):
        raise roster_error(source, ["the document must be a mapping with servers: and clients: lists"])
    for key in sorted(set(document) - _TOP_KEYS, key=str):
        problems.add(f"line {lines.get((key,), '?')}", f"unknown key {key!r} (expected {', '.join(sorted(_TOP_KEYS))})")
    defaults = _defaults(document.get("defaults"), problems, lines)
    entries: list[RosterEntry] = []
    seen: dict[str, str] = {}
    for kind in (CertificateKind.SERVER, CertificateKind.CLIENT):
        section = _SECTION[kind]
        items = document.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            problems.add(f"{section} (line {lines.get((section,), '?')})", "must be a list of entries")
            continue
        for index, item in enumerate(items):
            where = f"{section}[{index}] (line {lines.get((section, index), '?')})"
            entry = _entry(kind, item, where, defaults, base_dir, problems)
            # One folder per NAME under --out-root, and a NAME is how people refer to it:
            # checked whatever else is wrong with the entries, so it is seen in this round.
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str):
                position = entry.position if entry else f"{where} {_shortened(name)}"
                if name in seen:
                    problems.add(position, f"duplicate name {_shortened(name)!r} (also {seen[name]})")
                    continue
                seen[name] = position
            if entry is not None:
                entries.append(entry)
    if "servers" not in document and "clients" not in document:
        problems.add("roster", "it lists no servers: and no clients: (write an empty list to mean none)")
    return Roster(source, tuple(entries), tuple(problems.items))


def _load(text: bytes, source: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The document and the line of each top-level key and list entry (for messages).

    libyaml's loader is used where available: a 10,000-entry roster then loads in a
    fraction of a second. Duplicate mapping keys, which YAML loaders silently collapse, are
    refused here, and so are aliases: a roster is a list of people, written out, and an
    alias can make a small file stand for an endless (or cyclic) one.
    """
    import yaml

    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        document_text = text.decode("utf-8")
        aliases = _aliases(document_text, loader_class)
        if aliases:
            raise roster_error(source, aliases)
        loader = loader_class(document_text)
        try:
            node = loader.get_single_node()
            duplicates = _duplicate_keys(node) if node is not None else []
            document = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        raise roster_error(source, ["it is not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise roster_error(source, [f"{where}: not valid YAML: {problem}"]) from None
    if duplicates:
        raise roster_error(source, duplicates)
    if document is None:
        raise roster_error(source, ["it is empty"])
    return document, _lines(node)


def _aliases(text: str, loader_class: Any) -> list[str]:
    """Where the roster uses an alias. A roster is a list of people written out; an alias
    lets a few lines stand for an endless or cyclic document, so it is refused before the
    document is composed. Only a roster with a ``*`` in it needs the extra parse."""
    if "*" not in text:
        return []
    import yaml

    found: dict[str, None] = {}  # in order, each line once
    for event in yaml.parse(text, Loader=loader_class):
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark else "?"
            found[f"line {line}: alias *{event.anchor} refused (a roster cannot use anchors and aliases: "
                  "write each entry out)"] = None
    return list(found)


def _duplicate_keys(node: Any) -> list[str]:
    import yaml

    found: list[str] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            keys_seen: set[str] = set()
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys_seen:
                        found.append(f"line {key.start_mark.line + 1}: duplicate key {key.value!r}")
                    keys_seen.add(key.value)
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return sorted(found)


def _lines(node: Any) -> dict[tuple[Any, ...], int]:
    import yaml

    lines: dict[tuple[Any, ...], int] = {}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        lines[(key.value,)] = key.start_mark.line + 1
        if isinstance(value, yaml.SequenceNode):
            for index, item in enumerate(value.value):
                lines[(key.value, index)] = item.start_mark.line + 1
    return lines


@dataclass(frozen=True, slots=True)
class _Defaults:
    validity: timedelta = profiles.LEAF_VALIDITY
    key_type: keys.KeyType = keys.KeyType.P256


def _defaults(value: Any, problems: _Problems, lines: dict[tuple[Any, ...], int]) -> _Defaults:
    where = f"defaults (line {lines.get(('defaults',), '?')})"
    if value is None:
        return _Defaults()
    if not isinstance(value, dict):
        problems.add(where, "must be a mapping such as {validity: 90d, key_type: p256}")
        return _Defaults()
    for key in sorted(set(value) - _DEFAULT_KEYS, key=str):
        problems.add(where, f"unknown key {key!r} (expected {', '.join(sorted(_DEFAULT_KEYS))})")
    validity = _text(value, "validity", where, problems)
    key_type = _text(value, "key_type", where, problems)
    parsed_validity = problems.check(where, lambda: parse_duration(validity)) if validity else None
    parsed_key_type = problems.check(where, lambda: keys.parse_key_type(key_type)) if key_type else None
    return _Defaults(parsed_validity or profiles.LEAF_VALIDITY, parsed_key_type or keys.KeyType.P256)


def _entry(
    kind: CertificateKind, item: Any, where: str, defaults: _Defaults, base_dir: Path, problems: _Problems,
) -> RosterEntry | None:
    if not isinstance(item, dict):
        problems.add(where, "must be a mapping with at least name:")
        return None
    before = len(problems.items)
    name = _text(item, "name", where, problems)
    if name is not None:
        where = f"{where} {_shortened(name)}"
    known = _ENTRY_KEYS[kind]
    for key in sorted(set(item) - known, key=str):
        hint = _suggest(str(key), known)
        problems.add(where, f"unknown key {key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    if name is None:
        if "name" not in item:
            problems.add(where, "name: is required")
        return None
    problems.check(where, lambda: validate_name(name))
    owner = _text(item, "owner", where, problems)
    if owner is not None:
        problems.check(where, lambda: validate_name(owner))
    allow_wildcard = item.get("allow_wildcard", False)
    if not isinstance(allow_wildcard, bool):
        problems.add(where, "allow_wildcard: must be true or false")
        allow_wildcard = False
    sans = _sans(item, where, problems, allow_wildcard=allow_wildcard)
    if kind is CertificateKind.SERVER and sans is not None and not (sans.dns or sans.ips):
        problems.add(where, "a server needs at least one dns: or ip: name")
    roles: dict[str, None] = {}
    for role in _texts(item, "roles", where, problems):
        if problems.check(where, partial(validate_role, role)):
            roles[role] = None
    validity_text = _text(item, "validity", where, problems)
    validity = problems.check(where, lambda: parse_duration(validity_text)) if validity_text else None
    key_text = _text(item, "key_type", where, problems)
    key_type = problems.check(where, lambda: keys.parse_key_type(key_text)) if key_text else None
    csr_text = _text(item, "csr", where, problems)
    csr = None
    if csr_text is not None:
        if key_text is not None:
            problems.add(where, "key_type: cannot be used with csr: (the requester chose the key)")
        csr = problems.check(where, lambda: _read_csr(base_dir / csr_text))
    if sans is None or len(problems.items) > before:
        return None
    return RosterEntry(
        kind=kind, name=name, position=where, sans=sans, roles=tuple(roles),
        # A teammate answers for their own certificate unless the roster says who does,
        # as with `issue client`; servers have no owner unless one is named.
        owner=owner if owner is not None else (name if kind is CertificateKind.CLIENT else None),
        validity=validity or defaults.validity, key_type=key_type or defaults.key_type, csr=csr,
    )


def _sans(item: dict[Any, Any], where: str, problems: _Problems, *, allow_wildcard: bool) -> SubjectAltNames | None:
    """The entry's names; when they do not parse, each bad one is reported, not the first."""
    given = {key: _texts(item, key, where, problems) for key in ("dns", "ip", "uri", "email")}

    def parse(dns: tuple[str, ...], ip: tuple[str, ...], uri: tuple[str, ...], email: tuple[str, ...]) -> SubjectAltNames:
        return SubjectAltNames.parse(dns=dns, ips=ip, uris=uri, emails=email, allow_wildcard=allow_wildcard)

    try:
        return parse(**given)
    except InvalidInput as exc:
        before = len(problems.items)
        for key, values in given.items():
            for value in values:
                alone: dict[str, tuple[str, ...]] = dict.fromkeys(given, ()) | {key: (value,)}
                problems.check(where, partial(parse, **alone))
        if len(problems.items) == before:  # each name is fine; together they are not (too many)
            problems.add(where, str(exc))
        return None


def _shortened(name: str) -> str:
    return name if len(name) <= 64 else f"{name[:64]}..."


def _read_csr(path: Path) -> VerifiedRequest:
    from mcp_pki.services.files import read_input

    return load_csr(read_input(path, "CSR"))


def _text(mapping: dict[Any, Any], key: str, where: str, problems: _Problems) -> str | None:
    value = mapping.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(where, f"{key}: must be text, not {value!r} (quote it)")
        return None
    return value


def _texts(mapping: dict[Any, Any], key: str, where: str, problems: _Problems) -> tuple[str, ...]:
    value = mapping.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(where, f"{key}: must be a list of text values")
        return ()
    return tuple(value)


def _suggest(key: str, known: set[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None
