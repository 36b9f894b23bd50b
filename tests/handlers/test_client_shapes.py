"""Every real client's request shape (fakes/client_shapes.py) on every completion endpoint, streamed and not,
offline and relayed: each gets a whole answer, never an error. Every voice client sends system messages first, so
a defect there (the offline responder failed every such request) breaks the first call a new user makes."""

from __future__ import annotations

import pytest

from fakes.client_shapes import CLIENTS
from tests.client import json_of, post, stream

ENDPOINTS = ("/chat/completions", "/v1/rag/chat/completions", "/audio/chat/completions")
ENGINE_FIELDS = {"turn_id", "timestamp", "interruptable", "context"}


def check_stream(result, body, endpoint: str) -> None:
    assert result.response.code == 200, result.raw
    assert result.events[-1] == "[DONE]"
    assert not [c for c in result.chunks if "error" in c], result.raw
    ended = [c for c in result.chunks if c.get("choices") and c["choices"][0].get("finish_reason")]
    assert len(ended) == 1 and ended[0]["choices"][0]["finish_reason"] == "stop"
    if endpoint.startswith("/audio"):
        assert any(c["choices"] and "audio" in c["choices"][0]["delta"] for c in result.chunks)
    else:
        assert result.text.strip()
    usage = [c for c in result.chunks if c.get("usage")]
    if (body.get("stream_options") or {}).get("include_usage"):
        assert len(usage) == 1 and usage[0]["choices"] == [] and usage[0] is result.chunks[-1]


def check_completion(response, endpoint: str) -> None:
    assert response.code == 200, response.body
    completion = json_of(response)
    assert completion["object"] == "chat.completion"
    message = completion["choices"][0]["message"]
    assert message["role"] == "assistant"
    if endpoint.startswith("/audio"):
        assert message["audio"]["data"] and message["audio"]["transcript"]
    else:
        assert message["content"].strip()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.settings(upstream="offline", server_tools=("chat", "rag"), audio_pace="burst")
@pytest.mark.gen_test
async def test_offline_answers_every_client_shape(http_server, base_url, client, endpoint):
    body = CLIENTS[client]()
    check_stream(await stream(base_url, endpoint, body), body, endpoint)
    check_completion(await post(base_url, endpoint, {**CLIENTS[client](), "stream": False}), endpoint)


@pytest.mark.parametrize("endpoint", ENDPOINTS[:2])
@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.gen_test
async def test_relayed_answers_every_client_shape(http_server, base_url, fake_upstream, client, endpoint):
    body = CLIENTS[client]()
    check_stream(await stream(base_url, endpoint, body), body, endpoint)
    sent = fake_upstream.last.body
    assert not ENGINE_FIELDS & set(sent), "the Agora engine's fields went upstream"
    assert not any({"turn_id", "timestamp", "metadata"} & set(m) for m in sent["messages"])
    assert [m["role"] for m in sent["messages"]][: len(body["messages"])].count("system") >= 1
    check_completion(await post(base_url, endpoint, {**CLIENTS[client](), "stream": False}), endpoint)
