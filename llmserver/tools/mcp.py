"""MCP servers (Model Context Protocol, streamable HTTP and stdio) through the official `mcp` package: their tools
are discovered when the server connects (at start, after a reconnection, and on reload) and called through the
registry like any other.

Each server has one connection, kept by a background task (the `mcp` client is an async context, entered and left
in that task), which pings it every few seconds. A server that is down at start, or that goes away, is tried again
with growing pauses, and at once on reload; meanwhile its tools are not offered and its state says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from .registry import Tool, ToolFailure
from .tools_file import McpServerConfig

logger = logging.getLogger("llmserver.tools")
_OPENAI_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RETRY_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTH_SECONDS = 5.0
CONNECT_TIMEOUT = 10.0


class McpServerTools:
    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self.name = f"mcp:{config.name}"
        self._tools: list[Tool] = []
        self._client: Client | None = None
        self._task: asyncio.Task | None = None
        self._retry_now = asyncio.Event()
        self._closed = False
        self.error: str | None = "not connected yet"
        self._lost_connection = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._keep_connected())

    def tools(self) -> list[Tool]:
        return list(self._tools) if self._client is not None else []

    def state(self) -> dict[str, Any]:
        where = self.config.url or " ".join([self.config.command or "", *self.config.args])
        return {
            "source": self.name,
            "where": where,
            "reachable": self._client is not None,
            "tools": len(self._tools) if self._client is not None else 0,
            "error": self.error,
        }

    async def reload(self) -> None:
        """Asks for the tool list again, reconnecting at once if the server is down."""
        self.start()
        client = self._client
        if client is None:
            self._retry_now.set()
            return
        try:
            await self._discover(client)
        except Exception as exc:
            self._lost(exc)

    def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        config = self.config
        if config.url:
            timeout = httpx2.Timeout(30.0, connect=CONNECT_TIMEOUT)
            # The SDK leaves a client it was given open: the stack closes it with the connection.
            http = httpx2.AsyncClient(headers=config.headers, timeout=timeout)
            stack.push_async_callback(http.aclose)
            return streamable_http_client(config.url, http_client=http)
        return StdioServerParameters(command=config.command or "", args=list(config.args), env=config.env or None)

    async def _keep_connected(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                async with (
                    contextlib.AsyncExitStack() as stack,
                    Client(self._transport(stack), read_timeout_seconds=self.config.timeout) as client,
                ):
                    await self._discover(client)
                    self._client = client
                    self.error = None
                    attempt = 0
                    logger.info("MCP server %s: %d tool(s)", self.config.name, len(self._tools))
                    await self._watch(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # down, refusing, or gone: try again later
                self._lost(exc)
            finally:
                self._client = None
                self._lost_connection = asyncio.Event()
            pause = RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)]
            attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._retry_now.wait()
            self._retry_now.clear()

    async def _watch(self, client: Client) -> None:
        """Returns when the connection is lost: a call failed, or a ping every HEALTH_SECONDS went unanswered
        (over streamable HTTP nothing else would tell that the server went away)."""
        while not self._lost_connection.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEALTH_SECONDS):
                    await self._lost_connection.wait()
                    return
            try:
                async with asyncio.timeout(HEALTH_SECONDS):
                    await client.send_ping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        self.error = f"unreachable ({type(exc).__name__})"
        logger.warning("MCP server %s: %s: %r", self.config.name, self.error, exc)
        self._lost_connection.set()

    async def _discover(self, client: Client) -> None:
        listed = await client.list_tools()
        tools = []
        for tool in listed.tools:
            if not _OPENAI_NAME.match(tool.name):
                logger.warning("MCP server %s: tool %r has a name OpenAI refuses; skipped", self.config.name, tool.name)
                continue
            schema = tool.input_schema or {"type": "object"}
            tools.append(
                Tool(
                    tool.name,
                    tool.description or tool.name,
                    schema,
                    self.name,
                    self._runner(tool.name),
                    self.config.timeout,
                )
            )
        self._tools = tools

    def _runner(self, name: str):
        async def run(arguments: dict[str, Any]) -> str:
            client = self._client
            if client is None:
                raise ToolFailure(f"the MCP server {self.config.name} is not reachable")
            try:
                result = await client.call_tool(name, arguments)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(exc)
                raise ToolFailure(f"the MCP server {self.config.name} failed") from None
            text = _result_text(result)
            if result.is_error:
                raise ToolFailure(text or "the tool reported an error")
            return text

        return run

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _result_text(result: Any) -> str:
    """The result's text for the model; its structured content when it has no text."""
    parts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
    if parts or result.structured_content is None:
        return "\n".join(parts)
    return json.dumps(result.structured_content, ensure_ascii=False)
