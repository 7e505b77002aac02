"""A small MCP server written with the SDK, for the gateway's tests and benchmark.

Several tools (one with a visible side effect: it appends to the file named by
``$TOOLBOX_SIDE_EFFECTS``), a resource, a resource template, a prompt and completions.

    python toolbox.py                       # stdio
    python toolbox.py --http PORT           # streamable HTTP on 127.0.0.1:PORT (uvicorn)
    python toolbox.py --https PORT CERT KEY CA   # the same over TLS, client certificates required
"""

import json
import os
import sys
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import Completion

server = MCPServer("toolbox")


@server.tool()
def echo(text: str) -> str:
    """Returns its argument."""
    return text


@server.tool()
def query(sql: str) -> str:
    """Pretends to run a query."""
    return f"42 rows for {sql}"


@server.tool()
def list_tables() -> list[str]:
    """Names some tables."""
    return ["users", "orders"]


@server.tool()
def append(line: str) -> str:
    """Appends a line to the side-effect file: proof that a call reached the server."""
    with open(os.environ["TOOLBOX_SIDE_EFFECTS"], "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    return "appended"


@server.tool()
async def wait(seconds: float) -> str:
    """Answers after `seconds`: a call that stays pending meanwhile. Says that it waits in
    the side-effect file, if there is one, so that a test knows the call has arrived."""
    import anyio

    if "TOOLBOX_SIDE_EFFECTS" in os.environ:
        append(f"waiting {seconds:g} s")
    await anyio.sleep(min(seconds, 30.0))
    return "waited"


@server.tool()
async def shout(text: str, ctx: Context) -> str:
    """Logs to the client (a notification), then answers in capitals."""
    await ctx.info(f"shouting {text}")
    return text.upper()


@server.tool()
def headers(ctx: Context) -> str:
    """The identity headers the request arrived with (HTTP only)."""
    seen = {k.lower(): v for k, v in (ctx.headers or {}).items() if k.lower().startswith("x-client")}
    return json.dumps(seen, sort_keys=True)


@server.tool()
def pid() -> int:
    """The server's process id: one process per session shows here."""
    return os.getpid()


@server.tool()
def crash() -> str:
    """Says goodbye on stderr and dies without answering: the gateway must answer instead."""
    print("toolbox: about to crash", file=sys.stderr, flush=True)
    os._exit(3)


@server.resource("db://tables")
def tables() -> str:
    return "users,orders"


@server.resource("file://notes")
def notes() -> str:
    return "private notes"


@server.resource("db://table/{name}")
def table(name: str) -> str:
    return f"table {name}"


@server.prompt()
def summarise(topic: str) -> str:
    """A prompt with an argument."""
    return f"Summarise {topic} in one line."


@server.completion()
async def complete(ref: Any, argument: Any, context: Any) -> Completion:
    """Completes a prompt's or a resource template's argument: the value, twice suggested."""
    return Completion(values=[f"{argument.value}1", f"{argument.value}2"])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        import uvicorn

        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    elif len(sys.argv) == 6 and sys.argv[1] == "--https":  # PORT CERT KEY CA: uvicorn requiring client certificates
        import ssl

        import uvicorn

        port, cert, key, ca = sys.argv[2:6]
        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(port), log_level="warning",
                    ssl_certfile=cert, ssl_keyfile=key, ssl_ca_certs=ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    else:
        server.run()
