"""The onnxruntime reference: Piper's own ONNX graph of the same voice, behind the Engine's interface.

Used by the parity tests (our torch output must match it) and by the benchmarks (our speed and
memory are quoted as ratios to it). It synthesizes sentence by sentence, as Piper does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .frontend import Frontend, Sentence
from .speech import BaseEngine, EngineCapabilities, SynthesisOptions, voice_defaults
from .weights import VoiceFiles, read_voice_config


class ReferenceEngine(BaseEngine):
    """Piper's ONNX model run by onnxruntime on the CPU, one sentence per ``session.run``."""

    name = "reference"
    #: the graph is fixed: one pass per sentence, fp32 weights, nothing to compile ahead
    capabilities = EngineCapabilities(chunking=False, precisions=("fp32",), warm_up=False)
    compute = "fp32"

    def __init__(self, files: VoiceFiles | None = None, *, num_threads: int | None = None) -> None:
        self.files = files or VoiceFiles.default()
        self.voice_config = read_voice_config(self.files)
        self.frontend = Frontend(self.voice_config)
        self.defaults = voice_defaults(self.voice_config)
        self.sample_rate = int(self.voice_config["audio"]["sample_rate"])
        self.session = self._session(num_threads)

    def _session(self, num_threads: int | None) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        return onnxruntime.InferenceSession(
            str(self.files.model), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def set_num_threads(self, num_threads: int) -> None:
        """onnxruntime fixes a session's threads when it is made: a new session, same graph."""
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.session = self._session(num_threads)

    def warm_up(self, chunk_length: int | None) -> float:
        """Nothing to compile ahead (``capabilities.warm_up`` is false): 0 s."""
        return 0.0

    def run_ids(self, ids: tuple[int, ...] | list[int], opts: SynthesisOptions) -> np.ndarray:
        """One sentence's phoneme ids → raw waveform (not peak-normalised)."""
        ids_arr = np.asarray([list(ids)], dtype=np.int64)
        scales = np.asarray([opts.noise_scale, opts.length_scale, opts.noise_w], dtype=np.float32)
        feed = {"input": ids_arr, "input_lengths": np.asarray([ids_arr.shape[1]], np.int64), "scales": scales}
        return self.session.run(None, feed)[0].reshape(-1).astype(np.float32)

    def stream_sentences(self, sentences: list[Sentence], opts: SynthesisOptions) -> Iterator[np.ndarray]:
        """One chunk per sentence (onnxruntime cannot stream within a sentence)."""
        for sentence in sentences:
            yield self.run_ids(sentence.ids, opts)
