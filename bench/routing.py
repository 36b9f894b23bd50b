"""Several upstreams: what hedging buys against a stalling upstream, what it costs, and what routing costs when nothing
goes wrong.

    .venv/bin/python -m bench.routing            # about 2 minutes
    .venv/bin/python -m bench.routing --seconds 10

1. Through the server (UPSTREAMS_FILE with two fake upstream processes, each answering its first chunk after 25 ms;
   one request in 20 to the first stalls 1.5 s): time to the first content, p50/p99, with HEDGE_AFTER_MS off, auto and
   a fixed 100 ms, and the extra upstream requests each made (from the server's /metrics).
2. In this process, the router over two in-process fake upstreams: how soon a loser's connection closes after the
   winner's first chunk (as the losing upstream sees it).
3. In this process, the routing's own cost per request on the fast path (an upstream that answers at once, no
   network): the router's open and close against the upstream client's stream alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

from tornado.httpclient import AsyncHTTPClient

from bench.load import percentile, run_load
from bench.run import CHAT_BODY
from fakes.processes import fake_upstream, llm_server
from fakes.upstream import FakeUpstream
from llmserver.protocol.sse import dumps
from llmserver.request_log import RequestLog
from llmserver.services import build_upstream
from llmserver.settings import Settings
from llmserver.upstream.protocol import UpstreamChunk
from llmserver.upstream.routing import HealthPolicy, HedgePolicy, Route, Router, SilentObserver
from llmserver.upstream.upstreams_file import UpstreamConfig

FIRST_CHUNK = 0.025  # each fake upstream's time to first chunk
STALL_EVERY, STALL_SECONDS = 20, 1.5
CONCURRENCY = 8


async def metric_sums(port: int) -> dict[str, float]:
    """The server's upstream counters, summed over upstreams, by metric name and upstream."""
    text = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")).body.decode()
    sums: dict[str, float] = {}
    for name, upstream, value in re.findall(r'^(llm_upstream_\w+_total)\{upstream="(\w+)"\} (\S+)$', text, re.M):
        sums[f"{name}:{upstream}"] = float(value)
    return sums


async def hedging_run(hedge: str, seconds: float, words: int) -> dict[str, Any]:
    with (
        fake_upstream(words, FIRST_CHUNK, stall_every=STALL_EVERY, stall_seconds=STALL_SECONDS) as stalling,
        fake_upstream(words, FIRST_CHUNK) as healthy,
        tempfile.TemporaryDirectory(prefix="bench-routing-") as folder,
    ):
        path = os.path.join(folder, "upstreams.json")
        upstreams = [
            {"name": "first", "base_url": f"http://127.0.0.1:{stalling}/v1", "api_key": "sk-bench"},
            {"name": "second", "base_url": f"http://127.0.0.1:{healthy}/v1", "api_key": "sk-bench"},
        ]
        with open(path, "w") as handle:
            json.dump({"upstreams": upstreams}, handle)
        with llm_server(None, UPSTREAMS_FILE=path, HEDGE_AFTER_MS=hedge) as port:
            await run_load(port, "/chat/completions", CHAT_BODY, CONCURRENCY, 3.0)  # warm-up (and `auto` learns)
            before = await metric_sums(port)
            result = await run_load(port, "/chat/completions", CHAT_BODY, CONCURRENCY, seconds)
            after = await metric_sums(port)
    counted = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    attempts = sum(value for key, value in counted.items() if key.startswith("llm_upstream_attempts_total"))
    requests = result.completed + result.errors
    return {
        "hedge": hedge,
        "requests": requests,
        "errors": result.errors,
        "p50": result.percentile(50),
        "p99": result.percentile(99),
        "max": max(result.first_chunk_ms),
        "extra": attempts / requests - 1,
        "hedges": counted.get("llm_upstream_hedges_total:second", 0.0),
        "won": counted.get("llm_upstream_hedges_won_total:second", 0.0),
    }


async def loser_cancellation(races: int = 200) -> list[float]:
    """Milliseconds from the winner's first chunk to the loser's connection closing at the losing upstream."""
    slow, fast = FakeUpstream().start(), FakeUpstream().start()
    slow.behaviour.first_chunk_delay = 10.0
    fast.behaviour.first_chunk_delay = 0.02
    settings = Settings(upstream="openai")
    configs = [UpstreamConfig(name, fake.base_url, "sk") for name, fake in (("slow", slow), ("fast", fast))]
    routes = [Route(c, build_upstream(c, settings), HealthPolicy(1000, 1), SilentObserver()) for c in configs]
    router = Router(routes, retries=0, hedge=HedgePolicy(0.005, budget=1.0))
    gaps = []
    try:
        for number in range(races):
            record = RequestLog().begin(f"race_{number}", "chat")
            opened = await router.open_stream(CHAT_BODY, None, record)
            won = time.perf_counter()
            async for _ in opened.chunks:
                pass
            await opened.aclose()
            gaps.append((slow.last.closed_at - won) * 1000)
    finally:
        await router.aclose()
        await slow.stop()
        await fast.stop()
    return gaps


class InstantUpstream:
    """An upstream client that answers at once from memory: what is left is the routing's own work."""

    mode = "openai"
    base_url = "memory://"
    has_own_key = True

    def __init__(self) -> None:
        chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
        self.chunks = [UpstreamChunk(dumps(chunk), chunk)] * 3

    async def stream(self, body: dict[str, Any], api_key: str | None) -> AsyncIterator[UpstreamChunk]:
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        return None


async def fast_path_cost(requests: int = 20_000, rounds: int = 5) -> dict[str, float]:
    """Microseconds per request the router adds to the upstream client's own stream, by configuration (the median of
    alternating rounds)."""
    upstream = InstantUpstream()

    def router(names: tuple[str, ...], hedge: HedgePolicy | None) -> Router:
        routes = [Route(UpstreamConfig(n, "memory://"), upstream, HealthPolicy(), SilentObserver()) for n in names]
        return Router(routes, retries=2, hedge=hedge, observer=SilentObserver())

    configurations = {
        "one upstream": router(("only",), None),
        "two upstreams, hedging auto": router(("first", "second"), HedgePolicy("auto")),
    }

    async def direct() -> None:
        chunks = upstream.stream(CHAT_BODY, None)
        await anext(chunks)
        async for _ in chunks:
            pass
        await chunks.aclose()

    async def routed(chosen: Router) -> None:
        opened = await chosen.open_stream(CHAT_BODY, None, RequestLog().begin("r", "chat"))
        async for _ in opened.chunks:
            pass
        await opened.aclose()

    async def timed(make) -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await make()
        return (time.perf_counter() - started) / requests * 1e6

    async def record_only() -> None:
        RequestLog().begin("r", "chat")
        await direct()

    costs: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(rounds):
        baseline = await timed(record_only)
        for name, chosen in configurations.items():
            costs[name].append(await timed(lambda chosen=chosen: routed(chosen)) - baseline)
    return {name: statistics.median(values) for name, values in costs.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per hedging configuration")
    parser.add_argument("--words", type=int, default=20)
    args = parser.parse_args()
    print(
        f"{CONCURRENCY} concurrent streams for {args.seconds:g} s each; both upstreams answer their first chunk in "
        f"{FIRST_CHUNK * 1000:g} ms; one request in {STALL_EVERY} to the first stalls {STALL_SECONDS:g} s.\n"
    )
    print("| HEDGE_AFTER_MS | requests | first content p50 / p99 / max, ms | extra upstream requests | hedges won |")
    print("|---|---|---|---|---|")
    for hedge in ("off", "auto", "100"):
        run = await hedging_run(hedge, args.seconds, args.words)
        won = f"{run['won']:.0f} of {run['hedges']:.0f}" if run["hedges"] else "-"
        print(
            f"| {hedge} | {run['requests']} ({run['errors']} errors) | {run['p50']:.1f} / {run['p99']:.1f} / "
            f"{run['max']:.0f} | {run['extra']:.1%} | {won} |"
        )
    gaps = await loser_cancellation()
    print(
        f"\nLosers cancelled: from the winner's first chunk to the loser's connection closing at its upstream, "
        f"p50 {percentile(gaps, 50):.2f} ms, p99 {percentile(gaps, 99):.2f} ms, max {max(gaps):.2f} ms "
        f"({len(gaps)} races)."
    )
    costs = await fast_path_cost()
    print(
        "\nThe routing's own cost per request on the fast path (median of 5 rounds of 20,000): "
        + "; ".join(f"{name} {cost / 1000:.4f} ms" for name, cost in costs.items())
        + "."
    )


if __name__ == "__main__":
    asyncio.run(main())
