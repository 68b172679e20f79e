"""MemoryEstimator: how much memory will synthesizing this text take, before we start?

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
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import psutil

from ..units import mib
from .budget import BudgetDecision, MemoryBudgetManager
from .hardware import HardwareInfo, HardwareProfile
from .planner import Reservation, held_mb
from .process import current_rss_mb

logger = logging.getLogger(__name__)

#: The calibration file's entry for what starting the runtime costs (beside the configurations').
STARTUP_KEY = "startup"
#: Start-up measurements kept per machine and lane count (a start is planned for their largest peaks).
START_UP_SAMPLES = 5
#: Where calibrations are stored unless ``ADAPTIVE_TTS_CALIBRATION`` or an explicit path says otherwise.
DEFAULT_CALIBRATION_PATH = Path.home() / ".cache" / "adaptive-tts" / "calibration.json"


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


def _start_up_sample(lanes: int, entry: dict) -> StartUpCost:
    return StartUpCost(
        lanes, entry["load_mb"], entry["rest_mb"], {int(chunk): mb for chunk, mb in entry["warm_up_mb"].items()}
    )


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


def calibration_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("ADAPTIVE_TTS_CALIBRATION") or DEFAULT_CALIBRATION_PATH)


class CalibrationStore:
    """A JSON file of fitted constants keyed by machine, then configuration."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = calibration_path(path)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("ignoring unreadable calibration file %s: %s", self.path, exc)
            return {}

    def load(self, machine: str, key: ConfigKey) -> EstimatorConstants | None:
        entry = self._read().get(machine, {}).get(str(key))
        if entry is None:
            return None
        fit = FitQuality(**entry["fit"]) if entry.get("fit") else None
        return EstimatorConstants(
            entry["base_model_mb"],
            entry["per_100_tokens_mb"],
            None,
            True,
            fit,
            entry.get("per_request_mb"),
            entry.get("knee_tokens"),
            entry.get("queued_share"),
        )

    def save(self, machine: str, key: ConfigKey, constants: EstimatorConstants) -> None:
        data = self._read()
        data.setdefault(machine, {})[str(key)] = {
            "base_model_mb": constants.base_model_mb,
            "per_100_tokens_mb": constants.per_100_tokens_mb,
            "per_request_mb": constants.per_request_mb,
            "knee_tokens": constants.knee_tokens,
            "queued_share": constants.queued_share,
            "fit": asdict(constants.fit) if constants.fit else None,
        }
        self._write(data)

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    def load_start_up(self, machine: str, lanes: int | None = None) -> StartUpCost | None:
        """What starting the runtime with ``lanes`` compute lanes took on ``machine`` (``None``: the
        most lanes measured), if measured: each peak the largest of the measurements kept, the rest
        the smallest."""
        entries = self._read().get(machine, {}).get(STARTUP_KEY) or {}
        name = str(lanes) if lanes is not None else max(entries, key=int, default=None)
        if name is None:
            return None
        entry = entries.get(name)
        if not isinstance(entry, dict):
            return None
        samples = [_start_up_sample(int(name), sample) for sample in entry.get("samples", [entry])]
        warm = {
            chunk: max(s.warm_up_mb[chunk] for s in samples if chunk in s.warm_up_mb)
            for chunk in sorted({chunk for s in samples for chunk in s.warm_up_mb})
        }
        return StartUpCost(int(name), max(s.load_mb for s in samples), min(s.rest_mb for s in samples), warm)

    def save_start_up(self, machine: str, cost: StartUpCost) -> None:
        """Record a start-up measurement beside the last :data:`START_UP_SAMPLES` - 1 on ``machine``.
        Why a window and not every measurement ever made: a start that once took more is planned for,
        but not for good (one reading of 307 MB against 265 and 282, the chunk-64 warm-up, refused
        every start at a sweep's floor + 50 MB level in each later run)."""
        data = self._read()
        entries = data.setdefault(machine, {})
        if not isinstance(entries.get(STARTUP_KEY), dict):
            entries[STARTUP_KEY] = {}
        old = entries[STARTUP_KEY].get(str(cost.lanes))
        samples = (old.get("samples", [old]) if isinstance(old, dict) else []) + [
            {
                "load_mb": cost.load_mb,
                "rest_mb": cost.rest_mb,
                "warm_up_mb": {str(c): mb for c, mb in sorted(cost.warm_up_mb.items())},
            }
        ]
        entries[STARTUP_KEY][str(cost.lanes)] = {"samples": samples[-START_UP_SAMPLES:]}
        self._write(data)

    def worst_under_mb(self, machine: str) -> float | None:
        """The largest under-prediction of any configuration fitted on ``machine``."""
        fits = [
            entry["fit"]["max_under_mb"]
            for name, entry in self._read().get(machine, {}).items()
            if name != STARTUP_KEY and isinstance(entry, dict) and entry.get("fit")
        ]
        return max(fits) if fits else None


def room_to_start(
    store: CalibrationStore, budget: MemoryBudgetManager, machine: str, anon_now_mb: float
) -> BudgetDecision | None:
    """May the runtime be started here at all? Checked *before* torch is imported (importing it alone
    takes ~130 MB): a start where even the most frugal measured start-up (loading, then warming the
    smallest chunk on every lane) does not fit is an OOM kill, not a slow request. ``None`` when
    start-up was never measured on ``machine`` (it is read for the most lanes measured: the lane
    count is only known once torch is). The calibrated policy's margin uses the worst
    under-prediction of any configuration fitted here, and how far the other apps may grow back to the
    most seen: the frugal start's peak is the floor's own (load, then the smallest warm-up), it is
    passed within seconds, and what stays resident is below it. Warming larger chunks, which stays,
    keeps their whole swing (:attr:`MemoryBudgetManager.resident_margin_mb`)."""
    cost = store.load_start_up(machine)
    if cost is None:
        return None
    budget.set_estimator_error(store.worst_under_mb(machine))
    return budget.check(max(0.0, cost.frugal_peak_mb - anon_now_mb))


class SeedTable(CalibrationStore):
    """No calibration, on purpose: every configuration uses the profile's seed table."""

    def __init__(self) -> None:
        super().__init__(os.devnull)

    def load(self, machine: str, key: ConfigKey) -> EstimatorConstants | None:
        return None

    def load_start_up(self, machine: str, lanes: int | None = None) -> StartUpCost | None:
        return None

    def save(self, machine: str, key: ConfigKey, constants: EstimatorConstants) -> None:
        raise TypeError("the seed table is not a calibration file")


class MemoryEstimator:
    """Predicts a synthesis's peak process memory and whether it fits what is available now."""

    def __init__(
        self,
        profile: HardwareProfile,
        key: ConfigKey,
        *,
        budget_manager: MemoryBudgetManager,
        token_counter: Callable[[str], int],
        cache_bytes: Callable[[], int] = lambda: 0,
        store: CalibrationStore | None = None,
        machine: str | None = None,
    ) -> None:
        self.profile = profile
        self.budget_manager = budget_manager
        self.token_counter = token_counter
        self.cache_bytes = cache_bytes
        self.store = store or CalibrationStore()
        self.machine = machine or machine_key(budget_manager.info)
        self.key = key
        self._warned = False
        self.constants = self._load(key)
        #: other configurations' constants, read once: admission asks for several per request
        self._others: dict[ConfigKey, EstimatorConstants] = {}

    def _load(self, key: ConfigKey) -> EstimatorConstants:
        constants = self.store.load(self.machine, key)
        if constants is not None:
            return constants
        d = self.profile.estimates
        return EstimatorConstants(d.base_model_mb, d.per_100_tokens_mb, d.cache_overhead_mb, False)

    def reload(self) -> None:
        """Re-read every configuration's constants from the store (after a calibration saved new ones)."""
        self._others.clear()
        self.constants = self._load(self.key)

    def set_config(self, key: ConfigKey) -> None:
        """The runtime changed configuration (chunk length, precision): use that configuration's fit."""
        if key != self.key:
            self.key = key
            self.constants = self._load(key)

    def constants_for(self, key: ConfigKey | None = None) -> EstimatorConstants:
        """The constants of ``key`` (default: the current configuration), read from the store once."""
        if key is None or key == self.key:
            c = self.constants
        else:
            if key not in self._others:
                self._others[key] = self._load(key)
            c = self._others[key]
        if not c.calibrated and not self._warned:
            logger.warning(
                "memory estimator uncalibrated for %s on this machine: using the profile's "
                "conservative defaults (run `python -m adaptive_tts calibrate`)",
                key or self.key,
            )
            self._warned = True
        return c

    def predict_mb(self, text_tokens: int, key: ConfigKey | None = None) -> float:
        """Peak process memory (MB) for a text of ``text_tokens`` phoneme ids under ``key``, alone."""
        c = self.constants_for(key)
        cache = c.cache_overhead_mb if c.cache_overhead_mb is not None else mib(self.cache_bytes())
        if c.per_request_mb is None:
            return c.base_model_mb + text_tokens / 100.0 * c.per_100_tokens_mb + cache
        return c.base_model_mb + lane_increment_mb(c, text_tokens) + cache

    def increment_mb(self, text_tokens: int, key: ConfigKey | None = None) -> float:
        """What one request adds to the process while it computes: the calibrated increment, or (seed
        table) the predicted absolute peak less what the process holds now."""
        c = self.constants_for(key)
        if c.per_request_mb is None:
            return self.required_mb(self.predict_mb(text_tokens, key))
        return lane_increment_mb(c, text_tokens)

    def queued_mb(self, text_tokens: int, key: ConfigKey | None = None) -> float:
        """What one request adds while it waits for a compute lane (as much as :meth:`increment_mb`
        where that was never measured)."""
        share = self.constants_for(key).queued_share
        return self.increment_mb(text_tokens, key) * (1.0 if share is None else share)

    def peak_from_now_mb(self, text_tokens: int, key: ConfigKey | None = None) -> float:
        """The process's peak if this request ran now, alone: what the process holds now plus the
        calibrated increment (a long-running process holds more than the calibration's median rest:
        compiled kernels, heap). With the seed's table: its absolute peak."""
        c = self.constants_for(key)
        if c.per_request_mb is None:
            return self.predict_mb(text_tokens, key)
        return current_rss_mb() + self.increment_mb(text_tokens, key)

    def required_mb(self, estimated_mb: float) -> float:
        """What the process must still allocate: the estimate less what it already holds."""
        return max(0.0, estimated_mb - current_rss_mb())

    def estimate(self, text: str) -> dict:
        """The seed's ``/estimate-memory`` payload for ``text``."""
        tokens = self.token_counter(text)
        estimated = self.peak_from_now_mb(tokens)
        required = self.increment_mb(tokens)
        decision = self.budget_manager.check(required)
        recommendation = (
            "OK"
            if decision.allowed
            else (
                f"Text may be too long for this hardware: needs {required:.0f} MB more plus a "
                f"{decision.safety_margin_mb:.0f} MB safety margin, {decision.available_mb:.0f} MB available. "
                "Shorten the text, clear the cache, or close other applications."
            )
        )
        return {
            "status": "ok" if decision.allowed else "warning",
            "estimate": {
                "estimated_mb": round(estimated, 1),
                "required_mb": round(required, 1),
                "available_mb": round(decision.available_mb, 1),
                "safe": decision.allowed,
                "text_tokens": tokens,
                "text_length": len(text),
                "calibrated": self.constants.calibrated,
                "configuration": str(self.key),
            },
            "recommendation": recommendation,
        }


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------


def calibration_texts() -> tuple[list[str], list[str]]:
    """Training and held-out texts from 50 to 1000 characters, cut at word boundaries.

    Paragraphs are disjoint between the two sets, so the held-out error is an honest one.
    """
    paragraphs = [
        p
        for p in resources.files("adaptive_tts")
        .joinpath("data", "calibration.txt")
        .read_text(encoding="utf-8")
        .splitlines()
        if p.strip()
    ]
    train_src, test_src = " ".join(paragraphs[::2]), " ".join(paragraphs[1::2])

    def cut(source: str, length: int) -> str:
        source = (source + " ") * (length // max(1, len(source)) + 1)
        return source[: length + 1].rsplit(" ", 1)[0].strip()

    return (
        [cut(train_src, n) for n in (50, 150, 300, 500, 750, 1000)],
        [cut(test_src, n) for n in (100, 300, 500, 800, 1000)],
    )


@dataclass(frozen=True)
class ProbeResult:
    """One calibration measurement: ``concurrency`` requests of one text side by side."""

    text_length: int
    text_tokens: int
    peak_rss_mb: float
    #: the process's RSS just before the request(s); None: a whole-process peak (no increment known)
    rest_mb: float | None = None
    concurrency: int = 1


def _rest_mb(result: ProbeResult) -> float:
    """``result``'s rest reading, for the fit of increments over rest (which runs only when every
    result has one)."""
    if result.rest_mb is None:
        raise ValueError(f"the probe of {result.text_tokens} ids has no rest reading to fit an increment to")
    return result.rest_mb


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope, the slope clipped at 0 (memory never falls with length)."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var_x = sum((x - mean_x) ** 2 for x in xs)
    slope = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var_x) if var_x else 0.0
    return mean_y - slope * mean_x, slope


def _hinge(tokens: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """``y = intercept + slope * min(tokens, knee) / 100`` by least squares, the knee chosen among the
    measured token counts (on a tie the larger: growth is assumed to go on as far as it was seen)."""
    best: tuple[float, float, float, float] | None = None
    for knee in sorted(set(tokens)):
        xs = [min(t, knee) / 100.0 for t in tokens]
        intercept, slope = _line(xs, ys)
        sse = sum((intercept + slope * x - y) ** 2 for x, y in zip(xs, ys))
        if best is None or sse <= best[0] + 1e-9 * (1.0 + best[0]):
            best = (sse, intercept, slope, knee)
    assert best is not None
    return best[1], best[2], best[3]


def fit_constants(
    results: Sequence[ProbeResult], held_out: Sequence[ProbeResult], *, lanes: int = 1, knee: bool = False
) -> EstimatorConstants:
    """Fit the formula on ``results`` and score it on ``held_out``.

    With rest readings: the increment of one request alone against its ids, a straight line or, with
    ``knee`` (a chunked decoder), a line that stops rising at a fitted knee; base = median rest; the
    requests measured side by side beyond ``lanes`` give what a request waiting for a lane adds
    (``queued_share`` of its increment). A held-out prediction is
    ``rest + (min(n, lanes) + queued_share * max(0, n - lanes)) * increment``.
    Without rest readings: a line through (tokens / 100, whole-process peak). MAPE is scored on the
    held-out texts; ``max_under_mb`` is the largest under-prediction over all measurements (the
    calibrated budget policy keeps it free).
    """
    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}")
    incremental = all(r.rest_mb is not None for r in [*results, *held_out])
    per_request: float | None = None
    knee_tokens: float | None = None
    share: float | None = None
    if incremental:
        alone = [r for r in results if r.concurrency == 1] or list(results)
        tokens = [float(r.text_tokens) for r in alone]
        ys = [(r.peak_rss_mb - _rest_mb(r)) / r.concurrency for r in alone]
        if knee:
            per_request, slope, knee_tokens = _hinge(tokens, ys)
        else:
            per_request, slope = _line([t / 100.0 for t in tokens], ys)
        base = statistics.median(_rest_mb(r) for r in results)
        lane_fit = EstimatorConstants(base, slope, None, True, None, per_request, knee_tokens)
        shares = [
            (r.peak_rss_mb - _rest_mb(r) - lanes * increment) / (r.concurrency - lanes) / increment
            for r in results
            if r.concurrency > lanes and (increment := lane_increment_mb(lane_fit, r.text_tokens)) > 0
        ]
        if shares:
            share = min(1.0, max(0.0, statistics.fmean(shares)))

        def predict(r: ProbeResult) -> float:
            increment = lane_increment_mb(lane_fit, r.text_tokens)
            one = Reservation(increment, increment * (1.0 if share is None else share))
            return _rest_mb(r) + held_mb([one] * r.concurrency, lanes)
    else:
        base, slope = _line([r.text_tokens / 100.0 for r in results], [r.peak_rss_mb for r in results])

        def predict(r: ProbeResult) -> float:
            return base + slope * r.text_tokens / 100.0

    errors = [predict(r) - r.peak_rss_mb for r in held_out]
    # The worst under-prediction is taken over every measurement, training ones too: with a handful of
    # held-out texts the held-out worst alone can be 0, and it is what the calibrated policy keeps free.
    worst = min(errors + [predict(r) - r.peak_rss_mb for r in results])
    fit = FitQuality(
        n_train=len(results),
        n_test=len(held_out),
        mape_percent=100.0 * statistics.fmean(abs(e) / r.peak_rss_mb for e, r in zip(errors, held_out)),
        max_under_mb=max(0.0, -worst),
        max_over_mb=max(0.0, max(errors)),
    )
    return EstimatorConstants(base, slope, None, True, fit, per_request, knee_tokens, share)
