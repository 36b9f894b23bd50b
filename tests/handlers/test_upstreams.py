"""Several upstreams through the server's HTTP: an UPSTREAMS_FILE naming two fake upstreams, every completion
endpoint and the model list routed alike, the record and the metrics saying which upstream answered, and the status
the dashboard shows."""

from __future__ import annotations

import dataclasses
import json

import pytest
from tornado.httpclient import AsyncHTTPClient

from fakes.client_shapes import agora_engine
from fakes.upstream import FakeUpstream
from tests.client import RawClient, eventually, json_of, post, stream
from tests.conftest import SERVER_KEY
from tests.handlers.admin_client import bearer

ASK = {"stream": True, "messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture
def backup(io_loop):
    fake = FakeUpstream().start()
    yield fake
    io_loop.run_sync(fake.stop)


@pytest.fixture
def settings(settings, fake_upstream, backup, tmp_path):
    """The server's settings with two upstreams: `primary` (the usual fake) and `backup`, both with the server's key."""
    path = tmp_path / "upstreams.json"
    upstreams = [
        {"name": "primary", "base_url": fake_upstream.base_url, "api_key": SERVER_KEY},
        {"name": "backup", "base_url": backup.base_url, "api_key": SERVER_KEY, "models": {"*": "backup-model"}},
    ]
    path.write_text(json.dumps({"upstreams": upstreams}))
    return dataclasses.replace(settings, base_url=None, api_key=None, upstreams_file=str(path))


def last_record(services) -> dict:
    return services.request_log.recent()[-1]


@pytest.mark.gen_test
async def test_every_endpoint_falls_back_to_the_next_upstream(http_server, base_url, services, fake_upstream, backup):
    fake_upstream.behaviour.status = 503
    for path in ("/chat/completions", "/rag/chat/completions"):
        result = await stream(base_url, path, agora_engine())
        assert result.events[-1] == "[DONE]" and "word0" in result.text
        record = last_record(services)
        assert record["upstream"] == "backup" and [a["outcome"] for a in record["attempts"]] == ["failed", "won"]
    assert backup.last.body["model"] == "backup-model"  # the backup's own name for the model
    completion = json_of(await post(base_url, "/v1/chat/completions", {**ASK, "stream": False}))
    assert completion["choices"][0]["message"]["content"].startswith("word0")
    models = json_of(await AsyncHTTPClient().fetch(base_url + "/v1/models"))
    assert models["data"][0]["id"] == "fake-model"


@pytest.mark.settings(hedge_after_ms="50", hedge_budget=1.0)
@pytest.mark.gen_test
async def test_a_hedged_request_says_so_in_its_record_and_the_metrics(
    http_server, base_url, services, fake_upstream, backup
):
    fake_upstream.behaviour.first_chunk_delay = 3.0
    result = await stream(base_url, "/chat/completions", ASK)
    assert result.events[-1] == "[DONE]"
    record = last_record(services)
    assert record["upstream"] == "backup" and record["hedged"] is True
    assert sorted(a["outcome"] for a in record["attempts"]) == ["cancelled", "won"]
    await eventually(lambda: fake_upstream.last.closed.is_set(), what="the loser's request closed")
    metrics = (await AsyncHTTPClient().fetch(base_url + "/metrics")).body.decode()
    assert 'llm_upstream_hedges_won_total{upstream="backup"} 1.0' in metrics
    assert 'llm_upstream_cancelled_total{upstream="primary"} 1.0' in metrics
    assert 'llm_upstream_attempts_total{upstream="primary"} 1.0' in metrics
    assert 'llm_upstream_first_chunk_seconds_count{upstream="backup"} 1.0' in metrics


@pytest.mark.settings(upstream_skip_after=1, upstream_skip_seconds=60)
@pytest.mark.gen_test
async def test_a_failing_upstream_is_shown_skipped_in_the_status_and_the_metrics(
    http_server, base_url, services, fake_upstream
):
    fake_upstream.behaviour.status = 500
    await stream(base_url, "/chat/completions", ASK)
    status = json_of(await bearer(base_url, services.admin_token).fetch("GET", "/admin/api/status"))
    upstreams = {u["name"]: u for u in status["upstream"]["upstreams"]}
    assert upstreams["primary"]["state"] == "skipped" and upstreams["backup"]["state"] == "healthy"
    assert status["upstream"]["hedging"] == "off" and SERVER_KEY not in json.dumps(status)
    metrics = (await AsyncHTTPClient().fetch(base_url + "/metrics")).body.decode()
    assert 'llm_upstream_state{state="skipped",upstream="primary"} 1.0' in metrics
    assert 'llm_upstream_failures_total{reason="upstream_error",upstream="primary"} 1.0' in metrics
    served = await stream(base_url, "/chat/completions", ASK)
    assert served.events[-1] == "[DONE]" and [a["upstream"] for a in last_record(services)["attempts"]] == ["backup"]


@pytest.mark.settings(hedge_after_ms="50", hedge_budget=1.0)
@pytest.mark.gen_test
async def test_a_caller_who_leaves_mid_race_cancels_every_attempt(http_server, base_url, fake_upstream, backup):
    fake_upstream.behaviour.hang = backup.behaviour.hang = True
    client = RawClient(base_url)
    await client.send("/chat/completions", ASK)
    await eventually(lambda: backup.requests, what="the hedge began")
    client.close()
    await eventually(lambda: fake_upstream.last.closed.is_set() and backup.last.closed.is_set(), timeout=5,
                     what="both upstream requests closed")  # fmt: skip
