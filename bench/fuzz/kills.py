"""Phase 3: a kill -9 loop. Concurrent admin changes (documents, WAV uploads whose transcript names the hash of
their PCM, activations, deletions), SIGKILL at a random moment, restart on the same data directory, then check that
every acknowledged save survived and every clip's transcript still matches its audio."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import os
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile

from llmserver.audio.codec import SIMULATED_TRANSCRIPT

from .hostile import SAMPLE_RATE
from .logs import LogReport, analyse_log
from .processes import SHIPPED_PCM, SHIPPED_TRANSCRIPT, ServerProcess, StartRefused, start_server
from .wire import AdminClient, multipart

KILL_ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"

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
