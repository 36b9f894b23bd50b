"""Audio made in the tests: tones in any format soundfile writes."""

from __future__ import annotations

import io

import numpy as np
import soundfile


def tone(seconds: float, rate: int, channels: int = 1, frequency: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * frequency * t)).astype("float32")
    return np.repeat(wave[:, None], channels, axis=1)


def encode(samples: np.ndarray, rate: int, format: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def dominant_frequency(pcm: bytes, rate: int = 16000) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype("float64")
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])
