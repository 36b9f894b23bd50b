"""The relay on its own, without HTTP in front of it: the real OpenAI upstream client against the fake upstream,
a recording sink, and a request record as the trace."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fakes.upstream import ScriptedTurn
from llmserver.protocol.errors import ApiError
from llmserver.request_log import RequestLog
from llmserver.services import build_upstream, upstream_configs
from llmserver.tools.registry import Tool, ToolRegistry
from llmserver.upstream.relay import Relay, RelayPolicy
from llmserver.upstream.routing import Router
from llmserver.upstream.tool_loop import ToolUse
from tests.client import eventually
from tests.sinks import RecordingSink

USER = {"role": "user", "content": "What time is it?"}


class ClockTools:
    """A tool source with one tool, as the registry's sources are."""

    name = "test"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def current_time(self, arguments: dict[str, Any]) -> str:
        self.calls.append(arguments)
        return json.dumps({"spoken": "nine o'clock"})

    def tools(self) -> list[Tool]:
        return [Tool("current_time", "The time.", {"type": "object"}, "test", self.current_time)]

    def state(self) -> dict[str, Any]:
        return {"source": "test", "reachable": True, "tools": 1}

    async def reload(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


@pytest.fixture
def relay(io_loop, settings):
    """Makes a relay with a policy of the test's, over the real upstream client (closed afterwards)."""
    upstream = build_upstream(upstream_configs(settings)[0], settings)

    def make(retries: int = 0, **policy) -> Relay:
        return Relay(Router.single(upstream, retries=retries), RelayPolicy(**policy))

    yield make
    io_loop.run_sync(upstream.aclose)


@pytest.fixture
def record():
    return RequestLog().begin("req_test", "chat")


def tool_use(source: ClockTools, passes: int = 5) -> ToolUse:
    registry = ToolRegistry([source])
    return ToolUse(registry.offered([]), registry, passes)


@pytest.mark.gen_test
async def test_a_stream_is_relayed_byte_for_byte_and_reported(relay, fake_upstream, record):
    sink = RecordingSink()
    await relay().stream({"model": "m", "stream": True, "messages": [USER]}, None, sink, record)
    assert sink.events[-1] == "[DONE]" and sink.text == "word0 word1 word2 word3 word4 "
    assert all(raw is not None for raw in sink.raw)  # none re-serialised
    assert record.upstream_attempts == 1 and record.upstream_called_ms is not None
    assert record.upstream_first_chunk_ms is not None and record.reply == sink.text
    assert record.passes == 0  # no tool loop


@pytest.mark.gen_test
async def test_a_dropped_kept_alive_connection_is_retried_at_once(relay, fake_upstream, record):
    fake_upstream.behaviour.drop_connections = 1
    sink = RecordingSink()
    await relay().stream({"model": "m", "stream": True, "messages": [USER]}, None, sink, record)
    assert sink.events[-1] == "[DONE]" and record.upstream_attempts == 2


@pytest.mark.gen_test
async def test_no_first_token_within_the_deadline_is_a_504(relay, fake_upstream, record):
    fake_upstream.behaviour.hang = True
    with pytest.raises(ApiError) as raised:
        await relay(first_token_timeout=0.2).stream({"model": "m", "stream": True, "messages": [USER]}, None,
                                                    RecordingSink(), record)  # fmt: skip
    assert raised.value.status == 504 and raised.value.code == "first_token_timeout"


@pytest.mark.gen_test
async def test_a_started_answer_waiting_for_the_model_gets_keep_alive_comments(relay, fake_upstream, record):
    fake_upstream.behaviour.first_chunk_delay = 0.5
    sink = RecordingSink(started=True)
    await relay(keepalive_seconds=0.1).stream({"model": "m", "stream": True, "messages": [USER]}, None, sink, record)
    first_chunk = next(i for i, event in enumerate(sink.events) if isinstance(event, dict))
    assert sink.events[:first_chunk].count(("comment", "keep-alive")) >= 2


@pytest.mark.gen_test
async def test_the_tool_loop_runs_the_servers_call_between_two_passes(relay, fake_upstream, record):
    fake_upstream.script = [ScriptedTurn("Let me check.", [("current_time", {})]), ScriptedTurn("It is nine.")]
    source, sink = ClockTools(), RecordingSink()
    body = {"model": "m", "stream": True, "messages": [USER], "stream_options": {"include_usage": True}}
    await relay().stream(body, None, sink, record, tool_use(source))
    assert source.calls == [{}]
    assert sink.text == "Let me check. It is nine."  # the passes kept apart as sentences
    finishes = [c["choices"][0]["finish_reason"] for c in sink.chunks if c["choices"]]
    assert [f for f in finishes if f] == ["stop"] and sink.events[-1] == "[DONE]"
    assert len({c["id"] for c in sink.chunks}) == 1 and sink.chunks[-1]["usage"]["prompt_tokens"] == 6
    assert record.passes == 2 and len(record.pass_gaps_ms) == 1
    assert [(call.name, call.outcome, call.pass_number) for call in record.tool_calls] == [("current_time", "ok", 1)]
    second = fake_upstream.requests[1].body["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "tool"]


@pytest.mark.gen_test
async def test_stream_false_with_tools_is_the_streamed_loop_collected(relay, fake_upstream, record):
    fake_upstream.script = [ScriptedTurn("Let me check.", [("current_time", {})]), ScriptedTurn("It is nine.")]
    completion = await relay().complete({"model": "m", "messages": [USER]}, None, record, tool_use(ClockTools()))
    message = completion["choices"][0]["message"]
    assert completion["object"] == "chat.completion" and completion["choices"][0]["finish_reason"] == "stop"
    assert message == {"role": "assistant", "content": "Let me check. It is nine.", "refusal": None}
    assert completion["usage"]["prompt_tokens"] == 6
    assert [r.body["stream"] for r in fake_upstream.requests] == [True, True]
    assert record.reply == "Let me check. It is nine."


@pytest.mark.gen_test
async def test_the_callers_own_calls_end_the_collected_answer(relay, fake_upstream, record):
    fake_upstream.script = [ScriptedTurn("Transferring.", [("transfer_call", {"to": "desk"})])]
    caller_tool = {"type": "function", "function": {"name": "transfer_call", "parameters": {"type": "object"}}}
    body = {"model": "m", "messages": [USER], "tools": [caller_tool]}
    completion = await relay().complete(body, None, record, tool_use(ClockTools()))
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "transfer_call", "arguments": '{"to": "desk"}'}


@pytest.mark.gen_test
async def test_the_last_pass_is_offered_no_server_tools(relay, fake_upstream, record):
    fake_upstream.script = [ScriptedTurn(f"Step {n}.", [("current_time", {})]) for n in (1, 2, 3)]
    sink = RecordingSink()
    await relay().stream({"model": "m", "stream": True, "messages": [USER]}, None, sink, record,
                         tool_use(ClockTools(), passes=2))  # fmt: skip
    assert record.passes == 2
    assert "tools" in fake_upstream.requests[0].body and "tools" not in fake_upstream.requests[1].body
    assert [c["choices"][0]["finish_reason"] for c in sink.chunks if c["choices"]][-1] == "stop"


@pytest.mark.gen_test
async def test_cancelling_the_relay_closes_the_upstream_request(relay, fake_upstream, record):
    fake_upstream.behaviour.hang = True
    task = asyncio.ensure_future(relay().stream({"model": "m", "stream": True, "messages": [USER]}, None,
                                                RecordingSink(), record))  # fmt: skip
    await eventually(lambda: fake_upstream.requests, what="the upstream got the request")
    task.cancel()
    await asyncio.wait_for(fake_upstream.last.closed.wait(), 5)
    assert task.cancelled() or isinstance(task.exception(), asyncio.CancelledError)


@pytest.mark.gen_test
async def test_a_stream_opened_in_the_moment_the_caller_leaves_is_closed_not_lost(relay):
    # Found in review: the first chunk and the caller's leaving in one event-loop turn left the stream open (and its
    # upstream's place under max_streams taken) for good.
    closed = []

    class Opened:
        async def aclose(self) -> None:
            closed.append(True)

    opening = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(relay(keepalive_seconds=10)._keep_alive(RecordingSink(started=True), opening,
                                                                            discard=Opened.aclose))  # fmt: skip
    await asyncio.sleep(0)
    opening.set_result(Opened())
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert closed == [True]


@pytest.mark.gen_test
async def test_what_the_model_said_before_calling_a_tool_is_heard_before_the_tool_runs(relay, fake_upstream, record):
    # Found in review: the speakable transform held the closing "!" (it may start an image, "![") until after the
    # tool's result, so the caller heard "let me check that for you" only once the tool was done.
    from llmserver.turn.speech import SpokenAnswer

    fake_upstream.script = [ScriptedTurn("Sure, let me check that for you!", [("current_time", {})]),
                            ScriptedTurn("It is nine.")]  # fmt: skip
    sink = RecordingSink()
    await relay().stream({"model": "m", "stream": True, "messages": [USER]}, None,
                         SpokenAnswer(sink, record, speakable=True), record, tool_use(ClockTools()))  # fmt: skip
    pause = sink.events.index("pause")
    said = "".join(c["choices"][0]["delta"].get("content") or "" for c in sink.events[:pause] if isinstance(c, dict))
    assert said == "Sure, let me check that for you!" and sink.text == "Sure, let me check that for you! It is nine."
