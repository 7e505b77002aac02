"""``mcp-pki bridge``: a stdio MCP server that relays to a remote MCP server over mutual TLS.

No mainstream MCP host can present a client certificate to a remote server, but every host
can launch a stdio server. The bridge is that stdio server: it checks the client certificate
(`credentials`), proves the TLS path end to end before any protocol traffic (`probe`), then
relays JSON-RPC both ways with the MCP Python SDK's own transports (`relay`).

`start` ties them together. Only `relay` and `routing` import the SDK, an optional extra:
`require_sdk` runs first so that its absence is one clear line, not a traceback.
"""

import sys

from mcp_pki.errors import PkiError

# The `bridge` extra's requirement, spelled out: `pip install 'mcp-pki[bridge]'` would fetch
# whatever PyPI calls mcp-pki when this one was installed from a checkout.
SDK_REQUIREMENT = "mcp>=2.3,<3"


class BridgeError(PkiError):
    """The bridge cannot start or cannot go on: certificate, trust or connection problems."""


def install_command() -> str:
    """The pip command that installs the SDK into the Python running mcp-pki, not another one.

    Double quotes around a path with spaces read the same in POSIX shells and in cmd.exe;
    the requirement's ``<``/``>`` need quotes too, single ones except on Windows (cmd.exe).
    """
    python = f'"{sys.executable}"' if " " in sys.executable else sys.executable
    quote = '"' if sys.platform == "win32" else "'"
    return f"{python} -m pip install {quote}{SDK_REQUIREMENT}{quote}"


def require_sdk() -> None:
    """Fail with the install command unless the MCP Python SDK (2.x, on httpx2) is importable."""
    missing = f"mcp-pki bridge needs the MCP Python SDK: {install_command()}"
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise BridgeError(missing) from None
    try:
        import httpx2  # noqa: F401
        from mcp.client.streamable_http import streamable_http_client  # noqa: F401
        from mcp.server.stdio import stdio_server  # noqa: F401
    except ImportError:
        # mcp 1.x is installed: it has neither httpx2 nor this client signature.
        raise BridgeError(f"{missing} (version 2.3 or newer)") from None


def exception_leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, which task groups raise."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in exception_leaves(inner)]
    return [error]
