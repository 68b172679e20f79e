"""Pre-synthesis memory estimation (the seed feature, :class:`MemoryEstimator`): how much memory will
synthesizing this text take, before we start?

The seed's formula, ``M = base + (tokens / 100) * per_100 + cache_overhead``, with its constants
**fitted from measurements** on this machine for each configuration (engine, quantization, chunk
length, threads, compute). A calibration (``adaptive_tts.calibration``; ``python -m adaptive_tts
calibrate``, or the experiment harness before its trials) records, per text, the process's resident
memory at rest with the model loaded (``rest``) and the kernel's peak RSS (``VmHWM``, reset just before
the request) while it synthesizes, so the fit describes the real process and not a model of it.

``base`` is the median rest. What admission needs is the *increment* a request adds over rest, and it
has two parts, because the model computes on a fixed set of compute lanes (``voice.lanes``), one step
(a sentence's encoding, a decoder window) per lane at a time:

- a request that computes adds ``per_request + min(tokens, knee) / 100 * per_100``. It grows with the
  text only until the text fills a decoder window (``knee``); past it the windows are all alike.
  Measured on a 2-core VM, INT8, chunk 256, one request: +80 MB at 49 ids, +124 at 141, +206 at 229,
  +207 at 438, +233 at 2187 (a straight line through the first points predicted +568 at 2187).
- requests beyond the lane count wait for a lane between steps and hold only a share of theirs
  (``queued_share``, fitted): four requests side by side on two lanes took +214 MB at 438 ids, not
  four times +207.

So ``peak = rest + the min(n, lanes) largest increments + queued_share x each other request's``;
``cache_overhead`` is the audio cache's current size, known exactly. Until a configuration is
calibrated the estimator falls back to the profile's conservative defaults (the seed's table, an
absolute peak) and says so in every estimate.

The modules, each importing only those above it:

* :mod:`.constants` — :class:`ConfigKey` and :func:`machine_key` (what a calibration belongs to),
  :class:`EstimatorConstants` and :class:`FitQuality` (what it finds), :class:`StartUpCost` (what
  starting the runtime takes) and :func:`lane_increment_mb`.
* :mod:`.store` — the calibration file: :class:`CalibrationStore`, :class:`SeedTable` (no calibration,
  on purpose), the start-up samples kept (:data:`START_UP_SAMPLES`) and :func:`room_to_start`.
* :mod:`.fit` — the fit from measurements: :func:`calibration_texts`, :class:`ProbeResult` and
  :func:`fit_constants`.
* :mod:`.estimate` — :class:`MemoryEstimator`, the seed's pre-synthesis memory estimation and its
  ``/estimate-memory`` payload.

Of the project this package imports only :mod:`adaptive_tts.units` and other runtime modules (budget,
hardware, planner, process), never the backend.
"""

from __future__ import annotations

from ..process import current_rss_mb
from .constants import ConfigKey, EstimatorConstants, FitQuality, StartUpCost, lane_increment_mb, machine_key
from .estimate import MemoryEstimator
from .fit import ProbeResult, calibration_texts, fit_constants
from .store import (
    DEFAULT_CALIBRATION_PATH,
    START_UP_SAMPLES,
    STARTUP_KEY,
    CalibrationStore,
    SeedTable,
    calibration_path,
    room_to_start,
)

__all__ = [
    "DEFAULT_CALIBRATION_PATH",
    "STARTUP_KEY",
    "START_UP_SAMPLES",
    "CalibrationStore",
    "ConfigKey",
    "EstimatorConstants",
    "FitQuality",
    "MemoryEstimator",
    "ProbeResult",
    "SeedTable",
    "StartUpCost",
    "calibration_path",
    "calibration_texts",
    "current_rss_mb",
    "fit_constants",
    "lane_increment_mb",
    "machine_key",
    "room_to_start",
]
