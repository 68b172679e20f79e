"""The seed feature: :class:`MemoryEstimator`, pre-synthesis memory estimation, and the seed's
``/estimate-memory`` payload (:meth:`MemoryEstimator.estimate`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...units import mib
from ..budget import MemoryBudgetManager
from ..hardware import HardwareProfile
from ..process import current_rss_mb
from .constants import ConfigKey, EstimatorConstants, lane_increment_mb, machine_key
from .store import CalibrationStore

logger = logging.getLogger(__name__)


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
