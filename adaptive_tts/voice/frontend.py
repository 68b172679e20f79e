"""Text → sentences → phoneme ids, exactly as Piper does it for an espeak voice.

Piper's own phonemizer (espeak-ng, shipped inside ``piper-tts``) decides how numbers, dates,
abbreviations and punctuation are spoken, and how text splits into sentences; we reuse it rather than
re-implementing it so that our phoneme ids are the reference's, id for id.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# espeak-ng keeps global state (the current voice); one phonemization at a time.
_ESPEAK_LOCK = threading.Lock()


class TextError(ValueError):
    """The text cannot be synthesized (empty, not a string, nothing speakable)."""


@dataclass(frozen=True)
class Sentence:
    """One sentence as the model sees it."""

    phonemes: tuple[str, ...]
    ids: tuple[int, ...]


def validate_text(text: object) -> str:
    """Return ``text`` if it is speakable input, else raise :class:`TextError` naming the problem."""
    if not isinstance(text, str):
        raise TextError(f"text must be a string, not {type(text).__name__}")
    if not text.strip():
        raise TextError("text is empty")
    bad = sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r"})
    if bad:
        raise TextError(f"text contains control characters: {', '.join(bad[:5])}")
    return text


class Frontend:
    """Phonemizer and phoneme-id map of one voice."""

    def __init__(self, voice_config: dict) -> None:
        from piper.config import PiperConfig
        from piper.voice import PiperVoice

        self.config = PiperConfig.from_dict(voice_config)
        # PiperVoice.phonemize never touches the ONNX session; we borrow its text handling
        # (raw [[ phoneme ]] blocks, sentence splitting) without loading a second copy of the model.
        self._piper = PiperVoice(session=None, config=self.config)

    def sentences(self, text: str) -> list[Sentence]:
        """Split and phonemize; raises :class:`TextError` if nothing in ``text`` can be spoken."""
        validate_text(text)
        with _ESPEAK_LOCK:
            phonemized = self._piper.phonemize(text)
        sentences = [
            Sentence(tuple(ph), tuple(self._piper.phonemes_to_ids(ph)))
            for ph in phonemized
            if any(p.strip() for p in ph)
        ]
        if not sentences:
            raise TextError("nothing speakable in text")
        return sentences

    def count_tokens(self, text: str) -> int:
        """Number of phoneme ids the model will see: the estimator's notion of 'text tokens'."""
        return sum(len(s.ids) for s in self.sentences(text))
