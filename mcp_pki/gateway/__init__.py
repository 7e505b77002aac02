"""``mcp-pki gateway``: a stdio (or plain-HTTP) MCP server behind mutual TLS.

The server-side mirror of the bridge. Each MCP session that a client opens over HTTPS gets
its own upstream: a process of the stdio server's command, or a session with an HTTP MCP
server on loopback. Between the two the gateway enforces what the certificate says:

- `tls`: the server's certificate and the CA clients must chain to, checked at start;
- `revocation`: the CRL file, reloaded when it changes, checked on every request;
- `policy`: which tools, resources and prompts each role and each client may use;
- `calllog`: one hash-chained line per MCP request, who asked what and how it ended, and
  `checkpoints`, which sign the chain's head with the server's key now and then;
- `upstream` and `sessions`: the per-session relay to a stdio server's process;
- `proxy`: the relay to an HTTP server (--upstream), exchange by exchange;
- `server`: HTTPS on uvicorn.

Only `sessions`, `upstream`, `proxy` and `server` import the MCP SDK, uvicorn and httptools,
an optional extra: `require_runtime` runs first so that their absence is one clear line,
not a traceback.
"""

from mcp_pki.errors import PkiError

RUNTIME_REQUIREMENTS = ("mcp>=2.3,<3", "uvicorn>=0.54", "httptools>=0.6")


class GatewayError(PkiError):
    """The gateway cannot start: certificates, keys, CRL, policy, audit log or address."""


def require_runtime() -> None:
    """Fail with the install command unless the MCP SDK (2.x) and uvicorn are importable."""
    import sys

    try:
        import httptools  # noqa: F401
        import httpx2  # noqa: F401
        import uvicorn  # noqa: F401
        from mcp.server.streamable_http import StreamableHTTPServerTransport  # noqa: F401
    except ImportError:
        quote = '"' if sys.platform == "win32" else "'"
        python = f'"{sys.executable}"' if " " in sys.executable else sys.executable
        command = f"{python} -m pip install " + " ".join(f"{quote}{r}{quote}" for r in RUNTIME_REQUIREMENTS)
        raise GatewayError(f"mcp-pki gateway needs the MCP Python SDK and uvicorn: {command}") from None
