"""Starts the fake upstream and the server as separate processes on ports the OS picks, and stops them.

Starting is written once here, for the benchmark (the context managers below) and the fuzz campaign (bench.fuzz,
which keeps each log): a process writes to a file, never to a pipe nobody reads, and the file is read until the
process says it listens."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The server prints both lines at once when it listens (a supervisor of --workers prints its first worker's).
SERVER_LISTENING = re.compile(r"listening on http://\S+:(\d+) .*\nAdmin dashboard: (\S+).*\n")
PORT_LINE = re.compile(r"^(\d+)\n", re.MULTILINE)  # what the fakes print first


class StartRefused(RuntimeError):
    """The process exited (or never said it listens) instead of starting; the message holds its log."""


def wait_for_line(path: str, process: subprocess.Popen, pattern: re.Pattern, timeout: float = 60.0) -> re.Match:
    """The first match of `pattern` in the file `process` writes to, once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        match = pattern.search(text)
        if match:
            return match
        if process.poll() is not None:
            raise StartRefused(f"exited with status {process.returncode}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise StartRefused(f"did not start within {timeout:g} s:\n{text[-3000:]}")
        time.sleep(0.05)


def stop(process: subprocess.Popen, grace: float = 20.0) -> int | None:
    """SIGTERM, as an operator stops it; SIGKILL after `grace` seconds. Returns the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def start_module(
    module: str, args: Sequence[str], out_path: str, err_path: str | None = None, env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen, int]:
    """`python -m <module> <args>`, a fake that prints its port first: (the process, the port). Its stdout goes to
    `out_path` (and its stderr to `err_path`, else where this process's goes)."""
    with open(out_path, "wb") as out, open(err_path, "wb") if err_path else contextlib.nullcontext() as err:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            env=None if env is None else dict(env),
        )
    try:
        return process, int(wait_for_line(out_path, process, PORT_LINE).group(1))
    except StartRefused:
        stop(process)
        raise


def server_environment(**env: str) -> dict[str, str]:
    """This process's environment without what would point a server elsewhere (an upstream, a metrics folder), and
    with `env`."""
    cleaned = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "PROMETHEUS_"))}
    return {**cleaned, **env}


def server_url(listening: re.Match) -> str:
    return f"http://localhost:{listening.group(1)}"


def start_server(
    log_path: str, args: Sequence[str], env: Mapping[str, str], root: str = ROOT
) -> tuple[subprocess.Popen, re.Match]:
    """`python server.py --port 0 <args>` of `root` (this checkout, or another version's tree), its stdout and
    stderr appended to `log_path`: (the process, the match of SERVER_LISTENING: the port, then the dashboard's
    URL)."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "server.py", "--port", "0", *args],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )
    try:
        return process, wait_for_line(log_path, process, SERVER_LISTENING)
    except StartRefused:
        stop(process)
        raise


@contextlib.contextmanager
def fake_upstream(
    words: int = 20,
    first_chunk_delay: float = 0.0,
    chunk_delay: float = 0.0,
    call_tool: str | None = None,
    stall_every: int = 0,
    stall_seconds: float = 0.0,
    reply: str | None = None,
) -> Iterator[int]:
    """`python -m fakes.upstream` (see its --help); yields its port."""
    pacing = ["--first-chunk-delay", str(first_chunk_delay), "--chunk-delay", str(chunk_delay)]
    if call_tool:
        pacing += ["--call-tool", call_tool]
    if stall_every:
        pacing += ["--stall-every", str(stall_every), "--stall-seconds", str(stall_seconds)]
    if reply is not None:
        pacing += ["--reply", reply]
    with tempfile.NamedTemporaryFile(prefix="bench-upstream-", suffix=".out") as out:
        process, port = start_module("fakes.upstream", ["--words", str(words), *pacing], out.name)
        try:
            yield port
        finally:
            stop(process, 10)


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
    """`server.py` of `root` against the fake upstream, on a temporary data directory; yields its port once it is
    ready."""
    environment = server_environment()
    if upstream_port is not None:
        environment["OPENAI_BASE_URL"] = f"http://127.0.0.1:{upstream_port}/v1"
        environment["OPENAI_API_KEY"] = "sk-bench"
    environment.update(env)
    with (
        tempfile.TemporaryDirectory(prefix="bench-log-") as logs,  # the server's log: shown if it does not start
        tempfile.TemporaryDirectory(prefix="bench-data-") as data,  # never the operator's data directory
    ):
        if "--data-dir" not in args:
            args = ("--data-dir", data, *args)
        log_path = os.path.join(logs, "server.log")
        process, listening = start_server(
            log_path, args, environment, root
        )  # StartRefused (a RuntimeError) holds the log
        try:
            port = int(listening.group(1))
            wait_until_ready(port)  # the knowledge base embedded: nothing of the start-up competes with the load
            yield port
        finally:
            stop(process, 15)
            if os.environ.get("BENCH_SERVER_LOG"):
                with open(log_path, encoding="utf-8", errors="replace") as handle:
                    sys.stderr.write(handle.read())
