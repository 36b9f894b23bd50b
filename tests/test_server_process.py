"""`python server.py` as a real process: its start-up line and its graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator

import pytest

from tests.client import parse_sse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def start_server(tmp_path, *args: str, **env: str) -> tuple[asyncio.subprocess.Process, str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    environment.update(env)
    returncode, stdout, stderr = await run_until_exit("--port", "0", "--knowledge", str(tmp_path / "knowledge.json"))
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
        returncode, _, stderr = await run_until_exit("--port", port, "--knowledge", str(tmp_path / "knowledge.json"))
    finally:
        taken.close()
    assert returncode == 2
    assert "cannot listen on 127.0.0.1" in stderr.decode() and "Traceback" not in stderr.decode()
