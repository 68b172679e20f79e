"""SmartAdaptiveBackend: the request pipeline, admission and degradation, and the seed's payloads.

Admission is exercised as a smaller device would see it: the budget manager is given real-shaped
readings of an 8 GB machine with little memory free (the harness caps memory with the kernel instead).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import M1, Memory, simulated_backend, simulated_budget

from adaptive_tts.audio import to_pcm16
from adaptive_tts.backend import BackendOptions, SmartAdaptiveBackend, SynthesisRefused, TextTooLong
from adaptive_tts.runtime.budget import SystemMemory
from adaptive_tts.runtime.estimator import ConfigKey, EstimatorConstants, current_rss_mb, machine_key
from adaptive_tts.voice.engine import resolve_compute

TEXT = "The adaptive runtime decides before it synthesizes."


def make(tmp_path, memory: Memory | None = None, calibrate: dict[int, float] | None = None, **options):
    """A backend on the M1 Air profile; ``calibrate`` maps chunk length → fitted peak MB above the
    process's resident memory once the model is loaded (so 'required' is that many MB)."""
    backend = simulated_backend(tmp_path, memory, **options)
    if calibrate:
        for chunk, base in calibrate.items():
            key = ConfigKey("torch", "fp32", chunk, backend.config.num_threads, backend.config.compute)
            backend.estimator.store.save(
                machine_key(backend.info), key, EstimatorConstants(current_rss_mb() + base, 0.0, None, True)
            )
        backend.estimator.reload()
        backend._calibrated_margin()
    return backend


def test_synthesize_reports_timings_and_plan(tmp_path):
    backend = make(tmp_path, chunk_length=128)
    result = backend.synthesize(TEXT)
    assert result.sample_rate == 22050 and result.audio.dtype == np.float32
    assert result.audio_s == pytest.approx(len(result.audio) / 22050)
    assert 0 < result.first_audio_s <= result.latency_s
    assert result.rtf == pytest.approx(result.latency_s / result.audio_s)
    assert result.config == {
        "engine": "torch",
        "quantization": "fp32",
        "num_threads": backend.config.num_threads,
        "chunk_length": 128,
        "compute": resolve_compute("auto"),
    }
    assert result.text_tokens > 40
    d = M1.estimates  # uncalibrated: the plan's peak is the profile's seed formula for this text
    assert result.estimated_mb == pytest.approx(
        d.base_model_mb + result.text_tokens / 100 * d.per_100_tokens_mb + d.cache_overhead_mb
    )


def test_cache_hit_returns_the_same_16_bit_audio(tmp_path):
    """The cache keeps PCM16, what every output format carries: a hit is the miss's audio to the last
    bit of a 16-bit sample, so a client gets the same bytes either way."""
    backend = make(tmp_path)
    first = backend.synthesize(TEXT)
    second = backend.synthesize(TEXT)
    assert second.cached and not first.cached
    assert second.audio.dtype == np.float32 and len(second.audio) == len(first.audio)
    assert to_pcm16(first.audio) == to_pcm16(second.audio)
    cached = backend.system_status()["cache"]
    assert cached["hits"] == 1 and cached["entries"] == 1
    cleared = backend.clear_cache()
    assert cleared["freed_mb"] == cached["mb"] > 0  # what the one entry cost, all of it
    assert isinstance(cleared["freed_rss_mb"], float)
    assert backend.system_status()["cache"]["entries"] == 0
    assert not backend.synthesize(TEXT).cached


def test_refusal_carries_the_numbers(tmp_path):
    memory = Memory(available_mb=1000)  # below the M1 Air's 1.5 GB safety margin
    backend = make(tmp_path, memory, wait_timeout_s=0)
    with pytest.raises(SynthesisRefused) as refused:
        backend.synthesize(TEXT)
    err = refused.value
    assert err.available_mb == pytest.approx(1000)
    assert err.safety_margin_mb == pytest.approx(1536)
    assert "1.5" in err.reason or "1536" in err.reason
    assert backend.system_status()["running_jobs"] == 0


def test_budget_off_runs_regardless(tmp_path):
    backend = make(tmp_path, Memory(available_mb=100), budget=False)
    assert backend.synthesize(TEXT).estimated_mb is None


def test_estimation_off_only_checks_the_safety_margin(tmp_path):
    backend = make(tmp_path, Memory(available_mb=1600), estimation=False, calibrate={256: 10_000})
    assert backend.synthesize(TEXT).estimated_mb is None
    with_estimation = make(tmp_path, Memory(available_mb=1600), calibrate={256: 10_000}, wait_timeout_s=0)
    with pytest.raises(SynthesisRefused):
        with_estimation.synthesize(TEXT)


def test_degrades_to_a_smaller_chunk_before_refusing(tmp_path):
    """Calibrated: 256-frame chunks need too much, 128-frame chunks fit → the plan says so."""
    memory = Memory(available_mb=2000)
    backend = make(tmp_path, memory, calibrate={256: 1000, 128: 100})
    result = backend.synthesize(TEXT)
    assert result.config["chunk_length"] == 128
    assert result.degraded == ("chunk_length 128",)


def test_waits_for_running_jobs_then_runs(tmp_path):
    """A job that does not fit next to a running one waits for it instead of failing."""
    memory = Memory(available_mb=1536 + 300)
    backend = make(tmp_path, memory, calibrate={256: 250}, wait_timeout_s=60)
    started = threading.Event()
    release = threading.Event()

    def long_job():
        for i, _ in enumerate(backend.stream("First job. It holds its memory while it runs. " * 3)):
            if i == 0:
                started.set()
                release.wait(30)

    worker = threading.Thread(target=long_job)
    worker.start()
    assert started.wait(60)
    result: dict = {}
    second = threading.Thread(target=lambda: result.update(r=backend.synthesize("Second job.")))
    second.start()
    time.sleep(0.5)
    assert "r" not in result  # waiting: 250 MB reserved by the running job + the new one's > 300 MB headroom
    release.set()
    worker.join(60)
    second.join(60)
    assert result["r"].audio_s > 0


def test_max_text_length_is_enforced(tmp_path):
    backend = make(tmp_path)
    with pytest.raises(TextTooLong, match=str(backend.config.max_text_length)):
        backend.synthesize("a " * (backend.config.max_text_length // 2 + 1))


def test_seed_payloads(tmp_path):
    memory = Memory(available_mb=6000)
    backend = make(tmp_path, memory)
    hw = backend.hardware()
    assert {"chunk_length", "num_threads", "cache_limit", "max_text_length", "quantization"} <= set(
        hw["selected_configuration"]
    )
    est = backend.estimate("How much memory will this take?")
    assert est["estimate"]["text_length"] == 31
    # 6000 MB free: the seed estimate (< 2.3 GB) and the 1.5 GB safety margin fit
    assert (est["status"], est["estimate"]["safe"], est["recommendation"]) == ("ok", True, "OK")
    assert est["estimate"]["available_mb"] == 6000.0
    status = backend.system_status()
    assert set(status["throttling_risk"]) >= {"memory_critical", "cpu_maxed", "thermal_likely"}
    assert backend.monitor.memory_budget_manager is backend.memory_budget_manager
    assert backend.enforce_limits() is True
    memory.available_mb = 1000  # below the safety margin alone: nothing fits
    est = backend.estimate("How much memory will this take?")
    assert (est["status"], est["estimate"]["safe"]) == ("warning", False)
    assert "Text may be too long for this hardware" in est["recommendation"]
    assert backend.enforce_limits() is False


def test_optimize_for_hardware_adjusts_when_memory_is_short(tmp_path):
    memory = Memory(available_mb=6000)
    backend = make(tmp_path, memory)
    backend.monitor._cpu_percent = lambda: 20.0  # an idle M1 Air (this host's real load varies)
    assert backend.optimize_for_hardware()["status"] == "optimal"
    memory.available_mb = 900  # 89 % used: memory critical
    adjusted = backend.optimize_for_hardware()
    assert adjusted["status"] == "adjusted"
    assert adjusted["new_config"]["chunk_length"] == adjusted["previous_config"]["chunk_length"] // 2
    assert adjusted["new_config"]["cache_limit"] < adjusted["previous_config"]["cache_limit"]
    memory.available_mb = 6000
    assert backend.optimize_for_hardware()["status"] == "adjusted"  # chunk grows back
    assert backend.config.chunk_length == M1.selected_configuration.chunk_length


def test_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="quantization"):
        BackendOptions(quantization="int2")
    with pytest.raises(ValueError, match="fp32 only"):
        BackendOptions(engine="reference", quantization="int8")


def test_optimize_for_hardware_sheds_threads_when_cpu_is_maxed(tmp_path):
    """The new count reaches the compute lane, where synthesis runs: torch's count is per thread, and
    one set on the caller's thread would leave the lane computing on the old one."""
    import torch

    backend = make(tmp_path, Memory(available_mb=6000), num_threads=2)
    backend.synthesize(TEXT)
    assert backend.lanes.run(torch.get_num_threads) == 2
    backend.monitor._cpu_percent = lambda: 97.0
    adjusted = backend.optimize_for_hardware()
    assert adjusted["status"] == "adjusted"
    assert adjusted["new_config"]["num_threads"] == 1
    assert adjusted["compute_threads"] == {
        "adaptive": False,
        "threads": 1,
        "planned": 1,
        "reason": "fixed: affinity off",
    }
    result = backend.synthesize(TEXT + " Again.")
    assert set(result.threads_used) == {1} and backend.lanes.run(torch.get_num_threads) == 1


def _spinners(count: int) -> list:
    import subprocess
    import sys

    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux run queue")
def test_with_affinity_each_step_gives_busy_cpus_up_and_without_it_keeps_the_plan(tmp_path):
    """Two busy processes beside a 2-thread plan on this machine: with the affinity feature, every step
    of a synthesis runs on the threads the busy processes leave (one on 2 CPUs), and /system-status says
    why; without it every step runs the planned threads. Quiet again, the plan comes back."""
    import os

    cpus = len(os.sched_getaffinity(0))
    adaptive = make(tmp_path, affinity=True, num_threads=2)
    (tmp_path / "fixed").mkdir()
    fixed = make(tmp_path / "fixed", affinity=False, num_threads=2)
    busy = _spinners(cpus)
    try:
        time.sleep(0.3)
        under_load = adaptive.synthesize(TEXT)
        status = adaptive.system_status()["compute_threads"]
        kept = fixed.synthesize(TEXT)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert len(under_load.threads_used) >= 2 and set(under_load.threads_used) == {1}
    assert status["adaptive"] and status["threads"] == 1 and status["planned"] == 2
    assert status["reading"]["runnable_others"] >= cpus - 1 and "preempted" in status["reason"]
    assert set(kept.threads_used) == {2}
    time.sleep(0.3)
    quiet = adaptive.synthesize(TEXT + " Quiet.")
    assert quiet.threads_used[-1] == 2


def test_warm_up_compiles_every_thread_count_a_step_may_take_on_every_lane(tmp_path, monkeypatch):
    """oneDNN compiles per thread count, so with threads following contention each lane warms its
    decoder at 1 and at the planned 2 threads, and is left at 2; with a fixed plan, at 2 alone."""
    import torch

    from adaptive_tts.voice.engine import Engine

    warmed: list[tuple[int, int]] = []
    warm_up = Engine.warm_up

    def recording_warm_up(engine, chunk_length):
        warmed.append((threading.get_ident(), torch.get_num_threads()))
        return warm_up(engine, chunk_length)

    monkeypatch.setattr(Engine, "warm_up", recording_warm_up)
    adaptive = make(tmp_path, affinity=True, num_threads=2, compute_lanes=2, chunk_length=64)
    assert adaptive.step_thread_counts() == [1, 2]
    lanes = {ident for ident, _ in warmed}
    assert len(lanes) == 2 and sorted(threads for _, threads in warmed) == [1, 1, 2, 2]
    assert [[t for i, t in warmed if i == lane] for lane in lanes] == [[1, 2], [1, 2]]
    assert adaptive.lanes.run(torch.get_num_threads) == 2
    adaptive.close()
    warmed.clear()
    (tmp_path / "fixed").mkdir()
    fixed = make(tmp_path / "fixed", affinity=False, num_threads=2, compute_lanes=2, chunk_length=64)
    assert fixed.step_thread_counts() == [2] and [threads for _, threads in warmed] == [2, 2]
    fixed.close()


def test_weights_never_change_under_a_streaming_job(tmp_path):
    """A precision switch asked for while a job streams waits for it: the job's audio equals a run
    entirely at fp32, and the next job runs at the new precision (its audio equals an INT8 run)."""
    from adaptive_tts.voice.engine import SynthesisOptions

    text = "The first sentence streams. The weights must hold still. Only then may they change."
    opts = SynthesisOptions(seed=7)
    backend = make(tmp_path, budget=False, cache=False, chunk_length=64)
    fp32 = backend.synthesize(text, opts).audio
    chunks = []
    stream = backend.stream(text, opts)
    chunks.append(next(stream))
    assert backend.set_precision("int8") is False  # deferred: a job is running
    assert backend.config.quantization == "fp32" and backend.ledger.switch_pending
    chunks.extend(stream)
    assert np.array_equal(np.concatenate(chunks), fp32)
    assert backend.config.quantization == "int8" and not backend.ledger.switch_pending
    reference = make(tmp_path, budget=False, cache=False, chunk_length=64, quantization="int8")
    assert np.array_equal(backend.synthesize(text, opts).audio, reference.synthesize(text, opts).audio)
    assert backend.set_precision("int4") is True  # idle: applied at once


def test_calibrated_policy_keeps_the_fits_error_and_plans_from_increments(tmp_path):
    """Calibrated constants (rest + per-request increment) and the calibrated policy: the margin is the
    fit's worst held-out under-prediction (no background moves here), and a request whose increment
    fits is admitted where the seed's 1.5 GB margin would refuse it."""
    from adaptive_tts.runtime.estimator import FitQuality

    memory = Memory(available_mb=400)
    backend = make(tmp_path, memory, budget_policy="calibrated", wait_timeout_s=0)
    fit = FitQuality(6, 5, 2.0, 25.0, 10.0)
    for key in backend.candidate_keys():
        backend.estimator.store.save(
            machine_key(backend.info), key, EstimatorConstants(500.0, 1.0, None, True, fit, per_request_mb=60.0)
        )
    backend.estimator.reload()
    backend._calibrated_margin()
    watch = backend.memory_budget_manager.watch
    watch.stop()  # the fake machine's readings stand still while this process allocates: not a swing
    watch.reset()
    assert backend.calibrated
    assert backend.memory_budget_manager.safety_margin_mb == pytest.approx(25.0)
    result = backend.synthesize(TEXT)
    assert result.degraded == () and result.safety_margin_mb < 40
    memory.available_mb = 80  # below every configuration's increment + margin: refused with the numbers
    with pytest.raises(SynthesisRefused) as refused:
        backend.synthesize("Another text that does not fit.")
    assert refused.value.available_mb == pytest.approx(80)
    assert refused.value.required_mb > 60


def test_every_caller_threads_synthesis_computes_on_the_backends_lanes(tmp_path):
    """Six callers at once: every decoder call runs on one of the backend's compute lanes (whose
    per-thread kernel caches warm-up filled), and each caller gets the audio a lone run gives."""
    from concurrent.futures import ThreadPoolExecutor

    from adaptive_tts.voice.engine import SynthesisOptions

    backend = make(tmp_path, budget=False, cache=False, compute_lanes=2)
    texts = [f"Caller number {i} asks for its own sentence." for i in range(6)]
    alone = [backend.synthesize(t, SynthesisOptions(seed=i)).audio for i, t in enumerate(texts)]
    decode = backend.engine.model.decode
    threads: set[str] = set()

    def recording_decode(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return decode(*args, **kwargs)

    backend.engine.model.decode = recording_decode
    with ThreadPoolExecutor(6) as callers:
        together = list(callers.map(lambda i: backend.synthesize(texts[i], SynthesisOptions(seed=i)).audio, range(6)))
    backend.close()
    assert threads and all(name.startswith("compute") for name in threads) and len(threads) <= 2
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_compute_lanes_must_be_positive():
    with pytest.raises(ValueError, match="compute_lanes must be >= 1, got 0"):
        BackendOptions(compute_lanes=0)


def test_warm_up_chooses_the_largest_chunk_whose_measured_start_up_fits(tmp_path, monkeypatch):
    """With this machine's start-up measured (warming 256-frame windows on both lanes takes 460 MB,
    128-frame ones 180 MB, 64-frame ones 80 MB) and 300 MB free, a new runtime warms up one chunk at a
    time while the next step fits (64, then 128; 256 would need 280 MB more with 120 MB left) and runs
    at most 128 from then on, where the short warm-up request alone predicted ~nothing. Where a step's
    heap is handed back, the next step is planned from the loaded runtime: with 150 MB free, 64 (80 MB)
    and not 128 (180 MB, not the 100 MB more than 64's peak)."""
    from adaptive_tts.runtime.estimator import FitQuality, StartUpCost
    from adaptive_tts.voice.engine import Engine

    calibrating = make(tmp_path, budget=False, compute_lanes=2)
    store, machine = calibrating.estimator.store, machine_key(calibrating.info)
    fit = FitQuality(6, 5, 2.0, 10.0, 10.0)
    for key in calibrating.candidate_keys():
        store.save(machine, key, EstimatorConstants(500.0, 1.0, None, True, fit, per_request_mb=20.0))
    rest, increments = 200.0, {64: 80.0, 128: 180.0, 256: 460.0}
    store.save_start_up(machine, StartUpCost(2, rest, rest, {c: rest + mb for c, mb in increments.items()}))
    calibrating.close()
    warmed: list[int] = []
    warm_up = Engine.warm_up

    def recording_warm_up(engine, chunk_length):
        warmed.append(chunk_length)
        return warm_up(engine, chunk_length)

    monkeypatch.setattr(Engine, "warm_up", recording_warm_up)
    handed_back = False

    class Growing(Memory):
        """The machine's available memory falls by what the warm-ups so far are measured to take."""

        def __call__(self) -> SystemMemory:
            return SystemMemory(
                8192.0, self.available_mb - (increments[max(warmed)] if warmed and not handed_back else 0.0)
            )

    def start(available_mb: float) -> SmartAdaptiveBackend:
        warmed.clear()
        budget = simulated_budget(M1, Growing(available_mb))
        budget.watch.stop()
        return SmartAdaptiveBackend(
            "m1_air",
            BackendOptions(
                affinity=False, quantization="fp32", compute_lanes=2, budget_policy="calibrated", wait_timeout_s=0
            ),
            calibration=store,
            budget_manager=budget,
        )

    short = start(300.0)
    assert warmed == [64, 64, 128, 128]  # each step on both lanes
    assert short.config.chunk_length == 128 and short.memory_budget_manager.safety_margin_mb < 40
    assert [key.chunk_length for key in short.candidate_keys()] == [128, 64]  # never a window it did not warm
    result = short.synthesize(TEXT)
    assert result.config["chunk_length"] == 128 and result.degraded == ()
    short.close()
    ample = start(2000.0)
    assert ample.config.chunk_length == 256 and warmed == [64, 64, 128, 128, 256, 256]
    ample.close()
    starved = start(50.0)  # not even the smallest step fits: no warm-up, the most frugal chunk
    assert starved.config.chunk_length == 64 and warmed == []
    starved.close()
    handed_back = True  # from here the warm-ups' heap is handed back: memory falls by nothing
    tight = start(150.0)  # 64 fits (80 MB); 128's 180 MB from the loaded runtime do not, whatever 64 held
    assert tight.config.chunk_length == 64 and warmed == [64, 64]
    tight.close()


def test_the_backend_plans_by_what_the_engine_declares(tmp_path, engine, reference):
    """Piper's onnxruntime graph declares one pass per sentence, fp32 only, nothing to warm up: the
    backend then plans no chunk, offers no lower precision, and refuses one by the engine's own list."""
    from adaptive_tts.voice import SpeechEngine

    assert isinstance(engine, SpeechEngine) and isinstance(reference, SpeechEngine)
    backend = make(tmp_path, Memory(available_mb=6000), engine="reference")
    try:
        assert {(k.chunk_length, k.quantization) for k in backend.candidate_keys()} == {(None, "fp32")}
        result = backend.synthesize("The reference runs each sentence in one pass.")
        assert result.config["engine"] == "reference" and result.config["chunk_length"] is None
        assert result.audio_s > 0
        with pytest.raises(ValueError, match="runs fp32 only, not int8"):
            backend.set_precision("int8")
    finally:
        backend.close()
