"""Trial bodies: what a worker does for one trial, selected by import path (``trial.body`` in the config).

``tts`` is the experiment: the adaptive backend under one ablation. ``memory_probe`` allocates and holds
real memory for a while (and burns a fixed amount of CPU); it exercises the supervision itself (does a
cap really kill, does a hang time out, does a busy background slow a trial) on any machine, and is what
the harness's own tests run in real workers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from adaptive_tts.units import MIB
from experiments.trial import TrialBody, TrialRequest

#: Synthesized once when a worker loads, so no trial pays for first-call initialisation.
WARMUP_TEXT = "Warm up."
#: How long the room-to-start check watches other processes' memory before it decides. Memory read once
#: is not memory a second later: in the full memory sweep a worker started against a dynamic app at
#: floor - 100 MB read 346 MB free (enough for its 274 MB start plus margin), the app grew by 150 MB
#: while torch loaded, and the kernel killed the worker. The app moves every 0.2-1.0 s.
ROOM_TO_START_WATCH_S = 2.0


def _backend(options: dict[str, Any], warm_up: bool = True, budget_manager: Any = None) -> Any:
    """The condition's :class:`SmartAdaptiveBackend`. ``estimator_constants`` says where the memory
    estimator's constants come from: ``calibrated`` (the harness's calibration file, measured on this
    device before the trials) or ``seed`` (the feature document's table, explicitly uncalibrated).
    ``budget_manager``: the room-to-start check's, so that its memory watch goes on through the load."""
    from adaptive_tts.backend import BackendOptions, SmartAdaptiveBackend
    from adaptive_tts.runtime.estimator import CalibrationStore, SeedTable

    constants = options.get("estimator_constants", "calibrated")
    if constants not in ("calibrated", "seed"):
        raise ValueError(f"estimator_constants must be 'calibrated' or 'seed', not {constants!r}")
    path = options.get("calibration_path")
    store = SeedTable() if constants == "seed" else CalibrationStore(path)
    return SmartAdaptiveBackend(
        profile=options["profile"],
        options=BackendOptions.from_settings(options, cache=False),
        calibration=store,
        budget_manager=budget_manager,
        warm_up=warm_up,
    )


def tts(options: dict[str, Any]) -> TrialBody:
    """Load :class:`SmartAdaptiveBackend` once for the worker's condition; each trial then runs
    ``request.concurrency`` simultaneous ``synthesize`` calls on it (one shared model, as a server does).

    The row reports the slowest request (a trial is done when its last request is); one refusal makes
    the trial ``refused``, one exception fails it. The audio cache is off: the workload repeats texts
    on purpose, and a cache hit would measure the cache instead of synthesis.
    """
    from adaptive_tts.heap import tune_heap

    tune_heap()  # before the room-to-start watch's thread allocates: glibc fixes its arena limit then
    refused, watching = _room_to_start(options)
    if refused is not None:  # the runtime declines to start: every trial says why, nothing is loaded
        return _refused_at_start(refused)
    from adaptive_tts.backend import SynthesisRefused, TextTooLong

    backend = _backend(options, budget_manager=watching)
    budget = backend.memory_budget_manager
    calibration = {
        "calibrated": backend.calibrated if backend.options.estimation else None,
        "estimator_max_under_mb": None,
        "estimator_mape_percent": None,
    }
    if backend.options.estimation:
        fits = [backend.estimator.constants_for(key).fit for key in backend.candidate_keys()]
        if all(fit is not None for fit in fits):
            calibration.update(
                estimator_max_under_mb=max(f.max_under_mb for f in fits),
                estimator_mape_percent=max(f.mape_percent for f in fits),
            )
    try:
        backend.synthesize(WARMUP_TEXT)
    except SynthesisRefused:
        pass  # the trials will be refused too, and say why

    def run(request: TrialRequest) -> dict[str, Any]:
        results: list[Any] = []
        refusals: list[SynthesisRefused | TextTooLong] = []
        failures: list[BaseException] = []

        def one() -> None:
            try:
                results.append(backend.synthesize(request.text))
            except (SynthesisRefused, TextTooLong) as exc:
                refusals.append(exc)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the worker's thread below
                failures.append(exc)

        if request.concurrency == 1:
            one()
        else:
            threads = [threading.Thread(target=one) for _ in range(request.concurrency)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if failures:
            raise failures[0]
        kept = [r.safety_margin_mb for r in results if r.safety_margin_mb is not None]
        common = {
            "requests_ok": len(results),
            "budget_policy": budget.policy,
            # the most any request kept at its admission (the margin moves with the other apps)
            "safety_margin_mb": (max(kept) if kept else budget.safety_margin_mb) if backend.options.budget else None,
            "background_swing_seen_mb": budget.watch.swing_mb() if budget.policy == "calibrated" else None,
            **calibration,
        }
        if results:
            common["waited_ms"] = max(r.waited_s for r in results) * 1000
            common["degraded"] = ";".join(sorted({step for r in results for step in r.degraded})) or None
        if refusals:
            refused = refusals[0]
            if isinstance(refused, TextTooLong):  # the profile's max_text_length
                return {**common, "status": "refused", "error": str(refused)}
            return {
                **common,
                "status": "refused",
                "error": refused.reason,
                "required_mb": refused.required_mb,
                "available_mb": refused.available_mb,
                "safety_margin_mb": refused.safety_margin_mb,
            }
        slowest = max(results, key=lambda result: result.latency_s)
        return {
            **common,
            "latency_ms": slowest.latency_s * 1000,
            "first_audio_ms": slowest.first_audio_s * 1000,
            "audio_s": slowest.audio_s,
            "rtf": slowest.rtf,
            "estimated_mb": slowest.estimated_mb,
            "text_tokens": slowest.text_tokens,
            # the fewest threads any step of the trial's requests ran on (contention adapts them)
            "threads_min": min((t for r in results for t in r.threads_used), default=None),
            **{
                key: slowest.config[key] for key in ("engine", "quantization", "num_threads", "chunk_length", "compute")
            },
        }

    return run


def _room_to_start(options: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """With budget and calibrated estimation on: the row of a refusal to start the runtime where its
    measured start-up does not fit (None: it fits, or nothing says), and the budget manager that
    decided, still watching when the runtime may start. The runtime then plans its decoder warm-up,
    which stays resident, against the others' whole swing since before the check, not since it was
    loaded: with a watch of its own, begun a second before the warm-up, a worker at a dynamic
    floor + 50 MB saw the app low, warmed up, and was killed when the app grew back. Imports no torch."""
    if not (options["budget"] and options["estimation"]) or options.get("estimator_constants") == "seed":
        return None, None
    from adaptive_tts.runtime.budget import MemoryBudgetManager
    from adaptive_tts.runtime.estimator import CalibrationStore, machine_key, room_to_start
    from adaptive_tts.runtime.hardware import detect_hardware, select_profile
    from adaptive_tts.runtime.process import anon_rss_mb

    info = detect_hardware(probe_gpu=False)
    budget = MemoryBudgetManager(
        select_profile(info, options["profile"]), info=info, policy=options.get("budget_policy", "calibrated")
    )
    store, machine = CalibrationStore(options.get("calibration_path")), machine_key(info)
    if budget.policy == "calibrated":
        time.sleep(ROOM_TO_START_WATCH_S)  # the margin then holds the swing its watch saw meanwhile
    decision = room_to_start(store, budget, machine, anon_rss_mb())
    if decision is None or decision.allowed:
        return None, budget
    budget.close()
    return {
        "status": "refused",
        "error": f"not enough memory to start the runtime: {decision.reason}",
        "required_mb": decision.required_mb,
        "available_mb": decision.available_mb,
        "safety_margin_mb": decision.safety_margin_mb,
        "budget_policy": budget.policy,
        "requests_ok": 0,
        "calibrated": True,
        "estimator_max_under_mb": store.worst_under_mb(machine),
    }, None


def _refused_at_start(refusal: dict[str, Any]) -> TrialBody:
    """The body of a worker whose runtime refused to start: each trial is refused with the numbers."""

    def run(request: TrialRequest) -> dict[str, Any]:
        return dict(refusal)

    return run


def calibrate(options: dict[str, Any]) -> TrialBody:
    """Fit the memory estimator, in this (confined) worker, for every configuration the condition's
    planner may choose that the calibration file lacks; one call does it all and reports what it fit.

    Runs in its own worker because lowering the weights to measure INT8/INT4 cannot be undone: the
    trials' workers start again from the condition's own precision. Being a fresh process, it also
    measures what starting the condition's runtime takes (anonymous memory at its peak, from before
    torch is imported, through warming the decoder up to each chunk on every lane), which the trials'
    workers check before they start and plan their warm-up by.
    """
    from adaptive_tts.runtime.process import AnonPeak

    meter = AnonPeak()  # from before torch is imported
    from adaptive_tts.calibration import calibrate as fit
    from adaptive_tts.calibration import measure_start_up, measuring_backend
    from adaptive_tts.runtime.estimator import CalibrationStore

    planner, startup = measure_start_up(
        lambda: _backend({**options, "estimator_constants": "calibrated"}, warm_up=False), meter
    )
    store = CalibrationStore(options["calibration_path"])
    machine = planner.estimator.machine
    store.save_start_up(machine, startup)
    missing = [key for key in planner.candidate_keys() if store.load(machine, key) is None]
    planner.close()
    del planner

    def run(request: TrialRequest) -> dict[str, Any]:
        if missing:
            fit(
                measuring_backend(missing[0], options["profile"]),
                missing,
                store=store,
                machine=machine,
                max_length=options.get("calibration_max_length"),
            )
        fits = [store.load(machine, key).fit for key in missing]
        return {
            "engine": options["engine"],
            "requests_ok": len(missing),
            "required_mb": startup.frugal_peak_mb,
            "estimator_max_under_mb": max((f.max_under_mb for f in fits), default=None),
            "estimator_mape_percent": max((f.mape_percent for f in fits), default=None),
        }

    return run


def memory_probe(options: dict[str, Any]) -> TrialBody:
    """Write ``alloc_mb`` MB (every page resident), hold it ``hold_s`` seconds, free it; then do
    ``work`` million steps of a Python loop, a fixed amount of CPU whose wall time shows contention."""
    alloc_bytes = int(float(options.get("alloc_mb", 0)) * MIB)
    hold_s = float(options.get("hold_s", 0))
    steps = int(float(options.get("work", 0)) * 1_000_000)

    def run(request: TrialRequest) -> dict[str, Any]:
        start = time.perf_counter()
        held = bytearray(b"\x01") * alloc_bytes
        time.sleep(hold_s)
        del held
        total = 0
        for step in range(steps):
            total += step
        return {"latency_ms": (time.perf_counter() - start) * 1000, "engine": "memory_probe"}

    return run
