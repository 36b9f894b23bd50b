"""The one place that calls the upstream LLM, through the official openai SDK's AsyncOpenAI.

Streams are relayed as the upstream's own bytes (one SSE payload per chunk): parsing each chunk into the SDK's
objects and serialising it again would cost several times more and change nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai

from .chunks import completion_as_chunks
from .errors import ApiError
from .settings import Settings
from .sse import SSELineReader, dumps

# Statuses whose meaning the client can act on are passed on; other upstream 4xx too; 5xx become 502.
_KEPT_STATUSES = {400, 401, 403, 404, 409, 413, 422, 429}
_DRAIN_SECONDS = 1.0


class Passage(Protocol):
    """A retrieved knowledge passage (see knowledge.SearchHit)."""

    id: str
    title: str
    content: str
    score: float


class Upstream(Protocol):
    """What the handlers need of an LLM: OpenAIUpstream for real ones, OfflineResponder for none."""

    mode: str
    base_url: str | None

    def stream(
        self, body: dict[str, Any], api_key: str | None, passages: Sequence[Passage] = (), retry: bool = True
    ) -> AsyncIterator[bytes]: ...

    async def complete(self, body: dict[str, Any], api_key: str | None, passages: Sequence[Passage] = ()) -> bytes: ...

    async def list_models(self, api_key: str | None) -> bytes: ...

    async def aclose(self) -> None: ...


def _refused(exc: BaseException) -> bool:
    """True when the connection was refused or reset: the aiohttp transport reports that as a connect timeout."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and not isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def upstream_error(exc: openai.APIError) -> ApiError:
    """Turns an SDK exception into the error the client sees: the upstream's status and message where useful."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") if isinstance(body.get("message"), str) else None
        message = message or f"The upstream LLM answered HTTP {exc.status_code}."
        if exc.status_code in _KEPT_STATUSES:
            return ApiError(
                exc.status_code,
                message,
                type=body.get("type") if isinstance(body.get("type"), str) else None,
                param=body.get("param") if isinstance(body.get("param"), str) else None,
                code=str(body["code"]) if body.get("code") is not None else None,
            )
        return ApiError(502, f"Upstream error (HTTP {exc.status_code}): {message}", code="upstream_error")
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return ApiError(504, "The upstream LLM timed out.", code="upstream_timeout")
    if isinstance(exc, openai.APIConnectionError):
        return ApiError(502, "The upstream LLM could not be reached.", code="upstream_unreachable")
    return ApiError(502, f"Upstream error: {exc}", code="upstream_error")


async def _drain_and_close(received: AsyncIterator[bytes], response: httpx2.Response) -> None:
    """Reads what follows [DONE] (the end of the chunked body) so the connection goes back to the pool.

    Closing a response that is not fully read closes its connection, and a new TCP connection per request
    costs more than the whole relay. It runs after the client has its [DONE]; an upstream that keeps the body
    open after [DONE] gets a second, then its connection is closed.
    """
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in received:
                pass
    except Exception:  # the client has its answer; whatever the rest of the body does, only close it
        pass
    finally:
        await response.aclose()


async def _json_as_stream(response: httpx2.Response, body: dict[str, Any]) -> AsyncIterator[bytes]:
    try:
        completion = json.loads(await response.aread())
    except (ValueError, httpx2.HTTPError):
        raise ApiError(
            502, "The upstream answered a streaming request with invalid JSON.", code="upstream_bad_chunk"
        ) from None
    finally:
        await response.aclose()
    if not isinstance(completion, dict):
        raise ApiError(502, "The upstream answered a streaming request with invalid JSON.", code="upstream_bad_chunk")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    for chunk in completion_as_chunks(completion, include_usage):
        yield dumps(chunk)


def redact_url(url: str) -> str:
    """The URL without user and password, for logs and the dashboard."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class OpenAIUpstream:
    mode = "openai"

    def __init__(self, settings: Settings) -> None:
        base_url = settings.base_url or "https://api.openai.com/v1"
        self.base_url = redact_url(base_url)  # what is shown; the client keeps any credentials in the URL
        self._has_own_key = bool(settings.api_key)
        self._draining: set[asyncio.Task] = set()
        self._client = openai.AsyncOpenAI(
            # Without a key of its own the server forwards the caller's key on each request (see _options).
            api_key=settings.api_key or "forwarded-per-request",
            base_url=base_url,
            max_retries=settings.upstream_retries,
            timeout=httpx2.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            # aiohttp as the transport: measured several times faster per request than the default under load
            # (httpcore checks every pooled connection with a syscall on each request).
            http_client=openai.DefaultAioHttpClient(),
        )

    def _options(self, api_key: str | None, retry: bool = True) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if not self._has_own_key and api_key:
            options["headers"] = {"Authorization": f"Bearer {api_key}"}
        if not retry:
            options["max_retries"] = 0
        return options

    async def stream(
        self, body: dict[str, Any], api_key: str | None, passages: Sequence[Passage] = (), retry: bool = True
    ) -> AsyncIterator[bytes]:
        """The upstream's chunks as SSE payloads. `retry=False` once the client has received bytes of this response."""
        try:
            response = await self._client.post(
                "/chat/completions",
                body=body,
                cast_to=httpx2.Response,
                stream=True,
                options=self._options(api_key, retry),
            )
        except openai.APIError as exc:
            raise upstream_error(exc) from None
        if response.headers.get("content-type", "").startswith("application/json"):
            # An upstream that ignored `stream: true` (some proxies and local servers do): its completion, chunked.
            async for payload in _json_as_stream(response, body):
                yield payload
            return
        reader = SSELineReader()
        received = response.aiter_bytes()
        finished = False
        try:
            async for data in received:
                for payload in reader.feed(data):
                    if payload == b"[DONE]":
                        finished = True
                        task = asyncio.ensure_future(_drain_and_close(received, response))
                        self._draining.add(task)
                        task.add_done_callback(self._draining.discard)
                        return
                    yield payload
        except httpx2.TimeoutException:
            raise ApiError(504, "The upstream LLM stopped sending (read timeout).", code="upstream_timeout") from None
        except httpx2.HTTPError as exc:
            raise ApiError(502, f"The upstream stream broke: {exc}", code="upstream_stream_broken") from None
        finally:
            if not finished:
                await response.aclose()
        raise ApiError(502, "The upstream ended the stream without [DONE].", code="upstream_stream_incomplete")

    async def complete(self, body: dict[str, Any], api_key: str | None, passages: Sequence[Passage] = ()) -> bytes:
        try:
            response = await self._client.post(
                "/chat/completions", body=body, cast_to=httpx2.Response, options=self._options(api_key)
            )
        except openai.APIError as exc:
            raise upstream_error(exc) from None
        return response.content

    async def list_models(self, api_key: str | None) -> bytes:
        try:
            response = await self._client.get("/models", cast_to=httpx2.Response, options=self._options(api_key))
        except openai.APIError as exc:
            raise upstream_error(exc) from None
        return response.content

    async def aclose(self) -> None:
        while self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
        await self._client.close()
