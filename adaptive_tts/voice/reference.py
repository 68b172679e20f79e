"""The onnxruntime reference: Piper's own ONNX graph of the same voice, behind the Engine's interface.

Used by the parity tests (our torch output must match it) and by the benchmarks (our speed and
memory are quoted as ratios to it). It synthesizes sentence by sentence, as Piper does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from .engine import SpeechEngine, SynthesisOptions, SynthesisStats, voice_defaults
from .frontend import Frontend, Sentence
from .weights import VoiceFiles, read_voice_config


class ReferenceEngine(SpeechEngine):
    """Piper's ONNX model run by onnxruntime on the CPU, one sentence per ``session.run``."""

    name = "reference"

    def __init__(self, files: VoiceFiles | None = None, *, num_threads: int | None = None) -> None:
        import onnxruntime

        files = files or VoiceFiles.default()
        self.voice_config = read_voice_config(files)
        self.frontend = Frontend(self.voice_config)
        self.defaults = voice_defaults(self.voice_config)
        self.sample_rate = int(self.voice_config["audio"]["sample_rate"])
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(files.model), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def run_ids(self, ids: tuple[int, ...] | list[int], opts: SynthesisOptions) -> np.ndarray:
        """One sentence's phoneme ids → raw waveform (not peak-normalised)."""
        ids_arr = np.asarray([list(ids)], dtype=np.int64)
        scales = np.asarray([opts.noise_scale, opts.length_scale, opts.noise_w], dtype=np.float32)
        feed = {"input": ids_arr, "input_lengths": np.asarray([ids_arr.shape[1]], np.int64), "scales": scales}
        return self.session.run(None, feed)[0].reshape(-1).astype(np.float32)

    def stream(
        self, text: str, options: SynthesisOptions | None = None, stats: SynthesisStats | None = None,
        **overrides,
    ) -> Iterator[np.ndarray]:
        """One chunk per sentence (onnxruntime cannot stream within a sentence)."""
        opts = self.resolve(options, **overrides)
        yield from self.stream_sentences(self.frontend.sentences(text), opts, stats)

    def stream_sentences(
        self, sentences: list[Sentence], opts: SynthesisOptions, stats: SynthesisStats | None = None
    ) -> Iterator[np.ndarray]:
        stats = stats if stats is not None else SynthesisStats()
        stats.started = stats.started or time.perf_counter()
        for sentence in sentences:
            audio = self.run_ids(sentence.ids, opts)
            stats.samples += len(audio)
            if stats.first_audio_s is None:
                stats.first_audio_s = time.perf_counter() - stats.started
            yield audio
        stats.latency_s = time.perf_counter() - stats.started
