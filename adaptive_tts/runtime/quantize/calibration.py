"""Calibration: sentences rendered by a model with fixed noise, scored against the fp32 renderings.

A :class:`CalibrationSet` renders each sample with its own noise seed, and a quantized model with the
fp32 reference's durations, so the spectral distance (:mod:`adaptive_tts.runtime.quality`) measures
the quantization, not a shifted phoneme; how far the durations themselves moved is scored apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...voice.speech import voice_defaults
from ...voice.vits import VitsModel
from ..quality import QualityScore, compare

if TYPE_CHECKING:
    from ...voice.frontend import Frontend


#: Short, phonetically varied sentences (statements, questions, numbers, exclamations). Short keeps a
#: calibration pass cheap on two cores; variety matters more than length for weight sensitivity.
CALIBRATION_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Is this the right way to the station?",
    "She sells sea shells by the sea shore.",
    "Please call me back before nine tomorrow.",
    "Wow, that was a lot faster than I expected!",
    "The meeting moved to Thursday at half past two.",
    "How much does the blue umbrella cost?",
    "Seventeen thousand people watched the final.",
    "We measured the voltage twice, just to be sure.",
    "Oh no, the bridge is closed again.",
    "Could you bring some bread and a little cheese?",
    "The children laughed as the kite rose higher.",
    "Turn left at the church, then go straight on.",
    "My phone number ends in four, six, eight.",
    "Thank you very much for your patience.",
    "The engine hummed quietly through the night.",
    "Why would anyone leave the door unlocked?",
    "Fresh snow covered every roof in the village.",
    "He paid twelve dollars and fifty cents.",
    "Quantization saves memory, but quality may suffer.",
    "Measure twice and cut once.",
    "The orchestra tuned up while the hall filled.",
    "Are you sure the train leaves at six?",
    "A gentle breeze moved through the tall grass.",
    "Good morning, and welcome aboard.",
    "The recipe needs three eggs and a cup of sugar.",
    "Lightning struck the old oak tree last summer.",
    "Which of these two jackets do you prefer?",
    "The museum opens at ten on weekdays.",
    "Rain is expected later this afternoon.",
    "Everyone agreed that the plan was risky.",
    "Yes, I will join you for dinner.",
)


@dataclass(frozen=True)
class Rendering:
    """One sentence rendered by a model: its waveform and integer frames per phoneme."""

    audio: np.ndarray
    durations: torch.Tensor


@dataclass(frozen=True)
class CalibrationScore:
    """A model's distance from the references over a calibration set."""

    quality: QualityScore
    #: Σ|Δ frames| / Σ frames, averaged over sentences (0 = identical durations)
    duration_change: float

    def within(self, mcd_bound_db: float, duration_change_bound: float) -> bool:
        return self.quality.mcd_db <= mcd_bound_db and self.duration_change <= duration_change_bound


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration samples: phoneme ids, each rendered with its own noise seed and the voice's scales.

    The voice is a sampling model, so a sample is a (sentence, seed) pair: with more samples than
    sentences, sentences repeat with other seeds and exercise other prior and duration draws.
    Quantized renderings are decoded with the *reference's* durations, so the waveforms stay aligned
    and the spectral distances measure the quantization, not a shifted phoneme; how far the quantized
    duration predictor would have moved the durations is measured separately.
    """

    ids: tuple[tuple[int, ...], ...]
    seeds: tuple[int, ...]
    noise_scale: float = 0.667
    noise_w: float = 0.8
    length_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.ids or len(self.ids) != len(self.seeds):
            raise ValueError("a calibration set needs at least one sample and one seed per sample")

    @classmethod
    def from_texts(
        cls, frontend: Frontend, texts: Sequence[str], voice_config: dict, size: int | None = None, first_seed: int = 0
    ) -> CalibrationSet:
        """``size`` samples (default: one per sentence) cycling over the sentences of ``texts``."""
        sentences = [s.ids for text in texts for s in frontend.sentences(text)]
        size = len(sentences) if size is None else size
        defaults = voice_defaults(voice_config)
        # voice_defaults fills every scale; SynthesisOptions types them optional (None: the voice's own)
        assert defaults.noise_scale is not None and defaults.noise_w is not None
        assert defaults.length_scale is not None
        return cls(
            ids=tuple(sentences[i % len(sentences)] for i in range(size)),
            seeds=tuple(range(first_seed, first_seed + size)),
            noise_scale=defaults.noise_scale,
            noise_w=defaults.noise_w,
            length_scale=defaults.length_scale,
        )

    @classmethod
    def default(cls, frontend: Frontend, voice_config: dict, size: int) -> CalibrationSet:
        """``size`` samples over :data:`CALIBRATION_SENTENCES`."""
        return cls.from_texts(frontend, CALIBRATION_SENTENCES, voice_config, size)

    def __len__(self) -> int:
        return len(self.ids)

    @torch.inference_mode()
    def render(
        self, model: VitsModel, index: int, durations: torch.Tensor | None = None, noise_seed: int | None = None
    ) -> Rendering:
        """Sample ``index`` in one pass, drawing noise in :class:`~adaptive_tts.voice.engine.Engine`'s
        order (duration noise, then prior noise frame-major). With ``durations`` given, the model's own
        are computed (and returned) but the audio uses the given ones. ``noise_seed`` overrides the
        sample's seed for the *prior* noise only (the fp32 model's own variation, for the bound)."""
        ids = torch.as_tensor([self.ids[index]], dtype=torch.long)
        generator = torch.Generator().manual_seed(self.seeds[index])
        n = ids.shape[1]
        noise_w = torch.randn(1, 2, n, generator=generator) * self.noise_w
        m_p, logs_p, own = model.encode(ids, noise_w, self.length_scale)
        used = own if durations is None else durations
        frame_to_phoneme = torch.repeat_interleave(torch.arange(n), used.clamp_min(0))
        if noise_seed is not None:
            generator = torch.Generator().manual_seed(noise_seed)
        eps = torch.randn(frame_to_phoneme.numel(), m_p.shape[1], generator=generator)
        z_p = m_p[0][:, frame_to_phoneme] + eps.T * torch.exp(logs_p[0][:, frame_to_phoneme]) * self.noise_scale
        z = model.flow_reverse(z_p.unsqueeze(0), torch.ones(1, 1, z_p.shape[1]))
        audio = model.decode(z)[0, 0].float().numpy()
        return Rendering(audio, own)

    def references(self, model: VitsModel) -> list[Rendering]:
        """The fp32 renderings every quantized one is compared with."""
        return [self.render(model, i) for i in range(len(self))]

    def score(self, model: VitsModel, references: list[Rendering]) -> CalibrationScore:
        """Mean distance of ``model``'s renderings (with the references' durations) from the references."""
        scores, changes = [], []
        for i, ref in enumerate(references):
            out = self.render(model, i, durations=ref.durations)
            scores.append(compare(ref.audio, out.audio))
            changes.append(float((out.durations - ref.durations).abs().sum() / ref.durations.sum().clamp_min(1)))
        return CalibrationScore(QualityScore.mean(scores), float(np.mean(changes)))
