"""The request log: one typed record per completion request, kept in a ring buffer, sent to subscribers and to
logging. What a record holds of the user's text follows LOG_USER_TEXT; every string in it is valid Unicode and
every nested value bounded in depth and size, so any record can always be encoded, shown and sent."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .protocol.chat_request import ChatRequest, message_text

if TYPE_CHECKING:
    from .tools.registry import ToolOutcome

logger = logging.getLogger("llmserver.requests")

Subscriber = Callable[[dict[str, Any]], None]
LOG_TEXT_MODES = ("full", "truncated", "none")
MAX_FIELD_DEPTH = 6
MAX_FIELD_CHARS = 200  # a client's model name, turn id or engine field: kept this long at most
MAX_REPLY_CHARS = 4000  # of the answer's text
MAX_LOGGED_MESSAGES = 20  # the last messages of a request, as the history keeps them


def safe_text(text: str) -> str:
    """`text` with anything that cannot be encoded as UTF-8 (lone surrogates) replaced."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _count(value: Any) -> int | None:
    """A token count as an upstream wrote it, if it is one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12 else None


def bounded_value(value: Any, depth: int = MAX_FIELD_DEPTH) -> Any:
    """A copy of a JSON value with safe, short strings and nothing nested deeper than `depth` (deeper parts
    become "…")."""
    if isinstance(value, str):
        value = safe_text(value)
        return value if len(value) <= MAX_FIELD_CHARS else value[: MAX_FIELD_CHARS - 1] + "…"
    if isinstance(value, dict):
        if depth <= 0:
            return "…"
        return {safe_text(str(k)): bounded_value(v, depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if depth <= 0:
            return "…"
        return [bounded_value(v, depth - 1) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return safe_text(str(value))


@dataclass
class RetrievalHit:
    id: str  # the passage: document#number
    score: float  # its relevance, 0..1


@dataclass
class RetrievalDetails:
    query: str  # as used: the last turn, and the history it was weighted with
    hits: list[RetrievalHit]  # the injected passages, best first
    ms: float
    semantic: bool = False  # embeddings took part
    injected_chars: int = 0
    injected: list[str] = field(default_factory=list)  # their texts, as the model read them


@dataclass
class AudioDetails:
    clip: str | None  # None for the simulated reply
    duration: float
    simulated: bool


@dataclass
class ToolCallDetails:
    name: str
    source: str  # builtin, webhook, mcp:<server>
    arguments: str  # as the model wrote them, kept as LOG_USER_TEXT says
    ms: float
    outcome: str  # ok, error
    error: str | None = None
    pass_number: int = 1


@dataclass
class AttemptDetails:
    upstream: str
    outcome: str  # won, failed, cancelled
    ms: float  # from the attempt's start to its first chunk, failure or cancellation
    code: str | None = None  # a failure's error code


MAX_ATTEMPTS_KEPT = 16


@dataclass
class RequestRecord:
    request_id: str  # the client's own X-Request-Id when it sent one, so not unique: see `key`
    endpoint: str
    started_at: float = field(default_factory=time.time)
    model: str | None = None
    messages: int = 0
    last_user_message: str = ""
    turn_id: Any = None
    engine_fields: dict[str, Any] = field(default_factory=dict)  # what the voice platform added (not sent upstream)
    platform: str | None = None  # the voice platform that sent it (agora, vapi, elevenlabs, deepgram, …)
    instance: str = ""  # the process that served it (host:pid), when several serve one deployment
    messages_logged: list[dict[str, str]] = field(default_factory=list)  # role and text, as LOG_USER_TEXT says
    reply: str = ""  # the answer's text, as LOG_USER_TEXT says
    status: int = 200
    outcome: str = "ok"  # ok, error, cancelled
    first_chunk_ms: float | None = None  # the first chunk to the client (on /rag: the waiting message)
    upstream_called_ms: float | None = None  # when the upstream call began
    upstream_first_chunk_ms: float | None = None  # when the upstream's first chunk was relayed
    first_sentence_ms: float | None = None  # when the answer's first whole sentence had reached the caller
    upstream_attempts: int = 0  # more than 1 when a failure before the first chunk was retried, moved or hedged
    upstream: str | None = None  # the name of the upstream that answered
    hedged: bool = False  # a second upstream was asked too, because the first was slow to its first chunk
    attempts: list[AttemptDetails] = field(default_factory=list)  # each upstream request, in the order they ended
    total_ms: float | None = None
    chunks: int = 0
    prompt_tokens: int | None = None  # as the upstream counted them
    cached_tokens: int | None = None  # of the prompt, read from the upstream's cache (prompt_tokens_details)
    completion_tokens: int | None = None
    error: str | None = None
    error_code: str | None = None
    retrieval: RetrievalDetails | None = None  # the RAG endpoint's
    audio: AudioDetails | None = None  # the audio endpoint's
    passes: int = 0  # upstream passes of the tool loop (0: no server tools offered)
    pass_gaps_ms: list[float] = field(default_factory=list)  # from a pass's end to the next pass's call, tools included
    tool_calls: list[ToolCallDetails] = field(default_factory=list)  # the server's, in the order they ran
    conversation: str | None = None  # the memory's key for this conversation, when it has one
    history_repairs: dict[str, int] = field(default_factory=dict)  # what the repair changed before going upstream
    speakable: bool = False  # the answer's text was made speakable (SPEAKABLE)
    key: str = ""  # unique: this server process and the record's number in it
    _start: float = field(default_factory=time.perf_counter, repr=False)
    _user_text: Callable[[str], str] = field(default=str, repr=False)  # LOG_USER_TEXT, for what the model wrote

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self._start) * 1000, 3)

    # What the turn reports as it runs (llmserver.upstream.trace.RelayTrace and llmserver.turn.trace.TurnTrace).

    def sent(self, chunks: int = 1) -> None:
        if self.first_chunk_ms is None:
            self.first_chunk_ms = self.elapsed_ms()
        self.chunks += chunks

    def upstream_called(self) -> None:
        if self.upstream_called_ms is None:
            self.upstream_called_ms = self.elapsed_ms()

    def attempted(self, upstream: str) -> None:
        self.upstream_attempts += 1

    def attempt_ended(self, upstream: str, outcome: str, ms: float, code: str | None) -> None:
        if len(self.attempts) < MAX_ATTEMPTS_KEPT:
            self.attempts.append(AttemptDetails(upstream, outcome, round(ms, 3), bounded_value(code)))

    def upstream_answered(self, upstream: str, hedged: bool) -> None:
        if self.upstream_first_chunk_ms is None:
            self.upstream_first_chunk_ms = self.elapsed_ms()
            self.upstream = upstream
        self.hedged = self.hedged or hedged

    def said(self, text: str) -> None:
        self.add_reply(text)

    def used(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self.prompt_tokens = _count(usage.get("prompt_tokens"))
        self.completion_tokens = _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        self.cached_tokens = _count(details.get("cached_tokens")) if isinstance(details, dict) else None

    def pass_began(self) -> int:
        self.passes += 1
        return self.passes

    def pass_gap(self, ms: float) -> None:
        self.pass_gaps_ms.append(round(ms, 3))

    def tool_ran(self, outcome: ToolOutcome, pass_number: int) -> None:
        self.tool_calls.append(
            ToolCallDetails(
                bounded_value(outcome.call.name),
                outcome.source,
                self._user_text(outcome.call.arguments),
                outcome.ms,
                "ok" if outcome.ok else "error",
                outcome.error,
                pass_number,
            )
        )

    def conversation_is(self, key: str | None) -> None:
        self.conversation = key

    def retrieved(self, details: RetrievalDetails) -> None:
        self.retrieval = details

    def played(self, details: AudioDetails) -> None:
        self.audio = details

    def history_repaired(self, changes: dict[str, int]) -> None:
        self.history_repairs = changes

    def first_sentence(self) -> None:
        if self.first_sentence_ms is None:
            self.first_sentence_ms = self.elapsed_ms()

    def speaking(self, speakable: bool) -> None:
        self.speakable = speakable

    def fail(self, status: int, message: str, code: str | None = None) -> None:
        self.status = status
        self.outcome = "error"
        self.error = safe_text(message)  # it may quote an upstream's words
        self.error_code = code

    def add_reply(self, text: str) -> None:
        """Text of the answer as it streams (kept to MAX_REPLY_CHARS)."""
        if len(self.reply) < MAX_REPLY_CHARS:
            self.reply += text[: MAX_REPLY_CHARS - len(self.reply)]

    def cancel(self) -> None:
        self.status = 499  # nginx's "client closed request"
        self.outcome = "cancelled"
        self.error = "client disconnected"

    def to_dict(self) -> dict[str, Any]:
        # Field by field rather than dataclasses.asdict, which deep-copies every value: this runs for every request.
        data = {name: getattr(self, name) for name in _RECORD_FIELDS}
        data["engine_fields"] = dict(self.engine_fields)
        for name in ("retrieval", "audio"):
            if data[name] is not None:
                data[name] = asdict(data[name])
        data["tool_calls"] = [asdict(call) for call in self.tool_calls]
        data["attempts"] = [asdict(attempt) for attempt in self.attempts]
        data["pass_gaps_ms"] = list(self.pass_gaps_ms)
        data["history_repairs"] = dict(self.history_repairs)
        return data


_RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord) if not f.name.startswith("_"))


def describe(record: dict[str, Any]) -> str:
    """The record as one log line (no keys or headers are ever in a record)."""
    parts = [
        record["request_id"],
        record["endpoint"],
        f"model={record['model']}",
        f"status={record['status']}",
        f"outcome={record['outcome']}",
        f"first_chunk_ms={record['first_chunk_ms']}",
        f"first_sentence_ms={record.get('first_sentence_ms')}",
        f"total_ms={record['total_ms']}",
        f"chunks={record['chunks']}",
        f"messages={record['messages']}",
    ]
    if record["turn_id"] is not None:
        parts.append(f"turn_id={record['turn_id']}")
    if record["upstream_attempts"] > 1 or record.get("hedged"):
        tried = ",".join(f"{a['upstream']}:{a['outcome']}:{a['ms']}" for a in record.get("attempts") or ())
        parts.append(f"attempts={record['upstream_attempts']}{' hedged' if record.get('hedged') else ''} {tried}")
    if record.get("upstream"):
        parts.append(f"upstream={record['upstream']}")
    retrieval = record["retrieval"]
    if retrieval is not None:
        hits = ",".join(f"{hit['id']}:{hit['score']}" for hit in retrieval["hits"]) or "none"
        parts.append(f"hits={hits} retrieval_ms={retrieval['ms']}{'' if retrieval['semantic'] else ' lexical'}")
    if record["tool_calls"]:
        calls = ",".join(f"{call['name']}:{call['outcome']}:{call['ms']}" for call in record["tool_calls"])
        parts.append(f"passes={record['passes']} tools={calls}")
    audio = record["audio"]
    if audio is not None:
        parts.append("clip=simulated" if audio["simulated"] else f"clip={audio['clip']}")
    if record["last_user_message"]:
        parts.append(f"user={record['last_user_message']!r}")
    if record["error"]:
        parts.append(f"error={record['error']!r}")
    return " ".join(parts)


class RequestLog:
    """Ring buffer of finished records plus live counters; subscribers get each record as it finishes.

    Subscribers are called synchronously and must not block: the admin WebSocket queues what it receives.
    `text_mode` is LOG_USER_TEXT: "truncated" keeps the first `text_chars` characters of user text, "full" all
    of it, "none" nothing.
    """

    def __init__(
        self,
        size: int = 1000,
        text_chars: int = 200,
        text_mode: str = "truncated",
        instance: str | None = None,
        on_in_flight: Callable[[int], None] | None = None,
    ) -> None:
        if text_mode not in LOG_TEXT_MODES:
            raise ValueError(f"text_mode must be one of {', '.join(LOG_TEXT_MODES)}")
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self._on_in_flight = on_in_flight
        self._local: list[Subscriber] = []  # hear only this process's records (metrics count each once)
        self._records: deque[dict[str, Any]] = deque(maxlen=size)
        self._subscribers: list[Subscriber] = []
        self.text_chars = text_chars
        self.text_mode = text_mode
        self.in_flight = 0
        self.totals: Counter[str] = Counter()
        self._finished = 0
        self._key_prefix = secrets.token_hex(4)  # unique to this process, whatever the pid

    def begin(self, request_id: str, endpoint: str) -> RequestRecord:
        self.in_flight += 1
        if self._on_in_flight is not None:
            self._on_in_flight(self.in_flight)
        return RequestRecord(request_id=request_id, endpoint=endpoint, instance=self.instance, _user_text=self.text)

    def describe(self, record: RequestRecord, chat: ChatRequest) -> None:
        """What the record keeps of the request itself (its text as LOG_USER_TEXT says)."""
        record.model = chat.model
        record.messages = len(chat.messages)
        record.last_user_message = self.text(chat.last_user_text())
        if self.text_mode != "none":
            record.messages_logged = [
                {"role": str(m.get("role"))[:20], "text": self.text(message_text(m))}
                for m in chat.messages[-MAX_LOGGED_MESSAGES:]
            ]
        record.turn_id = bounded_value(chat.turn_id)
        record.engine_fields = self.bounded(chat.engine_fields)
        record.platform = chat.platform

    def bounded(self, value: dict[str, Any], limit: int = 4096) -> dict[str, Any]:
        """`value` (safe, depth-bounded) if its JSON is small, else a truncated JSON text: records stay small."""
        if not value:
            return value  # most requests: nothing to measure
        safe = bounded_value(value)
        text = json.dumps(safe, ensure_ascii=False)
        return safe if len(text) <= limit else {"truncated": text[:limit] + "…"}

    def text(self, text: str) -> str:
        """User text as the record keeps it (LOG_USER_TEXT)."""
        if self.text_mode == "none":
            return ""
        text = safe_text(text)
        if self.text_mode == "full" or len(text) <= self.text_chars:
            return text
        return text[: self.text_chars - 1] + "…"

    def finish(self, record: RequestRecord) -> None:
        # What the client chose is kept short and safe, however it got into the record.
        record.model = bounded_value(record.model)
        record.turn_id = bounded_value(record.turn_id)
        record.reply = self.text(record.reply)
        self.in_flight -= 1
        if self._on_in_flight is not None:
            self._on_in_flight(self.in_flight)
        record.total_ms = record.elapsed_ms()
        self._finished += 1
        record.key = f"{self._key_prefix}-{self._finished}"
        self.totals[record.outcome] += 1
        data = record.to_dict()
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s", describe(data))
        for listener in self._local:
            listener(data)
        self.publish(data)

    def watch_local(self, listener: Subscriber) -> None:
        """Calls `listener` with each record this process finishes (not with other processes' records)."""
        self._local.append(listener)

    def publish(self, data: dict[str, Any]) -> None:
        """Keeps a finished record and hands it to the subscribers: this process's, or (with Redis) another's."""
        self._records.append(data)
        for subscriber in list(self._subscribers):
            try:
                subscriber(data)
            except Exception:
                logger.exception("request log subscriber failed; removing it")
                self.unsubscribe(subscriber)

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        records = list(self._records)
        return records if limit is None else records[-limit:]

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
