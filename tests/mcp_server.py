"""A real MCP server for the tests, made with the `mcp` package's own MCPServer: over streamable HTTP on 127.0.0.1
(a port the OS picks, printed on the first line), or over stdio with --stdio.

    python -m tests.mcp_server            # prints the port, serves http://127.0.0.1:<port>/mcp
    python -m tests.mcp_server --stdio

`serving_http()` runs the first in a subprocess for a test; `STDIO_COMMAND` is the second as a tools file names it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDIO_COMMAND = {"command": sys.executable, "args": ["-m", "tests.mcp_server", "--stdio"], "env": {"PYTHONPATH": ROOT}}

server = MCPServer("test-tools")


@server.tool()
def get_weather(city: str) -> str:
    """The weather now in a city."""
    return f"18 degrees and cloudy in {city}"


@server.tool()
async def slow_echo(text: str, seconds: float) -> str:
    """Says `text` back after `seconds`."""
    await asyncio.sleep(seconds)
    return text


@server.tool()
def broken(reason: str) -> str:
    """Always fails, saying `reason` back (as a tool's own error text may quote what it was given)."""
    raise ToolError(reason)


@server.tool()
def process_id() -> int:
    """The server's process id (a test kills it to see the client notice)."""
    return os.getpid()


async def serve_http(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[sock])


@contextlib.contextmanager
def serving_http(port: int = 0) -> Iterator[int]:
    """The HTTP server in a subprocess while the block runs; yields its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.mcp_server", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield int(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stdio", action="store_true")
    parser.add_argument("--port", type=int, default=0, help="0: one the OS picks")
    args = parser.parse_args()
    if args.stdio:
        server.run("stdio")
    else:
        asyncio.run(serve_http(args.port))


if __name__ == "__main__":
    sys.exit(main())
