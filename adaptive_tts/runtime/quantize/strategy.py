"""The config object :func:`~adaptive_tts.runtime.quantize.quantize_` takes (:class:`QuantizationStrategy`)
and what it returns (:class:`QuantizationReport`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..hardware import INT4_BELOW_GB, HardwareProfile
from ..quality import MCD_BOUND_DB, QualityScore
from .layers import PRECISIONS

logger = logging.getLogger(__name__)

#: Valid ``QuantizationStrategy.mode`` values, lowest memory last.
MODES = ("fp32", "int8", "int4")
#: The brief's byte targets relative to fp32; a layer-wise choice may spend up to this on promotions.
DEFAULT_MEMORY_TARGET_RATIO = {"fp32": 1.0, "int8": 0.27, "int4": 0.15}
#: Integer durations may move by at most this fraction of the sentence's frames (Σ|Δ frames| over the
#: phonemes / total frames). Measured on the calibration sentences: INT8 moves 1–2 % (isolated one-frame
#: flips of ``ceil`` for phonemes near a frame boundary, 11.6 ms each); the INT4 duration predictor moves
#: ~15 % (systematic: the speaking rhythm changes); the fp32 model's own ``noise_w`` sampling moves ~35 %
#: between seeds. 5 % separates isolated flips from a changed rhythm.
DURATION_CHANGE_BOUND = 0.05


@dataclass(frozen=True)
class QuantizationStrategy:
    """How to quantize: the seed's table row (mode, layer-wise, weight-only, dynamic, calibration size)
    plus what calibration needs (quality bounds, memory target).

    ``mode`` is the precision every group starts at; ``weight_only`` packs weights and dequantizes in
    ``forward``; ``dynamic`` uses integer kernels with activations quantized on the fly where that was
    measured to help (:data:`~adaptive_tts.runtime.quantize.layers.DYNAMIC_SCOPE`, INT8 only).
    ``memory_target_ratio`` caps the layer-wise result's weight bytes relative to fp32 (``None``:
    :data:`DEFAULT_MEMORY_TARGET_RATIO` of the mode). ``precisions`` applies a per-group choice made
    earlier (``QuantizationReport.precisions``) as given, without calibrating again; groups it does not
    name get ``mode``.
    """

    mode: str = "int8"
    weight_only: bool = True
    dynamic: bool = False
    layer_wise: bool = False
    calibration_size: int = 32
    mcd_bound_db: float = MCD_BOUND_DB
    duration_change_bound: float = DURATION_CHANGE_BOUND
    memory_target_ratio: float | None = None
    precisions: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown quantization mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if self.mode == "int8" and not (self.weight_only or self.dynamic):
            raise ValueError("mode int8 needs weight_only or dynamic (or both); neither is set")
        if self.mode == "int4" and not self.weight_only:
            raise ValueError("mode int4 is weight-only (no INT4 activation kernels): set weight_only")
        if self.calibration_size < 1:
            raise ValueError(f"calibration_size must be >= 1, got {self.calibration_size}")
        if self.memory_target_ratio is not None and self.memory_target_ratio <= 0:
            raise ValueError(f"memory_target_ratio must be > 0, got {self.memory_target_ratio}")
        bad = {g: p for g, p in (self.precisions or {}).items() if p not in PRECISIONS}
        if bad:
            raise ValueError(f"unknown precisions {bad}; valid precisions: {', '.join(PRECISIONS)}")

    @property
    def target_ratio(self) -> float:
        """The layer-wise memory target as a fraction of the fp32 weight bytes."""
        if self.memory_target_ratio is not None:
            return self.memory_target_ratio
        return DEFAULT_MEMORY_TARGET_RATIO[self.mode]

    @classmethod
    def for_profile(cls, profile: HardwareProfile, available_mb: float | None = None) -> QuantizationStrategy:
        """The profile's quantization row; INT4 when ``available_mb`` is under :data:`INT4_BELOW_GB`.

        The seed's adaptive rule: with less than 6 GB available, INT8 leaves too little room for
        anything else, so the model goes to INT4 (with a warning: quality drops measurably, see
        :data:`~adaptive_tts.runtime.quality.MCD_BOUND_DB`). INT4 is weight-only whatever the row says.
        """
        row = profile.quantization
        mode = row.quantization
        if available_mb is not None and available_mb < INT4_BELOW_GB * 1024 and mode != "int4":
            logger.warning(
                "Aggressive quantization: INT4 instead of %s (%.0f MB available < %.0f GB)",
                mode.upper(),
                available_mb,
                INT4_BELOW_GB,
            )
            mode = "int4"
        return cls(
            mode=mode,
            weight_only=row.weight_only or mode == "int4",
            dynamic=row.dynamic,
            layer_wise=row.layer_wise,
            calibration_size=row.calibration_size,
        )


@dataclass(frozen=True)
class GroupReport:
    """One layer group: its size, the precision chosen, and (if calibrated) its effect alone."""

    name: str
    parameters: int
    precision: str
    bytes: int
    #: the group alone at the strategy's mode, everything else fp32; None when not calibrated
    alone: QualityScore | None = None
    alone_duration_change: float | None = None


@dataclass(frozen=True)
class Promotion:
    """One layer-wise step: a group raised to ``precision``, and the whole model's quality after it."""

    group: str
    precision: str
    quality: QualityScore
    duration_change: float
    bytes: int


@dataclass(frozen=True)
class QuantizationReport:
    """What ``quantize_`` did: per-group precision, bytes before/after, and measured quality if any."""

    mode: str
    strategy: QuantizationStrategy
    groups: list[GroupReport]
    bytes_before: int
    bytes_after: int
    #: the whole quantized model vs the model as given (fp32) on the calibration set, same noise and durations
    quality: QualityScore | None = None
    duration_change: float | None = None
    calibration_samples: int = 0
    meets_bound: bool | None = None
    #: layer-wise promotions in the order they were made (most sensitive group that fits, first)
    promotions: list[Promotion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.bytes_after / self.bytes_before

    @property
    def precisions(self) -> dict[str, str]:
        return {g.name: g.precision for g in self.groups}
