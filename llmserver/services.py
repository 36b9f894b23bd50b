"""The composition root: the services of one running server, built once at start-up from the settings, handed to
the handlers, and closed at shutdown."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass, field, replace

from .admin_secrets import AdminSecrets, load_or_create
from .admin_secrets import keep as keep_secrets
from .audio.codec import AudioError
from .audio.library import AudioLibrary
from .audio.responder import ClipResponder
from .history import HistoryOff, RequestHistory, open_history
from .knowledge.embeddings import EmbeddingCache, EmbeddingError, build_embedder
from .knowledge.fusion import DEFAULT_POLICY
from .knowledge.retriever import Retriever
from .knowledge.store import KnowledgeBase, KnowledgeError
from .login_throttle import LoginThrottle
from .metrics import Metrics
from .request_log import RequestLog
from .settings import Settings
from .shared.deployment import SharedDeployment
from .shared.redis_state import REDIS_ERRORS, SharedStoreUnavailable
from .tools.builtin import BuiltinTools
from .tools.mcp import McpServerTools
from .tools.memory import ConversationMemory
from .tools.registry import ToolRegistry
from .tools.tools_file import ToolsFileError, load_tools_file
from .tools.webhooks import WebhookTools
from .turn.conversation import ConversationStage
from .turn.retrieval import RetrievalStage
from .turn.service import CompletionService
from .turn.tools import ServerToolsStage
from .turn.waiting import WaitingMessageStage
from .upstream.offline import OfflineResponder
from .upstream.openai_upstream import OpenAIUpstream
from .upstream.protocol import Upstream
from .upstream.relay import Relay, RelayPolicy
from .upstream.routing import HealthPolicy, HedgePolicy, Route, Router, RoutingObserver
from .upstream.upstreams_file import UpstreamConfig, UpstreamsFileError, load_upstreams_file

# The shipped defaults a new data directory starts from: tracked files, only ever read.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_KNOWLEDGE = os.path.join(PROJECT_ROOT, "knowledge.json")
SHIPPED_AUDIO = os.path.join(PROJECT_ROOT, "audio")


logger = logging.getLogger("llmserver")
MIN_ADMIN_TOKEN_CHARS = 24


class StartupError(Exception):
    """A problem that stops the server from starting; the message names the file and the problem."""


@dataclass
class Services:
    settings: Settings
    upstreams: Router
    completions: CompletionService
    request_log: RequestLog
    knowledge_base: KnowledgeBase
    retriever: Retriever
    tools: ToolRegistry
    memory: ConversationMemory
    audio_library: AudioLibrary
    metrics: Metrics
    history: RequestHistory | HistoryOff
    admin_token: str = field(repr=False)
    cookie_secret: str = field(repr=False)
    shared: SharedDeployment | None = None  # with REDIS_URL: the state shared with the other processes
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    started_at: float = field(default_factory=time.time)
    shutting_down: bool = False  # set on SIGTERM: new requests get 503 while running ones finish

    def uptime(self) -> float:
        return time.time() - self.started_at

    def start_background_work(self) -> threading.Thread:
        """Embeds the knowledge base in a background thread (retrieval is lexical until it is done) and, on the
        running event loop, connects the MCP servers."""
        for source in self.tools.sources:
            if isinstance(source, McpServerTools):
                source.start()
        if self.shared is not None:
            self.shared.start()
        thread = threading.Thread(target=self.retriever.start_semantic, name="embeddings", daemon=True)
        thread.start()
        return thread

    async def reload_tools(self) -> None:
        """Reads the tools file again (refusing, with the reason, a file that is not valid) and asks every MCP server
        for its tools again."""
        config = load_tools_file(self.settings.tools_path)
        sources: list = [source for source in self.tools.sources if not isinstance(source, McpServerTools)]
        known = [s for s in self.tools.sources if isinstance(s, McpServerTools)]
        for source in sources:
            if isinstance(source, WebhookTools):
                source.configure(config)
        servers = []
        for server in config.mcp_servers:
            same = next((s for s in known if s.config == server), None)  # unchanged: keep its connection
            if same is not None:
                known.remove(same)
            source = same or McpServerTools(server, health_seconds=self.settings.mcp_health_seconds)
            source.start()
            servers.append(source)
        for gone in known:
            await gone.aclose()
        self.tools.sources = [*sources, *servers]
        await self.tools.reload()

    def set_tool_enabled(self, name: str, enabled: bool) -> None:
        """Offers the tool again, or stops offering it: in every process when they share state (then refused with
        SharedStoreUnavailable while Redis is unreachable). Blocking: run it in a worker thread."""
        if self.shared is not None and self.shared.tool_switch is not None:
            self.shared.tool_switch.set_enabled(name, enabled)
        elif enabled:
            self.tools.disabled.discard(name)
        else:
            self.tools.disabled.add(name)

    def dropped_records(self) -> int:
        """Request records that could not be shipped to the other processes (Redis unreachable too long)."""
        return self.shared.dropped if self.shared is not None else 0

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """What /readyz reports: whether the server answers as configured, and each part's state. Only the parts
        answers depend on decide it. Redis and the history are shown, never decisive: completions go on without
        them (from this process's copy of the shared state; unlogged), and a check that fails on every instance at
        once, as a Redis outage does, would turn a load balancer's health check into a full outage."""
        needed = {
            "knowledge_base": True,
            "embedding_model": self.retriever.embedder is None or self.retriever.semantic_ready,
        }
        checks = {**needed, "history": self.history.available}
        if self.shared is not None:
            checks["redis"] = self.shared.available
        return all(needed.values()), checks

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()
        await self.upstreams.aclose()
        await self.tools.aclose()
        self.history.close()
        if self.retriever.embedder is not None:
            await self.retriever.embedder.aclose()
        if self.retriever.cache is not None:
            self.retriever.cache.close()


def upstream_configs(settings: Settings) -> tuple[UpstreamConfig, ...]:
    """The upstreams, in order: UPSTREAMS_FILE's, else OPENAI_BASE_URL/OPENAI_API_KEY as one, else offline."""
    if settings.upstream == "offline":
        return (UpstreamConfig("offline", None),)
    if settings.upstreams_file:
        try:
            return load_upstreams_file(settings.upstreams_file)
        except UpstreamsFileError as exc:
            raise StartupError(f"invalid upstreams file, not starting: {exc}") from None
    # As the openai SDK does: OPENAI_ORG_ID and OPENAI_PROJECT_ID, when set, name the organisation and the project.
    headers = {
        header: os.environ[name]
        for header, name in (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID"))
        if os.environ.get(name)
    }
    base_url = settings.base_url or "https://api.openai.com/v1"
    return (UpstreamConfig("default", base_url, settings.api_key, headers, needs_key=True),)


def build_upstream(config: UpstreamConfig, settings: Settings) -> Upstream:
    if config.base_url is None:
        return OfflineResponder(word_delay=settings.offline_word_delay)
    return OpenAIUpstream(
        config,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_streams=settings.max_streams,
    )


def build_router(settings: Settings, configs: tuple[UpstreamConfig, ...], observer: RoutingObserver) -> Router:
    """Every caller of the upstream goes through this one router: streams, the tool loop's passes, `stream: false`
    and the model list."""
    health = HealthPolicy(settings.upstream_skip_after, settings.upstream_skip_seconds)
    routes = [Route(config, build_upstream(config, settings), health, observer) for config in configs]
    after = settings.hedge_after_ms
    hedge_after = None if after == "off" else ("auto" if after == "auto" else float(after) / 1000)
    hedge = HedgePolicy(hedge_after, settings.hedge_budget)
    return Router(
        routes,
        retries=settings.upstream_retries,
        hedge=hedge,
        observer=observer,
        first_token_timeout=settings.first_token_timeout,
    )


def load_knowledge_base(settings: Settings, shared: SharedDeployment | None = None) -> KnowledgeBase:
    try:
        return KnowledgeBase.load(
            settings.knowledge_path,
            seed=SHIPPED_KNOWLEDGE,
            storage=shared.knowledge_storage(settings.max_document_chars) if shared else None,
            max_documents=settings.max_documents,
            max_document_chars=settings.max_document_chars,
        )
    except SharedStoreUnavailable:
        raise StartupError("Redis (REDIS_URL) stopped answering while the knowledge base was read") from None
    except KnowledgeError as exc:
        raise StartupError(f"invalid knowledge base, not starting (the file is left untouched): {exc}") from None
    except OSError as exc:
        raise StartupError(f"cannot write the knowledge base {settings.knowledge_path}: {exc.strerror}") from None


def open_audio_library(settings: Settings, shared: SharedDeployment | None = None) -> AudioLibrary:
    try:
        return AudioLibrary(
            settings.audio_path,
            seed_folder=SHIPPED_AUDIO,
            max_bytes=settings.audio_max_bytes,
            max_seconds=settings.audio_max_seconds,
            store=shared.clip_store() if shared else None,
        )
    except SharedStoreUnavailable:
        raise StartupError("Redis (REDIS_URL) stopped answering while the audio library was read") from None
    except AudioError as exc:
        raise StartupError(f"invalid audio library, not starting (the files are left untouched): {exc}") from None
    except OSError as exc:
        raise StartupError(f"cannot use the audio folder {settings.audio_path}: {exc.strerror}") from None


def build_retriever(settings: Settings) -> Retriever:
    try:
        embedder = build_embedder(
            settings.embeddings,
            base_url=settings.embeddings_base_url,
            api_key=settings.embeddings_api_key,
            model=settings.embeddings_model,
            timeout=settings.embeddings_timeout,
        )
    except EmbeddingError as exc:
        raise StartupError(str(exc)) from None
    cache = None
    if embedder is not None:
        path = os.path.join(os.path.dirname(os.path.abspath(settings.knowledge_path)), "embeddings.sqlite3")
        try:
            cache = EmbeddingCache(path)  # a damaged file, or a folder of that name, is set aside
        except (sqlite3.Error, OSError) as exc:  # a full disk, a folder that cannot be written: served without it
            logger.warning("embedding cache off: %s cannot be opened (%s); every start embeds everything", path, exc)
    return Retriever(
        embedder,
        cache,
        top_k=settings.rag_top_k,
        context_chars=settings.rag_context_chars,
        policy=replace(DEFAULT_POLICY, threshold=settings.rag_min_relevance),
    )


def build_tools(settings: Settings, retriever: Retriever) -> ToolRegistry:
    try:
        config = load_tools_file(settings.tools_path)
    except ToolsFileError as exc:
        raise StartupError(f"invalid tools file, not starting: {exc}") from None
    sources = [
        BuiltinTools(retriever),
        WebhookTools(config, result_chars=settings.tool_result_chars),
        *(McpServerTools(server, health_seconds=settings.mcp_health_seconds) for server in config.mcp_servers),
    ]
    return ToolRegistry(
        sources,
        default_timeout=settings.tool_timeout,
        result_chars=settings.tool_result_chars,
        calls_per_pass=settings.tool_calls_per_pass,
    )


def admin_secrets(settings: Settings, shared: SharedDeployment | None = None) -> AdminSecrets:
    """ADMIN_TOKEN and COOKIE_SECRET when set; else the ones kept in the data directory (made at the first start),
    or with Redis the ones all processes share."""
    path = os.path.join(settings.data_dir, "secrets.json")
    if settings.admin_token and len(settings.admin_token) < MIN_ADMIN_TOKEN_CHARS:
        # The sign-in throttle turns guessers away but lets the right token in from anywhere (an operator behind the
        # same proxy as a guesser must still sign in): only the token's length bounds how fast it can be guessed.
        logger.warning(
            "ADMIN_TOKEN has %d characters: give it at least %d random ones (the generated token has 32)",
            len(settings.admin_token),
            MIN_ADMIN_TOKEN_CHARS,
        )
    try:
        kept = load_or_create(path)
        if shared is not None:
            mine, kept = kept, shared.admin_secrets(kept)
            if kept != mine:
                keep_secrets(path, kept)  # this data directory then carries the deployment's sign-in
    except OSError as exc:
        raise StartupError(f"cannot keep the admin secrets in {settings.data_dir}: {exc.strerror}") from None
    except REDIS_ERRORS as exc:
        raise StartupError(f"cannot read the admin secrets from Redis: {exc}") from None
    return AdminSecrets(settings.admin_token or kept.admin_token, settings.cookie_secret or kept.cookie_secret)


def check_shared_state(settings: Settings) -> None:
    """Raises StartupError, saying why, when REDIS_URL is set and Redis cannot be reached."""
    shared = connect_shared_state(settings, "check")
    if shared is not None:
        shared.close()


def connect_shared_state(settings: Settings, instance: str) -> SharedDeployment | None:
    if not settings.redis_url:
        return None
    shared = SharedDeployment(settings.redis_url, settings.redis_prefix, instance)
    try:
        shared.connect()
    except ConnectionError as exc:
        raise StartupError(
            f"cannot reach Redis at REDIS_URL ({redacted_url(settings.redis_url)}): {str(exc).rstrip('.')}. "
            "Start Redis, correct REDIS_URL, or unset it to run one process on its own."
        ) from None
    return shared


def redacted_url(url: str) -> str:
    """`url` without its password (error messages and logs are read by more people than the settings)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def build_services(settings: Settings, instance: str | None = None, keeps_others_history: bool = True) -> Services:
    """`instance` names this process in shared logs (default: host:pid). With Redis, the history keeps the other
    processes' requests too unless `keeps_others_history` is False (a worker whose data directory, and so history,
    another worker of its machine keeps for all)."""
    configs = upstream_configs(settings)  # a bad upstreams file refuses the start before anything is written
    try:
        os.makedirs(settings.data_dir, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot make the data directory {settings.data_dir}: {exc.strerror}") from None
    instance = instance or f"{socket.gethostname()}:{os.getpid()}"
    shared = connect_shared_state(settings, instance)
    knowledge_base = load_knowledge_base(settings, shared)
    retriever = build_retriever(settings)
    knowledge_base.subscribe(retriever.rebuild)
    metrics = Metrics()
    request_log = RequestLog(
        settings.request_log_size,
        settings.log_text_chars,
        settings.log_user_text,
        instance=instance,
        on_in_flight=metrics.in_flight.set,
    )
    request_log.watch_local(metrics.observe)
    history = open_history(
        os.path.join(settings.data_dir, "history.sqlite3"),
        max_records=settings.history_records,
        max_days=settings.history_days,
        on_drop=metrics.dropped.labels("history").inc,
    )
    if keeps_others_history:
        request_log.subscribe(history.add)
    else:
        request_log.watch_local(history.add)
    kept = admin_secrets(settings, shared)
    audio_library = open_audio_library(settings, shared)
    memory = ConversationMemory(settings.memory_conversations, settings.memory_messages, settings.memory_seconds)
    tools = build_tools(settings, retriever)
    if shared is not None:
        shared.share(
            knowledge_base, audio_library, memory, tools, request_log, metrics.dropped.labels("shared_log").inc
        )
    upstreams = build_router(settings, configs, metrics.upstreams)
    for route in upstreams.routes:
        metrics.upstreams.known(route.name)
    return Services(
        admin_token=kept.admin_token,
        cookie_secret=kept.cookie_secret,
        settings=settings,
        upstreams=upstreams,
        completions=build_completions(settings, upstreams, retriever, tools, memory, audio_library, request_log),
        request_log=request_log,
        metrics=metrics,
        history=history,
        knowledge_base=knowledge_base,
        retriever=retriever,
        tools=tools,
        memory=memory,
        audio_library=audio_library,
        shared=shared,
    )


def waiting_message_stage(settings: Settings) -> WaitingMessageStage | None:
    if settings.rag_waiting_message == "off":
        return None
    late = settings.rag_waiting_message == "late"
    return WaitingMessageStage(settings.waiting_messages, settings.rag_waiting_delay_ms / 1000 if late else None)


def build_completions(
    settings: Settings,
    upstreams: Router,
    retriever: Retriever,
    tools: ToolRegistry,
    memory: ConversationMemory,
    audio_library: AudioLibrary,
    request_log: RequestLog,
) -> CompletionService:
    policy = RelayPolicy(
        first_token_timeout=settings.first_token_timeout,
        completion_timeout=settings.completion_timeout,
        keepalive_seconds=settings.keepalive_seconds,
    )
    return CompletionService(
        Relay(upstreams, policy),
        ClipResponder(audio_library, settings.audio_pace),
        conversation=ConversationStage(memory),
        waiting_message=waiting_message_stage(settings),
        retrieval=RetrievalStage(retriever, settings.rag_template, request_log.text),
        server_tools=ServerToolsStage(tools, settings.server_tools, settings.tool_passes),
        speakable=settings.speakable,
    )
