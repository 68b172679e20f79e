"""bf16 compute, the default on CPUs with native bf16: what it changes, and that it stays within bounds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from texts import PARITY_SENTENCES

from adaptive_tts.runtime.quality import MCD_BOUND_DB, compare
from adaptive_tts.runtime.quantize import DURATION_CHANGE_BOUND, CalibrationSet, QuantizationStrategy, quantize_
from adaptive_tts.voice.engine import Engine, native_bf16, resolve_compute


@pytest.fixture(scope="module")
def bf16_engine(engine):
    return Engine(model=copy.deepcopy(engine.model), voice_config=engine.voice_config, compute="bf16")


def test_auto_is_bf16_only_where_the_cpu_has_it():
    """torch's probe agrees with what the kernel reports of the CPU (Linux x86), and auto follows it."""
    import platform
    from pathlib import Path

    if platform.system() == "Linux" and platform.machine() == "x86_64":
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        assert native_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))
    assert resolve_compute("auto") == ("bf16" if native_bf16() else "fp32")
    assert resolve_compute("fp32") == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        resolve_compute("fp16")


def test_bf16_converts_three_stages_and_keeps_durations_in_fp32(bf16_engine):
    model = bf16_engine.model
    for stage in (model.enc_p, model.flow, model.dec):
        assert {p.dtype for p in stage.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.dp.parameters()} == {torch.float32}


def test_bf16_quality_is_within_the_quantization_bound(engine, bf16_engine):
    """The default configuration against fp32, as quantization is judged: same noise, same durations."""
    calibration = CalibrationSet.default(engine.frontend, engine.voice_config, 8)
    score = calibration.score(bf16_engine.model, calibration.references(engine.model))
    assert score.within(MCD_BOUND_DB, DURATION_CHANGE_BOUND), score
    assert score.quality.mcd_db > 0  # it does compute in bf16: the output is not the fp32 one


def test_bf16_chunked_decode_matches_one_pass(bf16_engine):
    """Chunk windows of other lengths may round differently in bf16, but only by a rounding step or two
    (bf16 keeps 8 significant bits; the waveform's largest samples are ~0.5), and never audibly."""
    text = PARITY_SENTENCES[19]
    one_pass = bf16_engine.synthesize(text, seed=7)
    chunked = bf16_engine.synthesize(text, seed=7, chunk_length=57, first_chunk_length=8)
    assert one_pass.shape == chunked.shape
    assert np.abs(one_pass - chunked).max() <= 8e-3
    assert compare(one_pass, chunked).mcd_db <= 0.1


def test_quantized_layers_compute_in_their_input_dtype(engine):
    """INT8 weights (weight-only and dynamic) under bf16 compute: they dequantize to bf16, a whole text
    streams, and the pair stays within the quantization bound."""
    model = copy.deepcopy(engine.model)
    quantize_(model, QuantizationStrategy(mode="int8", dynamic=True))
    q_engine = Engine(model=model, voice_config=engine.voice_config, compute="bf16")
    audio = q_engine.synthesize(" ".join(PARITY_SENTENCES[:3]), chunk_length=40)
    assert audio.size and np.isfinite(audio).all()
    calibration = CalibrationSet.default(engine.frontend, engine.voice_config, 4)
    score = calibration.score(model, calibration.references(engine.model))
    assert score.within(MCD_BOUND_DB, DURATION_CHANGE_BOUND), score
