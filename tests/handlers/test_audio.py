"""POST /audio/chat/completions: the active clip streamed as transcript plus 16 kHz PCM16 chunks."""

from __future__ import annotations

import base64
import json
import time

import pytest

from llmserver.audio.codec import CHUNK_PATTERN, SIMULATED_TRANSCRIPT, chunk_pcm
from tests.audio_files import encode, tone
from tests.client import RawClient, eventually, json_of, post, stream

ASK = {"messages": [{"role": "user", "content": "Say the recorded reply."}], "modalities": ["text", "audio"]}


def audio_of(chunks: list[dict]) -> tuple[str, str, list[bytes]]:
    """(audio id, transcript, the decoded data of each chunk)."""
    first = chunks[0]["choices"][0]["delta"]["audio"]
    data = [base64.b64decode(c["choices"][0]["delta"]["audio"]["data"], validate=True) for c in chunks[1:-1]]
    return first["id"], first["transcript"], data


@pytest.mark.settings(audio_pace="burst")
@pytest.mark.gen_test
async def test_stream_round_trips_the_clip_exactly(http_server, base_url, services):
    clip = services.audio_library.active_clip()
    result = await stream(base_url, "/audio/chat/completions", {**ASK, "model": 'agent-voice "data":""'})
    assert result.response.headers["Content-Type"].startswith("text/event-stream")
    chunks = result.chunks
    audio_id, transcript, data = audio_of(chunks)
    assert b"".join(data) == clip.pcm
    # 40 ms on average, each a multiple of 6 bytes: whole samples, and base64 without padding inside the stream.
    assert [len(piece) for piece in data] == [len(piece) for piece in chunk_pcm(clip.pcm)]
    assert all(len(piece) % 6 == 0 and len(piece) in CHUNK_PATTERN for piece in data[:-1])
    assert sum(CHUNK_PATTERN) == 3 * 1280 and 0 < len(data[-1]) < max(CHUNK_PATTERN) + 6
    assert transcript == clip.transcript and audio_id.startswith("audio_")
    first_delta = chunks[0]["choices"][0]["delta"]
    assert first_delta["role"] == "assistant" and "data" not in first_delta["audio"]
    for chunk in chunks[1:-1]:
        assert chunk["choices"][0]["delta"]["audio"]["id"] == audio_id
        assert set(chunk["choices"][0]["delta"]) == {"audio"}
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == 'agent-voice "data":""'
        assert set(chunk["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"}
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and {c["created"] for c in chunks} == {chunks[0]["created"]}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert result.events[-1] == "[DONE]"
    record = services.request_log.recent()[-1]
    assert record["endpoint"] == "audio" and record["chunks"] == len(chunks)
    assert record["audio"] == {"clip": "file", "duration": round(clip.duration, 3), "simulated": False}


@pytest.mark.gen_test
async def test_non_streaming_is_openais_audio_message(http_server, base_url, services):
    clip = services.audio_library.active_clip()
    response = await post(base_url, "/v1/audio/chat/completions", ASK)
    completion = json_of(response)
    assert completion["object"] == "chat.completion"
    message = completion["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"] is None
    audio = message["audio"]
    assert set(audio) == {"id", "data", "transcript", "expires_at"}
    assert base64.b64decode(audio["data"]) == clip.pcm and audio["transcript"] == clip.transcript
    assert audio["expires_at"] > time.time()
    assert completion["choices"][0]["finish_reason"] == "stop"


@pytest.mark.settings(audio_pace="burst")
@pytest.mark.gen_test
async def test_include_usage_adds_the_usage_chunk(http_server, base_url):
    result = await stream(base_url, "/audio/chat/completions", {**ASK, "stream_options": {"include_usage": True}})
    assert result.chunks[-1]["choices"] == [] and result.chunks[-1]["usage"]["completion_tokens"] > 0
    assert result.chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def _arrival_times(base_url: str) -> list[float]:
    """Times at which each audio data chunk arrives, read off a raw socket."""
    client = RawClient(base_url)
    started = time.perf_counter()
    await client.send("/audio/chat/completions", {**ASK, "stream": True})
    arrivals, seen, buffer = [], 0, b""
    while b"data: [DONE]" not in buffer:
        data = await client.read_some()
        assert data, "the server closed the stream early"
        buffer += data
        count = buffer.count(b'"data":"')
        arrivals += [time.perf_counter() - started] * (count - seen)
        seen = count
    client.close()
    return arrivals


@pytest.mark.gen_test(timeout=60)
async def test_realtime_pacing_sends_200ms_at_once_then_a_chunk_every_40ms(http_server, base_url, services):
    services.audio_library.add("second", encode(tone(1.0, 16000), 16000), "One second.", activate=True)
    arrivals = await _arrival_times(base_url)
    assert len(arrivals) == 25
    assert arrivals[4] - arrivals[0] < 0.02  # the first 200 ms leave together
    # No chunk may come early: after the first five, chunk n is due 40 ms x (n - 4) after the start.
    first = arrivals[0]
    for number, arrived in enumerate(arrivals[5:], start=5):
        assert arrived - first >= (number - 4) * 0.04 - 0.004, f"chunk {number} came early"
    # Over the whole clip the pace holds: 20 intervals of 40 ms after the head start (tolerant of a loaded machine).
    assert 0.79 <= arrivals[-1] - first <= 0.8 + 0.4


@pytest.mark.settings(audio_pace="10")
@pytest.mark.gen_test(timeout=60)
async def test_a_fixed_interval_in_ms_sets_the_pace(http_server, base_url, services):
    services.audio_library.add("second", encode(tone(1.0, 16000), 16000), "One second.", activate=True)
    arrivals = await _arrival_times(base_url)
    assert 0.2 - 0.004 <= arrivals[-1] - arrivals[0] < 0.79  # 20 intervals of 10 ms, far quicker than realtime


@pytest.mark.gen_test(timeout=60)
async def test_a_disconnect_stops_sending_at_once(http_server, base_url, services):
    client = RawClient(base_url)
    await client.send("/audio/chat/completions", {**ASK, "stream": True})
    await client.read_until(b'"data":"')
    client.close()
    await eventually(lambda: services.request_log.in_flight == 0, what="every request finished")
    record = services.request_log.recent()[-1]
    assert record["outcome"] == "cancelled"
    total = len(chunk_pcm(services.audio_library.active_clip().pcm))
    assert record["chunks"] < 10 < total  # stopped within the head start, not after the whole clip
    assert record["total_ms"] < 1000 * services.audio_library.active_clip().duration


@pytest.mark.gen_test(timeout=60)
async def test_a_clip_replaced_during_a_stream_keeps_playing_the_original(http_server, base_url, services):
    library = services.audio_library
    original = library.add("voice", encode(tone(1.0, 16000, frequency=300), 16000), "Original.", activate=True)
    client = RawClient(base_url)
    await client.send("/audio/chat/completions", {**ASK, "stream": True})
    buffer = await client.read_until(b'"data":"')
    library.add("voice", encode(tone(2.0, 16000, frequency=900), 16000), "Replacement.")
    while b"data: [DONE]" not in buffer:
        buffer += await client.read_some()
    client.close()
    body = buffer.split(b"\r\n\r\n", 1)[1]
    chunks = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            chunks.append(json.loads(line[6:]))
    _, transcript, data = audio_of(chunks)
    assert transcript == "Original." and b"".join(data) == original.pcm
    again = await stream(base_url, "/audio/chat/completions", ASK)
    assert audio_of(again.chunks)[1] == "Replacement."


@pytest.mark.settings(audio_pace="burst")
@pytest.mark.gen_test
async def test_with_no_clip_a_simulated_reply_is_streamed_and_logged(http_server, base_url, services, tmp_path):
    services.audio_library.delete("file")
    result = await stream(base_url, "/audio/chat/completions", ASK)
    _, transcript, data = audio_of(result.chunks)
    assert transcript == SIMULATED_TRANSCRIPT and len(b"".join(data)) == 32000
    assert services.request_log.recent()[-1]["audio"] == {"clip": None, "duration": 1.0, "simulated": True}


@pytest.mark.settings(api_key=None, audio_pace="burst")
@pytest.mark.gen_test
async def test_no_upstream_key_is_needed_but_api_keys_still_apply(http_server, base_url, services):
    result = await stream(base_url, "/audio/chat/completions", ASK)
    assert result.response.code == 200
    services.settings = services.settings.replace(api_keys=("client-key",))
    refused = await post(base_url, "/audio/chat/completions", ASK)
    assert refused.code == 401 and json_of(refused)["error"]["code"] == "invalid_api_key"


@pytest.mark.gen_test
async def test_bad_input_gets_the_same_errors(http_server, base_url):
    response = await post(base_url, "/audio/chat/completions", None, raw=b"[]")
    assert response.code == 400 and json_of(response)["error"]["code"] == "invalid_body"
