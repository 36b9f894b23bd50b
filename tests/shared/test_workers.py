"""`python server.py --workers 2` as a real process tree: one port, shared state, supervision, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator

import pytest
from tornado.httpclient import AsyncHTTPClient

from bench.load import run_load
from fakes.processes import server_environment, server_url, start_server
from fakes.redis_server import free_port
from tests.client import eventually, stream
from tests.handlers.admin_client import bearer
from tests.test_server_process import open_stream, run_until_exit

TOKEN = "workers-test-token"
CHAT = {"messages": [{"role": "user", "content": "Tell me a story."}]}


@contextlib.asynccontextmanager
async def workers(tmp_path, redis_url: str, *args: str, count: int = 2) -> AsyncIterator[tuple[subprocess.Popen, str]]:
    """The server with `count` workers; its log goes to a file (a full pipe would stall it), read by `log_of`."""
    arguments = ["--workers", str(count), "--redis-url", redis_url, "--admin-token", TOKEN]
    arguments += ["--data-dir", str(tmp_path / "data"), "--embeddings", "none", *args]
    process, listening = await asyncio.to_thread(start_server, str(tmp_path / "server.log"), arguments,
                                                 server_environment())  # fmt: skip
    try:
        line = listening.group(0).splitlines()[0]
        assert count == 1 or f"({count} workers)" in line, line + log_of(tmp_path)
        yield process, server_url(listening)
    finally:
        if process.poll() is None:
            process.kill()  # the supervisor only: its workers are told by Linux and stop (their pipe closes)
            await asyncio.to_thread(process.wait, 30)


def log_of(tmp_path) -> str:
    return (tmp_path / "server.log").read_text(errors="replace")


async def status(url: str) -> dict:
    """One request on a new connection: the kernel picks the worker."""
    response = await AsyncHTTPClient(force_instance=True).fetch(
        url + "/admin/api/status", headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"}
    )
    return json.loads(response.body)


async def instances_seen(url: str, wanted: int = 2, tries: int = 200) -> set[str]:
    seen: set[str] = set()
    for _ in range(tries):
        seen.add((await status(url))["instance"])
        if len(seen) >= wanted:
            break
    return seen


def pid_of(instance: str) -> int:
    return int(instance.rsplit(":", 1)[1])


@pytest.mark.gen_test(timeout=120)
async def test_two_workers_serve_one_port_and_share_the_state(tmp_path, redis_server, io_loop):
    async with workers(tmp_path, redis_server.url) as (_, url):
        first, second = sorted(await instances_seen(url))
        added = await bearer(url, TOKEN).fetch("POST", "/admin/api/knowledge", {"id": "w", "content": "Both see it."})
        assert added.code == 201
        version = json.loads((await bearer(url, TOKEN).fetch("GET", "/admin/api/knowledge")).body)["version"]

        async def both_at_version() -> bool:
            replies = {}
            while len(replies) < 2:
                reply = await status(url)
                replies[reply["instance"]] = reply["knowledge_version"]
            return set(replies.values()) == {version}

        await eventually(both_at_version, what="both workers hold the edit")

        # Metrics add up across workers, whichever worker answers /metrics.
        for n in range(6):
            result = await stream(url, "/chat/completions", {"messages": [{"role": "user", "content": f"n{n}"}]})
            assert result.events[-1] == "[DONE]"

        async def counted_in_metrics() -> bool:
            # A request is counted as its handler ends, a moment after the client has its [DONE].
            metrics = (await AsyncHTTPClient().fetch(url + "/metrics")).body.decode()
            counted = re.findall(r'^llm_requests_total\{endpoint="chat",outcome="ok"\} (\S+)$', metrics, re.M)
            return [float(value) for value in counted] == [6.0]

        await eventually(counted_in_metrics, what="the six requests counted once each, across both workers")
        head = await AsyncHTTPClient().fetch(url + "/readyz", method="HEAD")
        assert head.code == 200 and head.body == b""
        assert first != second


@pytest.mark.gen_test(timeout=120)
async def test_a_killed_worker_is_restarted_and_its_peer_loses_nothing(tmp_path, redis_server, io_loop):
    async with workers(tmp_path, redis_server.url, "--offline-word-delay", "0.03") as (process, url):
        seen = await instances_seen(url)
        assert len(seen) == 2
        # Streams running on both workers; then one worker is killed outright.
        streams = [await open_stream(url) for _ in range(8)]
        for reader, _ in streams:
            await reader.readuntil(b'"content":"I "')
        victim = pid_of(sorted(seen)[0])
        os.kill(victim, signal.SIGKILL)
        finished = 0
        for reader, writer in streams:
            rest = await asyncio.wait_for(reader.read(), 30)
            finished += b"data: [DONE]" in rest
            writer.close()
        assert 0 < finished < 8  # the survivor's streams all ended properly; the victim's were cut
        survivors = await instances_seen(url, tries=400)
        assert len(survivors) == 2 and f":{victim}" not in " ".join(survivors)
        await eventually(lambda: f"pid {victim}) died (signal 9); starting another" in log_of(tmp_path))
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_drains_every_worker_then_exits_0(tmp_path, redis_server, io_loop):
    async with workers(tmp_path, redis_server.url, "--offline-word-delay", "0.04") as (process, url):
        streams = [await open_stream(url) for _ in range(6)]
        for reader, _ in streams:
            await reader.readuntil(b'"content":"I "')
        process.send_signal(signal.SIGTERM)
        for reader, writer in streams:
            assert b"data: [DONE]" in await asyncio.wait_for(reader.read(), 30), "a running stream was cut"
            writer.close()
        assert await asyncio.to_thread(process.wait, 30) == 0


@pytest.mark.gen_test(timeout=60)
async def test_several_workers_without_redis_refuse_to_start_and_say_what_to_set(tmp_path, io_loop):
    returncode, stdout, stderr = await run_until_exit("--workers", "2", "--data-dir", str(tmp_path / "data"))
    message = stderr.decode()
    assert returncode == 2 and b"listening" not in stdout
    assert "need REDIS_URL" in message and "share" in message and "Traceback" not in message


@pytest.mark.gen_test(timeout=60)
async def test_workers_whose_redis_is_unreachable_refuse_to_start(tmp_path, io_loop):
    returncode, stdout, stderr = await run_until_exit(
        "--workers", "2", "--port", "0", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
        "--data-dir", str(tmp_path / "data"), "--embeddings", "none",
    )  # fmt: skip
    message = stderr.decode()
    assert returncode == 2 and b"listening" not in stdout
    assert "cannot reach Redis" in message and "Traceback" not in message
    assert message.count("cannot reach Redis") == 1  # said once, before any worker starts


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_right_after_a_burst_of_traffic_still_exits_promptly(tmp_path, redis_server, io_loop):
    """The log shipper is mid-command when the stop comes: redis-py may swallow the cancellation, and shutdown
    must not wait on it forever."""
    async with workers(tmp_path, redis_server.url, "--offline-word-delay", "0", count=1) as (process, url):
        port = int(url.rsplit(":", 1)[1])
        await run_load(port, "/chat/completions", {**CHAT, "stream": True}, 30, 2.0)
        process.terminate()
        assert await asyncio.to_thread(process.wait, 15) == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_tool_switched_off_through_one_worker_is_off_in_both(tmp_path, redis_server, io_loop):
    """The issue's defect 3: after the switch, 16 of 30 requests (those the other worker took) still offered it."""
    async with workers(tmp_path, redis_server.url) as (_, url):
        assert len(await instances_seen(url)) == 2
        switched = await bearer(url, TOKEN).fetch("PUT", "/admin/api/tools/current_time", {"enabled": False})
        assert switched.code == 200

        async def off_on_a_new_connection() -> bool:  # the kernel picks the worker
            response = await AsyncHTTPClient(force_instance=True).fetch(
                url + "/admin/api/tools", headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"}
            )
            tools = {tool["name"]: tool["enabled"] for tool in json.loads(response.body)["tools"]}
            return tools["current_time"] is False

        async def off_in_every_reply() -> bool:
            return all([await off_on_a_new_connection() for _ in range(30)])

        await eventually(off_in_every_reply, timeout=20, what="30 replies in a row have it off")
