"""An MCP server on the official Python SDK (PyPI `mcp`): its Streamable
HTTP app (Starlette, under uvicorn), stateless, answering JSON. uvicorn
hands Starlette the percent-decoded path, so `/%6Dcp` reaches `/mcp`.

Usage: python_server.py PORT ALLOWED_HOST

Tools: `whoami` (the filter gives it scopes of its own) and `echo`. Every
run is recorded; GET /_runs answers them.
"""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse

runs = []
mcp = MCPServer("python-test")


@mcp.tool()
def whoami() -> str:
    """Who called."""
    runs.append({"tool": "whoami"})
    return "you"


@mcp.tool()
def echo(text: str = "") -> str:
    """Echoes."""
    runs.append({"tool": "echo"})
    return text


@mcp.custom_route("/_runs", methods=["GET"])
async def seen(_request: Request) -> JSONResponse:
    return JSONResponse(runs)


if __name__ == "__main__":
    port, host = int(sys.argv[1]), sys.argv[2]
    security = TransportSecuritySettings(allowed_hosts=[host, f"{host}:*"], allowed_origins=[])
    app = mcp.streamable_http_app(stateless_http=True, json_response=True, transport_security=security)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
