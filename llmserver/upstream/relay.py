"""The relay: one completion from the upstream to the client, with the deadlines and keep-alives that make it safe
for voice, and the tool loop's passes.

- Which upstream answers, and the retries, fallback and hedging before its first chunk, are the router's
  (routing.py): a failure before the first chunk is safe to send again, since nothing of the answer has reached the
  client (the RAG endpoint's waiting message is the server's own).
- Deadlines: a stream must bring its first chunk within `first_token_timeout` (every attempt included); a
  non-streaming completion must be complete within `completion_timeout`.
- While a started response waits for the model, SSE comments keep the connection alive.
- With the server's tools, one loop runs the passes (tool_loop.py): streamed to the caller as they come, or, for
  `stream: false`, streamed from the upstream and collected into one completion (CompletionCollector), so both
  answers are the same answer.

What happens is reported to a RelayTrace (trace.py); what reaches the caller goes to a ChunkSink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..protocol.chat_request import include_usage
from ..protocol.chunks import ChunkFactory
from ..protocol.errors import ApiError
from .collector import CompletionCollector
from .protocol import UpstreamChunk, UpstreamError
from .routing import Opened, Router
from .tool_loop import PassCalls, ToolUse, add_usage, exchange_messages, pass_separator
from .trace import RelayTrace

T = TypeVar("T")


class ChunkSink(Protocol):
    """Where an answer's chunks go: the SSE writer of the caller's response, or a collector."""

    started: bool  # something has reached the caller (keep-alive comments are then allowed)
    may_start: bool  # something may reach the caller while the relay waits (a late waiting message)

    async def send_chunk(self, data: dict[str, Any], raw: bytes | None = None) -> None:
        """One chunk; `raw`, when given, is its JSON as the upstream wrote it (relayed as it is)."""

    async def send_comment(self, text: str) -> None: ...

    async def pause(self) -> None:
        """The answer pauses (its server tools run): what is ready should reach the caller now."""

    async def done(self) -> None: ...


@dataclass(frozen=True)
class RelayPolicy:
    first_token_timeout: float = 30.0
    completion_timeout: float = 120.0
    keepalive_seconds: float = 5.0


def content_of(data: dict[str, Any]) -> str | None:
    """The text a chunk carries, if any."""
    choices = data.get("choices")
    if choices:
        delta = choices[0].get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str):
                return content
    return None


class Relay:
    def __init__(self, router: Router, policy: RelayPolicy) -> None:
        self.router = router
        self.policy = policy

    async def stream(
        self,
        body: dict[str, Any],
        api_key: str | None,
        sink: ChunkSink,
        trace: RelayTrace,
        tools: ToolUse | None = None,
    ) -> None:
        """Streams the upstream's chunks to `sink` as they come, then [DONE]; with `tools`, the tool loop. The usage
        is always asked of the upstream (the record keeps it: prompt tokens, cached ones); its chunk reaches a caller
        who asked for it."""
        trace.upstream_called()
        if tools is not None:
            await self._passes(body, api_key, sink, trace, tools)
            return
        wanted = include_usage(body)
        opened = await self._open(body if wanted else with_usage(body), api_key, sink, trace)
        try:
            chunk = opened.first
            while chunk is not None:
                data = chunk.data
                if "usage" in data and not data.get("choices"):
                    trace.used(data["usage"])
                    if not wanted:
                        chunk = await anext(opened.chunks, None)
                        continue
                await sink.send_chunk(data, chunk.raw)
                _say(trace, data)
                chunk = await anext(opened.chunks, None)
            await sink.done()
        except UpstreamError as error:
            opened.broke(error)
            raise
        finally:
            await opened.aclose()

    async def complete(
        self, body: dict[str, Any], api_key: str | None, trace: RelayTrace, tools: ToolUse | None = None
    ) -> dict[str, Any]:
        """The upstream's completion, within `completion_timeout` (every attempt, and with tools every pass and
        every tool call, included). With tools, the streamed loop's answer, collected."""
        trace.upstream_called()
        timeout = self.policy.completion_timeout
        try:
            async with asyncio.timeout(timeout):
                if tools is None:
                    return await self._complete_once(body, api_key, trace)
                collector = CompletionCollector()
                streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
                await self._passes(streamed, api_key, collector, trace, tools)
                return collector.completion()
        except TimeoutError:
            raise ApiError(
                504, f"The upstream LLM did not answer within {timeout:g} s.", code="completion_timeout"
            ) from None

    # One upstream request ---------------------------------------------------------------------------------------

    async def _open(self, body: dict[str, Any], api_key: str | None, sink: ChunkSink, trace: RelayTrace) -> Opened:
        """The stream and its first chunk, from whichever upstream the router gets it (every attempt within the
        first-token deadline); keep-alive comments meanwhile once the response has begun."""
        timeout = self.policy.first_token_timeout
        deadline_at = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline_at):
                opening = self.router.open_stream(body, api_key, trace, deadline_at)
                return await self._keep_alive(sink, opening, discard=Opened.aclose)
        except TimeoutError:
            raise ApiError(
                504, f"The upstream LLM sent no token within {timeout:g} s.", code="first_token_timeout"
            ) from None

    async def _complete_once(self, body: dict[str, Any], api_key: str | None, trace: RelayTrace) -> dict[str, Any]:
        completion = await self.router.complete(body, api_key, trace)
        trace.used(completion.get("usage"))
        message = (completion.get("choices") or [{}])[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            trace.said(message["content"])
        return completion

    async def _keep_alive(
        self, sink: ChunkSink, waiting: Awaitable[T], discard: Callable[[T], Awaitable[None]] | None = None
    ) -> T:
        """Awaits `waiting`; once the response has begun (the RAG waiting message), sends an SSE comment every
        `keepalive_seconds` meanwhile: clients such as LiveKit's give up after 10 s of silence. `discard` closes a
        result that arrived in the very moment the caller left (or a deadline struck), which nobody else will."""
        interval = self.policy.keepalive_seconds
        if not interval or not (sink.started or sink.may_start):
            return await waiting
        task = asyncio.ensure_future(waiting)
        returned = False
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=interval)
                if done:
                    returned = True
                    return task.result()
                if sink.started:  # (a late waiting message may have begun the response meanwhile)
                    await sink.send_comment("keep-alive")
        finally:
            if not task.done():
                # The client left or a deadline struck: stop the upstream call too, and let the generator finish
                # closing before anyone else touches it.
                task.cancel()
                await asyncio.wait({task})
            # (task.exception() retrieves a failure met while leaving, so that it is never logged as lost)
            if not returned and not task.cancelled() and task.exception() is None and discard is not None:
                await discard(task.result())

    # The tool loop ---------------------------------------------------------------------------------------------

    async def _passes(
        self, body: dict[str, Any], api_key: str | None, sink: ChunkSink, trace: RelayTrace, tools: ToolUse
    ) -> None:
        """The passes of one answer: each pass's text and the caller's tool calls relayed as they stream, the
        server's calls run between passes, then one finish chunk, the usage summed, and [DONE]."""
        messages = list(body["messages"])
        answer = _Answer()
        asked = body  # what the caller asked for (its usage chunk, or none)
        body = with_usage(body)
        while True:
            number = trace.pass_began()
            last = number >= tools.max_passes
            opened = await self._open(tools.body_for_pass(body, messages, last), api_key, sink, trace)
            calls = tools.pass_calls(body)
            try:
                chunk = opened.first
                while chunk is not None:
                    await answer.relay(chunk, calls, number, sink, trace)
                    chunk = await anext(opened.chunks, None)
            except UpstreamError as error:
                opened.broke(error)
                raise
            finally:
                await opened.aclose()
            exchange = await self._run_server_calls(tools, calls, last, sink, trace, number, answer)
            if exchange is None:
                break
            messages += exchange
        await answer.finish(asked, calls, sink, trace)

    async def _run_server_calls(
        self,
        tools: ToolUse,
        calls: PassCalls,
        last: bool,
        sink: ChunkSink,
        trace: RelayTrace,
        number: int,
        answer: _Answer,
    ) -> list[dict[str, Any]] | None:
        """After a pass: runs the server's calls (not on the last pass) and returns the messages the next pass
        adds, or None when the answer ends with this pass (no server calls, or the caller's calls to hand over).
        A tool's filler is said first when the model said nothing before calling it."""
        server_calls, caller_calls = calls.server_calls(), calls.caller_calls()
        if not server_calls or last:
            return None
        filler = None if calls.joined_text.strip() else tools.filler(server_calls)
        if filler:
            await answer.say(filler, number, sink, trace)
        await sink.pause()  # what the model said before calling is heard while the tools run
        ended = asyncio.get_running_loop().time()
        running = tools.registry.run_calls([call.as_tool_call() for call in server_calls], tools.tools)
        outcomes = await self._keep_alive(sink, running)
        for outcome in outcomes:
            trace.tool_ran(outcome, number)
        exchange = exchange_messages(calls.joined_text, server_calls, outcomes)
        tools.on_exchange(exchange, outcomes)
        if caller_calls:
            return None  # a mixed turn: the server's part is remembered, the caller's calls end the answer
        trace.pass_gap((asyncio.get_running_loop().time() - ended) * 1000)
        return exchange


def with_usage(body: dict[str, Any]) -> dict[str, Any]:
    """`body` asking the upstream for the usage chunk (the caller's other stream options kept)."""
    if include_usage(body):
        return body
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    return {**body, "stream_options": {**options, "include_usage": True}}


def _say(trace: RelayTrace, data: dict[str, Any]) -> None:
    content = content_of(data)
    if content:
        trace.said(content)


class _Answer:
    """What the caller has had of an answer across its passes: one id, created and model (the first pass's), one
    role, the texts kept apart as sentences, the usage summed."""

    def __init__(self) -> None:
        self.envelope: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.role_sent = False
        self.said = ""  # the end of the text the caller has had
        self.spoke_in: int = 0  # the last pass that said something

    async def relay(
        self, chunk: UpstreamChunk, calls: PassCalls, number: int, sink: ChunkSink, trace: RelayTrace
    ) -> None:
        data = chunk.data
        if self.envelope is None:
            self.envelope = {"id": data.get("id"), "created": data.get("created"), "model": data.get("model")}
        choices = data.get("choices")
        if not choices:
            self.usage = add_usage(self.usage, data.get("usage"))  # the usage chunk: summed, sent at the end
            return
        choice = choices[0]
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        if choice.get("finish_reason"):
            calls.finish_reason = choice["finish_reason"]
        shown = calls.delta_for_caller(delta)
        content = shown.get("content")
        if isinstance(content, str) and content:
            if self.spoke_in != number and number > 1:
                separator = pass_separator(self.said, content)
                if separator:
                    shown = {**shown, "content": separator + content}
            self.spoke_in = number
            self.said = shown["content"][-1:]
            trace.said(shown["content"])
        if self.role_sent and "role" in shown:
            shown = {key: value for key, value in shown.items() if key != "role"}
        self.role_sent = self.role_sent or "role" in shown
        if number == 1 and shown is delta and not choice.get("finish_reason"):
            await sink.send_chunk(data, chunk.raw)  # as the upstream sent it
        elif shown:
            rewritten = {**data, **self.envelope, "choices": [{**choice, "delta": shown, "finish_reason": None}]}
            rewritten.pop("usage", None)
            await sink.send_chunk(rewritten)

    async def say(self, text: str, number: int, sink: ChunkSink, trace: RelayTrace) -> None:
        """The server's own words in the answer (a tool's filler), as a chunk of it."""
        separator = pass_separator(self.said, text) if self.spoke_in and self.spoke_in != number else ""
        delta: dict[str, Any] = {"content": separator + text}
        if not self.role_sent:
            delta = {"role": "assistant", **delta}
            self.role_sent = True
        envelope = self.envelope or {"id": None, "created": None, "model": None}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        self.spoke_in, self.said = number, text[-1:]
        trace.said(delta["content"])
        await sink.send_chunk({"object": "chat.completion.chunk", **envelope, "choices": [choice]})

    async def finish(self, body: dict[str, Any], calls: PassCalls, sink: ChunkSink, trace: RelayTrace) -> None:
        trace.used(self.usage)
        envelope = self.envelope
        factory = ChunkFactory(
            str(envelope["model"] if envelope else body.get("model", "")), str(envelope["id"] if envelope else "")
        )
        if envelope and isinstance(envelope["created"], int):
            factory.created = envelope["created"]
        await sink.send_chunk(factory.chunk({}, finish_reason=calls.finish_reason_for_caller(calls.finish_reason)))
        if self.usage is not None and include_usage(body):
            await sink.send_chunk(factory.usage_chunk(self.usage))
        await sink.done()
