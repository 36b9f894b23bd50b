"""Operations: the stream cap, Prometheus metrics, readiness and liveness, and the durable request history's API."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.client import RawClient, eventually, json_of, post, stream
from tests.handlers.admin_client import bearer

CHAT = {"messages": [{"role": "user", "content": "Hello there"}]}


def sample(metrics: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = re.findall(pattern, metrics, re.M)
    return float(found[0]) if found else 0.0


async def metrics_of(base_url: str) -> str:
    response = await AsyncHTTPClient().fetch(base_url + "/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.body.decode()


@pytest.mark.settings(max_streams=2)
@pytest.mark.gen_test(timeout=30)
async def test_past_max_streams_a_request_gets_an_immediate_503_with_retry_after(
    http_server, base_url, fake_upstream, services
):
    fake_upstream.behaviour.hang = True
    held = [RawClient(base_url) for _ in range(2)]
    for client in held:
        await client.send("/chat/completions", {**CHAT, "stream": True})
    await eventually(lambda: services.request_log.in_flight >= 2, what="2 requests in flight")
    refused = await post(base_url, "/chat/completions", {**CHAT, "stream": True})
    assert refused.code == 503 and refused.headers["Retry-After"] == "1"
    error = json_of(refused)["error"]
    assert error["code"] == "overloaded" and "limit of 2" in error["message"]
    assert services.request_log.recent()[-1]["error_code"] == "overloaded"  # it is in the log too
    assert sample(await metrics_of(base_url), "llm_requests_rejected_total", endpoint="chat") == 1.0
    for client in held:
        client.close()
    await eventually(lambda: services.request_log.in_flight == 0, what="every request finished")
    fake_upstream.behaviour.hang = False
    assert (await stream(base_url, "/chat/completions", CHAT)).events[-1] == "[DONE]"  # room again


@pytest.mark.settings(max_streams=2)
@pytest.mark.gen_test(timeout=30)
async def test_requests_whose_bodies_are_still_arriving_hold_their_place_under_max_streams(
    http_server, base_url, fake_upstream, services
):
    """A burst: every request admitted before any body was read would pass the cap at once, and those past the
    upstream pool would then wait for a connection with no byte sent."""
    arriving = [RawClient(base_url) for _ in range(2)]
    for client in arriving:
        await client.send("/chat/completions", {**CHAT, "stream": True}, withhold=5)
    await eventually(lambda: services.request_log.in_flight == 2)
    refused = await post(base_url, "/chat/completions", {**CHAT, "stream": True})
    assert refused.code == 503 and json_of(refused)["error"]["code"] == "overloaded"
    for client in arriving:
        await client.send_rest()
        assert b"data: [DONE]" in await client.read_until(b"data: [DONE]")
        client.close()
    await eventually(lambda: services.request_log.in_flight == 0)

    leaving = RawClient(base_url)  # a client that goes away before its body is in gives its place back
    await leaving.send("/chat/completions", {**CHAT, "stream": True}, withhold=5)
    await eventually(lambda: services.request_log.in_flight == 1)
    leaving.close()
    await eventually(lambda: services.request_log.in_flight == 0)
    assert services.request_log.recent()[-1]["outcome"] == "cancelled"
    assert (await stream(base_url, "/chat/completions", CHAT)).events[-1] == "[DONE]"


@pytest.mark.gen_test
async def test_metrics_count_requests_latencies_retrieval_and_upstream_errors(http_server, base_url, fake_upstream):
    await stream(base_url, "/chat/completions", CHAT)
    await stream(base_url, "/rag/chat/completions", {"messages": [{"role": "user", "content": "How do I connect?"}]})
    fake_upstream.behaviour.status = 500
    failed = await stream(base_url, "/chat/completions", CHAT)
    assert failed.response.code == 502
    metrics = await metrics_of(base_url)
    assert sample(metrics, "llm_requests_total", endpoint="chat", outcome="ok") == 1.0
    assert sample(metrics, "llm_requests_total", endpoint="chat", outcome="error") == 1.0
    assert sample(metrics, "llm_requests_total", endpoint="rag", outcome="ok") == 1.0
    assert sample(metrics, "llm_first_chunk_seconds_count", endpoint="chat") == 1.0
    assert sample(metrics, "llm_request_seconds_count", endpoint="rag") == 1.0
    assert sample(metrics, "llm_retrieval_seconds_count") == 1.0
    assert (
        sum(float(v) for v in re.findall(r"^llm_upstream_errors_total\{kind=\"upstream\S*\"\} (\S+)$", metrics, re.M))
        == 1.0
    )
    assert sample(metrics, "llm_streams_in_flight") == 0.0


@pytest.mark.gen_test
async def test_liveness_and_readiness_answer_get_and_head(http_server, base_url, services):
    client = AsyncHTTPClient()
    for path in ("/healthz", "/readyz"):
        head = await client.fetch(base_url + path, method="HEAD")
        get = await client.fetch(base_url + path)
        assert head.code == 200 and head.body == b""
        for name in ("Content-Type", "Content-Length"):  # HEAD: GET's headers without the body
            assert head.headers[name] == get.headers[name], name
    ready = json.loads((await client.fetch(base_url + "/readyz")).body)
    assert ready == {"status": "ready", "checks": {"knowledge_base": True, "embedding_model": True, "history": True}}


@pytest.mark.settings(embeddings="endpoint", embeddings_base_url="http://127.0.0.1:9/v1")
@pytest.mark.gen_test
async def test_not_ready_until_the_embedding_model_is_ready(http_server, base_url, services):
    response = await AsyncHTTPClient().fetch(base_url + "/readyz", raise_error=False)
    assert response.code == 503
    assert json.loads(response.body)["checks"]["embedding_model"] is False
    head = await AsyncHTTPClient().fetch(base_url + "/readyz", method="HEAD", raise_error=False)
    assert head.code == 503
    assert (await AsyncHTTPClient().fetch(base_url + "/healthz")).code == 200  # alive all the same


async def history_of(base_url: str, token: str, query: str = "") -> dict:
    response = await bearer(base_url, token).fetch("GET", "/admin/api/history" + query)
    assert response.code == 200, response.body
    return json.loads(response.body)


@pytest.mark.gen_test
async def test_the_history_pages_filters_and_opens_one_request(http_server, base_url, fake_upstream, services):
    for n in range(4):
        await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": f"chat number {n}"}]})
    await stream(base_url, "/rag/chat/completions", {"messages": [{"role": "user", "content": "How do I connect?"}]})
    fake_upstream.behaviour.status = 500
    await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "this one fails"}]})
    token = services.admin_token  # no flush: what has just ended is in the history the API reads

    everything = (await history_of(base_url, token))["records"]
    assert [r["last_user_message"] for r in everything[:2]] == ["this one fails", "How do I connect?"]
    assert len(everything) == 6 and everything[0]["instance"] == services.request_log.instance
    first_page = await history_of(base_url, token, "?limit=4")
    second_page = await history_of(base_url, token, f"?limit=4&before={first_page['before']}")
    keys = [r["key"] for r in first_page["records"] + second_page["records"]]
    assert keys == [r["key"] for r in everything]  # pages follow one another, nothing twice or skipped
    assert [r["endpoint"] for r in (await history_of(base_url, token, "?endpoint=rag"))["records"]] == ["rag"]
    assert [r["outcome"] for r in (await history_of(base_url, token, "?outcome=error"))["records"]] == ["error"]
    assert len((await history_of(base_url, token, "?q=CHAT%20NUMBER"))["records"]) == 4  # any case
    future = time.time() + 3600
    assert (await history_of(base_url, token, f"?since={future}"))["records"] == []
    assert len((await history_of(base_url, token, f"?until={future}"))["records"]) == 6

    rag = everything[1]
    record = json.loads((await bearer(base_url, token).fetch("GET", f"/admin/api/history/{rag['key']}")).body)
    assert record["messages_logged"] == [{"role": "user", "text": "How do I connect?"}]
    assert record["retrieval"]["injected"] and len(record["retrieval"]["injected"]) == len(record["retrieval"]["hits"])
    assert record["reply"].startswith("word0") and record["first_chunk_ms"] > 0 and record["total_ms"] > 0


@pytest.mark.settings(history_records=5, history_days=1.0)
@pytest.mark.gen_test
async def test_the_history_holds_at_most_its_records_and_days_at_any_time(http_server, base_url, services):
    await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "the first"}]})
    first = (await history_of(base_url, services.admin_token))["records"][0]
    old = {**services.history.get(first["key"]), "key": "from-two-days-ago", "started_at": time.time() - 2 * 86400}
    services.history.add(old)
    for n in range(9):
        await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": f"turn {n}"}]})
    page = await history_of(base_url, services.admin_token, "?limit=50")
    assert [r["last_user_message"] for r in page["records"]] == [f"turn {n}" for n in (8, 7, 6, 5, 4)]
    assert page["before"] is None  # fewer than asked for: there is no older page


@pytest.mark.gen_test
async def test_history_requests_that_cannot_be_answered_get_the_error_shape(http_server, base_url, services):
    admin = bearer(base_url, services.admin_token)
    missing = await admin.fetch("GET", "/admin/api/history/no-such-key")
    assert missing.code == 404 and json.loads(missing.body)["error"]["param"] == "key"
    for query in ("?before=yesterday", "?since=nan-ish", "?limit=many"):
        refused = await admin.fetch("GET", "/admin/api/history" + query)
        assert refused.code == 400 and json.loads(refused.body)["error"]["type"] == "invalid_request_error", query
    anonymous = await AsyncHTTPClient().fetch(base_url + "/admin/api/history", raise_error=False)
    assert anonymous.code == 401


GARBAGE = b"this is not a database, whatever its name says " * 100


@pytest.fixture
def damaged_history(settings) -> Path:
    """The history file damaged before the server starts (garbage where the database was)."""
    os.makedirs(settings.data_dir)
    path = Path(settings.data_dir) / "history.sqlite3"
    path.write_bytes(GARBAGE)
    return path


@pytest.mark.gen_test
async def test_a_damaged_history_is_set_aside_and_a_new_one_kept(damaged_history, http_server, base_url, services):
    (aside,) = damaged_history.parent.glob("history.sqlite3.damaged-*")
    assert aside.read_bytes() == GARBAGE  # kept for whoever wants to look, never deleted
    await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "after the damage"}]})
    records = (await history_of(base_url, services.admin_token))["records"]
    assert [r["last_user_message"] for r in records] == ["after the damage"]
    ready = json.loads((await AsyncHTTPClient().fetch(base_url + "/readyz")).body)
    assert ready["checks"]["history"] is True


@pytest.fixture
def embedding_cache_is_a_folder(settings) -> Path:
    folder = Path(settings.data_dir) / "embeddings.sqlite3"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("someone's notes")
    return folder


@pytest.mark.settings(embeddings="endpoint", embeddings_base_url="http://127.0.0.1:9/v1")
@pytest.mark.gen_test
async def test_an_embedding_cache_that_is_a_folder_is_set_aside(
    embedding_cache_is_a_folder, http_server, base_url, services
):
    (aside,) = embedding_cache_is_a_folder.parent.glob("embeddings.sqlite3.damaged-*")
    assert (aside / "notes.txt").read_text() == "someone's notes"  # renamed whole, nothing in it lost
    assert embedding_cache_is_a_folder.is_file()  # a new cache in its place
    assert (await AsyncHTTPClient().fetch(base_url + "/healthz")).code == 200
