"""SmartAdaptiveBackend: the voice plus the seed's runtime features, composed.

The one object a notebook, the HTTP service and the experiment harness use. A request goes

    cache lookup → budget check → estimate → plan → engine (streamed) → cache

and when the estimate does not fit, the plan degrades in a fixed order — a smaller decoder chunk, then
lower weight precision, then waiting for running jobs to finish — before it refuses with a typed
error that carries the numbers. Each feature can be switched off on its own (the thesis's ablations):
``budget`` (admission by the memory budget manager), ``affinity`` (CPU pinning and thread count) and
``estimation`` (pre-synthesis memory estimation); with ``budget`` off nothing is checked at all.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from .audio import from_pcm16, pcm16
from .runtime.affinity import CPUAffinityManager
from .runtime.budget import MemoryBudgetManager
from .runtime.cache import AudioCache
from .runtime.estimator import CalibrationStore, ConfigKey, MemoryEstimator, current_rss_mb, machine_key
from .runtime.hardware import HardwareInfo, HardwareProfile, detect_hardware, hardware_payload, select_profile
from .runtime.monitor import SystemMonitor
from .voice.engine import COMPUTE_DTYPES, SynthesisOptions, SynthesisStats, load_engine, release_free_memory
from .voice.frontend import TextError, validate_text

logger = logging.getLogger(__name__)

#: Seconds of idleness after which freed memory is handed back to the OS (see ``_schedule_idle_trim``).
IDLE_TRIM_DELAY_S = 0.5
#: A cache hit is sent in pieces of this many samples (~3 s, a decoder chunk's worth): converting a
#: whole entry back to float32 at once would allocate twice its size for every hit being sent.
HIT_CHUNK_SAMPLES = 65536

PRECISIONS = ("fp32", "int8", "int4")
#: The smallest decoder chunk the planner degrades to: below ~64 frames (0.7 s) the margins on each
#: side of a chunk cost more compute than the chunk itself.
MIN_CHUNK_LENGTH = 64
#: The first decoded chunk of a request is this short (~0.37 s of audio), so that audio starts while
#: the rest is decoded in full-size chunks.
FIRST_CHUNK_LENGTH = 32


class SynthesisRefused(RuntimeError):
    """The runtime will not start this synthesis: it would not fit in memory now."""

    def __init__(self, reason: str, required_mb: float, available_mb: float, safety_margin_mb: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.required_mb = required_mb
        self.available_mb = available_mb
        self.safety_margin_mb = safety_margin_mb

    def to_dict(self) -> dict:
        return {"reason": self.reason, "required_mb": round(self.required_mb, 1),
                "available_mb": round(self.available_mb, 1), "safety_margin_mb": round(self.safety_margin_mb, 1)}


class TextTooLong(TextError):
    """The text is longer than the profile's ``max_text_length``."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"text is {length} characters; the limit on this hardware is {limit}")
        self.length = length
        self.limit = limit


@dataclass(frozen=True)
class BackendOptions:
    """Which runtime features are on, and configuration overrides (``None`` = the profile's choice)."""

    budget: bool = True
    affinity: bool = True
    estimation: bool = True
    cache: bool = True
    engine: str = "torch"
    quantization: str | None = None
    chunk_length: int | None = None
    num_threads: int | None = None
    #: What our engine computes in: ``auto`` is bf16 on CPUs with native bf16, else fp32.
    compute: str = "auto"
    #: How long a request may wait for running jobs to free memory before it is refused.
    wait_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.engine not in ("torch", "reference"):
            raise ValueError(f"engine must be 'torch' or 'reference', not {self.engine!r}")
        if self.quantization is not None and self.quantization not in PRECISIONS:
            raise ValueError(f"quantization must be one of {', '.join(PRECISIONS)}, not {self.quantization!r}")
        if self.engine == "reference" and self.quantization not in (None, "fp32"):
            raise ValueError("the onnxruntime reference engine runs fp32 only")
        if self.compute not in ("auto", *COMPUTE_DTYPES):
            raise ValueError(f"compute must be auto, {', '.join(COMPUTE_DTYPES)}, not {self.compute!r}")
        if self.chunk_length is not None and self.chunk_length < 1:
            raise ValueError(f"chunk_length must be >= 1, got {self.chunk_length}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")


@dataclass
class RuntimeConfig:
    """The seed's "selected configuration": what synthesis runs with right now."""

    chunk_length: int
    num_threads: int
    cache_limit: float
    max_text_length: int
    quantization: str
    #: what the engine multiplies in (fp32 or bf16; the reference engine: fp32)
    compute: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """How one admitted request will run."""

    chunk_length: int | None
    estimated_mb: float | None
    reserved_mb: float
    degraded: tuple[str, ...] = ()


@dataclass
class SynthesisResult:
    audio: np.ndarray
    sample_rate: int
    latency_s: float
    first_audio_s: float
    audio_s: float
    rtf: float
    text_tokens: int
    estimated_mb: float | None
    config: dict
    cached: bool = False
    degraded: tuple[str, ...] = field(default_factory=tuple)


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
    ) -> None:
        """``budget_manager`` defaults to live readings of this machine; pass one with injected readers
        to run the admission logic as a smaller device would (the experiment harness caps memory with
        the kernel instead)."""
        self.options = options or BackendOptions()
        self.info = info or detect_hardware()
        self.profile = profile if isinstance(profile, HardwareProfile) else select_profile(self.info, profile)
        budget = budget_manager or MemoryBudgetManager(self.profile, info=self.info)
        self.monitor = SystemMonitor(self.profile, info=self.info, budget_manager=budget)
        selected = self.profile.selected_configuration
        self.config = RuntimeConfig(
            chunk_length=self.options.chunk_length or selected.chunk_length,
            num_threads=self.options.num_threads or selected.num_threads,
            cache_limit=budget.cache_limit_mb,
            max_text_length=selected.max_text_length,
            quantization="fp32",
        )
        self.affinity: CPUAffinityManager | None = None
        if self.options.affinity:
            self.affinity = CPUAffinityManager(self.info)
            applied = self.affinity.apply()
            if self.options.num_threads is None:
                self.config.num_threads = applied.num_threads
        self.engine = load_engine(self.options.engine, self.config.num_threads, self.options.compute)
        self.config.compute = self.engine.compute
        self.sample_rate = self.engine.sample_rate
        self._set_precision(self._initial_precision(budget))
        if self.options.engine == "torch":
            logger.info("decoder kernels compiled in %.2f s", self.engine.warm_up(self._chunk_length()))
        self.cache: AudioCache | None = None
        if self.options.cache:
            self.cache = AudioCache(budget.cache_limit_mb)
            budget.add_cache_listener(self._on_cache_limit)
        self.estimator = MemoryEstimator(
            self.profile, self._config_key(), budget_manager=budget,
            token_counter=self.engine.frontend.count_tokens,
            cache_bytes=lambda: self.cache.bytes if self.cache else 0, store=calibration,
            machine=machine_key(self.info),
        )
        self._cond = threading.Condition()
        self._running: dict[int, float] = {}
        self._job_ids = itertools.count()
        self._idle_trim: threading.Timer | None = None
        logger.info("backend ready: profile %s, %s", self.profile.name, self.config)

    # -- construction helpers -----------------------------------------------------------------------

    def _initial_precision(self, budget: MemoryBudgetManager) -> str:
        if self.options.engine == "reference":
            return "fp32"
        if self.options.quantization is not None:
            return self.options.quantization
        from .runtime.quantize import QuantizationStrategy

        return QuantizationStrategy.for_profile(self.profile, budget.available_mb()).mode

    def _set_precision(self, precision: str) -> None:
        """Quantize the shared model's weights to ``precision`` (in place: the fp32 copy is freed)."""
        if precision == self.config.quantization:
            return
        from .runtime.quantize import QuantizationStrategy, quantize_

        if PRECISIONS.index(precision) < PRECISIONS.index(self.config.quantization):
            raise ValueError(f"cannot raise precision from {self.config.quantization} to {precision} in place")
        # The profile's weight-only/dynamic choice, but no layer-wise calibration pass: this runs at
        # start-up and when the planner degrades a busy service, where calibrating over dozens of
        # sentences would cost minutes (``python -m experiments.bench_quantize`` measures it).
        row = self.profile.quantization
        strategy = QuantizationStrategy(mode=precision, weight_only=row.weight_only or precision == "int4",
                                        dynamic=row.dynamic and precision == "int8")
        quantize_(self.engine.model, strategy)
        self.config.quantization = precision
        gc.collect()
        logger.info("model weights now %s", precision)

    def _chunk_length(self) -> int | None:
        """The decoder chunk now; ``None`` for the onnxruntime reference, which cannot chunk."""
        return self.config.chunk_length if self.options.engine == "torch" else None

    def _config_key(self, chunk_length: int | None = None, quantization: str | None = None) -> ConfigKey:
        chunk = None if self.options.engine == "reference" else (chunk_length or self.config.chunk_length)
        return ConfigKey(self.options.engine, quantization or self.config.quantization, chunk,
                         self.config.num_threads, self.config.compute)

    def _on_cache_limit(self, limit_mb: float) -> None:
        self.config.cache_limit = limit_mb
        if self.cache is not None:
            self.cache.set_limit_mb(limit_mb)

    # -- the seed's API -----------------------------------------------------------------------------

    @property
    def memory_budget_manager(self) -> MemoryBudgetManager:
        return self.monitor.memory_budget_manager

    def enforce_limits(self) -> bool:
        """May synthesis start at all right now (is the safety margin free)?"""
        return self.memory_budget_manager.enforce_limits()

    def hardware(self) -> dict:
        payload = hardware_payload(self.info, self.profile)
        payload["selected_configuration"] = self.config.to_dict()
        payload["runtime_features"] = {k: getattr(self.options, k) for k in ("budget", "affinity", "estimation", "cache")}
        payload["engine"] = self.options.engine
        return payload

    def system_status(self) -> dict:
        status = self.monitor.status()
        with self._cond:
            status["running_jobs"] = len(self._running)
        if self.cache is not None:
            status["cache"] = self.cache.stats().to_dict()
        return status

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
        return {"status": "cleared", "freed_mb": round(freed / 2**20, 3),
                "freed_rss_mb": round(before - current_rss_mb(), 1)}

    def optimize_for_hardware(self) -> dict:
        """Clear caches and return free memory to the OS (its ``freed_rss_mb`` is measured as in
        :meth:`clear_cache`), then re-read resources — which then see that memory free — and adjust the
        configuration if the machine calls for it."""
        freed_rss_mb = self.clear_cache()["freed_rss_mb"]
        previous = self.config.to_dict()
        status = self.monitor.status()
        budget = self.memory_budget_manager
        budget.adjust_cache_limit()
        selected = self.profile.selected_configuration
        new = dict(previous, cache_limit=budget.cache_limit_mb)
        reasons = []
        risk = status["throttling_risk"]
        if risk["memory_critical"] or not status["memory_budget_safe"]:
            new["chunk_length"] = max(MIN_CHUNK_LENGTH, previous["chunk_length"] // 2)
            reasons.append("memory is short: smaller decoder chunks")
        elif previous["chunk_length"] < (self.options.chunk_length or selected.chunk_length):
            new["chunk_length"] = min(previous["chunk_length"] * 2, self.options.chunk_length or selected.chunk_length)
            reasons.append("memory recovered: larger decoder chunks")
        if risk["cpu_maxed"] or risk["thermal_likely"]:
            new["num_threads"] = max(1, previous["num_threads"] // 2)
            reasons.append("CPU maxed or thermal throttling likely: fewer threads")
        if new == previous:
            return {"status": "optimal", "message": "No adjustments needed", "config": previous,
                    "freed_rss_mb": freed_rss_mb}
        self.config.chunk_length = new["chunk_length"]
        self.config.cache_limit = new["cache_limit"]
        if new["num_threads"] != previous["num_threads"]:
            self.config.num_threads = new["num_threads"]
            self.engine.set_num_threads(new["num_threads"])
        self.estimator.set_config(self._config_key())
        logger.info("re-optimized: %s", "; ".join(reasons) or "cache limit follows memory")
        return {"status": "adjusted", "previous_config": previous, "new_config": self.config.to_dict(),
                "reasons": reasons, "freed_rss_mb": freed_rss_mb}

    # -- admission ----------------------------------------------------------------------------------

    def _admit(self, tokens: int) -> tuple[int, Plan]:
        """Decide how (and whether) a request of ``tokens`` phoneme ids runs; blocks while it waits.

        Returns the job's id and plan, with its reservation already counted: recorded under the same
        lock as the decision, so that a request admitted right after sees it.
        """
        with self._cond:
            plan = self._plan(tokens)
            job = next(self._job_ids)
            self._running[job] = plan.reserved_mb
            return job, plan

    def _plan(self, tokens: int) -> Plan:
        """The plan for ``tokens``, waiting for running jobs while memory is short (caller holds the lock)."""
        if not self.options.budget:
            return Plan(self._chunk_length(), None, 0.0)
        budget = self.memory_budget_manager
        deadline = time.monotonic() + self.options.wait_timeout_s
        while True:
            budget.adjust_cache_limit()
            reserved = sum(self._running.values())
            plan, decision = self._plan_once(tokens, reserved)
            if plan is not None:
                return plan
            remaining = deadline - time.monotonic()
            if self._running and remaining > 0:
                logger.info("waiting for %d running job(s) to free memory", len(self._running))
                self._cond.wait(remaining)
                continue
            raise SynthesisRefused(decision.reason, decision.required_mb, decision.available_mb,
                                   decision.safety_margin_mb)

    def _plan_once(self, tokens: int, reserved: float):
        """One pass down the degradation ladder; returns (plan, None) or (None, last decision)."""
        budget = self.memory_budget_manager
        if not self.options.estimation:
            decision = budget.check(reserved)
            return (Plan(self._chunk_length(), None, 0.0), None) if decision.allowed else (None, decision)
        degraded: list[str] = []
        chunk = self._chunk_length()
        while True:
            estimated = self.estimator.predict_mb(tokens, self._config_key(chunk))
            required = self.estimator.required_mb(estimated)
            decision = budget.check(required + reserved)
            if decision.allowed:
                return Plan(chunk, estimated, required, tuple(degraded)), None
            if chunk is not None and chunk // 2 >= MIN_CHUNK_LENGTH:
                chunk //= 2
                degraded.append(f"chunk_length {chunk}")
                continue
            lower = self._lower_precision(tokens, chunk, estimated)
            if lower is None:
                return None, decision
            self._set_precision(lower)
            self.estimator.set_config(self._config_key())
            degraded.append(f"quantization {lower}")

    def _lower_precision(self, tokens: int, chunk: int | None, estimated: float) -> str | None:
        """The next lower precision, if the estimator expects it to need less than ``estimated`` MB."""
        if self.options.engine != "torch" or self.config.quantization == PRECISIONS[-1]:
            return None
        lower = PRECISIONS[PRECISIONS.index(self.config.quantization) + 1]
        then = self.estimator.predict_mb(tokens, self._config_key(chunk, lower))
        return lower if then < estimated else None

    # -- synthesis ----------------------------------------------------------------------------------

    def _check_text(self, text: str) -> str:
        validate_text(text)
        if len(text) > self.config.max_text_length:
            raise TextTooLong(len(text), self.config.max_text_length)
        return text

    def stream(
        self, text: str, options: SynthesisOptions | None = None, stats: SynthesisStats | None = None,
        result: dict | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield audio chunks; admission happens before the first chunk. ``result`` (if given) receives
        the plan and token count, for callers that report them."""
        self._check_text(text)
        opts = options or SynthesisOptions()
        stats = stats if stats is not None else SynthesisStats()
        stats.started = time.perf_counter()
        key = None
        if self.cache is not None:
            key = AudioCache.key(text, engine=self.options.engine, quantization=self.config.quantization,
                                 noise_scale=opts.noise_scale, length_scale=opts.length_scale,
                                 noise_w=opts.noise_w, seed=opts.seed)
            hit = self.cache.get(key)
            if hit is not None:
                stats.first_audio_s = time.perf_counter() - stats.started
                stats.samples = len(hit)
                stats.latency_s = stats.first_audio_s
                if result is not None:
                    result.update(cached=True, plan=None, tokens=None)
                for start in range(0, len(hit), HIT_CHUNK_SAMPLES):
                    yield from_pcm16(hit[start : start + HIT_CHUNK_SAMPLES])
                return
        sentences = self.engine.frontend.sentences(text)
        tokens = sum(len(s.ids) for s in sentences)
        job, plan = self._admit(tokens)
        if result is not None:
            result.update(cached=False, plan=plan, tokens=tokens)
        chunks: list[np.ndarray] = []
        try:
            first = opts.first_chunk_length
            if first is None and plan.chunk_length is not None:
                first = min(FIRST_CHUNK_LENGTH, plan.chunk_length)
            resolved = self.engine.resolve(opts, chunk_length=plan.chunk_length, first_chunk_length=first)
            for chunk in self.engine.stream_sentences(sentences, resolved, stats):
                if key is not None:
                    chunks.append(pcm16(chunk))  # what the cache keeps: half a float32 copy
                yield chunk
        finally:
            with self._cond:
                del self._running[job]
                idle = not self._running
                self._cond.notify_all()
            if idle:
                self._schedule_idle_trim()
        if key is not None and chunks:
            self.cache.put(key, chunks)

    def _schedule_idle_trim(self) -> None:
        """Hand freed memory back to the OS once the service has been idle for
        :data:`IDLE_TRIM_DELAY_S`, so its RSS returns to its resting level after a burst.

        Deferred rather than done as the last job ends: its audio, the server's response bytes and the
        cache entry are freed or made only after that moment, and a trim then left them resident (the
        service's RSS crept up by up to 11 % per burst of requests).
        """
        with self._cond:
            if self._idle_trim is not None:
                self._idle_trim.cancel()
            self._idle_trim = threading.Timer(IDLE_TRIM_DELAY_S, self._trim_if_idle)
            self._idle_trim.daemon = True
            self._idle_trim.start()

    def _trim_if_idle(self) -> None:
        with self._cond:
            if self._running:
                return  # the job now running schedules the next trim when it ends
            self._idle_trim = None
        release_free_memory()

    def synthesize(self, text: str, options: SynthesisOptions | None = None) -> SynthesisResult:
        """Whole-utterance synthesis with its timings and the plan it ran under."""
        stats = SynthesisStats()
        info: dict = {}
        chunks = list(self.stream(text, options, stats, result=info))
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        audio_s = len(audio) / self.sample_rate
        plan: Plan | None = info.get("plan")
        tokens = info.get("tokens")
        if tokens is None:
            tokens = self.engine.frontend.count_tokens(text)
        return SynthesisResult(
            audio=audio, sample_rate=self.sample_rate, latency_s=stats.latency_s,
            first_audio_s=stats.first_audio_s or stats.latency_s, audio_s=audio_s,
            rtf=stats.latency_s / audio_s if audio_s else float("nan"), text_tokens=tokens,
            estimated_mb=plan.estimated_mb if plan else None,
            config={"engine": self.options.engine, "quantization": self.config.quantization,
                    "num_threads": self.config.num_threads, "compute": self.config.compute,
                    "chunk_length": plan.chunk_length if plan else self._chunk_length()},
            cached=info.get("cached", False), degraded=plan.degraded if plan else (),
        )

    def close(self) -> None:
        """Undo process-wide changes (CPU affinity, thread count)."""
        if self.affinity is not None:
            self.affinity.restore()
