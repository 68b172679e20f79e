"""The verb: :func:`quantize_` applies a :class:`~.strategy.QuantizationStrategy` to a model in place."""

from __future__ import annotations

import logging
import math

from torch import nn

from ...voice.vits import VitsModel
from .calibration import CalibrationScore, CalibrationSet
from .groups import _group_bytes, _set_module, layer_groups, weight_bytes
from .layers import QUANTIZED_LAYERS, precision_of
from .search import _build, _Calibrator, _layer_wise
from .strategy import GroupReport, Promotion, QuantizationReport, QuantizationStrategy

logger = logging.getLogger(__name__)


def _own_memory(model: nn.Module) -> None:
    """Give every remaining floating-point parameter and buffer its own memory.

    :func:`~adaptive_tts.voice.weights.load_vits` memory-maps the converted weights file; the norms,
    relative-position embeddings and any group kept at fp32 are views into that one mapping, and while
    one view lives every fp32 page quantization touched stays resident. Copies cost their own size only.
    """
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=False)
        for name, b in list(module._buffers.items()):
            if b is not None and b.is_floating_point():
                module._buffers[name] = b.clone()


def _weight_count(layer: nn.Module) -> int:
    """Weights and biases of a layer, whether fp32 or packed."""
    if not isinstance(layer, QUANTIZED_LAYERS):
        return sum(p.numel() for p in layer.parameters())
    bias = getattr(layer, "bias", None)
    return math.prod(layer.packed_weight.shape) + (0 if bias is None else bias.numel())


def quantize_(
    model: VitsModel, strategy: QuantizationStrategy, calibration: CalibrationSet | None = None
) -> QuantizationReport:
    """Quantize ``model`` in place as ``strategy`` says; returns what was done.

    Layer-wise strategies need a ``calibration`` set (``CalibrationSet.default(frontend, voice_config,
    strategy.calibration_size)``) and an fp32 model. Given a calibration set, any strategy's result is
    also scored against the model as it was (same noise, same durations) before its weights are dropped.
    An already quantized model can be quantized again to a lower precision (the report's "before" is
    then the model as given, not fp32).
    """
    groups = layer_groups(model)
    unknown = sorted(set(strategy.precisions or {}) - set(groups))
    if unknown:
        raise ValueError(f"unknown layer groups {unknown}; valid groups: {', '.join(groups)}")
    calibrating = strategy.layer_wise and strategy.mode != "fp32" and strategy.precisions is None
    if calibrating and calibration is None:
        raise ValueError(
            "layer-wise quantization needs a CalibrationSet "
            "(CalibrationSet.default(frontend, voice_config, strategy.calibration_size))"
        )
    already = sorted({precision_of(model.get_submodule(p)) for paths in groups.values() for p in paths} - {"fp32"})
    if calibrating and already:
        raise ValueError(f"layer-wise calibration compares against fp32, but the model is already {already}")
    bytes_before = weight_bytes(model)
    group_bytes = {g: sum(weight_bytes(model.get_submodule(p)) for p in paths) for g, paths in groups.items()}
    parameters = {g: sum(_weight_count(model.get_submodule(p)) for p in paths) for g, paths in groups.items()}
    fixed_bytes = bytes_before - sum(group_bytes.values())
    notes: list[str] = []
    promotions: list[Promotion] = []
    alone: dict[str, CalibrationScore] = {}
    final: CalibrationScore | None
    calib = _Calibrator(model, groups, strategy, calibration) if calibration is not None else None

    if calibrating:
        assert calib is not None
        assignment, alone, final = _layer_wise(calib, strategy, fixed_bytes, group_bytes, promotions, notes)
    else:
        assignment = {g: (strategy.precisions or {}).get(g, strategy.mode) for g in groups}
        final = calib.score(assignment) if calib is not None else None
    if strategy.dynamic and "int4" in assignment.values():
        notes.append("dynamic INT8 applies only to groups at INT8; INT4 groups are weight-only")

    group_reports = []
    for g, paths in groups.items():
        layers = calib.layers(g, assignment[g]) if calib is not None else _build(model, paths, assignment[g], strategy)
        for path, module in layers.items():
            _set_module(model, path, module)
        kept = _group_bytes(layers)
        score = alone.get(g)
        group_reports.append(
            GroupReport(
                name=g,
                parameters=parameters[g],
                precision=assignment[g],
                bytes=kept,
                alone=score.quality if score else None,
                alone_duration_change=score.duration_change if score else None,
            )
        )
        logger.info("quantize: %-20s %-4s %3d layers, %.2f MB", g, assignment[g], len(paths), kept / 1e6)
    if strategy.mode != "fp32" or any(p != "fp32" for p in assignment.values()):
        _own_memory(model)
    del calib  # the layers built for other precisions go with it
    bytes_after = weight_bytes(model)
    report = QuantizationReport(
        mode=strategy.mode,
        strategy=strategy,
        groups=group_reports,
        bytes_before=bytes_before,
        bytes_after=bytes_after,
        quality=final.quality if final else None,
        duration_change=final.duration_change if final else None,
        calibration_samples=len(calibration) if calibration is not None else 0,
        meets_bound=final.within(strategy.mcd_bound_db, strategy.duration_change_bound) if final else None,
        promotions=promotions,
        notes=notes,
    )
    logger.info(
        "quantize: %s → %.2f MB of %.2f MB (%.3f×)%s",
        strategy.mode,
        bytes_after / 1e6,
        bytes_before / 1e6,
        report.ratio,
        f", MCD {final.quality.mcd_db:.3f} dB vs fp32" if final else "",
    )
    return report
