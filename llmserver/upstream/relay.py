"""The relay: one completion from the upstream to the client, with the retries, deadlines and keep-alives that
make it safe for voice.

- Retries happen only while nothing of the upstream's answer has reached the client (the RAG endpoint's waiting
  message is the server's own, so it does not count): a failure before the first chunk is safe to send again.
  A connection that closed before any of the answer came back (a kept-alive connection the upstream or a proxy
  had closed) is retried at once on another connection, even with UPSTREAM_RETRIES=0; other failures back off.
- Deadlines: a stream must bring its first chunk within `first_token_timeout` (every attempt included); a
  non-streaming completion must be complete within `completion_timeout`.
- While a started response waits for the model, SSE comments keep the connection alive.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..protocol.errors import ApiError
from ..request_log import RequestRecord
from .protocol import Upstream, UpstreamChunk, UpstreamError

T = TypeVar("T")
DROPPED_CONNECTION_RETRIES = 3  # immediate: a pool can hold several connections the peer has closed
MAX_BACKOFF = 8.0


class EventSink(Protocol):
    """Where a stream goes: the SSE writer of the client's response."""

    started: bool

    async def send(self, payload: bytes) -> None: ...

    async def send_comment(self, text: str) -> None: ...

    async def done(self) -> None: ...


@dataclass(frozen=True)
class RelayPolicy:
    retries: int = 2
    first_token_timeout: float = 30.0
    completion_timeout: float = 120.0
    keepalive_seconds: float = 5.0


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds before attempt number `attempt` (1 for the first retry): the upstream's wish, else exponential."""
    if retry_after is not None:
        return min(retry_after, MAX_BACKOFF * 4)
    return min(MAX_BACKOFF, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)


class RetryBudget:
    """The retries one request may still make."""

    def __init__(self, retries: int) -> None:
        self.retries = retries
        self.used = 0
        self.dropped_retries = DROPPED_CONNECTION_RETRIES

    def delay_before_retry(self, error: UpstreamError) -> float:
        """Seconds to wait before sending the request again; re-raises `error` when it may not be retried."""
        if error.dropped and self.dropped_retries:
            self.dropped_retries -= 1
            return 0.0
        if not error.retryable or self.used >= self.retries:
            raise error
        self.used += 1
        return backoff(self.used, error.retry_after)


class Relay:
    def __init__(self, upstream: Upstream, policy: RelayPolicy) -> None:
        self.upstream = upstream
        self.policy = policy

    async def stream(self, body: dict[str, Any], api_key: str | None, sink: EventSink, record: RequestRecord) -> None:
        """Streams the upstream's chunks to `sink` as they come, then [DONE]."""
        record.upstream_called_ms = record.elapsed_ms()
        timeout = self.policy.first_token_timeout
        try:
            async with asyncio.timeout(timeout):
                chunks, first = await self._first_chunk(body, api_key, sink, record)
        except TimeoutError:
            raise ApiError(
                504, f"The upstream LLM sent no token within {timeout:g} s.", code="first_token_timeout"
            ) from None
        try:
            if first is not None:
                record.upstream_first_chunk_ms = record.elapsed_ms()
                await sink.send(first.raw)
                record.mark_chunk()
                async for chunk in chunks:
                    await sink.send(chunk.raw)
                    record.mark_chunk()
            await sink.done()
        finally:
            await chunks.aclose()

    async def _first_chunk(
        self, body: dict[str, Any], api_key: str | None, sink: EventSink, record: RequestRecord
    ) -> tuple[AsyncIterator[UpstreamChunk], UpstreamChunk | None]:
        """Opens the stream and waits for its first chunk, retrying what may be retried."""
        budget = RetryBudget(self.policy.retries)
        while True:
            record.upstream_attempts += 1
            chunks = self.upstream.stream(body, api_key)
            try:
                return chunks, await self._keep_alive(sink, anext(chunks))
            except StopAsyncIteration:
                return chunks, None
            except UpstreamError as error:
                await chunks.aclose()
                delay = budget.delay_before_retry(error)
            if delay:
                await self._keep_alive(sink, asyncio.sleep(delay))

    async def _keep_alive(self, sink: EventSink, waiting: Awaitable[T]) -> T:
        """Awaits `waiting`; once the response has begun (the RAG waiting message), sends an SSE comment every
        `keepalive_seconds` meanwhile: clients such as LiveKit's give up after 10 s of silence."""
        interval = self.policy.keepalive_seconds
        if not sink.started or not interval:
            return await waiting
        task = asyncio.ensure_future(waiting)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=interval)
                if done:
                    return task.result()
                await sink.send_comment("keep-alive")
        finally:
            if not task.done():
                # The client left or a deadline struck: stop the upstream call too, and let the generator finish
                # closing before anyone else touches it.
                task.cancel()
                await asyncio.wait({task})
            elif not task.cancelled():
                task.exception()  # retrieved, so a failure met while leaving is not logged as unhandled

    async def complete(self, body: dict[str, Any], api_key: str | None, record: RequestRecord) -> dict[str, Any]:
        """The upstream's completion, within `completion_timeout` (every attempt included)."""
        record.upstream_called_ms = record.elapsed_ms()
        timeout = self.policy.completion_timeout
        budget = RetryBudget(self.policy.retries)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    record.upstream_attempts += 1
                    try:
                        completion = await self.upstream.complete(body, api_key)
                        break
                    except UpstreamError as error:
                        delay = budget.delay_before_retry(error)
                    await asyncio.sleep(delay)
        except TimeoutError:
            raise ApiError(
                504, f"The upstream LLM did not answer within {timeout:g} s.", code="completion_timeout"
            ) from None
        record.upstream_first_chunk_ms = record.elapsed_ms()
        return completion
