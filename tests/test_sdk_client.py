"""What users do: the official openai SDK as the client of the server."""

from __future__ import annotations

import base64

import openai
import pytest

from tests.conftest import SERVER_KEY


@pytest.mark.gen_test
async def test_openai_sdk_streams_and_completes_through_the_server(http_server, base_url, fake_upstream):
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-anything", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            if chunk.usage:
                usage = chunk.usage
        assert "".join(pieces) == "word0 word1 word2 word3 word4 "
        assert usage is not None and usage.total_tokens > 0

        completion = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
        assert completion.choices[0].message.content.startswith("word0")

        models = await client.models.list()
        assert [m.id async for m in models] == ["fake-model"]
        assert fake_upstream.last.headers["Authorization"] == f"Bearer {SERVER_KEY}"
    finally:
        await client.close()


@pytest.mark.gen_test
async def test_openai_sdk_raises_api_errors_from_the_server(http_server, base_url, fake_upstream):
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-anything", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="m", messages=[])
        assert bad.value.code == "empty_array"

        fake_upstream.behaviour.cut_after = 2
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        with pytest.raises(openai.APIError, match="stream broke"):
            async for _ in stream:
                pass
    finally:
        await client.close()


@pytest.mark.settings(audio_pace="burst")
@pytest.mark.gen_test
async def test_the_sdks_accumulating_stream_helper_decodes_the_whole_clip(http_server, base_url, services):
    """`chat.completions.stream().get_final_completion()` joins the base64 strings of every chunk before decoding:
    that works only if no chunk but the last carries padding (each a multiple of 3 bytes; of 6 for whole samples)."""
    clip = services.audio_library.active_clip()
    client = openai.AsyncOpenAI(base_url=base_url + "/v1/audio", api_key="sk-anything", max_retries=0)
    try:
        async with client.chat.completions.stream(
            model="gpt-4o-audio-preview",
            messages=[{"role": "user", "content": "Hi"}],
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "pcm16"},
        ) as stream:
            final = await stream.get_final_completion()
    finally:
        await client.close()
    audio = final.choices[0].message.audio
    assert base64.b64decode(audio.data) == clip.pcm and audio.transcript == clip.transcript
