"""A small load generator on raw asyncio sockets: keep-alive HTTP/1.1 streams, timed to the first SSE chunk.

Raw sockets keep the client's own cost low and equal for every target, so ratios compare the servers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class LoadResult:
    first_chunk_ms: list[float] = field(default_factory=list)
    completed: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def streams_per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.first_chunk_ms, p)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def request_bytes(port: int, path: str, body: dict, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def _one_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, first_marker: bytes):
    """Sends one request on a kept-alive connection; returns (ms to first chunk, ok)."""
    start = time.perf_counter()
    writer.write(request)
    tail = b""  # only the end of what came before is kept: the client must cost little next to the servers
    first = None
    while True:
        data = await reader.read(262144)
        if not data:
            return first, False
        if first is None and first_marker in tail + data:
            first = (time.perf_counter() - start) * 1000
        ending = tail + data[-64:]  # no copy of large reads
        if ending.endswith(b"\r\n0\r\n\r\n"):  # the end of a chunked response
            return first, b"data: [DONE]" in ending
        tail = ending[-64:]


async def run_load(
    port: int,
    path: str,
    body: dict | Callable[[int], dict],
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    first_marker: bytes = b"data: ",
    stagger: float = 0.0,
    pause: float = 0.0,
) -> LoadResult:
    """`concurrency` connections, each sending one stream after another for `seconds`; `body` is the request's,
    or makes the n-th request's.

    With `stagger`, connection i starts i/concurrency of that many seconds late, so that requests arrive spread
    out as callers' requests do, not all in the same millisecond. With `pause`, each connection waits that long
    after a stream before its next request, as a caller does while it plays or speaks the reply.
    """
    fixed = None if callable(body) else request_bytes(port, path, body, headers)
    sent = itertools.count()

    def next_request() -> bytes:
        return fixed if fixed is not None else request_bytes(port, path, body(next(sent)), headers)

    result = LoadResult()
    deadline = time.perf_counter() + seconds

    async def worker(number: int) -> None:
        await asyncio.sleep(stagger * number / concurrency)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                first, ok = await _one_stream(reader, writer, next_request(), first_marker)
                if ok and first is not None:
                    result.first_chunk_ms.append(first)
                    result.completed += 1
                    if pause:
                        await asyncio.sleep(pause)
                else:
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


async def chunk_arrivals(
    port: int, path: str, body: dict, concurrency: int, marker: bytes, stagger: float = 0.0
) -> list[list[float]]:
    """One stream on each of `concurrency` connections; for each stream, the arrival time of every `marker`."""
    request = request_bytes(port, path, body)

    async def one(number: int) -> list[float]:
        await asyncio.sleep(stagger * number / concurrency)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        arrivals: list[float] = []
        tail = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                now = time.perf_counter()
                window = tail + data
                arrivals += [now] * window.count(marker)
                tail = window[-len(marker) + 1 :]
                if window.endswith(b"\r\n0\r\n\r\n"):
                    break
        finally:
            writer.close()
        return arrivals

    return list(await asyncio.gather(*(one(n) for n in range(concurrency))))


async def probe_under_load(
    port: int,
    path: str,
    body: dict,
    concurrency: int,
    seconds: float,
    first_marker: bytes,
    stagger: float = 0.0,
    pause: float = 0.0,
    probes: int = 1,
    probe_pause: float = 0.05,
) -> LoadResult:
    """Time to first `first_marker` of `probes` connections while `concurrency - probes` others load the server.

    The load runs in a separate process, so the probes' own event loop is nearly idle and their timings are the
    server's, not the load generator's. Probes ask again `probe_pause` after each reply, for many samples.
    """
    arguments = {
        "port": port,
        "path": path,
        "body": body,
        "concurrency": concurrency - probes,
        "seconds": seconds + stagger + 1.0,
        "first_marker": first_marker.decode(),
        "stagger": stagger,
        "pause": pause,
    }
    load = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.load", json.dumps(arguments), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        await asyncio.sleep(0.5 + stagger)  # the load is running and spread out
        return await run_load(
            port, path, body, probes, seconds, first_marker=first_marker, stagger=stagger, pause=probe_pause
        )
    finally:
        await load.wait()


def _main() -> None:
    """`python -m bench.load '<json arguments of run_load>'`: a load from another process."""
    arguments = json.loads(sys.argv[1])
    arguments["first_marker"] = arguments["first_marker"].encode()
    asyncio.run(run_load(**arguments))


if __name__ == "__main__":
    _main()
