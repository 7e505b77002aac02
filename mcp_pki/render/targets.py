"""The snippet targets: what each renders, for which certificates, with which parameters.

A target is one template in the top-level ``templates/`` folder. Its output file name (used by
``snippet --all``) is the template's name without ``.j2``. `syntax` says what the output must
parse as; JSON and YAML outputs are parsed before they are printed, so a broken user override
is an error instead of a config file that fails later, somewhere else.
"""

from dataclasses import dataclass

SERVER = ("server",)
CLIENT = ("client",)


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    meaning: str
    default: str | None = None  # None: the user must give it with --var
    # What a value must be, checked before rendering (see render.check_value): text, port,
    # address (an IP, or empty where the default is empty), https-url, upstream (http://HOST:PORT),
    # path (absolute), k8s-label, k8s-name, server-name, flag (true or false). No kind admits a
    # control character.
    kind: str = "text"

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    template: str
    kinds: tuple[str, ...]
    description: str
    usage: str  # where the output goes: printed to stderr, and a line of the --all README
    syntax: str  # json, yaml, sh, python, javascript, nginx, caddy
    variables: tuple[Variable, ...] = ()

    @property
    def file_name(self) -> str:
        return self.template.removesuffix(".j2")

    def variable(self, name: str) -> Variable | None:
        return next((v for v in self.variables if v.name == name), None)


_URL = Variable("url", "the MCP server's endpoint, e.g. https://files.example.com:8443/mcp", kind="https-url")
_PORT = Variable("port", "the TLS port to listen on", "8443", kind="port")
_BIND = Variable("bind", "the address to listen on", "0.0.0.0", kind="address")
_UPSTREAM = Variable(
    "upstream", "the plain-HTTP MCP server behind the proxy, listening on loopback", "http://127.0.0.1:8000",
    kind="upstream",
)

TARGETS: tuple[Target, ...] = (
    Target(
        "server-env", "server-env.json.j2", SERVER,
        "mcpServers entry running the stdio server behind mcp-pki gateway, TLS from its TLS_* environment",
        "merge into the mcpServers configuration of whatever launches your servers (JSON, no comments); "
        "the gateway needs pip install 'mcp-pki[gateway]'",
        "json",
        (
            Variable("command", "the command that starts the stdio MCP server"),
            Variable("args", "its arguments, as shell words", ""),
            _PORT, _BIND,
        ),
    ),
    Target(
        "uvicorn-env", "uvicorn-env.sh.j2", SERVER,
        "UVICORN_SSL_* environment for any uvicorn-served MCP server, client certificates required; NO CRL "
        "check (revoked clients get in): use gateway, python-server or nginx for that",
        "source it (. ./uvicorn-env.sh) in the shell or service that starts uvicorn",
        "sh",
    ),
    Target(
        "python-server", "python-server.py.j2", SERVER,
        "runnable MCP Python SDK server: uvicorn, client certificates required, CRL checked and re-read when "
        "it changes, each request logged with its client's name and serial, each refused handshake with "
        "its reason",
        "run it with python3 (pip install 'mcp>=2.3,<3' 'uvicorn>=0.54') and replace the example tool",
        "python",
        (_PORT, _BIND),
    ),
    Target(
        "python-client", "python-client.py.j2", CLIENT,
        "runnable MCP Python SDK client presenting this certificate, trusting only our root",
        "run it with python3 (pip install 'mcp>=2.3,<3'): no arguments lists tools, TOOL KEY=VALUE calls one",
        "python",
        (_URL,),
    ),
    Target(
        "node-client", "node-client.mjs.j2", CLIENT,
        "MCP TypeScript SDK client (Node.js) with an undici Agent carrying CA, certificate and key",
        "run it with node 20+ (npm install @modelcontextprotocol/client undici)",
        "javascript",
        (_URL,),
    ),
    Target(
        "curl", "curl.sh.j2", CLIENT,
        "smoke test: an MCP initialize request with curl --cert/--key/--cacert",
        "run it with sh; it prints the server's initialize answer",
        "sh",
        (_URL,),
    ),
    Target(
        "nginx", "nginx.conf.j2", SERVER,
        "nginx server block terminating mTLS in front of an MCP server, CRL checked, "
        "verified identity forwarded",
        "include it in the http block (e.g. /etc/nginx/conf.d/), then nginx -t && nginx -s reload",
        "nginx",
        (_PORT, Variable("bind", "the address to listen on (empty: every address)", "", kind="address"), _UPSTREAM),
    ),
    Target(
        "envoy", "envoy.yaml.j2", SERVER,
        "Envoy static config: mTLS listener, CRL checked, x-forwarded-client-cert sanitised and set",
        "run envoy -c envoy.yaml (or merge the listener and cluster into your config)",
        "yaml",
        (_PORT, _BIND, _UPSTREAM),
    ),
    Target(
        "caddy", "Caddyfile.j2", SERVER,
        "Caddyfile: mTLS in front of an MCP server, verified identity forwarded (Caddy checks no CRL)",
        "run caddy run --config Caddyfile --adapter caddyfile",
        "caddy",
        (_PORT, _BIND, _UPSTREAM),
    ),
    Target(
        "k8s", "kustomization.yaml.j2", ("server", "client"),
        "kustomization generating a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt, and the CRL "
        "for servers) from the issued files",
        "save as kustomization.yaml beside tls.crt, tls.key and ca.crt, then kubectl apply -k that folder",
        "yaml",
        (
            Variable("namespace", "the Kubernetes namespace", "default", kind="k8s-label"),
            Variable("secret", "the Secret's name (default: mcp-tls-NAME)", "", kind="k8s-name"),
        ),
    ),
    Target(
        "crl-refresh", "crl-refresh.sh.j2", SERVER,
        "systemd service + daily timer (and the cron line) republishing the CRL and reloading nginx",
        "run it once as root on the machine holding the CA home; it installs and starts the timer",
        "sh",
        (
            Variable("reload", "the command that makes the server re-read the CRL", "systemctl reload nginx"),
            Variable(
                "passphrase_file", "root-only file with the CA passphrase",
                "/etc/credstore/mcp-pki-ca-passphrase", kind="path",
            ),
        ),
    ),
    Target(
        "gateway", "gateway.service.j2", SERVER,
        "systemd unit running the stdio server behind mcp-pki gateway: policy, tool-call log, hardened",
        "copy to /etc/systemd/system/, write the policy file it names, then systemctl enable --now the unit",
        "systemd",
        (
            Variable("command", "the command that starts the stdio MCP server (absolute path)"),
            Variable("args", "its arguments, as shell words", ""),
            _PORT, _BIND,
        ),
    ),
)


# MCP hosts: most cannot present a client certificate themselves, so each entry launches
# `mcp-pki bridge` (a local stdio MCP server relaying over mTLS) by absolute path. Claude Code
# can, with one certificate for the whole process: claude-code-http uses that.
_HOST_VARIABLES = (
    _URL,
    Variable("name", "the server's name in the host (default: the URL's first host label)", "", kind="server-name"),
    Variable(
        "command", "mcp-pki's absolute path on the machine running the host (default: this one's)", "", kind="path",
    ),
)


# A project file (.mcp.json, .vscode/mcp.json, .cursor/mcp.json) is committed and shared, so it
# cannot hold one person's paths: portable entries name the files through the host's own
# variables, in a per-user folder named after the server, ~/.mcp-pki/SERVER/.
_PORTABLE = Variable(
    "portable", "true: paths in ~/.mcp-pki/SERVER through the host's variables, for a file every teammate "
    "shares", "false", kind="flag",
)


def _host(name: str, template: str, host: str, usage: str, syntax: str = "json", *, shared: bool = False) -> Target:
    return Target(
        name, template, CLIENT, f"{host}: an MCP server entry that runs mcp-pki bridge with this certificate",
        usage, syntax, _HOST_VARIABLES + ((_PORTABLE,) if shared else ()),
    )


HOST_TARGETS = (
    _host(
        "claude-desktop", "claude_desktop_config.json.j2", "Claude Desktop",
        "merge into claude_desktop_config.json: macOS ~/Library/Application Support/Claude/, "
        "Windows %APPDATA%\\Claude\\, Linux ~/.config/Claude/; then restart Claude Desktop",
    ),
    _host(
        "claude-code", "claude-code.sh.j2", "Claude Code",
        "run it (claude mcp add --scope user), or copy the .mcp.json entry in its comments into a "
        "project's .mcp.json; the same on macOS, Linux and Windows",
        "sh", shared=True,
    ),
    Target(
        "claude-code-http", "claude-code-http.sh.j2", CLIENT,
        "Claude Code connecting over mTLS itself (no bridge): claude mcp add --transport http, with "
        "ONE client certificate for the whole Claude Code process (CLAUDE_CODE_CLIENT_CERT)",
        "run it: it sets CLAUDE_CODE_CLIENT_CERT, CLAUDE_CODE_CLIENT_KEY and NODE_EXTRA_CA_CERTS in "
        "~/.claude/settings.json and runs claude mcp add --scope user --transport http",
        "sh",
        _HOST_VARIABLES[:2],  # no bridge, so no command to launch
    ),
    _host(
        "vscode", "vscode-mcp.json.j2", "VS Code",
        "merge into .vscode/mcp.json in the workspace, or the user mcp.json: macOS "
        "~/Library/Application Support/Code/User/, Windows %APPDATA%\\Code\\User\\, Linux ~/.config/Code/User/",
        shared=True,
    ),
    _host(
        "cursor", "cursor-mcp.json.j2", "Cursor",
        "merge into .cursor/mcp.json in the project, or ~/.cursor/mcp.json "
        "(Windows %USERPROFILE%\\.cursor\\mcp.json) for every project", shared=True,
    ),
    _host(
        "windsurf", "windsurf-mcp_config.json.j2", "Windsurf",
        "merge into ~/.codeium/windsurf/mcp_config.json (Windows "
        "%USERPROFILE%\\.codeium\\windsurf\\mcp_config.json), then refresh the MCP servers",
    ),
    _host(
        "zed", "zed-settings.json.j2", "Zed",
        "merge context_servers into Zed's settings.json: macOS and Linux ~/.config/zed/, "
        "Windows %APPDATA%\\Zed\\",
    ),
    _host(
        "continue", "continue-mcp.yaml.j2", "Continue",
        "save as .continue/mcpServers/NAME.yaml in the workspace, or add the entry to "
        "~/.continue/config.yaml (Windows %USERPROFILE%\\.continue\\config.yaml)",
        "yaml",
    ),
)

TARGETS = TARGETS + HOST_TARGETS


def find_target(name: str) -> Target:
    for target in TARGETS:
        if target.name == name:
            return target
    from mcp_pki.errors import InvalidInput

    raise InvalidInput(f"unknown snippet target {name!r}: choose one of {', '.join(t.name for t in TARGETS)}")
