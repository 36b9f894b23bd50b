"""POST /chat/completions against the fake upstream, through the real AsyncOpenAI client inside the server."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from tests.client import RawClient, eventually, json_of, post, stream
from tests.conftest import SERVER_KEY

USER = {"role": "user", "content": "Hello there"}


@pytest.mark.gen_test
async def test_stream_relays_every_chunk_in_order_then_done(http_server, base_url, fake_upstream):
    fake_upstream.behaviour.words = 25
    result = await stream(base_url, "/chat/completions", {"model": "m1", "messages": [USER]})
    assert result.response.code == 200
    headers = result.response.headers
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"
    assert result.events[-1] == "[DONE]"
    chunks = result.chunks
    assert len(chunks) == 26  # 25 words and the finish chunk
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert result.text == "".join(f"word{i} " for i in range(25))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert result.raw.count(b"data: ") == 27


@pytest.mark.gen_test
async def test_v1_path_and_tool_calls_and_usage_chunk_are_relayed(http_server, base_url, fake_upstream):
    fake_upstream.behaviour.tool_call = True
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = {"messages": [USER], "tools": tools, "stream_options": {"include_usage": True}}
    result = await stream(base_url, "/v1/chat/completions", body)
    chunks = result.chunks
    arguments = "".join(
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert fake_upstream.last.body["tools"] == tools


@pytest.mark.gen_test
async def test_body_is_forwarded_unchanged_except_engine_fields(http_server, base_url, fake_upstream, services):
    fake_upstream.strict = False  # a field OpenAI does not know yet goes on as it came (one it knows tomorrow)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": "Be brief.", "turn_id": 3, "timestamp": 1700000000000},
        {"role": "assistant", "audio": {"id": "audio_abc"}, "metadata": {"interrupted": True}},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "the weather?"}],
            "turn_id": 4,
            "metadata": {"source": "asr"},
        },
    ]
    body = {
        "model": "gpt-4o",
        "messages": messages,
        "temperature": 0.3,
        "max_tokens": 50,
        "max_completion_tokens": 60,
        "stop": ["\n\n"],
        "seed": 7,
        "user": "u1",
        "response_format": {"type": "text"},
        "modalities": ["text"],
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "some_future_field": {"kept": True},
        "context": {"presence": {"u": "online"}, "channel": "c1"},
        "turn_id": 4,
        "timestamp": 1700000000001,
        "interruptable": True,
    }
    result = await stream(base_url, "/chat/completions", body)
    assert result.response.code == 200
    sent = fake_upstream.last.body
    expected = json.loads(json.dumps(body))
    for name in ("context", "turn_id", "timestamp", "interruptable"):
        del expected[name]
    for message in expected["messages"]:
        for name in ("turn_id", "timestamp", "metadata"):
            message.pop(name, None)
    expected["stream"] = True
    expected["stream_options"] = {"include_usage": True}  # asked always: the record keeps the usage
    assert sent == expected
    assert not [chunk for chunk in result.chunks if "usage" in chunk]  # the caller did not ask for it
    record = services.request_log.recent()[-1]
    assert record["turn_id"] == 4
    assert record["engine_fields"]["context"] == {"presence": {"u": "online"}, "channel": "c1"}
    assert record["engine_fields"]["messages"][4] == {"turn_id": 4, "metadata": {"source": "asr"}}
    assert record["last_user_message"] == "What is the weather?"
    assert record["messages"] == 5 and record["platform"] == "agora" and record["history_repairs"] == {}


@pytest.mark.gen_test
async def test_default_model_is_used_when_request_names_none(http_server, base_url, fake_upstream, settings):
    await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert fake_upstream.last.body["model"] == settings.model == "gpt-4o-mini"


@pytest.mark.gen_test
async def test_non_streaming_returns_the_upstream_completion(http_server, base_url, fake_upstream):
    response = await post(base_url, "/chat/completions", {"messages": [USER], "stream": False})
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json"
    completion = json_of(response)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"].startswith("word0")
    assert "stream" in fake_upstream.last.body and fake_upstream.last.body["stream"] is False


@pytest.mark.gen_test
async def test_request_id_is_echoed_or_generated(http_server, base_url):
    mine = await post(base_url, "/chat/completions", {"messages": [USER]}, {"X-Request-Id": "abc-123"})
    assert mine.headers["X-Request-Id"] == "abc-123"
    generated = await post(base_url, "/chat/completions", {"messages": []})
    assert generated.code == 400 and generated.headers["X-Request-Id"].startswith("req_")
    unsafe = await post(base_url, "/chat/completions", {"messages": [USER]}, {"X-Request-Id": "a\tb<c>"})
    assert unsafe.headers["X-Request-Id"].startswith("req_")


BAD_BODIES = [
    (b"{not json", None, "invalid_json"),
    (b"[1, 2]", None, "invalid_body"),
    (b'"text"', None, "invalid_body"),
    (b'{"model": "m"}', "messages", "missing_required_parameter"),
    (b'{"messages": []}', "messages", "empty_array"),
    (b'{"messages": "hi"}', "messages", "invalid_type"),
    (b'{"messages": ["hi"]}', "messages[0]", "invalid_type"),
    (b'{"messages": [{"content": "hi"}]}', "messages[0].role", "invalid_type"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content", "invalid_type"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream", "invalid_type"),
    (b'{"messages": [{"role": "user", "content": "x"}], "model": 4}', "model", "invalid_type"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature", "invalid_type"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}', "max_tokens", "invalid_type"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": true}', "max_tokens", "invalid_type"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": {}}', "tools", "invalid_type"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream_options": []}', "stream_options", "invalid_type"),
    (b"\xff\xfe", None, "invalid_json"),
]


@pytest.mark.parametrize("raw,param,code", BAD_BODIES)
@pytest.mark.gen_test
async def test_bad_bodies_get_400_naming_the_field(http_server, base_url, fake_upstream, services, raw, param, code):
    response = await post(base_url, "/chat/completions", None, raw=raw)
    assert response.code == 400
    error = json_of(response)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code
    if param:
        assert param.split("[")[0] in error["message"]
    assert fake_upstream.requests == []
    record = services.request_log.recent()[-1]
    assert record["outcome"] == "error" and record["status"] == 400


@pytest.mark.settings(max_body_bytes=2048)
@pytest.mark.gen_test
async def test_body_over_the_limit_gets_413(http_server, base_url, fake_upstream):
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    response = await post(base_url, "/chat/completions", big)
    assert response.code == 413
    assert json_of(response)["error"]["code"] == "request_too_large"
    assert fake_upstream.requests == []


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429])
@pytest.mark.gen_test
async def test_upstream_client_errors_keep_status_and_message(http_server, base_url, fake_upstream, status):
    fake_upstream.behaviour.status = status
    fake_upstream.behaviour.error_message = f"upstream says {status}"
    for stream_flag in (True, False):
        response = await post(base_url, "/chat/completions", {"messages": [USER], "stream": stream_flag})
        assert response.code == status
        assert json_of(response)["error"]["message"] == f"upstream says {status}"


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.gen_test
async def test_upstream_server_errors_become_502(http_server, base_url, fake_upstream, status):
    fake_upstream.behaviour.status = status
    response = await post(base_url, "/chat/completions", {"messages": [USER], "stream": True})
    assert response.code == 502
    error = json_of(response)["error"]
    assert error["type"] == "server_error" and "fake upstream failure" in error["message"]


@pytest.mark.settings(upstream_retries=2)
@pytest.mark.gen_test
async def test_failures_before_the_first_byte_are_retried(http_server, base_url, fake_upstream):
    fake_upstream.behaviour.status = 503
    response = await post(base_url, "/chat/completions", {"messages": [USER], "stream": True})
    assert response.code == 502
    assert len(fake_upstream.requests) == 3


@pytest.mark.gen_test
async def test_done_reaches_the_client_without_waiting_for_the_upstream_to_close(http_server, base_url, fake_upstream):
    fake_upstream.behaviour.linger_after_done = 3.0  # an upstream that keeps the body open after [DONE]
    client = RawClient(base_url)
    await client.send("/chat/completions", {"messages": [USER], "stream": True})
    await asyncio.wait_for(client.read_until(b"data: [DONE]"), 2.0)  # well before the upstream closes
    client.close()


@pytest.mark.parametrize("value", [None])
@pytest.mark.gen_test
async def test_null_optional_parameters_are_accepted_and_passed_on(http_server, base_url, fake_upstream, value):
    nullable = [
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "seed",
        "stop",
        "user",
        "tools",
        "tool_choice",
        "response_format",
        "parallel_tool_calls",
        "logprobs",
    ]
    body = {"model": "m", "messages": [USER], "stream": True, "stream_options": None}
    body.update({name: value for name in nullable})
    result = await stream(base_url, "/chat/completions", body)
    assert result.response.code == 200
    assert all(fake_upstream.last.body[name] is None for name in nullable)
    assert fake_upstream.last.body["stream_options"] == {"include_usage": True}  # the server's own question
    no_model = await stream(base_url, "/chat/completions", {"model": None, "messages": [USER]})
    assert no_model.response.code == 200 and fake_upstream.last.body["model"] == "gpt-4o-mini"


@pytest.mark.gen_test
async def test_large_engine_fields_are_kept_short_in_the_record(http_server, base_url, services):
    body = {"messages": [USER], "context": {"presence": "x" * 100_000}, "turn_id": 3}
    await stream(base_url, "/chat/completions", body)
    record = services.request_log.recent()[-1]
    assert record["turn_id"] == 3 and len(json.dumps(record["engine_fields"])) < 5000
    assert record["engine_fields"]["context"]["presence"].startswith("xxx")  # each long string cut short
    many = {"messages": [USER], "context": {f"key{n}": "y" * 150 for n in range(200)}}
    await stream(base_url, "/chat/completions", many)
    assert len(services.request_log.recent()[-1]["engine_fields"]["truncated"]) < 5000  # many short ones: cut whole


@pytest.mark.gen_test
async def test_while_shutting_down_new_requests_get_503_and_connection_close(http_server, base_url, services):
    services.shutting_down = True
    response = await post(base_url, "/chat/completions", {"messages": [USER]})
    assert response.code == 503 and json_of(response)["error"]["code"] == "shutting_down"
    assert response.headers["Connection"] == "close"


@pytest.mark.settings(base_url="http://127.0.0.1:9/v1", connect_timeout=2)
@pytest.mark.gen_test
async def test_unreachable_upstream_gives_502(http_server, base_url):
    response = await post(base_url, "/chat/completions", {"messages": [USER], "stream": True})
    assert response.code == 502
    assert json_of(response)["error"]["code"] == "upstream_unreachable"


@pytest.mark.settings(read_timeout=0.3)
@pytest.mark.gen_test
async def test_upstream_timeout_before_headers_gives_504(http_server, base_url, fake_upstream):
    fake_upstream.behaviour.hang_before_headers = True
    response = await post(base_url, "/chat/completions", {"messages": [USER], "stream": False})
    assert response.code == 504
    assert json_of(response)["error"]["code"] == "upstream_timeout"


@pytest.mark.settings(first_token_timeout=0.3)
@pytest.mark.gen_test
async def test_first_token_timeout_gives_504_and_closes_the_upstream_call(http_server, base_url, fake_upstream):
    fake_upstream.behaviour.hang = True
    response = await post(base_url, "/chat/completions", {"messages": [USER], "stream": True})
    assert response.code == 504
    assert json_of(response)["error"]["code"] == "first_token_timeout"
    await asyncio.wait_for(fake_upstream.last.closed.wait(), 5)


@pytest.mark.parametrize(
    "behaviour,code",
    [
        ({"cut_after": 3}, "upstream_stream_broken"),
        ({"bad_chunk_at": 2}, "upstream_bad_chunk"),
        ({"error_event_at": 2}, "upstream_error"),
    ],
)
@pytest.mark.gen_test
async def test_errors_after_streaming_began_become_one_error_event_then_done(
    http_server, base_url, fake_upstream, services, behaviour, code
):
    for name, value in behaviour.items():
        setattr(fake_upstream.behaviour, name, value)
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert result.response.code == 200
    *chunks, error, done = result.events
    assert done == "[DONE]"
    assert set(error) == {"error"} and error["error"]["code"] == code
    assert all("choices" in c for c in chunks) and len(chunks) >= 2
    record = services.request_log.recent()[-1]
    assert record["outcome"] == "error" and record["error"]


async def _leave_and_measure(base_url: str, fake_upstream, wait_marker: bytes | None) -> float:
    client = RawClient(base_url)
    await client.send("/chat/completions", {"messages": [USER], "stream": True})
    if wait_marker:
        await client.read_until(wait_marker)
    else:
        await eventually(lambda: fake_upstream.requests, what="the upstream got the request")
    # Give the server time to be really waiting on the upstream in this phase.
    await asyncio.sleep(0.05)
    left_at = time.perf_counter()
    client.close()
    received = fake_upstream.last
    await asyncio.wait_for(received.closed.wait(), 5)
    return received.closed_at - left_at


@pytest.mark.parametrize(
    "phase,behaviour,marker",
    [
        ("waiting for the upstream's headers", {"hang_before_headers": True}, None),
        ("waiting for the first token", {"hang": True}, None),
        ("mid-stream", {"chunk_delay": 0.5, "words": 20}, b"word0"),
    ],
)
@pytest.mark.gen_test
async def test_client_disconnect_cancels_the_upstream_call_within_100ms(
    http_server, base_url, fake_upstream, services, phase, behaviour, marker
):
    for name, value in behaviour.items():
        setattr(fake_upstream.behaviour, name, value)
    delay = await _leave_and_measure(base_url, fake_upstream, marker)
    assert delay < 0.1, f"upstream closed {delay * 1000:.0f} ms after the client left ({phase})"
    await eventually(lambda: services.request_log.in_flight == 0, what="every request finished")
    record = services.request_log.recent()[-1]
    assert record["outcome"] == "cancelled"


@pytest.mark.gen_test
async def test_request_log_record_has_the_fields(http_server, base_url, fake_upstream, services):
    seen = []
    services.request_log.subscribe(seen.append)
    await stream(base_url, "/chat/completions", {"model": "m2", "messages": [USER], "turn_id": 9})
    record = seen[-1]
    assert record["endpoint"] == "chat" and record["model"] == "m2" and record["turn_id"] == 9
    assert record["outcome"] == "ok" and record["status"] == 200
    assert record["chunks"] == 6 and record["first_chunk_ms"] > 0 and record["total_ms"] >= record["first_chunk_ms"]
    assert record["last_user_message"] == "Hello there" and record["messages"] == 1
    assert record["request_id"].startswith("req_")


@pytest.mark.settings(log_text_chars=20)
@pytest.mark.gen_test
async def test_long_user_messages_are_truncated_in_the_log(http_server, base_url, services):
    await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "z" * 500}]})
    assert len(services.request_log.recent()[-1]["last_user_message"]) == 20


@pytest.mark.settings(api_key=None)
@pytest.mark.gen_test
async def test_no_key_anywhere_is_a_401_and_no_key_is_ever_logged(http_server, base_url, fake_upstream, caplog):
    caplog.set_level(logging.DEBUG)
    response = await post(base_url, "/chat/completions", {"messages": [USER], "stream": True})
    assert response.code == 401
    assert json_of(response)["error"]["type"] == "authentication_error"
    assert fake_upstream.requests == []
    caller_key = "sk-caller-secret-123"
    result = await stream(
        base_url, "/chat/completions", {"messages": [USER]}, {"Authorization": f"Bearer {caller_key}"}
    )
    assert result.response.code == 200
    assert fake_upstream.last.headers["Authorization"] == f"Bearer {caller_key}"
    assert any(r.name == "llmserver.requests" for r in caplog.records)  # the request log line was captured
    assert caller_key not in caplog.text


@pytest.mark.gen_test
async def test_the_servers_own_key_wins(http_server, base_url, fake_upstream):
    await stream(base_url, "/chat/completions", {"messages": [USER]}, {"Authorization": "Bearer sk-caller"})
    assert fake_upstream.last.headers["Authorization"] == f"Bearer {SERVER_KEY}"


@pytest.mark.settings(api_keys=("client-key-1", "client-key-2"))
@pytest.mark.gen_test
async def test_api_keys_are_required_and_never_forwarded(http_server, base_url, fake_upstream, services, caplog):
    caplog.set_level(logging.DEBUG)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic client-key-1"}):
        response = await post(base_url, "/chat/completions", {"messages": [USER]}, headers)
        assert response.code == 401
        assert json_of(response)["error"]["code"] == "invalid_api_key"
    assert fake_upstream.requests == []
    result = await stream(base_url, "/chat/completions", {"messages": [USER]}, {"Authorization": "Bearer client-key-2"})
    assert result.response.code == 200
    assert fake_upstream.last.headers["Authorization"] == f"Bearer {SERVER_KEY}"
    assert any(r.name == "llmserver.requests" for r in caplog.records)
    everything_logged = caplog.text + json.dumps(services.request_log.recent())
    assert "client-key-2" not in everything_logged and SERVER_KEY not in everything_logged


@pytest.mark.settings(api_keys=("client-key-1",), api_key=None)
@pytest.mark.gen_test
async def test_api_keys_without_a_server_key_leave_nothing_to_forward(http_server, base_url, fake_upstream):
    response = await post(base_url, "/chat/completions", {"messages": [USER]}, {"Authorization": "Bearer client-key-1"})
    assert response.code == 401 and json_of(response)["error"]["code"] == "missing_api_key"


@pytest.mark.gen_test
async def test_clients_that_leave_while_sending_their_body_leave_nothing_behind(http_server, base_url, fake_upstream):
    baseline = len(asyncio.all_tasks())
    for _ in range(5):
        _, writer = await asyncio.open_connection("127.0.0.1", int(base_url.rsplit(":", 1)[1]))
        head = "POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        writer.write(head.encode() + b'{"messages": [')
        await writer.drain()
        await asyncio.sleep(0.02)  # the server is now waiting for the rest of the body
        writer.close()
        await writer.wait_closed()
    # Every handler task ends once its client has gone.
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline, what="the handlers' tasks ended")
    assert fake_upstream.requests == []


@pytest.mark.settings(max_body_bytes=2048)
@pytest.mark.gen_test
async def test_a_declared_oversize_body_is_refused_before_it_is_read(http_server, base_url, services):
    reader, writer = await asyncio.open_connection("127.0.0.1", int(base_url.rsplit(":", 1)[1]))
    writer.write(b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n{")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(65536), 5)  # answered without the 50 MB being sent
    assert response.startswith(b"HTTP/1.1 413") and b"request_too_large" in response
    writer.close()
    record = services.request_log.recent()[-1]
    assert record["status"] == 413 and record["outcome"] == "error"


@pytest.mark.gen_test
async def test_an_upstream_that_ignores_stream_true_is_still_streamed(http_server, base_url, fake_upstream):
    fake_upstream.behaviour.ignore_stream = True
    body = {"model": "m", "messages": [USER], "stream_options": {"include_usage": True}}
    result = await stream(base_url, "/chat/completions", body)
    assert result.response.headers["Content-Type"].startswith("text/event-stream")
    first, finish, usage_chunk = result.chunks
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"
    assert result.text == "word0 word1 word2 word3 word4 "
    assert finish["choices"][0]["finish_reason"] == "stop" and usage_chunk["usage"]["total_tokens"] == 8
    assert result.events[-1] == "[DONE]" and {c["id"] for c in result.chunks} == {"chatcmpl-fake1"}
