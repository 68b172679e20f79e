"""The PyTorch engine against Piper's onnxruntime reference, chunked against one-pass decoding."""

from __future__ import annotations

import numpy as np
import pytest
from texts import LONG_UNPUNCTUATED, PARITY_SENTENCES

from adaptive_tts.voice.engine import SynthesisOptions, _chunks, _decoder_window, _window
from adaptive_tts.voice.frontend import TextError

DETERMINISTIC = SynthesisOptions(noise_scale=0.0, noise_w=0.0)


def test_frontend_ids_are_pipers(engine):
    """Our phoneme ids are exactly those Piper's own pipeline produces for the voice."""
    from piper import PiperVoice

    piper = PiperVoice(session=None, config=engine.frontend.config)
    text = "Dr. Smith paid $12.50 on 3/4/2024. Then he left!"
    ours = [list(s.ids) for s in engine.frontend.sentences(text)]
    theirs = [piper.phonemes_to_ids(p) for p in piper.phonemize(text)]
    assert ours == theirs
    assert len(ours) == 3  # "Dr." ends a sentence for espeak, as it does in Piper


@pytest.mark.parametrize("sentence", PARITY_SENTENCES)
def test_parity_with_onnxruntime_reference(engine, reference, sentence):
    """Noise scales 0: same length and max |difference| <= 1e-3 against the ONNX graph."""
    ids = engine.frontend.sentences(sentence)[0].ids
    opts = engine.resolve(DETERMINISTIC)
    ours = np.concatenate(list(engine.stream_ids(ids, opts)))
    theirs = reference.run_ids(ids, opts)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-3


def test_seeded_default_scales_are_reproducible(engine):
    text = "Reproducible noise, please."
    a = engine.synthesize(text, seed=1234)
    b = engine.synthesize(text, seed=1234)
    c = engine.synthesize(text, seed=4321)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[: min(len(a), len(c))], c[: min(len(a), len(c))])


@pytest.mark.parametrize("chunk_length", [16, 57, 200])
def test_chunked_decode_equals_one_pass(engine, chunk_length):
    """No seams: chunk boundaries leave the waveform unchanged (<= 1e-4), with noise and a seed too."""
    text = PARITY_SENTENCES[19]
    one_pass = engine.synthesize(text, seed=7)
    chunked = engine.synthesize(text, seed=7, chunk_length=chunk_length, first_chunk_length=8)
    assert one_pass.shape == chunked.shape
    assert np.abs(one_pass - chunked).max() <= 1e-4


@pytest.mark.parametrize("frames", [1, 30, 57, 100, 279])
def test_padded_decode_equals_unpadded(engine, frames):
    """Zero padding kept at zero through the decoder changes nothing in the real part."""
    import torch

    z = torch.randn(1, engine.model.config.hidden_channels, frames, generator=torch.Generator().manual_seed(frames))
    with torch.inference_mode():
        plain = engine.model.decode(z)
        padded = engine.model.decode(z, padded_to=engine._decode_length(frames))
    assert engine._decode_length(frames) > frames
    assert plain.shape == padded.shape
    assert (plain - padded).abs().max().item() <= 1e-5


def test_spans_decoded_together_equal_each_alone(engine):
    """Latents of several lengths laid end to end ``layer_reach`` frames apart and decoded in one call:
    each span's audio is what decoding it alone gives. Nearer than that, they bleed into each other
    (so the reach is not merely generous: one frame less already moves the audio)."""
    import torch

    dec = engine.model.dec
    hop, channels = engine.hop_length, engine.model.config.hidden_channels
    lengths = [1, 23, 57, 9]
    gen = torch.Generator().manual_seed(11)
    segments = [torch.randn(1, channels, n, generator=gen) for n in lengths]

    def together(gap: int) -> list[torch.Tensor]:
        starts = [sum(lengths[:i]) + gap * i for i in range(len(lengths))]
        z = torch.zeros(1, channels, starts[-1] + lengths[-1] + 7)  # and trailing padding
        for start, segment in zip(starts, segments):
            z[..., start : start + segment.shape[-1]] = segment
        audio = engine.model.decode_spans(z, [(start, start + n) for start, n in zip(starts, lengths)])
        return [audio[..., start * hop : (start + n) * hop] for start, n in zip(starts, lengths)]

    with torch.inference_mode():
        alone = [engine.model.decode(segment) for segment in segments]
        apart = together(dec.layer_reach)
        near = together(dec.layer_reach - 1)
    assert dec.layer_reach >= 1
    for a, b in zip(alone, apart):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(alone, near)) > 1e-4


def test_padded_encode_equals_unpadded(engine):
    """Masked padding changes neither the durations nor (beyond float rounding) the prior."""
    import torch

    ids = torch.tensor([list(engine.frontend.sentences(PARITY_SENTENCES[19])[0].ids)])
    noise_w = torch.randn(1, 2, ids.shape[1], generator=torch.Generator().manual_seed(5)) * 0.8
    with torch.inference_mode():
        plain = engine.model.encode(ids, noise_w, 1.0)
        padded = engine.model.encode(ids, noise_w, 1.0, padded_to=ids.shape[1] + 45)
    assert torch.equal(plain[2], padded[2])
    for a, b in zip(plain[:2], padded[:2]):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-4


def test_batched_encode_equals_one_sentence_at_a_time(engine):
    """Sentences of different lengths encoded as one padded batch: same durations, same prior."""
    import torch

    ids = [torch.tensor(s.ids) for s in engine.frontend.sentences(" ".join(PARITY_SENTENCES[17:21]))]
    assert len({len(t) for t in ids}) > 1
    noise = [torch.randn(2, len(t), generator=torch.Generator().manual_seed(i)) * 0.8 for i, t in enumerate(ids)]
    with torch.inference_mode():
        batched = engine.model.encode_batch(ids, noise, 1.0, padded_to=max(len(t) for t in ids) + 13)
        alone = [engine.model.encode(t[None], n[None], 1.0) for t, n in zip(ids, noise)]
    for (m_b, logs_b, dur_b), (m_a, logs_a, dur_a) in zip(batched, alone):
        assert torch.equal(dur_b, dur_a)
        assert m_b.shape == m_a.shape and (m_b - m_a).abs().max().item() <= 1e-4
        assert (logs_b - logs_a).abs().max().item() <= 1e-4


@pytest.mark.parametrize("chunk_length", [None, 256])
def test_sentences_synthesized_together_equal_each_alone(engine, chunk_length):
    """Batched encoding, and the flow and the decoder run once over several short sentences, change
    nothing: each sentence's audio is what synthesizing it alone gives (noise off, so both draw nothing).
    The text mixes sentences of 35-485 frames, so that some share a decoder call and some do not."""
    sentences = engine.frontend.sentences(" ".join(PARITY_SENTENCES[i] for i in (1, 4, 11, 17, 0, 2, 5, 10, 21)))
    assert len(sentences) >= 10
    opts = engine.resolve(DETERMINISTIC, chunk_length=chunk_length)
    decoded: list[int] = []
    model_decode_spans = engine.model.decode_spans

    def recording(z, spans):
        decoded.append(len(spans))
        return model_decode_spans(z, spans)

    engine.model.decode_spans = recording
    try:
        together = np.concatenate(list(engine.stream_sentences(sentences, opts)))
    finally:
        del engine.model.decode_spans
    alone = np.concatenate([chunk for s in sentences for chunk in engine.stream_ids(s.ids, opts)])
    assert together.shape == alone.shape and np.abs(together - alone).max() <= 1e-4
    if chunk_length is not None:  # the short sentences after the first were decoded several a call
        assert max(decoded) >= 3


def test_warm_up_compiles_the_decoder_windows_a_chunked_synthesis_uses(engine):
    """After warm_up, a text of sentences of many lengths meets no decoder window length it has not
    already decoded (so oneDNN compiles nothing new for it)."""
    decoded: set[int] = set()
    model_decode = engine.model.decode

    def recording(z, padded_to=None):
        decoded.add(padded_to or z.shape[-1])
        return model_decode(z, padded_to)

    engine.model.decode = recording
    try:
        engine.warm_up(64)
        warmed = set(decoded)
        decoded.clear()
        engine.synthesize(" ".join(PARITY_SENTENCES), DETERMINISTIC, chunk_length=64, first_chunk_length=8)
    finally:
        del engine.model.decode
    assert len(warmed) == 2 and decoded and decoded <= warmed
    assert engine.warm_up(None) < 0.01  # one-pass decoding: nothing to compile ahead


def test_encode_batches_cover_every_sentence_within_their_limits():
    from adaptive_tts.voice.engine import ENCODE_BATCH_IDS, ENCODE_BATCH_PADDING, _batches

    rng = np.random.default_rng(3)
    for _ in range(200):
        lengths = [int(n) for n in rng.integers(3, 1500, size=rng.integers(0, 30))]
        batches = list(_batches(lengths))
        assert [i for batch in batches for i in batch] == list(range(len(lengths)))
        for batch in batches:
            sizes = [lengths[i] for i in batch]
            if len(batch) > 1:
                padded = max(sizes) * len(batch)
                assert padded <= ENCODE_BATCH_IDS
                assert padded - sum(sizes) <= max(ENCODE_BATCH_PADDING, sum(sizes))


def test_chunks_cover_the_sentence_in_chunk_length_steps():
    for frames in range(0, 1400, 7):
        for chunk_length, first in [(256, None), (256, 32), (64, 8), (57, None)]:
            ranges = list(_chunks(frames, chunk_length, first))
            assert [r[0] for r in ranges[1:]] == [r[1] for r in ranges[:-1]]
            assert ((ranges[0][0], ranges[-1][1]) == (0, frames)) if frames else (ranges == [])
            sizes = [size for _, _, size in ranges]
            assert sizes == ([first] if first and frames else []) + [chunk_length] * (
                len(ranges) - bool(first and frames)
            )
            assert all(end - start <= size for start, end, size in ranges)
            assert all(end - start == size for start, end, size in ranges[:-1])


def test_a_sentence_s_last_chunk_is_decoded_in_a_window_that_ends_with_it():
    """Every decoder window holds its chunk and ``margin`` frames of context each side (where the
    sentence has them) and is no longer than a full one; all but the last are full windows, and the
    last one ends at the sentence's end instead of a full window shifted inwards: 824 frames in 256-frame
    chunks decode 56 + 3 x 280 + 36 frames, not 56 + 4 x 280."""
    margin, chunk = 12, 256
    for frames in range(1, 1400, 7):
        windows = [
            (start, end, *_decoder_window(start, end, margin, frames, size))
            for start, end, size in _chunks(frames, chunk, 32)
        ]
        for start, end, d0, d1 in windows:
            assert d0 <= max(0, start - margin) and d1 >= min(frames, end + margin)
            assert d1 - d0 <= chunk + 2 * margin
        *full, (start, end, d0, d1) = windows
        assert (d0, d1) == (max(0, start - margin), frames)
        assert all((w[2], w[3]) == _window(w[0], w[1], margin, frames, chunk if w[0] else 32) for w in full)
    decoded = [
        d1 - d0
        for *_, d0, d1 in ((s, e, *_decoder_window(s, e, margin, 824, size)) for s, e, size in _chunks(824, chunk, 32))
    ]
    assert decoded == [56, 280, 280, 280, 36]


def test_long_unpunctuated_sentence_streams(engine):
    """A single 1000-character sentence without punctuation is decoded in many chunks as it goes."""
    assert len(engine.frontend.sentences(LONG_UNPUNCTUATED)) == 1
    chunks = []
    for chunk in engine.stream(LONG_UNPUNCTUATED, DETERMINISTIC, chunk_length=256):
        chunks.append(len(chunk))
        if len(chunks) == 3:
            break
    assert chunks == [256 * engine.hop_length] * 3


def test_sentences_stream_one_after_another(engine):
    text = "First sentence. Second sentence! Third?"
    stream = list(engine.stream(text, DETERMINISTIC))
    assert len(stream) == 3
    whole = engine.synthesize(text, DETERMINISTIC)
    assert np.array_equal(np.concatenate(stream), whole)


@pytest.mark.parametrize("bad", ["", "   \n", None, 42, "bell\x07"])
def test_bad_text_is_rejected_with_a_reason(engine, bad):
    with pytest.raises(TextError):
        engine.synthesize(bad)


@pytest.mark.parametrize("field, value", [("noise_scale", -1.0), ("length_scale", 0.0), ("chunk_length", 0)])
def test_bad_options_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        SynthesisOptions(**{field: value})


def test_missing_device_is_an_error():
    import torch

    from adaptive_tts.voice.engine import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda"):
        resolve_device("cuda")
