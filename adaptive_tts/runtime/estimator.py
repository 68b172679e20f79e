"""MemoryEstimator: how much memory will synthesizing this text take, before we start?

The seed's formula, ``M = base + (tokens / 100) * per_100 + cache_overhead``, with ``base`` and
``per_100`` **fitted from measurements** on this machine for each configuration (engine, quantization,
chunk length, threads) by ``python -m adaptive_tts calibrate``: each calibration text is synthesized in a
fresh process and the kernel's peak RSS (``VmHWM``) of that process is recorded, so the fit describes the
real process and not a model of it. ``cache_overhead`` is the audio cache's current size, which is known
exactly. Until a configuration is calibrated the estimator falls back to the profile's conservative
defaults (the seed's table) and says so in every estimate.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import psutil

from .budget import MemoryBudgetManager
from .hardware import HardwareInfo, HardwareProfile

logger = logging.getLogger(__name__)

MB = 1024 * 1024
#: Where calibrations are stored unless ``ADAPTIVE_TTS_CALIBRATION`` or an explicit path says otherwise.
DEFAULT_CALIBRATION_PATH = Path.home() / ".cache" / "adaptive-tts" / "calibration.json"


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
    max_under_mb: float  # largest under-prediction on held-out texts (0 if none)
    max_over_mb: float


@dataclass(frozen=True)
class EstimatorConstants:
    base_model_mb: float
    per_100_tokens_mb: float
    cache_overhead_mb: float | None  # None: the cache's live size is used (calibrated)
    calibrated: bool
    fit: FitQuality | None = None


def machine_key(info: HardwareInfo | None = None) -> str:
    """Calibrations are only valid on the machine (and memory cap) they were measured on."""
    cpu = info.cpu_model if info else platform.processor()
    cores = info.logical_cores if info else os.cpu_count()
    ram = round((info.effective_memory_mb if info else psutil.virtual_memory().total / MB) / 1024)
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
        return EstimatorConstants(entry["base_model_mb"], entry["per_100_tokens_mb"], None, True, fit)

    def save(self, machine: str, key: ConfigKey, constants: EstimatorConstants) -> None:
        data = self._read()
        data.setdefault(machine, {})[str(key)] = {
            "base_model_mb": constants.base_model_mb,
            "per_100_tokens_mb": constants.per_100_tokens_mb,
            "fit": asdict(constants.fit) if constants.fit else None,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)


def peak_rss_mb() -> float:
    """This process's peak resident set so far, as the kernel counts it.

    Linux: ``VmHWM``, which belongs to this process image. ``ru_maxrss`` is only the fallback (macOS):
    Linux carries it across ``execve``, so a probe started by a large parent would report the parent's
    size instead of its own.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


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

    def set_config(self, key: ConfigKey) -> None:
        """The runtime changed configuration (chunk length, precision): use that configuration's fit."""
        if key != self.key:
            self.key = key
            self.constants = self._load(key)

    def predict_mb(self, text_tokens: int, key: ConfigKey | None = None) -> float:
        """Peak process memory (MB) for a text of ``text_tokens`` phoneme ids under ``key``."""
        if key is None or key == self.key:
            key, c = self.key, self.constants
        else:
            if key not in self._others:
                self._others[key] = self._load(key)
            c = self._others[key]
        if not c.calibrated and not self._warned:
            logger.warning("memory estimator uncalibrated for %s on this machine: using the profile's "
                           "conservative defaults (run `python -m adaptive_tts calibrate`)", key)
            self._warned = True
        cache = c.cache_overhead_mb if c.cache_overhead_mb is not None else self.cache_bytes() / MB
        return c.base_model_mb + text_tokens / 100.0 * c.per_100_tokens_mb + cache

    def required_mb(self, estimated_mb: float) -> float:
        """What the process must still allocate: the estimate less what it already holds."""
        return max(0.0, estimated_mb - current_rss_mb())

    def estimate(self, text: str) -> dict:
        """The seed's ``/estimate-memory`` payload for ``text``."""
        tokens = self.token_counter(text)
        estimated = self.predict_mb(tokens)
        required = self.required_mb(estimated)
        decision = self.budget_manager.check(required)
        recommendation = "OK" if decision.allowed else (
            f"Text may be too long for this hardware: needs {required:.0f} MB more plus a "
            f"{decision.safety_margin_mb:.0f} MB safety margin, {decision.available_mb:.0f} MB available. "
            "Shorten the text, clear the cache, or close other applications."
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
    paragraphs = [p for p in resources.files("adaptive_tts").joinpath("data", "calibration.txt")
                  .read_text(encoding="utf-8").splitlines() if p.strip()]
    train_src, test_src = " ".join(paragraphs[::2]), " ".join(paragraphs[1::2])

    def cut(source: str, length: int) -> str:
        source = (source + " ") * (length // max(1, len(source)) + 1)
        return source[: length + 1].rsplit(" ", 1)[0].strip()

    return ([cut(train_src, n) for n in (50, 150, 300, 500, 750, 1000)],
            [cut(test_src, n) for n in (100, 300, 500, 800, 1000)])


@dataclass(frozen=True)
class ProbeResult:
    text_length: int
    text_tokens: int
    peak_rss_mb: float


def probe(key: ConfigKey, text: str, timeout_s: float = 600) -> ProbeResult:
    """Synthesize ``text`` under ``key`` in a fresh process; return its tokens and kernel peak RSS."""
    request = json.dumps({"key": asdict(key), "text": text})
    done = subprocess.run([sys.executable, "-m", "adaptive_tts.runtime.estimator"], input=request,
                          capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"calibration probe failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return ProbeResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def fit_constants(results: Sequence[ProbeResult], held_out: Sequence[ProbeResult]) -> EstimatorConstants:
    """Least-squares line through (tokens / 100, peak MB), slope clipped at 0, scored on held-out texts."""
    xs = [r.text_tokens / 100.0 for r in results]
    ys = [r.peak_rss_mb for r in results]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var_x = sum((x - mean_x) ** 2 for x in xs)
    slope = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var_x) if var_x else 0.0
    base = mean_y - slope * mean_x
    errors = [(base + slope * r.text_tokens / 100.0) - r.peak_rss_mb for r in held_out]
    fit = FitQuality(
        n_train=len(results), n_test=len(held_out),
        mape_percent=100.0 * statistics.fmean(abs(e) / r.peak_rss_mb for e, r in zip(errors, held_out)),
        max_under_mb=max(0.0, -min(errors)), max_over_mb=max(0.0, max(errors)),
    )
    return EstimatorConstants(base, slope, None, True, fit)


def _probe_main() -> None:
    """Child side of :func:`probe`: build the runtime as the backend would, synthesize, report VmHWM."""
    from adaptive_tts.backend import BackendOptions, SmartAdaptiveBackend

    request = json.loads(sys.stdin.read())
    key = ConfigKey(**request["key"])
    backend = SmartAdaptiveBackend(options=BackendOptions(
        budget=False, affinity=False, estimation=False, cache=False, engine=key.engine,
        quantization=key.quantization, chunk_length=key.chunk_length, num_threads=key.num_threads,
        compute=key.compute))
    result = backend.synthesize(request["text"])
    peak = peak_rss_mb()
    print(json.dumps({"text_length": len(request["text"]), "text_tokens": result.text_tokens, "peak_rss_mb": peak}))


if __name__ == "__main__":
    _probe_main()
