"""Settings from the command line and the environment (the flag wins), with the defaults documented in the README."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_WAITING_MESSAGES = (
    "Just a moment, I'm thinking...",
    "Let me think about that for a second...",
    "Good question, let me find out...",
    "One moment while I look that up...",
)

DEFAULT_RAG_TEMPLATE = (
    "Answer the user's question using the knowledge below. If the knowledge does not contain the answer, "
    "say that you do not know instead of guessing. Keep the answer short: it will be spoken aloud.\n\n"
    "Knowledge:\n{passages}"
)


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    upstream: str = "offline"  # "openai" or "offline"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str = "gpt-4o-mini"
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    max_body_bytes: int = 1024 * 1024
    connect_timeout: float = 5.0
    first_token_timeout: float = 30.0
    read_timeout: float = 60.0
    upstream_retries: int = 2
    shutdown_grace: float = 10.0
    keepalive_seconds: float = 5.0
    request_log_size: int = 1000
    log_text_chars: int = 200
    offline_word_delay: float = 0.02
    # RAG
    knowledge_file: str = "knowledge.json"
    rag_top_k: int = 3
    rag_min_score: float = 1.2
    rag_waiting_message: bool = True
    waiting_messages: tuple[str, ...] = DEFAULT_WAITING_MESSAGES
    rag_template: str = DEFAULT_RAG_TEMPLATE
    max_documents: int = 20000
    max_document_chars: int = 100_000
    # Audio
    audio_dir: str = "audio"
    audio_pace: str = "realtime"  # "realtime", "burst" or an interval in ms
    audio_max_bytes: int = 25 * 1024 * 1024
    audio_max_seconds: float = 120.0
    # Admin
    admin_token: str | None = field(default=None, repr=False)
    cookie_secret: str | None = field(default=None, repr=False)

    @property
    def has_upstream_key(self) -> bool:
        return bool(self.api_key)


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name)
        if value not in (None, ""):
            return value
    return None


def _split(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _number(kind: type, minimum: float, maximum: float | None = None, *, above: bool = False):
    """An argparse type: `kind` (int or float) at least `minimum` (or above it), at most `maximum`."""

    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}") from None
        too_small = number <= minimum if above else number < minimum
        if too_small or (maximum is not None and number > maximum):
            bound = f"above {minimum:g}" if above else f"at least {minimum:g}"
            raise argparse.ArgumentTypeError(f"expected {bound}{f' and at most {maximum:g}' if maximum else ''}")
        return number

    return parse


_PORT = _number(int, 0, 65535)
_COUNT = _number(int, 1)
_RETRIES = _number(int, 0, 10)
_SECONDS = _number(float, 0, above=True)
_DELAY = _number(float, 0)


def _pace(value: str) -> str:
    if value in ("realtime", "burst"):
        return value
    try:
        if math.isfinite(float(value)) and float(value) >= 0:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("expected realtime, burst or an interval in milliseconds")


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="OpenAI-compatible streaming LLM server with RAG, audio replies and an admin dashboard.",
    )

    def option(flag: str, *env_names: str, type=str, default=None, help: str = "", **kwargs) -> None:
        raw = _env(environ, *env_names)
        value = default if raw is None else raw
        env_note = f" (env {'/'.join(env_names)})" if env_names else ""
        parser.add_argument(flag, type=type, default=value, help=help + env_note, **kwargs)

    option("--host", "HOST", default=defaults.host, help="address to listen on")
    option("--port", "PORT", type=_PORT, default=defaults.port, help="port to listen on")
    option("--upstream", "LLM_UPSTREAM", choices=("openai", "offline"), help="upstream mode")
    option("--base-url", "OPENAI_BASE_URL", "LLM_BASE_URL", help="OpenAI-compatible base URL")
    option("--model", "LLM_MODEL", default=defaults.model, help="model used when a request names none")
    option(
        "--max-body-bytes", "MAX_BODY_BYTES", type=_COUNT, default=defaults.max_body_bytes, help="request body limit"
    )
    option("--connect-timeout", "CONNECT_TIMEOUT", type=_SECONDS, default=defaults.connect_timeout, help="seconds")
    option(
        "--first-token-timeout",
        "FIRST_TOKEN_TIMEOUT",
        type=_SECONDS,
        default=defaults.first_token_timeout,
        help="seconds",
    )
    option(
        "--read-timeout", "READ_TIMEOUT", type=_SECONDS, default=defaults.read_timeout, help="seconds between chunks"
    )
    option("--upstream-retries", "UPSTREAM_RETRIES", type=_RETRIES, default=defaults.upstream_retries, help="retries")
    option(
        "--keepalive-seconds",
        "KEEPALIVE_SECONDS",
        type=_DELAY,
        default=defaults.keepalive_seconds,
        help="SSE comment interval while /rag waits for the first token (0: off)",
    )
    option("--shutdown-grace", "SHUTDOWN_GRACE", type=_DELAY, default=defaults.shutdown_grace, help="seconds")
    option("--request-log-size", "REQUEST_LOG_SIZE", type=_COUNT, default=defaults.request_log_size, help="records")
    option(
        "--offline-word-delay", "OFFLINE_WORD_DELAY", type=_DELAY, default=defaults.offline_word_delay, help="seconds"
    )
    option("--knowledge", "KNOWLEDGE_FILE", default=defaults.knowledge_file, help="knowledge base file")
    option("--max-documents", "MAX_DOCUMENTS", type=_COUNT, default=defaults.max_documents, help="knowledge base size")
    option(
        "--max-document-chars",
        "MAX_DOCUMENT_CHARS",
        type=_COUNT,
        default=defaults.max_document_chars,
        help="per document",
    )
    option("--rag-top-k", "RAG_TOP_K", type=_COUNT, default=defaults.rag_top_k, help="passages injected")
    option("--rag-min-score", "RAG_MIN_SCORE", type=_DELAY, default=defaults.rag_min_score, help="minimum BM25 score")
    option(
        "--rag-waiting-message",
        "RAG_WAITING_MESSAGE",
        type=_bool,
        default=defaults.rag_waiting_message,
        help="send a waiting message first",
    )
    option("--waiting-messages", "RAG_WAITING_MESSAGES", help="waiting messages, separated by '|'")
    option("--rag-template", "RAG_TEMPLATE", default=defaults.rag_template, help="system message; {passages}")
    option("--audio-dir", "AUDIO_DIR", default=defaults.audio_dir, help="audio library folder")
    option("--audio-pace", "AUDIO_PACE", type=_pace, default=defaults.audio_pace, help="realtime, burst or ms")
    option("--audio-max-bytes", "AUDIO_MAX_BYTES", type=_COUNT, default=defaults.audio_max_bytes, help="upload limit")
    option("--audio-max-seconds", "AUDIO_MAX_SECONDS", type=_SECONDS, default=defaults.audio_max_seconds, help="limit")
    option("--admin-token", "ADMIN_TOKEN", help="admin dashboard token (generated when unset)")
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for `python server.py`: flags, then environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    args = build_parser(environ).parse_args(argv)
    api_key = _env(environ, "OPENAI_API_KEY", "LLM_API_KEY")
    upstream = args.upstream or ("openai" if (api_key or args.base_url) else "offline")
    waiting = tuple(m.strip() for m in (args.waiting_messages or "").split("|") if m.strip())
    return Settings(
        host=args.host,
        port=args.port,
        upstream=upstream,
        base_url=args.base_url,
        api_key=api_key,
        model=args.model,
        api_keys=_split(_env(environ, "API_KEYS")),
        max_body_bytes=args.max_body_bytes,
        connect_timeout=args.connect_timeout,
        first_token_timeout=args.first_token_timeout,
        read_timeout=args.read_timeout,
        upstream_retries=args.upstream_retries,
        shutdown_grace=args.shutdown_grace,
        keepalive_seconds=args.keepalive_seconds,
        request_log_size=args.request_log_size,
        offline_word_delay=args.offline_word_delay,
        knowledge_file=args.knowledge,
        rag_top_k=args.rag_top_k,
        rag_min_score=args.rag_min_score,
        rag_waiting_message=args.rag_waiting_message,
        waiting_messages=waiting or DEFAULT_WAITING_MESSAGES,
        rag_template=args.rag_template,
        max_documents=args.max_documents,
        max_document_chars=args.max_document_chars,
        audio_dir=args.audio_dir,
        audio_pace=args.audio_pace,
        audio_max_bytes=args.audio_max_bytes,
        audio_max_seconds=args.audio_max_seconds,
        admin_token=args.admin_token,
        cookie_secret=_env(environ, "COOKIE_SECRET"),
    )
