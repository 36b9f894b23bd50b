"""MCP servers (Model Context Protocol, streamable HTTP and stdio) through the official `mcp` package: their tools
are discovered when the server connects (at start, after a reconnection, and on reload) and called through the
registry like any other.

Each server has one connection, kept by a background task (the `mcp` client is an async context, entered and left
in that task), which checks every few seconds that the server still answers. A server that is down at start, or that
goes away, is tried again with growing pauses, and at once on reload; meanwhile its tools are not offered and its
state says why, in the words of the root cause ("connection refused", "command not found: foo").

The SDK reads each answer whole before the registry cuts a result to TOOL_RESULT_CHARS. Over streamable HTTP what it
reads is bounded here: an answer's body at MAX_ANSWER_BYTES (asked for uncompressed; a gzip or deflate body anyway is
inflated no further than that), an SSE event by the SDK's own cap of the same size; a larger answer fails that call
only. Over stdio the SDK reads each message whole: the server is a program the operator runs on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import zlib
from typing import Any

import httpx2
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST, PARSE_ERROR, REQUEST_TIMEOUT

from .registry import Tool, ToolFailure
from .tools_file import McpServerConfig

logger = logging.getLogger("llmserver.tools")
_OPENAI_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RETRY_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTH_SECONDS = 5.0  # the default of MCP_HEALTH_SECONDS
CONNECT_TIMEOUT = 10.0  # also how long a health check waits for its answer
MAX_ANSWER_BYTES = 1024 * 1024  # the most read of one answer over HTTP (the SDK's own cap on an SSE event)
# The errors the client itself makes up when no answer came (the connection closed, the request timed out) or the
# session is gone (a redirect, "Session terminated"): the server is lost. Any other JSON-RPC error is the server's
# own answer, so the server is there ("Method not found" from a server that lacks the method included).
_NO_ANSWER = frozenset({CONNECTION_CLOSED, REQUEST_TIMEOUT, INVALID_REQUEST})


class McpServerTools:
    def __init__(self, config: McpServerConfig, *, health_seconds: float = HEALTH_SECONDS) -> None:
        self.config = config
        self.health_seconds = health_seconds
        self.name = f"mcp:{config.name}"
        self._tools: list[Tool] = []
        self._client: Client | None = None
        self._task: asyncio.Task | None = None
        self._retry_now = asyncio.Event()
        self._closed = False
        self.error: str | None = "not connected yet"
        self._lost_connection = asyncio.Event()
        self.connections = 0  # times connected: more than one means it was lost (and found again)
        self.health_checks = 0  # health checks passed on the current connection

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
            "connections": self.connections,
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
            headers = {"Accept-Encoding": "identity", **config.headers}
            transport = BoundedAnswers(MAX_ANSWER_BYTES)
            # The SDK leaves a client it was given open: the stack closes it with the connection.
            http = httpx2.AsyncClient(headers=headers, timeout=timeout, transport=transport)
            stack.push_async_callback(http.aclose)
            return streamable_http_client(config.url, http_client=http, max_sse_event_size=MAX_ANSWER_BYTES)
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
                    self.connections += 1
                    self.health_checks = 0
                    attempt = 0
                    logger.info("MCP server %s: %d tool(s)", self.config.name, len(self._tools))
                    await self._watch(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # down, refusing, or gone: try again later
                if not self._lost_connection.is_set():  # else a failed call has already said why
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
        """Returns when a call lost the connection; raises when a health check, every `health_seconds`, finds the
        server gone."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.health_seconds):
                    await self._lost_connection.wait()
                    return
            await self._check_health(client)
            self.health_checks += 1

    async def _check_health(self, client: Client) -> None:
        """Raises unless the server answers. The check is a tools/list past the client's cache: protocol revision
        2026-07-28 removed `ping` (servers answer it "Method not found"), and every tool server answers tools/list,
        of either era. Over streamable HTTP each request is a POST of its own, so only a request can tell that the
        server went away (a refused connection ends the client's context); over stdio a process that died fails it
        at once ("connection closed")."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await client.list_tools(cache_mode="bypass")
        except MCPError as exc:
            if exc.code in _NO_ANSWER:
                raise
            # The server's own error: it is there.

    def _lost(self, exc: BaseException) -> None:
        # The cause only: an exception's repr can carry its request, headers (the server's key) included.
        self.error = failure_cause(exc, self.config.command)
        logger.warning("MCP server %s unreachable: %s", self.config.name, self.error)
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
            except MCPError as exc:
                if exc.code == REQUEST_TIMEOUT:  # a slow tool: whether the server is there is the health check's call
                    raise ToolFailure("the tool did not answer in time") from None
                if exc.code == PARSE_ERROR:  # the client's own verdict on this answer (see BoundedAnswers)
                    limit = f"{MAX_ANSWER_BYTES // 1024} KiB"
                    too_big = f"the answer of the MCP server {self.config.name} was over {limit} or not JSON"
                    raise ToolFailure(too_big) from None
                if exc.code not in _NO_ANSWER:  # the server's refusal of this call: the connection is fine
                    refusal = exc.message[:200]
                    raise ToolFailure(f"the MCP server {self.config.name} refused the call: {refusal}") from None
                self._lost(exc)
                raise ToolFailure(f"the MCP server {self.config.name} failed") from None
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


class BoundedAnswers(httpx2.AsyncBaseTransport):
    """httpx's own transport, but a body other than an SSE stream (whose events the SDK bounds) is read to at most
    `limit` bytes, inflated here when it comes compressed (and no further than `limit`); past that it ends, so the
    SDK fails to parse that one answer instead of holding it all."""

    def __init__(self, limit: int) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        headers = response.headers.copy()
        encoding = headers.pop("content-encoding", "identity").strip().lower()
        headers.pop("content-length", None)
        return httpx2.Response(
            response.status_code,
            headers=headers,
            stream=_BoundedBody(response.stream, self._limit, encoding),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _BoundedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, limit: int, encoding: str) -> None:
        self._inner = inner
        self._limit = limit
        # gzip or zlib-wrapped deflate (47: either header); an encoding it did not ask for and cannot read ends the
        # body at once, which the SDK reports as an answer it could not parse.
        self._inflater = zlib.decompressobj(47) if encoding in ("gzip", "x-gzip", "deflate") else None
        self._unreadable = encoding not in ("identity", "gzip", "x-gzip", "deflate")

    async def __aiter__(self):
        if self._unreadable:
            return
        left = self._limit
        async for chunk in self._inner:
            if self._inflater is not None:
                try:
                    chunk = self._inflater.decompress(chunk, left)  # at most `left` bytes, however it inflates
                except zlib.error:
                    return
            if len(chunk) >= left:
                yield chunk[:left]
                return
            left -= len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def failure_cause(exc: BaseException, command: str | None = None) -> str:
    """Why a connection failed, in a few words: the root cause under the task groups and wrappers the SDK, httpx and
    anyio add (an ExceptionGroup of a ConnectError of an OSError of a refused connection is "connection refused")."""
    root = _root_cause(exc)
    if command and isinstance(root, FileNotFoundError):
        return f"command not found: {command}"
    if command and isinstance(root, PermissionError):
        return f"command not runnable: {command} (permission denied)"
    if isinstance(root, socket.gaierror):
        return f"host not found ({root.strerror})"
    if isinstance(root, TimeoutError | httpx2.TimeoutException):
        return "no answer in time"
    if isinstance(root, OSError) and root.errno and root.errno > 0:
        return os.strerror(root.errno).lower()
    if isinstance(root, MCPError):
        return root.message[:1].lower() + root.message[1:200]
    text = str(root)[:200]
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause: into exception groups (their first failure that is not a cancellation), along explicit
    causes, and into an exception that wraps another as its argument (httpcore does)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, BaseExceptionGroup):
            failures = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
            exc = (failures or list(exc.exceptions))[0]
            continue
        wrapped = [arg for arg in exc.args if isinstance(arg, BaseException)]
        inner = exc.__cause__ or (wrapped[0] if wrapped else None)
        if inner is None:
            break
        exc = inner
    return exc
