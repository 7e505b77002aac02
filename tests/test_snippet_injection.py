"""snippet: no value leaves its place in the file it is rendered into.

Every target is rendered twice: once with plain marker values, once with hostile ones (quotes,
$(...), backticks, semicolons, braces, %, backslashes, non-ASCII). Each output is parsed in
its own language by a small parser written to that language's rules (the shell, nginx, the
Caddyfile, systemd units, JavaScript) or by the real one (json, yaml.safe_load, Python's ast,
sh -n), and must be the plain rendering with each marker replaced by its hostile value: the
same commands, directives, keys and words, nothing more. Values no format can hold (control
characters, URLs with userinfo, IPv6 zone ids...) are refused before rendering, with one clean
``Error:`` line. User override templates render in Jinja's sandbox.
"""

import ast
import json
import re
import shlex
import shutil
import string
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from mcp_pki.errors import InvalidInput
from mcp_pki.render import TARGETS, CertificateView, render
from mcp_pki.render.filters import ESCAPING, shell, systemd_word, to_json
from mcp_pki.render.filters import yaml as yaml_filter
from tests.conftest import PASSPHRASE, Cli, Snapshot, assert_clean_error
from tests.test_tls_revocation import issue_client, issue_server

PEM = "-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----\n"

# ---------------------------------------------------------------------------- parsers
# Each returns a structure in which every value is decoded: two renderings mean the same
# thing exactly when their structures are equal.

Word = tuple[tuple[str, str], ...]  # ("lit", text) and ("exp", "$(...)") segments


def sh_tokens(text: str) -> list[Any]:
    """POSIX shell words, operators, newlines and here-documents. Quoting is decoded; an
    expansion ($x, ${x}, $(...), `...`) outside single quotes is kept as an ("exp", raw) segment,
    so a value that starts a command substitution shows up as one."""
    tokens: list[Any] = []
    segments: list[tuple[str, str]] | None = None
    pending: list[tuple[str, bool]] = []  # here-document delimiters waiting for the next line
    i, n = 0, len(text)

    def add(kind: str, value: str) -> None:
        nonlocal segments
        if segments is None:
            segments = []
        if kind == "lit" and segments and segments[-1][0] == "lit":
            segments[-1] = ("lit", segments[-1][1] + value)
        else:
            segments.append((kind, value))

    def flush() -> None:
        nonlocal segments
        if segments is not None:
            tokens.append(tuple(segments))
            segments = None

    def expansion(at: int) -> int:
        """The end of the expansion starting at `at` ($ or backtick)."""
        if text[at] == "`":
            return text.index("`", at + 1) + 1
        if at + 1 < n and text[at + 1] in "({":
            opening, closing, depth, j = text[at + 1], ")" if text[at + 1] == "(" else "}", 0, at + 1
            while True:
                depth += text[j] == opening
                depth -= text[j] == closing
                j += 1
                if depth == 0:
                    return j
        j = at + 1
        while j < n and (text[j].isalnum() or text[j] == "_"):
            j += 1
        return j if j > at + 1 else at + 2  # $? $# $@ and the like

    while i < n:
        c = text[i]
        if c == "#" and segments is None:
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c == "\n":
            flush()
            tokens.append("\n")
            i += 1
            for delimiter, _quoted in pending:
                end = text.find(f"\n{delimiter}\n", i - 1)
                assert end >= 0, f"here-document {delimiter} is not closed"
                tokens.append(("heredoc", delimiter, text[i:end + 1]))
                i = end + len(delimiter) + 2
            pending = []
        elif c in " \t":
            flush()
            i += 1
        elif c in ";&|<>()":
            flush()
            operator = text[i:i + 2] if text[i:i + 2] in ("&&", "||", ";;", "<<", ">>", ">&", "<&") else c
            i += len(operator)
            tokens.append(operator)
            if operator == "<<":
                while text[i] == " ":
                    i += 1
                j = i
                while j < n and not text[j].isspace():
                    j += 1
                raw = text[i:j]
                pending.append((raw.strip("'\""), raw != raw.strip("'\"")))
                tokens.append(("delimiter", raw))
                i = j
        elif c == "'":
            end = text.index("'", i + 1)
            add("lit", text[i + 1:end])
            i = end + 1
        elif c == '"':
            add("lit", "")
            i += 1
            while text[i] != '"':
                if text[i] == "\\" and text[i + 1] in '$`"\\\n':
                    add("lit", text[i + 1] if text[i + 1] != "\n" else "")
                    i += 2
                elif text[i] in "$`" and i + 1 < n and (text[i] == "`" or text[i + 1] in "({_" or text[i + 1].isalnum()):
                    end = expansion(i)
                    add("exp", text[i:end])
                    i = end
                else:
                    add("lit", text[i])
                    i += 1
            i += 1
        elif c == "\\":
            if text[i + 1] != "\n":
                add("lit", text[i + 1])
            i += 2
        elif c in "$`" and i + 1 < n and (c == "`" or text[i + 1] in "({_?#@*!$" or text[i + 1].isalnum()):
            end = expansion(i)
            add("exp", text[i:end])
            i = end
        else:
            add("lit", c)
            i += 1
    flush()
    return tokens


def nginx_tree(text: str) -> list[Any]:
    """nginx's configuration grammar (ngx_conf_read_token): directives of decoded arguments,
    ending in ; or in a { block }."""
    escapes = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}
    tokens: list[str | tuple[str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in ";{}":
            tokens.append((c,))
            i += 1
        else:
            quote = c if c in "\"'" else None
            i += quote is not None
            value = []
            while i < n:
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    value.append(escapes.get(text[i + 1], "\\" + text[i + 1]))
                    i += 2
                    continue
                if quote and ch == quote:
                    i += 1
                    break
                if not quote and (ch.isspace() or ch in ";}" or (ch == "{" and not (value and value[-1] == "$"))):
                    break
                value.append(ch)
                i += 1
            tokens.append("".join(value))

    def block(at: int) -> tuple[list[Any], int]:
        directives: list[Any] = []
        arguments: list[str] = []
        while at < len(tokens):
            token = tokens[at]
            if token == (";",):
                directives.append(tuple(arguments))
                arguments = []
            elif token == ("{",):
                children, at = block(at + 1)
                directives.append((tuple(arguments), children))
                arguments = []
            elif token == ("}",):
                assert not arguments, arguments
                return directives, at
            else:
                assert isinstance(token, str)
                arguments.append(token)
            at += 1
        assert not arguments, f"unterminated directive {arguments}"
        return directives, at

    tree, _ = block(0)
    return tree


def caddy_lines(text: str) -> list[tuple[int, tuple[str, ...]]]:
    """Caddyfile tokens by line (Caddy's lexer: "..." where \\" is the only escape, `...` raw,
    # comments at the start of a token): a line is a directive or a brace."""
    lines: dict[int, list[str]] = {}
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        else:
            start_line, value = line, []
            if c == '"':
                i += 1
                while text[i] != '"':
                    if text[i] == "\\" and text[i + 1] == '"':
                        i += 1
                    line += text[i] == "\n"
                    value.append(text[i])
                    i += 1
                i += 1
            elif c == "`":
                end = text.index("`", i + 1)
                value.append(text[i + 1:end])
                line += text[i + 1:end].count("\n")
                i = end + 1
            else:
                while i < n and not text[i].isspace():
                    value.append(text[i])
                    i += 1
            lines.setdefault(start_line, []).append("".join(value))
    return [(number, tuple(words)) for number, words in sorted(lines.items())]


_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
              "\\": "\\", '"': '"', "'": "'", "s": " "}


def systemd_words(value: str) -> list[str]:
    """An Exec line as systemd splits it: quotes, C escapes, $$ and %% (a lone $VAR or
    %specifier is kept marked, so that one a value smuggled in would show)."""
    words: list[str] = []
    i, n = 0, len(value)
    while i < n:
        if value[i].isspace():
            i += 1
            continue
        word: list[str] = []
        quote = None
        while i < n and (quote or not value[i].isspace()):
            c = value[i]
            if quote is None and c in "\"'":
                quote = c
            elif c == quote:
                quote = None
            elif c == "\\":
                e = value[i + 1]
                if e == "x":
                    word.append(chr(int(value[i + 2:i + 4], 16)))
                    i += 2
                elif e in "uU":
                    width = 4 if e == "u" else 8
                    word.append(chr(int(value[i + 2:i + 2 + width], 16)))
                    i += width
                else:
                    word.append(_C_ESCAPES[e])
                i += 1
            elif c in "%$":
                if value[i + 1:i + 2] == c:
                    word.append(c)
                    i += 1
                else:
                    word.append("\0" + c)  # a specifier or a variable: marked
            else:
                word.append(c)
            i += 1
        assert quote is None, f"unclosed quote in {value!r}"
        words.append("".join(word))
    return words


def systemd_unit(text: str) -> list[tuple[str, str, Any]]:
    """A unit file: (section, key, value) in order; a line ending in \\ continues; Exec*
    values split into words, other values with %% read as %."""
    entries: list[tuple[str, str, Any]] = []
    section = ""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a unit line: {line!r}"
        key, value = key.strip(), value.strip()
        if key.startswith("Exec"):
            entries.append((section, key, tuple(systemd_words(value))))
        else:
            assert "%" not in value.replace("%%", ""), f"a specifier in {line!r}"
            entries.append((section, key, value.replace("%%", "%")))
    return entries


def js_tokens(text: str) -> list[tuple[str, Any]]:
    """JavaScript tokens as our client script uses them: strings decoded, template literals
    raw, comments dropped (a line break ends a // comment: U+2028 and U+2029 too)."""
    tokens: list[tuple[str, Any]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("//", i):
            ends = [j for j in (text.find(b, i) for b in "\n\r\u2028\u2029") if j >= 0]
            i = min(ends, default=n)
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        elif c in "\"'":
            j = i + 1
            while text[j] != c:
                assert text[j] not in "\n\r\u2028\u2029", "a line break inside a string literal"
                j += 2 if text[j] == "\\" else 1
            raw = text[i:j + 1]
            tokens.append(("str", json.loads(raw) if c == '"' else raw))
            i = j + 1
        elif c == "`":
            j = text.index("`", i + 1)
            tokens.append(("template", text[i:j + 1]))
            i = j + 1
        elif c.isalnum() or c in "_$":
            j = i
            while j < n and (text[j].isalnum() or text[j] in "_$"):
                j += 1
            tokens.append(("word", text[i:j]))
            i = j
        else:
            tokens.append(("punct", c))
            i += 1
    return tokens


# ------------------------------------------------------------------ comparing two renderings


class Substitution:
    """Replaces each plain marker by its hostile value, in one pass, longest marker first."""

    def __init__(self, pairs: dict[str, str]) -> None:
        self.pairs = pairs
        self.pattern = re.compile("|".join(map(re.escape, sorted(pairs, key=len, reverse=True))))

    def text(self, value: str) -> str:
        return self.pattern.sub(lambda m: self.pairs[m.group(0)], value)

    def tree(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return int(self.pairs.get(str(value), value))
        if isinstance(value, dict):
            return {self.text(k): self.tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.tree(v) for v in value)
        raise AssertionError(type(value))

    def python(self, module: ast.AST) -> str:
        for node in ast.walk(module):
            if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)) and not isinstance(node.value, bool):
                node.value = self.tree(node.value)
        return ast.dump(module)


def _lit(word: Any, substitution: Substitution | None) -> Any:
    """A shell word with the markers replaced in its literal parts, never in its expansions."""
    if substitution is None or not (isinstance(word, tuple) and word and isinstance(word[0], tuple)):
        return word
    return tuple((kind, substitution.text(v) if kind == "lit" else v) for kind, v in word)


def shell_code(text: str, verbatim: str, substitution: Substitution | None) -> Any:
    """Shell code whose tail is `verbatim`, a value that is shell code by design (the reload
    command): that tail must be there as written; the rest must parse as the template says."""
    ends = bool(verbatim) and text.endswith(verbatim)
    return ends, [_lit(token, substitution) for token in sh_tokens(text.removesuffix(verbatim) if ends else text)]


def _exec_words(words: tuple[str, ...], verbatim: str, substitution: Substitution | None) -> Any:
    subst = substitution.text if substitution else (lambda value: value)
    if len(words) >= 3 and words[-2] == "-c":  # /bin/sh -c SCRIPT: the script is shell code too
        return tuple(map(subst, words[:-1])), shell_code(words[-1], verbatim, substitution)
    return tuple(map(subst, words))


def _unit_structure(text: str, verbatim: str, substitution: Substitution | None) -> list[Any]:
    return [
        (section, key, _exec_words(value, verbatim, substitution) if isinstance(value, tuple)
         else substitution.text(value) if substitution else value)
        for section, key, value in systemd_unit(text)
    ]


def _shell_structure(text: str, verbatim: str, substitution: Substitution | None) -> list[Any]:
    """Shell tokens with here-documents parsed by what they hold (systemd units, Python)."""
    structure: list[Any] = []
    for token in sh_tokens(text):
        if isinstance(token, tuple) and token and token[0] == "heredoc":
            _, delimiter, body = token
            if delimiter == "UNIT":
                structure.append(_unit_structure(body, verbatim, substitution))
            elif delimiter == "PY":
                module = ast.parse(body)
                structure.append(("python", substitution.python(module) if substitution else ast.dump(module)))
            else:
                structure.append(("heredoc", substitution.text(body) if substitution else body))
        else:
            structure.append(_lit(token, substitution))
    return structure


def cron_command(text: str) -> str | None:
    """The command of the crontab line in a comment, as cron reads it (vixie cron: \\% is a %,
    a bare % ends the command and starts its standard input)."""
    found = [line for line in text.splitlines() if line.startswith("# 17 3 * * * ")]
    if not found:
        return None
    command, escaped = [], False
    for character in found[0].removeprefix("# 17 3 * * * "):
        if escaped:
            if character == "%":
                command[-1] = "%"
            else:
                command.append(character)
            escaped = False
            continue
        assert character != "%", "a bare % cuts the cron command short"
        command.append(character)
        escaped = character == "\\"
    return "".join(command)


def structure(syntax: str, text: str, substitution: Substitution | None = None, *, verbatim: str = "") -> Any:
    """What `text` says in `syntax`; with a substitution, what it says once the markers are
    replaced (applied to decoded values, never to the syntax around them)."""
    subst: Callable[[Any], Any] = substitution.tree if substitution else (lambda value: value)
    if syntax == "json":
        return subst(json.loads(text))
    if syntax == "yaml":
        return subst(list(yaml.safe_load_all(text)))
    if syntax == "python":
        module = ast.parse(text)
        return substitution.python(module) if substitution else ast.dump(module)
    if syntax == "javascript":
        return subst(js_tokens(text))
    if syntax == "nginx":
        return subst(nginx_tree(text))
    if syntax == "caddy":
        return subst(caddy_lines(text))
    if syntax == "systemd":
        return _unit_structure(text, verbatim, substitution)
    if syntax == "sh":
        structure = _shell_structure(text, verbatim, substitution)
        cron = cron_command(text)
        return structure if cron is None else [*structure, ("cron", shell_code(cron, verbatim, substitution))]
    raise AssertionError(f"no parser for {syntax}")


def sh_accepts(text: str, tmp_path: Path) -> None:
    script = tmp_path / "rendered.sh"
    script.write_text(text, encoding="utf-8")
    checked = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stderr


# ------------------------------------------------------------------------ the two renderings

PLAIN = {
    "folder": "/PLAINDIR", "home": "/PLAINHOME", "home_owner": "plainowner", "tool": "/PLAINTOOL/mcp-pki",
    "name": "plainname", "url": "https://plainhost.example:8441/PLAINPATH", "upstream": "http://127.0.0.9:8009",
    "upstream_host": "127.0.0.9", "upstream_port": "8009", "bind": "127.0.0.8", "port": "8442",
    "reload": "PLAINRELOAD", "passphrase_file": "/PLAINPASS", "command": "/PLAINCMD", "entry": "PLAINENTRY",
    "server_command": "PLAINCOMMAND", "arg1": "PLAINARG1", "arg2": "PLAINARG2",
    "namespace": "plainns", "secret": "plainsecret", "policy": "/PLAINPOLICY",
}


def view_of(values: dict[str, str], *, kind: str, local: bool = False) -> CertificateView:
    folder = values["folder"]
    return CertificateView(
        name=values["name"], kind=kind, serial="abcdef0123", subject=f"CN={values['name']}",
        dns_names=("plaindns.example",), ip_addresses=("127.0.0.1",), uris=(), emails=(), roles=("ops",),
        not_after="2031-01-01T00:00:00Z", folder=folder, local=local, cert_file=f"{folder}/tls.crt",
        key_file=f"{folder}/tls.key", ca_file=f"{folder}/ca.crt", crl_file=f"{folder}/crl.pem",
        cert_pem=PEM, ca_pem=PEM, home=values["home"], home_owner=values["home_owner"], tool=values["tool"],
        ca_key_encrypted=True,
    )


def variables_of(values: dict[str, str]) -> dict[str, str]:
    return {
        "url": values["url"], "upstream": values["upstream"], "bind": values["bind"], "port": values["port"],
        "reload": values["reload"], "passphrase_file": values["passphrase_file"], "namespace": values["namespace"],
        "secret": values["secret"], "name": values["entry"], "command": values["command"],
        "args": shlex.join([values["arg1"], values["arg2"]]), "portable": "false", "policy": values["policy"],
    }


def render_target(target_name: str, values: dict[str, str], *, kind: str, local: bool = False) -> str:
    target = next(t for t in TARGETS if t.name == target_name)
    given = variables_of(values)
    mine = {v.name: given[v.name] for v in target.variables}
    if target_name == "server-env":
        mine["command"] = values["server_command"]
    return render(target, view_of(values, kind=kind, local=local), mine, overrides=None)


def assert_same_meaning(target_name: str, hostile: dict[str, str], tmp_path: Path, *, local: bool = False) -> None:
    """The hostile rendering says what the plain one says, with the hostile values in place."""
    target = next(t for t in TARGETS if t.name == target_name)
    pairs = {PLAIN[key]: hostile[key] for key in PLAIN}
    # nginx's listen: host:port, an IPv6 host in brackets.
    address = f"[{hostile['bind']}]" if ":" in hostile["bind"] else hostile["bind"]
    pairs[f"{PLAIN['bind']}:{PLAIN['port']}"] = f"{address}:{hostile['port']}"
    # A Host header (Envoy's host_rewrite_literal): host:port, an IPv6 host in brackets.
    host = f"[{hostile['upstream_host']}]" if ":" in hostile["upstream_host"] else hostile["upstream_host"]
    pairs[f"{PLAIN['upstream_host']}:{PLAIN['upstream_port']}"] = f"{host}:{hostile['upstream_port']}"
    substitution = Substitution(pairs)
    for kind in target.kinds:
        plain_text = render_target(target_name, PLAIN, kind=kind, local=local)
        hostile_text = render_target(target_name, hostile, kind=kind, local=local)
        expected = structure(target.syntax, plain_text, substitution, verbatim=PLAIN["reload"])
        assert structure(target.syntax, hostile_text, verbatim=hostile["reload"]) == expected, hostile_text
        if target.syntax == "sh":
            sh_accepts(hostile_text, tmp_path)
        if target.syntax == "javascript" and shutil.which("node"):
            script = tmp_path / "rendered.mjs"
            script.write_text(hostile_text, encoding="utf-8")
            checked = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True, timeout=30,
                                     check=False)
            assert checked.returncode == 0, checked.stderr


# ---------------------------------------------------------------------- hostile value makers

# Everything a path or a word may hold once control characters are refused: quotes, shell,
# nginx, Caddy, systemd and cron metacharacters, escapes, non-ASCII letters, astral symbols.
HOSTILE_CHARACTERS = string.ascii_letters + string.digits + " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" + "éß中ש😀"
_text = st.text(alphabet=HOSTILE_CHARACTERS, min_size=1, max_size=24)
_path = _text.map(lambda t: "/" + t)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_host = st.one_of(
    st.lists(_label, min_size=1, max_size=3).map(".".join).filter(lambda h: not h.replace(".", "").isdigit()),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_port = st.integers(1, 65535).map(str)
_url_path = st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/", max_size=24)


@st.composite
def hostile_values(draw: st.DrawFn) -> dict[str, str]:
    url_host, upstream = draw(_host), draw(_host.map(lambda h: h.strip("[]")))
    upstream_port = draw(_port)
    values = {
        "folder": draw(_path), "home": draw(_path), "home_owner": draw(st.from_regex(r"[a-z_][a-z0-9_-]{0,15}", fullmatch=True)),
        "tool": draw(_path), "name": draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)),
        "url": f"https://{url_host}:{draw(_port)}/{draw(_url_path)}",
        "upstream": f"http://[{upstream}]:{upstream_port}" if ":" in upstream else f"http://{upstream}:{upstream_port}",
        "upstream_host": upstream, "upstream_port": upstream_port,
        # A listening port of 1024 or more: below, a gateway unit adds a capability, by design.
        "bind": draw(st.ip_addresses().map(str)), "port": draw(st.integers(1024, 65535).map(str)),
        "reload": draw(_text), "policy": draw(_path),
        "passphrase_file": draw(_path), "command": draw(_path),
        "entry": draw(_text.filter(lambda t: t == t.strip() and not t.startswith("-"))),
        "server_command": draw(_text), "arg1": draw(_text), "arg2": draw(_text),
        "namespace": draw(_label), "secret": draw(st.lists(_label, min_size=1, max_size=3).map(".".join)),
    }
    # crl-refresh copies the CRL only when the server's folder is not the CA home.
    assume(values["folder"] != values["home"])
    return values


def _refused_for_a_reason(target: str, values: dict[str, str], error: InvalidInput) -> bool:
    """What a format has no way to write: a $ for nginx, braces for the Caddyfile, surrounding
    blanks or a final \\ in a systemd setting, a \\ before a % in a crontab line."""
    message, paths = str(error), values["folder"] + values["upstream"]
    if target == "nginx":
        return "$" in paths and "reads $" in message
    if target == "caddy":
        return "Caddyfile" in message and ("{" in paths or "}" in paths or ("\\" in paths and "`" in paths))
    if target == "crl-refresh":
        commands = values["passphrase_file"] + values["home"] + values["tool"] + values["folder"] + values["reload"]
        if "systemd unit" in message:
            return any(v != v.strip() or v.endswith("\\") for v in (values["passphrase_file"], values["name"]))
        return "crontab" in message and "\\%" in commands
    return False


TARGET_NAMES = [t.name for t in TARGETS]


@pytest.mark.parametrize("target", TARGET_NAMES)
# No shrinking: each example renders and parses a whole file, and a failure is readable as drawn.
@settings(max_examples=25, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=hostile_values())
def test_hostile_values_keep_every_target_saying_the_same_thing(target: str, values: dict[str, str], tmp_path: Path) -> None:
    try:
        assert_same_meaning(target, values, tmp_path)
    except InvalidInput as error:
        assert _refused_for_a_reason(target, values, error), error


def test_the_comparison_notices_an_injected_line(tmp_path: Path) -> None:
    """The property above can fail: a value rendered raw shows as a different structure."""
    for syntax, plain, injected in (
        ("sh", "echo 'A'\n", "echo 'A'\ntouch x\n"),
        ("sh", "echo 'A'\n", 'echo "$(touch x)"\n'),
        ("nginx", "a A;\n", "a A; b;\n"),
        ("caddy", "a A\n", "a A\nb\n"),
        ("yaml", "a: 'A'\n", "a: 'A'\nb: 1\n"),
        ("python", "A = 'A'\n", "A = 'A'\nimport os\n"),
        ("javascript", 'f("A");\n', 'f("A"); g();\n'),
    ):
        assert structure(syntax, injected) != structure(syntax, plain, Substitution({"A": "A"})), syntax
    assert systemd_unit("[S]\nUser=a\\\nExecStart=/x\n") == [("[S]", "User", "a ExecStart=/x")]


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_plain_and_typical_values_render_as_written(target: str, tmp_path: Path) -> None:
    """Each target with values an operator really writes: spaces, quotes, $ and % in paths."""
    values = dict(PLAIN, folder="/srv/mcp pki/it's", passphrase_file="/etc/credstore/ca pass%1",
                  reload="systemctl reload nginx && echo \"done $HOME\"", url="https://files.example.com:8443/mcp?x=1&y='2'",
                  entry="team files", command="/opt/mcp pki/bin/mcp-pki", arg1="--stdio", arg2="a b")
    assert_same_meaning(target, values, tmp_path, local=True)


# ------------------------------------------------------ each filter on its own, any string at all

_any_text = st.text(max_size=40)


@settings(max_examples=200, deadline=None)
@given(_any_text)
def test_json_yaml_python_and_shell_filters_read_back_any_string(text: str) -> None:
    assert json.loads(to_json(text)) == text
    assert json.loads(to_json([text, {text: text}])) == [text, {text: text}]
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # a lone surrogate cannot be YAML at all
        assert yaml.safe_load(f"k: {yaml_filter(text)}\n") == {"k": text}
        assert yaml.safe_load(f"k: {yaml_filter([text, {text: text}])}\n") == {"k": [text, {text: text}]}
    assert ast.literal_eval(ESCAPING["python"](text)) == text
    assert shlex.split(shell(text)) == [text]
    if "\0" not in text:
        assert systemd_words(systemd_word(text)) == [text]


@settings(max_examples=200, deadline=None)
@given(_any_text)
def test_nginx_and_caddy_filters_keep_a_word_or_refuse(text: str) -> None:
    for name, parse in (("nginx", lambda t: nginx_tree(f"d {t};")), ("caddy", lambda t: caddy_lines(f"d {t}"))):
        try:
            written = ESCAPING[name](text)
        except InvalidInput:
            continue
        if name == "nginx":
            assert parse(written) == [("d", text)]
        else:
            assert parse(written) == [(1, ("d", text))]


@settings(max_examples=200, deadline=None)
@given(_any_text)
def test_a_comment_never_holds_a_line_break(text: str) -> None:
    written = ESCAPING["comment"](text)
    assert len(("# " + written).splitlines()) <= 1
    assert not any(c in written for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\0")


# ------------------------------------------------- the reproduced payloads, through the command line

URL = "https://srv.example.com:8443/mcp"


def _fake_programs(folder: Path, *names: str) -> dict[str, str]:
    """Programs that record their arguments as JSON lines instead of running: what a script
    would have executed, word for word."""
    folder.mkdir(exist_ok=True)
    for name in names:
        program = folder / name
        program.write_text(
            "#!/usr/bin/env python3\nimport json, os, sys\n"
            f"open(os.path.join({str(folder)!r}, 'calls'), 'a').write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n"
        )
        program.chmod(0o755)
    return {"PATH": f"{folder}:/usr/bin:/bin", "HOME": str(folder)}


def _calls(folder: Path) -> list[list[str]]:
    calls = folder / "calls"
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


@pytest.mark.parametrize("target", ["curl", "claude-code", "python-client", "claude-desktop"])
def test_a_line_break_in_the_url_is_refused_not_run(ca: Cli, target: str) -> None:
    issue_client(ca, "alice")
    snapshot = Snapshot(ca)
    for url in (f"{URL}\ntouch pwned", f"{URL}\rx", f"{URL}\tx", "https://srv.example.com\n/mcp", f"{URL}\u2028x"):
        assert_clean_error(ca("snippet", target, "alice", "--var", f"url={url}"), "control character")
    snapshot.assert_unchanged()


def test_urls_with_userinfo_fragments_loose_hosts_or_ports_are_refused(ca: Cli) -> None:
    issue_server(ca)
    issue_client(ca, "alice")
    snapshot = Snapshot(ca)
    for upstream, why in (
        ("http://127.0.0.1:8000;}location /x {return 200;}", "http://HOST:PORT"),
        ("http://a;}location@127.0.0.1:8000", "user information"),
        ("http://a;}location /x {@127.0.0.1:8000", "http://HOST:PORT"),
        ("http://127.0.0.1:8000#;}location / {}", "fragment"),
        ("http://127.0.0.1:８０００", "port"),
        ("http://127.0.0.1:²", "port"),
        ("http://[fe80::1%25eth0]:8000", "host"),
        ("http://exa mple.com:8000", "host"),
    ):
        for target in ("nginx", "caddy", "envoy"):
            assert_clean_error(ca("snippet", target, "srv", "--var", f"upstream={upstream}"), why)
    for url, why in (("https://user:pw@srv.example.com/mcp", "user information"), (f"{URL}#frag", "fragment"),
                     ("https://srv.example.com:0/mcp", "port"), ("https://srv.example.com/a b", "%-escaped"),
                     ('https://srv.example.com/"x', "%-escaped"), ("https://srv_x.example.com/mcp", "host")):
        assert_clean_error(ca("snippet", "curl", "alice", "--var", f"url={url}"), why)
    snapshot.assert_unchanged()


def test_ipv6_zone_ids_and_non_ascii_digits_are_refused(ca: Cli) -> None:
    issue_server(ca)
    snapshot = Snapshot(ca)
    for target in ("nginx", "caddy", "envoy", "python-server"):
        assert_clean_error(ca("snippet", target, "srv", "--var", "bind=fe80::1%eth0;}"), "zone id")
        assert_clean_error(ca("snippet", target, "srv", "--var", "bind=fe80::1%eth0"), "zone id")
        for port in ("²", "８４４３", "٨٠", "+443", " 443"):
            assert_clean_error(ca("snippet", target, "srv", "--var", f"port={port}"), "port number")
    snapshot.assert_unchanged()


def test_a_kustomization_secret_or_namespace_cannot_add_resources(ca: Cli) -> None:
    issue_server(ca)
    snapshot = Snapshot(ca)
    for variable in ("secret", "namespace"):
        for value in ("x\nresources:\n- https://evil.example/k", 'x", resources: ["https://evil.example/k"], "y',
                      "x # comment", "X"):
            assert_clean_error(ca("snippet", "k8s", "srv", "--var", f"{variable}={value}"), f"--var {variable}")
    snapshot.assert_unchanged()
    rendered = yaml.safe_load(ca.ok("snippet", "k8s", "srv", "--var", "secret=mcp.tls-srv", "--var", "namespace=team-a").stdout)
    assert sorted(rendered) == ["apiVersion", "generatorOptions", "kind", "namespace", "secretGenerator"]
    assert rendered["namespace"] == "team-a" and rendered["secretGenerator"][0]["name"] == "mcp.tls-srv"


def test_a_dir_with_a_line_break_is_refused_and_shell_code_in_it_stays_a_path(ca: Cli, tmp_path: Path) -> None:
    issue_server(ca)
    snapshot = Snapshot(ca)
    for folder in ("/srv/x\nexport EVIL=1", "/srv/x\r", "/srv/\x1b[2Jx", "/srv/\u202ex"):
        for target in ("uvicorn-env", "nginx", "crl-refresh", "server-env"):
            extra = ["--var", "command=x"] if target == "server-env" else []
            assert_clean_error(ca("snippet", target, "srv", "--dir", folder, *extra), "control character")
    snapshot.assert_unchanged()
    folder = "/srv/x'; touch pwned; echo '$(touch pwned2)`touch pwned3`"
    script = tmp_path / "env.sh"
    script.write_text(ca.ok("snippet", "uvicorn-env", "srv", "--dir", folder).stdout)
    work = tmp_path / "scratch"
    work.mkdir()
    dump = subprocess.run(["sh", "-c", f". '{script}' && env -0"], cwd=work, capture_output=True, check=True, timeout=30)
    exported = dict(item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)
    assert exported["UVICORN_SSL_CERTFILE"] == f"{folder}/tls.crt"
    assert list(work.iterdir()) == []


def test_shell_code_in_the_passphrase_file_path_is_never_run(ca: Cli, tmp_path: Path) -> None:
    """crl-refresh run for real (units written into a scratch folder, systemctl and runuser
    recording their arguments): the path reaches every program as one word, and nothing runs."""
    issue_server(ca)
    work = tmp_path / "scratch"
    work.mkdir()
    passfile = work / "$(touch pwned)`touch pwned2`;touch pwned3 %s"
    passfile.write_text(PASSPHRASE + "\n")
    fakes = tmp_path / "bin"
    env = _fake_programs(fakes, "systemctl", "runuser")
    text = ca.ok("snippet", "crl-refresh", "srv", "--dir", str(tmp_path / "deployed"),
                 "--var", f"passphrase_file={passfile}").stdout
    units = tmp_path / "units"
    units.mkdir()
    script = tmp_path / "crl-refresh.sh"
    script.write_text(text.replace("/etc/systemd/system/", f"{units}/"))
    ran = subprocess.run(["sh", str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    service = (units / "mcp-pki-crl-refresh-srv.service").read_text()
    [credential] = [line for line in service.splitlines() if line.startswith("LoadCredential=")]
    assert credential == f"LoadCredential=ca-passphrase:{str(passfile).replace('%', '%%')}"
    assert [call[0] for call in _calls(fakes)] == ["systemctl"] * 3
    # The crontab line, as cron would run it.
    command = cron_command(text)
    assert command is not None
    subprocess.run(["sh", "-c", command], cwd=work, env=env, capture_output=True, timeout=60, check=False)
    runuser = [call for call in _calls(fakes) if call[0] == "runuser"]
    assert runuser and runuser[0][-3:] == ["--passphrase-file", str(passfile), "crl"]
    assert sorted(p.name for p in work.iterdir()) == [passfile.name]  # no pwned, pwned2, pwned3


def test_a_host_entry_name_cannot_become_an_option(ca: Cli) -> None:
    issue_client(ca, "alice")
    for name in ("--scope=project", "-e", " x"):
        assert_clean_error(ca("snippet", "claude-code", "alice", "--var", f"url={URL}", "--var", f"name={name}"),
                           "--var name")


def test_a_tampered_inventory_row_is_refused_not_rendered(ca: Cli) -> None:
    import sqlite3

    issue_server(ca)
    with sqlite3.connect(ca.db) as connection:
        connection.execute("UPDATE certificates SET files_dir = ?", ("/srv/x\nexport EVIL=1",))
    assert_clean_error(ca("snippet", "uvicorn-env", "srv"), "control character")
    with sqlite3.connect(ca.db) as connection:
        connection.execute("UPDATE certificates SET files_dir = '/srv/x', subject = ?", ("CN=srv\x1b[2J",))
    assert_clean_error(ca("snippet", "uvicorn-env", "srv"), "control character")


# ------------------------------------------------------------------- overrides run in the sandbox

ESCAPES = [
    "{{ cycler.__init__.__globals__.os.environ.MCP_PKI_PASSPHRASE | shell }}",
    "{{ lipsum.__globals__['os'].popen('touch pwned').read() | shell }}",
    "{{ joiner.__init__.__globals__.os.system('touch pwned') }}",
    "{{ cert.__class__.__mro__[1].__subclasses__() | length }}",
    "{% for c in ''.__class__.__base__.__subclasses__() %}{{ c | shell }}{% endfor %}",
    "{{ self._TemplateReference__context.environment | shell }}",
    "{{ namespace.__init__.__globals__ | shell }}",
    "{{ cert.hosts.__class__ | shell }}",
    "{{ '{0.__class__.__init__.__globals__}'.format(cert) | shell }}",
]


@pytest.mark.parametrize("payload", ESCAPES)
def test_an_override_cannot_read_the_environment_or_run_commands(ca: Cli, payload: str) -> None:
    issue_server(ca)
    overrides = ca.home / "templates"
    overrides.mkdir()
    (overrides / "uvicorn-env.sh.j2").write_text(payload + "\n")
    result = ca("snippet", "uvicorn-env", "srv")
    assert_clean_error(result, "template uvicorn-env.sh.j2 failed")
    assert PASSPHRASE not in result.stdout + result.stderr
    assert not (ca.cwd / "pwned").exists() and not Path("pwned").exists()


def test_an_override_must_escape_what_it_prints(ca: Cli) -> None:
    """The same rule as the packaged templates: a value printed without a filter is refused."""
    issue_server(ca)
    overrides = ca.home / "templates"
    overrides.mkdir()
    (overrides / "uvicorn-env.sh.j2").write_text("export X={{ cert.name }}\n")
    assert_clean_error(ca("snippet", "uvicorn-env", "srv"), "printed without an escaping filter")
    (overrides / "uvicorn-env.sh.j2").write_text("export X={{ cert.name | shell }} N={{ cert.dns_names | length }}\n")
    assert ca.ok("snippet", "uvicorn-env", "srv").stdout == "export X=srv N=1\n"


def test_every_packaged_template_escapes_every_value() -> None:
    """A static scan beside the render-time check: each {{ ... }} ends in an escaping filter
    (or prints a number), so a template path that the tests do not render cannot print raw."""
    from mcp_pki.render import packaged_templates

    allowed = {*ESCAPING, "int", "length", "url_port"}
    for path in sorted(packaged_templates().glob("*.j2")):
        for expression in re.findall(r"\{\{-?(.*?)-?\}\}", path.read_text(), re.DOTALL):
            last = expression.rsplit("|", 1)
            assert len(last) == 2 and re.match(r"\s*(\w+)", last[1]) and re.match(r"\s*(\w+)", last[1])[1] in allowed, (
                path.name, expression)


def test_the_bundle_readme_keeps_its_tables_with_a_hostile_folder(ca: Cli) -> None:
    import itertools

    issue_server(ca)
    folder = "/srv/a|b`c <img src=x> [y](z) \\"
    ca.ok("snippet", "--all", "srv", "--var", "command=python3", "--dir", folder, "--out", "bundle")
    readme = (ca.cwd / "bundle" / "README.md").read_text()
    tables = [list(rows) for is_table, rows in itertools.groupby(readme.splitlines(), lambda line: line.startswith("|"))
              if is_table]
    assert len(tables) == 2
    for rows in tables:
        # A | inside a value is escaped: each row has as many cells as the header.
        assert len({len(re.split(r"(?<!\\)\|", row)) for row in rows}) == 1, rows
    assert "``/srv/a\\|b`c <img src=x> [y](z) \\``" in readme  # one code span, with a longer fence


_controls = st.sampled_from(["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e", "\u2066",
                             "\ufeff", "\udcff", "\ufffe"])


@settings(max_examples=100, deadline=None)
@given(before=_text, control=_controls, after=_text)
def test_a_control_character_anywhere_is_refused_before_rendering(before: str, control: str, after: str) -> None:
    from mcp_pki.render import check_value

    value = before + control + after
    for target in TARGETS:
        for variable in target.variables:
            with pytest.raises(InvalidInput, match="control character"):
                check_value(variable, value)
    for field in ("folder", "home", "home_owner", "tool", "name"):
        with pytest.raises(InvalidInput, match="control character"):
            view_of(dict(PLAIN, **{field: value}), kind="server")


def test_envoy_names_an_ipv6_upstream_in_brackets_in_the_host_header(ca: Cli) -> None:
    issue_server(ca)
    config = yaml.safe_load(ca.ok("snippet", "envoy", "srv", "--var", "upstream=http://[::1]:8000").stdout)
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["host_rewrite_literal"] == "[::1]:8000"
    endpoint = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "::1", "port_value": 8000}


# A folder name for a real directory: no "." or ".." segment, so it stays under the test's own.
_segment = st.text(alphabet=HOSTILE_CHARACTERS.replace("/", ""), min_size=1, max_size=16).filter(
    lambda s: s not in (".", ".."))


@pytest.mark.parametrize("target", ["nginx", "caddy"])
@settings(max_examples=12, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(_segment, min_size=1, max_size=2))
def test_hostile_folders_pass_the_real_nginx_and_caddy(ca: Cli, tmp_path: Path, target: str, segments: list[str]) -> None:
    """nginx -t and caddy validate load the files from a folder with a hostile name: the name
    reached them as one path."""
    from tests.test_snippet import _caddy_accepts, _free_port, _nginx_accepts

    source = ca.cwd / "srv"
    if not source.is_dir():
        issue_server(ca)
    folder = tmp_path.joinpath("hostile", *segments)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (folder / name).write_bytes((source / name).read_bytes())
    (folder / "crl.pem").write_bytes((ca.home / "crl.pem").read_bytes())
    # nginx -t binds the address it would listen on: loopback, a free port.
    values = {"bind": "127.0.0.1", "port": str(_free_port()), "upstream": "http://127.0.0.1:8000"}
    target_ = next(t for t in TARGETS if t.name == target)
    view = view_of(dict(PLAIN, folder=str(folder)), kind="server")
    try:
        text = render(target_, view, {k: v for k, v in values.items() if target_.variable(k)}, overrides=None)
    except InvalidInput as error:
        assert _refused_for_a_reason(target, dict(PLAIN, folder=str(folder)), error), error
        return
    if target == "nginx":
        _nginx_accepts(text, tmp_path)
    else:
        _caddy_accepts(text, tmp_path)
