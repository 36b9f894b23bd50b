"""The audio library in Redis: the manifest (clips, transcripts, the active clip) and its version, and one key per
audio file (content-addressed PCM, as in the folder).

A change is one Lua script, as for the knowledge base: version check, new audio, manifest, removal of audio no
clip names any more, announcement. Each process keeps every named clip's bytes in memory, fetched when it learns
of a change and before it switches to it, so a response never waits on Redis for audio.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..audio.codec import AudioError
from ..audio.library import ClipEntry, LibraryState, audio_file_name
from ..files import StaleState
from .redis_state import REDIS_ERRORS, SharedState

logger = logging.getLogger("llmserver.shared")

# KEYS: manifest, version. ARGV: expected version, new version, manifest JSON, channel, event, number of audio
# keys written, then (key, bytes) pairs, then the audio keys to delete.
COMMIT = """
local current = tonumber(redis.call('GET', KEYS[2]) or '-1')
if current ~= tonumber(ARGV[1]) then return 0 end
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  redis.call('SET', ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('DEL', ARGV[i])
  i = i + 1
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# KEYS: manifest, version. ARGV: version, manifest JSON, channel, event, then (key, bytes) pairs. Only into an
# empty store.
IMPORT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 5, #ARGV, 2 do redis.call('SET', ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""


class RedisClipStore:
    shared = True

    def __init__(self, state: SharedState) -> None:
        self.state = state
        self.manifest_key = state.key("audio:manifest")
        self.version_key = state.key("audio:version")
        self._commit = state.sync.register_script(COMMIT)
        self._import = state.sync.register_script(IMPORT)
        self._audio: dict[str, bytes] = {}  # every named clip's PCM, by audio file name
        self._pending: dict[str, bytes] = {}  # stored by the change being made, written by its commit

    def audio_key(self, audio_file: str) -> str:
        return self.state.key("audio:pcm:" + audio_file)

    def store_audio(self, pcm: bytes) -> str:
        audio_file = audio_file_name(pcm)
        if audio_file not in self._audio:
            self._pending[audio_file] = pcm
        return audio_file

    def read_audio(self, audio_file: str) -> bytes:
        pcm = self._audio.get(audio_file)
        if pcm is None:
            raise FileNotFoundError(audio_file)
        return pcm

    def commit(self, state: LibraryState, previous: LibraryState) -> None:
        named = {entry.audio_file for entry in state.clips.values()}
        before = {entry.audio_file for entry in previous.clips.values()}
        new = [(self.audio_key(name), self._pending[name]) for name in named - before if name in self._pending]
        gone = [self.audio_key(name) for name in before - named]
        event = self.state.event("audio", version=state.version)
        arguments: list[Any] = [previous.version, state.version, json.dumps(state.to_json()), self.state.channel]
        arguments += [event, len(new)]
        for pair in new:
            arguments.extend(pair)
        arguments.extend(gone)
        try:
            committed = self._commit(keys=[self.manifest_key, self.version_key], args=arguments)
        except REDIS_ERRORS:
            raise self.state.unavailable() from None
        finally:
            pending, self._pending = self._pending, {}
        if not committed:
            raise StaleState()
        for name in named - before:
            if name in pending:
                self._audio[name] = pending[name]
        for name in before - named:
            self._audio.pop(name, None)

    def stored_version(self) -> int | None:
        """The store's version (None: it holds nothing)."""
        return self.state.stored_version(self.version_key)

    def import_clips(self, clips: dict[str, tuple[bytes, str]], active: str | None) -> LibraryState | None:
        """Fills an empty store with `clips`; returns the store's library (another process's, if it was first)."""
        entries = {name: ClipEntry(audio_file_name(pcm), text, len(pcm)) for name, (pcm, text) in clips.items()}
        self._import_state(LibraryState(entries, active, 1), {e.audio_file: clips[n][0] for n, e in entries.items()})
        return self.load()

    def _import_state(self, state: LibraryState, audio: dict[str, bytes]) -> None:
        event = self.state.event("audio", version=state.version)
        arguments: list[Any] = [state.version, json.dumps(state.to_json()), self.state.channel, event]
        for audio_file, pcm in audio.items():
            arguments.extend((self.audio_key(audio_file), pcm))
        try:
            if self._import(keys=[self.manifest_key, self.version_key], args=arguments):
                logger.info("shared store: audio library imported (%d clips)", len(state.clips))
        except REDIS_ERRORS:
            raise self.state.unavailable() from None

    def load(self, restore: LibraryState | None = None) -> LibraryState | None:
        """The store's library, with every clip's audio fetched (None: the store has none yet). A store that lost
        its data is first re-filled from `restore`, this process's copy."""
        try:
            if restore is not None:
                self._import_state(restore, dict(self._audio))
            manifest = self.state.sync.get(self.manifest_key)
            if manifest is None:
                return None
            state = LibraryState.from_json(json.loads(manifest))
            named = {entry.audio_file for entry in state.clips.values()}
            missing = sorted(named - set(self._audio))
            if missing:
                fetched = self.state.sync.mget([self.audio_key(name) for name in missing])
                for name, pcm in zip(missing, fetched, strict=True):
                    if pcm is not None:
                        self._audio[name] = pcm
                    else:
                        logger.warning("shared store: the audio of a clip (%s) is missing from Redis", name)
            self._audio = {name: pcm for name, pcm in self._audio.items() if name in named}
        except REDIS_ERRORS:
            raise self.state.unavailable() from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problem = f"the audio library's manifest in Redis ({self.manifest_key}) cannot be read: {exc}"
            raise AudioError(problem) from None
        return state
