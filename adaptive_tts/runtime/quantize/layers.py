"""The layers quantization puts in the model, and the rule for which one replaces which fp32 layer.

* :class:`WeightOnlyConv1d`, :class:`WeightOnlyConvTranspose1d`, :class:`WeightOnlyEmbedding` —
  *weight-only*: the weight is dequantized to fp32 in ``forward`` (a few MB at most, freed right after)
  and the arithmetic stays fp32. Memory shrinks; compute does not get faster.
* :class:`DynamicInt8Conv1d` — *dynamic* INT8: activations are quantized on the fly (per time step,
  symmetric) and multiplied with the INT8 weights in integer arithmetic (``torch._int_mm``, the kernel
  torchao's dynamic-activation config uses), via im2col for kernels wider than one tap. Used only in
  :data:`DYNAMIC_SCOPE` — see there for what was measured.

:func:`quantized_layer` picks the replacement for one layer at one precision.
"""

from __future__ import annotations

import platform
from typing import TypeVar, cast

import torch
from torch import nn
from torch.nn import functional as F

from ...voice.vits import conv1d_as_2d
from .packing import Int8Weight, PackedWeight, pack_weight

#: Precisions a layer group can be kept at, from least to most precise.
PRECISIONS = ("int4", "int8", "fp32")
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

_FloatConv = TypeVar("_FloatConv", nn.Conv1d, nn.ConvTranspose1d)


def _one_d(size: tuple[int, ...]) -> tuple[int]:
    """A 1-D conv's ``kernel_size``, ``stride``, ``dilation`` or numeric ``padding`` as the 1-tuple it
    is: torch types these ``tuple[int, ...]`` for every dimensionality, while the 1-D constructors that
    ``as_float`` hands them back to take ``tuple[int]``."""
    return cast(tuple[int], size)


def _bias(layer: nn.Conv1d | nn.ConvTranspose1d) -> torch.Tensor | None:
    """A copy, not a view: the loader memory-maps the weights file, and one view into it keeps the whole
    mapping (every fp32 weight) resident."""
    return None if layer.bias is None else layer.bias.detach().to(torch.float32, copy=True)


def _time_major(x: torch.Tensor) -> bool:
    """Whether ``x`` ``[N, C, L]`` is stored time-major (channels last), as the decoder keeps its
    activations (:func:`~adaptive_tts.voice.vits.conv_nhwc`). Such input runs as a 2-D convolution over
    ``[N, C, 1, L]`` in that layout: oneDNN's channels-last kernels are about twice as fast there, and a
    channels-first ``conv1d`` would also cost a layout copy in and out of every layer."""
    return x.dim() == 3 and x.shape[1] > 1 and x.stride(1) == 1


def _dequantized(
    layer: WeightOnlyConv1d | WeightOnlyConvTranspose1d, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A weight-only layer's weight and bias in ``dtype``, its input's: the model computes a stage in
    bf16 where the CPU has native bf16 (``VitsModel.set_compute_dtype``), and the scales stay fp32
    until the weight is dequantized."""
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return layer.packed_weight.dequantize().to(dtype), bias


def _with_weights(layer: _FloatConv, weight: torch.Tensor, bias: torch.Tensor | None) -> _FloatConv:
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return layer


class _PackedLayer(nn.Module):
    """A layer whose weight is stored packed (:mod:`.packing`) and dequantized as it computes."""

    packed_weight: PackedWeight

    @property
    def precision(self) -> str:
        return self.packed_weight.precision


class WeightOnlyConv1d(_PackedLayer):
    """``nn.Conv1d`` with a packed weight, dequantized on every call. Keeps the conv's geometry
    attributes (``kernel_size``, ``padding``, ...) because the model's receptive-field code reads them."""

    bias: torch.Tensor | None

    def __init__(self, conv: nn.Conv1d, precision: str) -> None:
        super().__init__()
        self.kernel_size, self.stride = _one_d(conv.kernel_size), _one_d(conv.stride)
        self.padding = conv.padding if isinstance(conv.padding, str) else _one_d(conv.padding)
        self.dilation, self.groups = _one_d(conv.dilation), conv.groups
        self.packed_weight = pack_weight(conv.weight, precision)
        self.register_buffer("bias", _bias(conv))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = _dequantized(self, x.dtype)
        if _time_major(x):
            return conv1d_as_2d(x.unsqueeze(2), weight, bias, self).squeeze(2)
        return F.conv1d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def as_float(self) -> nn.Conv1d:
        """An ``nn.Conv1d`` with the dequantized weight (to re-quantize at a lower precision)."""
        weight = self.packed_weight.dequantize()
        conv = nn.Conv1d(
            weight.shape[1] * self.groups,
            weight.shape[0],
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=self.bias is not None,
            device="meta",
        )
        return _with_weights(conv, weight, self.bias)


class WeightOnlyConvTranspose1d(_PackedLayer):
    """``nn.ConvTranspose1d`` with a packed weight; its output channels are the weight's axis 1."""

    bias: torch.Tensor | None

    def __init__(self, conv: nn.ConvTranspose1d, precision: str) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("grouped transposed convolutions are not supported")
        # a transposed conv's padding is numeric (its constructor takes no string); torch types the
        # attribute as every conv's, ``str | tuple[int, ...]``
        padding = cast(tuple[int, ...], conv.padding)
        self.kernel_size, self.stride = _one_d(conv.kernel_size), _one_d(conv.stride)
        self.padding, self.output_padding = _one_d(padding), _one_d(conv.output_padding)
        self.dilation, self.groups = _one_d(conv.dilation), conv.groups
        self.packed_weight = pack_weight(conv.weight, precision, output_axis=1)
        self.register_buffer("bias", _bias(conv))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = _dequantized(self, x.dtype)
        if _time_major(x):
            return conv1d_as_2d(x.unsqueeze(2), weight, bias, self, transposed=True).squeeze(2)
        return F.conv_transpose1d(
            x, weight, bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )

    def as_float(self) -> nn.ConvTranspose1d:
        weight = self.packed_weight.dequantize()
        conv = nn.ConvTranspose1d(
            weight.shape[0],
            weight.shape[1] * self.groups,
            self.kernel_size,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            bias=self.bias is not None,
            dilation=self.dilation,
            device="meta",
        )
        return _with_weights(conv, weight, self.bias)


class WeightOnlyEmbedding(_PackedLayer):
    """``nn.Embedding`` with a packed table (one "output channel" per symbol)."""

    def __init__(self, embedding: nn.Embedding, precision: str) -> None:
        super().__init__()
        self.packed_weight = pack_weight(embedding.weight, precision)

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
    packed_weight: Int8Weight
    bias: torch.Tensor | None

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.stride != (1,) or not isinstance(conv.padding, tuple):
            raise ValueError("dynamic INT8 needs a plain conv: groups 1, stride 1, numeric padding")
        self.kernel_size, self.stride = _one_d(conv.kernel_size), _one_d(conv.stride)
        self.padding, self.dilation, self.groups = _one_d(conv.padding), _one_d(conv.dilation), conv.groups
        self.packed_weight = Int8Weight(conv.weight)  # rows are [in_channels * taps], channel-major
        self.register_buffer("bias", _bias(conv))

    def as_float(self) -> nn.Conv1d:
        weight = self.packed_weight.dequantize()
        conv = nn.Conv1d(
            weight.shape[1],
            weight.shape[0],
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=self.bias is not None,
            device="meta",
        )
        return _with_weights(conv, weight, self.bias)

    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch * time, channels * taps]`` input windows (a view-only reshape for 1×1 convs)."""
        _, channels, _ = x.shape
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


#: The layer types quantization turns the :data:`FLOAT_LAYERS` into.
QUANTIZED_LAYERS = (WeightOnlyConv1d, WeightOnlyConvTranspose1d, WeightOnlyEmbedding, DynamicInt8Conv1d)
#: Every layer a group can hold: the fp32 types and what quantization turns them into.
QUANTIZABLE = FLOAT_LAYERS + QUANTIZED_LAYERS


def precision_of(layer: nn.Module) -> str:
    """``fp32`` for a float layer, else the precision its packed weight holds."""
    return layer.precision if isinstance(layer, QUANTIZED_LAYERS) else "fp32"


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
    if isinstance(layer, QUANTIZED_LAYERS):
        layer = layer.as_float()
    if (
        dynamic
        and precision == "int8"
        and path.startswith(DYNAMIC_SCOPE)
        and type(layer) is nn.Conv1d
        and layer.groups == 1
        and layer.in_channels * layer.kernel_size[0] >= DYNAMIC_MIN_ROW_LENGTH
    ):
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
