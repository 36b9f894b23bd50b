"""Phase 4: the families of hostile callers issue 15 found, each against a server set up to meet it, each reported
apart (requests, statuses, problems, and what was measured). Where a family is a list of requests, it is a table
of rows: a name, the request, and what its answer must be.

- slow sockets: connections that send part of their headers, or their headers and part of a body, then nothing
  (IDLE_TIMEOUT and BODY_TIMEOUT of 2 s): meanwhile the server answers others; then it closes them all, gives back
  their MAX_STREAMS places, and serves as many streams at once as MAX_STREAMS allows.
- long queries: /rag messages of a megabyte of distinct made-up words: /healthz never waits 0.5 s meanwhile.
- huge conversation keys: a 900 KB `user`, a 900 KB `context.appId`, an 8 KB X-Conversation-Id: the record's
  `conversation` in the history stays short.
- colliding keys: {"appId": "a:b", "userId": "c"} and {"appId": "a", "userId": "b:c"} are two conversations, and
  another caller (another Bearer key, or none) naming the same `user` reaches nothing of the first's memory (the
  offline responder calls the server's current_time tool for "What time is it in Tokyo?", which is remembered).
- malformed upstream HTTP: an upstream answering each of fakes/raw_upstream.py's MALFORMED_ANSWERS: every answer
  is a 502 or an error event in OpenAI's error shape, never a 500.
- client shapes: fakes/client_shapes.py's real clients on every endpoint, streamed and not, offline and relayed: a
  200 with a whole answer.
- query-string numbers: limit=nan, inf, -1e400 (and before, since, until) on the history and conversations: 400s.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fakes.client_shapes import CLIENTS
from fakes.knowledge_texts import gibberish
from fakes.raw_upstream import MALFORMED_ANSWERS

from .faults import EXPECTED_TEXT, judge_completion
from .hostile import COMPLETIONS
from .logs import LogReport, analyse_log
from .processes import ServerProcess, start_fake_upstream, start_raw_upstream, start_server, stop
from .wire import HOST, JSON, READ_LIMIT, AdminClient, Exchange, Header, call, sse_payloads, status_of

SLOW_TIMEOUT = 2.0  # the IDLE_TIMEOUT and BODY_TIMEOUT of the server the slow sockets meet
SPARE_STREAMS = 20  # MAX_STREAMS beyond the stalled bodies: the others' share
HEALTH_LIMIT = 0.5  # seconds /healthz may take while megabyte queries run
KEY_LIMIT = 200  # characters of a record's `conversation`
SHOWN_PROBLEMS = 5  # of each family, in the report
HI = {"role": "user", "content": "Hi"}
BOTH = (True, False)  # streamed, and not


@dataclass
class Family:
    name: str
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    measures: list[str] = field(default_factory=list)
    upstream_5xx: int = 0  # 502s in the error shape, answering a malformed upstream: as designed

    def count(self, result: Exchange) -> None:
        self.sent += 1
        for response in result.responses:
            self.statuses[response.status] += 1
        if not result.responses:
            self.statuses[result.error or "closed"] += 1

    def problem(self, request: str, what: str, result: Exchange | None = None) -> None:
        self.problems.append(f"[{self.name}] {request}: {what}" + (f"; response {shown(result)}" if result else ""))


@dataclass
class FamiliesReport:
    families: list[Family] = field(default_factory=list)
    seconds: float = 0.0
    log: LogReport = field(default_factory=LogReport)

    @property
    def sent(self) -> int:
        return sum(family.sent for family in self.families)

    @property
    def statuses(self) -> Counter:
        """The HTTP statuses (not the ways a connection ended) of every family."""
        total: Counter = Counter()
        for family in self.families:
            total.update({status: n for status, n in family.statuses.items() if isinstance(status, int)})
        return total

    @property
    def five_xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def five_xx_upstream(self) -> int:
        return sum(family.upstream_5xx for family in self.families)

    @property
    def problems(self) -> list[str]:
        """Each family's first SHOWN_PROBLEMS problems (a regression tends to fail a family's every request)."""
        listed = []
        for family in self.families:
            listed += family.problems[:SHOWN_PROBLEMS]
            if len(family.problems) > SHOWN_PROBLEMS:
                listed.append(f"[{family.name}] ... and {len(family.problems) - SHOWN_PROBLEMS} more problems")
        return listed


def shown(result: Exchange) -> str:
    if not result.responses:
        return f"none ({result.error or 'closed'} {result.detail[:200]})"
    response = result.responses[0]
    return f"{response.status} {response.body[:300]!r}"


# What an answer must be ------------------------------------------------------------------------------------------

Check = Callable[[Exchange, dict[str, Any], str], str | None]  # (the result, the body sent, its path) -> a problem


def error_shape(body: bytes) -> dict[str, Any] | None:
    """The `error` of OpenAI's error shape ({"error": {message, type, param, code}}), or None if it is not one."""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
        return None
    return error if isinstance(error["message"], str) and error["message"] else None


def is_audio(path: str) -> bool:
    return path.startswith(("/audio/", "/v1/audio/"))


def refused(status: int, param: str) -> Check:
    """A `status` in the error shape, naming `param`."""

    def check(result: Exchange, body: dict[str, Any], path: str) -> str | None:
        if status_of(result) != status:
            return f"expected {status}"
        error = error_shape(result.responses[0].body)
        if error is None or error["param"] != param:
            return f"expected OpenAI's error shape naming {param!r}"
        return None

    return check


def whole_answer(expected: str | None) -> Check:
    """A 200 with a whole answer (`expected`, or any words when None), and the usage chunk last when asked for."""

    def check(result: Exchange, body: dict[str, Any], path: str) -> str | None:
        endpoint = "audio" if is_audio(path) else "text"
        outcome, detail = judge_completion(endpoint, bool(body.get("stream")), result, None, expected)
        if outcome != "ok":
            return f"{outcome} {detail[:200]}"
        if body.get("stream") and (body.get("stream_options") or {}).get("include_usage"):
            chunks = [json.loads(p) for p in sse_payloads(result.responses[0].body)[:-1]]
            if not chunks or chunks[-1].get("choices") != [] or not chunks[-1].get("usage"):
                return "include_usage asked, the last chunk is not the usage"
        return None

    return check


def upstream_error(result: Exchange, body: dict[str, Any], path: str) -> str | None:
    """What a malformed upstream may give: a 502 in the error shape naming the upstream, or a 200 whose stream ends
    in at most one such error event (a whole answer may have come before the fault)."""
    if not result.responses:
        return f"no answer ({result.error})"
    response = result.responses[0]
    if response.status == 502:
        error = error_shape(response.body)
        if error is None or error["type"] != "server_error" or not str(error["code"]).startswith("upstream_"):
            return "a 502 not in OpenAI's error shape naming the upstream"
        return None
    if response.status != 200:
        return "expected a 502 or a 200"
    if not body.get("stream"):
        try:
            json.loads(response.body)["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            return "a 200 that is not a completion"
        return None
    payloads = sse_payloads(response.body)
    events = [json.loads(p) for p in payloads if p != b"[DONE]"]
    errors = [event["error"] for event in events if "error" in event]
    if not payloads or payloads[-1] != b"[DONE]":
        return "a stream without [DONE]"
    if len(errors) > 1 or any(not str(error.get("code")).startswith("upstream_") for error in errors):
        return f"error events not naming the upstream: {errors[:2]}"
    return None


# Rows: a request and what it must get ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One request of a family: `body` makes its JSON body (None: no body); `admin` sends the admin token; `after`
    checks what the server kept of it (given the admin API and the request's X-Request-Id)."""

    name: str
    method: str
    path: str
    check: Check
    body: Callable[[], dict[str, Any]] | None = None
    headers: tuple[Header, ...] = ()
    admin: bool = False
    after: Callable[[AdminClient, str], Awaitable[str | None]] | None = None


async def send(server: ServerProcess, row: Row, request_id: str) -> tuple[Exchange, dict[str, Any]]:
    body = row.body() if row.body is not None else None
    headers: list[Header] = [*row.headers, ("X-Request-Id", request_id)]
    if body is not None:
        headers.append(JSON)
    if row.admin:
        headers.append(("Authorization", f"Bearer {server.admin_token}"))
    data = json.dumps(body).encode() if body is not None else b""
    result = await call(server.port, row.method, row.path, headers, data, timeout=60)
    return result, body or {}


async def run_rows(
    server: ServerProcess, family: Family, rows: list[Row], *, label: str = "", concurrently: bool = False
) -> None:
    """Sends the rows (one after the other, or all at once) and checks each answer; `label` says where, in a
    problem."""
    admin = AdminClient(server.port, server.admin_token)

    async def run(number: int, row: Row) -> None:
        request_id = "fuzz-" + "-".join(f"{family.name} {label} {number}".replace(",", "").split())
        result, body = await send(server, row, request_id)
        family.count(result)
        problem = row.check(result, body, row.path)
        if problem is None and row.after is not None:
            problem = await row.after(admin, request_id)
        if problem is not None:
            family.problem(f"{label + ': ' if label else ''}{row.method} {row.path[:80]} ({row.name})", problem, result)

    if concurrently:
        await asyncio.gather(*(run(number, row) for number, row in enumerate(rows)))
    else:
        for number, row in enumerate(rows):
            await run(number, row)


async def history_record(admin: AdminClient, request_id: str) -> dict[str, Any] | None:
    """The whole record of the request with this X-Request-Id, from the durable history."""
    query = urllib.parse.urlencode({"q": request_id, "limit": 5})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        page = await admin.json(f"/admin/api/history?{query}")
        found = [r for r in page["records"] if r["request_id"] == request_id]
        if found:
            return await admin.json(f"/admin/api/history/{urllib.parse.quote(found[0]['key'], safe='')}")
        await asyncio.sleep(0.1)
    return None


async def short_key(admin: AdminClient, request_id: str) -> str | None:
    record = await history_record(admin, request_id)
    if record is None:
        return "its record is not in the history"
    key = record.get("conversation")
    if not key:
        return "its record names no conversation"
    if len(key) >= KEY_LIMIT:
        return f"the record's conversation is {len(key)} characters: {key[:80]!r}..."
    return None


QUERY_NUMBERS = [
    *(
        Row(query, "GET", f"/admin/api/history?{query}", refused(400, query.split("=")[0]), admin=True)
        for query in ("limit=nan", "limit=inf", "limit=-1e400", "before=nan", "since=inf", "until=x")
    ),
    *(
        Row(query, "GET", f"/admin/api/conversations?{query}", refused(400, "limit"), admin=True)
        for query in ("limit=nan", "limit=inf", "limit=-1e400", "limit=many")
    ),
]
HUGE_KEYS = [
    Row("user of 900 KB", "POST", "/chat/completions", whole_answer(EXPECTED_TEXT),
        lambda: {"messages": [HI], "user": "u" * 900_000}, after=short_key),
    Row("context.appId of 900 KB", "POST", "/chat/completions", whole_answer(EXPECTED_TEXT),
        lambda: {"messages": [HI], "context": {"appId": "a" * 900_000, "userId": "1", "channel": "c"}},
        after=short_key),
    Row("X-Conversation-Id of 8 KB", "POST", "/chat/completions", whole_answer(EXPECTED_TEXT),
        lambda: {"messages": [HI]}, headers=(("X-Conversation-Id", "h" * 8000),), after=short_key),
]  # fmt: skip


def client_shapes(expected: str | None) -> list[Row]:
    """Every client's body on every endpoint, streamed and not (the audio endpoint's answer is its clip)."""
    return [
        Row(
            f"{client}, {'streamed' if streamed else 'not streamed'}",
            "POST",
            endpoint,
            whole_answer(None if is_audio(endpoint) else expected),
            functools.partial(lambda make, streamed: {**make(), "stream": streamed}, CLIENTS[client], streamed),
        )
        for client, endpoint, streamed in itertools.product(sorted(CLIENTS), COMPLETIONS, BOTH)
    ]


MALFORMED_ROWS = [  # each endpoint that calls the upstream, streamed and not, and the model list
    *(
        Row(f"{'streamed' if streamed else 'not streamed'}", "POST", path, upstream_error,
            functools.partial(lambda streamed: {"messages": [HI], "stream": streamed}, streamed))
        for path, streamed in itertools.product(("/chat/completions", "/rag/chat/completions"), BOTH)
    ),
    Row("model list", "GET", "/v1/models", upstream_error),
]  # fmt: skip


# The families that are more than a list of requests --------------------------------------------------------------


async def in_flight(admin: AdminClient) -> int:
    return (await admin.json("/admin/api/status"))["in_flight"]


async def await_condition(condition: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    """Whether `condition` came true within `seconds` (asked every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def in_flight_is(admin: AdminClient, expected: int) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        return await in_flight(admin) == expected

    return condition


def ready(port: int) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        return status_of(await call(port, "GET", "/readyz")) == 200

    return condition


async def timed_health(port: int) -> tuple[float, int | str]:
    started = time.perf_counter()
    result = await call(port, "GET", "/healthz", timeout=30)
    return time.perf_counter() - started, status_of(result)


async def completion(server: ServerProcess, family: Family, what: str, stream: bool = True) -> None:
    body = {"messages": [HI], "stream": stream}
    result = await call(server.port, "POST", "/chat/completions", [JSON], json.dumps(body).encode(), timeout=60)
    family.count(result)
    problem = whole_answer(EXPECTED_TEXT)(result, body, "/chat/completions")
    if problem:
        family.problem(f"POST /chat/completions ({what})", problem, result)


async def slow_sockets(server: ServerProcess, family: Family, count: int, max_streams: int) -> None:
    admin = AdminClient(server.port, server.admin_token)
    head = (
        f"POST /chat/completions HTTP/1.1\r\nHost: {HOST}:{server.port}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n"
    ).encode()
    stalled_bodies = count // 2
    connections = []
    for number in range(count):
        reader, writer = await asyncio.open_connection(HOST, server.port, limit=READ_LIMIT)
        # Half send part of their headers; half their headers and the start of a body.
        writer.write(head[: 40 + number % 40] if number >= stalled_bodies else head + b'\r\n{"messages": [')
        await writer.drain()
        connections.append((reader, writer))
    family.sent += count
    started = time.monotonic()
    held = await await_condition(in_flight_is(admin, stalled_bodies), 10)
    if not held:
        family.problem("the stalled bodies", f"{await in_flight(admin)} places held, expected {stalled_bodies}")
    slowest = 0.0
    for _ in range(10):
        seconds, status = await timed_health(server.port)
        slowest = max(slowest, seconds)
        if status != 200:
            family.problem("GET /healthz while the sockets stall", f"answered {status}")
    await completion(server, family, "while the sockets stall")
    family.measures.append(f"{count} sockets stalled ({stalled_bodies} in their body): /healthz {slowest:.3f} s")

    async def closed_by_server(reader: asyncio.StreamReader) -> float | str:
        try:
            async with asyncio.timeout(max(0.0, started + SLOW_TIMEOUT + 8 - time.monotonic())):
                data = await reader.read()
                while data:  # a 408 or whatever it says before closing
                    data = await reader.read()
        except TimeoutError:
            return "still open"
        except ConnectionError:
            pass
        return time.monotonic() - started

    ends = await asyncio.gather(*(closed_by_server(reader) for reader, _ in connections))
    for _, writer in connections:
        writer.close()
    open_ones = sum(end == "still open" for end in ends)
    family.statuses["closed by the server"] += count - open_ones
    if open_ones:
        family.problem("the stalled sockets", f"{open_ones} of {count} still open {SLOW_TIMEOUT + 8:g} s later")
    closed = [end for end in ends if isinstance(end, float)]
    if closed:
        family.measures.append(f"all closed within {max(closed):.1f} s (timeouts {SLOW_TIMEOUT:g} s)")
    if not await await_condition(in_flight_is(admin, 0), 5):
        family.problem("after the timeouts", f"{await in_flight(admin)} MAX_STREAMS places still held")
    _, status = await timed_health(server.port)
    if status != 200:
        family.problem("GET /healthz after the timeouts", f"answered {status}")
    # Every place back: MAX_STREAMS streams at once, none refused.
    await asyncio.gather(*(completion(server, family, f"one of {max_streams} at once") for _ in range(max_streams)))
    family.measures.append(f"then {max_streams} streams at once (MAX_STREAMS)")


async def long_queries(server: ServerProcess, family: Family, count: int) -> None:
    if not await await_condition(ready(server.port), 120):
        family.problem("GET /readyz", "the server was not ready within 120 s")
    rows = [
        Row(f"a megabyte of words #{number}", "POST", "/rag/chat/completions", whole_answer(EXPECTED_TEXT),
            functools.partial(lambda text: {"messages": [{"role": "user", "content": text}], "stream": True},
                              gibberish(1_000_000, number)))
        for number in range(count)
    ]  # fmt: skip
    busy = asyncio.ensure_future(run_rows(server, family, rows, concurrently=True))
    slowest, checks = 0.0, 0
    while not busy.done():
        seconds, status = await timed_health(server.port)
        slowest, checks = max(slowest, seconds), checks + 1
        if status != 200:
            family.problem("GET /healthz while the queries run", f"answered {status}")
        await asyncio.sleep(0.02)
    await busy
    family.measures.append(f"longest /healthz of {checks} while {count} ran at once: {slowest:.3f} s")
    if slowest >= HEALTH_LIMIT:
        family.problem("GET /healthz while the queries run", f"took {slowest:.3f} s (limit {HEALTH_LIMIT:g} s)")


TOKYO = [{"role": "user", "content": "What time is it in Tokyo?"}]


async def colliding_keys(server: ServerProcess, family: Family) -> None:
    """Who may reach a conversation: two contexts whose parts join alike are two conversations; another caller
    naming the same user is another conversation, and the first's remembered tool exchange is not in it."""
    admin = AdminClient(server.port, server.admin_token)
    follow_up = [*TOKYO, {"role": "assistant", "content": "It is noon."}, {"role": "user", "content": "Exactly?"}]
    asks = [  # (name, credential, body fields, messages): the first of each pair calls current_time
        ("context a:b + c", "sk-fuzz-alice", {"context": {"appId": "a:b", "userId": "c"}}, TOKYO),
        ("context a + b:c", "sk-fuzz-alice", {"context": {"appId": "a", "userId": "b:c"}}, follow_up),
        ("user u by alice", "sk-fuzz-alice", {"user": "fuzz-shared-user"}, TOKYO),
        ("user u by mallory", "sk-fuzz-mallory", {"user": "fuzz-shared-user"}, follow_up),
        ("user u with no key", None, {"user": "fuzz-shared-user"}, follow_up),
    ]
    keys: dict[str, str | None] = {}
    for number, (name, credential, fields, messages) in enumerate(asks):
        request_id = f"fuzz-colliding-keys-{number}"
        headers: list[Header] = [JSON, ("X-Request-Id", request_id)]
        if credential:
            headers.append(("Authorization", f"Bearer {credential}"))
        body = {"messages": messages, "stream": False, **fields}
        result = await call(server.port, "POST", "/chat/completions", headers, json.dumps(body).encode(), timeout=60)
        family.count(result)
        problem = whole_answer(None)(result, body, "/chat/completions")
        if problem:
            family.problem(f"POST /chat/completions ({name})", problem, result)
        record = await history_record(admin, request_id)
        keys[name] = record.get("conversation") if record else None
    remembered = {c["key"]: c["exchanges"] for c in (await admin.json("/admin/api/conversations?limit=1000"))[
        "conversations"]}  # fmt: skip
    for first, others in (("context a:b + c", ["context a + b:c"]), ("user u by alice", [a[0] for a in asks[3:]])):
        if not remembered.get(keys[first] or ""):
            family.problem(first, f"its tool exchange was not remembered (key {keys[first]!r}): nothing to reach")
        for other in others:
            if keys[other] is None or keys[other] == keys[first]:
                family.problem(other, f"the same conversation as {first!r}: {keys[other]!r}")
            elif remembered.get(keys[other]):
                family.problem(other, f"reaches remembered exchanges ({remembered[keys[other]]}) it never made")
    family.measures.append(f"{len(set(keys.values()))} distinct conversations for {len(asks)} callers")


async def malformed_upstream(folder: str, report: FamiliesReport, family: Family) -> None:
    """A server per malformed answer, all at once (each failing request takes a second: the retries' pauses)."""

    async def meet(name: str) -> None:
        raw, port = await start_raw_upstream(folder, f"raw-upstream-{name}", name)
        data_dir = os.path.join(folder, f"malformed-{name}-data")
        try:
            server = await start_server(folder, f"malformed-{name}", data_dir, port, EMBEDDINGS="none")
            try:
                # Twice: the second round may meet a connection the first left in the server's pool.
                for label in (f"{name}, round 1", f"{name}, round 2"):
                    await run_rows(server, family, MALFORMED_ROWS, label=label, concurrently=True)
            finally:
                await server.stop()
            report.log.add(analyse_log(server.log(), f"malformed-{name}"))
        finally:
            await stop(raw)

    await asyncio.gather(*(meet(name) for name in sorted(MALFORMED_ANSWERS)))
    family.upstream_5xx = family.statuses.get(502, 0)
    family.measures.append(f"{len(MALFORMED_ANSWERS)} answers: {', '.join(sorted(MALFORMED_ANSWERS))}")


# The phase -------------------------------------------------------------------------------------------------------


async def guarded(family: Family, work: Awaitable[None]) -> None:
    """Runs a family; an admin API that does not answer as it should ends it with a problem, not the campaign."""
    try:
        await work
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as exc:
        family.problem("the family", f"stopped: {exc!r}")


async def families_phase(
    folder: str, progress: Callable[[str], None], slow: int = 200, long: int = 3
) -> FamiliesReport:
    """The families, `slow` stalled sockets and `long` megabyte queries at once. The servers' settings go by their
    environment variables, which an older server ignores when it does not know them: the campaign (copied into an
    older checkout) starts it still, and shows which families it fails."""
    report = FamiliesReport()
    started = time.perf_counter()

    def family(name: str) -> Family:
        report.families.append(Family(name))
        return report.families[-1]

    max_streams = slow // 2 + SPARE_STREAMS
    upstream, upstream_port, _ = await start_fake_upstream(folder, "families-upstream")
    try:
        relayed = await start_server(
            folder,
            "families-relayed",
            os.path.join(folder, "families-relayed-data"),
            upstream_port,
            IDLE_TIMEOUT=str(SLOW_TIMEOUT),
            BODY_TIMEOUT=str(SLOW_TIMEOUT),
            MAX_STREAMS=str(max_streams),
            MAX_BODY_BYTES=str(4 << 20),
            AUDIO_PACE="burst",
        )
        try:
            await guarded(numbers := family("query-string numbers"), run_rows(relayed, numbers, QUERY_NUMBERS))
            await guarded(keys := family("huge conversation keys"), run_rows(relayed, keys, HUGE_KEYS))
            shapes = family("client shapes, relayed")
            await guarded(shapes, run_rows(relayed, shapes, client_shapes(EXPECTED_TEXT)))
            await guarded(queries := family("long queries"), long_queries(relayed, queries, long))
            progress("targeted families: long queries done")
            await guarded(sockets := family("slow sockets"), slow_sockets(relayed, sockets, slow, max_streams))
            progress("targeted families: slow sockets done")
        finally:
            await relayed.stop()
        report.log.add(analyse_log(relayed.log(), "families-relayed"))
    finally:
        await stop(upstream)
    offline = await start_server(
        folder,
        "families-offline",
        os.path.join(folder, "families-offline-data"),
        None,
        LLM_UPSTREAM="offline",
        OFFLINE_WORD_DELAY="0",
        AUDIO_PACE="burst",
    )
    try:
        shapes = family("client shapes, offline")
        await guarded(shapes, run_rows(offline, shapes, client_shapes(None)))
        await guarded(collisions := family("colliding keys"), colliding_keys(offline, collisions))
    finally:
        await offline.stop()
    report.log.add(analyse_log(offline.log(), "families-offline"))
    progress("targeted families: offline ones done")
    malformed = family("malformed upstream HTTP")
    await guarded(malformed, malformed_upstream(folder, report, malformed))
    report.seconds = time.perf_counter() - started
    return report
