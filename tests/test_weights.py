"""The ONNX weight loader: complete, strict, and clear about voices that do not fit."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from adaptive_tts.voice.weights import VoiceFiles, VoiceLoadError, load_vits


def test_loaded_parameters_are_the_voices(engine):
    """Loaded tensors equal the ONNX initializers they came from (the embedding and a transposed conv,
    spot-checked), and the parameter count is the voice's. The loader's strict checks (a tensor missing
    or of the wrong shape is named) are tested below."""
    files = VoiceFiles.default()
    graph = onnx.load(str(files.model)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = engine.model.state_dict()
    assert np.array_equal(state["enc_p.emb.weight"].numpy(), arrays["sid"])
    assert np.array_equal(state["dec.ups.0.weight"].numpy(), arrays["dec.ups.0.weight"])
    n_params = sum(v.numel() for v in state.values())
    assert n_params == pytest.approx(15.6e6, rel=0.01)


def _voice_copy(tmp_path, mutate) -> VoiceFiles:
    files = VoiceFiles.default()
    model = onnx.load(str(files.model))
    mutate(model.graph)
    target = tmp_path / "voice.onnx"
    onnx.save(model, str(target))
    shutil.copy(files.config, tmp_path / "voice.onnx.json")
    return VoiceFiles.from_model(target)


def test_shape_mismatch_is_named(tmp_path):
    def mutate(graph):
        t = next(t for t in graph.initializer if t.name == "dec.conv_post.weight")
        t.CopyFrom(numpy_helper.from_array(np.zeros((1, 32, 5), np.float32), t.name))

    with pytest.raises(VoiceLoadError, match="dec.conv_post.weight"):
        load_vits(_voice_copy(tmp_path, mutate))


def test_missing_tensor_is_named(tmp_path):
    def mutate(graph):
        t = next(t for t in graph.initializer if t.name == "enc_p.proj.bias")
        graph.initializer.remove(t)

    with pytest.raises(VoiceLoadError, match="enc_p.proj.bias"):
        load_vits(_voice_copy(tmp_path, mutate))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(VoiceLoadError, match="not found"):
        load_vits(VoiceFiles.from_model(tmp_path / "nope.onnx"))
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    shutil.copy(VoiceFiles.default().config, tmp_path / "x.onnx.json")
    with pytest.raises(VoiceLoadError, match="not a readable ONNX model"):
        load_vits(VoiceFiles.from_model(tmp_path / "x.onnx"))
