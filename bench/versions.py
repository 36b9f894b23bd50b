"""This version of the server against another, in alternating rounds on one machine, each measured against the
direct upstream of the same round: the only fair way to compare versions on a machine whose speed drifts.

    .venv/bin/python -m bench.versions --against 0c9e184          # 3 rounds of 5-second phases
    .venv/bin/python -m bench.versions --against HEAD~3 --rounds 5

The other version's tree is taken from git (`git archive`) into a temporary folder and run with this checkout's
virtual environment. Prints a Markdown table: per version, the median over rounds of the streams per second at 50
concurrent against the direct upstream's, and of the time to first chunk added at one stream (p50).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import subprocess
import tarfile
import tempfile

from bench.load import run_load
from bench.run import CHAT_BODY
from fakes.processes import ROOT, fake_upstream, llm_server


def extract(revision: str, into: str) -> str:
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


async def one_round(upstream: int, root: str, seconds: float) -> tuple[float, float]:
    """(streams/s at 50 against direct, added p50 ms to first chunk at 1 stream)."""
    with llm_server(upstream, root=root) as port:
        await run_load(port, "/chat/completions", CHAT_BODY, 4, 1.0)  # warm-up
        direct_one = await run_load(upstream, "/v1/chat/completions", CHAT_BODY, 1, seconds)
        through_one = await run_load(port, "/chat/completions", CHAT_BODY, 1, seconds)
        direct_many = await run_load(upstream, "/v1/chat/completions", CHAT_BODY, 50, seconds)
        through_many = await run_load(port, "/chat/completions", CHAT_BODY, 50, seconds)
    ratio = through_many.streams_per_second / direct_many.streams_per_second
    return ratio, through_one.percentile(50) - direct_one.percentile(50)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="a git revision of the other version")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--words", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-version-") as other:
        name = extract(args.against, other)
        versions = {"this checkout": ROOT, name: other}
        results: dict[str, list[tuple[float, float]]] = {label: [] for label in versions}
        with fake_upstream(args.words) as upstream:
            for round_number in range(args.rounds):
                order = list(versions.items())
                if round_number % 2:
                    order.reverse()  # alternate which goes first: neither always meets a warmer machine
                for label, root in order:
                    results[label].append(await one_round(upstream, root, args.seconds))
    print(f"{args.rounds} alternating rounds, {args.seconds:g}-second phases, {args.words}-chunk streams.\n")
    header = "| version | streams/s at 50 against direct (each round) | median "
    print(header + "| added p50 TTFC at 1 stream, ms (each round) | median |")
    print("|---|---|---|---|---|")
    for label, rows in results.items():
        ratios, added = [r for r, _ in rows], [a for _, a in rows]
        print(
            f"| {label} | {', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} | "
            f"{', '.join(f'{a:+.2f}' for a in added)} | {statistics.median(added):+.2f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
