"""A fuzzing and fault-injection campaign against the server, run as separate processes, summarised in Markdown.

    .venv/bin/python -m bench.fuzz            # 6000 hostile requests, 300 through a faulty upstream, 40 kill -9s,
                                              # and the targeted families (200 slow sockets, 3 megabyte queries...)
    .venv/bin/python -m bench.fuzz --quick    # 600, 60, 8, 60 slow sockets and 1 megabyte query: about a minute
    .venv/bin/python -m bench.fuzz --requests 2000 --kills 10 --seed 7 --no-families

Four phases, each against fresh processes (`python -m fakes.upstream`, `python -m fakes.raw_upstream` and
`python server.py --port 0 --data-dir <temporary directory>`, on ports the OS picks; the repository's own data/ is
never touched):

1. Hostile requests on raw sockets from a few concurrent workers (hostile.py's tables, hostile_phase.py):
   malformed, truncated, huge, deeply nested and badly typed bodies, lone surrogates, NaN and 1e400; bad
   Content-Length, chunked framing, origins, forwarded addresses, authorization schemes and request ids; partial,
   pipelined and abandoned requests; every method on every route; path traversal on the static files and the admin
   API, with and without the admin token.
2. Valid requests to /chat, /rag and /audio (streamed and not) through a fake upstream that injects a random fault
   into some requests (`--faults`; faults.py): each failure is attributed to an injected fault, or else is a defect.
3. A kill -9 loop (kills.py): concurrent admin changes (documents, WAV uploads whose transcript names the hash of
   their PCM, activations, deletions), SIGKILL at a random moment, restart on the same data directory, then check
   that every acknowledged save survived and every clip's transcript still matches its audio.
4. The targeted families of hostile callers (families.py), each against a server set up for it: slow sockets, long
   queries, huge and colliding conversation keys, an upstream answering malformed HTTP, the real clients' request
   shapes, numbers in query strings that are not numbers.

Exit status 1 when there was a 5xx not caused by the upstream, a traceback (or ERROR line) in a server log, a lost
save, a mismatched clip, a server that refused to start, or a family's problem; the logs are then kept and their
folder named (report.py writes the summary).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time

from .families import FamiliesReport, families_phase
from .faults import FaultReport, fault_phase
from .hostile_phase import HostileReport, hostile_phase
from .kills import KillLoop, KillReport
from .report import summary


async def campaign(args: argparse.Namespace) -> int:
    folder = tempfile.mkdtemp(prefix="llm-fuzz-")

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    progress(f"logs and data in {folder}")
    hostile, faults, kill, families = HostileReport(), FaultReport(), KillReport(), FamiliesReport()  # 0: skipped
    if args.requests:
        hostile = await hostile_phase(args.requests, args.concurrency, args.seed, folder, progress)
        progress(f"hostile requests done: {hostile.sent}")
    if args.fault_requests:
        faults = await fault_phase(args.fault_requests, args.concurrency, args.seed, args.faults, folder)
        progress(f"faulty upstream done: {faults.sent}")
    if args.kills:
        kill = await KillLoop(args.kills, args.seed, folder, progress).run()
        progress(f"kill -9 loop done: {kill.kills}")
    if args.families:
        families = await families_phase(folder, progress, args.slow_sockets, args.long_queries)
        progress(f"targeted families done: {families.sent}")
    text, failed = summary(args, hostile, faults, kill, families, time.perf_counter() - started)
    print(text)
    if failed or args.keep:
        print(f"Logs and data kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: 600 requests, 60 through faults, 8 kills, 60 slow sockets, 1 long query",
    )
    parser.add_argument("--requests", type=int, help="hostile requests (default 6000, --quick 600)")
    parser.add_argument("--kills", type=int, help="kill -9 cycles (default 40, --quick 8)")
    parser.add_argument("--fault-requests", type=int, help="requests through the faulty upstream (default 300)")
    parser.add_argument("--faults", type=float, default=0.5, help="fault probability per upstream request")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent connections")
    parser.add_argument("--slow-sockets", type=int, help="stalled connections at once (default 200, --quick 60)")
    parser.add_argument("--long-queries", type=int, help="megabyte /rag queries at once (default 3, --quick 1)")
    parser.add_argument("--no-families", dest="families", action="store_false", help="skip the targeted families")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the logs and data directories")
    args = parser.parse_args(argv)
    args.requests = args.requests if args.requests is not None else (600 if args.quick else 6000)
    args.kills = args.kills if args.kills is not None else (8 if args.quick else 40)
    args.fault_requests = args.fault_requests if args.fault_requests is not None else (60 if args.quick else 300)
    args.slow_sockets = args.slow_sockets if args.slow_sockets is not None else (60 if args.quick else 200)
    args.long_queries = args.long_queries if args.long_queries is not None else (1 if args.quick else 3)
    return asyncio.run(campaign(args))


if __name__ == "__main__":
    sys.exit(main())
