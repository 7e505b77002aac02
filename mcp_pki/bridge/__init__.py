"""``mcp-pki bridge``: a stdio MCP server that relays to a remote MCP server over mutual TLS.

No mainstream MCP host can present a client certificate to a remote server, but every host
can launch a stdio server. The bridge is that stdio server: it checks the client certificate
(`credentials`), proves the TLS path end to end before any protocol traffic (`probe`), then
relays JSON-RPC both ways with the MCP Python SDK's own transports (`relay`).

`start` ties them together. Only `relay` and `routing` import the SDK, an optional extra:
`require_sdk` runs first so that its absence is one clear line, not a traceback.
"""

from mcp_pki.errors import PkiError

SDK_MISSING = "mcp-pki bridge needs the MCP Python SDK: pip install 'mcp-pki[bridge]'"


class BridgeError(PkiError):
    """The bridge cannot start or cannot go on: certificate, trust or connection problems."""


def require_sdk() -> None:
    """Fail with the install hint unless the MCP Python SDK (2.x, on httpx2) is importable."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise BridgeError(SDK_MISSING) from None
    try:
        import httpx2  # noqa: F401
        from mcp.client.streamable_http import streamable_http_client  # noqa: F401
        from mcp.server.stdio import stdio_server  # noqa: F401
    except ImportError:
        # mcp 1.x is installed: it has neither httpx2 nor this client signature.
        raise BridgeError(f"{SDK_MISSING} (version 2.3 or newer)") from None
