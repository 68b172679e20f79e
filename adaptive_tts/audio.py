"""Audio encoding shared by the CLI and the HTTP service: float32 waveform → 16-bit PCM / WAV."""

from __future__ import annotations

import struct
import wave
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: A WAV data size for streams of unknown length; players read to the end of the stream.
STREAMING_DATA_SIZE = 0xFFFFFFFF - 36


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] → little-endian signed 16-bit PCM (clipped, as Piper does)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int = STREAMING_DATA_SIZE) -> bytes:
    """A 44-byte mono 16-bit WAV header; with the default size it suits a stream of unknown length."""
    return b"RIFF" + struct.pack("<I", min(data_bytes + 36, 0xFFFFFFFF)) + b"WAVE" + b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16
    ) + b"data" + struct.pack("<I", data_bytes)


def write_wav(path: str | Path, chunks: Iterable[np.ndarray], sample_rate: int) -> int:
    """Write chunks to a mono 16-bit WAV file as they arrive; returns the number of samples."""
    total = 0
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        for chunk in chunks:
            wav.writeframes(to_pcm16(chunk))
            total += len(chunk)
    return total
