"""Quantization of our PyTorch VITS, torchao style: one verb and a config object.

    report = quantize_(model, QuantizationStrategy(mode="int8"))

``quantize_`` replaces the model's convolutions and the phoneme embedding *in place* by small modules
that hold packed integer weights, so the fp32 weights are freed and resident memory really shrinks:

* :class:`Int8Weight` — one signed byte per weight, one fp32 scale per output channel.
* :class:`Int4Weight` — two weights per byte (a ``uint8`` buffer), one fp16 scale per group of
  ``group_size`` consecutive weights along the input axis (input channels × kernel taps) of each output
  channel. Per-channel scales alone are too coarse at 4 bits: one large tap would flatten the rest of the
  channel to zero.

Both are symmetric round-to-nearest, so each dequantized weight is within ``scale / 2`` of the original.

Layers that hold them:

* :class:`WeightOnlyConv1d`, :class:`WeightOnlyConvTranspose1d`, :class:`WeightOnlyEmbedding` —
  *weight-only*: the weight is dequantized to fp32 in ``forward`` (a few MB at most, freed right after)
  and the arithmetic stays fp32. Memory shrinks; compute does not get faster.
* :class:`DynamicInt8Conv1d` — *dynamic* INT8: activations are quantized on the fly (per time step,
  symmetric) and multiplied with the INT8 weights in integer arithmetic (``torch._int_mm``, the kernel
  torchao's dynamic-activation config uses), via im2col for kernels wider than one tap. Used only in
  :data:`DYNAMIC_SCOPE` — see there for what was measured.

*Layer-wise* quantization (``QuantizationStrategy.layer_wise``) calibrates: each :func:`layer_groups`
group is quantized alone and rendered on a :class:`CalibrationSet` against fp32 with the same noise and
the same durations (:mod:`adaptive_tts.runtime.quality`); then the most sensitive groups are promoted to
higher precision, one at a time, until the whole model meets the quality bound or the memory target
leaves no room. Every choice is logged and returned in the :class:`QuantizationReport`.
"""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..voice.engine import voice_defaults
from ..voice.vits import ResidualCouplingLayer, VitsModel, conv1d_as_2d
from .hardware import INT4_BELOW_GB, HardwareProfile
from .quality import MCD_BOUND_DB, QualityScore, compare

if TYPE_CHECKING:
    from ..voice.frontend import Frontend

logger = logging.getLogger(__name__)

#: Valid ``QuantizationStrategy.mode`` values, lowest memory last.
MODES = ("fp32", "int8", "int4")
#: Precisions a layer group can be kept at, from least to most precise.
PRECISIONS = ("int4", "int8", "fp32")
#: Group size of INT4 scales along the input axis: fp16 scales every 64 weights cost 1/32 of a byte per
#: weight and keep the INT4 model under 0.15× the fp32 bytes with room for biases and norms.
INT4_GROUP_SIZE = 64
#: The brief's byte targets relative to fp32; a layer-wise choice may spend up to this on promotions.
DEFAULT_MEMORY_TARGET_RATIO = {"fp32": 1.0, "int8": 0.27, "int4": 0.15}
#: Integer durations may move by at most this fraction of the sentence's frames (Σ|Δ frames| over the
#: phonemes / total frames). Measured on the calibration sentences: INT8 moves 1–2 % (isolated one-frame
#: flips of ``ceil`` for phonemes near a frame boundary, 11.6 ms each); the INT4 duration predictor moves
#: ~15 % (systematic: the speaking rhythm changes); the fp32 model's own ``noise_w`` sampling moves ~35 %
#: between seeds. 5 % separates isolated flips from a changed rhythm.
DURATION_CHANGE_BOUND = 0.05
#: Model parts whose plain (``groups == 1``) convolutions become :class:`DynamicInt8Conv1d` when a
#: strategy asks for dynamic quantization. Measured (one thread, 6 calibration sentences): the text
#: encoder and the flow run at phoneme or frame rate on 192–768 channels, where the integer matmul
#: roughly halves their time. The decoder runs at the sample rate on 32–256 channels: dynamic there was
#: ~10× *slower* than the fp32 channels-last decoder (im2col at 22 kHz is memory traffic the integer
#: matmul cannot win back) and nearly doubled the MCD (0.34 → 0.62 dB: activation rounding lands
#: straight in the waveform). The duration predictor is left out too: its spline flows turn activation
#: rounding into moved durations (2.1 % of frames alone, twice weight-only INT8) and it is ~3 % of the
#: run time.
DYNAMIC_SCOPE = ("enc_p.", "flow.")


def native_int8_dot() -> bool:
    """Whether this CPU has integer dot-product instructions (x86 VNNI, AVX-VNNI or AMX), where the
    dynamic INT8 kernels pay off. Without them (a plain AVX2 x86) ``torch._int_mm`` emulates the dot
    products: measured on an AVX2 EPYC, a 400-character text took 19.7 s with dynamic INT8 against
    2.5 s in fp32 and 2.4 s with weight-only INT4 (one thread). ARM's dot-product extension is not
    probed (unmeasured), so there dynamic INT8 stays as the profile asks."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return bool(torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported())
    return True


#: Dynamic INT8 needs at least this many inputs per output (input channels × taps): below it there is
#: no matmul worth speeding up, and ``torch._int_mm`` on CPU returns wrong sums for a reduction length
#: of one (torch 2.13: found on the duration predictor's 1-channel input convs before it left the scope).
DYNAMIC_MIN_ROW_LENGTH = 16

#: The fp32 layer types quantization replaces.
FLOAT_LAYERS = (nn.Conv1d, nn.ConvTranspose1d, nn.Embedding)


# --------------------------------------------------------------------------------------------------
# Packed weights
# --------------------------------------------------------------------------------------------------


def _rows(weight: torch.Tensor, output_axis: int) -> torch.Tensor:
    """``[out_channels, everything else]``: the weight with its output axis first, flattened."""
    return weight.detach().float().movedim(output_axis, 0).reshape(weight.shape[output_axis], -1)


def _unrows(rows: torch.Tensor, shape: tuple[int, ...], output_axis: int) -> torch.Tensor:
    """Back to the layer's own weight layout, contiguous: a strided (transposed) weight sends
    ``conv_transpose1d`` down a slower path."""
    if output_axis == 0:
        return rows.reshape(shape)
    moved = (shape[output_axis],) + tuple(s for i, s in enumerate(shape) if i != output_axis)
    return rows.reshape(moved).movedim(0, output_axis).contiguous()


class Int8Weight(nn.Module):
    """Symmetric per-output-channel INT8: ``w ≈ values · scale``; ``|w − w̃| ≤ scale / 2``."""

    precision = "int8"

    def __init__(self, weight: torch.Tensor, output_axis: int = 0) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.output_axis = output_axis
        rows = _rows(weight, output_axis)
        scale = (rows.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
        self.register_buffer("values", torch.round(rows / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)

    def dequantize(self) -> torch.Tensor:
        return _unrows(self.values.float() * self.scale, self.shape, self.output_axis)

    def max_error_bound(self) -> torch.Tensor:
        """Per output channel, the largest possible ``|w − w̃|``."""
        return self.scale.flatten() / 2


class Int4Weight(nn.Module):
    """Symmetric group-wise INT4 packed two to a byte: values ``q ∈ [−8, 7]`` stored as ``q + 8``.

    Each output channel's row (input channels × taps) is cut into groups of ``group_size`` (the row is
    zero-padded to a whole number of groups; a row shorter than a group is one group), each with its own
    fp16 scale ``max|w| / 7``.
    """

    precision = "int4"

    def __init__(self, weight: torch.Tensor, output_axis: int = 0, group_size: int = INT4_GROUP_SIZE) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.output_axis = output_axis
        rows = _rows(weight, output_axis)
        self.n_rows, self.row_length = rows.shape
        self.group_size = min(group_size, self.row_length)
        self.n_groups = math.ceil(self.row_length / self.group_size)
        padded = F.pad(rows, (0, self.n_groups * self.group_size - self.row_length))
        groups = padded.view(self.n_rows, self.n_groups, self.group_size)
        # fp16 scales: the rounding below uses the stored (rounded) scale, so the error bound holds for it
        scale = (groups.abs().amax(dim=2) / 7).clamp_min(2**-14).half()
        q = torch.round(groups / scale.float().unsqueeze(2)).clamp(-8, 7).to(torch.uint8) + 8
        flat = q.flatten()
        if flat.numel() % 2:
            flat = F.pad(flat, (0, 1), value=8)
        self.register_buffer("packed", flat[0::2] | (flat[1::2] << 4))
        self.register_buffer("scale", scale)

    def dequantize(self) -> torch.Tensor:
        nibbles = torch.stack((self.packed & 0x0F, self.packed >> 4), dim=1).flatten()
        n = self.n_rows * self.n_groups * self.group_size
        q = nibbles[:n].view(self.n_rows, self.n_groups, self.group_size).float() - 8
        rows = (q * self.scale.float().unsqueeze(2)).view(self.n_rows, -1)[:, : self.row_length]
        return _unrows(rows, self.shape, self.output_axis)

    def max_error_bound(self) -> torch.Tensor:
        """Per output channel, the largest possible ``|w − w̃|`` (half its coarsest group's scale)."""
        return self.scale.float().amax(dim=1) / 2


PackedWeight = Int8Weight | Int4Weight


def pack_weight(weight: torch.Tensor, precision: str, output_axis: int = 0) -> PackedWeight:
    """The packed form of ``weight`` at ``precision`` (``int8`` or ``int4``)."""
    if precision == "int8":
        return Int8Weight(weight, output_axis)
    if precision == "int4":
        return Int4Weight(weight, output_axis)
    raise ValueError(f"cannot pack a weight at precision {precision!r}; use int8 or int4")


# --------------------------------------------------------------------------------------------------
# Quantized layers
# --------------------------------------------------------------------------------------------------


def _bias(layer: nn.Module) -> torch.Tensor | None:
    """A copy, not a view: the loader memory-maps the weights file, and one view into it keeps the whole
    mapping (every fp32 weight) resident."""
    return None if layer.bias is None else layer.bias.detach().to(torch.float32, copy=True)


def _time_major(x: torch.Tensor) -> bool:
    """Whether ``x`` ``[N, C, L]`` is stored time-major (channels last), as the decoder keeps its
    activations (:func:`~adaptive_tts.voice.vits.conv_nhwc`). Such input runs as a 2-D convolution over
    ``[N, C, 1, L]`` in that layout: oneDNN's channels-last kernels are about twice as fast there, and a
    channels-first ``conv1d`` would also cost a layout copy in and out of every layer."""
    return x.dim() == 3 and x.shape[1] > 1 and x.stride(1) == 1


def _dequantized(layer: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A weight-only layer's weight and bias in ``dtype``, its input's: the model computes a stage in
    bf16 where the CPU has native bf16 (``VitsModel.set_compute_dtype``), and the scales stay fp32
    until the weight is dequantized."""
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return layer.packed_weight.dequantize().to(dtype), bias


def _with_weights(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return layer


class WeightOnlyConv1d(nn.Module):
    """``nn.Conv1d`` with a packed weight, dequantized on every call. Keeps the conv's geometry
    attributes (``kernel_size``, ``padding``, ...) because the model's receptive-field code reads them."""

    def __init__(self, conv: nn.Conv1d, precision: str) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.packed_weight = pack_weight(conv.weight, precision)
        self.register_buffer("bias", _bias(conv))

    @property
    def precision(self) -> str:
        return self.packed_weight.precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = _dequantized(self, x.dtype)
        if _time_major(x):
            return conv1d_as_2d(x.unsqueeze(2), weight, bias, self).squeeze(2)
        return F.conv1d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def as_float(self) -> nn.Conv1d:
        """An ``nn.Conv1d`` with the dequantized weight (to re-quantize at a lower precision)."""
        weight = self.packed_weight.dequantize()
        conv = nn.Conv1d(weight.shape[1] * self.groups, weight.shape[0], self.kernel_size, self.stride,
                         self.padding, self.dilation, self.groups, bias=self.bias is not None, device="meta")
        return _with_weights(conv, weight, self.bias)


class WeightOnlyConvTranspose1d(nn.Module):
    """``nn.ConvTranspose1d`` with a packed weight; its output channels are the weight's axis 1."""

    def __init__(self, conv: nn.ConvTranspose1d, precision: str) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("grouped transposed convolutions are not supported")
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.output_padding, self.dilation, self.groups = conv.output_padding, conv.dilation, conv.groups
        self.packed_weight = pack_weight(conv.weight, precision, output_axis=1)
        self.register_buffer("bias", _bias(conv))

    @property
    def precision(self) -> str:
        return self.packed_weight.precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = _dequantized(self, x.dtype)
        if _time_major(x):
            return conv1d_as_2d(x.unsqueeze(2), weight, bias, self, transposed=True).squeeze(2)
        return F.conv_transpose1d(x, weight, bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)

    def as_float(self) -> nn.ConvTranspose1d:
        weight = self.packed_weight.dequantize()
        conv = nn.ConvTranspose1d(weight.shape[0], weight.shape[1] * self.groups, self.kernel_size, self.stride,
                                  self.padding, self.output_padding, self.groups, bias=self.bias is not None,
                                  dilation=self.dilation, device="meta")
        return _with_weights(conv, weight, self.bias)


class WeightOnlyEmbedding(nn.Module):
    """``nn.Embedding`` with a packed table (one "output channel" per symbol)."""

    def __init__(self, embedding: nn.Embedding, precision: str) -> None:
        super().__init__()
        self.packed_weight = pack_weight(embedding.weight, precision)

    @property
    def precision(self) -> str:
        return self.packed_weight.precision

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.packed_weight.dequantize())

    def as_float(self) -> nn.Embedding:
        return nn.Embedding.from_pretrained(self.packed_weight.dequantize(), freeze=True)


class DynamicInt8Conv1d(nn.Module):
    """``nn.Conv1d`` (``groups == 1``) as an integer matmul with activations quantized on the fly.

    Each time step's input window (``channels × taps``, gathered by im2col) gets its own symmetric INT8
    scale, the weight a per-output-channel one; ``torch._int_mm`` accumulates in int32 and the two scales
    map the result back to fp32.
    """

    precision = "int8"

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.stride != (1,) or not isinstance(conv.padding, tuple):
            raise ValueError("dynamic INT8 needs a plain conv: groups 1, stride 1, numeric padding")
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.packed_weight = Int8Weight(conv.weight)  # rows are [in_channels * taps], channel-major
        self.register_buffer("bias", _bias(conv))

    def as_float(self) -> nn.Conv1d:
        weight = self.packed_weight.dequantize()
        conv = nn.Conv1d(weight.shape[1], weight.shape[0], self.kernel_size, self.stride, self.padding,
                         self.dilation, bias=self.bias is not None, device="meta")
        return _with_weights(conv, weight, self.bias)

    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch * time, channels * taps]`` input windows (a view-only reshape for 1×1 convs)."""
        batch, channels, _ = x.shape
        k, d, p = self.kernel_size[0], self.dilation[0], self.padding[0]
        if k == 1:
            return x.transpose(1, 2).reshape(-1, channels)
        windows = F.pad(x, (p, p)).unfold(2, d * (k - 1) + 1, 1)[..., ::d]  # [b, c, t, k]
        return windows.permute(0, 2, 1, 3).reshape(-1, channels * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, _ = x.shape
        cols = self._columns(x.float())  # scales from a bf16 input (bf16 compute) would round too coarsely
        x_scale = (cols.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
        x_q = torch.round(cols / x_scale).to(torch.int8)
        acc = torch._int_mm(x_q, self.packed_weight.values.T)
        y = acc.float() * x_scale * self.packed_weight.scale.T
        if self.bias is not None:
            y = y + self.bias
        return y.view(batch, -1, y.shape[1]).transpose(1, 2).to(x.dtype)


#: Every layer a group can hold: the fp32 types and what quantization turns them into.
QUANTIZABLE = FLOAT_LAYERS + (WeightOnlyConv1d, WeightOnlyConvTranspose1d, WeightOnlyEmbedding, DynamicInt8Conv1d)


def precision_of(layer: nn.Module) -> str:
    """``fp32`` for a float layer, else the precision its packed weight holds."""
    return "fp32" if isinstance(layer, FLOAT_LAYERS) else layer.precision


def quantized_layer(path: str, layer: nn.Module, precision: str, dynamic: bool, weight_only: bool) -> nn.Module:
    """The replacement for ``layer`` at ``precision``; ``layer`` itself where nothing applies.

    Dynamic INT8 takes the plain convolutions in :data:`DYNAMIC_SCOPE`; weight-only packing takes the
    rest (and everything at INT4, which has no integer kernel here). An already quantized layer can go
    lower (INT8 → INT4, from its dequantized weight: what a running service does when memory gets
    tight), never higher: the fp32 weights are gone.
    """
    current = precision_of(layer)
    if precision == current:
        return layer
    if PRECISIONS.index(precision) > PRECISIONS.index(current):
        raise ValueError(f"{path} is {current}: cannot raise it to {precision} in place (the fp32 weights are gone)")
    if current != "fp32":
        layer = layer.as_float()
    if (dynamic and precision == "int8" and path.startswith(DYNAMIC_SCOPE) and type(layer) is nn.Conv1d
            and layer.groups == 1 and layer.in_channels * layer.kernel_size[0] >= DYNAMIC_MIN_ROW_LENGTH):
        return DynamicInt8Conv1d(layer)
    if not weight_only:
        return layer
    if type(layer) is nn.Conv1d:
        return WeightOnlyConv1d(layer, precision)
    if type(layer) is nn.ConvTranspose1d:
        return WeightOnlyConvTranspose1d(layer, precision)
    if type(layer) is nn.Embedding:
        return WeightOnlyEmbedding(layer, precision)
    raise TypeError(f"{path}: cannot quantize a {type(layer).__name__}")


# --------------------------------------------------------------------------------------------------
# Layer groups
# --------------------------------------------------------------------------------------------------


def layer_groups(model: VitsModel) -> dict[str, list[str]]:
    """Calibration groups → the quantizable layers (module paths) in each, in model order.

    Coarse on purpose — a group per function, not per conv — so calibration costs one rendering pass
    per group: encoder embedding, attention, feed-forward and output projection; the duration predictor;
    each coupling layer of the flow; the decoder's input conv, each upsampling stage with its residual
    blocks, and the output conv. Every quantizable layer is in exactly one group.
    """
    cfg = model.config
    prefixes: dict[str, tuple[str, ...]] = {
        "encoder.embedding": ("enc_p.emb",),
        "encoder.attention": ("enc_p.encoder.attn_layers.",),
        "encoder.ffn": ("enc_p.encoder.ffn_layers.",),
        "encoder.projection": ("enc_p.proj",),
        "duration_predictor": ("dp.",),
    }
    couplings = [i for i, flow in enumerate(model.flow.flows) if isinstance(flow, ResidualCouplingLayer)]
    for n, index in enumerate(couplings):
        prefixes[f"flow.{n}"] = (f"flow.flows.{index}.",)
    prefixes["decoder.conv_pre"] = ("dec.conv_pre",)
    n_kernels = len(cfg.resblock_kernel_sizes)
    for stage in range(len(cfg.upsample_rates)):
        blocks = tuple(f"dec.resblocks.{stage * n_kernels + j}." for j in range(n_kernels))
        prefixes[f"decoder.stage.{stage}"] = (f"dec.ups.{stage}",) + blocks
    prefixes["decoder.conv_post"] = ("dec.conv_post",)

    groups: dict[str, list[str]] = {name: [] for name in prefixes}
    for path, module in model.named_modules():
        if not isinstance(module, QUANTIZABLE):
            continue
        owners = [name for name, starts in prefixes.items()
                  if any(path == s or path.startswith(s if s.endswith(".") else s + ".") for s in starts)]
        if len(owners) != 1:
            raise ValueError(f"layer {path} belongs to {len(owners)} calibration groups: {owners}")
        groups[owners[0]].append(path)
    return groups


def weight_bytes(model: nn.Module) -> int:
    """Resident bytes of the model's parameters and buffers (packed weights, scales, biases, norms)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


@contextmanager
def _swapped(model: nn.Module, replacements: dict[str, nn.Module]) -> Iterator[None]:
    """Temporarily put ``replacements`` in the model (calibration), restoring the originals after."""
    originals = {path: model.get_submodule(path) for path in replacements}
    for path, module in replacements.items():
        _set_module(model, path, module)
    try:
        yield
    finally:
        for path, module in originals.items():
            _set_module(model, path, module)


# --------------------------------------------------------------------------------------------------
# Strategy and report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizationStrategy:
    """How to quantize: the seed's table row (mode, layer-wise, weight-only, dynamic, calibration size)
    plus what calibration needs (quality bounds, memory target).

    ``mode`` is the precision every group starts at; ``weight_only`` packs weights and dequantizes in
    ``forward``; ``dynamic`` uses integer kernels with activations quantized on the fly where that was
    measured to help (:data:`DYNAMIC_SCOPE`, INT8 only). ``memory_target_ratio`` caps the layer-wise
    result's weight bytes relative to fp32 (``None``: :data:`DEFAULT_MEMORY_TARGET_RATIO` of the mode).
    ``precisions`` applies a per-group choice made earlier (``QuantizationReport.precisions``) as given,
    without calibrating again; groups it does not name get ``mode``.
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
    def for_profile(cls, profile: HardwareProfile, available_mb: float | None = None) -> "QuantizationStrategy":
        """The profile's quantization row; INT4 when ``available_mb`` is under :data:`INT4_BELOW_GB`.

        The seed's adaptive rule: with less than 6 GB available, INT8 leaves too little room for
        anything else, so the model goes to INT4 (with a warning: quality drops measurably, see
        :data:`~adaptive_tts.runtime.quality.MCD_BOUND_DB`). INT4 is weight-only whatever the row says.
        """
        row = profile.quantization
        mode = row.quantization
        if available_mb is not None and available_mb < INT4_BELOW_GB * 1024 and mode != "int4":
            logger.warning("Aggressive quantization: INT4 instead of %s (%.0f MB available < %.0f GB)",
                           mode.upper(), available_mb, INT4_BELOW_GB)
            mode = "int4"
        return cls(mode=mode, weight_only=row.weight_only or mode == "int4", dynamic=row.dynamic,
                   layer_wise=row.layer_wise, calibration_size=row.calibration_size)


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


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------

#: Short, phonetically varied sentences (statements, questions, numbers, exclamations). Short keeps a
#: calibration pass cheap on two cores; variety matters more than length for weight sensitivity.
CALIBRATION_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Is this the right way to the station?",
    "She sells sea shells by the sea shore.",
    "Please call me back before nine tomorrow.",
    "Wow, that was a lot faster than I expected!",
    "The meeting moved to Thursday at half past two.",
    "How much does the blue umbrella cost?",
    "Seventeen thousand people watched the final.",
    "We measured the voltage twice, just to be sure.",
    "Oh no, the bridge is closed again.",
    "Could you bring some bread and a little cheese?",
    "The children laughed as the kite rose higher.",
    "Turn left at the church, then go straight on.",
    "My phone number ends in four, six, eight.",
    "Thank you very much for your patience.",
    "The engine hummed quietly through the night.",
    "Why would anyone leave the door unlocked?",
    "Fresh snow covered every roof in the village.",
    "He paid twelve dollars and fifty cents.",
    "Quantization saves memory, but quality may suffer.",
    "Measure twice and cut once.",
    "The orchestra tuned up while the hall filled.",
    "Are you sure the train leaves at six?",
    "A gentle breeze moved through the tall grass.",
    "Good morning, and welcome aboard.",
    "The recipe needs three eggs and a cup of sugar.",
    "Lightning struck the old oak tree last summer.",
    "Which of these two jackets do you prefer?",
    "The museum opens at ten on weekdays.",
    "Rain is expected later this afternoon.",
    "Everyone agreed that the plan was risky.",
    "Yes, I will join you for dinner.",
)


@dataclass(frozen=True)
class Rendering:
    """One sentence rendered by a model: its waveform and integer frames per phoneme."""

    audio: np.ndarray
    durations: torch.Tensor


@dataclass(frozen=True)
class CalibrationScore:
    """A model's distance from the references over a calibration set."""

    quality: QualityScore
    #: Σ|Δ frames| / Σ frames, averaged over sentences (0 = identical durations)
    duration_change: float

    def within(self, mcd_bound_db: float, duration_change_bound: float) -> bool:
        return self.quality.mcd_db <= mcd_bound_db and self.duration_change <= duration_change_bound


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration samples: phoneme ids, each rendered with its own noise seed and the voice's scales.

    The voice is a sampling model, so a sample is a (sentence, seed) pair: with more samples than
    sentences, sentences repeat with other seeds and exercise other prior and duration draws.
    Quantized renderings are decoded with the *reference's* durations, so the waveforms stay aligned
    and the spectral distances measure the quantization, not a shifted phoneme; how far the quantized
    duration predictor would have moved the durations is measured separately.
    """

    ids: tuple[tuple[int, ...], ...]
    seeds: tuple[int, ...]
    noise_scale: float = 0.667
    noise_w: float = 0.8
    length_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.ids or len(self.ids) != len(self.seeds):
            raise ValueError("a calibration set needs at least one sample and one seed per sample")

    @classmethod
    def from_texts(cls, frontend: Frontend, texts: Sequence[str], voice_config: dict, size: int | None = None,
                   first_seed: int = 0) -> "CalibrationSet":
        """``size`` samples (default: one per sentence) cycling over the sentences of ``texts``."""
        sentences = [s.ids for text in texts for s in frontend.sentences(text)]
        size = len(sentences) if size is None else size
        defaults = voice_defaults(voice_config)
        return cls(
            ids=tuple(sentences[i % len(sentences)] for i in range(size)),
            seeds=tuple(range(first_seed, first_seed + size)),
            noise_scale=defaults.noise_scale,
            noise_w=defaults.noise_w,
            length_scale=defaults.length_scale,
        )

    @classmethod
    def default(cls, frontend: Frontend, voice_config: dict, size: int) -> "CalibrationSet":
        """``size`` samples over :data:`CALIBRATION_SENTENCES`."""
        return cls.from_texts(frontend, CALIBRATION_SENTENCES, voice_config, size)

    def __len__(self) -> int:
        return len(self.ids)

    @torch.inference_mode()
    def render(self, model: VitsModel, index: int, durations: torch.Tensor | None = None,
               noise_seed: int | None = None) -> Rendering:
        """Sample ``index`` in one pass, drawing noise in :class:`~adaptive_tts.voice.engine.Engine`'s
        order (duration noise, then prior noise frame-major). With ``durations`` given, the model's own
        are computed (and returned) but the audio uses the given ones. ``noise_seed`` overrides the
        sample's seed for the *prior* noise only (the fp32 model's own variation, for the bound)."""
        ids = torch.as_tensor([self.ids[index]], dtype=torch.long)
        generator = torch.Generator().manual_seed(self.seeds[index])
        n = ids.shape[1]
        noise_w = torch.randn(1, 2, n, generator=generator) * self.noise_w
        m_p, logs_p, own = model.encode(ids, noise_w, self.length_scale)
        used = own if durations is None else durations
        frame_to_phoneme = torch.repeat_interleave(torch.arange(n), used.clamp_min(0))
        if noise_seed is not None:
            generator = torch.Generator().manual_seed(noise_seed)
        eps = torch.randn(frame_to_phoneme.numel(), m_p.shape[1], generator=generator)
        z_p = m_p[0][:, frame_to_phoneme] + eps.T * torch.exp(logs_p[0][:, frame_to_phoneme]) * self.noise_scale
        z = model.flow_reverse(z_p.unsqueeze(0), torch.ones(1, 1, z_p.shape[1]))
        audio = model.decode(z)[0, 0].float().numpy()
        return Rendering(audio, own)

    def references(self, model: VitsModel) -> list[Rendering]:
        """The fp32 renderings every quantized one is compared with."""
        return [self.render(model, i) for i in range(len(self))]

    def score(self, model: VitsModel, references: list[Rendering]) -> CalibrationScore:
        """Mean distance of ``model``'s renderings (with the references' durations) from the references."""
        scores, changes = [], []
        for i, ref in enumerate(references):
            out = self.render(model, i, durations=ref.durations)
            scores.append(compare(ref.audio, out.audio))
            changes.append(float((out.durations - ref.durations).abs().sum() / ref.durations.sum().clamp_min(1)))
        return CalibrationScore(QualityScore.mean(scores), float(np.mean(changes)))


# --------------------------------------------------------------------------------------------------
# The verb
# --------------------------------------------------------------------------------------------------


def _build(model: VitsModel, paths: list[str], precision: str, strategy: QuantizationStrategy) -> dict[str, nn.Module]:
    return {p: quantized_layer(p, model.get_submodule(p), precision, strategy.dynamic, strategy.weight_only)
            for p in paths}


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


class _Calibrator:
    """Builds each group's quantized layers once per precision and scores assignments against fp32."""

    def __init__(self, model: VitsModel, groups: dict[str, list[str]], strategy: QuantizationStrategy,
                 calibration: CalibrationSet) -> None:
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
    return max(score.quality.mcd_db / strategy.mcd_bound_db,
               score.duration_change / strategy.duration_change_bound)


def _layer_wise(calib: _Calibrator, strategy: QuantizationStrategy, fixed_bytes: int, fp32_bytes: dict[str, int],
                promotions: list[Promotion], notes: list[str]) -> tuple[dict[str, str], dict[str, CalibrationScore],
                                                                        CalibrationScore]:
    """Choose each group's precision: measure groups alone, then promote the most sensitive ones."""
    groups = list(calib.groups)
    fp32 = {g: "fp32" for g in groups}
    alone = {g: calib.score({**fp32, g: strategy.mode}) for g in groups}
    for g, s in alone.items():
        logger.info("calibration: %-20s alone at %s: MCD %.3f dB, log-mel %.3f dB, durations moved %.2f %%",
                    g, strategy.mode, s.quality.mcd_db, s.quality.log_mel_db, 100 * s.duration_change)
    # a group's sensitivity at its *current* precision: re-measured alone after each promotion to INT8,
    # so that a group whose INT8 copy is already harmless is not promoted again to fp32 for nothing
    sensitivity = {g: _sensitivity(alone[g], strategy) for g in groups}
    target = strategy.target_ratio * (fixed_bytes + sum(fp32_bytes.values()))

    def size(assignment: dict[str, str]) -> int:
        return fixed_bytes + sum(fp32_bytes[g] if p == "fp32" else _group_bytes(calib.layers(g, p))
                                 for g, p in assignment.items())

    assignment = {g: strategy.mode for g in groups}
    current = calib.score(assignment)
    logger.info("calibration: all groups at %s → MCD %.3f dB, durations moved %.2f %%, %.2f MB",
                strategy.mode, current.quality.mcd_db, 100 * current.duration_change, size(assignment) / 1e6)
    while not current.within(strategy.mcd_bound_db, strategy.duration_change_bound):
        fitting = [(g, promoted) for g in sorted(groups, key=sensitivity.__getitem__, reverse=True)
                   if assignment[g] != "fp32"
                   for promoted in [{**assignment, g: PRECISIONS[PRECISIONS.index(assignment[g]) + 1]}]
                   if size(promoted) <= target]
        if not fitting:
            note = (f"quality bound not met within the memory target ({target / 1e6:.2f} MB): MCD "
                    f"{current.quality.mcd_db:.3f} dB (bound {strategy.mcd_bound_db}), durations moved "
                    f"{100 * current.duration_change:.2f} % (bound {100 * strategy.duration_change_bound:g} %)")
            logger.warning(note)
            notes.append(note)
            break
        group, assignment = fitting[0]
        current = calib.score(assignment)
        promotions.append(Promotion(group, assignment[group], current.quality, current.duration_change,
                                    size(assignment)))
        logger.info("calibration: promoted %s to %s → MCD %.3f dB, durations moved %.2f %%, %.2f MB",
                    group, assignment[group], current.quality.mcd_db, 100 * current.duration_change,
                    size(assignment) / 1e6)
        if assignment[group] != "fp32":
            sensitivity[group] = _sensitivity(calib.score({**fp32, group: assignment[group]}), strategy)
    return assignment, alone, current


def _group_bytes(modules: dict[str, nn.Module]) -> int:
    return sum(weight_bytes(m) for m in modules.values())


def _weight_count(layer: nn.Module) -> int:
    """Weights and biases of a layer, whether fp32 or packed."""
    if isinstance(layer, FLOAT_LAYERS):
        return sum(p.numel() for p in layer.parameters())
    bias = getattr(layer, "bias", None)
    return math.prod(layer.packed_weight.shape) + (0 if bias is None else bias.numel())


def quantize_(model: VitsModel, strategy: QuantizationStrategy,
              calibration: CalibrationSet | None = None) -> QuantizationReport:
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
        raise ValueError("layer-wise quantization needs a CalibrationSet "
                         "(CalibrationSet.default(frontend, voice_config, strategy.calibration_size))")
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
        group_reports.append(GroupReport(
            name=g, parameters=parameters[g], precision=assignment[g], bytes=kept,
            alone=score.quality if score else None,
            alone_duration_change=score.duration_change if score else None,
        ))
        logger.info("quantize: %-20s %-4s %3d layers, %.2f MB", g, assignment[g], len(paths), kept / 1e6)
    if strategy.mode != "fp32" or any(p != "fp32" for p in assignment.values()):
        _own_memory(model)
    del calib  # the layers built for other precisions go with it
    bytes_after = weight_bytes(model)
    report = QuantizationReport(
        mode=strategy.mode, strategy=strategy, groups=group_reports, bytes_before=bytes_before,
        bytes_after=bytes_after, quality=final.quality if final else None,
        duration_change=final.duration_change if final else None,
        calibration_samples=len(calibration) if calibration is not None else 0,
        meets_bound=final.within(strategy.mcd_bound_db, strategy.duration_change_bound) if final else None,
        promotions=promotions, notes=notes,
    )
    logger.info("quantize: %s → %.2f MB of %.2f MB (%.3f×)%s", strategy.mode, bytes_after / 1e6,
                bytes_before / 1e6, report.ratio,
                f", MCD {final.quality.mcd_db:.3f} dB vs fp32" if final else "")
    return report
