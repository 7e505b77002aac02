"""The HTTP headers that streamable HTTP wants beside each message the host sends.

Over stdio a message is all there is; over streamable HTTP the server also reads headers
that mirror it, and the SDK's client session normally supplies them. The bridge relays
messages it does not author, so it derives them from what passes through:

- handshake era (``initialize``): ``MCP-Protocol-Version`` with the version the server
  answered, on every message after the handshake;
- 2026-07-28 and later (no handshake, every request carries its version in
  ``params._meta``): ``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name`` and the
  ``Mcp-Param-*`` headers a tool's input schema asks for. The server routes by these
  headers and rejects a request whose headers and body disagree.

The messages themselves are never changed.
"""

from collections.abc import Mapping
from typing import Any

from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
    find_invalid_x_mcp_header,
    mcp_param_headers,
    x_mcp_header_map,
)
from mcp_types import (
    PROTOCOL_VERSION_META_KEY,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)

# The answers the bridge learns from: which version was negotiated, which tools want
# `Mcp-Param-*` headers.
_WATCHED = ("initialize", "tools/list")


class RoutingHeaders:
    """Derives the headers for host messages from the conversation seen so far."""

    def __init__(self) -> None:
        self._handshake_version: str | None = None
        self._watched: dict[RequestId, str] = {}  # request id -> method, until answered
        self._param_headers: dict[str, dict[tuple[str, ...], str]] = {}  # tool -> its x-mcp-header map

    def for_host_message(self, message: JSONRPCMessage) -> dict[str, str] | None:
        """Headers for a message from the host to the server, or None for none."""
        if not isinstance(message, JSONRPCRequest | JSONRPCNotification):
            return self._handshake_headers()
        if isinstance(message, JSONRPCRequest) and message.method in _WATCHED:
            self._watched[message.id] = message.method
        params = message.params or {}
        version = _envelope_version(params)
        if version is None:
            # `initialize` opens a new negotiation: the transport drops the old version too.
            return None if message.method == "initialize" else self._handshake_headers()
        headers = {MCP_PROTOCOL_VERSION_HEADER: version, MCP_METHOD_HEADER: message.method}
        name_key = NAME_BEARING_METHODS.get(message.method)
        name = params.get(name_key) if name_key else None
        if isinstance(name, str):
            headers[MCP_NAME_HEADER] = encode_header_value(name)
        arguments = params.get("arguments")
        if message.method == "tools/call" and isinstance(name, str) and isinstance(arguments, Mapping):
            headers.update(mcp_param_headers(self._param_headers.get(name, {}), arguments))
        return headers

    def learn_from_server_message(self, message: JSONRPCMessage) -> None:
        """Note the negotiated version and the tools' header annotations as answers pass."""
        if not isinstance(message, JSONRPCResponse | JSONRPCError) or message.id is None:
            return
        method = self._watched.pop(message.id, None)
        if method is None or isinstance(message, JSONRPCError):
            return
        if method == "initialize":
            version = message.result.get("protocolVersion")
            self._handshake_version = version if isinstance(version, str) else None
        else:
            for tool in message.result.get("tools") or ():
                self._learn_tool(tool)

    def _learn_tool(self, tool: Any) -> None:
        if not isinstance(tool, Mapping) or not isinstance(name := tool.get("name"), str):
            return
        schema = tool.get("inputSchema")
        # A schema with a malformed annotation gets no headers: the server rejects such a
        # tool's calls itself, and says why.
        if isinstance(schema, Mapping) and find_invalid_x_mcp_header(schema) is None:
            self._param_headers[name] = x_mcp_header_map(schema)
        else:
            self._param_headers.pop(name, None)

    def _handshake_headers(self) -> dict[str, str] | None:
        if self._handshake_version is None:
            return None
        return {MCP_PROTOCOL_VERSION_HEADER: self._handshake_version}


def _envelope_version(params: Mapping[str, Any]) -> str | None:
    meta = params.get("_meta")
    version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) else None
