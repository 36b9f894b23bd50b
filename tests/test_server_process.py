"""`python server.py` as a real process: its start-up line and its graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.audio_files import encode, tone
from tests.client import eventually, parse_sse, stream
from tests.conftest import files_in
from tests.handlers.admin_client import bearer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def disk_full_past(size: int) -> Callable[[], None]:
    """For a server process: every file it writes is refused past `size` bytes (RLIMIT_FSIZE; the kernel's EFBIG,
    which SQLite reports as a full disk or an I/O error, as it does ENOSPC), the way a full disk refuses it. The
    test process itself, and its own files, are untouched. SIGXFSZ is ignored so the write fails instead of
    killing the process. (A real full file system, a tiny tmpfs, needs a mount this test cannot make.)"""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


async def start_server(
    tmp_path, *args: str, file_size_limit: int | None = None, **env: str
) -> tuple[asyncio.subprocess.Process, str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    environment.update(env)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        os.path.join(ROOT, "server.py"),
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
        cwd=ROOT,
        preexec_fn=None if file_size_limit is None else disk_full_past(file_size_limit),
    )
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    assert "listening on" in line, (await process.stderr.read()).decode()
    url = line.split("listening on ")[1].split()[0]
    return process, url, line


async def run_until_exit(*args: str) -> tuple[int, bytes, bytes]:
    """Runs `server.py` with `args` until it exits by itself (a refused start)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        os.path.join(ROOT, "server.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, stdout, stderr


@contextlib.asynccontextmanager
async def running_server(
    tmp_path, *args: str, file_size_limit: int | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, str]]:
    process, url, line = await start_server(tmp_path, *args, file_size_limit=file_size_limit)
    try:
        yield process, url, line
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def open_stream(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"messages": [{"role": "user", "content": "slow please"}], "stream": True}).encode()
    head = f"POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.gen_test(timeout=60)
async def test_start_line_and_graceful_shutdown_lets_running_streams_finish(tmp_path, io_loop, stop_signal):
    async with running_server(tmp_path, "--offline-word-delay", "0.04") as (process, url, line):
        assert "upstream: offline" in line and url.startswith("http://localhost:")
        reader, writer = await open_stream(url)
        await reader.readuntil(b'"content":"I "')  # the stream is running
        process.send_signal(stop_signal)
        rest = await asyncio.wait_for(reader.read(), 30)
        assert b"data: [DONE]" in rest, "the running stream was cut by the shutdown"
        assert await asyncio.wait_for(process.wait(), 30) == 0
        writer.close()
        await writer.wait_closed()


@pytest.mark.gen_test(timeout=60)
async def test_shutdown_grace_bounds_the_wait(tmp_path, io_loop):
    async with running_server(tmp_path, "--offline-word-delay", "5", "--shutdown-grace", "0.2") as (process, url, _):
        reader, writer = await open_stream(url)
        await reader.readuntil(b"\r\n\r\n")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        events = parse_sse((await reader.read()).replace(b"\r\n", b"\n"))
        assert "[DONE]" not in events
        writer.close()
        await writer.wait_closed()


@pytest.mark.gen_test(timeout=60)
async def test_an_invalid_knowledge_base_stops_the_start_and_is_left_untouched(tmp_path, io_loop):
    broken = '{"documents": [{"id": "ok", "content": "fine"}, {"id": "ok", "content": "twice"}]}'
    (tmp_path / "knowledge.json").write_text(broken)
    returncode, stdout, stderr = await run_until_exit(
        "--port", "0", "--data-dir", str(tmp_path / "data"), "--knowledge", str(tmp_path / "knowledge.json")
    )
    assert returncode == 2 and b"listening" not in stdout
    message = stderr.decode()
    assert str(tmp_path / "knowledge.json") in message and "'ok' appears twice" in message
    assert "Traceback" not in message
    assert (tmp_path / "knowledge.json").read_text() == broken


@pytest.mark.gen_test(timeout=60)
async def test_a_port_in_use_is_a_clear_error_not_a_traceback(tmp_path, io_loop):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = str(taken.getsockname()[1])
        returncode, _, stderr = await run_until_exit("--port", port, "--data-dir", str(tmp_path / "data"))
    finally:
        taken.close()
    assert returncode == 2
    assert "cannot listen on 127.0.0.1" in stderr.decode() and "Traceback" not in stderr.decode()


def _tracked_defaults() -> dict[str, bytes]:
    return {
        "knowledge.json": (Path(ROOT) / "knowledge.json").read_bytes(),
        **{f"audio/{name}": data for name, data in files_in(Path(ROOT) / "audio").items()},
    }


@pytest.mark.gen_test(timeout=60)
async def test_operator_data_lives_in_the_data_directory_and_survives_a_restart(tmp_path, io_loop):
    """The README's own admin examples (add a document, upload a clip) change the data directory only, never the
    shipped defaults the tests and a fresh start rely on."""
    shipped = _tracked_defaults()
    token = "data-dir-test-token"
    async with running_server(tmp_path, "--admin-token", token) as (process, url, _):
        admin = bearer(url, token)
        added = await admin.fetch("POST", "/admin/api/knowledge", {"id": "hours", "content": "Open 9 to 5."})
        assert added.code == 201
        boundary = "x1x2x3"
        form = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nhello\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="transcript"\r\n\r\nHello!\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="hello.wav"\r\n\r\n'
            ).encode()
            + encode(tone(0.5, 16000), 16000)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        uploaded = await admin.fetch(
            "POST", "/admin/api/audio", raw=form, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        assert uploaded.code == 201, uploaded.body
        process.terminate()
        await process.wait()
    assert _tracked_defaults() == shipped
    data = tmp_path / "data"
    assert "hours" in (data / "knowledge.json").read_text() and (data / "audio" / "library.json").exists()
    async with running_server(tmp_path, "--admin-token", token) as (process, url, _):
        names = [
            c["name"] for c in json.loads((await bearer(url, token).fetch("GET", "/admin/api/audio")).body)["clips"]
        ]
        assert names == ["file", "hello"]
        process.terminate()
        await process.wait()


def test_the_default_data_directory_is_ignored_by_git():
    from llmserver.settings import load_settings

    assert load_settings([], {}).data_dir == "data"
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/knowledge.json"], cwd=ROOT)
    assert ignored.returncode == 0, "data/ must be in .gitignore: operator data never lands in the tracked tree"


@pytest.mark.gen_test(timeout=60)
async def test_an_invalid_tools_file_stops_the_start_naming_the_problem(tmp_path, io_loop):
    tools = tmp_path / "tools.json"
    tools.write_text('{"tools": [{"name": "hook", "description": "d", "url": "http://h/${UNSET_FOR_THIS_TEST}"}]}')
    returncode, _, stderr = await run_until_exit(
        "--port", "0", "--data-dir", str(tmp_path / "data"), "--tools-file", str(tools)
    )
    message = stderr.decode()
    assert returncode == 2 and "invalid tools file" in message and "UNSET_FOR_THIS_TEST" in message
    assert "Traceback" not in message


@pytest.mark.gen_test(timeout=60)
async def test_an_upstreams_file_with_a_problem_stops_the_start_naming_the_file_and_the_problem(tmp_path, io_loop):
    upstreams = tmp_path / "upstreams.json"
    twice = {"name": "primary", "base_url": "http://127.0.0.1:9/v1"}
    upstreams.write_text(json.dumps({"upstreams": [twice, twice]}))
    returncode, _, stderr = await run_until_exit(
        "--port", "0", "--data-dir", str(tmp_path / "data"), "--upstreams-file", str(upstreams)
    )
    message = stderr.decode()
    assert returncode == 2 and "invalid upstreams file" in message and str(upstreams) in message
    assert "'primary'" in message and "Traceback" not in message
    assert not (tmp_path / "data").exists()  # refused before anything was written


@pytest.mark.gen_test(timeout=60)
async def test_the_history_and_the_admin_sign_in_survive_a_restart(tmp_path, io_loop):
    """Without Redis and without ADMIN_TOKEN: the token is made once and kept (mode 600), the history on disk."""
    async with running_server(tmp_path) as (process, url, _):
        token = (await process.stdout.readline()).decode().split("token=")[1].strip()
        result = await stream(url, "/chat/completions", {"messages": [{"role": "user", "content": "remember me"}]})
        assert result.events[-1] == "[DONE]"
        process.terminate()
        assert await process.wait() == 0
    secrets_file = tmp_path / "data" / "secrets.json"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    async with running_server(tmp_path) as (process, url, _):
        assert (await process.stdout.readline()).decode().split("token=")[1].strip() == token
        history = await bearer(url, token).fetch("GET", "/admin/api/history")
        assert history.code == 200  # the same token still signs in
        records = json.loads(history.body)["records"]
        assert [r["last_user_message"] for r in records] == ["remember me"]
        process.terminate()
        await process.wait()


def _open_files_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@pytest.mark.gen_test(timeout=90)
async def test_running_out_of_file_descriptors_is_reported_not_a_traceback_storm(tmp_path, io_loop):
    # At the descriptor limit Tornado's accept loop raised on every readiness event: 64,314 tracebacks in seconds.
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable, os.path.join(ROOT, "server.py"), "--port", "0", "--data-dir", str(tmp_path / "data"),
        "--embeddings", "none",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment, cwd=ROOT,
        preexec_fn=_open_files_limit(96),
    )  # fmt: skip
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        url = line.split("listening on ")[1].split()[0]
        port = int(url.rsplit(":", 1)[1])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]  # more than it may open
        seen = b""
        while b"cannot accept connections" not in seen:
            seen += await asyncio.wait_for(process.stderr.readline(), 30)
        await asyncio.sleep(1.0)  # a window in which a storm would show: the loop keeps being woken
        for _, writer in held:
            writer.close()
        client = AsyncHTTPClient()
        await eventually(lambda: _healthy(client, url), timeout=30, what="serving again once connections closed")
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    log = (seen + stderr).decode()
    assert "Traceback" not in log
    assert log.count("Too many open files") <= 2, log[:2000]


async def _healthy(client: AsyncHTTPClient, url: str) -> bool:
    response = await client.fetch(url + "/healthz", raise_error=False, request_timeout=5)
    return response.code == 200


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.gen_test(timeout=60)
async def test_either_event_loop_serves(tmp_path, io_loop, loop):
    process, url, _ = await start_server(tmp_path, "--embeddings", "none", EVENT_LOOP=loop)
    try:
        result = await stream(url, "/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})
        assert result.response.code == 200 and result.events[-1] == "[DONE]"
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert f"event loop: {loop}" in stderr.decode()


async def stopped(process: asyncio.subprocess.Process) -> str:
    """Stops the server (SIGTERM) and returns what it logged."""
    process.terminate()
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    return stderr.decode()


async def data_directory_of_a_first_start(tmp_path) -> None:
    async with running_server(tmp_path, "--embeddings", "none") as (process, _, _):
        await stopped(process)


async def dropped_from_history(url: str) -> float:
    metrics = (await AsyncHTTPClient().fetch(url + "/metrics")).body.decode()
    found = [line for line in metrics.splitlines() if line.startswith('llm_log_records_dropped_total{where="history"}')]
    return float(found[0].split()[-1]) if found else 0.0


@pytest.mark.gen_test(timeout=90)
async def test_a_full_disk_at_start_turns_the_history_off_and_the_server_serves(tmp_path, io_loop):
    token = "full-disk-token"
    await data_directory_of_a_first_start(tmp_path)
    async with running_server(tmp_path, "--embeddings", "none", "--admin-token", token, file_size_limit=0) as (
        process,
        url,
        _,
    ):
        result = await stream(url, "/chat/completions", {"messages": [{"role": "user", "content": "still here?"}]})
        assert result.events[-1] == "[DONE]"
        ready = await AsyncHTTPClient().fetch(url + "/readyz")
        assert ready.code == 200 and json.loads(ready.body)["checks"]["history"] is False
        refused = await bearer(url, token).fetch("GET", "/admin/api/history")
        assert refused.code == 503 and json.loads(refused.body)["error"]["code"] == "history_off"
        await eventually(lambda: dropped_from_history(url), what="the record not kept is counted")
        status = json.loads((await bearer(url, token).fetch("GET", "/admin/api/status")).body)
        assert status["dropped_records"] == await dropped_from_history(url) == 1
        log = await stopped(process)
    assert "request history off" in log and "Traceback" not in log

    # The embedding cache, which a full disk stops too: served without it (every start embeds everything).
    async with running_server(
        tmp_path, "--embeddings", "endpoint", "--embeddings-base-url", "http://127.0.0.1:9/v1", file_size_limit=0
    ) as (process, url, _):
        assert (await AsyncHTTPClient().fetch(url + "/healthz")).code == 200
        log = await stopped(process)
    assert "embedding cache off" in log and "Traceback" not in log


@pytest.mark.gen_test(timeout=90)
async def test_records_a_full_disk_refuses_are_counted_as_dropped_and_the_server_stays_ready(tmp_path, io_loop):
    token = "full-disk-token"
    await data_directory_of_a_first_start(tmp_path)
    # Room for the history's files to be opened (its shared-memory index takes 32 KiB), not for much more.
    async with running_server(tmp_path, "--embeddings", "none", "--admin-token", token, file_size_limit=40_000) as (
        process,
        url,
        _,
    ):
        history = bearer(url, token)

        async def a_record_is_dropped() -> bool:
            chat = {"messages": [{"role": "user", "content": "a long question " * 200}]}
            assert (await stream(url, "/chat/completions", chat)).events[-1] == "[DONE]"
            assert (await history.fetch("GET", "/admin/api/history")).code == 200  # written (or not) by now
            return await dropped_from_history(url) > 0

        await eventually(a_record_is_dropped, timeout=30, what="the disk fills up")
        status = json.loads((await history.fetch("GET", "/admin/api/status")).body)
        assert status["dropped_records"] == await dropped_from_history(url)
        ready = await AsyncHTTPClient().fetch(url + "/readyz")
        assert ready.code == 200 and json.loads(ready.body)["checks"]["history"] is False
        log = await stopped(process)
    assert "records not written" in log and "Traceback" not in log


@pytest.mark.gen_test(timeout=60)
async def test_sigterm_as_soon_as_the_start_line_appears_still_drains_and_exits_0(tmp_path, io_loop):
    process, _, _ = await start_server(tmp_path, "--embeddings", "none")
    process.terminate()
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    assert "shutting down" in stderr.decode()
