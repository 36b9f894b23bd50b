"""The services of one running server, built once at start-up, handed to the handlers, closed at shutdown."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from .audio import AudioLibrary
from .knowledge import KnowledgeBase, KnowledgeError
from .offline import OfflineResponder
from .request_log import RequestLog
from .settings import Settings
from .upstream import OpenAIUpstream, Upstream


class StartupError(Exception):
    """A problem that stops the server from starting; the message names the file and the problem."""


@dataclass
class Services:
    settings: Settings
    upstream: Upstream
    request_log: RequestLog
    knowledge_base: KnowledgeBase
    audio_library: AudioLibrary
    admin_token: str = field(repr=False, default_factory=lambda: secrets.token_urlsafe(24))
    cookie_secret: str = field(repr=False, default_factory=lambda: secrets.token_urlsafe(32))
    started_at: float = field(default_factory=time.time)
    shutting_down: bool = False  # set on SIGTERM: new requests get 503 while running ones finish

    async def aclose(self) -> None:
        await self.upstream.aclose()


def build_upstream(settings: Settings) -> Upstream:
    if settings.upstream == "openai":
        return OpenAIUpstream(settings)
    return OfflineResponder(word_delay=settings.offline_word_delay)


def load_knowledge_base(settings: Settings) -> KnowledgeBase:
    try:
        return KnowledgeBase.load(
            settings.knowledge_file,
            max_documents=settings.max_documents,
            max_document_chars=settings.max_document_chars,
        )
    except KnowledgeError as exc:
        raise StartupError(f"invalid knowledge base, not starting (the file is left untouched): {exc}") from None


def build_services(settings: Settings) -> Services:
    knowledge_base = load_knowledge_base(settings)
    secrets_given = {"admin_token": settings.admin_token, "cookie_secret": settings.cookie_secret}
    return Services(
        **{name: value for name, value in secrets_given.items() if value},  # else generated at each start
        settings=settings,
        upstream=build_upstream(settings),
        request_log=RequestLog(settings.request_log_size, settings.log_text_chars),
        knowledge_base=knowledge_base,
        audio_library=AudioLibrary(
            settings.audio_dir, max_bytes=settings.audio_max_bytes, max_seconds=settings.audio_max_seconds
        ),
    )
