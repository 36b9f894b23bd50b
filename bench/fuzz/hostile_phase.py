"""Phase 1: the hostile requests (bench.fuzz.hostile) on raw sockets from a few concurrent workers, while a
dashboard's live log stays open; then whether the server still serves, what it kept of oversized fields, and
whether the live log still shows new requests."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .hostile import Case, HostileCases
from .logs import LogReport, analyse_log
from .processes import ServerProcess, start_fake_upstream, start_server, stop
from .wire import HOST, JSON, READ_LIMIT, Header, Response, build_request, call, exchange, read_response, status_of


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
    """What the server keeps of requests with a megabyte `turn_id` (a field the request log records) or a
    megabyte `model` (refused: every chunk of an answer would name it): the records as the history holds them,
    the log written, and the resident memory added (which also counts the heap's own growth)."""

    requests: int = 0
    record_bytes: float = 0.0  # of each record, as GET /admin/api/history gives it
    rss_mb: float = 0.0  # resident memory added, per request
    log_bytes: float = 0.0  # log written, per request
    refused: int = 0  # of the megabyte model names

    def __str__(self) -> str:
        return (
            f"{self.requests} /audio requests with a 1 MB turn_id or model ({self.refused} of the models refused): "
            f"{self.record_bytes / 1e3:.1f} KB kept per record, {self.log_bytes / 1e3:.1f} KB of log written and "
            f"{self.rss_mb:.2f} MB of resident memory added per request"
        )


async def retention_probe(server: ServerProcess, count: int) -> Retention:
    """Sends `count` requests whose `turn_id` or `model` is a megabyte of text (the body stays within the limit),
    then measures what the server keeps of them: a request log that kept such values whole would hold up to
    REQUEST_LOG_SIZE of them (1000 by default), and write each into a log line."""
    rss_before, log_before = server.rss_mb() or 0.0, os.path.getsize(server.log_path)
    refused = 0
    for number in range(count):
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "stream": False}
        body["model" if number % 2 else "turn_id"] = chr(65 + number % 26) * 1_000_000
        response = await call(server.port, "POST", "/audio/chat/completions", [JSON], json.dumps(body).encode())
        refused += number % 2 == 1 and bool(response.responses) and response.responses[0].status == 400
    await asyncio.sleep(0.5)
    added_rss = (server.rss_mb() or 0.0) - rss_before
    auth = ("Authorization", f"Bearer {server.admin_token}")
    history = await call(server.port, "GET", f"/admin/api/history?limit={count}&endpoint=audio", [auth])
    answered = history.responses[0] if history.responses else None
    records = json.loads(answered.body)["records"] if answered is not None and answered.status == 200 else []
    kept = sum(len(json.dumps(record)) for record in records) / max(1, len(records))
    return Retention(count, kept, added_rss / count, (os.path.getsize(server.log_path) - log_before) / count, refused)


async def dashboard_cookies(port: int, token: str) -> tuple[str, str]:
    """The admin cookie (from the URL the server prints) and the XSRF cookie (from the dashboard page)."""
    signed_in = await call(port, "GET", f"/admin?token={token}")
    admin = re.search(rb"Set-Cookie: (llm_admin=[^;\r]+)", signed_in.responses[0].head if signed_in.responses else b"")
    if admin is None:
        return "", ""
    page = await call(port, "GET", "/admin", [("Cookie", admin.group(1))])
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
        health = await call(server.port, "GET", "/healthz")
        report.server_alive = server.process.poll() is None and status_of(health) == 200
        report.rss_after = server.rss_mb()
        report.retention = await retention_probe(server, max(10, min(60, count // 100)))
        # Does the live log still show new requests?
        probe_id = f"fuzz-live-log-probe-{seed}"
        probe = json.dumps({"messages": [{"role": "user", "content": "still there?"}]}).encode()
        await call(server.port, "POST", "/chat/completions", [JSON, ("X-Request-Id", probe_id)], probe)
        seen = await watcher.sees(probe_id)
        report.live_log_ok = seen and watcher.closed is None
        report.live_log = (
            f"{watcher.records} records received, {watcher.missed} reported missed, "
            f"{watcher.closed or 'still open'}, a request made after the campaign {'shown' if seen else 'NOT shown'}"
        )
        await watcher.close()
    finally:
        report.exit_status = await server.stop()
        await stop(upstream)
    report.log = analyse_log(server.log(), "hostile-server")
    return report
