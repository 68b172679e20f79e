"""MemoryEstimator: the seed's formula with constants fitted from real peak-RSS measurements."""

from __future__ import annotations

import pytest

from adaptive_tts.runtime.budget import MemoryBudgetManager, SystemMemory
from adaptive_tts.runtime.estimator import (
    CalibrationStore,
    ConfigKey,
    EstimatorConstants,
    FitQuality,
    MemoryEstimator,
    ProbeResult,
    calibration_texts,
    fit_constants,
    probe,
)
from adaptive_tts.runtime.hardware import PROFILES

KEY = ConfigKey("torch", "fp32", 256, 2)


def estimator(tmp_path, available_mb: float = 8000, constants: EstimatorConstants | None = None, tokens: int = 500):
    store = CalibrationStore(tmp_path / "cal.json")
    if constants is not None:
        store.save("test-machine", KEY, constants)
    budget = MemoryBudgetManager(PROFILES["m1_air"], system_memory=lambda: SystemMemory(8192, available_mb),
                                 cgroup_memory=None)
    return MemoryEstimator(PROFILES["m1_air"], KEY, budget_manager=budget, token_counter=lambda t: tokens,
                           store=store, machine="test-machine")


def test_fit_recovers_a_line_and_scores_held_out_texts():
    train = [ProbeResult(n, t, 400 + 2.0 * t / 100) for n, t in [(50, 100), (300, 600), (1000, 2000)]]
    test = [ProbeResult(500, 1000, 420), ProbeResult(800, 1600, 432)]
    c = fit_constants(train, test)
    assert c.calibrated and c.cache_overhead_mb is None
    assert c.base_model_mb == pytest.approx(400, abs=1e-6)
    assert c.per_100_tokens_mb == pytest.approx(2.0, abs=1e-6)
    assert c.fit.mape_percent == pytest.approx(0.0, abs=1e-6)
    skewed = fit_constants(train, [ProbeResult(500, 1000, 500)])  # measured above the line
    assert skewed.fit.max_under_mb == pytest.approx(80.0)
    assert skewed.fit.mape_percent == pytest.approx(16.0)


def test_slope_is_never_negative():
    train = [ProbeResult(1, 100, 450), ProbeResult(1, 2000, 440)]
    assert fit_constants(train, train).per_100_tokens_mb == 0.0


def test_uncalibrated_uses_profile_defaults_and_says_so(tmp_path, caplog):
    est = estimator(tmp_path, tokens=200)
    payload = est.estimate("some text")
    d = PROFILES["m1_air"].estimates
    assert payload["estimate"]["estimated_mb"] == pytest.approx(d.base_model_mb + 2 * d.per_100_tokens_mb + d.cache_overhead_mb)
    assert payload["estimate"]["calibrated"] is False
    assert "uncalibrated" in caplog.text
    assert set(payload) == {"status", "estimate", "recommendation"}
    assert {"estimated_mb", "available_mb", "safe", "text_tokens", "text_length"} <= set(payload["estimate"])


def test_calibrated_constants_and_cache_overhead(tmp_path):
    fitted = EstimatorConstants(450.0, 1.5, None, True, FitQuality(6, 5, 2.0, 10.0, 12.0))
    est = estimator(tmp_path, constants=fitted, tokens=1000)
    est.cache_bytes = lambda: 64 * 1024 * 1024
    assert est.predict_mb(1000) == pytest.approx(450 + 15 + 64)
    assert est.estimate("x")["estimate"]["calibrated"] is True


def test_warning_when_it_does_not_fit(tmp_path):
    fitted = EstimatorConstants(5000.0, 0.0, None, True, None)
    payload = estimator(tmp_path, available_mb=3000, constants=fitted).estimate("long text")
    assert payload["status"] == "warning" and payload["estimate"]["safe"] is False
    assert "safety margin" in payload["recommendation"]


def test_store_round_trip_is_keyed_by_machine_and_configuration(tmp_path):
    store = CalibrationStore(tmp_path / "c.json")
    c = EstimatorConstants(1.0, 2.0, None, True, FitQuality(1, 1, 0.5, 0.0, 0.0))
    store.save("m1", KEY, c)
    assert store.load("m1", KEY).base_model_mb == 1.0
    assert store.load("m2", KEY) is None
    assert store.load("m1", ConfigKey("torch", "int8", 256, 2)) is None
    (tmp_path / "bad.json").write_text("{not json")
    assert CalibrationStore(tmp_path / "bad.json").load("m1", KEY) is None


def test_calibration_texts_are_disjoint_and_span_lengths():
    train, test = calibration_texts()
    assert not set(train) & set(test)
    assert min(map(len, train)) <= 60 and max(map(len, train)) >= 950
    assert all(len(t) <= 1000 for t in train + test)


def test_probe_measures_a_real_process():
    """One real calibration probe: a fresh process synthesizes and reports the kernel's peak RSS."""
    result = probe(KEY, "A short calibration sentence.")
    assert result.text_tokens > 20
    assert 200 < result.peak_rss_mb < 4000


def test_probe_reports_its_own_peak_not_its_parents():
    """Linux carries ru_maxrss across execve; the probe must not report a large parent's size."""
    import numpy as np

    from adaptive_tts.runtime.estimator import current_rss_mb

    ballast = np.ones(1500 * 1024 * 1024 // 8)  # 1.5 GB, touched
    parent = current_rss_mb()
    result = probe(KEY, "A short calibration sentence.")
    del ballast
    assert parent > 1500
    assert result.peak_rss_mb < parent - 500
