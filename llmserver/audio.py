"""The audio library: clips of 16 kHz mono PCM16 with their transcripts, in a folder operators can change.

A clip NAME is `NAME.pcm` (raw PCM16 little-endian, 16 kHz, mono) and `NAME.txt` (its transcript); `active.json`
records which clip the audio endpoint plays. Uploads in WAV, FLAC, OGG or MP3 are decoded with soundfile
(libsndfile) and resampled with soxr; clips are read into memory whole, so a response that has started keeps
the bytes it started with even if the clip is replaced or deleted meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import soundfile
import soxr

from .errors import ServiceError
from .files import stage_file, sync_folder

SAMPLE_RATE = 16_000
BYTES_PER_SECOND = SAMPLE_RATE * 2
CHUNK_BYTES = 1280  # 40 ms of 16 kHz mono PCM16
DEFAULT_CLIP = "file"  # the name Agora's sample reads
ACTIVE_RECORD = "active.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SIMULATED_TRANSCRIPT = "This is a simulated audio response because no audio clip is available."
MAX_TRANSCRIPT_CHARS = 10_000


class AudioError(ServiceError):
    """A clip that cannot be accepted or found; the message says which and why."""


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
        """The PCM in 40 ms chunks, base64-encoded once per clip rather than once per response."""
        pcm = self.pcm
        return [base64.b64encode(pcm[i : i + CHUNK_BYTES]) for i in range(0, len(pcm), CHUNK_BYTES)]


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise AudioError(
            "A clip name is 1-64 letters, digits, '-' or '_', starting with a letter or digit "
            "(no path separators, no '..', no hidden files).",
            field="name",
        )
    return name


def to_pcm16(samples: np.ndarray, rate: int) -> bytes:
    """Float samples (frames x channels) at `rate` -> 16 kHz mono PCM16 little-endian."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    clipped = np.clip(mono, -1.0, 1.0)
    return (np.round(clipped * 32767.0)).astype("<i2").tobytes()


def decode(data: bytes, raw_pcm: bool, max_seconds: float) -> bytes:
    """Any upload -> 16 kHz mono PCM16; raises AudioError when it cannot be decoded or is too long."""
    if raw_pcm:
        if len(data) % 2:
            raise AudioError("Raw PCM16 must have an even number of bytes.", field="file")
        check_duration(len(data) / BYTES_PER_SECOND, max_seconds)
        return data
    try:
        # The length from the header first: a small compressed file can decode to hours of samples.
        info = soundfile.info(io.BytesIO(data))
        if info.samplerate > 0:
            check_duration(info.frames / info.samplerate, max_seconds)
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        # libsndfile names the in-memory file object; only its reason helps the operator.
        reason = str(exc).rsplit(": ", 1)[-1].strip().rstrip(".") or "unknown format"
        raise AudioError(f"The file could not be decoded as WAV, FLAC, OGG or MP3 ({reason}).", field="file") from None
    if not np.isfinite(samples).all():
        raise AudioError("The file holds samples that are not finite numbers.", field="file")
    return to_pcm16(samples, rate)


def check_duration(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise AudioError(f"The clip is {seconds:.1f} s long, more than the limit of {max_seconds:g} s.", field="file")


def simulated_clip() -> Clip:
    """The original sample's fallback: a second of a quiet 440 Hz tone that fades in and out."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.05)
    tone = 0.1 * envelope * np.sin(2 * math.pi * 440 * t)
    return Clip("simulated", to_pcm16(tone.astype("float32"), SAMPLE_RATE), SIMULATED_TRANSCRIPT, simulated=True)


def to_wav(clip: Clip) -> bytes:
    buffer = io.BytesIO()
    samples = np.frombuffer(clip.pcm, dtype="<i2")
    soundfile.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class AudioLibrary:
    def __init__(self, folder: str, *, max_bytes: int = 25 * 1024 * 1024, max_seconds: float = 120.0) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self._cache: dict[str, tuple[tuple[int, int, int, int], Clip]] = {}
        self._lock = threading.Lock()
        self._simulated = simulated_clip()
        self._active_cache: tuple[tuple[Any, ...], str | None] | None = None

    def _path(self, name: str, suffix: str) -> str:
        return os.path.join(self.folder, name + suffix)

    # Reading ------------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not os.path.isdir(self.folder):
            return []
        names = []
        for entry in os.listdir(self.folder):
            stem, suffix = os.path.splitext(entry)
            if suffix == ".pcm" and _NAME.match(stem) and os.path.exists(self._path(stem, ".txt")):
                names.append(stem)
        return sorted(names)

    def active_name(self) -> str | None:
        # Every audio request asks: answer from memory while neither the folder nor the record has changed
        # (adding, replacing or deleting a clip renames or unlinks a file, which changes the folder's mtime).
        try:
            folder = os.stat(self.folder)
        except FileNotFoundError:
            return None
        try:
            record = os.stat(os.path.join(self.folder, ACTIVE_RECORD))
            record_key: tuple[int, int] | None = (record.st_ino, record.st_mtime_ns)
        except FileNotFoundError:
            record_key = None
        key = (folder.st_ino, folder.st_mtime_ns, record_key)
        cached = self._active_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        name = self._choose_active()
        self._active_cache = (key, name)
        return name

    def _choose_active(self) -> str | None:
        names = self.names()
        try:
            with open(os.path.join(self.folder, ACTIVE_RECORD), encoding="utf-8") as handle:
                chosen = json.load(handle).get("active")
        except (OSError, ValueError, AttributeError):
            chosen = None
        if chosen in names:
            return chosen
        if chosen is not None:
            return None  # the chosen clip is gone: the endpoint says so by simulating, not by guessing another
        if DEFAULT_CLIP in names:
            return DEFAULT_CLIP
        return names[0] if names else None

    def get(self, name: str) -> Clip:
        check_name(name)
        pcm_path, text_path = self._path(name, ".pcm"), self._path(name, ".txt")
        try:
            pcm_stat, text_stat = os.stat(pcm_path), os.stat(text_path)
        except OSError:
            raise AudioError(f"No clip named {name!r}.", field="name", status=404) from None
        key = (pcm_stat.st_ino, pcm_stat.st_mtime_ns, text_stat.st_ino, text_stat.st_mtime_ns)
        cached = self._cache.get(name)
        if cached and cached[0] == key:
            return cached[1]
        try:
            with self._lock:  # held only while reading: writers take it just for their renames
                with open(pcm_path, "rb") as handle:
                    pcm = handle.read()
                with open(text_path, encoding="utf-8") as handle:
                    transcript = handle.read().strip()
        except (OSError, UnicodeDecodeError):
            raise AudioError(f"Clip {name!r} cannot be read.", field="name", status=404) from None
        clip = Clip(name, pcm[: len(pcm) - len(pcm) % 2], transcript)
        self._cache[name] = (key, clip)
        return clip

    def active_clip(self) -> Clip | None:
        name = self.active_name()
        if name is None:
            return None
        try:
            return self.get(name)
        except AudioError:
            return None  # deleted between the listing and the read

    def clip_or_simulated(self) -> Clip:
        return self.active_clip() or self._simulated

    def list(self) -> list[dict[str, Any]]:
        active = self.active_name()
        clips = []
        for name in self.names():
            try:
                clip = self.get(name)
            except AudioError:
                continue
            clips.append(
                {
                    "name": name,
                    "duration": round(clip.duration, 3),
                    "size": len(clip.pcm),
                    "transcript": clip.transcript,
                    "active": name == active,
                }
            )
        return clips

    def wav(self, name: str) -> bytes:
        return to_wav(self.get(name))

    # Changing -----------------------------------------------------------------------------------------------

    def add(self, name: str, data: bytes, transcript: Any, *, raw_pcm: bool = False, activate: bool = False) -> Clip:
        """Decodes, converts and stores a clip; refuses, writing nothing, anything it cannot accept."""
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
        # Both files are written in full (and synced) first; the two renames then happen under the lock that
        # readers take, so a reader never pairs the new transcript with the old audio, and a failed write
        # leaves the old clip as it was.
        text = stage_file(self._path(name, ".txt"), transcript.strip().encode() + b"\n")
        try:
            audio = stage_file(self._path(name, ".pcm"), pcm)
        except BaseException:
            text.discard()
            raise
        with self._lock:
            try:
                text.commit()
            except BaseException:
                text.discard()
                audio.discard()
                raise
            try:
                audio.commit()
            except BaseException:
                audio.discard()
                raise
            finally:
                self._forget(name)
        sync_folder(self.folder)
        if activate:
            self.activate(name)
        return self.get(name)

    def activate(self, name: str) -> None:
        self.get(name)  # 404 for an unknown clip
        record = stage_file(os.path.join(self.folder, ACTIVE_RECORD), json.dumps({"active": name}).encode() + b"\n")
        with self._lock:  # held for the rename only: readers on the event loop never wait for a disk sync
            try:
                record.commit()
            except BaseException:
                record.discard()
                raise
            finally:
                self._active_cache = None
        sync_folder(self.folder)

    def delete(self, name: str) -> None:
        self.get(name)
        with self._lock:
            for suffix in (".pcm", ".txt"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(name, suffix))
            self._forget(name)
        sync_folder(self.folder)

    def _forget(self, name: str) -> None:
        self._cache.pop(name, None)
        self._active_cache = None
