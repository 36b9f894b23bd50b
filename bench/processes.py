"""Starts the fake upstream and the server as separate processes on ports the OS picks, and stops them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def fake_upstream(
    words: int = 20, first_chunk_delay: float = 0.0, chunk_delay: float = 0.0, call_tool: str | None = None
) -> Iterator[int]:
    pacing = ["--first-chunk-delay", str(first_chunk_delay), "--chunk-delay", str(chunk_delay)]
    if call_tool:
        pacing += ["--call-tool", call_tool]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--words", str(words), *pacing],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield int(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(10)


def wait_until_ready(port: int, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                return
        except OSError:  # 503 (HTTPError) while it starts, or a refused connection
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server on port {port} was not ready within {seconds:.0f} s") from None
            time.sleep(0.1)


@contextlib.contextmanager
def llm_server(upstream_port: int | None, *args: str, root: str = ROOT, **env: str) -> Iterator[int]:
    """`server.py` of `root` (this checkout, or another version's tree) against the fake upstream, on a temporary
    data directory; yields its port once it is ready."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    if upstream_port is not None:
        environment["OPENAI_BASE_URL"] = f"http://127.0.0.1:{upstream_port}/v1"
        environment["OPENAI_API_KEY"] = "sk-bench"
    environment.update(env)
    with (
        tempfile.TemporaryFile("w+") as log,  # the server's log: shown if it does not start, else discarded
        tempfile.TemporaryDirectory(prefix="bench-data-") as data,  # never the operator's data directory
    ):
        if "--data-dir" not in args:
            args = ("--data-dir", data, *args)
        process = subprocess.Popen(
            [sys.executable, "server.py", "--port", "0", *args],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=environment,
        )
        try:
            line = process.stdout.readline()
            if "listening on " not in line:
                process.wait(15)
                log.seek(0)
                raise RuntimeError(f"the server did not start (exit code {process.returncode}):\n{log.read()[-3000:]}")
            port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
            wait_until_ready(port)  # the knowledge base embedded: nothing of the start-up competes with the load
            yield port
        finally:
            process.terminate()
            process.wait(15)
            if os.environ.get("BENCH_SERVER_LOG"):
                log.seek(0)
                sys.stderr.write(log.read())
