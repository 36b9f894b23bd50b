"""POST /audio/chat/completions: the active clip as a transcript, then 16 kHz PCM16 in base64 chunks of 40 ms on
average (their byte counts multiples of 6, so the joined base64 of a whole stream decodes to the whole clip).

This is the shape Agora's engine plays instead of running text-to-speech (output_modalities ["audio"]).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time

from llmserver.audio.library import Clip
from llmserver.protocol.chat_request import ChatRequest
from llmserver.protocol.chunks import ChunkFactory, usage
from llmserver.protocol.sse import dumps
from llmserver.request_log import AudioDetails

from .completions import CompletionEndpoint

CHUNK_SECONDS = 0.04
REALTIME_HEAD_START = 5  # chunks sent at once: the first 200 ms, so playback starts without a gap


def pace_interval(pace: str) -> float | None:
    """Seconds between chunks after the head start; None for burst (as fast as the connection takes it)."""
    if pace == "burst":
        return None
    if pace == "realtime":
        return CHUNK_SECONDS
    return float(pace) / 1000


class AudioCompletionsHandler(CompletionEndpoint):
    endpoint = "audio"
    needs_upstream_key = False

    async def respond(self, chat: ChatRequest, api_key: str | None) -> None:
        # The bytes this response plays, whatever happens to the clip meanwhile.
        clip = self.services.audio_library.clip_or_simulated()
        self.record.audio = AudioDetails(
            clip=None if clip.simulated else clip.name, duration=round(clip.duration, 3), simulated=clip.simulated
        )
        self.record.add_reply(clip.transcript)
        factory = ChunkFactory(chat.model)
        audio_id = "audio_" + secrets.token_hex(12)
        if chat.stream:
            await self._stream(clip, factory, audio_id, chat.include_usage)
        else:
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
            self.record.mark_chunk()
            self.write_json(factory.completion(message, usage(0, len(clip.chunks_base64))))

    async def _stream(self, clip: Clip, factory: ChunkFactory, audio_id: str, include_usage: bool) -> None:
        events, record = self.events, self.record
        transcript = factory.chunk({"role": "assistant", "audio": {"id": audio_id, "transcript": clip.transcript}})
        # Every audio chunk is the same JSON but for its data: serialise it once and splice the base64 in. The
        # data is the last string of the chunk, so its last empty occurrence is the one (whatever the model says).
        template = dumps(factory.chunk({"audio": {"id": audio_id, "data": ""}}))
        split_at = template.rindex(b'"data":""') + len(b'"data":"')
        head, tail = template[:split_at], template[split_at:]
        data = clip.chunks_base64
        # The transcript and the first 200 ms leave in one write, so playback can start at once.
        first = [dumps(transcript), *(head + part + tail for part in data[:REALTIME_HEAD_START])]
        await events.send_many(first)
        record.mark_chunk(len(first))
        interval = pace_interval(self.config.audio_pace)
        rest = data[REALTIME_HEAD_START:]
        if interval is None:
            await events.send_spliced(head, rest, tail)
            record.mark_chunk(len(rest))
        else:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for number, part in enumerate(rest, start=1):
                # An absolute schedule: a late wake-up does not push every later chunk back.
                delay = start + number * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await events.send(head + part + tail)
                record.mark_chunk()
        await events.send_json(factory.chunk({}, finish_reason="stop"))
        record.mark_chunk()
        if include_usage:
            await events.send_json(factory.usage_chunk(usage(0, len(data))))
            record.mark_chunk()
        await events.done()


default_handlers = [
    (r"/(?:v1/)?audio/chat/completions", AudioCompletionsHandler),
]
