"""Past one process: --workers 2 against one worker, held streams at a model's cadence, the stream cap, the Redis-
backed mode's added latency, and how long an edit takes to reach another instance.

    .venv/bin/python -m bench.scale            # every measure (a few minutes)
    .venv/bin/python -m bench.scale --quick    # shorter phases

Everything runs on this machine: the fake upstream, a real redis-server, the server and the load generator share
its cores, so the figures are ratios measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient

from bench.load import percentile, request_bytes, run_load
from fakes.processes import fake_upstream, llm_server
from fakes.redis_server import RedisServer

CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Tell me a story."}], "stream": True}
TOKEN = "bench-admin-token"
DATA_DIRS: dict[int, str] = {}  # a server's port -> its data directory, which names its processes
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(marker: str) -> float:
    """CPU time (user + system) of every running process whose command line contains `marker`."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def load_cpu_seconds() -> float:
    """CPU time of the load generator: this process and its finished children (the load's own process)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        server = RedisServer(Path(folder)).start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def server(
    upstream_port: int, *args: str, redis: RedisServer | None = None, prefix: str | None = None, **env: str
) -> Iterator[int]:
    """A server; with `redis`, in a deployment of its own unless `prefix` names one shared with others."""
    with tempfile.TemporaryDirectory(prefix="bench-data-") as data:
        prefix = prefix or f"bench{time.monotonic_ns()}:"
        shared = ["--redis-url", redis.url, "--redis-prefix", prefix] if redis else []
        arguments = ["--data-dir", data, "--embeddings", "none", "--admin-token", TOKEN, *shared, *args]
        with llm_server(upstream_port, *arguments, **env) as port:
            DATA_DIRS[port] = data
            yield port


async def throughput(seconds: float, words: int, rounds: int) -> list[str]:
    """Streams per second at 50 concurrent, one worker against two, alternating."""
    one, two = [], []
    shares: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}  # cores used: server, upstream, client
    per_stream: dict[int, list[float]] = {1: [], 2: []}
    with redis_server() as redis, fake_upstream(words) as upstream:
        for _ in range(rounds):
            for workers, results in ((1, one), (2, two)):
                with server(upstream, "--workers", str(workers), redis=redis) as port:
                    await run_load(port, "/chat/completions", CHAT_BODY, 8, 1.0)  # warm-up
                    before = [cpu_seconds(DATA_DIRS[port]), cpu_seconds("fakes.upstream"), load_cpu_seconds()]
                    started = time.perf_counter()
                    result = await run_load(port, "/chat/completions", CHAT_BODY, 50, seconds)
                    wall = time.perf_counter() - started
                    after = [cpu_seconds(DATA_DIRS[port]), cpu_seconds("fakes.upstream"), load_cpu_seconds()]
                    results.append(result.streams_per_second)
                    server_cpu, upstream_cpu, client_cpu = (b - a for a, b in zip(before, after, strict=True))
                    shares[workers].append((server_cpu / wall, upstream_cpu / wall, client_cpu / wall))
                    per_stream[workers].append(server_cpu / max(result.completed, 1) * 1000)
    best_one, best_two = sorted(one)[len(one) // 2], sorted(two)[len(two) // 2]

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    def cores(workers: int) -> str:
        server_cores, upstream_cores, client_cores = (median([s[i] for s in shares[workers]]) for i in range(3))
        return f"server {server_cores:.2f}, upstream {upstream_cores:.2f}, load generator {client_cores:.2f}"

    return [
        f"| streams/s at 50 concurrent, {words}-chunk streams, 2 workers against 1 (median of {rounds} alternating "
        f"rounds: {', '.join(f'{a:.0f}/{b:.0f}' for a, b in zip(two, one, strict=True))}) | "
        f"{best_two:.0f} / {best_one:.0f} = {best_two / best_one:.2f}× | ≥ 1.7× |",
        f"| the same runs: server CPU per stream, 1 worker · 2 workers (the work per stream does not grow with "
        f"workers) | {median(per_stream[1]):.2f} · {median(per_stream[2]):.2f} ms | |",
        f"| the same runs: cores used, 1 worker: {cores(1)}; 2 workers: {cores(2)} (the machine has "
        f"{os.cpu_count()}; what the server gets, it turns into streams) | streams/s per server core: "
        f"{best_one / median([s[0] for s in shares[1]]):.0f} · {best_two / median([s[0] for s in shares[2]]):.0f} | |",
    ]


async def held_streams(port: int, concurrency: int, chunks: int, spread: float) -> dict[str, float]:
    """`concurrency` streams held open at once (arrivals spread over `spread` seconds); the gaps between their
    chunks, the refusals (status 503) and how long a refusal took."""
    request = request_bytes(port, "/chat/completions", CHAT_BODY)
    gaps: list[float] = []
    refusals: list[float] = []
    first_chunks: list[float] = []
    failures = 0

    async def one(number: int) -> None:
        nonlocal failures
        await asyncio.sleep(spread * number / concurrency)
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        last = None
        head = b""
        tail = b""
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), 30)
                except TimeoutError:
                    data = b""
                now = time.perf_counter()
                if not data:
                    failures += 1
                    return
                if last is None and not head:
                    head = data
                    if data.startswith(b"HTTP/1.1 503"):
                        refusals.append((now - start) * 1000)
                        return
                count = data.count(b"data: {")
                if count:
                    if last is None:
                        first_chunks.append((now - start) * 1000)
                    else:
                        gaps.append((now - last) * 1000)
                    last = now
                tail = (tail + data)[-16:]
                if tail.endswith(b"\r\n0\r\n\r\n"):
                    return
        finally:
            writer.close()

    await asyncio.gather(*(one(n) for n in range(concurrency)))
    return {
        "gap_p50": percentile(gaps, 50),
        "gap_p99": percentile(gaps, 99),
        "first_p99": percentile(first_chunks, 99),
        "served": len(first_chunks),
        "refused": len(refusals),
        "refusal_max": max(refusals) if refusals else 0.0,
        "failures": failures,
    }


async def cadence(concurrencies: tuple[int, ...], chunks: int) -> list[str]:
    """Streams at a model's pace (a chunk every 40 ms) held open together: one worker against two."""
    rows = []
    with redis_server() as redis, fake_upstream(chunks, chunk_delay=0.04) as upstream:
        for concurrency in concurrencies:
            cells = []
            for workers in (1, 2):
                with server(upstream, "--workers", str(workers), "--max-streams", "5000", redis=redis) as port:
                    found = await held_streams(port, concurrency, chunks, spread=1.0)
                cells.append(f"p50 {found['gap_p50']:.0f} / p99 {found['gap_p99']:.0f} ms")
                if found["failures"]:
                    cells[-1] += f" ({found['failures']} cut)"
            rows.append(
                f"| {concurrency} streams of {chunks} chunks at 40 ms: gap between chunks, 1 worker · 2 workers | "
                f"{cells[0]} · {cells[1]} | p99 ≤ 100 ms |"
            )
    return rows


async def cap(limit: int, offered: int, chunks: int) -> list[str]:
    """More streams than MAX_STREAMS: the rest are refused at once, none waits silently."""
    with fake_upstream(chunks, chunk_delay=0.04) as upstream, server(upstream, "--max-streams", str(limit)) as port:
        found = await held_streams(port, offered, chunks, spread=0.5)
        metrics = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")).body.decode()
    rejected = next(
        (line.split()[-1] for line in metrics.splitlines() if line.startswith("llm_requests_rejected_total{")), "0"
    )
    return [
        f"| {offered} streams offered to one worker with MAX_STREAMS={limit} | {found['served']} served (gap p99 "
        f"{found['gap_p99']:.0f} ms, first chunk p99 {found['first_p99']:.0f} ms), {found['refused']} refused with "
        f"503 + Retry-After in at most {found['refusal_max']:.0f} ms (metrics: {float(rejected):.0f} rejected), "
        f"{found['failures']} cut | no stream waits silently |"
    ]


async def redis_latency(seconds: float, words: int, rounds: int) -> list[str]:
    """First-chunk latency at one stream: embedded against Redis-backed, alternating rounds."""
    embedded, shared = [], []
    with redis_server() as redis, fake_upstream(words) as upstream:
        for _ in range(rounds):
            for target, results in ((None, embedded), (redis, shared)):
                with server(upstream, redis=target) as port:
                    await run_load(port, "/chat/completions", CHAT_BODY, 1, 0.5)
                    result = await run_load(port, "/chat/completions", CHAT_BODY, 1, seconds)
                    results.append(result.percentile(50))
    added = [b - a for a, b in zip(embedded, shared, strict=True)]
    return [
        f"| added first-chunk latency of the Redis-backed mode, 1 stream, p50 (median of {rounds} alternating rounds;"
        f" each: {', '.join(f'{a:+.3f}' for a in added)} ms) | {sorted(added)[len(added) // 2]:+.3f} ms | ≤ 0.2 ms |"
    ]


async def propagation(edits: int) -> list[str]:
    """From an edit's reply on one instance to the other instance serving it."""
    delays = []
    with (
        redis_server() as redis,
        fake_upstream(5) as upstream,
        server(upstream, redis=redis, prefix="propagation:") as first,
        server(upstream, redis=redis, prefix="propagation:") as second,
    ):
        client = AsyncHTTPClient()
        headers = {"Authorization": f"Bearer {TOKEN}"}

        async def injects(port: int, doc_id: str, word: str) -> bool:
            reply = await client.fetch(f"http://127.0.0.1:{port}/admin/api/retrieval?q={word}", headers=headers)
            return any(p["doc_id"] == doc_id and p["injected"] for p in json.loads(reply.body)["passages"])

        for n in range(edits):
            doc_id, word = f"edit-{n}", f"quokka{n}"
            body = json.dumps({"id": doc_id, "content": f"Edit number {n} of the benchmark: the code word is {word}."})
            url = f"http://127.0.0.1:{first}/admin/api/knowledge"
            await client.fetch(url, method="POST", body=body, headers=headers)
            done = time.perf_counter()
            while not await injects(second, doc_id, word):
                await asyncio.sleep(0.002)
            delays.append((time.perf_counter() - done) * 1000)
        status = await client.fetch(f"http://127.0.0.1:{second}/admin/api/status", headers=headers)
        documents = json.loads(status.body)["documents"]
    return [
        f"| an edit on one instance, until the other's retrieval injects it ({edits} edits, up to {documents} "
        f"documents) | p50 "
        f"{percentile(delays, 50):.1f} ms, p99 {percentile(delays, 99):.1f} ms, max {max(delays):.1f} ms | ≤ 1 s |"
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases, fewer rounds")
    parser.add_argument(
        "--only", choices=("throughput", "cadence", "cap", "redis", "propagation"), help="run one measure"
    )
    args = parser.parse_args()
    seconds, rounds = (2.0, 1) if args.quick else (5.0, 3)
    rows = ["| measure | result | target |", "|---|---|---|"]
    if args.only in (None, "throughput"):
        rows += await throughput(seconds, 20, rounds)
    if args.only in (None, "cadence"):
        rows += await cadence((500, 1000), 100)
    if args.only in (None, "cap"):
        rows += await cap(300, 600, 100)
    if args.only in (None, "redis"):
        rows += await redis_latency(seconds, 20, rounds + 2)
    if args.only in (None, "propagation"):
        rows += await propagation(60 if args.quick else 200)
    print("\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
