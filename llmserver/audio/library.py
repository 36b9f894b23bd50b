"""The audio library: named clips (16 kHz mono PCM16 and a transcript) and which one the audio endpoint plays.

Stored in a folder as content-addressed audio files (`<sha256>.pcm`, written once, never changed) and one
manifest, `library.json`, naming each clip's audio file and holding its transcript and the active clip. Every
change (add, replace, delete, activate) is one atomic replacement of the manifest, so a crash at any moment
leaves the library as it was before the change or as it is after it: never a transcript paired with other
audio. Audio files no manifest names (left by a crash) and temporary files are removed at start.

Reads come from memory (the manifest, and each clip's bytes once read), so a response that has started keeps
the bytes it started with even if its clip is replaced or deleted meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

from ..files import remove_stale_temporaries, write_atomically
from ..versioned import VersionedStorage, change_with_retries, newer_state
from .codec import (
    BYTES_PER_SECOND,
    SIMULATED_TRANSCRIPT,
    AudioError,
    base64_chunks,
    check_duration,
    decode,
    simulated_pcm,
    to_wav,
)

logger = logging.getLogger("llmserver.audio")

MANIFEST = "library.json"
DEFAULT_CLIP = "file"  # the name Agora's sample reads
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}"
_NAME = re.compile(rf"^{NAME_PATTERN}$")
_AUDIO_FILE = re.compile(r"^[0-9a-f]{64}\.pcm$")
MAX_TRANSCRIPT_CHARS = 10_000


@dataclass(frozen=True)
class Clip:
    name: str
    pcm: bytes = field(repr=False)
    transcript: str
    simulated: bool = False

    @property
    def duration(self) -> float:
        return len(self.pcm) / BYTES_PER_SECOND

    @cached_property
    def chunks_base64(self) -> list[bytes]:
        """The PCM in stream chunks, base64-encoded once per clip rather than once per response."""
        return base64_chunks(self.pcm)


@dataclass(frozen=True)
class ClipEntry:
    """A clip as the manifest records it."""

    audio_file: str
    transcript: str
    size: int

    def summary(self, name: str, active: bool) -> dict[str, Any]:
        return {
            "name": name,
            "duration": round(self.size / BYTES_PER_SECOND, 3),
            "size": self.size,
            "transcript": self.transcript,
            "active": active,
        }


@dataclass(frozen=True)
class LibraryState:
    clips: dict[str, ClipEntry] = field(default_factory=dict)
    active: str | None = None
    version: int = 0

    def to_json(self) -> dict[str, Any]:
        clips = {
            name: {"audio": e.audio_file, "transcript": e.transcript, "size": e.size} for name, e in self.clips.items()
        }
        return {"version": self.version, "active": self.active, "clips": clips}

    @classmethod
    def from_json(cls, data: Any) -> LibraryState:
        clips = {
            name: ClipEntry(entry["audio"], entry["transcript"], int(entry["size"]))
            for name, entry in data["clips"].items()
            if _NAME.match(name) and _AUDIO_FILE.match(entry["audio"])
        }
        active = data.get("active")
        return cls(clips, active if active in clips else None, int(data.get("version", 0)))


def audio_file_name(pcm: bytes) -> str:
    """Audio files are named by their content: written once, never changed, shared by clips that sound alike."""
    return hashlib.sha256(pcm).hexdigest() + ".pcm"


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise AudioError(
            "A clip name is 1-64 letters, digits, '-' or '_', starting with a letter or digit "
            "(no path separators, no '..', no hidden files).",
            field="name",
        )
    return name


def simulated_clip() -> Clip:
    return Clip("simulated", simulated_pcm(), SIMULATED_TRANSCRIPT, simulated=True)


class ClipStorage(VersionedStorage[LibraryState], Protocol):
    """Where the library is kept: a folder (ClipFolder), or Redis, shared by several processes
    (llmserver/shared/audio_store.py)."""

    def store_audio(self, pcm: bytes) -> str:
        """Keeps the audio (content-addressed) and returns its name."""
        ...

    def read_audio(self, audio_file: str) -> bytes: ...

    def commit(self, state: LibraryState, previous: LibraryState) -> None:
        """Makes `state` the library's; a shared store raises StaleState when it holds a newer version."""

    def import_clips(self, clips: dict[str, tuple[bytes, str]], active: str | None) -> LibraryState | None:
        """A new library holding `clips` (a shared store: None when another process filled it first)."""
        ...


class ClipFolder:
    """The library's files: the manifest and the audio files it names. One process owns the folder, so it is never
    behind."""

    shared = False

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def stored_version(self) -> int | None:
        state = self.load()
        return None if state is None else state.version

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def load(self, restore: LibraryState | None = None) -> LibraryState | None:
        """The manifest, or None when there is none yet (`restore` is for shared stores)."""
        try:
            with open(self.path(MANIFEST), encoding="utf-8") as handle:
                return LibraryState.from_json(json.load(handle))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AudioError(f"{self.path(MANIFEST)} cannot be read: {exc}.") from None

    def store_audio(self, pcm: bytes) -> str:
        """Writes the audio file for `pcm` (unless it exists already) and returns its name."""
        audio_file = audio_file_name(pcm)
        if not os.path.exists(self.path(audio_file)):
            write_atomically(self.path(audio_file), pcm)
        return audio_file

    def read_audio(self, audio_file: str) -> bytes:
        with open(self.path(audio_file), "rb") as handle:
            return handle.read()

    def commit(self, state: LibraryState, previous: LibraryState) -> None:
        """Makes `state` the library's (one atomic replacement of the manifest), then removes the audio files only
        `previous` named."""
        write_atomically(self.path(MANIFEST), json.dumps(state.to_json(), ensure_ascii=False, indent=1).encode())
        still_named = {entry.audio_file for entry in state.clips.values()}
        for entry in previous.clips.values():
            if entry.audio_file not in still_named:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(entry.audio_file))

    def import_clips(self, clips: dict[str, tuple[bytes, str]], active: str | None) -> LibraryState:
        """A new library holding `clips`."""
        entries = {
            name: ClipEntry(self.store_audio(pcm), transcript, len(pcm)) for name, (pcm, transcript) in clips.items()
        }
        state = LibraryState(entries, active, 1)
        self.commit(state, state)
        return state

    def current_clips(self) -> tuple[dict[str, tuple[bytes, str]], str | None]:
        """The clips of the library in this folder, in either layout (for an import into a shared store)."""
        state = self.load()
        if state is None:
            return self.legacy_clips()
        clips = {}
        for name, entry in state.clips.items():
            with contextlib.suppress(OSError):
                clips[name] = (self.read_audio(entry.audio_file), entry.transcript)
        return clips, state.active if state.active in clips else None

    def collect_garbage(self, state: LibraryState) -> None:
        """Removes audio files the manifest does not name, and temporary files a crash left."""
        remove_stale_temporaries(self.folder)
        named = {entry.audio_file for entry in state.clips.values()}
        for entry in os.listdir(self.folder):
            if _AUDIO_FILE.match(entry) and entry not in named:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(entry))

    def legacy_clips(self) -> tuple[dict[str, tuple[bytes, str]], str | None]:
        """Clips in the older layout (`NAME.pcm` beside `NAME.txt`, `active.json`): the shipped clip, and libraries
        written by earlier versions."""
        clips: dict[str, tuple[bytes, str]] = {}
        if not os.path.isdir(self.folder):
            return clips, None
        for entry in sorted(os.listdir(self.folder)):
            stem, suffix = os.path.splitext(entry)
            if suffix != ".pcm" or not _NAME.match(stem) or not os.path.exists(self.path(stem + ".txt")):
                continue
            try:
                pcm = self.read_audio(entry)
                with open(self.path(stem + ".txt"), encoding="utf-8") as handle:
                    transcript = handle.read().strip()
            except (OSError, UnicodeDecodeError):
                continue
            clips[stem] = (pcm[: len(pcm) - len(pcm) % 2], transcript)
        try:
            with open(self.path("active.json"), encoding="utf-8") as handle:
                active = json.load(handle).get("active")
        except (OSError, ValueError, AttributeError):
            active = None
        if active not in clips:
            active = DEFAULT_CLIP if DEFAULT_CLIP in clips else next(iter(clips), None)
        return clips, active


class AudioLibrary:
    def __init__(
        self,
        folder: str,
        *,
        seed_folder: str | None = None,
        max_bytes: int = 25 * 1024 * 1024,
        max_seconds: float = 120.0,
        store: ClipStorage | None = None,
    ) -> None:
        """Opens the library in `folder`; a new one starts with the clips of `seed_folder` (the shipped clip).
        With a shared `store`, the library is the store's; an empty store is first filled with the folder's clips
        (else the shipped ones)."""
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        os.makedirs(folder, exist_ok=True)
        folder_files = ClipFolder(folder)
        self._files = store or folder_files
        self._lock = threading.Lock()  # changes run in worker threads, one at a time; reads never wait
        self._clips: dict[str, tuple[ClipEntry, Clip]] = {}  # clips whose audio has been read
        self._simulated = simulated_clip()
        state = self._files.load()
        if state is None:
            clips, active = folder_files.current_clips() if store else folder_files.legacy_clips()
            if not clips and seed_folder:
                clips, active = ClipFolder(seed_folder).legacy_clips()
            state = self._files.import_clips(clips, active)
        self._state = state
        if not self._files.shared:
            folder_files.collect_garbage(state)

    def refresh(self) -> bool:
        """Catches up with the shared store (or re-fills it from this copy if it lost its data); returns whether
        anything changed here."""
        state = newer_state(self._files, self._state.version, lambda: self._state)
        with self._lock:
            if state is None or state.version == self._state.version:
                return False
            self._state = state
            return True

    # Reading ------------------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._state.version

    def names(self) -> list[str]:
        return sorted(self._state.clips)

    def active_name(self) -> str | None:
        return self._state.active

    def get(self, name: str) -> Clip:
        check_name(name)
        state = self._state
        entry = state.clips.get(name)
        if entry is None:
            raise AudioError(f"No clip named {name!r}.", field="name", status=404)
        cached = self._clips.get(name)
        if cached is not None and cached[0] == entry:
            return cached[1]
        try:
            pcm = self._files.read_audio(entry.audio_file)
        except OSError:
            raise AudioError(f"Clip {name!r} cannot be read.", field="name", status=404) from None
        clip = Clip(name, pcm, entry.transcript)
        self._clips[name] = (entry, clip)
        return clip

    def active_clip(self) -> Clip | None:
        name = self._state.active
        if name is None:
            return None
        try:
            return self.get(name)
        except AudioError:
            return None

    def clip_or_simulated(self) -> Clip:
        return self.active_clip() or self._simulated

    def list(self) -> list[dict[str, Any]]:
        state = self._state
        return [state.clips[name].summary(name, name == state.active) for name in sorted(state.clips)]

    def summary(self, name: str) -> dict[str, Any]:
        state = self._state
        entry = state.clips.get(name)
        if entry is None:
            raise AudioError(f"No clip named {name!r}.", field="name", status=404)
        return entry.summary(name, name == state.active)

    def wav(self, name: str) -> bytes:
        return to_wav(self.get(name).pcm)

    # Changing: each change is one commit of the manifest ------------------------------------------------------

    def _change(self, make: Callable[[LibraryState], LibraryState | None]) -> None:
        """Commits `make(current state)` (None: nothing to change), made again from the newer state when another
        process changed the shared store first (llmserver.versioned)."""

        def commit_once() -> None:
            changed = make(self._state)
            if changed is None:
                return
            state = replace(changed, version=self._state.version + 1)
            self._files.commit(state, self._state)
            self._state = state

        conflict = AudioError("The audio library is being changed elsewhere right now; try again.", status=409)
        change_with_retries(self._lock, commit_once, self.refresh, conflict)

    def add(self, name: str, data: bytes, transcript: Any, *, raw_pcm: bool = False, activate: bool = False) -> Clip:
        """Decodes, converts and stores a clip; refuses, changing nothing, anything it cannot accept."""
        check_name(name)
        if not isinstance(transcript, str) or not transcript.strip():
            raise AudioError(
                "A clip needs a transcript: the engine keeps it as the conversation's memory.", field="transcript"
            )
        if len(transcript) > MAX_TRANSCRIPT_CHARS:
            raise AudioError(f"The transcript is longer than {MAX_TRANSCRIPT_CHARS} characters.", field="transcript")
        if not data:
            raise AudioError("The file is empty.", field="file")
        if len(data) > self.max_bytes:
            raise AudioError(f"The file is larger than {self.max_bytes} bytes.", field="file", status=413)
        pcm = decode(data, raw_pcm, self.max_seconds)
        if not pcm:
            raise AudioError("The file holds no audio.", field="file")
        check_duration(len(pcm) / BYTES_PER_SECOND, self.max_seconds)  # the header may have understated it

        def make(state: LibraryState) -> LibraryState:
            entry = ClipEntry(self._files.store_audio(pcm), transcript.strip(), len(pcm))
            active = name if activate or not state.clips else state.active  # the first clip plays at once
            return replace(state, clips={**state.clips, name: entry}, active=active)

        self._change(make)
        return self.get(name)

    def activate(self, name: str) -> None:
        check_name(name)

        def make(state: LibraryState) -> LibraryState | None:
            if name not in state.clips:
                raise AudioError(f"No clip named {name!r}.", field="name", status=404)
            return None if state.active == name else replace(state, active=name)

        self._change(make)

    def delete(self, name: str) -> None:
        check_name(name)

        def make(state: LibraryState) -> LibraryState:
            if name not in state.clips:
                raise AudioError(f"No clip named {name!r}.", field="name", status=404)
            clips = {other: entry for other, entry in state.clips.items() if other != name}
            # Deleting the active clip leaves none active: the endpoint says so by simulating, not by guessing.
            return replace(state, clips=clips, active=None if state.active == name else state.active)

        self._change(make)
