"""WebSocket /admin/ws/logs: who may connect, the recent records, live records, and overflow."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from llmserver.request_log import RequestRecord
from tests.client import eventually, stream
from tests.handlers.admin_client import sign_in_with_cookie


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/admin/ws/logs"


async def connect(base_url: str, headers: dict[str, str]):
    return await websocket_connect(HTTPRequest(ws_url(base_url), headers=headers))


async def next_message(connection) -> dict:
    message = await asyncio.wait_for(connection.read_message(), 5)
    assert message is not None, "the socket closed"
    return json.loads(message)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Cookie": "llm_admin=forged"}])
@pytest.mark.gen_test
async def test_without_the_token_the_socket_is_refused(http_server, base_url, headers):
    with pytest.raises(HTTPClientError) as refused:
        await connect(base_url, headers)
    assert refused.value.code == 401
    response = refused.value.response
    assert json.loads(response.body)["error"]["code"] == "admin_token"
    assert response.headers["X-Request-Id"].startswith("req_")


@pytest.mark.gen_test
async def test_a_foreign_origin_is_refused_even_with_the_cookie(http_server, base_url, services):
    client = await sign_in_with_cookie(base_url, services.admin_token)
    with pytest.raises(HTTPClientError) as refused:
        await connect(base_url, {**client.headers, "Origin": "https://evil.example"})
    assert refused.value.code == 403
    assert json.loads(refused.value.response.body)["error"]["code"] == "foreign_origin"
    with pytest.raises(HTTPClientError) as unparseable:
        await connect(base_url, {**client.headers, "Origin": "http://["})
    assert unparseable.value.code == 403
    connection = await connect(base_url, {**client.headers, "Origin": base_url})  # the page's own origin
    connection.close()


@pytest.mark.gen_test
async def test_recent_records_on_connect_then_live_ones(http_server, base_url, services):
    for n in range(3):
        await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": f"before {n}"}]})
    connection = await connect(base_url, {"Authorization": f"Bearer {services.admin_token}"})
    recent = [await next_message(connection) for _ in range(3)]
    assert [m["record"]["last_user_message"] for m in recent] == ["before 0", "before 1", "before 2"]
    await stream(base_url, "/rag/chat/completions", {"messages": [{"role": "user", "content": "<script>x</script>"}]})
    live = await next_message(connection)
    assert live["type"] == "record"
    record = live["record"]
    assert record["endpoint"] == "rag" and record["last_user_message"] == "<script>x</script>"
    fields = {"request_id", "started_at", "model", "outcome", "first_chunk_ms", "total_ms", "chunks", "retrieval"}
    assert fields <= set(record)
    connection.close()


@pytest.mark.gen_test
async def test_at_most_200_recent_records_are_sent(http_server, base_url, services):
    for n in range(250):
        record = RequestRecord(request_id=f"req_{n}", endpoint="chat")
        services.request_log.in_flight += 1
        services.request_log.finish(record)
    connection = await connect(base_url, {"Authorization": f"Bearer {services.admin_token}"})
    recent = [await next_message(connection) for _ in range(200)]
    assert [m["record"]["request_id"] for m in recent] == [f"req_{n}" for n in range(50, 250)]
    await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "after"}]})
    assert (await next_message(connection))["record"]["last_user_message"] == "after"  # nothing more came before it
    connection.close()


@pytest.mark.gen_test
async def test_a_burst_larger_than_the_queue_is_dropped_and_reported(http_server, base_url, services):
    before = services.request_log.subscriber_count
    connection = await connect(base_url, {"Authorization": f"Bearer {services.admin_token}"})
    await eventually(lambda: services.request_log.subscriber_count > before, what="the socket subscribed")
    for n in range(2000):  # synchronously: the server never waits for the page
        record = RequestRecord(request_id=f"burst_{n}", endpoint="chat")
        services.request_log.in_flight += 1
        services.request_log.finish(record)
    messages = []
    while not any(m["type"] == "missed" for m in messages):
        messages.append(await next_message(connection))
    missed = next(m for m in messages if m["type"] == "missed")
    received = [m for m in messages if m["type"] == "record"]
    for _ in range(600):
        message = await next_message(connection)
        if message["type"] == "record":
            received.append(message)
        if len(received) + missed["count"] >= 2000:
            break
    assert missed["count"] > 0 and len(received) + missed["count"] == 2000
    connection.close()


@pytest.mark.gen_test
async def test_closing_the_socket_unsubscribes_it(http_server, base_url, services):
    before = services.request_log.subscriber_count
    connection = await connect(base_url, {"Authorization": f"Bearer {services.admin_token}"})
    await eventually(lambda: services.request_log.subscriber_count == before + 1, what="the socket subscribed")
    connection.close()
    await eventually(lambda: services.request_log.subscriber_count == before, what="subscriber count back to before")
