"""Layer groups — the units calibration quantizes and scores together — and the helpers that measure
and replace layers in a model by module path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ...voice.vits import ResidualCouplingLayer, VitsModel
from .layers import QUANTIZABLE


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
        owners = [
            name
            for name, starts in prefixes.items()
            if any(path == s or path.startswith(s if s.endswith(".") else s + ".") for s in starts)
        ]
        if len(owners) != 1:
            raise ValueError(f"layer {path} belongs to {len(owners)} calibration groups: {owners}")
        groups[owners[0]].append(path)
    return groups


def weight_bytes(model: nn.Module) -> int:
    """Resident bytes of the model's parameters and buffers (packed weights, scales, biases, norms)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _group_bytes(modules: dict[str, nn.Module]) -> int:
    return sum(weight_bytes(m) for m in modules.values())


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
