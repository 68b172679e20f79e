"""The trial body's room-to-start check, on this machine's live memory readings."""

from __future__ import annotations

from adaptive_tts.runtime.estimator import (
    CalibrationStore,
    ConfigKey,
    EstimatorConstants,
    FitQuality,
    StartUpCost,
    machine_key,
)
from adaptive_tts.runtime.hardware import detect_hardware
from experiments.bodies import _room_to_start

KEY = ConfigKey("torch", "int8", 64, 1)


def _options(tmp_path, start_up_mb: float) -> dict:
    store = CalibrationStore(tmp_path / "cal.json")
    machine = machine_key(detect_hardware(probe_gpu=False))
    store.save(machine, KEY, EstimatorConstants(500.0, 1.0, None, True, FitQuality(3, 3, 5.0, 12.0, 30.0), 20.0))
    store.save_start_up(machine, StartUpCost(2, start_up_mb, start_up_mb, {64: start_up_mb}))
    return {
        "budget": True,
        "estimation": True,
        "profile": "m1_air",
        "budget_policy": "calibrated",
        "estimator_constants": "calibrated",
        "calibration_path": str(tmp_path / "cal.json"),
    }


def test_a_start_that_fits_hands_on_the_budget_manager_still_watching(tmp_path):
    """The watch that decided the start goes on into the runtime, which plans its warm-up (resident for
    life) against the swing seen since before the check."""
    refused, budget = _room_to_start(_options(tmp_path, 50.0))
    try:
        assert refused is None and budget is not None
        assert budget.watch._thread is not None and budget.watch._thread.is_alive()
        assert len(budget.watch._seen()) >= 10  # two seconds of samples, every 50 ms
    finally:
        budget.close()


def test_a_start_that_cannot_fit_is_refused_with_the_numbers_and_stops_watching(tmp_path):
    refused, budget = _room_to_start(_options(tmp_path, 10.0**7))
    assert budget is None
    assert refused["status"] == "refused" and "not enough memory to start the runtime" in refused["error"]
    assert refused["required_mb"] > refused["available_mb"]


def test_without_budget_and_calibrated_estimation_nothing_is_checked(tmp_path):
    options = _options(tmp_path, 10.0**7)
    assert _room_to_start({**options, "estimator_constants": "seed"}) == (None, None)
    assert _room_to_start({**options, "budget": False}) == (None, None)
