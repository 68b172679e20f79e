"""Audio encoding shared by the CLI, the HTTP service and the audio cache: float32 waveform ↔ 16-bit
PCM, and WAV."""

from __future__ import annotations

import struct
import wave
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: A WAV data size for streams of unknown length; players read to the end of the stream.
STREAMING_DATA_SIZE = 0xFFFFFFFF - 36


#: The PCM16 sample type everything here writes: signed 16-bit little-endian.
PCM16 = np.dtype("<i2")
#: Full scale: float 1.0 is this sample value (Piper's convention; -32768 is never written).
_FULL_SCALE = np.float32(32767.0)


def pcm16(samples: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Float samples in [-1, 1] → signed 16-bit PCM samples (clipped, truncated as Piper does), into
    ``out`` (a :data:`PCM16` array of the same length) when given."""
    scaled = np.clip(samples, -1.0, 1.0) * _FULL_SCALE
    if out is None:
        return scaled.astype(PCM16)
    np.copyto(out, scaled, casting="unsafe")
    return out


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] → little-endian signed 16-bit PCM bytes."""
    return pcm16(samples).tobytes()


def from_pcm16(samples: np.ndarray) -> np.ndarray:
    """16-bit PCM samples → float32 in [-1, 1]; :func:`pcm16` of the result gives ``samples`` back
    exactly (tested over every value), so audio kept as PCM16 goes out as the same bytes."""
    return samples.astype(np.float32) / _FULL_SCALE


def wav_header(sample_rate: int, data_bytes: int = STREAMING_DATA_SIZE) -> bytes:
    """A 44-byte mono 16-bit WAV header; with the default size it suits a stream of unknown length."""
    return (
        b"RIFF"
        + struct.pack("<I", min(data_bytes + 36, 0xFFFFFFFF))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


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
