"""The completion service on its own: the server's real composition (build_services) and the fake upstream, called
without HTTP, a recording sink in place of the SSE writer and a request record as the trace."""

from __future__ import annotations

import json

import pytest

from fakes.upstream import ScriptedTurn
from llmserver.endpoints import AUDIO, CHAT, RAG
from llmserver.protocol.chat_request import parse_chat_request
from llmserver.turn.model import Caller
from tests.sinks import RecordingSink

QUESTION = {"role": "user", "content": "How do I connect this server to Agora?"}


def chat(**body):
    return parse_chat_request(json.dumps({"stream": True, "messages": [QUESTION], **body}).encode(), "gpt-4o-mini")


ANYONE = Caller()


async def answer(services, endpoint, request, caller=ANYONE):
    sink, record = RecordingSink(), services.request_log.begin("req_test", endpoint.name)
    completion = await services.completions.answer(request, endpoint, caller, sink, record)
    return sink, record, completion


@pytest.mark.gen_test
async def test_chat_relays_the_request_as_it_came(services, fake_upstream):
    sink, record, completion = await answer(services, CHAT, chat(user="u1"))
    assert completion is None and sink.events[-1] == "[DONE]" and sink.text == "word0 word1 word2 word3 word4 "
    assert fake_upstream.last.body["messages"] == [QUESTION]
    assert record.conversation == 'anon:user:["u1"]' and record.retrieval is None


@pytest.mark.gen_test
async def test_rag_says_its_waiting_message_then_retrieves_then_relays(services, fake_upstream):
    sink, record, _ = await answer(services, RAG, chat())
    assert sink.chunks[0]["id"] == "waiting_msg" and sink.events[-1] == "[DONE]"
    assert record.retrieval.hits[0].id == "connect-agora#1"
    sent = fake_upstream.last.body["messages"]
    assert sent[0]["role"] == "system" and "connect-agora#1" in sent[0]["content"] and sent[1] == QUESTION


@pytest.mark.gen_test
async def test_rag_without_streaming_has_no_waiting_message(services, fake_upstream):
    sink, record, completion = await answer(services, RAG, chat(stream=False))
    assert sink.events == [] and completion["object"] == "chat.completion"
    assert record.retrieval is not None and record.reply == "word0 word1 word2 word3 word4 "


@pytest.mark.settings(server_tools=("chat",))
@pytest.mark.gen_test
async def test_the_servers_tools_are_offered_where_the_settings_say(services, fake_upstream):
    await answer(services, CHAT, chat())
    assert "current_time" in {tool["function"]["name"] for tool in fake_upstream.last.body["tools"]}
    await answer(services, RAG, chat())
    assert "tools" not in fake_upstream.last.body
    await answer(services, CHAT, chat(tool_choice="none"))
    assert "tools" not in fake_upstream.last.body


@pytest.mark.settings(server_tools=("chat",))
@pytest.mark.gen_test
async def test_a_tool_exchange_is_remembered_and_spliced_into_the_next_turn(services, fake_upstream):
    fake_upstream.script = [ScriptedTurn("Checking.", [("current_time", {"timezone": "UTC"})]), ScriptedTurn("Nine.")]
    first = [{"role": "user", "content": "What time is it?"}]
    caller = Caller(credential="sk-a")
    _, record, _ = await answer(services, CHAT, chat(messages=first, user="u1"), caller)
    assert record.passes == 2 and record.tool_calls[0].name == "current_time"
    follow_up = [*first, {"role": "assistant", "content": "Checking. Nine."}, {"role": "user", "content": "Sure?"}]
    await answer(services, CHAT, chat(messages=follow_up, user="u1"), caller)
    assert [m["role"] for m in fake_upstream.last.body["messages"]] == ["user", "assistant", "tool", "assistant",
                                                                        "user"]  # fmt: skip


@pytest.mark.settings(audio_pace="burst")
@pytest.mark.gen_test
async def test_audio_plays_the_active_clip_without_the_upstream(services, fake_upstream):
    sink, record, _ = await answer(services, AUDIO, chat())
    assert not fake_upstream.requests and sink.events[-1] == "[DONE]"
    assert sink.chunks[0]["choices"][0]["delta"]["audio"]["transcript"] == record.reply
    assert record.audio.clip is not None and len(sink.chunks) > 10
