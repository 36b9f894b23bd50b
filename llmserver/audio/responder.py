"""The audio endpoint's answer: the active clip as a transcript, then 16 kHz PCM16 in base64 chunks of 40 ms on
average (their byte counts multiples of 6, so the joined base64 of a whole stream decodes to the whole clip).

This is the shape Agora's engine plays instead of running text-to-speech (output_modalities ["audio"]).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from typing import Any, Protocol

from ..protocol.chat_request import ChatRequest
from ..protocol.chunks import ChunkFactory, usage
from ..protocol.sse import dumps
from ..request_log import AudioDetails
from .library import AudioLibrary, Clip

CHUNK_SECONDS = 0.04
REALTIME_HEAD_START = 5  # chunks sent at once: the first 200 ms, so playback starts without a gap


class ClipSink(Protocol):
    async def send_chunk(self, data: dict[str, Any], raw: bytes | None = None) -> None: ...

    async def send_many(self, payloads: list[bytes]) -> None: ...

    async def send_spliced(self, head: bytes, parts: list[bytes], tail: bytes) -> None: ...

    async def done(self) -> None: ...


class ClipTrace(Protocol):
    def played(self, details: AudioDetails) -> None: ...

    def said(self, text: str) -> None: ...


def pace_interval(pace: str) -> float | None:
    """Seconds between chunks after the head start; None for burst (as fast as the connection takes it)."""
    if pace == "burst":
        return None
    if pace == "realtime":
        return CHUNK_SECONDS
    return float(pace) / 1000


class ClipResponder:
    def __init__(self, library: AudioLibrary, pace: str) -> None:
        self.library = library
        self.interval = pace_interval(pace)

    async def answer(self, chat: ChatRequest, sink: ClipSink, trace: ClipTrace) -> dict[str, Any] | None:
        """Streams the clip to `sink`, or (`stream: false`) returns it as one completion."""
        clip = self.library.clip_or_simulated()  # the bytes this response plays, whatever happens to it meanwhile
        trace.played(
            AudioDetails(
                clip=None if clip.simulated else clip.name, duration=round(clip.duration, 3), simulated=clip.simulated
            )
        )
        trace.said(clip.transcript)
        factory = ChunkFactory(chat.model)
        audio_id = "audio_" + secrets.token_hex(12)
        if chat.stream:
            await self._stream(clip, factory, audio_id, chat.include_usage, sink)
            return None
        message = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "audio": {
                "id": audio_id,
                "data": base64.b64encode(clip.pcm).decode(),
                "transcript": clip.transcript,
                "expires_at": int(time.time()) + 3600,
            },
        }
        return factory.completion(message, usage(0, len(clip.chunks_base64)))

    async def _stream(
        self, clip: Clip, factory: ChunkFactory, audio_id: str, include_usage: bool, sink: ClipSink
    ) -> None:
        transcript = factory.chunk({"role": "assistant", "audio": {"id": audio_id, "transcript": clip.transcript}})
        # Every audio chunk is the same JSON but for its data: serialise it once and splice the base64 in. The
        # data is the last string of the chunk, so its last empty occurrence is the one (whatever the model says).
        template = dumps(factory.chunk({"audio": {"id": audio_id, "data": ""}}))
        split_at = template.rindex(b'"data":""') + len(b'"data":"')
        head, tail = template[:split_at], template[split_at:]
        data = clip.chunks_base64
        # The transcript and the first 200 ms leave in one write, so playback can start at once.
        await sink.send_many([dumps(transcript), *(head + part + tail for part in data[:REALTIME_HEAD_START])])
        rest = data[REALTIME_HEAD_START:]
        if self.interval is None:
            await sink.send_spliced(head, rest, tail)
        else:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for number, part in enumerate(rest, start=1):
                # An absolute schedule: a late wake-up does not push every later chunk back.
                delay = start + number * self.interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await sink.send_many([head + part + tail])
        await sink.send_chunk(factory.chunk({}, finish_reason="stop"))
        if include_usage:
            await sink.send_chunk(factory.usage_chunk(usage(0, len(data))))
        await sink.done()
