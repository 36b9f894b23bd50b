"""Voice-shaped turns through the server's HTTP, against the strict fake upstream (it refuses what OpenAI refuses):
histories after a barge-in, interrupted assistant turns, and the voice platforms' own fields and conversations."""

from __future__ import annotations

import pytest

from fakes.client_shapes import agora_engine, elevenlabs, vapi
from fakes.upstream import ScriptedTurn
from llmserver.turn.history import CUT_OFF
from tests.client import json_of, post, stream

ENDPOINTS = ("/chat/completions", "/rag/chat/completions")
CALL = {"id": "call_9", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order": "A-17"}'}}


def barged_into_a_tool_call() -> dict:
    """The engine's request after the caller spoke while a tool ran: the call is in the history, its result not."""
    body = agora_engine("Never mind, what are your opening hours?")
    body["messages"][-1:-1] = [
        {"role": "user", "content": "Where is my order A-17?", "turn_id": 2},
        {"role": "assistant", "content": "", "tool_calls": [CALL], "turn_id": 2},
    ]
    return body


def interrupted_before_a_word() -> dict:
    body = agora_engine("Hello?")
    body["messages"][-1:-1] = [
        {"role": "user", "content": "Can you hear me?", "turn_id": 2},
        {"role": "assistant", "content": "", "turn_id": 2, "metadata": {"interrupted": True, "original": "Yes"}},
    ]
    return body


def last_record(services) -> dict:
    return services.request_log.recent()[-1]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("shape", [barged_into_a_tool_call, interrupted_before_a_word])
@pytest.mark.gen_test
async def test_a_history_left_by_a_barge_in_is_one_the_upstream_accepts(
    http_server, base_url, fake_upstream, services, endpoint, shape
):
    result = await stream(base_url, endpoint, shape())
    assert result.events[-1] == "[DONE]" and not fake_upstream.refusals, fake_upstream.refusals
    assert "word0" in result.text
    assert last_record(services)["history_repairs"]


@pytest.mark.gen_test
async def test_an_interrupted_turn_goes_upstream_as_it_was_spoken_marked_cut_off(
    http_server, base_url, fake_upstream, services
):
    await stream(base_url, "/chat/completions", agora_engine())
    said = [m["content"] for m in fake_upstream.last.body["messages"] if m["role"] == "assistant"]
    assert said[-1] == "I can answer questions about" + CUT_OFF
    assert "its knowledge base" not in str(fake_upstream.last.body)  # the unspoken rest never goes upstream
    assert last_record(services)["history_repairs"] == {"interrupted_marked": 1}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "shape, platform, kept",
    [(vapi, "vapi", {"call", "customer", "phoneNumber", "metadata"}),
     (elevenlabs, "elevenlabs", {"elevenlabs_extra_body", "user_id"})],
)  # fmt: skip
@pytest.mark.gen_test
async def test_a_platforms_own_fields_stay_out_of_the_upstream_and_in_the_record(
    http_server, base_url, fake_upstream, services, endpoint, shape, platform, kept
):
    result = await stream(base_url, endpoint, shape())
    assert result.events[-1] == "[DONE]" and not fake_upstream.refusals, fake_upstream.refusals
    assert not kept & set(fake_upstream.last.body)
    record = last_record(services)
    assert record["platform"] == platform and set(record["engine_fields"]) == kept


@pytest.mark.settings(server_tools=("chat",))
@pytest.mark.parametrize(
    "shape, key",
    [(vapi, 'anon:vapi:["b0f8a8e3-6c6d-4a61-9d3e-3e7f1c2a9b10"]'), (elevenlabs, 'anon:elevenlabs:["conv_01jx9"]')],
)
@pytest.mark.gen_test
async def test_a_platforms_call_is_the_conversation_its_tool_exchanges_are_remembered_in(
    http_server, base_url, fake_upstream, services, shape, key
):
    fake_upstream.script = [
        ScriptedTurn("Let me check.", [("current_time", {"timezone": "UTC"})]),
        ScriptedTurn("Nine."),
    ]
    first = shape("What time is it?")
    await stream(base_url, "/chat/completions", first)
    assert last_record(services)["conversation"] == key
    following = shape("And in Tokyo?")
    following["messages"][-1:-1] = [first["messages"][-1], {"role": "assistant", "content": "Let me check. Nine."}]
    await stream(base_url, "/chat/completions", following)
    sent = fake_upstream.last.body["messages"]
    assert [m["role"] for m in sent].count("tool") == 1 and not fake_upstream.refusals  # the call, remembered


@pytest.mark.gen_test
async def test_a_platform_that_adds_no_fields_is_named_by_a_header(http_server, base_url, fake_upstream, services):
    body = {"stream": True, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    headers = {"X-Voice-Platform": "Deepgram", "X-Conversation-Id": "dg-call-1"}
    await stream(base_url, "/chat/completions", body, headers)
    record = last_record(services)
    assert record["platform"] == "deepgram" and record["conversation"] == 'anon:header:["dg-call-1"]'


MARKDOWN = (
    "## Opening hours\n**Monday** to *Friday*, see [our page](https://example.com/hours) or mail desk@example.com."
)
SPOKEN = "Opening hours\nMonday to Friday, see our page or mail desk at example dot com."


def markdown_answer() -> ScriptedTurn:
    """The model's markdown, streamed in three-character pieces."""
    return ScriptedTurn(raw_deltas=[{"content": MARKDOWN[i : i + 3]} for i in range(0, len(MARKDOWN), 3)])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test
async def test_a_voice_platform_hears_the_markdown_as_words(http_server, base_url, fake_upstream, services, endpoint):
    fake_upstream.script = [markdown_answer()]
    result = await stream(base_url, endpoint, agora_engine("When are you open?"))
    assert result.text.endswith(SPOKEN) and result.events[-1] == "[DONE]"
    record = last_record(services)
    assert record["speakable"] is True and record["first_sentence_ms"] >= record["upstream_first_chunk_ms"]
    assert record["reply"] == MARKDOWN  # the record keeps what the model wrote


@pytest.mark.gen_test
async def test_a_plain_openai_client_gets_the_upstreams_bytes(http_server, base_url, fake_upstream, services):
    fake_upstream.script = [markdown_answer()]
    result = await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "Open when?"}]})
    assert result.text == MARKDOWN and last_record(services)["speakable"] is False


@pytest.mark.settings(speakable="off")
@pytest.mark.gen_test
async def test_speakable_off_leaves_even_a_voice_platforms_text_alone(http_server, base_url, fake_upstream):
    fake_upstream.script = [markdown_answer()]
    result = await stream(base_url, "/chat/completions", vapi("When are you open?"))
    assert result.text == MARKDOWN


@pytest.mark.settings(speakable="on")
@pytest.mark.gen_test
async def test_speakable_on_makes_every_answer_speakable_streamed_or_not(http_server, base_url, fake_upstream):
    fake_upstream.script = [markdown_answer()]
    ask = {"messages": [{"role": "user", "content": "Open when?"}]}
    assert (await stream(base_url, "/chat/completions", ask)).text == SPOKEN
    fake_upstream.script = [ScriptedTurn(raw_message={"role": "assistant", "content": MARKDOWN})]
    completion = json_of(await post(base_url, "/v1/chat/completions", {**ask, "stream": False}))
    assert completion["choices"][0]["message"]["content"] == SPOKEN


@pytest.mark.gen_test
async def test_a_chinese_caller_hears_a_chinese_waiting_message(http_server, base_url, fake_upstream):
    result = await stream(base_url, "/rag/chat/completions", agora_engine("怎么连接声网的对话式AI引擎？"))
    waiting = result.chunks[0]["choices"][0]["delta"]["content"]
    assert any("\u4e00" <= character <= "\u9fff" for character in waiting), waiting
    english = await stream(base_url, "/rag/chat/completions", agora_engine("How do I connect Agora?"))
    assert english.chunks[0]["choices"][0]["delta"]["content"].isascii()


@pytest.mark.settings(rag_waiting_message="late", rag_waiting_delay_ms=300)
@pytest.mark.gen_test
async def test_a_late_waiting_message_is_said_only_when_the_answer_is_late(http_server, base_url, fake_upstream):
    quick = await stream(base_url, "/rag/chat/completions", agora_engine("How do I connect Agora?"))
    assert quick.chunks[0]["id"] != "waiting_msg" and "word0" in quick.text  # the answer came first: no message
    fake_upstream.behaviour.first_chunk_delay = 1.0
    late = await stream(base_url, "/rag/chat/completions", agora_engine("How do I connect Agora?"))
    assert late.chunks[0]["id"] == "waiting_msg" and late.text.endswith("word4 ")


@pytest.mark.gen_test
async def test_a_history_no_repair_can_save_gets_the_upstreams_refusal_not_a_500(
    http_server, base_url, fake_upstream, services
):
    lonely = {"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"}]}
    result = await post(base_url, "/chat/completions", lonely)
    assert result.code == 400 and "must be a response to a preceeding message" in json_of(result)["error"]["message"]
    assert last_record(services)["status"] == 400


@pytest.mark.settings(rag_waiting_message="late", rag_waiting_delay_ms=100, keepalive_seconds=0.2)
@pytest.mark.gen_test
async def test_after_a_late_waiting_message_the_silence_is_kept_alive(http_server, base_url, fake_upstream):
    # Found in review: the keep-alive comments looked at the response once, before the late message began it.
    fake_upstream.behaviour.first_chunk_delay = 1.0
    result = await stream(base_url, "/rag/chat/completions", agora_engine("How do I connect Agora?"))
    waiting = result.raw.index(b"waiting_msg")
    assert result.raw.count(b": keep-alive", waiting) >= 2 and result.text.endswith("word4 ")


@pytest.mark.gen_test
async def test_a_plain_client_with_a_timestamp_or_message_metadata_is_not_taken_for_a_voice_platform(
    http_server, base_url, fake_upstream, services
):
    # Found in review: a `timestamp`, or a message's `metadata`, alone made a request Agora's (its markdown rewritten).
    fake_upstream.strict = False
    fake_upstream.script = [markdown_answer()]
    body = {"timestamp": 1, "messages": [{"role": "user", "content": "Open when?", "metadata": {"id": 7}}]}
    result = await stream(base_url, "/chat/completions", body)
    assert result.text == MARKDOWN and last_record(services)["platform"] is None


@pytest.mark.gen_test
async def test_the_fields_of_two_platforms_in_one_request_all_stay_home(http_server, base_url, fake_upstream, services):
    body = vapi("Hello?")
    body.update({"elevenlabs_extra_body": {"conversation_id": "c1"}, "user_id": "u1"})
    result = await stream(base_url, "/chat/completions", body)
    assert result.events[-1] == "[DONE]" and not fake_upstream.refusals, fake_upstream.refusals
    assert set(last_record(services)["engine_fields"]) >= {"call", "elevenlabs_extra_body", "user_id"}
