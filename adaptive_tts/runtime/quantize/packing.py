"""Packed integer weights: what a quantized layer holds in place of its fp32 weight.

* :class:`Int8Weight` — one signed byte per weight, one fp32 scale per output channel.
* :class:`Int4Weight` — two weights per byte (a ``uint8`` buffer), one fp16 scale per group of
  ``group_size`` consecutive weights along the input axis (input channels × kernel taps) of each output
  channel. Per-channel scales alone are too coarse at 4 bits: one large tap would flatten the rest of the
  channel to zero.

Both are symmetric round-to-nearest, so each dequantized weight is within ``scale / 2`` of the original.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

#: Group size of INT4 scales along the input axis: fp16 scales every 64 weights cost 1/32 of a byte per
#: weight and keep the INT4 model under 0.15× the fp32 bytes with room for biases and norms.
INT4_GROUP_SIZE = 64


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
    values: torch.Tensor
    scale: torch.Tensor

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
    packed: torch.Tensor
    scale: torch.Tensor

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
