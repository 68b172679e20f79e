"""What a calibration is of and what it finds: the configuration (:class:`ConfigKey`) and machine
(:func:`machine_key`) it belongs to, the fitted constants (:class:`EstimatorConstants`) with how well
they predict (:class:`FitQuality`), and what starting the runtime costs (:class:`StartUpCost`).

Plain values, read and written by :mod:`.store`, produced by :mod:`.fit`, used by :mod:`.estimate`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import psutil

from ...units import mib
from ..hardware import HardwareInfo


@dataclass(frozen=True)
class StartUpCost:
    """What starting the runtime takes on a machine, in anonymous MB at its peak: loading the voice
    (``load_mb``, from before torch is imported; ``rest_mb`` once loaded), then warming the decoder up
    to each chunk length on every compute lane (``warm_up_mb``, chunk -> peak).

    Why per chunk and per lane count: a warm-up decodes the longest window of its chunk on each lane,
    and its peak follows both. Measured on a 2-core VM (INT8, one thread per lane): loaded 209 MB;
    warmed to chunk 64 on two lanes 287 MB, to chunk 256 on one lane 439 MB, on two lanes 667 MB. Most
    of it is freed heap (trimmed, the warmed runtime rests at ~230 MB), but the peak is real: a start
    that warms 256-frame windows where only 64-frame ones fit is an OOM kill.

    Read back from a calibration file, each peak is the largest of the last measurements kept
    (:data:`START_UP_SAMPLES`): successive measurements of one start on one machine differ (the
    chunk-64 warm-up's peak read 259, 269 and 296 MB in three fresh processes), and the start that once
    took more is planned for.
    """

    lanes: int
    load_mb: float
    rest_mb: float
    warm_up_mb: dict[int, float]

    def increment_mb(self, chunk_length: int) -> float:
        """What warming up to ``chunk_length`` adds to a loaded runtime."""
        return max(0.0, self.warm_up_mb[chunk_length] - self.rest_mb)

    @property
    def frugal_peak_mb(self) -> float:
        """The least a start can take: loading, then warming the smallest chunk measured."""
        if not self.warm_up_mb:
            return self.load_mb
        return max(self.load_mb, self.warm_up_mb[min(self.warm_up_mb)])


@dataclass(frozen=True)
class ConfigKey:
    """The configuration a calibration belongs to: memory depends on all five (bf16 compute halves
    the decoder's activations)."""

    engine: str
    quantization: str
    chunk_length: int | None
    num_threads: int
    compute: str = "fp32"

    def __str__(self) -> str:
        chunk = "onepass" if self.chunk_length is None else f"cl{self.chunk_length}"
        suffix = "" if self.compute == "fp32" else f"/{self.compute}"
        return f"{self.engine}/{self.quantization}/{chunk}/t{self.num_threads}{suffix}"


@dataclass(frozen=True)
class FitQuality:
    """How well the fitted constants predict held-out texts."""

    n_train: int
    n_test: int
    mape_percent: float
    max_under_mb: float  # largest under-prediction over all calibration measurements (0 if none)
    max_over_mb: float


@dataclass(frozen=True)
class EstimatorConstants:
    base_model_mb: float
    per_100_tokens_mb: float
    cache_overhead_mb: float | None  # None: the cache's live size is used (calibrated)
    calibrated: bool
    fit: FitQuality | None = None
    #: the fixed part of one request's increment over rest; None: the formula is an absolute peak
    #: (the seed's table), and a request's increment is that peak less what the process holds now
    per_request_mb: float | None = None
    #: ids past which a request's increment stops growing (a chunked decoder's window is full);
    #: None: it grows with the whole text (one pass, or a calibration that predates the knee)
    knee_tokens: float | None = None
    #: the share of its increment that a request holds while it waits for a compute lane (0-1);
    #: None: not measured, all of it
    queued_share: float | None = None


def lane_increment_mb(constants: EstimatorConstants, text_tokens: int) -> float:
    """What a request of ``text_tokens`` ids adds while it computes, from calibrated constants."""
    tokens = text_tokens if constants.knee_tokens is None else min(text_tokens, constants.knee_tokens)
    return (constants.per_request_mb or 0.0) + tokens / 100.0 * constants.per_100_tokens_mb


def machine_key(info: HardwareInfo | None = None) -> str:
    """Calibrations are only valid on the machine (and memory cap) they were measured on."""
    cpu = info.cpu_model if info else platform.processor()
    cores = info.logical_cores if info else os.cpu_count()
    ram = round((info.effective_memory_mb if info else mib(psutil.virtual_memory().total)) / 1024)
    return f"{platform.node()}|{cpu}|{cores}cpu|{ram}GB"
