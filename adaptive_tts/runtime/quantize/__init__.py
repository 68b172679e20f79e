"""Quantization of our PyTorch VITS, torchao style: one verb and a config object.

    report = quantize_(model, QuantizationStrategy(mode="int8"))

``quantize_`` replaces the model's convolutions and the phoneme embedding *in place* by small modules
that hold packed integer weights, so the fp32 weights are freed and resident memory really shrinks.
INT8 keeps one fp32 scale per output channel; INT4 packs two weights to a byte with an fp16 scale per
group of 64 along the input axis (per-channel scales alone are too coarse at 4 bits). Both round
symmetrically to nearest, so each dequantized weight is within ``scale / 2`` of the original.
*Weight-only* layers dequantize in ``forward`` and compute in fp32 (memory shrinks, compute does not
get faster); *dynamic* INT8 layers quantize activations on the fly and multiply in integers, only
where that was measured to pay off.

*Layer-wise* quantization (``QuantizationStrategy.layer_wise``) calibrates: each :func:`layer_groups`
group is quantized alone and rendered on a :class:`CalibrationSet` against fp32 with the same noise and
the same durations (:mod:`adaptive_tts.runtime.quality`); then the most sensitive groups are promoted to
higher precision, one at a time, until the whole model meets the quality bound or the memory target
leaves no room. Every choice is logged and returned in the :class:`QuantizationReport`.

The modules, each importing only those above it:

* :mod:`.packing` — :class:`Int8Weight`, :class:`Int4Weight`: packed weights and their scales.
* :mod:`.layers` — the quantized ``nn.Module`` s (weight-only convs and embedding,
  :class:`DynamicInt8Conv1d`) and :func:`quantized_layer`, which picks one for a layer and precision.
* :mod:`.groups` — :func:`layer_groups`, the units calibration scores, and :func:`weight_bytes`.
* :mod:`.strategy` — :class:`QuantizationStrategy` (the config object) and :class:`QuantizationReport`.
* :mod:`.calibration` — :class:`CalibrationSet`: fixed-noise renderings scored against fp32.
* :mod:`.search` — the layer-wise search for each group's precision.
* :mod:`.api` — :func:`quantize_`, the verb.

Nothing here imports :mod:`adaptive_tts.backend` or anything above it.
"""

from __future__ import annotations

from .api import quantize_
from .calibration import (
    CALIBRATION_SENTENCES,
    CalibrationScore,
    CalibrationSet,
    Rendering,
)
from .groups import layer_groups, weight_bytes
from .layers import (
    DYNAMIC_MIN_ROW_LENGTH,
    DYNAMIC_SCOPE,
    FLOAT_LAYERS,
    PRECISIONS,
    QUANTIZABLE,
    QUANTIZED_LAYERS,
    DynamicInt8Conv1d,
    WeightOnlyConv1d,
    WeightOnlyConvTranspose1d,
    WeightOnlyEmbedding,
    native_int8_dot,
    precision_of,
    quantized_layer,
)
from .packing import INT4_GROUP_SIZE, Int4Weight, Int8Weight, PackedWeight, pack_weight
from .strategy import (
    DEFAULT_MEMORY_TARGET_RATIO,
    DURATION_CHANGE_BOUND,
    MODES,
    GroupReport,
    Promotion,
    QuantizationReport,
    QuantizationStrategy,
)

__all__ = [
    "CALIBRATION_SENTENCES",
    "DEFAULT_MEMORY_TARGET_RATIO",
    "DURATION_CHANGE_BOUND",
    "DYNAMIC_MIN_ROW_LENGTH",
    "DYNAMIC_SCOPE",
    "FLOAT_LAYERS",
    "INT4_GROUP_SIZE",
    "MODES",
    "PRECISIONS",
    "QUANTIZABLE",
    "QUANTIZED_LAYERS",
    "CalibrationScore",
    "CalibrationSet",
    "DynamicInt8Conv1d",
    "GroupReport",
    "Int4Weight",
    "Int8Weight",
    "PackedWeight",
    "Promotion",
    "QuantizationReport",
    "QuantizationStrategy",
    "Rendering",
    "WeightOnlyConv1d",
    "WeightOnlyConvTranspose1d",
    "WeightOnlyEmbedding",
    "layer_groups",
    "native_int8_dot",
    "pack_weight",
    "precision_of",
    "quantize_",
    "quantized_layer",
    "weight_bytes",
]
