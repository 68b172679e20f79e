"""The calibration file: :class:`CalibrationStore` (fitted constants keyed by machine, then
configuration, and the start-up measurements beside them), :class:`SeedTable` (no calibration, on
purpose) and :func:`room_to_start` (may the runtime be started here at all?).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from ..budget import BudgetDecision, MemoryBudgetManager
from .constants import ConfigKey, EstimatorConstants, FitQuality, StartUpCost

logger = logging.getLogger(__name__)

#: The calibration file's entry for what starting the runtime costs (beside the configurations').
STARTUP_KEY = "startup"
#: Start-up measurements kept per machine and lane count (a start is planned for their largest peaks).
START_UP_SAMPLES = 5
#: Where calibrations are stored unless ``ADAPTIVE_TTS_CALIBRATION`` or an explicit path says otherwise.
DEFAULT_CALIBRATION_PATH = Path.home() / ".cache" / "adaptive-tts" / "calibration.json"


def _start_up_sample(lanes: int, entry: dict) -> StartUpCost:
    return StartUpCost(
        lanes, entry["load_mb"], entry["rest_mb"], {int(chunk): mb for chunk, mb in entry["warm_up_mb"].items()}
    )


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
