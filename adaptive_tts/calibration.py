"""Calibrating the memory estimator: measure real requests, fit the seed's formula per configuration.

A measurement (:func:`measure`) hands freed heap back to the OS, reads the process's resident memory
at rest, resets the kernel's high-water mark and runs ``concurrency`` requests side by side; the
peak less the rest is what those requests added. :func:`calibrate` does this for every configuration
the planner may choose, on training and held-out texts (disjoint paragraphs), and fits
:func:`~adaptive_tts.runtime.estimator.fit_constants`. Held-out texts also run at a concurrency the
training set does not have in that proportion, so the fit's worst under-prediction — the term the
calibrated budget policy keeps free — covers requests running side by side.

:func:`measure_start_up` records what starting the runtime takes (loading, then warming the decoder
up to each chunk on every compute lane), which admission checks before a runtime starts and when it
chooses the chunk to warm up to.

It sits above the backend (it drives one), so the estimator itself never imports the backend.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence

from .backend import BackendOptions, SmartAdaptiveBackend
from .heap import release_free_memory
from .runtime.estimator import (
    CalibrationStore,
    ConfigKey,
    EstimatorConstants,
    ProbeResult,
    StartUpCost,
    calibration_texts,
    fit_constants,
)
from .runtime.planner import PRECISIONS
from .runtime.process import AnonPeak, PeakMeter, anon_rss_mb, current_rss_mb

logger = logging.getLogger(__name__)

#: Concurrency of the texts that also run side by side (every other text of each set).
SIDE_BY_SIDE = 4


def measure(
    backend: SmartAdaptiveBackend, text: str, concurrency: int = 1, meter: PeakMeter | None = None
) -> ProbeResult:
    """Run ``concurrency`` simultaneous requests of ``text``; their peak and the rest before them."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    meter = meter or PeakMeter()
    release_free_memory()
    rest = current_rss_mb()
    tokens: list[int] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            counted = backend.synthesize(text).text_tokens
            if counted is None:
                raise RuntimeError("the backend's synthesis result has no token count to calibrate against")
            tokens.append(counted)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(exc)

    meter.start()
    threads = [threading.Thread(target=one) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak = meter.stop_mb()
    if errors:
        raise errors[0]
    return ProbeResult(len(text), tokens[0], peak, rest, concurrency)


def measure_start_up(
    start: Callable[[], SmartAdaptiveBackend], meter: AnonPeak | None = None
) -> tuple[SmartAdaptiveBackend, StartUpCost]:
    """Start a backend with ``start`` (one built with ``warm_up=False``), then warm its decoder up to
    each chunk it may run, smallest first, on every compute lane, reading the anonymous-memory peak of
    each step. Smallest first is exact: a warm-up to chunk *c* compiles every window a smaller chunk
    uses, so each step's peak is what a start warming up to *c* takes. ``meter``: one started earlier,
    before torch was imported, so that the load's figure includes the import."""
    meter = meter or AnonPeak()
    backend = start()
    load_mb, rest_mb = meter.stop(), anon_rss_mb()
    peaks = {}
    for chunk in backend.warm_up_chunks():
        meter = AnonPeak()
        backend.warm_up_to(chunk)
        peaks[chunk] = meter.stop()
    cost = StartUpCost(backend.lanes.count, load_mb, rest_mb, peaks)
    logger.info(
        "start-up on %d lane(s): loaded %.0f MB (peak %.0f), warmed up %s",
        cost.lanes,
        rest_mb,
        load_mb,
        ", ".join(f"to chunk {c}: {mb:.0f} MB" for c, mb in peaks.items()),
    )
    return backend, cost


def configure(backend: SmartAdaptiveBackend, key: ConfigKey) -> None:
    """Run ``backend`` in configuration ``key`` (precision can only go down; see ``set_precision``)."""
    if key.engine != backend.options.engine or key.num_threads != backend.config.num_threads:
        raise ValueError(
            f"{key} is not a configuration of this backend ({backend.options.engine}, "
            f"{backend.config.num_threads} threads)"
        )
    if key.quantization != backend.config.quantization:
        backend.set_precision(key.quantization)
    if key.chunk_length is not None:
        backend.config = dataclasses.replace(backend.config, chunk_length=key.chunk_length)


def _workload(texts: Sequence[str]) -> list[tuple[str, int]]:
    return [(text, 1) for text in texts] + [(text, SIDE_BY_SIDE) for text in texts[::2]]


def calibrate(
    backend: SmartAdaptiveBackend,
    keys: Sequence[ConfigKey],
    *,
    store: CalibrationStore | None = None,
    machine: str | None = None,
    progress: Callable[[ConfigKey, int, int], None] | None = None,
    max_length: int | None = None,
) -> dict[ConfigKey, EstimatorConstants]:
    """Fit constants for each of ``keys`` by measuring requests in this process; save them to
    ``store`` under ``machine`` if given. Keys are run from the highest precision down, since
    lowering the weights cannot be undone in place. ``progress(key, done, total)`` is called after
    each measurement. ``max_length`` keeps the texts a workload will send (at least the two shortest
    of each set): a sweep of short texts need not wait for 1000-character calibrations."""
    texts = [
        [t for i, t in enumerate(group) if max_length is None or len(t) <= max_length or i < 2]
        for group in calibration_texts()
    ]
    train, held_out = _workload(texts[0]), _workload(texts[1])
    ordered = sorted(keys, key=lambda k: (PRECISIONS.index(k.quantization), -(k.chunk_length or 0)))
    total = len(ordered) * (len(train) + len(held_out))
    done = 0
    fitted: dict[ConfigKey, EstimatorConstants] = {}
    meter = PeakMeter()
    for key in ordered:
        configure(backend, key)
        backend.synthesize("Warm up.")  # the configuration's kernels compiled before measuring
        measured = []
        for text, concurrency in train + held_out:
            measured.append(measure(backend, text, concurrency, meter))
            done += 1
            if progress is not None:
                progress(key, done, total)
        constants = fit_constants(
            measured[: len(train)], measured[len(train) :], lanes=backend.lanes.count, knee=key.chunk_length is not None
        )
        fit = constants.fit
        if fit is None:
            raise RuntimeError(f"fit_constants scored no fit for {key}")
        logger.info(
            "calibrated %s: rest %.0f MB, %.1f MB per request + %.2f MB per 100 ids (up to %s ids), "
            "%s waiting for a lane, held-out MAPE %.1f %%, worst under-prediction %.0f MB",
            key,
            constants.base_model_mb,
            constants.per_request_mb,
            constants.per_100_tokens_mb,
            "all" if constants.knee_tokens is None else f"{constants.knee_tokens:.0f}",
            "?" if constants.queued_share is None else f"{constants.queued_share:.2f} of that",
            fit.mape_percent,
            fit.max_under_mb,
        )
        fitted[key] = constants
        if store is not None and machine is not None:
            store.save(machine, key, constants)
    return fitted


def measuring_backend(key: ConfigKey, profile: str = "auto", warm_up: bool = True) -> SmartAdaptiveBackend:
    """A backend for measuring ``key``: no admission, no cache, no pinning, the key's settings."""
    options = BackendOptions.from_settings(
        dataclasses.asdict(key), budget=False, affinity=False, estimation=False, cache=False
    )
    return SmartAdaptiveBackend(profile, options, warm_up=warm_up)
