"""The benchmark: requests straight to a fake upstream against requests through the server, in one run.

    .venv/bin/python -m bench.run            # full run (about a minute)
    .venv/bin/python -m bench.run --quick    # shorter phases

Prints a Markdown table; the README's performance section shows this machine's table.
"""

from __future__ import annotations

import argparse
import asyncio

from bench.load import run_load
from bench.processes import fake_upstream, llm_server

CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Tell me a story."}], "stream": True}


def _row(name: str, concurrency: int, direct, through) -> str:
    ratio = through.streams_per_second / direct.streams_per_second if direct.streams_per_second else float("nan")
    added = through.percentile(50) - direct.percentile(50)
    return (
        f"| {name} | {concurrency} | {direct.percentile(50):.2f} / {direct.percentile(99):.2f} | "
        f"{through.percentile(50):.2f} / {through.percentile(99):.2f} | {added:+.2f} | "
        f"{direct.streams_per_second:.0f} | {through.streams_per_second:.0f} | {ratio:.2f} |"
    )


async def bench_streaming(seconds: float, words: int) -> list[str]:
    rows = []
    with fake_upstream(words) as upstream_port, llm_server(upstream_port) as server_port:
        await run_load(server_port, "/chat/completions", CHAT_BODY, 4, 1.0)  # warm-up
        for concurrency in (1, 50):
            direct = await run_load(upstream_port, "/v1/chat/completions", CHAT_BODY, concurrency, seconds)
            through = await run_load(server_port, "/chat/completions", CHAT_BODY, concurrency, seconds)
            rows.append(_row("/chat/completions", concurrency, direct, through))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2-second phases instead of 5")
    parser.add_argument("--words", type=int, default=20, help="content chunks per stream")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 5.0
    header = [
        f"Streams of {args.words} content chunks (+ finish chunk and [DONE]); time to first chunk in ms.",
        "",
        "| endpoint | concurrent streams | direct TTFC p50 / p99 | through server TTFC p50 / p99 | added p50 |"
        " direct streams/s | through streams/s | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = await bench_streaming(seconds, args.words)
    print("\n".join(header + rows))


if __name__ == "__main__":
    asyncio.run(main())
