"""Quality metrics on real synthesized speech: zero for identical audio, growing with known damage."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive_tts.runtime.quality import (
    QualityScore,
    compare,
    log_mel_distance,
    mel_cepstral_distortion,
    mel_filterbank,
    mel_power,
)


@pytest.fixture(scope="module")
def speech(engine) -> np.ndarray:
    return engine.synthesize("The quick brown fox jumps over the lazy dog.", seed=3)


def _with_noise(audio: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(audio)).astype(np.float32)
    noise *= np.sqrt(np.mean(audio**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return audio + noise


def test_identical_audio_is_zero(speech):
    assert log_mel_distance(speech, speech) == 0.0
    assert mel_cepstral_distortion(speech, speech) == 0.0
    assert compare(speech, speech.copy()) == QualityScore(0.0, 0.0)


def test_only_the_common_length_is_compared(speech):
    """Extra samples on one side have nothing to be compared with: they do not count."""
    longer = np.concatenate([speech, np.random.default_rng(1).standard_normal(5000).astype(np.float32)])
    assert compare(speech, longer) == QualityScore(0.0, 0.0)


def test_more_noise_is_a_larger_distance(speech):
    """White noise at 40, 25 and 10 dB SNR: both distances grow strictly, from clearly above zero."""
    scores = [compare(speech, _with_noise(speech, snr)) for snr in (40, 25, 10)]
    assert 0.1 < scores[0].mcd_db < scores[1].mcd_db < scores[2].mcd_db
    assert 0.1 < scores[0].log_mel_db < scores[1].log_mel_db < scores[2].log_mel_db


def test_distances_are_symmetric(speech):
    other = _with_noise(speech, 20)[: len(speech) - 777]
    assert log_mel_distance(speech, other) == pytest.approx(log_mel_distance(other, speech), rel=1e-12)
    assert mel_cepstral_distortion(speech, other) == pytest.approx(mel_cepstral_distortion(other, speech), rel=1e-12)


def test_gain_moves_log_mel_by_6_db_but_not_mcd(speech):
    """Twice the amplitude is +6.02 dB in every band (floors are relative to each signal's own peak);
    MCD leaves c0, the gain, out."""
    louder = 2 * speech
    assert log_mel_distance(speech, louder) == pytest.approx(20 * np.log10(2), abs=1e-4)
    assert mel_cepstral_distortion(speech, louder) < 1e-4


def test_silence_is_floored_not_infinite(speech):
    silent = np.zeros_like(speech)
    assert np.isfinite(log_mel_distance(speech, silent)) and np.isfinite(mel_cepstral_distortion(speech, silent))
    assert compare(silent, silent) == QualityScore(0.0, 0.0)


def test_mel_bands_place_a_tone_where_it_belongs():
    """A 1 kHz tone puts most of its energy in the band whose filter peaks nearest 1 kHz."""
    t = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    band = int(mel_power(tone).mean(dim=0).argmax())
    freqs = np.linspace(0, 11025, 513)
    assert abs(freqs[int(mel_filterbank()[band].argmax())] - 1000) < 60


def test_empty_audio_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        compare(np.zeros(0, np.float32), np.zeros(10, np.float32))
