"""POST /rag/chat/completions: waiting message first, retrieval, context injection, offline answers."""

from __future__ import annotations

import asyncio
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from fakes.upstream import ScriptedTurn
from llmserver.knowledge.context import WAITING_MESSAGE_ID
from llmserver.settings import DEFAULT_WAITING_MESSAGES
from tests.client import RawClient, eventually, json_of, post, stream

QUESTION = {"role": "user", "content": "How do I connect this server to Agora?"}
SYSTEM = {"role": "system", "content": "You are a voice assistant."}


@pytest.mark.gen_test
async def test_waiting_message_comes_first_then_the_upstream_stream(http_server, base_url, fake_upstream):
    result = await stream(base_url, "/rag/chat/completions", {"model": "m", "messages": [SYSTEM, QUESTION]})
    assert result.response.code == 200
    waiting, *rest = result.chunks
    assert waiting["id"] == WAITING_MESSAGE_ID and waiting["object"] == "chat.completion.chunk"
    assert waiting["model"] == "m" and isinstance(waiting["created"], int)
    choice = waiting["choices"][0]
    assert choice["delta"]["role"] == "assistant" and choice["delta"]["content"].rstrip() in DEFAULT_WAITING_MESSAGES
    # It ends in a space, so that clients joining the text do not run it into the answer ("...find out...From").
    assert choice["delta"]["content"].endswith(" ")
    assert choice["finish_reason"] is None and choice["logprobs"] is None and choice["index"] == 0
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in rest).startswith("word0")
    assert result.events[-1] == "[DONE]"


@pytest.mark.gen_test
async def test_waiting_message_leaves_before_the_upstream_is_called(http_server, base_url, fake_upstream, services):
    fake_upstream.behaviour.hang_before_headers = True  # a slow upstream: it never answers
    client = RawClient(base_url)
    await client.send("/rag/chat/completions", {"messages": [QUESTION], "stream": True})
    received = await asyncio.wait_for(client.read_until(b"\n\n"), 10)
    assert WAITING_MESSAGE_ID.encode() in received  # while the upstream has not answered at all
    await eventually(lambda: fake_upstream.requests, what="the upstream got the request")
    client.close()
    await eventually(lambda: services.request_log.in_flight == 0, what="every request finished")
    record = services.request_log.recent()[-1]
    # The server's own clock: the waiting message was written before the upstream call began.
    assert record["first_chunk_ms"] < record["upstream_called_ms"]
    assert record["upstream_first_chunk_ms"] is None and record["outcome"] == "cancelled"


@pytest.mark.settings(upstream_retries=2)
@pytest.mark.gen_test
async def test_failures_before_the_first_upstream_chunk_are_retried_after_the_waiting_message(
    http_server, base_url, fake_upstream
):
    fake_upstream.behaviour.status = 503
    result = await stream(base_url, "/rag/chat/completions", {"messages": [QUESTION]})
    assert len(fake_upstream.requests) == 3  # the waiting message is ours: the upstream's answer had not begun
    waiting, error, done = result.events
    assert waiting["id"] == WAITING_MESSAGE_ID and error["error"]["code"] == "upstream_error" and done == "[DONE]"


@pytest.mark.settings(upstream_retries=2, rag_waiting_message="off")
@pytest.mark.gen_test
async def test_without_a_waiting_message_failures_are_retried_before_the_first_byte(
    http_server, base_url, fake_upstream
):
    fake_upstream.behaviour.status = 503
    response = await post(base_url, "/rag/chat/completions", {"messages": [QUESTION], "stream": True})
    assert response.code == 502 and len(fake_upstream.requests) == 3


@pytest.mark.gen_test
async def test_the_prompt_before_the_users_last_turn_is_the_same_from_turn_to_turn_and_cached(
    http_server, base_url, fake_upstream, services
):
    # A long conversation: the system message and the history are what upstreams cache (1,024 tokens and more).
    history = [SYSTEM]
    for number in range(12):
        history += [
            {"role": "user", "content": f"Question {number} about the opening hours of the museum and its cafe?"},
            {"role": "assistant", "content": f"Answer {number}: " + "the museum opens at nine, the cafe at ten. " * 8},
        ]
    first = [*history, QUESTION]
    await stream(base_url, "/rag/chat/completions", {"stream_options": {"include_usage": True}, "messages": first})
    following = [*first, {"role": "assistant", "content": "Set it as the LLM URL."},
                 {"role": "user", "content": "How do I upload a knowledge document?"}]  # fmt: skip
    result = await stream(base_url, "/rag/chat/completions", {"messages": following})
    cached = services.request_log.recent()[-1]["cached_tokens"]
    assert cached >= 1024  # the passages used to come first, after the system message: nothing but it was shared
    assert not [chunk for chunk in result.chunks if "usage" in chunk]  # asked of the upstream, not sent on
    metrics = (await AsyncHTTPClient().fetch(base_url + "/metrics")).body.decode()
    assert f'llm_tokens_total{{endpoint="rag",kind="cached"}} {float(cached)}' in metrics


@pytest.mark.gen_test
async def test_retrieved_passages_go_upstream_just_before_the_users_last_turn(http_server, base_url, fake_upstream):
    developer = {"role": "developer", "content": "Answer in one sentence."}
    history = [
        SYSTEM,
        developer,
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        QUESTION,
    ]
    await stream(base_url, "/rag/chat/completions", {"messages": history})
    sent = fake_upstream.last.body["messages"]
    assert sent[:4] == history[:4] and sent[5:] == history[4:]  # all before it as it came: the cached prefix
    context = sent[4]
    assert context["role"] == "system"
    assert "Connecting Agora's Conversational AI engine" in context["content"]
    assert "say that you do not know" in context["content"]


@pytest.mark.gen_test
async def test_no_hits_leaves_the_request_unchanged_and_the_log_says_so(http_server, base_url, fake_upstream, services):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    await stream(base_url, "/rag/chat/completions", {"messages": messages})
    assert fake_upstream.last.body["messages"] == messages
    retrieval = services.request_log.recent()[-1]["retrieval"]
    assert retrieval["hits"] == [] and retrieval["query"] == "What is the weather in Paris?"


@pytest.mark.gen_test
async def test_the_log_records_hits_with_scores_and_time(http_server, base_url, services):
    await stream(base_url, "/v1/rag/chat/completions", {"messages": [QUESTION]})
    record = services.request_log.recent()[-1]
    assert record["endpoint"] == "rag" and record["outcome"] == "ok"
    retrieval = record["retrieval"]
    assert retrieval["hits"][0]["id"] == "connect-agora#1" and retrieval["hits"][0]["score"] > 0
    assert retrieval["ms"] >= 0 and len(retrieval["hits"]) <= 6 and retrieval["injected_chars"] <= 2500


@pytest.mark.gen_test
async def test_multi_part_user_content_is_the_query(http_server, base_url, fake_upstream):
    question = {"role": "user", "content": [{"type": "text", "text": "怎么编辑"}, {"type": "text", "text": "知识库？"}]}
    await stream(base_url, "/rag/chat/completions", {"messages": [question]})
    assert "知识库怎么编辑" in fake_upstream.last.body["messages"][0]["content"]


@pytest.mark.gen_test
async def test_edits_are_visible_to_the_next_request(http_server, base_url, fake_upstream, services):
    question = {"role": "user", "content": "Which garage do guests use?"}
    await stream(base_url, "/rag/chat/completions", {"messages": [question]})
    assert fake_upstream.last.body["messages"] == [question]
    services.knowledge_base.add({"id": "parking", "title": "Guest parking", "content": "Guests use garage B."})
    await stream(base_url, "/rag/chat/completions", {"messages": [question]})
    assert "garage B" in fake_upstream.last.body["messages"][0]["content"]


@pytest.mark.gen_test
async def test_non_streaming_has_no_waiting_message_and_is_augmented(http_server, base_url, fake_upstream):
    response = await post(base_url, "/rag/chat/completions", {"messages": [QUESTION]})
    assert json_of(response)["object"] == "chat.completion"
    assert fake_upstream.last.body["messages"][0]["role"] == "system"


@pytest.mark.settings(rag_waiting_message="off")
@pytest.mark.gen_test
async def test_waiting_message_can_be_turned_off(http_server, base_url):
    result = await stream(base_url, "/rag/chat/completions", {"messages": [QUESTION]})
    assert all(c["id"] != WAITING_MESSAGE_ID for c in result.chunks)


@pytest.mark.settings(waiting_messages=("Hold on.",), rag_template="KNOWLEDGE:\n{passages}\nEND")
@pytest.mark.gen_test
async def test_waiting_messages_and_template_are_configurable(http_server, base_url, fake_upstream):
    result = await stream(base_url, "/rag/chat/completions", {"messages": [QUESTION]})
    assert result.chunks[0]["choices"][0]["delta"]["content"] == "Hold on. "
    context = fake_upstream.last.body["messages"][0]["content"]
    assert context.startswith("KNOWLEDGE:\n[1] Connecting Agora") and context.endswith("END")


@pytest.mark.settings(upstream="offline", api_key=None, base_url=None)
@pytest.mark.gen_test
async def test_offline_answers_from_the_best_passage_naming_its_title(http_server, base_url):
    result = await stream(base_url, "/rag/chat/completions", {"messages": [QUESTION]})
    assert result.chunks[0]["id"] == WAITING_MESSAGE_ID
    assert result.text.split("... ", 1)[-1].startswith("From the knowledge base, \"Connecting Agora's")
    assert "vendor to custom" in result.text
    chinese = await stream(
        base_url, "/rag/chat/completions", {"messages": [{"role": "user", "content": "怎么编辑知识库？"}]}
    )
    assert "知识库怎么编辑" in chinese.text


@pytest.mark.gen_test
async def test_bad_input_gets_the_same_errors_as_chat(http_server, base_url, fake_upstream):
    response = await post(base_url, "/rag/chat/completions", None, raw=b'{"messages": []}')
    assert response.code == 400 and json_of(response)["error"]["param"] == "messages"
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "phase,behaviour",
    [
        ("waiting for the upstream's headers", {"hang_before_headers": True}),
        ("waiting for the first token", {"hang": True}),
    ],
)
@pytest.mark.gen_test
async def test_leaving_after_the_waiting_message_cancels_the_upstream_call(
    http_server, base_url, fake_upstream, services, phase, behaviour
):
    for name, value in behaviour.items():
        setattr(fake_upstream.behaviour, name, value)
    client = RawClient(base_url)
    await client.send("/rag/chat/completions", {"messages": [QUESTION], "stream": True})
    await client.read_until(WAITING_MESSAGE_ID.encode())
    await eventually(lambda: fake_upstream.requests, what="the upstream got the request")
    await asyncio.sleep(0.05)  # the server is now really waiting in this phase
    left_at = time.perf_counter()
    client.close()
    await asyncio.wait_for(fake_upstream.last.closed.wait(), 5)
    assert fake_upstream.last.closed_at - left_at < 0.1, phase
    await eventually(lambda: services.request_log.in_flight == 0, what="every request finished")
    assert services.request_log.recent()[-1]["outcome"] == "cancelled"


@pytest.mark.settings(keepalive_seconds=0.2)
@pytest.mark.gen_test
async def test_keep_alive_comments_fill_a_long_wait_for_the_first_token(http_server, base_url, fake_upstream):
    fake_upstream.behaviour.first_chunk_delay = 0.9  # a model that thinks before its first token
    result = await stream(base_url, "/rag/chat/completions", {"messages": [QUESTION]})
    waiting_at = result.raw.index(b"waiting_msg")
    first_token_at = result.raw.index(b"word0")
    assert result.raw.count(b": keep-alive\n\n", waiting_at, first_token_at) >= 2
    assert result.chunks[0]["id"] == WAITING_MESSAGE_ID and result.events[-1] == "[DONE]"
    assert result.text.endswith("word4 ")


@pytest.mark.settings(keepalive_seconds=0.05)
@pytest.mark.gen_test
async def test_leaving_during_keep_alives_still_cancels_the_upstream(http_server, base_url, fake_upstream, services):
    fake_upstream.behaviour.hang = True
    client = RawClient(base_url)
    await client.send("/rag/chat/completions", {"messages": [QUESTION], "stream": True})
    await client.read_until(b": keep-alive")
    left_at = time.perf_counter()
    client.close()
    await asyncio.wait_for(fake_upstream.last.closed.wait(), 5)
    assert fake_upstream.last.closed_at - left_at < 0.1
    await eventually(lambda: services.request_log.in_flight == 0, what="every request finished")
    assert services.request_log.recent()[-1]["outcome"] == "cancelled"


@pytest.mark.settings(keepalive_seconds=0.05, first_token_timeout=0.3)
@pytest.mark.gen_test
async def test_the_first_token_timeout_holds_through_keep_alives(http_server, base_url, fake_upstream):
    fake_upstream.behaviour.hang = True
    result = await stream(base_url, "/rag/chat/completions", {"messages": [QUESTION]})
    *_, error, done = result.events
    assert error["error"]["code"] == "first_token_timeout" and done == "[DONE]"
    await asyncio.wait_for(fake_upstream.last.closed.wait(), 5)


# What a voice turn asks of retrieval --------------------------------------------------------------------------------

LOOKUP_WEATHER = {"type": "function", "function": {"name": "lookup_weather", "parameters": {"type": "object"}}}


@pytest.mark.gen_test
async def test_a_caller_returning_with_its_tool_results_gets_no_second_waiting_message(
    http_server, base_url, fake_upstream
):
    fake_upstream.script = [ScriptedTurn("Let me check.", [("lookup_weather", {"city": "Paris"})])]
    first = await stream(base_url, "/rag/chat/completions", {"messages": [SYSTEM, QUESTION], "tools": [LOOKUP_WEATHER]})
    assert first.chunks[0]["id"] == WAITING_MESSAGE_ID
    call = next(c for c in first.chunks if c["choices"] and "tool_calls" in c["choices"][0]["delta"])
    call_id = call["choices"][0]["delta"]["tool_calls"][0]["id"]
    returning = [
        SYSTEM,
        QUESTION,
        {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": call_id, "type": "function",
         "function": {"name": "lookup_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 degrees."},
    ]  # fmt: skip
    second = await stream(base_url, "/rag/chat/completions", {"messages": returning, "tools": [LOOKUP_WEATHER]})
    assert second.response.code == 200 and second.events[-1] == "[DONE]"
    assert WAITING_MESSAGE_ID not in {c["id"] for c in second.chunks}
    assert second.text == "word0 word1 word2 word3 word4 "  # the upstream's words alone, no filler before them


SMALL_TALK = ["Hi", "Hello!", "Thanks, bye.", "ok", "你好", "嗯", "Thank you so much!", "好的，谢谢"]


async def assert_nothing_injected(base_url, fake_upstream, services, said: str) -> None:
    result = await stream(base_url, "/rag/chat/completions", {"messages": [SYSTEM, {"role": "user", "content": said}]})
    assert result.response.code == 200 and result.events[-1] == "[DONE]"
    assert [m["role"] for m in fake_upstream.last.body["messages"]] == ["system", "user"], said
    retrieval = services.request_log.recent()[-1]["retrieval"]
    assert retrieval["hits"] == [] and retrieval["injected_chars"] == 0, said


@pytest.mark.gen_test
async def test_greetings_thanks_and_fillers_inject_no_knowledge(http_server, base_url, fake_upstream, services):
    for said in SMALL_TALK:
        await assert_nothing_injected(base_url, fake_upstream, services, said)
    # A greeting that asks something is a question.
    await stream(base_url, "/rag/chat/completions", {"messages": [{"role": "user", "content": "Hi, how do I connect "
                                                                    "Agora's engine?"}]})  # fmt: skip
    assert services.request_log.recent()[-1]["retrieval"]["hits"][0]["id"] == "connect-agora#1"


@pytest.mark.settings(embeddings="bundled")
@pytest.mark.gen_test(timeout=120)
async def test_greetings_inject_no_knowledge_with_the_bundled_model_either(
    http_server, base_url, fake_upstream, services, semantic
):
    for said in SMALL_TALK:
        await assert_nothing_injected(base_url, fake_upstream, services, said)


@pytest.mark.parametrize("asked", ["Look up how to connect Agora", "Can you tell me how to connect Agora?",
                                   "帮我查一下如何连接声网对话式AI引擎"])  # fmt: skip
@pytest.mark.gen_test
async def test_the_way_a_question_is_asked_does_not_pick_the_passage(http_server, base_url, fake_upstream, services,
                                                                      asked):  # fmt: skip
    # "Look up" matched "up to SHUTDOWN_GRACE seconds" in "Stopping the server" above the passage that answers.
    await stream(base_url, "/rag/chat/completions", {"messages": [{"role": "user", "content": asked}]})
    best = services.request_log.recent()[-1]["retrieval"]["hits"][0]["id"]
    assert best in ("connect-agora#1", "zh-connect#1"), best
