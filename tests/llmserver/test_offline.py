"""The offline responder: a fresh checkout with no key and no network still answers, in the real chunk format."""

from __future__ import annotations

import pytest

from tests.client import json_of, post, stream


@pytest.mark.settings(upstream="offline", api_key=None, base_url=None)
@pytest.mark.gen_test
async def test_offline_streams_a_deterministic_reply_word_by_word(http_server, base_url):
    body = {"messages": [{"role": "user", "content": "What can you do?"}], "stream_options": {"include_usage": True}}
    first = await stream(base_url, "/chat/completions", body)
    second = await stream(base_url, "/chat/completions", body)
    assert first.text == second.text
    assert "offline responder" in first.text and "What can you do?" in first.text
    chunks = first.chunks
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len(chunks) > 10 and {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert {c["created"] for c in chunks} == {chunks[0]["created"]}
    for chunk in chunks[:-1]:
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "gpt-4o-mini"  # the one asked for
        assert set(chunk["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert first.events[-1] == "[DONE]"


@pytest.mark.settings(upstream="offline", api_key=None, base_url=None)
@pytest.mark.gen_test
async def test_offline_non_streaming_completion(http_server, base_url):
    response = await post(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "ping"}]})
    completion = json_of(response)
    assert completion["object"] == "chat.completion"
    assert '"ping"' in completion["choices"][0]["message"]["content"]
    usage = completion["usage"]
    assert usage["completion_tokens"] > 10
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
