"""The VITS network of a Piper voice, in PyTorch, inference only.

Each part is a small ``nn.Module`` named for what it is, with the parameter names of the original VITS
code so that a Piper ONNX export's initializers map onto ``state_dict`` keys one to one
(see :mod:`adaptive_tts.voice.weights`). Training-only parts (posterior encoder, the duration
predictor's posterior flows, discriminators) are absent: a Piper export does not carry them.

Inference runs in stages that :class:`adaptive_tts.voice.engine.Engine` calls separately, so that the
decoder — by far the largest activation — can run in bounded-memory chunks:

    phoneme ids ─► TextEncoder ─► StochasticDurationPredictor ─► expand to frames
                ─► ResidualCouplingBlock (reverse) ─► Generator (HiFi-GAN) ─► waveform
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

LRELU_SLOPE = 0.1


@dataclass(frozen=True)
class VitsConfig:
    """Hyper-parameters of a Piper VITS voice.

    The defaults are Piper's "medium" quality; :func:`adaptive_tts.voice.weights.infer_config` reads the
    real values (layer counts, kernel sizes, strides, dilations) from the ONNX graph so that a voice of
    another size is built with the right shapes instead of failing deep inside a matmul.
    """

    num_symbols: int = 256
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    window_size: int = 4
    dp_filter_channels: int = 192
    dp_kernel_size: int = 3
    dp_n_flows: int = 4
    flow_n_flows: int = 4
    flow_kernel_size: int = 5
    flow_n_layers: int = 4
    upsample_rates: tuple[int, ...] = (8, 8, 4)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8)
    upsample_initial_channel: int = 256
    resblock_kernel_sizes: tuple[int, ...] = (3, 5, 7)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = field(default_factory=lambda: ((1, 2), (2, 6), (3, 12)))
    sample_rate: int = 22050

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame (the product of the decoder's upsampling rates)."""
        return math.prod(self.upsample_rates)


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean mask ``[batch, max_length]`` that is true inside each sequence."""
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


class LayerNorm(nn.Module):
    """Layer norm over the channel axis of a ``[batch, channels, time]`` tensor."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, -1)
        x = F.layer_norm(x, (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


@runtime_checkable
class ConvGeometry(Protocol):
    """The geometry of a 1-D convolution: what ``nn.Conv1d`` and ``nn.ConvTranspose1d`` carry and the
    quantized layers that replace them keep (:mod:`adaptive_tts.runtime.quantize.layers`), so that
    :func:`conv1d_as_2d` and the receptive-field code read it from whichever layer is in place."""

    @property
    def kernel_size(self) -> tuple[int, ...]: ...
    @property
    def stride(self) -> tuple[int, ...]: ...
    @property
    def padding(self) -> str | tuple[int, ...]: ...
    @property
    def dilation(self) -> tuple[int, ...]: ...
    @property
    def groups(self) -> int: ...


@runtime_checkable
class _OutputPadding(Protocol):
    """The one geometry attribute a transposed convolution has beyond :class:`ConvGeometry`."""

    @property
    def output_padding(self) -> tuple[int, ...]: ...


def _conv_geometry(module: nn.Module) -> ConvGeometry:
    """``module``, an item of an ``nn.ModuleList`` (which types its items as bare modules), as the
    convolution it is."""
    if not isinstance(module, ConvGeometry):
        raise TypeError(f"{type(module).__name__} is not a convolution")
    return module


def _numeric_padding(conv: ConvGeometry) -> int:
    """``conv``'s padding on each side, in samples. Every convolution of the model pads by a number;
    a ``"same"``/``"valid"`` padding cannot be moved into the 2-D form or summed into a receptive field."""
    if isinstance(conv.padding, str):
        raise ValueError(f"padding={conv.padding!r}: only numeric padding is supported")
    return conv.padding[0]


# --------------------------------------------------------------------------------------------------
# Text encoder
# --------------------------------------------------------------------------------------------------


class RelativePositionMultiHeadAttention(nn.Module):
    """Self-attention with learned relative-position embeddings for keys and values.

    Only offsets within ``±window_size`` have embeddings; the original VITS code pads them to a full
    ``2L-1`` band and converts between relative and absolute layouts with pad/reshape tricks. We do the
    same arithmetic on the band of width ``2 * window_size + 1`` only, which is exact (the padded
    embeddings are zero) and avoids ``O(L^2)`` temporaries for those terms.
    """

    def __init__(self, channels: int, n_heads: int, window_size: int) -> None:
        super().__init__()
        assert channels % n_heads == 0
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        rel_shape = (1, 2 * window_size + 1, self.k_channels)
        self.emb_rel_k = nn.Parameter(torch.zeros(rel_shape))
        self.emb_rel_v = nn.Parameter(torch.zeros(rel_shape))

    #: Query rows per block: attention is computed a block of rows at a time so that its memory is
    #: ``O(block * length)`` rather than ``O(length**2)`` — a long unpunctuated sentence has thousands
    #: of phoneme ids. Rows are independent, so blocking changes no result. 128 rows: the encoder on a
    #: 2771-id sentence (bf16, 2 threads) took 194 ms with 64-row blocks, 168 ms with 128, 178 with 256.
    block_rows = 128

    def forward(self, x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """``x`` ``[b, c, t]``; ``lengths[i]`` is batch element ``i``'s real length, past which its keys
        are padding and get no attention (its query rows there compute values the caller masks)."""
        batch, channels, length = x.shape
        w = self.window_size
        # [b, h, t, d]
        q = self.conv_q(x).view(batch, self.n_heads, self.k_channels, length).transpose(2, 3)
        k = self.conv_k(x).view(batch, self.n_heads, self.k_channels, length).transpose(2, 3)
        v = self.conv_v(x).view(batch, self.n_heads, self.k_channels, length).transpose(2, 3)
        q = q / math.sqrt(self.k_channels)
        k_t = k.transpose(-2, -1)
        cols, valid = self._band(length, x.device)
        rel_k = self.emb_rel_k[0].transpose(0, 1)  # [d, 2w+1]
        blocks = []
        for r0 in range(0, length, self.block_rows):
            r1 = min(length, r0 + self.block_rows)
            q_blk = q[:, :, r0:r1]
            scores = torch.matmul(q_blk, k_t)
            # relative keys: score[i, i + o] += q_i . e_o for offsets o within the window. Entry
            # (i, i + o) lies on a diagonal of the block, so each offset is one strided in-place add
            # (a scatter into bf16 scores went through an fp32 copy of the whole block).
            rel = torch.matmul(q_blk, rel_k)
            for o in range(-w, w + 1):
                offset = r0 + o
                start, stop = max(0, -offset), min(r1 - r0, length - offset)
                if start < stop:
                    scores.diagonal(offset, -2, -1).add_(rel[..., start:stop, o + w])
            for i, n in enumerate(lengths):
                if n < length:  # padded keys; the same as VITS's masked_fill, on the padding only
                    scores[i, :, :, n:] = -1e4
            p_attn = torch.softmax(scores, dim=-1)
            del scores
            out = torch.matmul(p_attn, v)
            # relative values: out_i += sum_o p[i, i + o] e_o
            index = cols[r0:r1].expand(batch, self.n_heads, r1 - r0, cols.shape[1])
            out += torch.matmul(torch.gather(p_attn, -1, index) * valid[r0:r1].to(q.dtype), self.emb_rel_v[0])
            blocks.append(out)
        out = torch.cat(blocks, dim=2) if len(blocks) > 1 else blocks[0]
        out = out.transpose(2, 3).contiguous().view(batch, channels, length)
        return self.conv_o(out)

    def _band(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Column ``j = i + offset`` of each band entry (clamped into range) and whether it exists."""
        w = self.window_size
        cols = torch.arange(length, device=device).unsqueeze(1) + torch.arange(-w, w + 1, device=device)
        valid = (cols >= 0) & (cols < length)
        return cols.clamp(0, length - 1), valid


class FeedForward(nn.Module):
    """Two 'same'-padded convolutions with a ReLU between them, masked at the padding."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(x * x_mask))
        return self.conv_2(x * x_mask) * x_mask


class TransformerEncoder(nn.Module):
    """Post-norm transformer: attention and feed-forward blocks, each followed by a residual LayerNorm."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        h = cfg.hidden_channels
        self.attn_layers = nn.ModuleList(
            RelativePositionMultiHeadAttention(h, cfg.n_heads, cfg.window_size) for _ in range(cfg.n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(LayerNorm(h) for _ in range(cfg.n_layers))
        self.ffn_layers = nn.ModuleList(
            FeedForward(h, cfg.filter_channels, cfg.kernel_size) for _ in range(cfg.n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(LayerNorm(h) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """``x_mask`` ``[b, 1, t]`` is 1 inside each element's ``lengths``, 0 on its padding."""
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = norm_1(x + attn(x, lengths))
            x = norm_2(x + ffn(x, x_mask))
        return x * x_mask


class TextEncoder(nn.Module):
    """Phoneme ids → hidden states and the prior's per-phoneme mean and log-std."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        self.hidden_channels = cfg.hidden_channels
        self.emb = nn.Embedding(cfg.num_symbols, cfg.hidden_channels)
        self.encoder = TransformerEncoder(cfg)
        self.proj = nn.Conv1d(cfg.hidden_channels, cfg.hidden_channels * 2, 1)

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden states, prior mean and log-std, and the mask, computed in ``dtype`` (the embedding
        may be a quantized table that dequantizes to fp32)."""
        x = self.emb(ids).to(dtype) * math.sqrt(self.hidden_channels)
        x = x.transpose(1, -1)
        x_mask = sequence_mask(lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.encoder(x, x_mask, lengths.tolist())
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.hidden_channels, dim=1)
        return x, m, logs, x_mask


# --------------------------------------------------------------------------------------------------
# Stochastic duration predictor
# --------------------------------------------------------------------------------------------------


class DilatedDepthSeparableConv(nn.Module):
    """Stack of depthwise dilated convs (dilation kernel**i) + 1x1 convs with LayerNorm and GELU."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int) -> None:
        super().__init__()
        self.convs_sep = nn.ModuleList()
        self.convs_1x1 = nn.ModuleList()
        self.norms_1 = nn.ModuleList()
        self.norms_2 = nn.ModuleList()
        for i in range(n_layers):
            dilation = kernel_size**i
            padding = (kernel_size * dilation - dilation) // 2
            self.convs_sep.append(
                nn.Conv1d(channels, channels, kernel_size, groups=channels, dilation=dilation, padding=padding)
            )
            self.convs_1x1.append(nn.Conv1d(channels, channels, 1))
            self.norms_1.append(LayerNorm(channels))
            self.norms_2.append(LayerNorm(channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        if g is not None:
            x = x + g
        for sep, one, norm_1, norm_2 in zip(self.convs_sep, self.convs_1x1, self.norms_1, self.norms_2):
            y = F.gelu(norm_1(sep(x * x_mask)))
            y = F.gelu(norm_2(one(y)))
            x = x + y
        return x * x_mask


class ElementwiseAffine(nn.Module):
    """Learned per-channel affine map; inverted at inference."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.zeros(channels, 1))
        self.logs = nn.Parameter(torch.zeros(channels, 1))

    def reverse(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (x - self.m) * torch.exp(-self.logs) * x_mask


class Flip(nn.Module):
    """Reverses the channel order so that the next coupling layer transforms the other half."""

    def reverse(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        return torch.flip(x, [1])


class ConvFlow(nn.Module):
    """Coupling layer whose transform is a monotonic rational-quadratic spline (Durkan et al., 2019)."""

    def __init__(
        self,
        in_channels: int,
        filter_channels: int,
        kernel_size: int,
        n_layers: int,
        num_bins: int = 10,
        tail_bound: float = 5.0,
    ) -> None:
        super().__init__()
        self.half_channels = in_channels // 2
        self.filter_channels = filter_channels
        self.num_bins = num_bins
        self.tail_bound = tail_bound
        self.pre = nn.Conv1d(self.half_channels, filter_channels, 1)
        self.convs = DilatedDepthSeparableConv(filter_channels, kernel_size, n_layers)
        self.proj = nn.Conv1d(filter_channels, self.half_channels * (num_bins * 3 - 1), 1)

    def reverse(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)
        h = self.convs(self.pre(x0), x_mask, g=g)
        h = self.proj(h) * x_mask
        b, c, t = x0.shape
        h = h.reshape(b, c, -1, t).permute(0, 1, 3, 2)  # [b, c, t, 3 * bins - 1]
        scale = math.sqrt(self.filter_channels)
        x1 = rational_quadratic_spline_inverse(
            x1,
            h[..., : self.num_bins] / scale,
            h[..., self.num_bins : 2 * self.num_bins] / scale,
            h[..., 2 * self.num_bins :],
            tail_bound=self.tail_bound,
        )
        return torch.cat([x0, x1], 1) * x_mask


def rational_quadratic_spline_inverse(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    tail_bound: float,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> torch.Tensor:
    """Inverse of the rational-quadratic spline with linear tails outside ``[-tail_bound, tail_bound]``.

    Computed for every element and selected with ``where`` rather than by boolean indexing: the result
    inside the interval is the same, and the shapes stay static (cheaper, and friendlier to compilers).
    """
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    x = inputs.clamp(-tail_bound, tail_bound)
    num_bins = unnormalized_widths.shape[-1]
    left = bottom = -tail_bound
    right = top = tail_bound

    constant = math.log(math.exp(1 - min_derivative) - 1)
    derivs = F.pad(unnormalized_derivatives, (1, 1), value=constant)
    derivatives = min_derivative + F.softplus(derivs)

    def knots(
        unnormalized: torch.Tensor, low: float, high: float, min_size: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = F.softmax(unnormalized, dim=-1)
        sizes = min_size + (1 - min_size * num_bins) * sizes
        cum = F.pad(torch.cumsum(sizes, dim=-1), (1, 0), value=0.0)
        cum = (high - low) * cum + low
        cum = torch.cat([torch.full_like(cum[..., :1], low), cum[..., 1:-1], torch.full_like(cum[..., :1], high)], -1)
        return cum, cum[..., 1:] - cum[..., :-1]

    cumwidths, widths = knots(unnormalized_widths, left, right, min_bin_width)
    cumheights, heights = knots(unnormalized_heights, bottom, top, min_bin_height)

    search = torch.cat([cumheights[..., :-1], cumheights[..., -1:] + 1e-6], -1)
    bin_idx = (torch.sum(x[..., None] >= search, dim=-1) - 1).clamp(0, num_bins - 1)[..., None]

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(-1, bin_idx)[..., 0]

    input_cumwidths = pick(cumwidths)
    input_bin_widths = pick(widths)
    input_cumheights = pick(cumheights)
    input_delta = pick(heights / widths)
    input_derivatives = pick(derivatives)
    input_derivatives_plus_one = pick(derivatives[..., 1:])
    input_heights = pick(heights)

    dy = x - input_cumheights
    slope_sum = input_derivatives + input_derivatives_plus_one - 2 * input_delta
    a = dy * slope_sum + input_heights * (input_delta - input_derivatives)
    b = input_heights * input_derivatives - dy * slope_sum
    c = -input_delta * dy
    discriminant = (b.pow(2) - 4 * a * c).clamp_min(0)
    root = (2 * c) / (-b - torch.sqrt(discriminant))
    outputs = root * input_bin_widths + input_cumwidths
    return torch.where(inside, outputs, inputs)


class StochasticDurationPredictor(nn.Module):
    """Samples log-durations per phoneme by running a normalising flow backwards from noise."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        fc = cfg.dp_filter_channels
        self.pre = nn.Conv1d(cfg.hidden_channels, fc, 1)
        self.convs = DilatedDepthSeparableConv(fc, cfg.dp_kernel_size, n_layers=3)
        self.proj = nn.Conv1d(fc, fc, 1)
        # Index layout of the original: [affine, (ConvFlow, Flip) * n_flows]. Index 1 is never used at
        # inference (the original drops it as "a useless vflow"), so Piper exports do not carry it.
        self.flows = nn.ModuleList([ElementwiseAffine(2)])
        for i in range(cfg.dp_n_flows):
            self.flows.append(ConvFlow(2, fc, cfg.dp_kernel_size, n_layers=3) if i > 0 else nn.Identity())
            self.flows.append(Flip())

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``noise`` is ``[batch, 2, phonemes]`` already scaled by ``noise_w``; returns log-durations."""
        x = self.proj(self.convs(self.pre(x), x_mask)) * x_mask
        # every flow but the unused Identity at index 1, run last to first: Flip, ConvFlow, ..., Flip, affine
        steps = [flow for flow in self.flows if isinstance(flow, (ElementwiseAffine, ConvFlow, Flip))]
        z = noise
        for step in reversed(steps):
            z = step.reverse(z, x_mask, g=x)
        return z[:, :1]


# --------------------------------------------------------------------------------------------------
# Flow
# --------------------------------------------------------------------------------------------------


class WaveNet(nn.Module):
    """Non-causal WaveNet: gated dilated convs with residual and skip outputs."""

    def __init__(self, hidden_channels: int, kernel_size: int, n_layers: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_layers = nn.ModuleList(
            nn.Conv1d(hidden_channels, 2 * hidden_channels, kernel_size, padding=kernel_size // 2)
            for _ in range(n_layers)
        )
        self.res_skip_layers = nn.ModuleList(
            nn.Conv1d(hidden_channels, (2 if i < n_layers - 1 else 1) * hidden_channels, 1) for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        h = self.hidden_channels
        output = torch.zeros_like(x)
        last = len(self.in_layers) - 1
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            x_in = in_layer(x)
            acts = torch.tanh(x_in[:, :h]) * torch.sigmoid(x_in[:, h:])
            rs = res_skip(acts)
            if i < last:
                x = (x + rs[:, :h]) * x_mask
                output = output + rs[:, h:]
            else:
                output = output + rs
        return output * x_mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling: the second half is shifted by a WaveNet of the first."""

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, n_layers: int) -> None:
        super().__init__()
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, n_layers)
        self.post = nn.Conv1d(hidden_channels, self.half_channels, 1)

    def reverse(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)
        h = self.enc(self.pre(x0) * x_mask, x_mask)
        m = self.post(h) * x_mask
        return torch.cat([x0, (x1 - m) * x_mask], 1)


class ResidualCouplingBlock(nn.Module):
    """The prior-to-posterior flow, run in reverse at inference: ``z_p → z``."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(cfg.flow_n_flows):
            self.flows.append(
                ResidualCouplingLayer(cfg.hidden_channels, cfg.hidden_channels, cfg.flow_kernel_size, cfg.flow_n_layers)
            )
            self.flows.append(Flip())

    def reverse(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        for flow in reversed(self.flows):
            if not isinstance(flow, (ResidualCouplingLayer, Flip)):
                raise TypeError(f"the flow holds a {type(flow).__name__}, which has no reverse pass")
            x = flow.reverse(x, x_mask)
        return x

    @property
    def layer_reach(self) -> int:
        """Frames the widest single convolution reaches on each side: masked frames at least this many
        between two sequences keep them independent, since every layer re-zeroes masked frames."""
        return max(
            (conv.kernel_size[0] // 2) * conv.dilation[0]
            for layer in self.flows
            if isinstance(layer, ResidualCouplingLayer)
            for conv in map(_conv_geometry, layer.enc.in_layers)
        )

    @property
    def receptive_field(self) -> int:
        """Frames of context on each side that one output frame depends on."""
        per_layer = sum(
            (conv.kernel_size[0] // 2) * conv.dilation[0]
            for layer in self.flows
            if isinstance(layer, ResidualCouplingLayer)
            for conv in map(_conv_geometry, layer.enc.in_layers)
        )
        return per_layer


# --------------------------------------------------------------------------------------------------
# Decoder (HiFi-GAN generator)
# --------------------------------------------------------------------------------------------------


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, L]`` → ``[N, C, 1, L]`` in channels-last memory order (NHWC)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def conv_nhwc(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 1-D (transposed) convolution to a channels-last ``[N, C, 1, L]`` tensor.

    Why: oneDNN's channels-last kernels are ~2x faster than the channels-first ones PyTorch picks for
    ``conv1d`` at the decoder's shapes (32–128 channels, tens of thousands of samples) on x86 CPUs.
    The module keeps its 1-D parameters (and their names); other module types (quantized wrappers)
    run in their own layout.
    """
    if type(module) is nn.Conv1d:
        return conv1d_as_2d(x, module.weight, module.bias, module)
    if type(module) is nn.ConvTranspose1d:
        return conv1d_as_2d(x, module.weight, module.bias, module, transposed=True)
    return _as_image(module(x.squeeze(2)))


def conv1d_as_2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry, transposed: bool = False
) -> torch.Tensor:
    """The 1-D (transposed) convolution of ``weight`` with ``geometry``'s stride, padding, dilation and
    groups (and output padding), run as a 2-D one over ``[N, C, 1, L]`` — in channels-last layout when
    ``x`` is, which is what makes it fast (see :func:`conv_nhwc`; the quantized wrappers use it too)."""
    g = geometry
    padding = _numeric_padding(g)
    if transposed:
        if not isinstance(g, _OutputPadding):
            raise TypeError(f"{type(g).__name__} has no output_padding: not a transposed convolution")
        return F.conv_transpose2d(
            x,
            weight.unsqueeze(2),
            bias,
            (1, g.stride[0]),
            (0, padding),
            (0, g.output_padding[0]),
            g.groups,
            (1, g.dilation[0]),
        )
    return F.conv2d(x, weight.unsqueeze(2), bias, (1, g.stride[0]), (0, padding), (1, g.dilation[0]), g.groups)


#: Frame ranges ``(start, end)`` of a decoder input that are real, in order; the rest is zero padding.
Spans = Sequence[tuple[int, int]]


def _zero_outside(x: torch.Tensor, spans: Spans | None, scale: int) -> torch.Tensor:
    """Zero ``x`` (in place) outside ``spans``, frame ranges of ``scale`` samples a frame; ``None``:
    all of ``x`` is real."""
    if spans is not None:
        edge = 0
        for start, end in spans:
            if start > edge:
                x[..., edge * scale : start * scale].zero_()
            edge = end
        if edge * scale < x.shape[-1]:
            x[..., edge * scale :].zero_()
    return x


class ResBlock2(nn.Module):
    """HiFi-GAN residual block, variant 2: one dilated conv per residual step."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2)
            for d in dilations
        )

    def forward(
        self, x: torch.Tensor, activated: torch.Tensor | None = None, spans: Spans | None = None, scale: int = 1
    ) -> torch.Tensor:
        """``x`` is channels-last ``[N, C, 1, L]`` at ``scale`` samples a frame; ``activated`` is
        ``leaky_relu(x)`` if the caller already has it (the parallel blocks of one stage share it).
        Samples outside ``spans`` are padding, kept at zero (see :meth:`Generator.forward`)."""
        for i, conv in enumerate(self.convs):
            a = activated if i == 0 and activated is not None else F.leaky_relu(x, LRELU_SLOPE)
            # in place into the conv's fresh output: the decoder's tensors are tens of MB per chunk,
            # and the elementwise passes over them are memory-bound
            x = _zero_outside(conv_nhwc(conv, a).add_(x), spans, scale)
        return x


class Generator(nn.Module):
    """HiFi-GAN generator: transposed convs upsample latent frames to samples, with multi-receptive
    field fusion (the mean of parallel residual blocks) after each upsampling."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        c0 = cfg.upsample_initial_channel
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        #: the strides of ``ups`` as ints: the forward pass scales ``spans`` by them on every chunk, and
        #: reading them off the layers (bare modules to a type checker) would check each layer each time
        self.upsample_rates = cfg.upsample_rates
        self.conv_pre = nn.Conv1d(cfg.hidden_channels, c0, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = c0 // (2**i), c0 // (2 ** (i + 1))
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(ResBlock2(c_out, k, d))
        self.conv_post = nn.Conv1d(c0 // (2 ** len(self.ups)), 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        """``[N, hidden, frames]`` → ``[N, 1, frames * hop]``, computed in channels-last layout.

        With ``spans``, only those frame ranges are real and the rest is zeros: every conv's output is
        zeroed outside them, so that the padding acts exactly as the convs' own zero padding and each
        span's audio is what decoding it alone gives, as long as no single conv reaches across the
        padding between two spans (:attr:`layer_reach`). Why pad at all: oneDNN compiles its kernels
        per input length (tens of ms for the decoder's ~25 convs), and padding the many lengths of
        short sentences to a few sizes lets them share compiled kernels; and why several spans: a
        short sentence's decoder is ~100 operations whose fixed cost one call for several pays once.
        The audio outside the spans is not zeroed: callers take the spans' samples.
        """
        scale = 1
        x = _zero_outside(conv_nhwc(self.conv_pre, _as_image(x)), spans, scale)
        for i, (up, rate) in enumerate(zip(self.ups, self.upsample_rates)):
            scale *= rate
            x = _zero_outside(conv_nhwc(up, F.leaky_relu(x, LRELU_SLOPE)), spans, scale)
            activated = F.leaky_relu(x, LRELU_SLOPE)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x, activated, spans, scale)
            for block in blocks[1:]:
                xs.add_(block(x, activated, spans, scale))
            x = xs.mul_(1.0 / self.num_kernels)
        x = conv_nhwc(self.conv_post, F.leaky_relu(x))
        return torch.tanh(x).squeeze(2)

    def _reaches(self) -> list[list[list[float]]]:
        """Frames each convolution reaches on each side, at its own stage's samples a frame, in the
        order a sample passes them: a list of steps, each a list of parallel chains (a stage's residual
        blocks; one chain elsewhere), each chain its convolutions' reaches. A stage at ``scale`` samples
        a frame that reaches ``r`` of its own samples reaches ``r / scale`` frames."""
        steps = [[[float(_numeric_padding(self.conv_pre) * self.conv_pre.dilation[0])]]]
        scale = 1
        for i, up in enumerate(map(_conv_geometry, self.ups)):
            k, stride, pad = up.kernel_size[0], up.stride[0], _numeric_padding(up)
            steps.append([[max(k - 1 - pad, pad) / stride / scale]])
            scale *= stride
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            steps.append(
                [
                    [_numeric_padding(_conv_geometry(c)) / scale for c in block.convs]
                    for block in blocks
                    if isinstance(block, ResBlock2)
                ]
            )
        steps.append([[_numeric_padding(self.conv_post) / scale]])
        return steps

    @property
    def layer_reach(self) -> int:
        """Latent frames the widest single convolution reaches on each side (rounded up): spans at least
        this far apart decode independently (see :meth:`forward`)."""
        return math.ceil(max(r for step in self._reaches() for chain in step for r in chain))

    @property
    def receptive_field(self) -> int:
        """Latent frames of context on each side that one output sample depends on (rounded up): the
        reaches summed along the widest chain of each step, exactly in fractions of a frame."""
        return math.ceil(sum(max(sum(chain) for chain in step) for step in self._reaches()))


class VitsModel(nn.Module):
    """The inference parts of VITS with the parameter names of Piper's export."""

    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        self.config = cfg
        self.enc_p = TextEncoder(cfg)
        self.dp = StochasticDurationPredictor(cfg)
        self.flow = ResidualCouplingBlock(cfg)
        self.dec = Generator(cfg)
        #: What the encoder, the flow and the decoder multiply in (see :meth:`set_compute_dtype`).
        self.compute_dtype = torch.float32

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Store the encoder's, the flow's and the decoder's parameters in ``dtype`` and compute those
        stages in it (``torch.bfloat16``), or in fp32. Their inputs are cast on the way in, their
        outputs back to fp32 on the way out.

        Why: on a CPU with native bf16 dot products (AVX512-BF16, AMX) oneDNN's bf16 convolutions and
        matmuls take about half the time of fp32 ones, and bf16 activations halve the memory traffic
        of the elementwise passes. Parameters rather than autocast: autocast re-cast every weight on
        every call (thousands of copies per text, which ate most of the gain on short sentences).
        Only ``nn.Parameter`` s convert: quantized layers keep their packed weights and scales and
        dequantize to their input's dtype. Converting back to fp32 does not restore the rounded bits.

        The duration predictor always computes in fp32: its output is rounded up to whole frames, and
        in bf16 it moved ~2 % of a sentence's frames, where bf16 in the three other stages cost
        ~0.2 dB MCD (bound: 0.7 dB) and moved 0.4 % (measured on the calibration set).
        """
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"compute dtype must be torch.float32 or torch.bfloat16, not {dtype}")
        for stage in (self.enc_p, self.flow, self.dec):
            for parameter in stage.parameters():
                parameter.data = parameter.data.to(dtype)
        self.compute_dtype = dtype

    def encode(
        self, ids: torch.Tensor, noise_w: torch.Tensor, length_scale: float, padded_to: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Phoneme ids ``[1, T]`` → prior mean, log-std ``[1, C, T]`` and integer frames per phoneme.

        ``noise_w`` is the duration predictor's noise ``[1, 2, T]``, already scaled. ``padded_to``
        (>= T) runs the networks on the ids padded to that length and masked (see :meth:`encode_batch`).
        """
        return self.encode_batch([ids[0]], [noise_w[0]], length_scale, padded_to)[0]

    def encode_batch(
        self,
        ids: Sequence[torch.Tensor],
        noise_w: Sequence[torch.Tensor],
        length_scale: float,
        padded_to: int | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Several sentences at once: ``ids[i]`` ``[T_i]`` and ``noise_w[i]`` ``[2, T_i]`` → for each,
        what :meth:`encode` returns.

        The sentences run as one batch padded to ``padded_to`` (at least the longest; default: the
        longest) and masked, as VITS trains on batches of sentences of different lengths: the padding
        changes no result (masked attention weights underflow to exactly 0). Why batch: a short
        sentence's encoder and duration predictor are hundreds of small operations whose fixed cost
        exceeds their arithmetic, paid once per batch instead of once per sentence. Why pad: a few
        padded lengths share oneDNN's compiled kernels where every sentence length would compile its own.
        """
        lengths = [int(t.shape[0]) for t in ids]
        longest = max(lengths)
        padded_to = longest if padded_to is None else padded_to
        if padded_to < longest:
            raise ValueError(f"padded_to={padded_to} is shorter than the {longest} ids to encode")
        ids_b = torch.stack([F.pad(t, (0, padded_to - n)) for t, n in zip(ids, lengths)])
        noise_b = torch.stack([F.pad(t, (0, padded_to - n)) for t, n in zip(noise_w, lengths)])
        lengths_t = torch.tensor(lengths, dtype=torch.long, device=ids_b.device)
        x, m_p, logs_p, x_mask = self.enc_p(ids_b, lengths_t, self.compute_dtype)
        x_mask = x_mask.float()
        logw = self.dp(x.float(), x_mask, noise_b)  # fp32 whatever the compute dtype: see set_compute_dtype
        w_ceil = torch.ceil(torch.exp(logw) * x_mask * length_scale)
        m_p, logs_p = m_p.float(), logs_p.float()
        return [
            (m_p[i : i + 1, :, :n], logs_p[i : i + 1, :, :n], w_ceil[i, 0, :n].long()) for i, n in enumerate(lengths)
        ]

    def flow_reverse(self, z_p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Prior sample ``[1, C, F]`` → latent ``z`` for the decoder, in the compute dtype."""
        return self.flow.reverse(z_p.to(self.compute_dtype), mask.to(self.compute_dtype))

    def decode(self, z: torch.Tensor, padded_to: int | None = None) -> torch.Tensor:
        """Latent frames ``[1, C, F]`` → waveform ``[1, 1, F * hop_length]``.

        ``padded_to`` (>= F) runs the decoder on ``F`` frames zero-padded to that length, with the
        same result (see :meth:`Generator.forward`).
        """
        frames = z.shape[-1]
        if padded_to is not None and padded_to < frames:
            raise ValueError(f"padded_to={padded_to} is shorter than the {frames} frames to decode")
        z = z.to(self.compute_dtype)
        if padded_to is None or padded_to == frames:
            return self.dec(z).float()
        padded = F.pad(z, (0, padded_to - frames))
        return self.decode_spans(padded, [(0, frames)])[..., : frames * self.config.hop_length]

    def decode_spans(self, z: torch.Tensor, spans: Spans) -> torch.Tensor:
        """Latent frames ``[1, C, L]`` of which only ``spans`` are real (the rest zeros) → waveform
        ``[1, 1, L * hop_length]`` whose samples within each span are what decoding it alone gives,
        if the spans are at least ``dec.layer_reach`` frames apart."""
        return self.dec(z.to(self.compute_dtype), spans).float()
