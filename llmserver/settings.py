"""Settings: one table (the Settings dataclass) from which the command-line flags, the environment variables,
their checks and the help text are all made. The flag wins over the environment; the README lists them all."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .endpoints import TOOL_ENDPOINTS

DEFAULT_WAITING_MESSAGES = (
    "Just a moment, I'm thinking...",
    "Let me think about that for a second...",
    "Good question, let me find out...",
    "One moment while I look that up...",
    "zh:请稍等，我想一想……",
    "zh:好问题，我查一下……",
    "zh:稍等，我帮您看看……",
)

DEFAULT_RAG_TEMPLATE = (
    "Answer the user's question using the knowledge below. If the knowledge does not contain the answer, "
    "say that you do not know instead of guessing. Keep the answer short: it will be spoken aloud.\n\n"
    "Knowledge:\n{passages}"
)


# Parsers: each takes the text of a flag or variable and returns the value, or raises ArgumentTypeError. ---------


def _number(kind: type, minimum: float, maximum: float | None = None, *, above: bool = False) -> Callable[[str], Any]:
    """`kind` (int or float), finite, at least `minimum` (or above it), at most `maximum`."""

    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}") from None
        too_small = number <= minimum if above else number < minimum
        if not math.isfinite(number) or too_small or (maximum is not None and number > maximum):
            bound = f"above {minimum:g}" if above else f"at least {minimum:g}"
            raise argparse.ArgumentTypeError(f"expected {bound}{f' and at most {maximum:g}' if maximum else ''}")
        return number

    return parse


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _messages(value: str) -> tuple[str, ...]:
    messages = tuple(part.strip() for part in value.split("|") if part.strip())
    if not messages:
        raise argparse.ArgumentTypeError("expected at least one message (separate them with '|')")
    return messages


def _pace(value: str) -> str:
    if value in ("realtime", "burst"):
        return value
    try:
        if math.isfinite(float(value)) and float(value) >= 0:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("expected realtime, burst or an interval in milliseconds")


def _networks(value: str) -> tuple[str, ...]:
    networks = _comma_list(value)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{network!r} is not an IP address or network") from None
    return networks


def _origins(value: str) -> tuple[str, ...]:
    origins = tuple(origin.rstrip("/") for origin in _comma_list(value))
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"{origin!r} is not an origin such as https://app.example.com")
    return origins


def _hedge(value: str) -> str:
    """off, auto, or a delay in milliseconds."""
    lowered = value.strip().lower()
    if lowered in ("off", "auto"):
        return lowered
    try:
        number = float(lowered)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or number > 600_000:
        raise argparse.ArgumentTypeError(f"expected off, auto or a delay in milliseconds (0 to 600000), got {value!r}")
    return lowered


def _waiting_mode(value: str) -> str:
    """on (at once), off, or late (only when the answer is late)."""
    lowered = value.strip().lower()
    if lowered == "late":
        return "late"
    try:
        return "on" if _bool(lowered) else "off"
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected true, false or late, got {value!r}") from None


def _workers(value: str) -> int:
    if value.strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    return _number(int, 1, 64)(value)


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError("expected redis://host:port/db, rediss://… or unix://…")
    return value


def _endpoints(value: str) -> tuple[str, ...]:
    names = _comma_list(value)
    if names == ("none",):
        return ()
    unknown = set(names) - set(TOOL_ENDPOINTS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(TOOL_ENDPOINTS)} or none, got {', '.join(sorted(unknown))}"
        )
    return names


_PORT = _number(int, 0, 65535)
_COUNT = _number(int, 1)
_RETRIES = _number(int, 0, 10)
_SECONDS = _number(float, 0, above=True)
_DELAY = _number(float, 0)


def setting(
    default: Any,
    help: str,
    *,
    env: str | tuple[str, ...] = (),
    parse: Callable[[str], Any] = str,
    flag: str | None = "",
    secret: bool = False,
) -> Any:
    """One row of the table. `flag` "" derives `--name-like-this` from the field; None means environment only."""
    return field(
        default=default,
        repr=not secret,
        metadata={"help": help, "env": (env,) if isinstance(env, str) else env, "parse": parse, "flag": flag},
    )


@dataclass(frozen=True)
class Settings:
    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 for other machines)", env="HOST")
    port: int = setting(8000, "port (0: one the OS picks)", env="PORT", parse=_PORT)
    workers: int = setting(
        1, "processes serving the port (auto: one per core); more than 1 needs REDIS_URL", env="WORKERS", parse=_workers
    )
    event_loop: str = setting(
        "auto",
        "the event loop: uvloop, asyncio (Python's own), or auto (uvloop where it is installed)",
        env="EVENT_LOOP",
        parse=_choice("auto", "uvloop", "asyncio"),
    )
    backlog: int = setting(
        1024, "connections the OS queues before the server accepts them", env="BACKLOG", parse=_number(int, 1, 65535)
    )
    max_streams: int = setting(
        1000,
        "completion requests one process serves at once; past it, 503 with Retry-After",
        env="MAX_STREAMS",
        parse=_COUNT,
    )
    redis_url: str | None = setting(
        None, "a Redis that workers and instances share state through", env="REDIS_URL", parse=_redis_url, secret=True
    )
    redis_prefix: str = setting("llm:", "prefix of this deployment's Redis keys", env="REDIS_PREFIX")
    history_records: int = setting(100_000, "requests kept in the durable history", env="HISTORY_RECORDS", parse=_COUNT)
    history_days: float = setting(
        30.0, "days requests are kept in the durable history", env="HISTORY_DAYS", parse=_SECONDS
    )
    upstream: str | None = setting(
        None,
        "openai or offline (default: openai with a key or base URL)",
        env="LLM_UPSTREAM",
        parse=_choice("openai", "offline"),
    )
    base_url: str | None = setting(None, "OpenAI-compatible base URL", env=("OPENAI_BASE_URL", "LLM_BASE_URL"))
    api_key: str | None = setting(
        None, "the server's upstream key", env=("OPENAI_API_KEY", "LLM_API_KEY"), flag=None, secret=True
    )
    upstreams_file: str | None = setting(
        None,
        "several upstreams, in order of preference (JSON; see README): fallback, hedging, health",
        env="UPSTREAMS_FILE",
    )
    hedge_after_ms: str = setting(
        "off",
        "with several upstreams: start the request on the next one too when the first has sent no token after this "
        "many milliseconds (the first token wins), auto (learned per upstream), or off",
        env="HEDGE_AFTER_MS",
        parse=_hedge,
    )
    hedge_budget: float = setting(
        0.1,
        "the most extra upstream requests hedging may add, as a share of requests (0.1: one in ten)",
        env="HEDGE_BUDGET",
        parse=_number(float, 0, 1),
    )
    upstream_skip_after: int = setting(
        3, "failures in a row after which an upstream is skipped for a while", env="UPSTREAM_SKIP_AFTER", parse=_COUNT
    )
    upstream_skip_seconds: float = setting(
        10.0,
        "seconds a failing upstream is skipped before one request probes it (doubling while it fails, up to 120)",
        env="UPSTREAM_SKIP_SECONDS",
        parse=_SECONDS,
    )
    model: str = setting("gpt-4o-mini", "model used when a request names none", env="LLM_MODEL")
    api_keys: tuple[str, ...] = setting(
        (), "comma-separated keys clients must present", env="API_KEYS", parse=_comma_list, flag=None, secret=True
    )
    cors_origins: tuple[str, ...] = setting(
        (), "browser origins allowed to call the API (comma-separated; * for any)", env="CORS_ORIGINS", parse=_origins
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "proxies whose X-Forwarded-For/-Proto are believed (IPs or networks)",
        env="TRUSTED_PROXIES",
        parse=_networks,
    )
    max_body_bytes: int = setting(1024 * 1024, "request body limit", env="MAX_BODY_BYTES", parse=_COUNT)
    idle_timeout: float = setting(
        60.0,
        "seconds a connection may wait for its next request's headers (a kept-alive one, or one sending them slowly)",
        env="IDLE_TIMEOUT",
        parse=_SECONDS,
    )
    body_timeout: float = setting(
        30.0,
        "seconds a request's body may take to arrive; past it the connection closes and its MAX_STREAMS place is free",
        env="BODY_TIMEOUT",
        parse=_SECONDS,
    )
    connect_timeout: float = setting(5.0, "seconds to connect to the upstream", env="CONNECT_TIMEOUT", parse=_SECONDS)
    first_token_timeout: float = setting(
        30.0, "seconds from a stream's request to its first chunk", env="FIRST_TOKEN_TIMEOUT", parse=_SECONDS
    )
    completion_timeout: float = setting(
        120.0, "seconds for a whole stream:false completion", env="COMPLETION_TIMEOUT", parse=_SECONDS
    )
    read_timeout: float = setting(60.0, "seconds of silence allowed between chunks", env="READ_TIMEOUT", parse=_SECONDS)
    upstream_retries: int = setting(
        2, "retries before the first chunk (errors, 429, 5xx)", env="UPSTREAM_RETRIES", parse=_RETRIES
    )
    keepalive_seconds: float = setting(
        5.0, "SSE comment interval while /rag waits for the first token (0: off)", env="KEEPALIVE_SECONDS", parse=_DELAY
    )
    shutdown_grace: float = setting(
        10.0, "seconds streams get to finish on SIGTERM", env="SHUTDOWN_GRACE", parse=_DELAY
    )
    request_log_size: int = setting(1000, "records kept in memory", env="REQUEST_LOG_SIZE", parse=_COUNT)
    log_user_text: str = setting(
        "truncated",
        "user text in the request log: full, truncated or none",
        env="LOG_USER_TEXT",
        parse=_choice("full", "truncated", "none"),
    )
    log_text_chars: int = setting(200, "characters kept when truncated", env="LOG_TEXT_CHARS", parse=_COUNT)
    offline_word_delay: float = setting(
        0.02, "seconds between the offline responder's words", env="OFFLINE_WORD_DELAY", parse=_DELAY
    )
    data_dir: str = setting("data", "where operator data lives (knowledge base, clips)", env="DATA_DIR")
    knowledge_file: str | None = setting(
        None, "the knowledge base file (default: DATA_DIR/knowledge.json)", env="KNOWLEDGE_FILE", flag="--knowledge"
    )
    max_documents: int = setting(20000, "most documents in the knowledge base", env="MAX_DOCUMENTS", parse=_COUNT)
    max_document_chars: int = setting(100_000, "longest document", env="MAX_DOCUMENT_CHARS", parse=_COUNT)
    rag_top_k: int = setting(6, "most passages added to a RAG request", env="RAG_TOP_K", parse=_COUNT)
    rag_min_relevance: float = setting(
        0.2,
        "the best passage's relevance (0-1) needed to inject anything; higher injects less for unanswerable questions",
        env="RAG_MIN_RELEVANCE",
        parse=_number(float, 0, 1),
    )
    rag_context_chars: int = setting(
        2500, "most characters of passages added to a RAG request", env="RAG_CONTEXT_CHARS", parse=_COUNT
    )
    embeddings: str = setting(
        "bundled",
        "semantic retrieval: bundled (the model inside the package), endpoint, or none (lexical only)",
        env="EMBEDDINGS",
        parse=_choice("bundled", "endpoint", "none"),
    )
    embeddings_base_url: str | None = setting(
        None, "an OpenAI-compatible /v1/embeddings base URL (EMBEDDINGS=endpoint)", env="EMBEDDINGS_BASE_URL"
    )
    embeddings_api_key: str | None = setting(
        None, "the embeddings endpoint's key", env="EMBEDDINGS_API_KEY", flag=None, secret=True
    )
    embeddings_model: str = setting("text-embedding-3-small", "the endpoint's model", env="EMBEDDINGS_MODEL")
    embeddings_timeout: float = setting(
        2.0, "seconds to embed a query before falling back to lexical", env="EMBEDDINGS_TIMEOUT", parse=_SECONDS
    )
    speakable: str = setting(
        "auto",
        "answers as a TTS engine should read them (no markdown; URLs and addresses as words): on, off, or auto (on "
        "for voice platforms' requests)",
        env="SPEAKABLE",
        parse=_choice("auto", "on", "off"),
    )
    rag_waiting_message: str = setting(
        "on",
        "say a waiting message at once (true), never (false), or only when the answer is late (late)",
        env="RAG_WAITING_MESSAGE",
        parse=_waiting_mode,
    )
    rag_waiting_delay_ms: float = setting(
        700.0,
        "with RAG_WAITING_MESSAGE=late: milliseconds without the answer's first words before the waiting message",
        env="RAG_WAITING_DELAY_MS",
        parse=_DELAY,
    )
    waiting_messages: tuple[str, ...] = setting(
        DEFAULT_WAITING_MESSAGES,
        "waiting messages, separated by '|'; one in the caller's language is picked (tag them: 'zh:请稍等……')",
        env="RAG_WAITING_MESSAGES",
        parse=_messages,
    )
    rag_template: str = setting(DEFAULT_RAG_TEMPLATE, "the knowledge system message; {passages}", env="RAG_TEMPLATE")
    server_tools: tuple[str, ...] = setting(
        TOOL_ENDPOINTS,
        f"endpoints whose requests get the server's tools (comma-separated: {', '.join(TOOL_ENDPOINTS)}; none for no "
        "tools)",
        env="SERVER_TOOLS",
        parse=_endpoints,
    )
    tools_file: str | None = setting(
        None, "webhook tools and MCP servers (default: DATA_DIR/tools.json, if it exists)", env="TOOLS_FILE"
    )
    tool_passes: int = setting(
        5, "most upstream passes of one answer's tool loop", env="TOOL_PASSES", parse=_number(int, 1, 20)
    )
    tool_timeout: float = setting(
        10.0, "seconds a tool call may take (a tool may set its own)", env="TOOL_TIMEOUT", parse=_SECONDS
    )
    tool_result_chars: int = setting(
        4000, "longest tool result given to the model", env="TOOL_RESULT_CHARS", parse=_COUNT
    )
    tool_calls_per_pass: int = setting(
        8, "most server tool calls run in one pass (more get an error result)", env="TOOL_CALLS_PER_PASS", parse=_COUNT
    )
    mcp_health_seconds: float = setting(
        5.0, "seconds between health checks of each MCP server", env="MCP_HEALTH_SECONDS", parse=_SECONDS
    )
    memory_conversations: int = setting(
        1000, "conversations whose tool exchanges are remembered", env="MEMORY_CONVERSATIONS", parse=_COUNT
    )
    memory_messages: int = setting(40, "messages remembered per conversation", env="MEMORY_MESSAGES", parse=_COUNT)
    memory_seconds: float = setting(
        3600.0, "how long an idle conversation is remembered", env="MEMORY_SECONDS", parse=_SECONDS
    )
    audio_dir: str | None = setting(None, "the audio library (default: DATA_DIR/audio)", env="AUDIO_DIR")
    audio_pace: str = setting("realtime", "realtime, burst or an interval in ms", env="AUDIO_PACE", parse=_pace)
    audio_max_bytes: int = setting(25 * 1024 * 1024, "largest upload", env="AUDIO_MAX_BYTES", parse=_COUNT)
    audio_max_seconds: float = setting(120.0, "longest clip", env="AUDIO_MAX_SECONDS", parse=_SECONDS)
    admin_token: str | None = setting(
        None, "the dashboard's token (default: generated)", env="ADMIN_TOKEN", secret=True
    )
    cookie_secret: str | None = setting(
        None, "signs the dashboard's cookie (default: generated)", env="COOKIE_SECRET", flag=None, secret=True
    )

    @property
    def knowledge_path(self) -> str:
        return self.knowledge_file or os.path.join(self.data_dir, "knowledge.json")

    @property
    def tools_path(self) -> str:
        return self.tools_file or os.path.join(self.data_dir, "tools.json")

    @property
    def audio_path(self) -> str:
        return self.audio_dir or os.path.join(self.data_dir, "audio")

    def __post_init__(self) -> None:
        if self.upstream is None:  # a key, a base URL or an upstreams file means a real upstream
            real = self.api_key or self.base_url or self.upstreams_file
            object.__setattr__(self, "upstream", "openai" if real else "offline")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _flag(table_field: dataclasses.Field) -> str | None:
    flag = table_field.metadata["flag"]
    return "--" + table_field.name.replace("_", "-") if flag == "" else flag


def _environment_value(environ: Mapping[str, str], names: Sequence[str]) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name)
        if value not in (None, ""):
            return name, value
    return None


def _help(table_field: dataclasses.Field, names: Sequence[str]) -> str:
    """The setting's help, with its environment variables and its default (none shown for a secret or nothing)."""
    notes = [f"env {'/'.join(names)}"] if names else []
    default = table_field.default
    empty = default is None or default is dataclasses.MISSING or (isinstance(default, str | tuple) and not default)
    if not empty and not table_field.metadata.get("secret"):
        separator = "|" if "'|'" in table_field.metadata["help"] else ","
        shown = separator.join(map(str, default)) if isinstance(default, tuple) else str(default)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."  # long texts: their start (the README has them)
        notes.append(f"default {shown.replace('%', '%%')}")
    return f"{table_field.metadata['help']} ({'; '.join(notes)})" if notes else table_field.metadata["help"]


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="OpenAI-compatible streaming LLM server with RAG, audio replies and an admin dashboard.",
    )
    for table_field in dataclasses.fields(Settings):
        flag = _flag(table_field)
        if flag is None:
            continue
        names = table_field.metadata["env"]
        found = _environment_value(environ, names)
        parser.add_argument(
            flag,
            dest=table_field.name,
            type=table_field.metadata["parse"],
            default=found[1] if found else None,  # argparse checks a text default with `type`, as a flag
            help=_help(table_field, names),
        )
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for `python server.py`: flags, then environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    parser = build_parser(environ)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for table_field in dataclasses.fields(Settings):
        if table_field.name in args:
            value = args[table_field.name]
        else:
            found = _environment_value(environ, table_field.metadata["env"])
            try:
                value = table_field.metadata["parse"](found[1]) if found else None
            except argparse.ArgumentTypeError as exc:
                parser.error(f"{found[0]}: {exc}")
        if value is not None:
            values[table_field.name] = value
    return Settings(**values)
