"""/admin/api/audio: the audio library's clips (upload, delete, activate, listen)."""

from __future__ import annotations

import os
import re

import tornado.httputil

from llmserver.protocol.errors import ApiError

from .base import ONE, AdminApiHandler

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


class AudioCollectionHandler(AdminApiHandler):
    def get(self) -> None:
        self.write_json({"clips": self.services.audio_library.list()})

    def body_limit(self) -> int:
        return self.config.audio_max_bytes + 1024 * 1024  # the file and the form around it

    async def post(self) -> None:
        arguments: dict[str, list[bytes]] = {}
        files: dict[str, list[tornado.httputil.HTTPFile]] = {}
        try:
            tornado.httputil.parse_body_arguments(
                self.request.headers.get("Content-Type", ""), self.body, arguments, files, self.request.headers
            )
        except tornado.httputil.HTTPInputError:
            raise ApiError(400, "The upload is not a valid multipart form.", param="file") from None

        def field(name: str, default: str = "") -> str:
            values = arguments.get(name)
            return values[0].decode("utf-8", "replace").strip() if values else default

        if not files.get("file"):
            raise ApiError(400, "Send the audio as a multipart field named 'file'.", param="file")
        upload = files["file"][0]
        stem, suffix = os.path.splitext(os.path.basename(upload.filename or ""))
        # A name typed by the operator is checked as it is; one taken from the file name is made safe first.
        name = field("name") or _UNSAFE_NAME_CHARS.sub("-", stem).strip("-_")[:64].rstrip("-_") or "clip"
        activate = field("activate", "false").lower() in ("1", "true", "on", "yes")
        library = self.services.audio_library
        clip = await self.in_worker(
            library.add, name, upload.body, field("transcript"), raw_pcm=suffix.lower() == ".pcm", activate=activate
        )
        self.write_json(library.summary(clip.name), status=201)


class AudioClipHandler(AdminApiHandler):
    async def delete(self, name: str) -> None:
        await self.in_worker(self.services.audio_library.delete, name)
        self.set_status(204)
        self.finish()


class AudioActivateHandler(AdminApiHandler):
    async def post(self, name: str) -> None:
        library = self.services.audio_library
        await self.in_worker(library.activate, name)
        self.write_json({"active": name, "clips": library.list()})


class AudioWavHandler(AdminApiHandler):
    async def get(self, name: str) -> None:
        wav = await self.in_worker(self.services.audio_library.wav, name)
        self.set_header("Content-Type", "audio/wav")
        self.set_header("Cache-Control", "no-store")
        self.finish(wav)


default_handlers = [
    (r"/admin/api/audio", AudioCollectionHandler),
    (rf"/admin/api/audio/{ONE}\.wav", AudioWavHandler),
    (rf"/admin/api/audio/{ONE}/activate", AudioActivateHandler),
    (rf"/admin/api/audio/{ONE}", AudioClipHandler),
]
