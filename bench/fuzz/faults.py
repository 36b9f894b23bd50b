"""Phase 2: valid requests to /chat, /rag and /audio (streamed and not) through a fake upstream that injects a
random fault into some of them (`--faults`): each failure is attributed to an injected fault, or else is a defect.
judge_completion, which says whether an answer came whole, serves the targeted families too."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from .hostile import QUESTIONS
from .logs import LogReport, analyse_log
from .processes import FAKE_WORDS, SHIPPED_PCM, start_fake_upstream, start_server, stop
from .wire import JSON, Exchange, call, sse_payloads


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


def judge_completion(
    endpoint: str, stream: bool, result: Exchange, clip_bytes: int | None, expected: str | None = EXPECTED_TEXT
) -> tuple[str, str]:
    """(outcome, detail): outcome "ok" or what went wrong. The answer must be `expected` (None: any text but
    blanks) and, on /audio, a clip of `clip_bytes` (None: any clip) with its transcript."""
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
            if not _whole_clip(base64.b64decode(audio.get("data", "")), clip_bytes) or not audio.get("transcript"):
                return "wrong audio", str(audio.get("transcript"))[:100]
        elif not _expected_text(message.get("content"), expected):
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
        if not _whole_clip(base64.b64decode("".join(audio_data)), clip_bytes) or not transcript:
            return "wrong audio", f"{len(audio_data)} chunks"
    elif not _expected_text("".join(text), expected):
        return "wrong content", repr("".join(text))[:200]
    return "ok", ""


def _whole_clip(pcm: bytes, clip_bytes: int | None) -> bool:
    return len(pcm) == clip_bytes if clip_bytes is not None else bool(pcm)


def _expected_text(text: Any, expected: str | None) -> bool:
    return text == expected if expected is not None else isinstance(text, str) and bool(text.strip())


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
                result = await call(server.port, "POST", path, [JSON], json.dumps(body).encode(), timeout=60)
                results.append((number, endpoint, stream, result))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = time.perf_counter() - started
    finally:
        await server.stop()
        await stop(upstream)
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
