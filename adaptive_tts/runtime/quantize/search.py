"""Layer-wise precision search: score each layer group alone on a calibration set, then promote the
most sensitive groups to higher precision, one at a time, until the whole model meets the quality
bound or the memory target leaves no room. Every choice is logged."""

from __future__ import annotations

import logging

from torch import nn

from ...voice.vits import VitsModel
from .calibration import CalibrationScore, CalibrationSet
from .groups import _group_bytes, _swapped
from .layers import PRECISIONS, quantized_layer
from .strategy import Promotion, QuantizationStrategy

logger = logging.getLogger(__name__)


def _build(model: VitsModel, paths: list[str], precision: str, strategy: QuantizationStrategy) -> dict[str, nn.Module]:
    return {
        p: quantized_layer(p, model.get_submodule(p), precision, strategy.dynamic, strategy.weight_only) for p in paths
    }


class _Calibrator:
    """Builds each group's quantized layers once per precision and scores assignments against fp32."""

    def __init__(
        self,
        model: VitsModel,
        groups: dict[str, list[str]],
        strategy: QuantizationStrategy,
        calibration: CalibrationSet,
    ) -> None:
        self.model, self.groups, self.strategy, self.calibration = model, groups, strategy, calibration
        self.built: dict[tuple[str, str], dict[str, nn.Module]] = {}
        self.references = calibration.references(model)

    def layers(self, group: str, precision: str) -> dict[str, nn.Module]:
        key = (group, precision)
        if key not in self.built:
            self.built[key] = _build(self.model, self.groups[group], precision, self.strategy)
        return self.built[key]

    def score(self, assignment: dict[str, str]) -> CalibrationScore:
        replacements: dict[str, nn.Module] = {}
        for group, precision in assignment.items():
            if precision != "fp32":
                replacements.update(self.layers(group, precision))
        with _swapped(self.model, replacements):
            return self.calibration.score(self.model, self.references)


def _sensitivity(score: CalibrationScore, strategy: QuantizationStrategy) -> float:
    """How far one group alone goes towards the bounds (1.0 = alone it uses up a whole bound)."""
    return max(score.quality.mcd_db / strategy.mcd_bound_db, score.duration_change / strategy.duration_change_bound)


def _layer_wise(
    calib: _Calibrator,
    strategy: QuantizationStrategy,
    fixed_bytes: int,
    fp32_bytes: dict[str, int],
    promotions: list[Promotion],
    notes: list[str],
) -> tuple[dict[str, str], dict[str, CalibrationScore], CalibrationScore]:
    """Choose each group's precision: measure groups alone, then promote the most sensitive ones."""
    groups = list(calib.groups)
    fp32 = {g: "fp32" for g in groups}
    alone = {g: calib.score({**fp32, g: strategy.mode}) for g in groups}
    for g, s in alone.items():
        logger.info(
            "calibration: %-20s alone at %s: MCD %.3f dB, log-mel %.3f dB, durations moved %.2f %%",
            g,
            strategy.mode,
            s.quality.mcd_db,
            s.quality.log_mel_db,
            100 * s.duration_change,
        )
    # a group's sensitivity at its *current* precision: re-measured alone after each promotion to INT8,
    # so that a group whose INT8 copy is already harmless is not promoted again to fp32 for nothing
    sensitivity = {g: _sensitivity(alone[g], strategy) for g in groups}
    target = strategy.target_ratio * (fixed_bytes + sum(fp32_bytes.values()))

    def size(assignment: dict[str, str]) -> int:
        return fixed_bytes + sum(
            fp32_bytes[g] if p == "fp32" else _group_bytes(calib.layers(g, p)) for g, p in assignment.items()
        )

    assignment = {g: strategy.mode for g in groups}
    current = calib.score(assignment)
    logger.info(
        "calibration: all groups at %s → MCD %.3f dB, durations moved %.2f %%, %.2f MB",
        strategy.mode,
        current.quality.mcd_db,
        100 * current.duration_change,
        size(assignment) / 1e6,
    )
    while not current.within(strategy.mcd_bound_db, strategy.duration_change_bound):
        fitting = [
            (g, promoted)
            for g in sorted(groups, key=sensitivity.__getitem__, reverse=True)
            if assignment[g] != "fp32"
            for promoted in [{**assignment, g: PRECISIONS[PRECISIONS.index(assignment[g]) + 1]}]
            if size(promoted) <= target
        ]
        if not fitting:
            note = (
                f"quality bound not met within the memory target ({target / 1e6:.2f} MB): MCD "
                f"{current.quality.mcd_db:.3f} dB (bound {strategy.mcd_bound_db}), durations moved "
                f"{100 * current.duration_change:.2f} % (bound {100 * strategy.duration_change_bound:g} %)"
            )
            logger.warning(note)
            notes.append(note)
            break
        group, assignment = fitting[0]
        current = calib.score(assignment)
        promotions.append(
            Promotion(group, assignment[group], current.quality, current.duration_change, size(assignment))
        )
        logger.info(
            "calibration: promoted %s to %s → MCD %.3f dB, durations moved %.2f %%, %.2f MB",
            group,
            assignment[group],
            current.quality.mcd_db,
            100 * current.duration_change,
            size(assignment) / 1e6,
        )
        if assignment[group] != "fp32":
            sensitivity[group] = _sensitivity(calib.score({**fp32, group: assignment[group]}), strategy)
    return assignment, alone, current
