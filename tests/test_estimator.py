"""MemoryEstimator: the seed's formula with constants fitted from real peak-RSS measurements."""

from __future__ import annotations

import json

import pytest
from conftest import Memory, simulated_budget

from adaptive_tts.runtime.estimator import (
    START_UP_SAMPLES,
    CalibrationStore,
    ConfigKey,
    EstimatorConstants,
    FitQuality,
    MemoryEstimator,
    ProbeResult,
    StartUpCost,
    calibration_texts,
    fit_constants,
    lane_increment_mb,
    room_to_start,
)
from adaptive_tts.runtime.hardware import PROFILES

KEY = ConfigKey("torch", "fp32", 256, 2)


def estimator(tmp_path, available_mb: float = 8000, constants: EstimatorConstants | None = None, tokens: int = 500):
    store = CalibrationStore(tmp_path / "cal.json")
    if constants is not None:
        store.save("test-machine", KEY, constants)
    budget = simulated_budget(PROFILES["m1_air"], Memory(available_mb))
    return MemoryEstimator(
        PROFILES["m1_air"],
        KEY,
        budget_manager=budget,
        token_counter=lambda t: tokens,
        store=store,
        machine="test-machine",
    )


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
    assert payload["estimate"]["estimated_mb"] == pytest.approx(
        d.base_model_mb + 2 * d.per_100_tokens_mb + d.cache_overhead_mb
    )
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


def test_fit_on_increments_adds_requests_side_by_side():
    """With rest readings the fit is per request: peak = rest + concurrency * (a + b * tokens / 100)."""

    def measured(tokens: int, concurrency: int, rest: float = 400.0) -> ProbeResult:
        return ProbeResult(tokens // 2, tokens, rest + concurrency * (60 + 0.5 * tokens / 100), rest, concurrency)

    train = [measured(100, 1), measured(600, 1), measured(2000, 1, rest=420.0), measured(600, 4)]
    c = fit_constants(train, [measured(1000, 1), measured(1000, 4, rest=380.0)])
    assert c.per_request_mb == pytest.approx(60.0) and c.per_100_tokens_mb == pytest.approx(0.5)
    assert c.base_model_mb == pytest.approx(400.0)  # the median rest
    assert c.fit.max_under_mb == pytest.approx(0.0, abs=1e-9)
    skewed = fit_constants(train, [ProbeResult(500, 1000, 400 + 4 * 65 + 20, 400.0, 4)])
    assert skewed.fit.max_under_mb == pytest.approx(20.0)


def test_a_chunked_decoders_increment_stops_growing_at_a_fitted_knee():
    """Measured here (INT8, chunk 256, one request, ids -> MB over rest): the increment rises until
    the text fills a decoder window, then stays; a straight line through all of it over-predicts
    long texts by hundreds of MB."""
    curve = [(49, 80.0), (141, 124.0), (229, 206.0), (438, 207.0), (1099, 217.0), (2187, 233.0)]
    train = [ProbeResult(t // 2, t, 350.0 + mb, 350.0) for t, mb in curve]
    hinge = fit_constants(train, train, knee=True)
    line = fit_constants(train, train)
    assert hinge.knee_tokens == 229 and line.knee_tokens is None
    assert hinge.fit.max_over_mb < 60.0 < line.fit.max_over_mb
    est = EstimatorConstants(350.0, hinge.per_100_tokens_mb, None, True, None, hinge.per_request_mb, hinge.knee_tokens)
    assert lane_increment_mb(est, 5000) == pytest.approx(lane_increment_mb(est, 229))


def test_requests_beyond_the_lanes_hold_a_fitted_share_of_their_increment():
    """Four requests side by side on two lanes: two compute, two wait, holding 10 % of theirs."""

    def measured(tokens: int, concurrency: int, lanes: int = 2, share: float = 0.1) -> ProbeResult:
        one = 50 + 2.0 * tokens / 100
        held = (min(concurrency, lanes) + share * max(0, concurrency - lanes)) * one
        return ProbeResult(tokens // 2, tokens, 300.0 + held, 300.0, concurrency)

    train = [measured(100, 1), measured(600, 1), measured(2000, 1), measured(600, 4), measured(2000, 4)]
    c = fit_constants(train, [measured(1000, 1), measured(1000, 8)], lanes=2)
    assert c.queued_share == pytest.approx(0.1)
    assert c.fit.max_under_mb == pytest.approx(0.0, abs=1e-6) and c.fit.max_over_mb == pytest.approx(0.0, abs=1e-6)
    assert fit_constants(train[:3], train[:3], lanes=2).queued_share is None  # never measured beyond the lanes


def test_the_knee_and_the_queued_share_survive_the_calibration_file(tmp_path):
    store = CalibrationStore(tmp_path / "c.json")
    key = ConfigKey("torch", "int8", 256, 1)
    store.save("m", key, EstimatorConstants(350.0, 40.0, None, True, None, 30.0, 229.0, 0.05))
    loaded = store.load("m", key)
    assert (loaded.knee_tokens, loaded.queued_share, loaded.per_request_mb) == (229.0, 0.05, 30.0)


def test_increment_is_calibrated_or_the_seed_peak_less_what_the_process_holds(tmp_path):
    est = estimator(
        tmp_path, tokens=200, constants=EstimatorConstants(400.0, 1.0, None, True, None, per_request_mb=50.0)
    )
    assert est.increment_mb(200) == pytest.approx(52.0)
    assert est.predict_mb(200) == pytest.approx(452.0)  # from the calibration's rest
    from adaptive_tts.runtime.process import current_rss_mb as rss

    assert rss() + 52.0 - 5 <= est.peak_from_now_mb(200) <= rss() + 52.0 + 5  # from what the process holds now
    seed = estimator(tmp_path / "seed", tokens=200)
    from adaptive_tts.runtime.process import current_rss_mb

    d = PROFILES["m1_air"].estimates
    # what the seed's peak leaves above what this process holds; none once the process holds more (late
    # in a full test run, with torch and several models loaded, it does)
    expected = max(0.0, d.base_model_mb + 2 * d.per_100_tokens_mb + d.cache_overhead_mb - current_rss_mb())
    assert seed.increment_mb(200) == pytest.approx(expected, abs=20)


def test_measure_reads_a_real_request():
    """One in-process calibration measurement: the request's peak above the process's rest."""
    from adaptive_tts.calibration import measure, measuring_backend

    backend = measuring_backend(KEY)
    backend.synthesize("Warm up.")
    result = measure(backend, "A short calibration sentence.")
    assert result.text_tokens > 20 and result.concurrency == 1
    assert 150 < result.rest_mb <= result.peak_rss_mb < result.rest_mb + 1000
    side_by_side = measure(backend, "A short calibration sentence.", concurrency=3)
    assert side_by_side.concurrency == 3 and side_by_side.peak_rss_mb >= side_by_side.rest_mb
    with pytest.raises(ValueError, match="concurrency"):
        measure(backend, "x", concurrency=0)


def test_start_up_store_plans_the_largest_of_the_last_measurements_per_lane_count(tmp_path):
    """Start-ups are recorded per lane count; each peak is the largest of the measurements kept and
    the rest the smallest (the start that once took more is planned for), but only the last
    START_UP_SAMPLES count: an outlier ages out."""
    store = CalibrationStore(tmp_path / "cal.json")
    assert store.load_start_up("m") is None
    store.save_start_up("m", StartUpCost(2, 209.0, 205.0, {64: 287.0, 256: 667.0}))
    store.save_start_up("m", StartUpCost(2, 215.0, 207.0, {64: 280.0, 128: 420.0, 256: 671.0}))
    store.save_start_up("m", StartUpCost(1, 209.0, 205.0, {64: 252.0, 256: 439.0}))
    store.save("m", KEY, EstimatorConstants(500.0, 1.0, None, True, FitQuality(3, 3, 5.0, 12.0, 30.0), 20.0))
    two = store.load_start_up("m", 2)
    assert two == StartUpCost(2, 215.0, 205.0, {64: 287.0, 128: 420.0, 256: 671.0})
    assert store.load_start_up("m") == two  # no lane count given: the most lanes measured
    assert store.load_start_up("m", 1).warm_up_mb == {64: 252.0, 256: 439.0}
    assert two.increment_mb(256) == pytest.approx(466.0) and two.frugal_peak_mb == 287.0
    assert store.worst_under_mb("m") == 12.0  # the start-up entry is not a configuration's fit
    for i in range(START_UP_SAMPLES):  # only the last ones are kept
        store.save_start_up("m", StartUpCost(2, 200.0, 198.0 + i, {64: 260.0 + i}))
    assert store.load_start_up("m", 2) == StartUpCost(2, 200.0, 198.0, {64: 260.0 + START_UP_SAMPLES - 1})


def test_start_up_entry_of_an_older_file_loads_as_one_measurement(tmp_path):
    """Files written before measurements were kept hold one figure per chunk: read as one sample."""
    path = tmp_path / "cal.json"
    path.write_text(
        json.dumps(
            {"m": {"startup": {"2": {"load_mb": 215.0, "rest_mb": 205.0, "warm_up_mb": {"64": 287.0, "256": 667.0}}}}}
        )
    )
    assert CalibrationStore(path).load_start_up("m") == StartUpCost(2, 215.0, 205.0, {64: 287.0, 256: 667.0})


def test_room_to_start_needs_the_most_frugal_warm_up_not_just_the_load(tmp_path):
    """Before torch is imported (8 MB anonymous): loading takes 215 MB at its peak, but a start warms the
    decoder too, and the most frugal warm-up peaks at 287 MB: 250 MB free is not room to start."""
    store = CalibrationStore(tmp_path / "cal.json")
    store.save("m", KEY, EstimatorConstants(500.0, 1.0, None, True, FitQuality(3, 3, 5.0, 12.0, 30.0), 20.0))
    budget = simulated_budget(PROFILES["m1_air"], Memory(250), policy="calibrated")
    budget.watch.stop()
    assert room_to_start(store, budget, "m", anon_now_mb=8.0) is None  # never measured: nothing says
    store.save_start_up("m", StartUpCost(2, 215.0, 205.0, {64: 287.0, 256: 667.0}))
    decision = room_to_start(store, budget, "m", anon_now_mb=8.0)
    assert not decision.allowed and decision.required_mb == pytest.approx(279.0)
    budget.close()
