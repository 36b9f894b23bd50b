"""MCP servers through McpServerTools and the registry, against the `mcp` package's own server (fakes/mcp_server.py)
over streamable HTTP and stdio: a connection held for many health periods with calls throughout, a server that
really dies is noticed by the health check alone and reconnected, and the state names the root cause of a failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from fakes.mcp_server import STDIO_COMMAND, serving_http
from fakes.redis_server import free_port
from llmserver.tools.mcp import MAX_ANSWER_BYTES, McpServerTools
from llmserver.tools.registry import ToolCall, ToolRegistry
from llmserver.tools.tools_file import McpServerConfig
from tests.client import eventually

HEALTH = 0.2  # seconds: short, so a test sees many health periods
TRANSPORTS = ["http", "stdio"]


def stdio_config(name: str = "local") -> McpServerConfig:
    return McpServerConfig(
        name, command=STDIO_COMMAND["command"], args=tuple(STDIO_COMMAND["args"]), env=STDIO_COMMAND["env"]
    )


def http_config(port: int, name: str = "weather") -> McpServerConfig:
    return McpServerConfig(name, url=f"http://127.0.0.1:{port}/mcp")


@contextlib.contextmanager
def server_config(transport: str) -> Iterator[McpServerConfig]:
    if transport == "stdio":
        yield stdio_config()
        return
    with serving_http() as port:
        yield http_config(port)


async def call(registry: ToolRegistry, name: str, **arguments):
    return await registry.run_call(ToolCall("call_1", name, json.dumps(arguments)), registry.all_tools())


def lost_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmserver.tools" and r.levelno >= logging.WARNING]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_connection_is_held_for_many_health_periods_with_calls_throughout(transport, caplog, io_loop):
    with server_config(transport) as config:
        source = McpServerTools(config, health_seconds=HEALTH)
        registry = ToolRegistry([source])
        source.start()
        try:
            await eventually(lambda: "get_weather" in registry.all_tools(), timeout=20, what="connected")
            outcomes = []
            give_up = time.monotonic() + 30 * HEALTH
            while source.health_checks < 6 and time.monotonic() < give_up:  # six periods, calling all the while
                outcomes.append(await call(registry, "get_weather", city="Oslo"))
                await asyncio.sleep(HEALTH / 10)  # a call every tenth of a period, and the health check its turn
            failed = [o.content for o in outcomes if not o.ok]
            assert failed == []
            assert source.connections == 1  # never dropped, never respawned
            assert source.health_checks >= 6 and len(outcomes) > 10
            assert {o.content for o in outcomes} == {"18 degrees and cloudy in Oslo"}
            assert source.state()["reachable"] and source.state()["error"] is None
            assert lost_warnings(caplog) == []
        finally:
            await source.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_an_http_server_that_dies_is_noticed_by_the_health_check_and_reconnected(caplog, io_loop):
    port = free_port()
    source = McpServerTools(http_config(port), health_seconds=HEALTH)
    registry = ToolRegistry([source])
    try:
        with serving_http(port):
            source.start()
            await eventually(lambda: source.state()["reachable"], timeout=20, what="connected")
        # No call is made: only the health check can tell that the server went away.
        await eventually(lambda: not source.state()["reachable"], timeout=10, what="the loss noticed")
        assert source.state()["error"] == "connection refused"
        assert "get_weather" not in registry.all_tools()
        with serving_http(port):
            await eventually(lambda: source.state()["reachable"], timeout=20, what="reconnected")
            assert (await call(registry, "get_weather", city="Rome")).content == "18 degrees and cloudy in Rome"
        assert source.connections == 2
        assert any("connection refused" in message for message in lost_warnings(caplog))
    finally:
        await source.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_a_stdio_server_that_dies_is_noticed_by_the_health_check_and_respawned(caplog, io_loop):
    source = McpServerTools(stdio_config(), health_seconds=HEALTH)
    registry = ToolRegistry([source])
    source.start()
    try:
        await eventually(lambda: "process_id" in registry.all_tools(), timeout=20, what="connected")
        first = int((await call(registry, "process_id")).content)
        os.kill(first, signal.SIGKILL)
        # No call is made until it is back: only the health check can tell that the process died.
        await eventually(lambda: source.connections == 2 and source.state()["reachable"], timeout=20)
        second = await call(registry, "process_id")
        assert second.ok and int(second.content) != first
        assert any("connection closed" in message for message in lost_warnings(caplog))
    finally:
        await source.aclose()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(
    ("config", "cause"),
    [
        (http_config(free_port()), "connection refused"),
        (McpServerConfig("missing", command="no-such-mcp-command"), "command not found: no-such-mcp-command"),
        (
            McpServerConfig("exits", command=sys.executable, args=("-c", "pass")),
            "connection closed",
        ),
    ],
    ids=["refused", "no-command", "exits"],
)
async def test_an_unreachable_server_says_the_root_cause(config, cause, io_loop):
    source = McpServerTools(config, health_seconds=HEALTH)
    source.start()
    try:
        await eventually(lambda: source.state()["error"] != "not connected yet", timeout=20)
        assert source.state() | {"where": ""} == {
            "source": f"mcp:{config.name}",
            "where": "",
            "reachable": False,
            "tools": 0,
            "connections": 0,
            "error": cause,
        }
    finally:
        await source.aclose()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("force_gzip", [False, True], ids=["plain", "gzipped-unasked"])
async def test_an_http_answer_is_read_no_further_than_max_answer_bytes(force_gzip, io_loop):
    with serving_http(force_gzip=force_gzip) as port:
        source = McpServerTools(http_config(port), health_seconds=HEALTH)
        registry = ToolRegistry([source], result_chars=4000)
        source.start()
        try:
            await eventually(lambda: "long_text" in registry.all_tools(), timeout=20, what="connected")
            # (its text comes twice: as content and as structured content)
            within = await call(registry, "long_text", characters=MAX_ANSWER_BYTES // 4)
            assert within.ok and within.content == "a" * 4000 + "… [cut at 4000 characters]"
            # 4 MiB of text, a few KiB gzipped: neither read nor inflated past the bound; only this call fails.
            over = await call(registry, "long_text", characters=4 * MAX_ANSWER_BYTES)
            assert not over.ok and "was over 1024 KiB" in json.loads(over.content)["error"]
            assert (await call(registry, "get_weather", city="Oslo")).ok
            assert source.connections == 1
        finally:
            await source.aclose()
