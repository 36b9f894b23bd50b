"""Audio in the engine's format: 16 kHz mono PCM16 little-endian, from any upload, and cut into stream chunks.

Uploads in WAV, FLAC, OGG or MP3 are decoded with soundfile (libsndfile) and resampled with soxr.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import soundfile
import soxr

from ..protocol.errors import ServiceError

SAMPLE_RATE = 16_000
BYTES_PER_SECOND = SAMPLE_RATE * 2
CHUNK_BYTES = 1280  # 40 ms of 16 kHz mono PCM16: the average chunk
# Chunk sizes that are multiples of 6 bytes (whole samples, and base64 without padding, so clients that join the
# strings before decoding, as the SDKs' stream helpers do, get the whole clip) and average exactly 40 ms.
CHUNK_PATTERN = (1278, 1278, 1284)
SIMULATED_TRANSCRIPT = "This is a simulated audio response because no audio clip is available."


class AudioError(ServiceError):
    """A clip that cannot be accepted or found; the message says which and why."""


def chunk_pcm(pcm: bytes) -> list[bytes]:
    """The PCM in stream chunks of CHUNK_PATTERN's sizes (the last may differ by a few bytes)."""
    chunks, position, turn = [], 0, 0
    while position < len(pcm):
        size = CHUNK_PATTERN[turn % len(CHUNK_PATTERN)]
        if len(pcm) - position - size < 6:
            size = len(pcm) - position  # the end: no chunk of a few bytes after it
        chunks.append(pcm[position : position + size])
        position += size
        turn += 1
    return chunks


def base64_chunks(pcm: bytes) -> list[bytes]:
    return [base64.b64encode(chunk) for chunk in chunk_pcm(pcm)]


def to_pcm16(samples: np.ndarray, rate: int) -> bytes:
    """Float samples (frames x channels) at `rate` -> 16 kHz mono PCM16 little-endian."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    clipped = np.clip(mono, -1.0, 1.0)
    return (np.round(clipped * 32767.0)).astype("<i2").tobytes()


def check_duration(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise AudioError(f"The clip is {seconds:.1f} s long, more than the limit of {max_seconds:g} s.", field="file")


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


def simulated_pcm() -> bytes:
    """The original sample's fallback: a second of a quiet 440 Hz tone that fades in and out."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.05)
    tone = 0.1 * envelope * np.sin(2 * math.pi * 440 * t)
    return to_pcm16(tone.astype("float32"), SAMPLE_RATE)


def to_wav(pcm: bytes) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.frombuffer(pcm, dtype="<i2"), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
