"""Engine: text or phoneme ids → waveform with our PyTorch VITS, one pass or streamed in chunks.

Streaming is what keeps memory flat: the HiFi-GAN decoder's activations are ~256× larger than its
input (one latent frame becomes 256 samples, 32–128 channels deep), so a one-pass decode of a minute of
speech needs gigabytes. We run the flow and the decoder over windows of ``chunk_length`` latent frames,
each padded on both sides by the networks' receptive fields, and keep only the window's centre. With
margins at least as wide as the receptive field the centre is, up to float rounding, exactly what the
one-pass decode produces: there are no seams to hide.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..heap import release_free_memory, tune_heap
from .frontend import Frontend, Sentence
from .speech import BaseEngine, EngineCapabilities, SynthesisOptions, voice_defaults
from .vits import VitsModel
from .weights import VoiceFiles, load_vits

logger = logging.getLogger(__name__)

#: Frames the flow transforms at once when decoding in chunks (~12 s of audio; ~2 MB per activation).
FLOW_BLOCK = 1024
#: Decoded chunks between two returns of freed heap memory to the OS (see ``release_free_memory``).
TRIM_EVERY_CHUNKS = 8
#: Padded phoneme ids (of an encoder batch, all its sentences) above which the encoder's temporaries
#: are returned to the OS before decoding.
LONG_SENTENCE_IDS = 512
#: Compiled convolutions kept by oneDNN (its default: 1024). oneDNN compiles kernels per input shape,
#: and each cache entry holds memory (~11 MB per decoder length, its ~25 convolutions): with every
#: sentence length a new shape, a long-running service grew with each request (+490 MB over 67
#: decoder lengths) and a text of short sentences spent a third of its synthesis compiling. The engine
#: therefore runs its networks at a few padded lengths (``LENGTH_GRANULE``), and bounds the cache at
#: 512 entries (:func:`bound_kernel_cache`), which still holds a text's working set of kernels across
#: requests (a 500-character text of new sentence lengths: 0.96-1.08 s with 512 entries, 1.36-1.44 s
#: with 128). ideep's per-thread cache above it (``LRU_CACHE_CAPACITY``) keeps its default:
#: with few shapes it stays small, and bounding it to 16 entries made each convolution re-pack its
#: weights, which fragmented the heap (a 1000-character sentence then peaked 5-7 % above a
#: 100-character one, against 0-1 % with the default).
PRIMITIVE_CACHE_CAPACITY = 512
#: Sentences after a request's first are encoded in batches of up to this many ids (padded): the
#: encoder and duration predictor of a short sentence are hundreds of small operations, whose fixed
#: cost batching pays once per batch (a 300-character text of 14 sentences, bf16, 2 threads: 0.19 s in
#: encoder and duration predictor one sentence at a time, 0.08 s in batches).
ENCODE_BATCH_IDS = 1024
#: A batch may compute at most this many padded ids, or as many as it has real ones if that is more:
#: padding costs arithmetic (~0.05 ms an id, bf16), a separate batch its fixed cost (~5 ms).
ENCODE_BATCH_PADDING = 256
#: The encoder (ids), flow and decoder (frames) run at lengths padded to a multiple of this, so that
#: their compiled kernels are shared (see ``PRIMITIVE_CACHE_CAPACITY``).
LENGTH_GRANULE = 32


@dataclass
class Prior:
    """One encoded sentence, ready for the flow: the prior's mean and log-std per phoneme, the phoneme
    of each latent frame, the prior noise (drawn once for the whole sentence, frame-major, so that any
    chunking sees the same numbers), the flow's output ``z`` for all its frames once it has been
    computed together with other sentences, and the sentence's ``audio`` once it has been decoded
    together with others (each ``None`` until then)."""

    m_p: torch.Tensor
    logs_p: torch.Tensor
    frame_to_phoneme: torch.Tensor
    eps: torch.Tensor | None
    noise_scale: float
    z: torch.Tensor | None = None
    audio: np.ndarray | None = None

    @property
    def frames(self) -> int:
        return int(self.frame_to_phoneme.numel())

    def __call__(self, start: int, end: int) -> torch.Tensor:
        """The prior sample ``z_p`` ``[1, C, end - start]`` for frames ``[start, end)``."""
        idx = self.frame_to_phoneme[start:end]
        z = self.m_p[0][:, idx]
        if self.eps is not None:
            z = z + self.eps[start:end].T * torch.exp(self.logs_p[0][:, idx]) * self.noise_scale
        return z.unsqueeze(0)


def bound_kernel_cache() -> None:
    """Bound oneDNN's cache of compiled kernels to :data:`PRIMITIVE_CACHE_CAPACITY` entries, unless the
    environment already sets it. Called as an engine is made, not at import: importing a module should
    not change the process, and oneDNN reads the value only at its first compile, which comes later."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(PRIMITIVE_CACHE_CAPACITY))


def resolve_device(device: str) -> torch.device:
    """``cpu`` always; ``cuda``/``mps`` only when present — asking for a missing one is an error."""
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no CUDA device is available")
        return torch.device("cuda")
    if device == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' requested but MPS is not available")
        return torch.device("mps")
    raise ValueError(f"unknown device {device!r}: use cpu, cuda or mps")


#: Compute dtypes an engine can run its encoder, flow and decoder in (see ``VitsModel.set_compute_dtype``).
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def native_bf16() -> bool:
    """Whether this CPU has native bf16 dot products (x86 AVX512-BF16 or AMX), where oneDNN's bf16
    kernels run about twice as fast as its fp32 ones. Elsewhere bf16 is converted in software and
    is slower than fp32, so ``auto`` keeps fp32 there (ARM's bf16 extension is not probed: unmeasured)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_compute(compute: str) -> str:
    """``fp32`` or ``bf16`` for a requested compute precision; ``auto`` is bf16 where :func:`native_bf16`."""
    if compute == "auto":
        return "bf16" if native_bf16() else "fp32"
    if compute not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute precision {compute!r}: use auto, {', '.join(COMPUTE_DTYPES)}")
    if compute == "bf16" and not native_bf16():
        logger.warning("bf16 compute requested on a CPU without native bf16: expect it to be slower than fp32")
    return compute


class Engine(BaseEngine):
    """Our PyTorch VITS engine for one voice, loaded once and shared by callers.

    Thread-safe: synthesis holds no shared mutable state besides the model's (read-only) weights, so
    several threads may synthesize at once (the HTTP service does).

    ``compute`` is what the encoder, flow and decoder multiply in: ``auto`` (bf16 where the CPU has
    native bf16, see :func:`native_bf16`), ``fp32`` or ``bf16``. A ``model`` passed in is set to it,
    its parameters converted in place (``VitsModel.set_compute_dtype``).
    """

    name = "torch"
    capabilities = EngineCapabilities(
        chunking=True,
        precisions=("fp32", "int8", "int4"),
        warm_up=True,
        computes=("fp32", "bf16"),
        step_threads=True,
    )

    def __init__(
        self,
        files: VoiceFiles | None = None,
        *,
        num_threads: int | None = None,
        device: str = "cpu",
        compute: str = "auto",
        model: VitsModel | None = None,
        voice_config: dict | None = None,
    ) -> None:
        tune_heap()  # decoder blocks stay mapped between chunks (adaptive_tts.heap)
        bound_kernel_cache()
        self.device = resolve_device(device)
        if model is None or voice_config is None:
            model, voice_config = load_vits(files)
        self.model = model.to(self.device)
        if compute == "auto" and self.device.type != "cpu":
            compute = "fp32"  # native_bf16 probes the CPU; on an accelerator, ask for bf16 explicitly
        #: ``fp32`` or ``bf16``: what the encoder, flow and decoder compute in (``auto`` resolved)
        self.compute = resolve_compute(compute)
        self.model.set_compute_dtype(COMPUTE_DTYPES[self.compute])
        self.voice_config = voice_config
        self.frontend = Frontend(voice_config)
        self.defaults = voice_defaults(voice_config)
        self.sample_rate = model.config.sample_rate
        self.hop_length = model.config.hop_length
        self.flow_margin = model.flow.receptive_field
        self.decoder_margin = model.dec.receptive_field
        self._chunks_since_trim = 0
        if num_threads is not None:
            self.set_num_threads(num_threads)

    # -- configuration ------------------------------------------------------------------------------

    @staticmethod
    def set_num_threads(num_threads: int) -> None:
        """Torch's intra-op threads for the calling thread, and for threads that have not computed yet.

        Not process-wide: OpenMP keeps the count per thread, and a thread that has already run a
        parallel region keeps its own (measured: set on the main thread, a compute lane still ran 2
        threads). Call it on the thread that computes: the backend does, on its lanes."""
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        torch.set_num_threads(num_threads)

    # -- public API ----------------------------------------------------------------------------------

    def stream_sentences(self, sentences: list[Sentence], opts: SynthesisOptions) -> Iterator[np.ndarray]:
        """Audio chunks of already phonemized sentences, as they are decoded (options fully resolved)."""
        generator = torch.Generator().manual_seed(opts.seed) if opts.seed is not None else None
        for i, prior in enumerate(self._encoded(sentences, opts, generator)):
            yield from self._stream_prior(prior, opts, first_sentence=i == 0)

    def stream_ids(
        self,
        ids: tuple[int, ...] | list[int],
        opts: SynthesisOptions,
        generator: torch.Generator | None = None,
        first_sentence: bool = True,
    ) -> Iterator[np.ndarray]:
        """Phoneme ids of one sentence → audio chunks. Options must be resolved (no ``None`` scales)."""
        yield from self._stream_prior(self._encode([ids], opts, generator)[0], opts, first_sentence)

    @torch.inference_mode()
    def _encode(
        self, sentences: list[tuple[int, ...] | list[int]], opts: SynthesisOptions, generator: torch.Generator | None
    ) -> list[Prior]:
        """Each sentence's :class:`Prior`, encoded as one batch padded to a multiple of
        ``LENGTH_GRANULE`` (see ``VitsModel.encode_batch``). Every sentence's duration noise is drawn
        first, in order, then each one's prior noise: with a seed, the batches (which depend only on
        the sentences) and the chunking (which draws nothing) leave the audio the same."""
        dev = self.device
        noise_scale, length_scale, noise_w = _scales(opts)
        ids = [torch.as_tensor(list(s), dtype=torch.long, device=dev) for s in sentences]
        noise = [
            torch.zeros(2, len(t)) if noise_w == 0 else torch.randn(2, len(t), generator=generator) * noise_w
            for t in ids
        ]
        padded = _granular(max(len(t) for t in ids))
        encoded = self.model.encode_batch(ids, [t.to(dev) for t in noise], length_scale, padded)
        if padded * len(ids) > LONG_SENTENCE_IDS:
            # a long sentence's encoder temporaries are tens of MB; give them back before the decoder
            # allocates its own, or the two stack up in the process's peak
            release_free_memory()
        priors = []
        for m_p, logs_p, durations in encoded:
            frame_to_phoneme = torch.repeat_interleave(torch.arange(len(durations), device=dev), durations.clamp_min(0))
            # Noise is drawn frame-major for the whole sentence up front, so any chunking sees the same
            # numbers as a one-pass decode with the same seed. It is 192 floats a frame: negligible.
            eps = None
            if noise_scale != 0 and frame_to_phoneme.numel():
                eps = torch.randn(frame_to_phoneme.numel(), m_p.shape[1], generator=generator).to(dev)
            priors.append(Prior(m_p, logs_p, frame_to_phoneme, eps, noise_scale))
        return priors

    def _encoded(
        self, sentences: list[Sentence], opts: SynthesisOptions, generator: torch.Generator | None
    ) -> Iterator[Prior]:
        """Each sentence encoded, in order: the first alone, since its audio is awaited; the ones
        after it a batch at a time, as each batch's audio is needed (:func:`_batches`), with the flow
        run once over the batch's short sentences (:meth:`_flow_together`) and their decoder too
        (:meth:`_decode_together`)."""
        if not sentences:
            return
        yield from self._encode([sentences[0].ids], opts, generator)
        for batch in _batches([len(s.ids) for s in sentences[1:]]):
            priors = self._encode([sentences[1 + i].ids for i in batch], opts, generator)
            self._flow_together(priors)
            self._decode_together(priors, opts.chunk_length)
            yield from priors

    @torch.inference_mode()
    def _flow_together(self, priors: list[Prior]) -> None:
        """Run the flow once over ``priors`` (those of at most :data:`FLOW_BLOCK` frames, in groups of at
        most that many) and set each one's ``z``: their decoder windows then take it from there.

        The sentences lie end to end with ``flow.layer_reach`` masked frames between them: every
        coupling layer zeroes the masked frames before its next convolution, and no convolution reaches
        further than that, so each sentence's ``z`` is what the flow gives it alone. Why: a short
        sentence's flow is ~200 small operations, and one call for the batch pays their fixed cost once.
        """
        gap = self.model.flow.layer_reach
        group: list[Prior] = []
        size = 0
        for prior in priors:
            if not 0 < prior.frames <= FLOW_BLOCK:
                continue
            if group and size + prior.frames > FLOW_BLOCK:
                self._flow_group(group, gap)
                group, size = [], 0
            group.append(prior)
            size += prior.frames + gap
        self._flow_group(group, gap)

    def _flow_group(self, group: list[Prior], gap: int) -> None:
        """Set the ``z`` of a group of two or more sentences from one flow call (alone, a sentence's
        flow runs as its decoder windows need it)."""
        if len(group) > 1:
            for prior, z in zip(group, self._flow_over([prior(0, prior.frames) for prior in group], gap)):
                prior.z = z

    def _flow_over(self, segments: list[torch.Tensor], gap: int) -> list[torch.Tensor]:
        """The flow over prior samples ``[1, C, F_i]`` laid end to end, ``gap`` masked frames after
        each, padded to a multiple of ``LENGTH_GRANULE`` for the reason the decoder's windows are (see
        ``_decode_length``): the flow masks its convolutions' inputs, so the padding changes nothing."""
        lengths = [segment.shape[-1] for segment in segments]
        starts = _end_to_end(lengths, gap)
        end = starts[-1] + lengths[-1]
        padded = _granular(end + gap)
        z_p = segments[0].new_zeros(1, segments[0].shape[1], padded)
        mask = segments[0].new_zeros(1, 1, padded)
        for start, n, segment in zip(starts, lengths, segments):
            z_p[..., start : start + n] = segment
            mask[..., start : start + n] = 1
        z = self.model.flow_reverse(z_p, mask)
        return [z[:, :, start : start + n] for start, n in zip(starts, lengths)]

    @torch.inference_mode()
    def _decode_together(self, priors: list[Prior], chunk_length: int | None) -> None:
        """Decode runs of consecutive sentences that each fit one chunk, as few decoder calls as a full
        window (``chunk_length`` and its margins) holds, and set each one's ``audio``.

        The sentences lie end to end ``dec.layer_reach`` frames apart, and the decoder zeroes
        everything outside them after every convolution (``Generator.forward``), so each sentence's
        audio is what decoding it alone gives. Why: a short sentence's decoder is ~100 operations whose
        fixed cost, and the padding of its window to a compiled length, weigh on its few frames (a
        300-character text of 14 sentences: 18 decoder calls for 2172 frames of audio). One-pass
        decoding (``chunk_length`` ``None``) has no window to fill: each sentence goes alone.
        """
        if chunk_length is None:
            return
        window = chunk_length + 2 * self.decoder_margin
        gap = self.model.dec.layer_reach
        group: list[Prior] = []
        size = 0
        for prior in priors:
            fits = 0 < prior.frames <= chunk_length
            if not fits or (group and size + gap + prior.frames > window):
                self._decode_group(group, gap)
                group, size = [], 0
            if fits:
                size += (gap if group else 0) + prior.frames
                group.append(prior)
        self._decode_group(group, gap)

    def _decode_group(self, group: list[Prior], gap: int) -> None:
        """Set the ``audio`` of a group of two or more sentences from one decoder call (one alone, or
        none, is left to decode as its chunks are asked for)."""
        if len(group) < 2:
            return
        segments = [
            prior.z if prior.z is not None else self._flow_over([prior(0, prior.frames)], gap=0)[0] for prior in group
        ]
        lengths = [prior.frames for prior in group]
        starts = _end_to_end(lengths, gap)
        end = starts[-1] + lengths[-1]
        z = segments[0].new_zeros(1, segments[0].shape[1], self._decode_length(end))
        for start, n, segment in zip(starts, lengths, segments):
            z[..., start : start + n] = segment
        audio = self.model.decode_spans(z, [(start, start + n) for start, n in zip(starts, lengths)])
        hop = self.hop_length
        for prior, start, n in zip(group, starts, lengths):
            prior.audio = audio[0, 0, start * hop : (start + n) * hop].cpu().numpy().copy()
        del audio
        self._count_chunk()

    @torch.inference_mode()
    def _stream_prior(self, prior: Prior, opts: SynthesisOptions, first_sentence: bool = True) -> Iterator[np.ndarray]:
        """One encoded sentence → audio chunks, through the flow (unless already run) and the decoder.

        ``first_chunk_length`` applies to the first sentence of a request only: later sentences are
        decoded while earlier audio plays, so they gain nothing from a short first chunk.
        """
        model = self.model
        frames = prior.frames
        if frames == 0:  # the original clamps the length to one (silent) frame
            yield np.zeros(self.hop_length, np.float32)
            return
        if prior.audio is not None:  # decoded together with other sentences
            yield prior.audio
            return
        first_chunk = opts.first_chunk_length if first_sentence else None
        # flow output z for frames [b0, b1)
        block: tuple[int, int, torch.Tensor] | None = None if prior.z is None else (0, frames, prior.z)
        hop = self.hop_length
        for start, end, size in _chunks(frames, opts.chunk_length, first_chunk):
            d0, d1 = _decoder_window(start, end, self.decoder_margin, frames, size)
            if block is None or d0 < block[0] or d1 > block[1]:
                # the first chunk of a request gets a block of its own size: its audio is awaited
                short = first_chunk is not None and start == 0
                block = self._flow_block(prior, d0, d1, frames, opts.chunk_length, exact=short)
            b0, _, z = block
            if start > 0 and end == frames:
                # a sentence's last window is smaller than the full ones before it: give their freed
                # blocks back first, or the heap holds both sizes and the peak grows with the sentence
                # (see _decoder_window)
                self._trim_heap()
            audio = model.decode(z[:, :, d0 - b0 : d1 - b0], padded_to=self._decode_length(d1 - d0))
            out = audio[0, 0, (start - d0) * hop : (end - d0) * hop].float().cpu().numpy().copy()
            del audio
            self._count_chunk()
            yield out

    def _count_chunk(self) -> None:
        """Count one decoded window, and give freed heap memory back every :data:`TRIM_EVERY_CHUNKS`."""
        self._chunks_since_trim += 1
        if self._chunks_since_trim >= TRIM_EVERY_CHUNKS:
            self._trim_heap()

    def _trim_heap(self) -> None:
        """Give freed heap memory back now, and start counting chunks towards the next trim afresh."""
        self._chunks_since_trim = 0
        release_free_memory()

    @torch.inference_mode()
    def warm_up(self, chunk_length: int | None) -> float:
        """Compile the decoder's kernels for every window length a synthesis chunked at
        ``chunk_length`` uses (:meth:`_decode_length`), and return the seconds it took.

        Why: oneDNN compiles per input length (~15 ms per decoder length, bf16, 2 threads), and a
        text of short sentences meets most of the ~``chunk_length / LENGTH_GRANULE`` lengths in its
        first synthesis: a 300-character text took 0.55 s the first time in a process and 0.40-0.46 s
        after. A service pays it once at start-up instead. One-pass decoding (``None``) has no bound on
        its lengths: nothing to do.
        """
        started = time.perf_counter()
        if chunk_length is not None:
            channels = self.model.config.hidden_channels
            for granules in range(1, -(-chunk_length // LENGTH_GRANULE) + 1):
                length = granules * LENGTH_GRANULE + 2 * self.decoder_margin
                self.model.decode(torch.zeros(1, channels, length, device=self.device))
        return time.perf_counter() - started

    def _decode_length(self, frames: int) -> int:
        """The length a decoder window of ``frames`` is padded to: the next ``k * LENGTH_GRANULE + 2 *
        decoder_margin``, which is the size of a full window of a chunk of ``k`` granules.

        Compiling the decoder's kernels for a new length costs ~30 ms (2 threads), as much as decoding
        ~80 frames; a text of short sentences met a new length in nearly every sentence, and its
        synthesis took 1.5x as long as when the same lengths came again. Padding costs at most
        ``LENGTH_GRANULE - 1`` frames of decoding and leaves a dozen lengths in all.
        """
        edges = 2 * self.decoder_margin
        granules = max(1, -(-(frames - edges) // LENGTH_GRANULE))
        return granules * LENGTH_GRANULE + edges

    def _flow_block(
        self, prior: Prior, d0: int, d1: int, frames: int, chunk_length: int | None, exact: bool = False
    ) -> tuple[int, int, torch.Tensor]:
        """Run the flow over a block of frames covering ``[d0, d1)`` (exactly that, if ``exact``) and
        return ``(b0, b1, z)``.

        The flow is cheap per frame but needs ``flow_margin`` frames of context on each side, so it runs
        over blocks of at least :data:`FLOW_BLOCK` frames (several decoder chunks) rather than once per
        chunk: a margin paid per decoder chunk cost a third of the flow's time again.
        """
        if exact or chunk_length is None:
            size = None if chunk_length is None else d1 - d0
            b0, b1 = d0, (frames if chunk_length is None else d1)
        else:  # fixed-size blocks, for the same reason as the decoder's fixed-size windows
            size = max(FLOW_BLOCK, chunk_length + 2 * self.decoder_margin)
            b0, b1 = _window(d0, d1, 0, frames, size)
        f0, f1 = _window(b0, b1, self.flow_margin, frames, size)
        z = self._flow_over([prior(f0, f1)], gap=0)[0]
        return b0, b1, z[:, :, b0 - f0 : b1 - f0]


def _scales(opts: SynthesisOptions) -> tuple[float, float, float]:
    """``noise_scale``, ``length_scale`` and ``noise_w`` of options the engine has resolved."""
    if opts.noise_scale is None or opts.length_scale is None or opts.noise_w is None:
        raise ValueError("options must be resolved (Engine.resolve) before synthesis: a scale is None")
    return float(opts.noise_scale), float(opts.length_scale), float(opts.noise_w)


def _end_to_end(lengths: list[int], gap: int) -> list[int]:
    """Where each of segments of ``lengths`` starts when they lie end to end, ``gap`` apart."""
    return list(itertools.accumulate((n + gap for n in lengths[:-1]), initial=0))


def _granular(length: int) -> int:
    """``length`` rounded up to a multiple of :data:`LENGTH_GRANULE`."""
    return -(-length // LENGTH_GRANULE) * LENGTH_GRANULE


def _batches(lengths: list[int]) -> Iterator[list[int]]:
    """Indices of consecutive sentences to encode together: padded to the batch's longest sentence, at
    most :data:`ENCODE_BATCH_IDS` ids in all, of which at most :data:`ENCODE_BATCH_PADDING` or half are
    padding. A sentence longer than the limit goes alone."""
    batch: list[int] = []
    real = longest = 0
    for i, n in enumerate(lengths):
        padded = max(longest, n) * (len(batch) + 1)
        if batch and (padded > ENCODE_BATCH_IDS or padded - real - n > max(ENCODE_BATCH_PADDING, real + n)):
            yield batch
            batch, real, longest = [], 0, 0
        batch.append(i)
        real, longest = real + n, max(longest, n)
    if batch:
        yield batch


def _window(start: int, end: int, margin: int, frames: int, size: int | None) -> tuple[int, int]:
    """The decoder window for chunk ``[start, end)``: ⊇ ``[start - margin, end + margin)`` ∩ ``[0, frames)``.

    With a chunk ``size`` every window of a long sentence has the same length ``size + 2 * margin``: at
    the sentence's end the window shifts inwards (extra context never changes the result) instead of
    shrinking. Windows of one size let the allocator reuse the same blocks chunk after chunk; windows of
    varying size fragmented the heap, and the process's peak grew with the sentence (measured: 1.19x for
    1000 vs 100 characters, against 1.0x with equal windows).
    """
    if size is None:
        return max(0, start - margin), min(frames, end + margin)
    lo = min(max(0, start - margin), max(0, frames - size - 2 * margin))
    return lo, min(frames, lo + size + 2 * margin)


def _decoder_window(start: int, end: int, margin: int, frames: int, size: int | None) -> tuple[int, int]:
    """The decoder window for chunk ``[start, end)``: :func:`_window`'s, except that a sentence's last
    chunk gets one that ends at the sentence's end instead of a full one shifted inwards.

    Why: the shifted full window decoded ``size + 2 * margin`` frames for a last chunk of any length (a
    60-frame remainder cost 280 frames). The last chunk's window is padded to a compiled length
    (:meth:`Engine._decode_length`) and is never longer than a full one. Its smaller blocks beside the
    full windows' freed ones cost heap: a 1000-character sentence's peak against a 100-character one
    went from 1.002x to 1.03x (median of 5 processes; up to 1.06x in one run, bound 1.05), so the engine
    returns the freed blocks to the OS before a last window (1.006-1.022x; ``docs/architecture.md``)."""
    if size is not None and end == frames:
        return max(0, start - margin), frames
    return _window(start, end, margin, frames, size)


def _chunks(
    frames: int, chunk_length: int | None, first_chunk_length: int | None
) -> Iterator[tuple[int, int, int | None]]:
    """Frame ranges ``(start, end, size)`` covering ``[0, frames)``: one range if unchunked (``size``
    ``None``), else ``chunk_length`` steps, the first one ``first_chunk_length`` long so that the first
    audio comes sooner; ``size`` is the chunk size the range's decoder window is built for.
    """
    if frames <= 0:
        return
    if chunk_length is None:
        yield 0, frames, None
        return
    start = 0
    size = first_chunk_length or chunk_length
    while start < frames:
        end = min(frames, start + size)
        yield start, end, size
        start, size = end, chunk_length
