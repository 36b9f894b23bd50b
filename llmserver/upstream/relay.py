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

from ..protocol.chat_request import include_usage
from ..protocol.chunks import ChunkFactory
from ..protocol.errors import ApiError
from ..protocol.sse import dumps
from ..request_log import RequestRecord
from .protocol import Upstream, UpstreamChunk, UpstreamError
from .tool_loop import ToolUse, Turn, add_usage, exchange_messages, pass_separator

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


def _keep_text(record: RequestRecord, data: dict[str, Any]) -> None:
    """The answer's text, for the record (the history shows it)."""
    choices = data.get("choices")
    if choices:
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            record.add_reply(delta["content"])


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

    async def stream(
        self,
        body: dict[str, Any],
        api_key: str | None,
        sink: EventSink,
        record: RequestRecord,
        tools: ToolUse | None = None,
    ) -> None:
        """Streams the upstream's chunks to `sink` as they come, then [DONE]; with `tools`, the tool loop."""
        record.upstream_called_ms = record.elapsed_ms()
        if tools is not None:
            await self._stream_with_tools(body, api_key, sink, record, tools)
            return
        chunks, first = await self._open(body, api_key, sink, record)
        try:
            if first is not None:
                record.upstream_first_chunk_ms = record.elapsed_ms()
                await sink.send(first.raw)
                record.mark_chunk()
                _keep_text(record, first.data)
                async for chunk in chunks:
                    await sink.send(chunk.raw)
                    record.mark_chunk()
                    _keep_text(record, chunk.data)
            await sink.done()
        finally:
            await chunks.aclose()

    async def _open(
        self, body: dict[str, Any], api_key: str | None, sink: EventSink, record: RequestRecord
    ) -> tuple[AsyncIterator[UpstreamChunk], UpstreamChunk | None]:
        """The stream and its first chunk, within the first-token deadline."""
        timeout = self.policy.first_token_timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._first_chunk(body, api_key, sink, record)
        except TimeoutError:
            raise ApiError(
                504, f"The upstream LLM sent no token within {timeout:g} s.", code="first_token_timeout"
            ) from None

    async def _stream_with_tools(
        self, body: dict[str, Any], api_key: str | None, sink: EventSink, record: RequestRecord, tools: ToolUse
    ) -> None:
        messages = list(body["messages"])
        envelope: dict[str, Any] | None = None  # the first pass's id, created and model: the caller's
        usage: dict[str, Any] | None = None
        role_sent = False
        finish_reason = "stop"
        said = ""  # the end of the text the caller has had, to keep the passes' texts apart
        while True:
            record.passes += 1
            pass_spoke = False
            last = record.passes >= tools.max_passes
            chunks, first = await self._open(tools.body_for_pass(body, messages, last), api_key, sink, record)
            if record.upstream_first_chunk_ms is None and first is not None:
                record.upstream_first_chunk_ms = record.elapsed_ms()
            turn = tools.turn(body)
            try:
                chunk = first
                while chunk is not None:
                    data = chunk.data
                    if envelope is None:
                        envelope = {"id": data.get("id"), "created": data.get("created"), "model": data.get("model")}
                    choices = data.get("choices")
                    if not choices:
                        usage = add_usage(usage, data.get("usage"))  # the usage chunk: summed, sent at the end
                    else:
                        choice = choices[0]
                        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
                        if choice.get("finish_reason"):
                            turn.finish_reason = choice["finish_reason"]
                        shown = turn.delta_for_caller(delta)
                        content = shown.get("content")
                        if isinstance(content, str) and content:
                            if not pass_spoke and record.passes > 1:
                                separator = pass_separator(said, content)
                                if separator:
                                    shown = {**shown, "content": separator + content}
                            pass_spoke = True
                            said = shown["content"][-1:]
                            record.add_reply(shown["content"])
                        if role_sent and "role" in shown:
                            shown = {key: value for key, value in shown.items() if key != "role"}
                        role_sent = role_sent or "role" in shown
                        if record.passes == 1 and shown is delta and not choice.get("finish_reason"):
                            await sink.send(chunk.raw)  # as the upstream sent it
                            record.mark_chunk()
                        elif shown:
                            rewritten = {
                                **data,
                                **envelope,
                                "choices": [{**choice, "delta": shown, "finish_reason": None}],
                            }
                            rewritten.pop("usage", None)
                            await sink.send(dumps(rewritten))
                            record.mark_chunk()
                    chunk = await anext(chunks, None)
            finally:
                await chunks.aclose()
            exchange = await self._run_server_calls(tools, turn, last, turn.joined_text, record, sink)
            if exchange is not None:
                messages += exchange
                continue
            finish_reason = turn.finish_reason_for_caller(turn.finish_reason)
            break
        factory = ChunkFactory(
            str(envelope["model"] if envelope else body.get("model", "")), str(envelope["id"] if envelope else "")
        )
        if envelope and isinstance(envelope["created"], int):
            factory.created = envelope["created"]
        await sink.send(dumps(factory.chunk({}, finish_reason=finish_reason)))
        record.mark_chunk()
        if usage is not None and include_usage(body):
            await sink.send(dumps(factory.usage_chunk(usage)))
            record.mark_chunk()
        await sink.done()

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

    async def _run_server_calls(
        self,
        tools: ToolUse,
        turn: Turn,
        last: bool,
        text: str | None,
        record: RequestRecord,
        sink: EventSink | None = None,
    ) -> list[dict[str, Any]] | None:
        """After a pass: runs the server's calls (not on the last pass) and returns the messages the next pass
        adds, or None when the answer ends with this pass (no server calls, or the caller's calls to hand over)."""
        server_calls, caller_calls = turn.server_calls(), turn.caller_calls()
        if not server_calls or last:
            return None
        ended = record.elapsed_ms()
        running = tools.registry.run_calls([call.as_tool_call() for call in server_calls], tools.tools)
        outcomes = await (running if sink is None else self._keep_alive(sink, running))
        exchange = exchange_messages(text, server_calls, outcomes)
        tools.on_exchange(exchange, outcomes)
        if caller_calls:
            return None  # a mixed turn: the server's part is remembered, the caller's calls end the answer
        record.pass_gaps_ms.append(round(record.elapsed_ms() - ended, 3))
        return exchange

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

    async def complete(
        self, body: dict[str, Any], api_key: str | None, record: RequestRecord, tools: ToolUse | None = None
    ) -> dict[str, Any]:
        """The upstream's completion, within `completion_timeout` (every attempt, and with tools every pass and
        every tool call, included)."""
        record.upstream_called_ms = record.elapsed_ms()
        timeout = self.policy.completion_timeout
        try:
            async with asyncio.timeout(timeout):
                if tools is not None:
                    return await self._complete_with_tools(body, api_key, record, tools)
                return await self._complete_once(body, api_key, record)
        except TimeoutError:
            raise ApiError(
                504, f"The upstream LLM did not answer within {timeout:g} s.", code="completion_timeout"
            ) from None

    async def _complete_once(self, body: dict[str, Any], api_key: str | None, record: RequestRecord) -> dict[str, Any]:
        budget = RetryBudget(self.policy.retries)
        while True:
            record.upstream_attempts += 1
            try:
                completion = await self.upstream.complete(body, api_key)
                break
            except UpstreamError as error:
                delay = budget.delay_before_retry(error)
            await asyncio.sleep(delay)
        if record.upstream_first_chunk_ms is None:
            record.upstream_first_chunk_ms = record.elapsed_ms()
        return completion

    async def _complete_with_tools(
        self, body: dict[str, Any], api_key: str | None, record: RequestRecord, tools: ToolUse
    ) -> dict[str, Any]:
        """The same final message as the stream: the text of every pass, the caller's calls, usage summed."""
        messages = list(body["messages"])
        texts: list[str] = []
        usage: dict[str, Any] | None = None
        while True:
            record.passes += 1
            last = record.passes >= tools.max_passes
            completion = await self._complete_once(tools.body_for_pass(body, messages, last), api_key, record)
            usage = add_usage(usage, completion.get("usage"))
            choices = completion.get("choices") or [{}]
            message = choices[0].get("message") if isinstance(choices[0].get("message"), dict) else {}
            if isinstance(message.get("content"), str) and message["content"]:
                text = "".join(texts)
                texts.append(pass_separator(text, message["content"]) + message["content"])
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls):
                raise UpstreamError(
                    502, "The upstream's message has tool calls that are not a list of objects.",
                    code="upstream_bad_response",
                )  # fmt: skip
            turn = tools.turn(body)
            turn.delta_for_caller({"tool_calls": [{**call, "index": i} for i, call in enumerate(calls)]})
            exchange = await self._run_server_calls(tools, turn, last, message.get("content"), record)
            if exchange is not None:
                messages += exchange
                continue
            final = {**message, "content": "".join(texts) or None}
            caller_calls = turn.caller_calls()
            if caller_calls:
                final["tool_calls"] = [call.as_message_part() for call in caller_calls]
            else:
                final.pop("tool_calls", None)
            finish_reason = turn.finish_reason_for_caller(choices[0].get("finish_reason"))
            result = {**completion, "choices": [{**choices[0], "message": final, "finish_reason": finish_reason}]}
            if usage is not None:
                result["usage"] = usage
            return result
