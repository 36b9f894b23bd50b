"""A fuzzing and fault-injection campaign against the server, run as separate processes, summarised in Markdown.

    .venv/bin/python -m bench.fuzz            # 6000 hostile requests, 300 through a faulty upstream, 40 kill -9s
    .venv/bin/python -m bench.fuzz --quick    # 600, 60 and 8: well under two minutes
    .venv/bin/python -m bench.fuzz --requests 2000 --kills 10 --seed 7

Three phases, each against fresh processes (`python -m tests.fake_upstream` and `python server.py --port 0
--data-dir <temporary directory>`, on ports the OS picks; the repository's own data/ is never touched):

1. Hostile requests on raw sockets from a few concurrent workers: malformed, truncated, huge, deeply nested and
   badly typed bodies, lone surrogates, NaN and 1e400; bad Content-Length, chunked framing, origins, forwarded
   addresses, authorization schemes and request ids; partial, pipelined and abandoned requests; every method on
   every route; path traversal on the static files and the admin API, with and without the admin token.
2. Valid requests to /chat, /rag and /audio (streamed and not) through a fake upstream that injects a random fault
   into some requests (`--faults`): each failure is attributed to an injected fault, or else is a defect.
3. A kill -9 loop: concurrent admin changes (documents, WAV uploads whose transcript names the hash of their PCM,
   activations, deletions), SIGKILL at a random moment, restart on the same data directory, then check that every
   acknowledged save survived and every clip's transcript still matches its audio.

Exit status 1 when there was a 5xx not caused by the upstream, a traceback (or ERROR line) in a server log, a lost
save, a mismatched clip, or a server that refused to start; the logs are then kept and their folder named.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile

from llmserver.audio.codec import SIMULATED_TRANSCRIPT
from llmserver.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"
READ_LIMIT = 1 << 24  # the StreamReader's line limit: response heads are never near it
KILL_ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
FAKE_WORDS = 12
SAMPLE_RATE = 16_000
SHIPPED_PCM = os.path.join(ROOT, "audio", "file.pcm")
SHIPPED_TRANSCRIPT = os.path.join(ROOT, "audio", "file.txt")


# Processes -------------------------------------------------------------------------------------------------------


class StartRefused(Exception):
    """The server exited (or never said it listens) instead of starting; the message holds its log."""


def _clean_environment(**extra: str) -> dict[str, str]:
    """This environment without any of the server's settings (or the SDK's), plus `extra`."""
    names = {name for f in dataclasses.fields(Settings) for name in f.metadata["env"]}
    environment = {
        key: value for key, value in os.environ.items() if key not in names and not key.startswith(("OPENAI_", "LLM_"))
    }
    environment["PYTHONUNBUFFERED"] = "1"
    environment.update(extra)
    return environment


async def _wait_for_line(path: str, process: subprocess.Popen, pattern: re.Pattern, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        match = pattern.search(text)
        if match:
            return match.group(0)
        if process.poll() is not None:
            raise StartRefused(f"exited with status {process.returncode}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise StartRefused(f"did not start within {timeout:g} s:\n{text[-3000:]}")
        await asyncio.sleep(0.05)


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    admin_token: str
    log_path: str

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.process.pid}/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    async def stop(self) -> int | None:
        """SIGTERM, as an operator stops it; SIGKILL after 20 s. Returns the exit status."""
        return await _stop(self.process)

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        while self.process.poll() is None:
            await asyncio.sleep(0.01)


async def _stop(process: subprocess.Popen, grace: float = 20.0) -> int | None:
    if process.poll() is None:
        process.terminate()
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode


async def start_fake_upstream(
    folder: str, name: str, faults: float = 0.0, seed: int = 0
) -> tuple[subprocess.Popen, int, str]:
    """The fake upstream (`python -m tests.fake_upstream`); its stdout (the port, then with --faults one JSON line
    per chat request) goes to a file, never to a pipe nobody reads."""
    out_path = os.path.join(folder, f"{name}.out")
    err_path = os.path.join(folder, f"{name}.err")
    command = [sys.executable, "-m", "tests.fake_upstream", "--words", str(FAKE_WORDS)]
    if faults:
        command += ["--faults", str(faults), "--fault-seed", str(seed)]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, env=_clean_environment())
    line = await _wait_for_line(out_path, process, re.compile(r"^\d+\n", re.MULTILINE))
    return process, int(line), out_path


async def start_server(
    folder: str,
    name: str,
    data_dir: str,
    upstream_port: int | None,
    args: Iterable[str] = (),
    admin_token: str | None = None,
    **env: str,
) -> ServerProcess:
    """`python server.py --port 0 --data-dir <data_dir>`, its stdout and stderr in `<folder>/<name>.log`."""
    log_path = os.path.join(folder, f"{name}.log")
    extra = dict(env)
    extra.setdefault("SHUTDOWN_GRACE", "2")
    if upstream_port is not None:
        extra["OPENAI_BASE_URL"] = f"http://{HOST}:{upstream_port}/v1"
        extra["OPENAI_API_KEY"] = "sk-fuzz"
    command = [sys.executable, "server.py", "--port", "0", "--host", HOST, "--data-dir", data_dir, *args]
    if admin_token:
        command += ["--admin-token", admin_token]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=_clean_environment(**extra)
        )
    try:
        listening = await _wait_for_line(log_path, process, re.compile(r"listening on http://\S+:(\d+) .*\n"))
        dashboard = await _wait_for_line(log_path, process, re.compile(r"Admin dashboard: \S+.*\n"))
    except StartRefused:
        await _stop(process)
        raise
    port = int(re.search(r":(\d+) ", listening).group(1))
    token_match = re.search(r"\?token=(\S+)", dashboard)
    token = admin_token or (token_match.group(1) if token_match else "")
    return ServerProcess(process, port, token, log_path)


# A raw HTTP/1.1 client -------------------------------------------------------------------------------------------


class ClosedEarly(Exception):
    """The connection closed before a whole response arrived."""


class BadResponse(Exception):
    """Bytes that are not an HTTP response."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header's values joined with ", "
    body: bytes
    head: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


async def read_response(reader: asyncio.StreamReader, method: str) -> Response:
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ClosedEarly(exc.partial[:200]) from None
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise BadResponse(head[:200])
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if 100 <= status < 200 and status != 101:
            continue  # 100 Continue: the real answer follows
        break
    try:
        if method == "HEAD" or status in (101, 204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()  # to the end of the connection
    except asyncio.IncompleteReadError as exc:
        raise ClosedEarly(head[:200] + b" ... " + exc.partial[-200:]) from None
    return Response(status, headers, body, head)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


@dataclass
class Exchange:
    responses: list[Response] = field(default_factory=list)
    error: str | None = None  # refused, reset, timeout, closed, bad-response
    detail: str = ""
    write_error: str | None = None


async def exchange(
    port: int,
    pieces: list[tuple[bytes, float]],
    methods: list[str],
    *,
    timeout: float = 15.0,
    linger: float = 0.0,
    until_close: bool = False,
) -> Exchange:
    """Sends `pieces` (bytes, then a pause) on a new connection while reading one response per entry of
    `methods`. With no methods, no response is awaited: after sending, whatever comes within `linger` seconds is
    read (partial requests, abandoned bodies). With `until_close`, responses are read until the server closes."""
    result = Exchange()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port, limit=READ_LIMIT), timeout)
    except OSError as exc:
        result.error, result.detail = "refused", repr(exc)
        return result
    except TimeoutError:
        result.error = "timeout"
        return result

    async def send() -> None:
        try:
            for data, pause in pieces:
                for start in range(0, len(data), 1 << 20):
                    writer.write(data[start : start + (1 << 20)])
                    await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
        except (ConnectionError, OSError) as exc:
            result.write_error = type(exc).__name__

    sending = asyncio.ensure_future(send())
    try:
        async with asyncio.timeout(timeout):
            for method in methods:
                response = await read_response(reader, method)
                result.responses.append(response)
                if response.closes:
                    break  # the server said it closes: the rest of a pipeline goes unanswered, as announced
            else:
                if until_close and methods:
                    await _read_more(reader, result, idle=1.0)
            if linger or not methods:
                await sending
                if linger:
                    await _read_more(reader, result, idle=linger)
    except TimeoutError:
        result.error = "timeout"
    except ConnectionError as exc:
        result.error, result.detail = "reset", repr(exc)
    except ClosedEarly as exc:
        result.error, result.detail = "closed", repr(exc.args[0]) if exc.args else ""
    except BadResponse as exc:
        result.error, result.detail = "bad-response", repr(exc.args[0])
    except (ValueError, asyncio.LimitOverrunError) as exc:
        result.error, result.detail = "bad-response", repr(exc)
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return result


async def _read_more(reader: asyncio.StreamReader, result: Exchange, idle: float) -> None:
    """Reads whatever responses still come, until the server closes or is silent for `idle` seconds; the answers
    awaited have come already, so how the connection ends here is no error."""
    with contextlib.suppress(TimeoutError, ClosedEarly, BadResponse, ConnectionError, ValueError):
        while True:
            async with asyncio.timeout(idle):
                result.responses.append(await read_response(reader, "GET"))


Header = tuple[str | bytes, str | bytes]


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def build_request(
    method: str | bytes,
    target: str | bytes,
    headers: list[Header],
    body: bytes = b"",
    *,
    length: str | bytes | None = "auto",
    version: str | bytes = "HTTP/1.1",
    eol: bytes = b"\r\n",
) -> bytes:
    """One request as bytes. `length` "auto" adds the body's Content-Length (when there is a body or the method
    carries one); None adds none; anything else is sent as the header's value."""
    lines = [_b(method) + b" " + _b(target) + b" " + _b(version)]
    lines += [_b(name) + b": " + _b(value) for name, value in headers]
    if length == "auto":
        if body or _b(method) in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
    elif length is not None:
        lines.append(b"Content-Length: " + _b(length))
    return eol.join(lines) + eol + eol + body


def multipart(fields: list[tuple[str, bytes, str | None, str | None]]) -> tuple[str, bytes]:
    """(content type, body) of a form: each field is (name, value, filename or None, content type or None)."""
    boundary = "----fuzzboundary" + hashlib.sha256(repr(fields).encode()).hexdigest()[:16]
    parts = []
    for name, value, filename, content_type in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        parts.append(head.encode() + b"\r\n" + value + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


def sse_payloads(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


# Server logs -----------------------------------------------------------------------------------------------------

_LOG_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)$")


@dataclass
class LogReport:
    tracebacks: list[str] = field(default_factory=list)  # an excerpt of each
    error_lines: list[str] = field(default_factory=list)  # ERROR/CRITICAL lines other than the access log's
    access_5xx: int = 0  # the access log's ERROR lines: one per 5xx response

    def add(self, other: LogReport) -> None:
        self.tracebacks += other.tracebacks
        self.error_lines += other.error_lines
        self.access_5xx += other.access_5xx


def analyse_log(text: str, source: str) -> LogReport:
    report = LogReport()
    lines = text.splitlines()
    last_log_line = ""
    for number, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            block = [line]
            for following in lines[number + 1 :]:
                block.append(following)
                if following and not following.startswith((" ", "Traceback", "During handling", "The above")):
                    break
            files = [entry.strip() for entry in block if entry.strip().startswith("File ")]
            ours = [entry for entry in files if ROOT in entry and "site-packages" not in entry]
            where = " ... ".join(dict.fromkeys(([ours[-1]] if ours else []) + files[-1:])) or "?"
            report.tracebacks.append(f"[{source}] after: {last_log_line[:300]}\n    at: {where}\n    {block[-1][:300]}")
            continue
        match = _LOG_LINE.match(line)
        if not match:
            continue
        last_log_line = line
        level, logger_name, message = match.groups()
        if level not in ("ERROR", "CRITICAL"):
            continue
        if logger_name == "tornado.access" and re.match(r"5\d\d ", message):
            report.access_5xx += 1
        else:
            report.error_lines.append(f"[{source}] {line[:400]}")
    return report


# Phase 1: hostile requests ---------------------------------------------------------------------------------------

COMPLETIONS = (
    "/chat/completions /v1/chat/completions /rag/chat/completions /v1/rag/chat/completions "
    "/audio/chat/completions /v1/audio/chat/completions"
).split()
ROUTES = [
    *COMPLETIONS,
    "/v1/models",
    "/models",
    "/rag/models",
    "/v1/rag/models",
    "/audio/models",
    "/v1/audio/models",
    "/healthz",
    "/admin",
    "/admin/",
    "/admin/api/status",
    "/admin/api/retrieval?q=agora&k=3",
    "/admin/api/knowledge",
    "/admin/api/knowledge.json",
    "/admin/api/knowledge/connect-agora",
    "/admin/api/audio",
    "/admin/api/audio/file.wav",
    "/admin/api/audio/file/activate",
    "/admin/api/audio/file",
    "/admin/ws/logs",
    "/static/admin.css",
    "/static/js/main.js",
    "/",
    "/no/such/route",
]
METHODS = "GET POST PUT DELETE PATCH OPTIONS HEAD PROPFIND TRACE CONNECT get FUZZ".split()
QUESTIONS = [
    "How do I connect this server to Agora?",
    "What is the waiting message?",
    "怎么连接声网的对话式AI引擎？",
    "Hello, who are you?",
]
TRAVERSALS = [
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "%2e%2e%2f%2e%2e%2fserver.py",
    "..",
    ".",
    "%2e%2e",
    "%00",
    "file%00.pcm",
    "a%00b",
    "%2500",
    "....//....//etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "%5c..%5c..%5cserver.py",
    "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "%ff%fe%fd",
    "%ED%A0%80",
    "ünïcødé",
    "%F0%9F%98%80",
    "/etc/passwd",
    "//etc/passwd",
    ".hidden",
    "library.json",
    "..%2flibrary.json",
    "knowledge.json",
    "js/../../server.py",
    "js/%2e%2e/%2e%2e/server.py",
    "admin.css%00.js",
    "%0d%0aX-Fuzz-Injected:%20yes",
    "%",
    "%zz",
    "~",
    "%20",
    "a b",
    "con",
    "file",
    "connect-agora",
    "A" * 65,
    "B" * 5000,
    "C" * 70000,
]
WRONG_VALUES = [
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1.5",
    '"text"',
    '""',
    "[]",
    "{}",
    "[1, 2]",
    '{"a": 1}',
    "18446744073709551616",
    '"\\u0000"',
    '[{"role": "user"}]',
    "[null]",
    '[{"type": "text", "text": 5}]',
]
HOLE = "__FUZZ_HOLE__"
HOLE_PATHS: list[tuple[Any, ...]] = [
    ("messages", -1, "content"),
    ("messages", -1, "role"),
    ("messages", -1, "name"),
    ("messages", -1, "metadata"),
    ("messages", -1, "turn_id"),
    ("messages",),
    ("messages", -1),
    ("model",),
    ("stream",),
    ("temperature",),
    ("top_p",),
    ("max_tokens",),
    ("n",),
    ("seed",),
    ("stop",),
    ("tools",),
    ("tool_choice",),
    ("response_format",),
    ("modalities",),
    ("audio",),
    ("stream_options",),
    ("logit_bias",),
    ("user",),
    ("context",),
    ("turn_id",),
    ("timestamp",),
    ("interruptable",),
    ("fuzz_unknown_field",),
]
ADMIN_HOLE_PATHS: list[tuple[Any, ...]] = [("id",), ("title",), ("content",), ("tags",), ("enabled",), ("version",)]


@dataclass
class Case:
    kind: str
    pieces: list[tuple[bytes, float]]
    methods: list[str]  # one per response expected
    linger: float = 0.0
    timeout: float = 15.0
    until_close: bool = False
    note: str = ""  # what to show in a defect report

    @classmethod
    def one(cls, kind: str, data: bytes, method: str = "POST", **kwargs: Any) -> Case:
        return cls(kind, [(data, 0.0)], [method], **kwargs)


def _set_path(document: Any, path: tuple[Any, ...], value: Any) -> None:
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


def _with_hole(body: dict[str, Any], path: tuple[Any, ...], raw: bytes) -> bytes:
    document = json.loads(json.dumps(body))
    _set_path(document, path, HOLE)
    return json.dumps(document, ensure_ascii=False).encode().replace(f'"{HOLE}"'.encode(), raw, 1)


def _wav_header(rate: int, channels: int = 1, bits: int = 16, data: bytes = b"", kind: int = 1) -> bytes:
    """A WAV file with the header it is given, however unlikely (`kind` 1 is PCM, 3 float, 6 A-law)."""
    block = channels * bits // 8
    fmt = struct.pack("<IHHIIHH", 16, kind, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    chunks = [b"WAVE", b"fmt ", fmt, b"data", struct.pack("<I", len(data)), data]
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"".join(chunks)


@functools.cache
def odd_audio() -> list[bytes]:
    """Audio files that are valid, or nearly, but unusual: odd sample rates, channel counts and sample formats,
    NaN samples, no samples, FLAC and OGG, and truncated ones."""
    tone = (np.sin(np.arange(800) / 5.0) * 0.3).astype("float32")
    files = [_wav_header(rate, data=b"\x01\x00" * 100) for rate in (0, 1, 7, 4000, 192_000, 2**31 - 1, 2**32 - 1)]
    files += [
        _wav_header(16_000, channels=0, data=b"\x01\x00" * 10),
        _wav_header(16_000, channels=1024, data=b"\x01\x00" * 10),
        _wav_header(16_000, bits=7, data=b"\x01\x00" * 10),
        _wav_header(16_000, bits=32, kind=3, data=struct.pack("<4f", math.nan, math.inf, 1e30, -1e30)),
        _wav_header(8_000, bits=8, kind=6, data=b"\x55" * 100),
    ]
    for samples, rate, kind in ((tone, 16_000, "FLAC"), (tone, 16_000, "OGG"), (np.zeros((100, 8)), 44_100, "WAV")):
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, rate, format=kind)
        files += [buffer.getvalue(), buffer.getvalue()[: len(buffer.getvalue()) // 2]]
    return files


def _deep(rng: random.Random) -> bytes:
    depth = int(10 ** rng.uniform(2, 5))
    kind = rng.choice(["list", "object", "mixed"])
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'[{"a":' * (depth // 2) + b"0" + b"}]" * (depth // 2)


class HostileCases:
    """The hostile requests: case number i is the same for a given seed, whatever order the workers take them."""

    def __init__(self, seed: int, port: int, admin_token: str, admin_cookie: str = "", xsrf_cookie: str = "") -> None:
        self.seed = seed
        self.port = port
        self.token = admin_token
        self.host = f"{HOST}:{port}"
        self.admin_cookie = admin_cookie  # "llm_admin=...", as the dashboard's sign-in sets it
        self.xsrf_cookie = xsrf_cookie  # "_xsrf=...", as the dashboard's page sets it

    # Helpers ----------------------------------------------------------------------------------------------------

    def chat_body(self, rng: random.Random) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "stream": rng.random() < 0.6,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": rng.choice(QUESTIONS)},
            ],
        }
        if rng.random() < 0.3:
            body["stream_options"] = {"include_usage": True}
        if rng.random() < 0.2:
            body.update(
                turn_id=rng.randint(0, 99), timestamp=1.7e9 + rng.random(), interruptable=True, context={"k": 1}
            )
        return body

    def admin_document(self, rng: random.Random) -> dict[str, Any]:
        return {
            "id": f"fuzz-{rng.randint(0, 30)}",
            "title": "Fuzz",
            "content": "fuzzing text about agora",
            "tags": ["fuzz"],
            "enabled": True,
            "version": 10**6,
        }

    def headers(
        self, rng: random.Random, *, content_type: str | None = "application/json", admin: bool | None = None
    ) -> list[Header]:
        headers: list[Header] = [("Host", self.host)]
        if content_type:
            headers.append(("Content-Type", content_type))
        if admin is None:
            admin = rng.random() < 0.5
        if admin and self.admin_cookie and rng.random() < 0.25:
            # The dashboard's way: the signed cookie, and the XSRF token in a header (or not, or a wrong one).
            xsrf = self.xsrf_cookie.partition("=")[2]
            variant = rng.choice(["right", "right", "missing", "wrong", "garbage", "no-cookie"])
            cookie = self.admin_cookie if variant == "no-cookie" else f"{self.admin_cookie}; {self.xsrf_cookie}"
            headers.append(("Cookie", cookie))
            if variant in ("right", "no-cookie"):
                headers.append(("X-XSRFToken", xsrf))
            elif variant == "wrong":
                headers.append(("X-XSRFToken", "2|00000000|" + "0" * 32 + "|1700000000"))
            elif variant == "garbage":
                headers.append(("X-XSRFToken", rng.choice(["2|zz|yy|x", "1|a", "", "|||", "2|" + "a" * 5000])))
        elif admin:
            headers.append(("Authorization", f"Bearer {self.token}"))
        return headers

    def finish_headers(self, rng: random.Random, headers: list[Header]) -> list[Header]:
        """The server believes X-Forwarded-For from 127.0.0.1 (TRUSTED_PROXIES): requests with the right admin token
        appear to come from a random address of 10/8, so the throttle on wrong tokens (which lands on 127.0.0.1, or
        on one of those addresses after a wrong token in a form or a query) leaves the token's requests reaching the
        handlers. A fuzzed X-Forwarded-For is left as it is."""
        names = {_b(name).lower() for name, _ in headers}
        good = ("Authorization", f"Bearer {self.token}") in headers or any(
            name == "Cookie" and self.admin_cookie and self.admin_cookie in _b(value).decode("latin-1")
            for name, value in headers
        )
        if good and b"x-forwarded-for" not in names:
            address = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            headers = [*headers, ("X-Forwarded-For", address)]
        return headers

    def target_for_body(self, rng: random.Random) -> tuple[str, str, bool, dict[str, Any], list[tuple[Any, ...]]]:
        """(method, path, admin, base body, hole paths) for a JSON body."""
        roll = rng.random()
        if roll < 0.8:
            return "POST", rng.choice(COMPLETIONS), rng.random() < 0.2, self.chat_body(rng), HOLE_PATHS
        admin = rng.random() < 0.8
        document = self.admin_document(rng)
        if roll < 0.88:
            return "POST", "/admin/api/knowledge", admin, document, ADMIN_HOLE_PATHS
        if roll < 0.96:
            return (
                "PUT",
                f"/admin/api/knowledge/{rng.choice(['connect-agora', document['id']])}",
                admin,
                document,
                ADMIN_HOLE_PATHS,
            )
        document.pop("version")
        return (
            "PUT",
            "/admin/api/knowledge.json",
            admin,
            {"version": 1, "documents": [document]},
            [
                ("documents",),
                ("documents", 0),
                ("documents", 0, "id"),
                ("documents", 0, "content"),
            ],
        )

    # Bodies -----------------------------------------------------------------------------------------------------

    def hostile_body(self, rng: random.Random, base: dict[str, Any], paths: list[tuple[Any, ...]]) -> tuple[str, bytes]:
        valid = json.dumps(base, ensure_ascii=False).encode()
        kind = rng.choice(
            (
                "invalid-json truncated-json huge-string surrogate-escape surrogate-raw bad-utf8 nan-infinity "
                "deep-nesting wrong-type wrong-type messages-edge non-object random-bytes valid"
            ).split()
        )
        path = rng.choice(paths)
        if kind == "invalid-json":
            fragment = rng.choice(
                [
                    b'{"messages": [',
                    b"{'messages': []}",
                    b'{"messages": [],}',
                    b'{"a" 1}',
                    b"{,}",
                    b'{"messages": [{"role": "user", "content": "hi"}]} trailing',
                    b'{"messages": [{"role": "user", "content": "hi"}]}{}',
                    b"nul",
                    b"tru",
                    b'"unterminated',
                    b'{"a": "\\x41"}',
                    b'{"a": "\\u12"}',
                    b'{"a": 01}',
                    b'{"a": .5}',
                    b'{"a": +1}',
                    b'{"a": 0x10}',
                    b"\xef\xbb\xbf" + valid,
                    b"\x00" + valid,
                    valid.replace(b":", b"=", 1),
                    b'{"a": "tab\there"}',
                ]
            )
            return kind, fragment
        if kind == "truncated-json":
            return kind, valid[: rng.randint(1, max(1, len(valid) - 1))]
        if kind == "huge-string":
            size = rng.choice([10_000, 65_536, 500_000, 1_000_000, 1_048_576, 1_100_000, 3_000_000, 6_000_000])
            unit = rng.choice(["A", "é", "😀", "\\n", "\\u00e9"])
            text = unit * max(1, size // max(1, len(unit.encode())))
            return f"{kind}-{size}", _with_hole(base, path, f'"{text}"'.encode())
        if kind == "surrogate-escape":
            raw = rng.choice(
                [
                    b'"\\ud800"',
                    b'"abc\\udfff"',
                    b'"\\udc00\\ud800"',
                    b'"\\uD834x"',
                    b'"ok \\ud83d\\ude00"',
                    b'{"\\ud800": 1}',
                    b'["\\udbff"]',
                ]
            )
            return kind, _with_hole(base, path, raw)
        if kind == "surrogate-raw":
            raw = rng.choice([b'"\xed\xa0\x80"', b'"a\xed\xbf\xbfb"', b'{"\xed\xa0\x80": 1}'])
            return kind, _with_hole(base, path, raw)
        if kind == "bad-utf8":
            raw = rng.choice([b'"\xff\xfe"', b'"\xc0\x80"', b'"\xf4\x90\x80\x80"', b'"\xe2\x82"', b'"\x80"'])
            return kind, _with_hole(base, path, raw)
        if kind == "nan-infinity":
            raw = rng.choice(
                [
                    b"NaN",
                    b"Infinity",
                    b"-Infinity",
                    b"1e400",
                    b"-1e400",
                    b"1e-400",
                    b"-0",
                    b"9" * 5000,
                    b"1.7976931348623157e308",
                    b"[NaN]",
                    b'{"x": Infinity}',
                    b"123456789012345678901234567890",
                ]
            )
            return kind, _with_hole(base, path, raw)
        if kind == "deep-nesting":
            if rng.random() < 0.3:
                return kind, _deep(rng)
            return kind, _with_hole(base, path, _deep(rng))
        if kind == "wrong-type":
            return kind, _with_hole(base, path, rng.choice(WRONG_VALUES).encode())
        if kind == "messages-edge":
            count = rng.choice([0, 1, 1000, 20_000, 100_000])
            message = rng.choice(
                [
                    '{"role": "user", "content": "hi"}',
                    '{"role": "user"}',
                    "{}",
                    "null",
                    '"text"',
                    '{"role": "", "content": ""}',
                    '{"role": "tool", "content": [{"type": "image_url"}]}',
                ]
            )
            return f"{kind}-{count}", _with_hole(
                base, ("messages",), ("[" + ",".join([message] * count) + "]").encode()
            )
        if kind == "non-object":
            return kind, rng.choice([b"[]", b'"text"', b"1", b"null", b"true", b"", b"   ", b"\n", b"[{}]"])
        if kind == "random-bytes":
            return kind, rng.randbytes(rng.choice([1, 16, 512, 4096, 70_000]))
        return kind, valid

    # Categories -------------------------------------------------------------------------------------------------

    def body_case(self, rng: random.Random) -> Case:
        roll = rng.random()
        if roll < 0.08:
            return self.upload_case(rng)
        if roll < 0.13:
            return self.form_case(rng)
        method, path, admin, base, paths = self.target_for_body(rng)
        kind, body = self.hostile_body(rng, base, paths)
        headers = self.finish_headers(rng, self.headers(rng, admin=admin))
        return Case.one(f"body:{kind}", build_request(method, path, headers, body), method, note=f"{method} {path}")

    def form_case(self, rng: random.Random) -> Case:
        """The dashboard's sign-in form (POST /admin) and the upload form, with broken form encodings."""
        path = rng.choice(["/admin", "/admin/", "/admin/api/audio"])
        variant = rng.choice(
            "multipart-no-boundary multipart-garbage multipart-no-final-boundary urlencoded-gzip urlencoded-bad-utf8 "
            "urlencoded-wrong-token urlencoded-right-token multipart-right-token empty".split()
        )
        headers: list[Header] = [("Host", self.host)]
        if variant == "multipart-no-boundary":
            content_type, body = "multipart/form-data", b"token=x"
        elif variant == "multipart-garbage":
            content_type, body = "multipart/form-data; boundary=zz", rng.randbytes(200)
        elif variant == "multipart-no-final-boundary":
            content_type, body = multipart([("token", b"x", None, None)])
            body = body[: -rng.randint(3, 20)]
        elif variant.startswith("multipart"):
            content_type, body = multipart([("token", self.token.encode(), None, None)])
        else:
            content_type = "application/x-www-form-urlencoded"
            body = {
                "urlencoded-gzip": b"token=x",
                "urlencoded-bad-utf8": b"token=%ff%fe&a=%ED%A0%80",
                "urlencoded-wrong-token": b"token=wrong",
                "urlencoded-right-token": b"token=" + self.token.encode(),
                "empty": b"",
            }[variant]
            if variant == "urlencoded-gzip":
                headers.append(("Content-Encoding", rng.choice(["gzip", "br", "identity"])))
        headers.append(("Content-Type", content_type))
        if path == "/admin/api/audio":
            headers.append(("Authorization", f"Bearer {self.token}"))
        request = build_request("POST", path, self.finish_headers(rng, headers), body)
        return Case.one(f"body:form-{variant}", request, note=f"POST {path} ({content_type[:40]}, {variant})")

    def upload_case(self, rng: random.Random) -> Case:
        """Hostile multipart uploads to the audio library."""
        pcm = (np.sin(np.arange(1600) / 3.0) * 4000).astype("<i2")
        buffer = io.BytesIO()
        soundfile.write(buffer, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        wav = buffer.getvalue()
        name = rng.choice(["fuzz-clip", "../evil", "..", "a" * 65, "ünï", "", "x/y", "%00", "-lead", "ok_1"])
        filename = rng.choice(["x.wav", "../../etc/passwd.wav", "evil.pcm", "", "a\x00b.wav", "é.wav", "noext"])
        data = rng.choice(
            [wav, wav[:44], wav[:30], rng.randbytes(500), b"", b"RIFF" + rng.randbytes(200), b"\x01" * 3, *odd_audio()]
        )
        transcript = rng.choice([b"hello", b"", b"\xed\xa0\x80", b"\xff" * 5, b"t" * 20_000, b"  "])
        fields = [("name", name.encode(), None, None), ("transcript", transcript, None, None)]
        if rng.random() < 0.9:
            fields.append(("file", data, filename, rng.choice(["audio/wav", "application/octet-stream", None])))
        if rng.random() < 0.3:
            fields.append(("activate", rng.choice([b"true", b"1", b"\xff", b"maybe"]), None, None))
        content_type, body = multipart(fields)
        content_type = rng.choice(
            [content_type] * 6 + ["multipart/form-data", "multipart/form-data; boundary=", "text/plain"]
        )
        if rng.random() < 0.15:
            body = body[: rng.randint(0, len(body))]
        headers = self.finish_headers(rng, self.headers(rng, content_type=content_type, admin=rng.random() < 0.85))
        return Case.one(
            "body:multipart-upload",
            build_request("POST", "/admin/api/audio", headers, body),
            note="POST /admin/api/audio",
        )

    def header_case(self, rng: random.Random) -> Case:
        method, path = rng.choice([("POST", rng.choice(COMPLETIONS))] * 3 + [("GET", rng.choice(ROUTES))])
        admin = rng.random() < 0.5
        body = json.dumps(self.chat_body(rng)).encode() if method == "POST" else b""
        headers = self.headers(rng, admin=admin)
        length: str | bytes | None = "auto"
        kind = rng.choice(
            (
                "content-length content-length huge-header many-headers chunked chunked origin x-forwarded-for "
                "authorization authorization x-request-id host cookie expect connection-upgrade "
                "malformed-header-line content-type"
            ).split()
        )
        linger = 0.0
        if kind == "content-length":
            if method != "POST":  # a length needs a body to disagree with
                method, path, body = "POST", rng.choice(COMPLETIONS), json.dumps(self.chat_body(rng)).encode()
            choice = rng.choice(
                [
                    "-1",
                    "abc",
                    "1e3",
                    "+5",
                    " 5",
                    "5 5",
                    "0x10",
                    "99999999999999999999999",
                    "dup-same",
                    "dup-diff",
                    "shorter",
                    "longer",
                    "empty",
                    "missing",
                ]
            )
            kind = f"content-length:{choice}"
            if choice == "dup-same":
                headers.append(("Content-Length", str(len(body))))
            elif choice == "dup-diff":
                headers.append(("Content-Length", str(len(body) + 1)))
            elif choice == "shorter":
                length = str(max(0, len(body) - rng.randint(1, 10)))  # the rest reads as the next request
            elif choice == "longer":
                length, linger = str(len(body) + rng.randint(1, 1000)), 0.3  # the server waits for the rest
            elif choice == "empty":
                length = ""
            elif choice == "missing":
                length = None
            else:
                length = choice
            if choice in ("-1", "abc", "1e3", "+5", " 5", "5 5", "0x10", "99999999999999999999999"):
                linger = 0.5  # an answer is welcome, a wait for more body is not a defect
        elif kind == "huge-header":
            size = rng.choice([8_000, 60_000, 66_000, 200_000])
            name = rng.choice("X-Fuzz User-Agent Cookie Authorization X-Request-Id Origin Accept".split())
            value = ("Bearer " if name == "Authorization" else "") + "v" * size
            headers.append((name, value))
            kind = f"huge-header-{size}"
        elif kind == "many-headers":
            count = rng.choice([100, 1000, 5000])
            headers += [(f"X-Fuzz-{n}", "v") for n in range(count)]
            kind = f"many-headers-{count}"
        elif kind == "chunked":
            return self.chunked_case(rng, path if method == "POST" else rng.choice(COMPLETIONS), headers, body)
        elif kind == "origin":
            origin = rng.choice(
                [
                    "https://evil.example",
                    "null",
                    f"http://{self.host}",
                    f"http://localhost:{self.port}",
                    "http://[::1",
                    "ftp://x",
                    "http://evil.example:99999",
                    "https://ünï.example",
                    "garbage",
                    "",
                    "http://a/b/c",
                ]
            )
            headers.append(("Origin", origin))
            if rng.random() < 0.3:
                method, body, length = "OPTIONS", b"", None
                headers.append(("Access-Control-Request-Method", "POST"))
            kind = f"origin:{origin[:24]}"
        elif kind == "x-forwarded-for":
            value = rng.choice(
                [
                    "garbage",
                    "1.2.3.4, evil, 5.6.7.8",
                    "::1",
                    "999.999.999.999",
                    ", , ,",
                    "",
                    "10.0.0.1," * 2000,
                    b"\xff\xfe",
                    "ünï",
                    "1.2.3.4:80",
                    "[::1]:80",
                    "fe80::1%eth0",
                    "0.0.0.0/0",
                ]
            )
            headers.append(("X-Forwarded-For", value))
            if rng.random() < 0.5:
                headers.append(("X-Forwarded-Proto", rng.choice(["https", "gopher", "https, http", "", "HTTPS"])))
        elif kind == "authorization":
            headers = [h for h in headers if h[0] != "Authorization"]
            value = rng.choice(
                [
                    "Basic YWRtaW46YWRtaW4=",
                    "Bearer",
                    "Bearer ",
                    f"bearer {self.token}",
                    f"Bearer {self.token} extra",
                    f"Token {self.token}",
                    "Bearer " + "A" * 10_000,
                    b"Bearer \xff\xfe",
                    "Digest username=x",
                    f"Bearer  {self.token}",
                    f"BEARER {self.token}",
                    "Bearer \u00e9t\u00e9",
                    "Bearer null",
                    " ",
                    "",
                ]
            )
            headers.append(("Authorization", value))
            path = rng.choice([path, "/admin/api/status", "/admin/api/knowledge", "/admin", "/admin/ws/logs"])
        elif kind == "x-request-id":
            value = rng.choice(
                [
                    b"a\x01b",
                    b"a\x7fb",
                    "x" * 200,
                    "ünïcødé".encode(),
                    "",
                    " ",
                    "id with spaces",
                    b"\x00",
                    b"a\tb",
                    "req-ok_1.2:3",
                    "<script>",
                    "x" * 128,
                    "x" * 129,
                    b"a\x1bb",
                ]
            )
            headers.append(("X-Request-Id", value))
            if rng.random() < 0.3:
                headers.append(("X-Request-Id", "second"))
        elif kind == "host":
            headers = [h for h in headers if h[0] != "Host"]
            value = rng.choice([None, "evil.example", "", "[::1", "a" * 1000, f"{HOST}:99999", "ünï.example", "h h"])
            if value is not None:
                headers.append(("Host", value))
            if rng.random() < 0.5:
                headers.append(("Origin", f"http://{self.host}"))
        elif kind == "cookie":
            value = rng.choice(
                [
                    "llm_admin=garbage",
                    "llm_admin=2|1:0|10:1700000000|9:llm_admin|4:YQ==|" + "0" * 64,
                    "_xsrf=2|aa|bb|1",
                    "=;=;=",
                    "a" * 10_000 + "=1",
                    'llm_admin="unterminated',
                    b"c=\xff",
                ]
            )
            headers.append(("Cookie", value))
            if rng.random() < 0.5:
                headers.append(("X-XSRFToken", rng.choice(["2|aa|bb|1", "garbage", ""])))
            path = rng.choice([path, "/admin", "/admin/api/knowledge", "/admin/api/status"])
        elif kind == "expect":
            headers.append(("Expect", rng.choice(["100-continue", "200-ok", "garbage"])))
        elif kind == "connection-upgrade":
            headers += [
                ("Connection", rng.choice(["Upgrade", "keep-alive, Upgrade", "close"])),
                ("Upgrade", rng.choice(["websocket", "h2c", "garbage"])),
            ]
        elif kind == "malformed-header-line":
            headers.append(
                rng.choice(
                    [
                        (b"Bad Header", b"x"),
                        (b"NoColon", b""),
                        (b" folded", b"continuation"),
                        (b"X-\xff", b"v"),
                        (b"", b"empty name"),
                        (b"X-Fuzz", b"a\rb"),
                        (b"X-Fuzz", b"a\x00b"),
                    ]
                )
            )
        elif kind == "content-type":
            headers = [h for h in headers if h[0] != "Content-Type"]
            headers.append(
                (
                    "Content-Type",
                    rng.choice(
                        [
                            "text/plain",
                            "application/json; charset=latin-1",
                            "",
                            "multipart/form-data",
                            "application/x-www-form-urlencoded",
                            "application/json; boundary=" + "x" * 5000,
                        ]
                    ),
                )
            )
        headers = self.finish_headers(rng, headers)
        data = build_request(method, path, headers, body, length=length)
        note = f"{method} {path} ({kind})"
        if linger:
            return Case(f"header:{kind}", [(data, 0.0)], [], linger=linger, note=note)
        return Case.one(f"header:{kind}", data, method, note=note, until_close=length != "auto")

    def chunked_case(self, rng: random.Random, path: str, headers: list[Header], body: bytes) -> Case:
        headers = [
            *headers,
            ("Transfer-Encoding", rng.choice(["chunked"] * 5 + ["gzip, chunked", "chunked, gzip", "Chunked"])),
        ]
        variant = rng.choice(
            (
                "good bad-size negative huge-size short-chunk no-final-chunk with-content-length oversized extension"
            ).split()
        )
        half = len(body) // 2
        good = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
        linger = 0.0
        if variant == "good":
            data = good
        elif variant == "bad-size":
            data = b"zz\r\n" + body + b"\r\n0\r\n\r\n"
        elif variant == "negative":
            data = b"-1\r\n" + body + b"\r\n0\r\n\r\n"
        elif variant == "huge-size":
            data, linger = b"ffffffffffffffffffff\r\n" + body, 0.5
        elif variant == "short-chunk":
            data, linger = b"%x\r\n" % (len(body) + 100) + body + b"\r\n0\r\n\r\n", 0.5
        elif variant == "no-final-chunk":
            data, linger = b"%x\r\n%s\r\n" % (len(body), body), 0.5
        elif variant == "with-content-length":
            headers.append(("Content-Length", str(len(body))))
            data = good
        elif variant == "oversized":
            piece = b"A" * 65536
            data = b"".join(b"10000\r\n" + piece + b"\r\n" for _ in range(rng.choice([20, 40, 100]))) + b"0\r\n\r\n"
        else:
            data = b"%x;name=value\r\n%s\r\n0;x\r\nTrailer: x\r\n\r\n" % (len(body), body)
        request = build_request("POST", path, self.finish_headers(rng, headers), length=None) + data
        note = f"POST {path} (chunked:{variant})"
        if linger:
            return Case(f"header:chunked:{variant}", [(request, 0.0)], [], linger=linger, note=note)
        return Case.one(f"header:chunked:{variant}", request, note=note)

    def framing_case(self, rng: random.Random) -> Case:
        body = json.dumps(self.chat_body(rng)).encode()
        path = rng.choice(COMPLETIONS)
        headers = self.finish_headers(rng, self.headers(rng, admin=False))
        full = build_request("POST", path, headers, body)
        kind = rng.choice(
            (
                "partial-request-line partial-headers close-mid-body body-shorter-then-wait "
                "body-longer-than-declared pipelined pipelined byte-by-byte lf-only http-1.0 http-0.9 http-2.0 "
                "bad-version absolute-uri asterisk leading-blank-lines nul-in-line long-uri close-mid-stream "
                "websocket slow-headers space-in-target"
            ).split()
        )
        note = f"POST {path} ({kind})"
        if kind == "partial-request-line":
            return Case(f"framing:{kind}", [(full[: rng.randint(1, 15)], 0.0)], [], linger=0.2, note=note)
        if kind == "partial-headers":
            end = full.index(b"\r\n\r\n")
            return Case(f"framing:{kind}", [(full[: rng.randint(16, end)], 0.0)], [], linger=0.2, note=note)
        if kind == "close-mid-body":
            head_end = full.index(b"\r\n\r\n") + 4
            return Case(f"framing:{kind}", [(full[: rng.randint(head_end, len(full) - 1)], 0.0)], [], note=note)
        if kind == "body-shorter-then-wait":
            head_end = full.index(b"\r\n\r\n") + 4
            return Case(
                f"framing:{kind}", [(full[: rng.randint(head_end, len(full) - 1)], 0.0)], [], linger=0.5, note=note
            )
        if kind == "body-longer-than-declared":
            extra = rng.choice(
                [b"garbage", b"\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", rng.randbytes(100)]
            )
            # The extra bytes read as the start of another request: answered if they make one, else waited on.
            return Case(f"framing:{kind}", [(full + extra, 0.0)], ["POST"], linger=0.5, note=note)
        if kind == "pipelined":
            requests, methods = [], []
            for _ in range(rng.randint(2, 6)):
                sub = rng.random()
                if sub < 0.3:
                    requests.append(build_request("GET", "/healthz", [("Host", self.host)]))
                    methods.append("GET")
                elif sub < 0.6:
                    requests.append(
                        build_request(
                            "POST", rng.choice(COMPLETIONS), headers, json.dumps(self.chat_body(rng)).encode()
                        )
                    )
                    methods.append("POST")
                elif sub < 0.8:
                    _, hostile = self.hostile_body(rng, self.chat_body(rng), HOLE_PATHS)
                    requests.append(build_request("POST", rng.choice(COMPLETIONS), headers, hostile))
                    methods.append("POST")
                else:
                    requests.append(build_request("HEAD", "/healthz", [("Host", self.host)]))
                    methods.append("HEAD")
            return Case(f"framing:{kind}", [(b"".join(requests), 0.0)], methods, note=f"pipelined {methods}")
        if kind == "byte-by-byte":
            small = build_request("POST", "/chat/completions", headers, json.dumps(self.chat_body(rng)).encode())
            cuts = sorted(rng.sample(range(1, len(small)), min(20, len(small) - 1)))
            pieces = [(small[a:b], 0.005) for a, b in zip([0, *cuts], [*cuts, len(small)], strict=True)]
            return Case(f"framing:{kind}", pieces, ["POST"], note=note)
        if kind == "lf-only":
            return Case.one(f"framing:{kind}", build_request("POST", path, headers, body, eol=b"\n"), note=note)
        if kind == "http-1.0":
            return Case.one(
                f"framing:{kind}",
                build_request("POST", path, headers, body, version="HTTP/1.0"),
                note=note,
                until_close=True,
            )
        if kind == "http-0.9":
            return Case(f"framing:{kind}", [(b"GET /healthz\r\n\r\n", 0.0)], ["GET"], until_close=True, note=note)
        if kind in ("http-2.0", "bad-version"):
            version = "HTTP/2.0" if kind == "http-2.0" else rng.choice("HTTP/1.2 HTTP/9 HTTPS/1.1 http/1.1".split())
            return Case.one(
                f"framing:{kind}",
                build_request("POST", path, headers, body, version=version),
                note=note,
                until_close=True,
            )
        if kind == "absolute-uri":
            target = rng.choice([f"http://{self.host}{path}", f"http://evil.example{path}", "http://[::1/x"])
            return Case.one(f"framing:{kind}", build_request("POST", target, headers, body), note=note)
        if kind == "asterisk":
            return Case.one(
                f"framing:{kind}", build_request("OPTIONS", "*", [("Host", self.host)]), "OPTIONS", note=note
            )
        if kind == "leading-blank-lines":
            return Case.one(f"framing:{kind}", b"\r\n\r\n" + full, note=note, until_close=True)
        if kind == "nul-in-line":
            return Case.one(
                f"framing:{kind}", full.replace(b" HTTP/1.1", b"\x00 HTTP/1.1", 1), note=note, until_close=True
            )
        if kind == "long-uri":
            size = rng.choice([5_000, 60_000, 70_000, 300_000])
            return Case.one(
                f"framing:{kind}-{size}",
                build_request("GET", "/healthz?" + "a" * size, [("Host", self.host)]),
                "GET",
                note=note,
                until_close=True,
            )
        if kind == "close-mid-stream":
            stream_body = json.dumps({**self.chat_body(rng), "stream": True}).encode()
            request = build_request("POST", path, headers, stream_body)
            return Case(f"framing:{kind}", [(request, rng.uniform(0.0, 0.05))], [], note=note)
        if kind == "websocket":
            ws_headers: list[Header] = [
                ("Host", self.host),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", rng.choice(["13", "8", "garbage"])),
                ("Sec-WebSocket-Key", rng.choice(["dGhlIHNhbXBsZSBub25jZQ==", "bad", ""])),
            ]
            if rng.random() < 0.7:
                ws_headers.append(("Authorization", f"Bearer {self.token}"))
            if rng.random() < 0.3:
                ws_headers.append(("Origin", rng.choice(["https://evil.example", f"http://{self.host}"])))
            ws_headers = self.finish_headers(rng, ws_headers)
            frame = rng.choice([rng.randbytes(64), b"\x81\x05hello", b"\x88\x00", b"\x89\xff" + b"\x00" * 8])
            return Case(
                f"framing:{kind}",
                [(build_request("GET", "/admin/ws/logs", ws_headers), 0.05), (frame, 0.05)],
                ["GET"],
                linger=0.2,
                note="GET /admin/ws/logs (websocket)",
            )
        if kind == "slow-headers":
            cut = full.index(b"\r\n\r\n")
            return Case(f"framing:{kind}", [(full[:cut], 0.3), (full[cut:], 0.0)], ["POST"], note=note)
        return Case.one(
            f"framing:{kind}",
            build_request("GET", "/admin/api/audio/a b/activate", [("Host", self.host)]),
            "GET",
            note=note,
            until_close=True,
        )

    def method_case(self, rng: random.Random) -> Case:
        method, path = rng.choice(METHODS), rng.choice(ROUTES)
        admin = rng.random() < 0.6
        body = b""
        if method.upper() in ("POST", "PUT", "PATCH") or rng.random() < 0.2:
            body = rng.choice(
                [json.dumps(self.chat_body(rng)).encode(), b"{}", json.dumps(self.admin_document(rng)).encode(), b""]
            )
        headers = self.finish_headers(rng, self.headers(rng, admin=admin))
        if rng.random() < 0.2:
            headers.append(("Origin", rng.choice(["https://evil.example", f"http://{self.host}"])))
            headers.append(("Access-Control-Request-Method", rng.choice(METHODS)))
        data = build_request(method, path, headers, body)
        return Case.one(
            f"method:{method}", data, method.upper(), note=f"{method} {path}", until_close=method == "CONNECT"
        )

    def path_case(self, rng: random.Random) -> Case:
        name = rng.choice(TRAVERSALS)
        template = rng.choice(
            (
                "/static/{} /static/js/{} /admin/api/audio/{} /admin/api/audio/{}.wav "
                "/admin/api/audio/{}/activate /admin/api/knowledge/{} /admin/api/{} /{} "
                "/admin/api/retrieval?q={}&k=3 /admin/api/retrieval?q=agora&k={} /admin?token={} /static/{}?v={}"
            ).split()
        )
        target = template.replace("{}", name)
        method = rng.choice(["GET"] * 6 + "HEAD DELETE POST PUT".split())
        admin = rng.random() < 0.6
        body = b""
        if method in ("POST", "PUT"):
            body = json.dumps(self.admin_document(rng)).encode()
        headers = self.finish_headers(rng, self.headers(rng, admin=admin))
        data = build_request(method, target, headers, body)
        return Case.one(
            f"path:{template.split('{}')[0]}",
            data,
            method,
            note=f"{method} {target[:200]}",
            until_close=len(target) > 60_000,
        )

    def case(self, number: int) -> Case:
        rng = random.Random(f"{self.seed}:{number}")
        roll = rng.random()
        if roll < 0.32:
            return self.body_case(rng)
        if roll < 0.54:
            return self.header_case(rng)
        if roll < 0.68:
            return self.framing_case(rng)
        if roll < 0.82:
            return self.method_case(rng)
        return self.path_case(rng)


class LiveLogWatcher:
    """A dashboard's live log (/admin/ws/logs) kept open through the hostile requests: it must keep receiving records
    whatever the requests held, and still be open at the end."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.records = 0
        self.missed = 0
        self.request_ids: set[str] = set()
        self.closed: str | None = None  # why it ended, if it did
        self._task: asyncio.Task | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(HOST, self.port, limit=READ_LIMIT)
        key = base64.b64encode(os.urandom(16)).decode()
        headers: list[Header] = [
            ("Host", f"{HOST}:{self.port}"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key),
            ("Authorization", f"Bearer {self.token}"),
            ("X-Forwarded-For", "10.255.255.254"),  # an address of its own: the token throttle never meets it
        ]
        self._writer.write(build_request("GET", "/admin/ws/logs", headers))
        response = await read_response(self._reader, "GET")
        if response.status != 101:
            raise RuntimeError(f"the live log answered {response.status}: {response.body[:200]!r}")
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(2)
                opcode, length = head[0] & 0x0F, head[1] & 0x7F
                if length == 126:
                    length = int.from_bytes(await self._reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await self._reader.readexactly(8), "big")
                payload = await self._reader.readexactly(length)
                if opcode == 8:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    self.closed = f"closed by the server (code {code}, {payload[2:100]!r})"
                    return
                if opcode == 1:
                    message = json.loads(payload)
                    if message.get("type") == "record":
                        self.records += 1
                        self.request_ids.add(message["record"].get("request_id", ""))
                    elif message.get("type") == "missed":
                        self.missed += message.get("count", 0)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.closed = f"connection ended ({type(exc).__name__})"
        except ValueError as exc:
            self.closed = f"a message that is not JSON ({exc})"

    async def sees(self, request_id: str, within: float = 5.0) -> bool:
        deadline = time.monotonic() + within
        while request_id not in self.request_ids and time.monotonic() < deadline and not self.closed:
            await asyncio.sleep(0.05)
        return request_id in self.request_ids

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._writer.close()


@dataclass
class Retention:
    """What the server keeps of requests with a 1 MB `model` or `turn_id` (fields the request log records)."""

    requests: int = 0
    rss_mb: float = 0.0  # resident memory added, per request
    log_bytes: float = 0.0  # log written, per request

    def __str__(self) -> str:
        return (
            f"{self.requests} valid /audio requests with a 1 MB model or turn_id: {self.rss_mb:.2f} MB of memory kept "
            f"and {self.log_bytes / 1e6:.2f} MB of log written per request"
        )


async def retention_probe(server: ServerProcess, count: int) -> Retention:
    """Sends `count` valid requests whose `model` or `turn_id` is a megabyte of text (the body stays within the
    limit), then measures the memory the server still holds and the log it wrote: a request log that keeps such
    values whole holds up to REQUEST_LOG_SIZE of them (1000 by default), and writes each into a log line."""
    rss_before, log_before = server.rss_mb() or 0.0, os.path.getsize(server.log_path)
    host = ("Host", f"{HOST}:{server.port}")
    for number in range(count):
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "stream": False}
        body["model" if number % 2 else "turn_id"] = chr(65 + number % 26) * 1_000_000
        request = build_request(
            "POST", "/audio/chat/completions", [host, ("Content-Type", "application/json")], json.dumps(body).encode()
        )
        await exchange(server.port, [(request, 0.0)], ["POST"])
    await asyncio.sleep(0.5)
    added_rss = (server.rss_mb() or 0.0) - rss_before
    return Retention(count, added_rss / count, (os.path.getsize(server.log_path) - log_before) / count)


async def dashboard_cookies(port: int, token: str) -> tuple[str, str]:
    """The admin cookie (from the URL the server prints) and the XSRF cookie (from the dashboard page)."""
    host = ("Host", f"{HOST}:{port}")
    signed_in = await exchange(port, [(build_request("GET", f"/admin?token={token}", [host]), 0.0)], ["GET"])
    admin = re.search(rb"Set-Cookie: (llm_admin=[^;\r]+)", signed_in.responses[0].head if signed_in.responses else b"")
    if admin is None:
        return "", ""
    page = await exchange(port, [(build_request("GET", "/admin", [host, ("Cookie", admin.group(1))]), 0.0)], ["GET"])
    xsrf = re.search(rb"Set-Cookie: (_xsrf=[^;\r]+)", page.responses[0].head if page.responses else b"")
    return admin.group(1).decode(), xsrf.group(1).decode() if xsrf else ""


@dataclass
class HostileReport:
    sent: int = 0
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # (error, kind) -> count
    error_examples: dict[tuple[str, str], str] = field(default_factory=dict)  # (error, kind) -> the first case
    defect_groups: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # what -> the cases
    by_category: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    defects: list[str] = field(default_factory=list)
    five_xx: int = 0
    leaks: int = 0
    log: LogReport = field(default_factory=LogReport)
    server_alive: bool = True
    rss_before: float | None = None
    rss_after: float | None = None
    exit_status: int | None = None
    retention: Retention = field(default_factory=Retention)
    live_log: str = ""  # what the live log went through
    live_log_ok: bool = True


def _response_problems(case: Case, response: Response) -> list[str]:
    problems = []
    if response.status >= 500:
        problems.append(f"{response.status}")
    if b"Traceback" in response.body or b'File "/' in response.body:
        problems.append("traceback in the body")
    if "x-fuzz-injected" in response.headers:
        problems.append("header injected from the path")
    if re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", response.head):
        problems.append("control character in the response head")
    return problems


async def hostile_phase(
    count: int, concurrency: int, seed: int, folder: str, progress: Callable[[str], None]
) -> HostileReport:
    report = HostileReport()
    upstream, upstream_port, _ = await start_fake_upstream(folder, "hostile-upstream")
    data_dir = os.path.join(folder, "hostile-data")
    server = await start_server(
        folder, "hostile-server", data_dir, upstream_port, ["--audio-pace", "burst"], TRUSTED_PROXIES=HOST
    )
    try:
        cookies = await dashboard_cookies(server.port, server.admin_token)
        cases = HostileCases(seed, server.port, server.admin_token, *cookies)
        report.rss_before = server.rss_mb()
        watcher = LiveLogWatcher(server.port, server.admin_token)
        await watcher.open()
        next_case = iter(range(count))
        started = time.perf_counter()

        async def worker() -> None:
            for number in next_case:
                case = cases.case(number)
                result = await exchange(
                    server.port,
                    case.pieces,
                    case.methods,
                    timeout=case.timeout,
                    linger=case.linger,
                    until_close=case.until_close,
                )
                report.sent += 1
                category = case.kind.split(":")[0]
                for response in result.responses:
                    report.statuses[response.status] += 1
                    report.by_category[category][response.status] += 1
                    problems = _response_problems(case, response)
                    if response.status >= 500:
                        report.five_xx += 1
                    if any(p != f"{response.status}" for p in problems):
                        report.leaks += 1
                    if problems:
                        report.defect_groups[f"{case.kind} -> {', '.join(problems)}"].append(
                            f"case #{number}: {case.note}; request {case.pieces[0][0][:300]!r}; response "
                            f"{response.head[:160]!r} {response.body[:160]!r}"
                        )
                if not result.responses and not result.error and case.methods:
                    result.error = "closed"
                if result.error:
                    report.errors[(result.error, case.kind)] += 1
                    report.error_examples.setdefault((result.error, case.kind), f"#{number} {case.note[:90]}")
                    report.by_category[category][result.error] += 1
                elif not case.methods and not result.responses:
                    report.by_category[category]["no answer (none awaited)"] += 1
                if number and number % 1000 == 0:
                    progress(f"hostile requests: {number}/{count}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = time.perf_counter() - started
        # Is it still serving?
        health = await exchange(server.port, [(build_request("GET", "/healthz", [("Host", cases.host)]), 0.0)], ["GET"])
        report.server_alive = (
            server.process.poll() is None and bool(health.responses) and health.responses[0].status == 200
        )
        report.rss_after = server.rss_mb()
        report.retention = await retention_probe(server, max(10, min(60, count // 100)))
        # Does the live log still show new requests?
        probe_id = f"fuzz-live-log-probe-{seed}"
        probe = json.dumps({"messages": [{"role": "user", "content": "still there?"}]}).encode()
        headers: list[Header] = [("Host", cases.host), ("Content-Type", "application/json"), ("X-Request-Id", probe_id)]
        await exchange(server.port, [(build_request("POST", "/chat/completions", headers, probe), 0.0)], ["POST"])
        seen = await watcher.sees(probe_id)
        report.live_log_ok = seen and watcher.closed is None
        report.live_log = (
            f"{watcher.records} records received, {watcher.missed} reported missed, "
            f"{watcher.closed or 'still open'}, a request made after the campaign {'shown' if seen else 'NOT shown'}"
        )
        await watcher.close()
    finally:
        report.exit_status = await server.stop()
        await _stop(upstream)
    report.log = analyse_log(server.log(), "hostile-server")
    return report


# Phase 2: upstream faults ----------------------------------------------------------------------------------------


@dataclass
class FaultReport:
    sent: int = 0
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)  # (endpoint, stream, outcome, cause) -> count
    faults_injected: Counter = field(default_factory=Counter)
    upstream_attempts: int = 0
    failed_upstream: int = 0
    failed_defect: int = 0
    five_xx: int = 0
    five_xx_upstream: int = 0
    resets: int = 0
    defects: list[str] = field(default_factory=list)
    log: LogReport = field(default_factory=LogReport)
    upstream_tracebacks: list[str] = field(default_factory=list)


EXPECTED_TEXT = "".join(f"word{i} " for i in range(FAKE_WORDS))
# Faults that must not fail the request they are injected into: a short delay, and a connection closed after a
# complete response (the next request on that connection meets it, and the server retries those at once).
HARMLESS_FAULTS = frozenset({"header_delay", "close_after_response"})


def judge_completion(endpoint: str, stream: bool, result: Exchange, clip_bytes: int) -> tuple[str, str]:
    """(outcome, detail): outcome "ok" or what went wrong."""
    if result.error:
        return result.error, result.detail
    response = result.responses[0]
    if response.status != 200:
        return f"http {response.status}", response.body[:300].decode("utf-8", "replace")
    if not stream:
        try:
            completion = json.loads(response.body)
            message = completion["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            return "bad json", response.body[:300].decode("utf-8", "replace")
        if endpoint == "audio":
            audio = message.get("audio") or {}
            if len(base64.b64decode(audio.get("data", ""))) != clip_bytes or not audio.get("transcript"):
                return "wrong audio", str(audio.get("transcript"))[:100]
        elif message.get("content") != EXPECTED_TEXT:
            return "wrong content", repr(message.get("content"))[:200]
        return "ok", ""
    payloads = sse_payloads(response.body)
    if not payloads or payloads[-1] != b"[DONE]":
        return "no [DONE]", response.body[-300:].decode("utf-8", "replace")
    text, audio_data, transcript, finished = [], [], None, False
    for payload in payloads[:-1]:
        try:
            chunk = json.loads(payload)
        except ValueError:
            return "bad chunk", payload[:200].decode("utf-8", "replace")
        if "error" in chunk:
            return "error event", json.dumps(chunk["error"])[:300]
        if chunk.get("id") == "waiting_msg":
            continue
        for choice in chunk.get("choices", []):
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            audio = delta.get("audio") or {}
            if "transcript" in audio:
                transcript = audio["transcript"]
            if "data" in audio:
                audio_data.append(audio["data"])
            if choice.get("finish_reason"):
                finished = True
    if not finished:
        return "no finish_reason", ""
    if endpoint == "audio":
        if len(base64.b64decode("".join(audio_data))) != clip_bytes or not transcript:
            return "wrong audio", f"{len(audio_data)} chunks"
    elif "".join(text) != EXPECTED_TEXT:
        return "wrong content", repr("".join(text))[:200]
    return "ok", ""


async def fault_phase(count: int, concurrency: int, seed: int, probability: float, folder: str) -> FaultReport:
    report = FaultReport()
    upstream, upstream_port, upstream_out = await start_fake_upstream(folder, "faulty-upstream", probability, seed)
    server = await start_server(
        folder, "fault-server", os.path.join(folder, "fault-data"), upstream_port, ["--audio-pace", "2"]
    )
    clip_bytes = os.path.getsize(SHIPPED_PCM) // 2 * 2
    rng = random.Random(f"{seed}:faults")
    plan = []
    for number in range(count):
        endpoint = rng.choices(["chat", "rag", "audio"], [0.4, 0.4, 0.2])[0]
        plan.append((number, endpoint, rng.random() < 0.6, rng.random() < 0.3))
    results: list[tuple[int, str, bool, Exchange]] = []
    try:
        queue = iter(plan)
        started = time.perf_counter()

        async def worker() -> None:
            for number, endpoint, stream, usage in queue:
                body: dict[str, Any] = {
                    "model": "fake-model",
                    "stream": stream,
                    "user": f"fuzz-{number}",
                    "messages": [{"role": "user", "content": QUESTIONS[number % 2]}],
                }
                if usage and stream:
                    body["stream_options"] = {"include_usage": True}
                if endpoint == "audio":
                    body["modalities"] = ["text", "audio"]
                path = {
                    "chat": "/v1/chat/completions",
                    "rag": "/rag/chat/completions",
                    "audio": "/audio/chat/completions",
                }[endpoint]
                request = build_request(
                    "POST",
                    path,
                    [("Host", f"{HOST}:{server.port}"), ("Content-Type", "application/json")],
                    json.dumps(body).encode(),
                )
                results.append(
                    (number, endpoint, stream, await exchange(server.port, [(request, 0.0)], ["POST"], timeout=60))
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = time.perf_counter() - started
    finally:
        await server.stop()
        await _stop(upstream)
    faults_of: dict[str, list[str]] = defaultdict(list)
    with open(upstream_out, encoding="utf-8") as handle:
        for line in handle.read().splitlines()[1:]:
            record = json.loads(line)
            report.upstream_attempts += 1
            if record["fault"]:
                report.faults_injected[record["fault"]] += 1
                faults_of[str(record["user"])].append(record["fault"])
    for number, endpoint, stream, result in sorted(results, key=lambda item: item[0]):
        report.sent += 1
        for response in result.responses:
            report.statuses[response.status] += 1
        if result.error == "reset":
            report.resets += 1
        outcome, detail = judge_completion(endpoint, stream, result, clip_bytes)
        faults = [fault for fault in faults_of.get(f"fuzz-{number}", []) if fault not in HARMLESS_FAULTS]
        cause = "-" if outcome == "ok" else ("upstream fault" if faults else "no upstream fault")
        report.outcomes[(endpoint, "stream" if stream else "json", outcome, cause)] += 1
        is_5xx = bool(result.responses) and result.responses[0].status >= 500
        report.five_xx += is_5xx
        if outcome == "ok":
            continue
        if faults:
            report.failed_upstream += 1
            report.five_xx_upstream += is_5xx
        else:
            report.failed_defect += 1
            report.defects.append(
                f"request fuzz-{number} POST /{endpoint} stream={stream}: {outcome} without an injected upstream "
                f"fault that fails a request (its upstream requests met {faults_of.get(f'fuzz-{number}') or 'none'}): "
                f"{detail[:300]}"
            )
    report.log = analyse_log(server.log(), "fault-server")
    with open(os.path.join(folder, "faulty-upstream.err"), encoding="utf-8", errors="replace") as handle:
        upstream_log = analyse_log(handle.read(), "faulty-upstream")
    report.upstream_tracebacks = upstream_log.tracebacks  # the fake upstream's own: not the server's
    return report


# Phase 3: kill -9 ------------------------------------------------------------------------------------------------

ABSENT = None


@dataclass
class AdminOp:
    worker: int
    kind: str  # doc-post, doc-put, doc-delete, clip-upload, clip-delete, clip-activate
    key: str
    value: Any  # the state it leaves: document content or clip transcript, ABSENT for a deletion
    active: str | bool | None = False  # what it makes the active clip: a name, None (a deletion), False (nothing)
    sent: float = 0.0
    acked: float | None = None
    state: str = "pending"  # acked, refused (not applied), pending (unknown: the server died meanwhile)


@dataclass
class KillReport:
    kills: int = 0
    changes_sent: int = 0
    starts: int = 0
    starts_refused: int = 0
    saves_acknowledged: int = 0
    saves_pending: int = 0
    saves_lost: int = 0
    pairs_checked: int = 0
    pairs_mismatched: int = 0
    reads: int = 0  # requests of the caller that runs beside the changes
    leftovers: int = 0  # temporary files, or audio files no manifest names, still there after a restart
    five_xx: int = 0
    statuses: Counter = field(default_factory=Counter)
    resets: int = 0
    defects: list[str] = field(default_factory=list)
    seconds: float = 0.0
    log: LogReport = field(default_factory=LogReport)


def tone(rng: random.Random, serial: str) -> tuple[bytes, bytes, str]:
    """(WAV file, its PCM, transcript): a tone with some noise, its frequency and the SHA-256 of its PCM named in
    the transcript. Samples stay within ±8000, where the server's float conversion gives back the same integers."""
    frequency = round(rng.uniform(200, 3000), 1)
    frames = int(SAMPLE_RATE * rng.uniform(0.1, 0.5))
    t = np.arange(frames) / SAMPLE_RATE
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-400, 400, frames)
    samples = np.clip(np.round(6000 * np.sin(2 * math.pi * frequency * t)) + noise, -8000, 8000).astype("<i2")
    pcm = samples.tobytes()
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    digest = hashlib.sha256(pcm).hexdigest()[:20]
    return buffer.getvalue(), pcm, f"A {frequency} Hz tone of {frames} samples, PCM sha256 {digest}, upload {serial}"


_TRANSCRIPT_DIGEST = re.compile(r"of (\d+) samples, PCM sha256 ([0-9a-f]{20}),")


class AdminClient:
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    async def call(self, method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> Exchange:
        headers: list[Header] = [("Host", f"{HOST}:{self.port}"), ("Authorization", f"Bearer {self.token}")]
        if body:
            headers.append(("Content-Type", content_type))
        return await exchange(self.port, [(build_request(method, path, headers, body), 0.0)], [method], timeout=30)

    async def json(self, path: str) -> Any:
        result = await self.call("GET", path)
        if result.error or result.responses[0].status != 200:
            raise RuntimeError(f"GET {path}: {result.error or result.responses[0].status} {result.detail}")
        return json.loads(result.responses[0].body)


class KillLoop:
    WORKERS = 4
    DOCS_PER_WORKER = 3
    CLIPS_PER_WORKER = 2

    def __init__(self, kills: int, seed: int, folder: str, progress: Callable[[str], None]) -> None:
        self.kills = kills
        self.rng = random.Random(f"{seed}:kill")
        self.folder = folder
        self.data_dir = os.path.join(folder, "kill-data")
        self.progress = progress
        self.report = KillReport()
        self.docs: dict[str, Any] = {}  # id -> content, as last verified or acknowledged
        self.clips: dict[str, Any] = {}  # name -> transcript
        self.doc_versions: dict[str, int] = {}
        self.active: str | None = None
        self.ops: list[AdminOp] = []  # since the last verification
        self.knowledge_version = 0
        self.serial = 0
        self.seen_mismatches: set[tuple[str, str]] = set()
        with open(SHIPPED_PCM, "rb") as handle:
            self.shipped_pcm = handle.read()
        with open(SHIPPED_TRANSCRIPT, encoding="utf-8") as handle:
            self.shipped_transcript = handle.read().strip()

    async def run(self) -> KillReport:
        started = time.perf_counter()
        for cycle in range(self.kills + 1):
            server = await self.start(cycle)
            if server is None:
                break
            try:
                try:
                    await self.verify(server, first=cycle == 0)
                except (RuntimeError, ValueError, KeyError) as exc:
                    self.report.defects.append(f"the state could not be read after start {cycle}: {exc!r}")
                    break
                if cycle == self.kills:
                    break
                await self.changes_then_kill(server)
                self.report.kills += 1
            finally:
                if server.process.poll() is None:
                    await server.stop()
                self.report.log.add(analyse_log(server.log(), f"kill-server-{cycle}"))
            if (cycle + 1) % 10 == 0:
                self.progress(f"kill -9 loop: {cycle + 1}/{self.kills}")
        self.report.seconds = time.perf_counter() - started
        return self.report

    async def start(self, cycle: int) -> ServerProcess | None:
        try:
            server = await start_server(
                self.folder,
                f"kill-server-{cycle}",
                self.data_dir,
                None,
                ["--upstream", "offline"],
                admin_token=KILL_ADMIN_TOKEN,
            )
        except StartRefused as exc:
            self.report.starts_refused += 1
            self.report.defects.append(f"the server refused to start after kill {cycle}: {str(exc)[-1500:]}")
            return None
        self.report.starts += 1
        return server

    # The changes ------------------------------------------------------------------------------------------------

    def next_op(self, worker: int, rng: random.Random) -> tuple[AdminOp, str, str, bytes, str]:
        """An op of this worker on its own documents and clips: (op, method, path, body, content type)."""
        self.serial += 1
        serial = f"{worker}-{self.serial}"
        roll = rng.random()
        if roll < 0.55:
            doc_id = f"fz{worker}-{rng.randrange(self.DOCS_PER_WORKER)}"
            present = self.docs.get(doc_id) is not ABSENT
            content = f"Fuzz document {doc_id}, save {serial}, nonce {rng.getrandbits(48):x}."
            document = {"id": doc_id, "title": f"Fuzz {doc_id}", "content": content, "tags": ["fuzz"]}
            if not present:
                op = AdminOp(worker, "doc-post", doc_id, content)
                return op, "POST", "/admin/api/knowledge", json.dumps(document).encode(), "application/json"
            if rng.random() < 0.75:
                op = AdminOp(worker, "doc-put", doc_id, content)
                body = json.dumps({**document, "version": self.doc_versions.get(doc_id, 0)}).encode()
                return op, "PUT", f"/admin/api/knowledge/{doc_id}", body, "application/json"
            return AdminOp(worker, "doc-delete", doc_id, ABSENT), "DELETE", f"/admin/api/knowledge/{doc_id}", b"", ""
        name = f"fz{worker}-c{rng.randrange(self.CLIPS_PER_WORKER)}"
        present = self.clips.get(name) is not ABSENT
        if roll < 0.85 or not present:
            wav, _, transcript = tone(rng, serial)
            activate = rng.random() < 0.3
            content_type, body = multipart(
                [
                    ("name", name.encode(), None, None),
                    ("transcript", transcript.encode(), None, None),
                    ("activate", b"true" if activate else b"false", None, None),
                    ("file", wav, f"{name}.wav", "audio/wav"),
                ]
            )
            op = AdminOp(worker, "clip-upload", name, transcript, active=name if activate else False)
            return op, "POST", "/admin/api/audio", body, content_type
        if roll < 0.95:
            op = AdminOp(worker, "clip-activate", name, self.clips[name], active=name)
            return op, "POST", f"/admin/api/audio/{name}/activate", b"", ""
        return AdminOp(worker, "clip-delete", name, ABSENT, active=None), "DELETE", f"/admin/api/audio/{name}", b"", ""

    async def worker(self, number: int, client: AdminClient, rng: random.Random) -> None:
        while True:
            op, method, path, body, content_type = self.next_op(number, rng)
            op.sent = time.monotonic()
            self.ops.append(op)
            self.report.changes_sent += 1
            result = await client.call(method, path, body, content_type)
            if result.error == "refused":
                op.state = "refused"  # never reached the server
                return
            if result.error or not result.responses:
                self.report.resets += result.error == "reset"
                return  # the server died with this change in flight: pending
            response = result.responses[0]
            self.report.statuses[response.status] += 1
            if response.status >= 300:
                op.state = "refused"
                if response.status >= 500:
                    self.report.five_xx += 1
                    self.report.defects.append(
                        f"{method} {path} answered {response.status} before the kill: {response.body[:300]!r}"
                    )
                elif response.status != 409:
                    self.report.defects.append(
                        f"{method} {path} refused ({response.status}) a change the model expected to be accepted: "
                        f"{response.body[:300]!r}"
                    )
                continue
            op.acked, op.state = time.monotonic(), "acked"
            self.report.saves_acknowledged += 1
            if op.kind.startswith("doc"):
                self.docs[op.key] = op.value
                if op.kind != "doc-delete":
                    saved = json.loads(response.body)
                    self.doc_versions[op.key] = saved.get("changed_at_version", 0)
                    self.knowledge_version = max(self.knowledge_version, self.doc_versions[op.key])
            elif op.kind != "clip-activate":
                self.clips[op.key] = op.value
            await asyncio.sleep(rng.uniform(0, 0.01))

    async def changes_then_kill(self, server: ServerProcess) -> None:
        client = AdminClient(server.port, server.admin_token)
        workers = [
            asyncio.ensure_future(self.worker(n, client, random.Random(self.rng.getrandbits(64))))
            for n in range(self.WORKERS)
        ]
        workers.append(asyncio.ensure_future(self.reader(client, random.Random(self.rng.getrandbits(64)))))
        await asyncio.sleep(self.rng.uniform(0.05, 1.2))
        await server.kill()
        await asyncio.gather(*workers)

    async def reader(self, client: AdminClient, rng: random.Random) -> None:
        """Meanwhile, a caller: the audio endpoint must play a transcript with its own audio, whatever clip is being
        replaced, and retrieval and RAG must answer while documents change."""
        while True:
            kind = rng.choice(["audio", "audio", "rag", "retrieval"])
            if kind == "retrieval":
                result = await client.call("GET", f"/admin/api/retrieval?q=fuzz+document+fz{rng.randrange(4)}&k=5")
            else:
                body = {"stream": False, "messages": [{"role": "user", "content": "fuzz document save"}]}
                result = await client.call("POST", f"/{kind}/chat/completions", json.dumps(body).encode())
            if result.error or not result.responses:
                return  # the server died
            response = result.responses[0]
            self.report.reads += 1
            if response.status != 200:
                self.report.statuses[response.status] += 1
                self.report.five_xx += response.status >= 500
                self.report.defects.append(f"{kind} answered {response.status} during changes: {response.body[:300]!r}")
                continue
            self.report.statuses[response.status] += 1
            if kind == "audio":
                audio = json.loads(response.body)["choices"][0]["message"]["audio"]
                self.check_played(audio["transcript"], base64.b64decode(audio["data"]))
            await asyncio.sleep(rng.uniform(0, 0.01))

    def check_played(self, transcript: str, pcm: bytes) -> None:
        """A clip as the audio endpoint played it: its transcript must be the one uploaded with this audio."""
        self.report.pairs_checked += 1
        match = _TRANSCRIPT_DIGEST.search(transcript)
        if match is not None:
            if len(pcm) != 2 * int(match.group(1)) or hashlib.sha256(pcm).hexdigest()[:20] != match.group(2):
                self.mismatch("(played)", transcript, f"the audio endpoint played {len(pcm)} bytes of other audio")
        elif transcript == self.shipped_transcript:
            if pcm != self.shipped_pcm[: len(self.shipped_pcm) // 2 * 2]:
                self.mismatch("file (played)", transcript, "the audio endpoint played other audio")
        elif transcript != SIMULATED_TRANSCRIPT:
            self.mismatch("(played)", transcript, "a transcript that was never uploaded")

    # The checks -------------------------------------------------------------------------------------------------

    def lost(self, what: str) -> None:
        self.report.saves_lost += 1
        self.report.defects.append(f"lost save: {what}")

    async def verify(self, server: ServerProcess, first: bool) -> None:
        client = AdminClient(server.port, server.admin_token)
        knowledge = await client.json("/admin/api/knowledge")
        library = await client.json("/admin/api/audio")
        actual_docs = {d["id"]: d["content"] for d in knowledge["documents"]}
        actual_clips = {c["name"]: c["transcript"] for c in library["clips"]}
        actual_active = next((c["name"] for c in library["clips"] if c["active"]), None)
        if not first:
            self.report.saves_pending += sum(op.state == "pending" for op in self.ops)
            self.check_items("document", self.docs, actual_docs, [op for op in self.ops if op.kind.startswith("doc")])
            self.check_items(
                "clip", self.clips, actual_clips, [op for op in self.ops if op.kind in ("clip-upload", "clip-delete")]
            )
            self.check_active(actual_active)
            if knowledge["version"] < self.knowledge_version:
                self.lost(
                    f"the knowledge base is at version {knowledge['version']} after a save acknowledged at "
                    f"version {self.knowledge_version}"
                )
        for name, transcript in actual_clips.items():
            await self.check_pair(client, name, transcript)
        self.check_files()
        # What the server holds now is the baseline of the next cycle.
        self.docs = dict(actual_docs)
        self.clips = dict(actual_clips)
        self.active = actual_active
        self.doc_versions = {d["id"]: d.get("changed_at_version", 0) for d in knowledge["documents"]}
        self.knowledge_version = knowledge["version"]
        self.ops = []

    def check_items(self, what: str, expected: dict[str, Any], actual: dict[str, Any], ops: list[AdminOp]) -> None:
        pending: dict[str, list[Any]] = defaultdict(list)
        for op in ops:
            if op.state == "pending":
                pending[op.key].append(op.value)
        for key in set(expected) | set(actual):
            candidates = [expected.get(key, ABSENT), *pending.get(key, [])]
            if actual.get(key, ABSENT) not in candidates:
                self.lost(
                    f"{what} {key!r}: after the restart {_short(actual.get(key, ABSENT))}, expected "
                    f"{' or '.join(_short(c) for c in candidates)}"
                )

    def check_active(self, actual: str | None) -> None:
        changes = [op for op in self.ops if op.active is not False and op.state != "refused"]
        acked = [op for op in changes if op.state == "acked" and op.kind != "clip-delete"]
        if acked:
            last = max(acked, key=lambda op: op.acked)
            candidates = {last.active}
            later = [op for op in changes if op.state == "pending" or op.acked > last.sent]
        else:
            candidates, later = {self.active}, changes
        candidates |= {op.active for op in later}
        if actual not in candidates:
            self.lost(f"active clip {actual!r} after the restart, expected one of {sorted(map(str, candidates))}")

    async def check_pair(self, client: AdminClient, name: str, transcript: str) -> None:
        result = await client.call("GET", f"/admin/api/audio/{name}.wav")
        if result.error or result.responses[0].status != 200:
            self.mismatch(name, transcript, f"its audio cannot be read ({result.error or result.responses[0].status})")
            return
        samples, rate = soundfile.read(io.BytesIO(result.responses[0].body), dtype="int16")
        pcm = samples.astype("<i2").tobytes()
        self.report.pairs_checked += 1
        if name == "file":
            if transcript != self.shipped_transcript or pcm != self.shipped_pcm[: len(self.shipped_pcm) // 2 * 2]:
                self.mismatch(name, transcript, "the shipped clip changed")
            return
        match = _TRANSCRIPT_DIGEST.search(transcript)
        if rate != SAMPLE_RATE or match is None:
            self.mismatch(name, transcript, f"rate {rate}, transcript not ours")
            return
        frames, digest = int(match.group(1)), match.group(2)
        if len(samples) != frames or hashlib.sha256(pcm).hexdigest()[:20] != digest:
            self.mismatch(name, transcript, f"its audio ({len(samples)} samples) is not the audio of this transcript")

    def check_files(self) -> None:
        """At start the server removes what a crash left: temporary files, and audio files no manifest names."""
        audio = os.path.join(self.data_dir, "audio")
        with open(os.path.join(audio, "library.json"), encoding="utf-8") as handle:
            named = {entry["audio"] for entry in json.load(handle)["clips"].values()}
        left = [name for name in os.listdir(self.data_dir) if name.startswith(".tmp-")]
        left += [
            f"audio/{name}"
            for name in os.listdir(audio)
            if name.startswith(".tmp-") or (name.endswith(".pcm") and name not in named)
        ]
        if left:
            self.report.leftovers += len(left)
            self.report.defects.append(f"files a crash left, still there after the restart: {sorted(left)[:10]}")

    def mismatch(self, name: str, transcript: str, why: str) -> None:
        if (name, transcript) in self.seen_mismatches:
            return
        self.seen_mismatches.add((name, transcript))
        self.report.pairs_mismatched += 1
        self.report.defects.append(f"mismatched pair: clip {name!r} with transcript {transcript[:120]!r}: {why}")


def _short(value: Any) -> str:
    return "absent" if value is ABSENT else repr(str(value)[:70])


# The campaign ----------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _status_table(statuses: Counter) -> list[str]:
    lines = ["| status | responses |", "|---|---|"]
    lines += [f"| {status} | {count} |" for status, count in sorted(statuses.items())]
    return lines


RETENTION_LIMIT_MB = 0.3  # memory a request may leave behind, of the 1 MB it sent (the rest of the growth is the heap)


def _hostile_section(args: argparse.Namespace, hostile: HostileReport) -> list[str]:
    out = [f"## 1. Hostile requests ({hostile.sent} in {hostile.seconds:.1f} s, {args.concurrency} workers)", ""]
    if not args.requests:
        return [*out, "Skipped.", ""]
    out += [
        *_status_table(hostile.statuses),
        "",
        f"5xx: {hostile.five_xx}; bodies with a traceback or injected header: {hostile.leaks}; server alive at the "
        f"end: {'yes' if hostile.server_alive else 'NO'} (exit status after SIGTERM {hostile.exit_status}); memory "
        f"{hostile.rss_before or 0:.0f} MB -> {hostile.rss_after or 0:.0f} MB.",
        "",
        f"Live log (/admin/ws/logs, open throughout): {hostile.live_log}.",
        "",
        f"Retention: {hostile.retention}.",
        "",
        "| category | outcomes |",
        "|---|---|",
    ]
    for category, counter in sorted(hostile.by_category.items()):
        out.append(f"| {category} | {', '.join(f'{k}: {v}' for k, v in sorted(counter.items(), key=str))} |")
    if hostile.errors:
        out += [
            "",
            "Connections that ended without the awaited answer, by case:",
            "",
            "| what happened | case | count | first example |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {error} | {kind} | {n} | {_cell(hostile.error_examples[(error, kind)])} |"
            for (error, kind), n in sorted(hostile.errors.items())
        ]
    return [*out, ""]


def _fault_section(args: argparse.Namespace, faults: FaultReport) -> list[str]:
    out = [
        f"## 2. Upstream faults ({faults.sent} requests in {faults.seconds:.1f} s; fault probability {args.faults} per "
        f"upstream request, {faults.upstream_attempts} upstream requests)",
        "",
    ]
    if not args.fault_requests:
        return [*out, "Skipped.", ""]
    out += [
        "Faults injected: " + (", ".join(f"{k}: {v}" for k, v in sorted(faults.faults_injected.items())) or "none"),
        "",
        *_status_table(faults.statuses),
        "",
        "| endpoint | mode | outcome | cause | requests |",
        "|---|---|---|---|---|",
    ]
    out += [f"| {e} | {m} | {o} | {c} | {n} |" for (e, m, o, c), n in sorted(faults.outcomes.items())]
    out += [
        "",
        f"5xx: {faults.five_xx}, of which {faults.five_xx_upstream} after an injected fault. Tracebacks in the fake "
        f"upstream's own log: {len(faults.upstream_tracebacks)}.",
        "",
    ]
    return out


def _kill_section(args: argparse.Namespace, kill: KillReport) -> list[str]:
    out = [f"## 3. kill -9 loop ({kill.kills} kills in {kill.seconds:.1f} s)", ""]
    if not args.kills:
        return [*out, "Skipped.", ""]
    return [
        *out,
        "| measure | value |",
        "|---|---|",
        f"| admin changes sent | {kill.changes_sent} |",
        f"| server starts | {kill.starts} |",
        f"| starts refused | {kill.starts_refused} |",
        f"| saves acknowledged | {kill.saves_acknowledged} |",
        f"| saves in flight at a kill (either outcome allowed) | {kill.saves_pending} |",
        f"| saves lost | {kill.saves_lost} |",
        f"| requests of a caller beside the changes (/audio, /rag, retrieval) | {kill.reads} |",
        f"| clip/transcript pairs checked (stored, and as played) | {kill.pairs_checked} |",
        f"| pairs mismatched | {kill.pairs_mismatched} |",
        f"| files a crash left behind, after a restart | {kill.leftovers} |",
        f"| responses by status | {', '.join(f'{s}: {n}' for s, n in sorted(kill.statuses.items()))} |",
        "",
    ]


def summary(
    args: argparse.Namespace, hostile: HostileReport, faults: FaultReport, kill: KillReport, seconds: float
) -> tuple[str, bool]:
    """The Markdown report, and whether it found a defect (a 5xx not caused by the upstream, a traceback or ERROR
    line, a lost save, a mismatched pair, a refused start, or a broken answer)."""
    all_statuses = hostile.statuses + faults.statuses + kill.statuses
    five_xx = hostile.five_xx + faults.five_xx + kill.five_xx
    five_xx_defects = five_xx - faults.five_xx_upstream
    logs = LogReport()
    for log in (hostile.log, faults.log, kill.log):
        logs.add(log)
    resets = sum(n for (error, _), n in hostile.errors.items() if error == "reset") + faults.resets + kill.resets
    timeouts = sum(n for (error, _), n in hostile.errors.items() if error == "timeout")
    closed = sum(n for (error, _), n in hostile.errors.items() if error in ("closed", "bad-response"))
    defects = [f"{what}: {len(cases)} time(s); the first: {cases[0]}" for what, cases in hostile.defect_groups.items()]
    defects += hostile.defects + faults.defects + kill.defects
    if not hostile.server_alive:
        defects.insert(0, "the server was not serving /healthz after the hostile requests")
    if not hostile.live_log_ok:
        defects.insert(0, f"the live log failed during the hostile requests: {hostile.live_log}")
    failed = bool(defects or five_xx_defects or logs.tracebacks or logs.error_lines)
    findings = []
    if hostile.retention.rss_mb > RETENTION_LIMIT_MB:
        findings.append(
            f"Oversized fields are kept whole: {hostile.retention}. The request log keeps REQUEST_LOG_SIZE records "
            "(1000 by default), so requests like these can pin about a gigabyte, and each writes its field into the "
            "log line."
        )
    out = [
        f"# Fuzz campaign (seed {args.seed}, {seconds:.0f} s)",
        "",
        "## Totals",
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests sent (hostile + faulty upstream + admin changes) | {hostile.sent} + {faults.sent} + "
        f"{kill.changes_sent} |",
        f"| responses by status | {', '.join(f'{s}: {n}' for s, n in sorted(all_statuses.items()))} |",
        f"| 5xx responses | {five_xx} ({faults.five_xx_upstream} caused by the upstream, {five_xx_defects} not) |",
        f"| tracebacks in the server logs | {len(logs.tracebacks)} |",
        f"| ERROR lines in the server logs (other than the access log's 5xx lines) | {len(logs.error_lines)} |",
        f"| connections reset / timed out / closed without an answer | {resets} / {timeouts} / {closed} |",
        f"| failed completions through the faulty upstream: caused by it / not | {faults.failed_upstream} / "
        f"{faults.failed_defect} |",
        f"| saves acknowledged / lost | {kill.saves_acknowledged} / {kill.saves_lost} |",
        f"| clip pairs checked / mismatched | {kill.pairs_checked} / {kill.pairs_mismatched} |",
        f"| kills / starts refused | {kill.kills} / {kill.starts_refused} |",
        f"| verdict | {'DEFECTS FOUND' if failed else 'no defect found'} |",
        "",
        *_hostile_section(args, hostile),
        *_fault_section(args, faults),
        *_kill_section(args, kill),
    ]
    if defects or logs.tracebacks or logs.error_lines:
        out += ["## Defects", ""]
        out += [f"- {d}" for d in defects[:40]]
        if len(defects) > 40:
            out.append(f"- ... and {len(defects) - 40} more")
        for title, items in (("Tracebacks", logs.tracebacks), ("ERROR lines", logs.error_lines)):
            if items:
                out += ["", f"{title} ({len(items)}; the first 15):", "", "```"]
                out += items[:15]
                out += ["```"]
        out.append("")
    if findings:
        out += ["## Other findings (not counted in the exit status)", "", *[f"- {f}" for f in findings], ""]
    return "\n".join(out), failed


async def campaign(args: argparse.Namespace) -> int:
    folder = tempfile.mkdtemp(prefix="llm-fuzz-")

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    progress(f"logs and data in {folder}")
    hostile, faults, kill = HostileReport(), FaultReport(), KillReport()  # a phase given 0 is skipped
    if args.requests:
        hostile = await hostile_phase(args.requests, args.concurrency, args.seed, folder, progress)
        progress(f"hostile requests done: {hostile.sent}")
    if args.fault_requests:
        faults = await fault_phase(args.fault_requests, args.concurrency, args.seed, args.faults, folder)
        progress(f"faulty upstream done: {faults.sent}")
    if args.kills:
        kill = await KillLoop(args.kills, args.seed, folder, progress).run()
        progress(f"kill -9 loop done: {kill.kills}")
    text, failed = summary(args, hostile, faults, kill, time.perf_counter() - started)
    print(text)
    if failed or args.keep:
        print(f"Logs and data kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run: 600 requests, 60 through faults, 8 kills")
    parser.add_argument("--requests", type=int, help="hostile requests (default 6000, --quick 600)")
    parser.add_argument("--kills", type=int, help="kill -9 cycles (default 40, --quick 8)")
    parser.add_argument("--fault-requests", type=int, help="requests through the faulty upstream (default 300)")
    parser.add_argument("--faults", type=float, default=0.5, help="fault probability per upstream request")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent connections")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the logs and data directories")
    args = parser.parse_args(argv)
    args.requests = args.requests if args.requests is not None else (600 if args.quick else 6000)
    args.kills = args.kills if args.kills is not None else (8 if args.quick else 40)
    args.fault_requests = args.fault_requests if args.fault_requests is not None else (60 if args.quick else 300)
    return asyncio.run(campaign(args))


if __name__ == "__main__":
    sys.exit(main())
