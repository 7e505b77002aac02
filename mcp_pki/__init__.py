"""mcp-pki: an internal certificate authority for mutual TLS between MCP clients and servers."""

__version__ = "0.1.0"
