"""SmartAdaptiveBackend: the voice plus the seed's runtime features, composed.

The one object a notebook, the HTTP service and the experiment harness use. A request goes

    cache lookup → estimate every configuration the planner may choose → plan (pure) → ledger →
    engine (streamed) → cache

The planner (:func:`adaptive_tts.runtime.planner.plan_request`) answers run / wait / refuse from one
snapshot of the state; when memory is short it degrades in the order its docstring justifies (smaller
decoder chunk, wait for running jobs, lower weight precision) and refuses, with the numbers, only when
even the most frugal plan cannot fit. Weights change precision only while no job runs
(:class:`~adaptive_tts.runtime.admission.AdmissionLedger`). Each feature can be switched off on its own
(the thesis's ablations): ``budget`` (admission by the memory budget manager), ``affinity`` (CPU pinning
and thread count) and ``estimation`` (pre-synthesis memory estimation); with ``budget`` off nothing is
checked at all and the weights stay as shipped (fp32) unless a precision is asked for.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections.abc import Hashable, Iterator
from dataclasses import replace
from typing import cast

import numpy as np

from .audio import from_pcm16, pcm16
from .heap import release_free_memory, tune_heap
from .options import BackendOptions, default_lanes
from .runtime.admission import AdmissionLedger
from .runtime.affinity import CPUAffinityManager
from .runtime.budget import MemoryBudgetManager
from .runtime.cache import AudioCache
from .runtime.contention import thread_ladder
from .runtime.estimator import CalibrationStore, ConfigKey, MemoryEstimator, current_rss_mb, machine_key
from .runtime.hardware import (
    HardwareInfo,
    HardwareProfile,
    SelectedConfiguration,
    detect_hardware,
    hardware_payload,
    select_profile,
)
from .runtime.monitor import SystemMonitor, reoptimized
from .runtime.planner import (
    PRECISIONS,
    Candidate,
    Plan,
    PlannerState,
    Refusal,
    Reservation,
    Wait,
    held_mb,
    plan_request,
)
from .runtime.warmup import warm_up_within
from .synthesis import Synthesis, SynthesisRefused, SynthesisResult, TextTooLong
from .units import mib
from .voice import load_engine
from .voice.frontend import Sentence, validate_text
from .voice.lanes import ComputeLanes
from .voice.speech import QuantizableEngine, SynthesisOptions

logger = logging.getLogger(__name__)

__all__ = ["BackendOptions", "SmartAdaptiveBackend", "SynthesisRefused", "TextTooLong"]

#: Seconds of idleness after which freed memory is handed back to the OS (see ``_schedule_idle_trim``).
IDLE_TRIM_DELAY_S = 0.5
#: A cache hit is sent in pieces of this many samples (~3 s, a decoder chunk's worth): converting a
#: whole entry back to float32 at once would allocate twice its size for every hit being sent.
HIT_CHUNK_SAMPLES = 65536

#: The smallest decoder chunk the planner degrades to: below ~64 frames (0.7 s) the margins on each
#: side of a chunk cost more compute than the chunk itself.
MIN_CHUNK_LENGTH = 64
#: The first decoded chunk of a request is this short (~0.37 s of audio), so that audio starts while
#: the rest is decoded in full-size chunks.
FIRST_CHUNK_LENGTH = 32


class SmartAdaptiveBackend:
    """Adaptive TTS for one machine: detects it, picks a profile, and admits work within its budget."""

    def __init__(
        self,
        profile: str | HardwareProfile = "auto",
        options: BackendOptions | None = None,
        *,
        info: HardwareInfo | None = None,
        calibration: CalibrationStore | None = None,
        budget_manager: MemoryBudgetManager | None = None,
        warm_up: bool = True,
    ) -> None:
        """``budget_manager`` defaults to live readings of this machine; pass one with injected readers
        to run the admission logic as a smaller device would (the experiment harness caps memory with
        the kernel instead). ``warm_up=False`` skips compiling the decoder (measuring start-up alone)."""
        tune_heap()  # before the memory watch's thread allocates: glibc fixes its arena limit then
        self.options = options or BackendOptions()
        self.info = info or detect_hardware()
        self.profile = profile if isinstance(profile, HardwareProfile) else select_profile(self.info, profile)
        budget = budget_manager or MemoryBudgetManager(self.profile, info=self.info)
        budget.set_policy(self.options.budget_policy)
        self.monitor = SystemMonitor(self.profile, info=self.info, budget_manager=budget)
        selected = self.profile.selected_configuration
        #: what synthesis runs with now: the profile's selection, the options' overrides, and what the
        #: runtime has adapted since (replaced whole, never edited in place: a reader sees one state)
        self.config: SelectedConfiguration = replace(
            selected,
            chunk_length=self.options.chunk_length or selected.chunk_length,
            num_threads=self.options.num_threads or selected.num_threads,
            cache_limit=budget.cache_limit_mb,
            quantization="fp32",
        )
        self.affinity: CPUAffinityManager | None = None
        if self.options.affinity:
            self.affinity = CPUAffinityManager(self.info)
            applied = self.affinity.apply()
            if self.options.num_threads is None and applied.num_threads is not None:
                self.config = replace(self.config, num_threads=applied.num_threads)
        self.engine = load_engine(self.options.engine, self.config.num_threads, self.options.compute)
        self.lanes = ComputeLanes(self.options.compute_lanes or default_lanes(self.config.num_threads))
        #: per lane thread: the intra-op threads last set there (:meth:`_fit_threads`)
        self._lane_state = threading.local()
        self.config = replace(self.config, compute=self.engine.compute)
        self.sample_rate = self.engine.sample_rate
        self._set_precision(self._initial_precision(budget))
        self.cache: AudioCache | None = None
        if self.options.cache:
            self.cache = AudioCache(budget.cache_limit_mb)
            budget.add_cache_listener(self._on_cache_limit)
        self.estimator = MemoryEstimator(
            self.profile,
            self._config_key(),
            budget_manager=budget,
            token_counter=self.engine.frontend.count_tokens,
            cache_bytes=lambda: self.cache.bytes if self.cache else 0,
            store=calibration,
            machine=machine_key(self.info),
        )
        self._calibrated_margin()
        self.ledger = AdmissionLedger()
        self._idle_trim: threading.Timer | None = None
        if warm_up:
            self._warm_up()
        logger.info("backend ready: profile %s, %s", self.profile.name, self.config)

    # -- the request path: text → admission → audio -----------------------------------------

    def stream(self, text: str, options: SynthesisOptions | None = None) -> Synthesis:
        """Admit ``text`` and return its :class:`~adaptive_tts.synthesis.Synthesis`: iterate it for the
        audio, decoded as it is taken. Admission (which may wait for running jobs) happens here, so a
        refusal (:class:`SynthesisRefused`) or a bad text is raised before any audio exists; the cache
        answers without admission."""
        started = time.perf_counter()
        self._check_text(text)
        opts = options or SynthesisOptions()
        key = None
        if self.cache is not None:
            key = AudioCache.key(
                text,
                engine=self.engine.name,
                quantization=self.config.quantization,
                noise_scale=opts.noise_scale,
                length_scale=opts.length_scale,
                noise_w=opts.noise_w,
                seed=opts.seed,
            )
            hit = self.cache.get(key)
            if hit is not None:
                return Synthesis(
                    self._replay(hit),
                    sample_rate=self.sample_rate,
                    started=started,
                    config=self._run_config(self._chunk_length()),
                    cached=True,
                )
        sentences = self.engine.frontend.sentences(text)
        tokens = sum(len(s.ids) for s in sentences)
        job, plan, waited_s = self._admit(tokens)
        try:
            first = opts.first_chunk_length
            if first is None and plan.chunk_length is not None:
                first = min(FIRST_CHUNK_LENGTH, plan.chunk_length)
            resolved = self.engine.resolve(opts, chunk_length=plan.chunk_length, first_chunk_length=first)
        except BaseException:
            self._release(job)
            raise
        threads_used: list[int] = []
        return Synthesis(
            self._decode(sentences, resolved, key, threads_used),
            sample_rate=self.sample_rate,
            started=started,
            config=self._run_config(plan.chunk_length),
            plan=plan,
            tokens=tokens,
            waited_s=waited_s,
            release=functools.partial(self._release, job),
            threads_used=threads_used,
        )

    def _check_text(self, text: str) -> str:
        validate_text(text)
        if len(text) > self.config.max_text_length:
            raise TextTooLong(len(text), self.config.max_text_length)
        return text

    def _replay(self, pcm: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(pcm), HIT_CHUNK_SAMPLES):
            yield from_pcm16(pcm[start : start + HIT_CHUNK_SAMPLES])

    def _admit(self, tokens: int) -> tuple[int, Plan, float]:
        """Decide how (and whether) a request of ``tokens`` phoneme ids runs; blocks while it waits.

        Returns the job's id, its plan and the seconds it waited. The reservation is recorded under the
        same lock as the decision, so that a request admitted right after sees it. Whenever no job is
        running and the plan does not fit, freed heap is handed back to the OS once and the decision
        taken again: a refusal should not be caused by memory this process holds but does not use.
        """
        started = time.monotonic()
        deadline = started + self.options.wait_timeout_s
        trimmed = False
        with self.ledger.deciding():
            while True:
                decision = self._decide(tokens)
                if isinstance(decision, Plan):
                    if decision.precision != self.config.quantization:
                        self._switch_precision(decision.precision)  # the planner chose it: no job runs
                    job = self.ledger.reserve(decision.reservation)
                    return job, decision, time.monotonic() - started
                if not trimmed and not self.ledger.reservations():
                    trimmed = True  # once per idle moment: jobs that ended left their heap behind
                    release_free_memory()
                    continue
                if isinstance(decision, Wait) and self.ledger.wait(deadline):
                    logger.info("request of %d ids: %s", tokens, decision.reason)
                    trimmed = False
                    continue
                refusal = decision if isinstance(decision, Refusal) else self._timed_out(decision)
                raise SynthesisRefused(
                    refusal.reason, refusal.required_mb, refusal.available_mb, refusal.safety_margin_mb
                )

    def _decide(self, tokens: int) -> Plan | Wait | Refusal:
        """The planner's answer, or the budget manager's alone when estimation is off."""
        chunk = self._chunk_length()
        if not self.options.budget:
            return Plan(chunk, self.config.quantization, None, Reservation(0.0, 0.0))
        budget = self.memory_budget_manager
        budget.adjust_cache_limit()
        if self.options.estimation:
            return plan_request(self._planner_state(tokens))
        check = budget.check(0.0)
        if check.allowed:
            return Plan(
                chunk, self.config.quantization, None, Reservation(0.0, 0.0), safety_margin_mb=check.safety_margin_mb
            )
        if self.ledger.reservations():
            return Wait(f"waiting for running jobs: {check.reason}")
        return Refusal(check.reason, check.required_mb, check.available_mb, check.safety_margin_mb)

    def _planner_state(self, tokens: int) -> PlannerState:
        """One snapshot of everything the planner decides on (caller holds the ledger)."""
        candidates = tuple(
            Candidate(
                key.chunk_length,
                key.quantization,
                self.estimator.increment_mb(tokens, key),
                self.estimator.peak_from_now_mb(tokens, key),
                self.estimator.queued_mb(tokens, key),
            )
            for key in self.candidate_keys()
        )
        room = self.memory_budget_manager.room()
        return PlannerState(
            candidates,
            room.available_mb,
            room.safety_margin_mb,
            self.config.quantization,
            self.ledger.reservations(),
            self.lanes.count,
        )

    def _timed_out(self, wait: Wait) -> Refusal:
        room = self.memory_budget_manager.room()
        return Refusal(
            f"still no memory after waiting {self.options.wait_timeout_s:g} s ({wait.reason})",
            held_mb(self.ledger.reservations(), self.lanes.count),
            room.available_mb,
            room.safety_margin_mb,
        )

    def _decode(
        self, sentences: list[Sentence], options: SynthesisOptions, key: Hashable | None, threads_used: list[int]
    ) -> Iterator[np.ndarray]:
        """The engine's chunks on a compute lane, each step with the threads contention leaves it
        (``threads_used`` collects them); a text decoded to its end goes into the cache."""
        kept: list[np.ndarray] = []
        fit = functools.partial(self._fit_threads, threads_used)
        for chunk in self.lanes.iterate(self.engine.stream_sentences(sentences, options), fit):
            if key is not None:
                kept.append(pcm16(chunk))  # what the cache keeps: half a float32 copy
            yield chunk
        if key is not None and kept and self.cache is not None:
            self.cache.put(key, kept)

    @property
    def adapts_threads(self) -> bool:
        """Whether each step's thread count follows CPU contention: with the affinity feature on and an
        engine whose thread count can change between steps."""
        return self.affinity is not None and self.engine.capabilities.step_threads

    def _fit_threads(self, used: list[int]) -> None:
        """On the lane, before a step: the planned threads, or fewer where other tasks hold CPUs (with
        affinity on). Set here rather than once per process because the count is per thread: a new
        plan from :meth:`optimize_for_hardware` reaches every lane at its next step this way."""
        threads = self.config.num_threads
        if not self.engine.capabilities.step_threads:
            used.append(threads)  # set engine-wide, when the plan changes
            return
        if self.affinity is not None:
            threads = self.affinity.step_threads(threads, first_step=not used).threads
        if getattr(self._lane_state, "threads", None) != threads:
            self.engine.set_num_threads(threads)  # per thread: this lane's steps from now on
            self._lane_state.threads = threads
        used.append(threads)

    def _release(self, job: int) -> None:
        if self.ledger.release(job):
            self._schedule_idle_trim()

    def _schedule_idle_trim(self) -> None:
        """Hand freed memory back to the OS once the service has been idle for
        :data:`IDLE_TRIM_DELAY_S`, so its RSS returns to its resting level after a burst.

        Deferred rather than done as the last job ends: its audio, the server's response bytes and the
        cache entry are freed or made only after that moment, and a trim then left them resident (the
        service's RSS crept up by up to 11 % per burst of requests).
        """
        with self.ledger.deciding():
            if self._idle_trim is not None:
                self._idle_trim.cancel()
            self._idle_trim = threading.Timer(IDLE_TRIM_DELAY_S, self._trim_if_idle)
            self._idle_trim.daemon = True
            self._idle_trim.start()

    def _trim_if_idle(self) -> None:
        with self.ledger.deciding():
            if self.ledger.reservations():
                return  # the job now running schedules the next trim when it ends
            self._idle_trim = None
        release_free_memory()

    def _run_config(self, chunk_length: int | None) -> dict:
        return {
            "engine": self.engine.name,
            "quantization": self.config.quantization,
            "num_threads": self.config.num_threads,
            "compute": self.config.compute,
            "chunk_length": chunk_length,
        }

    def synthesize(self, text: str, options: SynthesisOptions | None = None) -> SynthesisResult:
        """Whole-utterance synthesis with its timings and the plan it ran under."""
        result = self.stream(text, options).result()
        if result.text_tokens is None:  # answered from the cache, which does not phonemize
            result = replace(result, text_tokens=self.engine.frontend.count_tokens(text))
        return result

    # -- the seed's API ---------------------------------------------------------------------

    @property
    def memory_budget_manager(self) -> MemoryBudgetManager:
        return self.monitor.memory_budget_manager

    def enforce_limits(self) -> bool:
        """May synthesis start at all right now (is the safety margin free)?"""
        return self.memory_budget_manager.enforce_limits()

    def hardware(self) -> dict:
        payload = hardware_payload(self.info, self.profile)
        payload["selected_configuration"] = self.config.to_dict()
        payload["runtime_features"] = {
            k: getattr(self.options, k) for k in ("budget", "affinity", "estimation", "cache")
        }
        payload["engine"] = self.engine.name
        return payload

    def system_status(self) -> dict:
        status = self.monitor.status()
        status["running_jobs"] = self.ledger.running
        status["compute_threads"] = self.compute_threads()
        status["budget"] = self.memory_budget_manager.margin_terms()
        if self.cache is not None:
            status["cache"] = self.cache.stats().to_dict()
        return status

    def compute_threads(self) -> dict:
        """What the next synthesis step would run with: the contention read now and the threads it
        leaves, or the fixed count where threads do not adapt."""
        planned = self.config.num_threads
        if not self.adapts_threads or self.affinity is None:
            return {"adaptive": False, "threads": planned, "planned": planned, "reason": "fixed: affinity off"}
        return {"adaptive": True, **self.affinity.preview_threads(planned).to_dict()}

    def estimate(self, text: str) -> dict:
        """The seed's ``/estimate-memory`` payload (works with estimation switched off, too)."""
        validate_text(text)
        return self.estimator.estimate(text)

    def clear_cache(self) -> dict:
        """Empty the audio cache and hand free memory back to the OS; ``freed_mb`` is what the cache
        held, ``freed_rss_mb`` the process's RSS before less after (measured: syntheses running at the
        same time move it too, either way)."""
        before = current_rss_mb()
        freed = self.cache.clear() if self.cache is not None else 0
        gc.collect()
        release_free_memory()
        return {
            "status": "cleared",
            "freed_mb": round(mib(freed), 3),
            "freed_rss_mb": round(before - current_rss_mb(), 1),
        }

    def optimize_for_hardware(self) -> dict:
        """Clear caches and return free memory to the OS (its ``freed_rss_mb`` is measured as in
        :meth:`clear_cache`), then re-read resources — which then see that memory free — and adjust the
        configuration if the machine calls for it."""
        freed_rss_mb = self.clear_cache()["freed_rss_mb"]
        previous = self.config
        status = self.monitor.status()
        budget = self.memory_budget_manager
        budget.adjust_cache_limit()
        new, reasons = reoptimized(
            previous,
            status,
            cache_limit_mb=budget.cache_limit_mb,
            chunk_ceiling=self.options.chunk_length or self.profile.selected_configuration.chunk_length,
            min_chunk=MIN_CHUNK_LENGTH,
        )
        if new == previous:
            return {
                "status": "optimal",
                "message": "No adjustments needed",
                "config": previous.to_dict(),
                "freed_rss_mb": freed_rss_mb,
                "compute_threads": self.compute_threads(),
            }
        self.config = new
        if new.num_threads != previous.num_threads and not self.engine.capabilities.step_threads:
            self.engine.set_num_threads(new.num_threads)  # else each lane sets it at its next step
        self.estimator.set_config(self._config_key())
        logger.info("re-optimized: %s", "; ".join(reasons) or "cache limit follows memory")
        return {
            "status": "adjusted",
            "previous_config": previous.to_dict(),
            "new_config": new.to_dict(),
            "reasons": reasons,
            "freed_rss_mb": freed_rss_mb,
            "compute_threads": self.compute_threads(),
        }

    # -- weight precision -------------------------------------------------------------------

    def set_precision(self, precision: str) -> bool:
        """Lower the shared weights to ``precision`` as soon as no job is using them: now when idle
        (returns True), else when the last running job ends. A job never sees its weights change."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if not self.engine.capabilities.runs(precision):
            raise ValueError(
                f"the {self.engine.name} engine runs {', '.join(self.engine.capabilities.precisions)} "
                f"only, not {precision}"
            )
        return self.ledger.when_idle(lambda: self._switch_precision(precision))

    def _switch_precision(self, precision: str) -> None:
        """Apply a precision change; the ledger guarantees no job is running."""
        self._set_precision(precision)
        self.estimator.set_config(self._config_key())

    def _initial_precision(self, budget: MemoryBudgetManager) -> str:
        """An explicit precision; else fp32 with the budget off (the voice as shipped); else the
        profile's row — under the seed policy with the seed's "< 6 GB available → INT4" rule, under
        the calibrated policy as written, since the planner lowers precision when measurements say a
        request needs it."""
        if len(self.engine.capabilities.precisions) == 1:
            return self.engine.capabilities.precisions[0]
        if self.options.quantization is not None:
            return self.options.quantization
        if not self.options.budget:
            return "fp32"
        from .runtime.quantize import QuantizationStrategy

        available = budget.available_mb() if self.options.budget_policy == "seed" else None
        return QuantizationStrategy.for_profile(self.profile, available).mode

    def _set_precision(self, precision: str) -> None:
        """Quantize the shared model's weights to ``precision`` (in place: the fp32 copy is freed)."""
        if precision == self.config.quantization:
            return
        from .runtime.quantize import QuantizationStrategy, native_int8_dot, quantize_

        if PRECISIONS.index(precision) < PRECISIONS.index(self.config.quantization):
            raise ValueError(f"cannot raise precision from {self.config.quantization} to {precision} in place")
        # The profile's weight-only/dynamic choice (dynamic INT8 only on CPUs with integer dot products,
        # see ``native_int8_dot``), but no layer-wise calibration pass: this runs at
        # start-up and when the planner degrades a busy service, where calibrating over dozens of
        # sentences would cost minutes (``python -m experiments.bench_quantize`` measures it).
        row = self.profile.quantization
        dynamic = row.dynamic and precision == "int8" and native_int8_dot()
        strategy = QuantizationStrategy(mode=precision, weight_only=row.weight_only or not dynamic, dynamic=dynamic)
        quantize_(cast(QuantizableEngine, self.engine).model, strategy)  # runs() said it has weights to lower
        self.config = replace(self.config, quantization=precision)
        gc.collect()
        logger.info("model weights now %s", precision)

    # -- configurations and warm-up ---------------------------------------------------------

    def _chunk_length(self) -> int | None:
        """The decoder chunk now; ``None`` for an engine that cannot chunk (one pass per sentence)."""
        return self.config.chunk_length if self.engine.capabilities.chunking else None

    def _config_key(self, chunk_length: int | None = None, quantization: str | None = None) -> ConfigKey:
        chunk = (chunk_length or self.config.chunk_length) if self.engine.capabilities.chunking else None
        return ConfigKey(
            self.engine.name,
            quantization or self.config.quantization,
            chunk,
            self.config.num_threads,
            self.config.compute,
        )

    def candidate_keys(self) -> list[ConfigKey]:
        """Every configuration the planner may choose, in its preference order: the current chunk
        and the halvings down to :data:`MIN_CHUNK_LENGTH`, at the current precision, then at each
        lower one the engine runs."""
        if self.options.quantization is not None:
            precisions = [self.config.quantization]
        else:
            precisions = [
                p for p in PRECISIONS[PRECISIONS.index(self.config.quantization) :] if self.engine.capabilities.runs(p)
            ]
        chunks = [self._chunk_length()]
        while chunks[-1] is not None and chunks[-1] // 2 >= MIN_CHUNK_LENGTH:
            chunks.append(chunks[-1] // 2)
        return [self._config_key(chunk, precision) for precision in precisions for chunk in chunks]

    def _calibrated_margin(self) -> None:
        """Give the calibrated policy its first term: the worst under-prediction of the calibration over
        the configurations the planner may choose (none without estimation: nothing is predicted)."""
        budget = self.memory_budget_manager
        if not self.options.estimation:
            budget.set_estimator_error(0.0)
            return
        constants = [self.estimator.constants_for(key) for key in self.candidate_keys()]
        fits = [c.fit for c in constants if c.calibrated]
        if len(fits) == len(constants) and all(fit is not None for fit in fits):
            budget.set_estimator_error(max(fit.max_under_mb for fit in fits if fit is not None))
        else:
            budget.set_estimator_error(None)

    @property
    def calibrated(self) -> bool:
        """Whether every configuration the planner may choose has fitted constants on this machine."""
        return all(self.estimator.constants_for(key).calibrated for key in self.candidate_keys())

    def _on_cache_limit(self, limit_mb: float) -> None:
        self.config = replace(self.config, cache_limit=limit_mb)
        if self.cache is not None:
            self.cache.set_limit_mb(limit_mb)

    def _warm_up(self) -> None:
        """Compile the decoder for the window lengths of the chunks requests will run at, on every lane:
        with budget and estimation, only as far as memory allows (:meth:`_warm_up_measured`)."""
        if not self.engine.capabilities.warm_up:
            return
        started = time.perf_counter()
        if not (self.options.budget and self.options.estimation):
            self.warm_up_to(self._chunk_length())
        elif not self._warm_up_measured():
            decision = plan_request(self._planner_state(self.engine.frontend.count_tokens("Warm up.")))
            if not isinstance(decision, Plan):
                logger.warning("no decoder warm-up: %s", decision.reason)
                return
            self.warm_up_to(decision.chunk_length)
        # The warm-up's buffers are freed heap: handed back, a runtime warmed to chunk 256 on two lanes
        # rests at 335 MB RSS instead of 750 (INT8, this VM), and requests are planned from that rest,
        # as the calibration measured them.
        release_free_memory()
        logger.info(
            "decoder kernels compiled up to chunk %d on %d compute lane(s) at %s thread(s) in %.2f s",
            self.config.chunk_length,
            self.lanes.count,
            "/".join(map(str, self.step_thread_counts())),
            time.perf_counter() - started,
        )

    def warm_up_to(self, chunk: int | None) -> None:
        """Compile the decoder's windows up to ``chunk`` frames on every compute lane, in turn, at each
        thread count a step may run with (:meth:`step_thread_counts`): oneDNN compiles per thread
        count, so a lane that drops to fewer threads under contention would otherwise pay a compile in
        the middle of a request. The lane is left at the planned count."""
        counts = self.step_thread_counts()

        def on_lane() -> None:
            for threads in counts:
                if len(counts) > 1:
                    self.engine.set_num_threads(threads)
                    self._lane_state.threads = threads
                self.engine.warm_up(chunk)

        self.lanes.each(on_lane)

    def step_thread_counts(self) -> list[int]:
        """The intra-op thread counts a synthesis step may run with, planned last: the planned count's
        :func:`~.runtime.contention.thread_ladder` where threads follow contention
        (:attr:`adapts_threads`), else the planned count alone."""
        planned = self.config.num_threads
        return thread_ladder(planned) if self.adapts_threads else [planned]

    def warm_up_chunks(self) -> list[int]:
        """The chunk lengths the planner may choose, smallest first (none for a one-pass engine)."""
        return sorted({key.chunk_length for key in self.candidate_keys() if key.chunk_length is not None})

    def _warm_up_measured(self) -> bool:
        """Warm up by this machine's measured start-up (:class:`~.runtime.estimator.StartUpCost`);
        ``False`` when it was not measured for every chunk here.

        The warm-up's peak is planned like a request's (:func:`~.runtime.planner.plan_warm_up`), one
        chunk at a time from the smallest, planned again before each step, but against the budget's
        :attr:`~.runtime.budget.MemoryBudgetManager.resident_margin_mb`: warmed windows stay resident, so
        they keep room for the other apps' whole swing seen meanwhile (at start, a second or two of it).
        The chunk reached becomes the runtime's chunk: the planner degrades from there, and no request
        pays a first compile the calibration did not measure.
        """
        chunks = self.warm_up_chunks()
        cost = self.estimator.store.load_start_up(self.estimator.machine, self.lanes.count)
        if cost is None or not set(chunks) <= set(cost.warm_up_mb):
            return False
        budget = self.memory_budget_manager
        warmed = warm_up_within(chunks, cost, budget, self.warm_up_to)
        ceiling = warmed or chunks[0]
        if ceiling != self.config.chunk_length:
            logger.info(
                "chunk %d, not %d: warming %d-frame windows on %d lane(s) takes %.0f MB, %.0f MB "
                "available less a %.0f MB margin",
                ceiling,
                self.config.chunk_length,
                self.config.chunk_length,
                self.lanes.count,
                cost.increment_mb(self.config.chunk_length),
                budget.available_mb(),
                budget.resident_margin_mb,
            )
            self.config = replace(self.config, chunk_length=ceiling)
            self.estimator.set_config(self._config_key())
        return True

    def close(self) -> None:
        """Undo process-wide changes (CPU affinity, thread count) and stop the memory watch."""
        if self.affinity is not None:
            self.affinity.restore()
        self.memory_budget_manager.close()
        self.lanes.close()
