"""A real MCP server for the tests, made with the `mcp` package's own MCPServer: over streamable HTTP on 127.0.0.1
(a port the OS picks, printed on the first line), or over stdio with --stdio.

    python -m fakes.mcp_server            # prints the port, serves http://127.0.0.1:<port>/mcp
    python -m fakes.mcp_server --stdio

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
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDIO_COMMAND = {"command": sys.executable, "args": ["-m", "fakes.mcp_server", "--stdio"], "env": {"PYTHONPATH": ROOT}}

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
def long_text(characters: int) -> str:
    """That many characters of text."""
    return "a" * characters


@server.tool()
def process_id() -> int:
    """The server's process id (a test kills it to see the client notice)."""
    return os.getpid()


def forcing_gzip(app: ASGIApp) -> ASGIApp:
    """`app` with every answer gzipped, whatever the client accepts (as a misconfigured proxy might)."""
    gzipped = GZipMiddleware(app, minimum_size=0)

    async def forced(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]
            scope = {**scope, "headers": [*headers, (b"accept-encoding", b"gzip")]}
        await gzipped(scope, receive, send)

    return forced


async def serve_http(port: int, force_gzip: bool = False) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)  # before the port is told: a client connecting at once waits in the backlog, never refused
    print(sock.getsockname()[1], flush=True)
    app = server.streamable_http_app()
    config = uvicorn.Config(forcing_gzip(app) if force_gzip else app, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[sock])


@contextlib.contextmanager
def serving_http(port: int = 0, *, force_gzip: bool = False) -> Iterator[int]:
    """The HTTP server in a subprocess while the block runs; yields its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fakes.mcp_server", "--port", str(port), *(["--force-gzip"] if force_gzip else [])],
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
    parser.add_argument("--force-gzip", action="store_true", help="gzip every answer, asked or not")
    args = parser.parse_args()
    if args.stdio:
        server.run("stdio")
    else:
        asyncio.run(serve_http(args.port, args.force_gzip))


if __name__ == "__main__":
    sys.exit(main())
