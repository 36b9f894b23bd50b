"""Hostile callers (round 3 of the fuzz-and-fault campaign): requests that cost the server more than they should,
or reach what belongs to another caller. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import json
import random
import string
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from fakes.upstream import ScriptedTurn
from tests.client import eventually, post, stream
from tests.handlers.admin_client import bearer


def gibberish(chars: int, seed: int = 1) -> str:
    """Distinct made-up words: the costliest text to tokenise, score and embed."""
    rng = random.Random(seed)
    words, size = [], 0
    while size < chars:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10)))
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


async def slowest_health_check(base_url: str, busy: asyncio.Task) -> float:
    """The longest /healthz took while `busy` ran: the event loop's availability to everyone else."""
    client = AsyncHTTPClient()
    slowest = 0.0
    while not busy.done():
        started = time.perf_counter()
        response = await client.fetch(base_url + "/healthz", request_timeout=60)
        assert response.code == 200
        slowest = max(slowest, time.perf_counter() - started)
        await asyncio.sleep(0.02)
    await busy
    return slowest


# 8. A long query froze the process: tokenised, scored and embedded on the event loop, unbounded. ----------------


@pytest.mark.settings(max_body_bytes=4 << 20, embeddings="bundled")
@pytest.mark.gen_test(timeout=120)
async def test_a_megabyte_rag_message_is_bounded_and_never_holds_the_event_loop(
    http_server, base_url, fake_upstream, services, semantic
):
    huge = gibberish(1_000_000)
    body = {"messages": [{"role": "assistant", "content": gibberish(300_000, 2)}, {"role": "user", "content": huge}]}
    busy = asyncio.ensure_future(stream(base_url, "/rag/chat/completions", body))
    # Before: 2.5 s per 100 KB with /healthz blocked as long (about 44 s for this request).
    assert await slowest_health_check(base_url, busy) < 0.5  # the bound
    result = busy.result()
    assert result.response.code == 200 and result.events[-1] == "[DONE]"
    retrieval = services.request_log.recent()[-1]["retrieval"]
    assert retrieval["ms"] < 2000


@pytest.mark.settings(server_tools=("chat",), embeddings="bundled")
@pytest.mark.gen_test(timeout=120)
async def test_the_model_searching_with_a_huge_query_is_bounded_too(
    http_server, base_url, fake_upstream, services, semantic
):
    fake_upstream.script = [ScriptedTurn("", [("search_knowledge_base", {"query": gibberish(300_000)})])]
    asking = {"messages": [{"role": "user", "content": "?"}]}
    busy = asyncio.ensure_future(stream(base_url, "/chat/completions", asking))
    assert await slowest_health_check(base_url, busy) < 0.5  # before: 11.6 s, the tool's timeout unable to fire
    record = services.request_log.recent()[-1]
    assert record["tool_calls"][0]["outcome"] == "ok" and record["tool_calls"][0]["ms"] < 2000


def test_the_query_keeps_a_bounded_end_of_the_turn():
    from llmserver.knowledge.query import MAX_QUERY_CHARS, conversation_query

    turn = gibberish(50_000) + " where is breakfast served"
    query = conversation_query([{"role": "user", "content": "x" * 90_000}, {"role": "assistant", "content": "y"},
                                {"role": "user", "content": turn}])  # fmt: skip
    assert len(query.text) <= MAX_QUERY_CHARS and query.text.endswith("where is breakfast served")
    assert len(query.history) <= 1201


@pytest.mark.gen_test
async def test_a_long_question_still_finds_its_passage(http_server, base_url, fake_upstream, services):
    question = "Hello, I have a question. " * 30 + "How do I connect Agora's Conversational AI engine to this server?"
    response = await post(base_url, "/rag/chat/completions", {"messages": [{"role": "user", "content": question}]})
    assert response.code == 200
    assert services.request_log.recent()[-1]["retrieval"]["hits"][0]["id"] == "connect-agora#1"


# 9. The conversation key was kept whole in every record: a megabyte `user` cost a megabyte a request. -------------


@pytest.mark.gen_test(timeout=60)
async def test_a_huge_conversation_key_costs_a_few_bytes(http_server, base_url, fake_upstream, services):
    huge = "u" * 900_000
    for sent in ({"user": huge}, {"context": {"appId": huge, "userId": "1", "channel": "c"}}):
        response = await post(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], **sent})
        assert response.code == 200
        assert len(services.request_log.recent()[-1]["conversation"]) < 100
    header = {"X-Conversation-Id": "h" * 8000}
    assert (await post(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}, header)).code
    assert len(services.request_log.recent()[-1]["conversation"]) < 100
    admin = bearer(base_url, services.admin_token)
    history = await admin.fetch("GET", "/admin/api/history?limit=10")
    assert history.code == 200 and len(history.body) < 50_000


@pytest.mark.settings(memory_conversations=1000)
@pytest.mark.gen_test
async def test_the_conversations_list_is_paged(http_server, base_url, services):
    from llmserver.tools.memory import Exchange

    call = {"id": "c1", "type": "function", "function": {"name": "t", "arguments": "{}"}}
    messages = ({"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1"})
    for number in range(250):
        services.memory.remember(f'anon:user:["{number}"]', Exchange("hi", None, messages))
    admin = bearer(base_url, services.admin_token)
    listed = json.loads((await admin.fetch("GET", "/admin/api/conversations")).body)
    assert len(listed["conversations"]) == 100 and listed["total"] == 250
    listed = json.loads((await admin.fetch("GET", "/admin/api/conversations?limit=5000")).body)
    assert len(listed["conversations"]) == 250
    for bad in ("nan", "inf", "-1e400", "many"):
        response = await admin.fetch("GET", f"/admin/api/conversations?limit={bad}")
        assert response.code == 400 and json.loads(response.body)["error"]["param"] == "limit"


@pytest.mark.parametrize("query", ["limit=nan", "limit=inf", "limit=-1e400", "before=nan", "since=inf", "until=x"])
@pytest.mark.gen_test
async def test_history_paging_refuses_numbers_that_are_not(http_server, base_url, services, query):
    response = await bearer(base_url, services.admin_token).fetch("GET", "/admin/api/history?" + query)
    assert response.code == 400  # limit=nan was a 500 with a traceback
    assert json.loads(response.body)["error"]["param"] == query.split("=")[0]


# 11. Memory keys collided, and anyone could name one. ---------------------------------------------------------------


@pytest.mark.settings(server_tools=("chat",))
@pytest.mark.gen_test(timeout=60)
async def test_a_conversation_is_reached_only_with_the_credential_that_made_it(
    http_server, base_url, fake_upstream, services
):
    fake_upstream.script = [ScriptedTurn("Checking.", [("current_time", {"timezone": "Asia/Tokyo"})])]
    first = [{"role": "user", "content": "What time is it in Tokyo?"}]
    alice, mallory = {"Authorization": "Bearer sk-alice"}, {"Authorization": "Bearer sk-mallory"}
    await stream(base_url, "/chat/completions", {"messages": first, "user": "u1"}, alice)
    follow_up = [*first, {"role": "assistant", "content": "Checking. word0"}, {"role": "user", "content": "Exactly?"}]
    # Another caller naming the same user: nothing of Alice's conversation.
    await stream(base_url, "/chat/completions", {"messages": follow_up, "user": "u1"}, mallory)
    assert [m["role"] for m in fake_upstream.last.body["messages"]].count("tool") == 0
    await stream(base_url, "/chat/completions", {"messages": follow_up, "user": "u1"}, alice)
    assert [m["role"] for m in fake_upstream.last.body["messages"]].count("tool") == 1


# 13. 500s with a traceback. ----------------------------------------------------------------------------------------


@pytest.mark.settings(server_tools=("chat",))
@pytest.mark.parametrize(
    "tools",
    [
        [{"type": "function", "function": {"name": ["not", "a", "string"]}}],
        [{"type": "function", "function": {"name": {"an": "object"}}}],
        [{"type": "function", "function": "get_weather"}],
        ["get_weather"],
    ],
)
@pytest.mark.gen_test
async def test_a_callers_tool_with_a_name_that_is_not_a_string_is_a_400(http_server, base_url, fake_upstream, tools):
    response = await post(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                            "tools": tools})  # fmt: skip
    assert response.code == 400, response.body  # was 500: unhashable type
    assert json.loads(response.body)["error"]["param"].startswith("tools[0]")
    assert not fake_upstream.requests


BAD_HISTORIES = [
    {"role": "assistant", "content": None, "tool_calls": "call_1"},
    {"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]},
    {"role": "assistant", "content": None, "tool_calls": [{"id": ["x"], "function": {"name": "f", "arguments": ""}}]},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": 3, "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": ["call_1"], "content": "18 degrees"},
    {"role": "tool", "content": "no id"},
]


@pytest.mark.settings(server_tools=("chat",))
@pytest.mark.parametrize("odd", BAD_HISTORIES)
@pytest.mark.gen_test(timeout=60)
async def test_a_remembered_conversation_sent_a_malformed_history_is_a_400(
    http_server, base_url, fake_upstream, services, odd
):
    fake_upstream.script = [ScriptedTurn("Checking.", [("current_time", {"timezone": "UTC"})])]
    first = [{"role": "user", "content": "What time is it?"}]
    await stream(base_url, "/chat/completions", {"messages": first, "user": "u1"})
    assert services.memory.conversations()  # remembered: the next turn is spliced
    requests = len(fake_upstream.requests)
    messages = [*first, odd, {"role": "user", "content": "Again?"}]
    response = await post(base_url, "/chat/completions", {"messages": messages, "user": "u1"})
    assert response.code == 400, response.body  # was 500 when the memory spliced it
    assert json.loads(response.body)["error"]["param"].startswith("messages[1]")
    assert len(fake_upstream.requests) == requests


@pytest.mark.settings(server_tools=("chat",))
@pytest.mark.parametrize("index", [[0], {"i": 0}, "0", True, None])
@pytest.mark.gen_test(timeout=60)
async def test_upstream_tool_call_deltas_with_an_odd_index_are_a_502_not_a_500(
    http_server, base_url, fake_upstream, index
):
    head = {"index": index, "id": "call_x", "type": "function", "function": {"name": "current_time", "arguments": ""}}
    fake_upstream.script = [ScriptedTurn(raw_deltas=[{"tool_calls": [head]}])]
    result = await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "Time?"}]})
    if index is None:  # OpenAI's own default: the first call
        assert result.response.code == 200 and result.events[-1] == "[DONE]"
        return
    assert result.response.code == 502, result.raw
    assert json.loads(result.response.body)["error"]["code"] == "upstream_bad_chunk"


@pytest.mark.settings(server_tools=("chat",))
@pytest.mark.parametrize("calls", ["call_1", ["call_1"], [None], {"id": "call_1"}])
@pytest.mark.gen_test(timeout=60)
async def test_a_non_streamed_upstream_message_with_odd_tool_calls_is_a_502(
    http_server, base_url, fake_upstream, calls
):
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    fake_upstream.script = [ScriptedTurn(raw_message=message)]
    fake_upstream.behaviour.ignore_stream = True  # a JSON completion, whatever was asked (the tool loop streams)
    response = await post(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "Time?"}]})
    assert response.code == 502, response.body
    assert json.loads(response.body)["error"]["code"] == "upstream_bad_response"


# 10. Idle sockets took the service down. ----------------------------------------------------------------------------


async def half_sent(base_url: str, body_too: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that sends its headers (and part of its body, or part of its headers) and then nothing."""
    port = int(base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
    writer.write((head + "\r\n" + '{"messages": [').encode() if body_too else head.encode())
    await writer.drain()
    return reader, writer


@pytest.mark.settings(max_streams=3, body_timeout=0.5, idle_timeout=0.5)
@pytest.mark.gen_test(timeout=60)
async def test_requests_whose_body_never_arrives_give_their_place_back(http_server, base_url, fake_upstream, services):
    stalled = [await half_sent(base_url, body_too=True) for _ in range(3)]
    await eventually(lambda: services.request_log.in_flight == 3, what="the stalled requests hold every place")
    refused = await post(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})
    assert refused.code == 503  # before: forever
    await eventually(lambda: services.request_log.in_flight == 0, what="the places given back at the body timeout")
    served = await post(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})
    assert served.code == 200
    assert [r["outcome"] for r in services.request_log.recent()].count("cancelled") == 3
    for _, writer in stalled:
        writer.close()


@pytest.mark.settings(idle_timeout=0.5)
@pytest.mark.gen_test(timeout=60)
async def test_half_sent_headers_time_out(http_server, base_url):
    reader, writer = await half_sent(base_url, body_too=False)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server (before: never)
    writer.close()
