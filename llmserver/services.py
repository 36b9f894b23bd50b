"""The services of one running server, built once at start-up, handed to the handlers, closed at shutdown."""

from __future__ import annotations

from dataclasses import dataclass

from .offline import OfflineResponder
from .request_log import RequestLog
from .settings import Settings
from .upstream import OpenAIUpstream, Upstream


@dataclass
class Services:
    settings: Settings
    upstream: Upstream
    request_log: RequestLog

    async def aclose(self) -> None:
        await self.upstream.aclose()


def build_upstream(settings: Settings) -> Upstream:
    if settings.upstream == "openai":
        return OpenAIUpstream(settings)
    return OfflineResponder(word_delay=settings.offline_word_delay)


def build_services(settings: Settings) -> Services:
    return Services(
        settings=settings,
        upstream=build_upstream(settings),
        request_log=RequestLog(settings.request_log_size, settings.log_text_chars),
    )
