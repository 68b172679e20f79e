"""Trial bodies: what a worker does for one trial, selected by import path (``trial.body`` in the config).

``tts`` is the experiment: the adaptive backend under one ablation. ``memory_probe`` allocates and holds
real memory for a while; it exercises the supervision itself (does a cap really kill, does a hang time
out) on any machine, and is what the harness's own tests run in real workers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from experiments.trial import TrialBody, TrialRequest

MIB = 1024 * 1024
#: Synthesized once when a worker loads, so no trial pays for first-call initialisation.
WARMUP_TEXT = "Warm up."


def tts(options: dict[str, Any]) -> TrialBody:
    """Load :class:`SmartAdaptiveBackend` once for the worker's condition; each trial then runs
    ``request.concurrency`` simultaneous ``synthesize`` calls on it (one shared model, as a server does).

    The row reports the slowest request (a trial is done when its last request is); one refusal makes
    the trial ``refused``, one exception fails it. The audio cache is off: the workload repeats texts
    on purpose, and a cache hit would measure the cache instead of synthesis.
    """
    from adaptive_tts.backend import BackendOptions, SmartAdaptiveBackend, SynthesisRefused, TextTooLong

    backend = SmartAdaptiveBackend(
        profile=options["profile"],
        options=BackendOptions(
            budget=options["budget"],
            affinity=options["affinity"],
            estimation=options["estimation"],
            engine=options["engine"],
            quantization=options["quantization"],
            chunk_length=options["chunk_length"],
            num_threads=options["num_threads"],
            compute=options["compute"],
            cache=False,
        ),
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
        if refusals:
            refused = refusals[0]
            if isinstance(refused, TextTooLong):  # the profile's max_text_length
                return {"status": "refused", "error": str(refused), "requests_ok": len(results)}
            return {
                "status": "refused",
                "error": refused.reason,
                "required_mb": refused.required_mb,
                "available_mb": refused.available_mb,
                "requests_ok": len(results),
            }
        slowest = max(results, key=lambda result: result.latency_s)
        return {
            "latency_ms": slowest.latency_s * 1000,
            "first_audio_ms": slowest.first_audio_s * 1000,
            "audio_s": slowest.audio_s,
            "rtf": slowest.rtf,
            "estimated_mb": slowest.estimated_mb,
            "text_tokens": slowest.text_tokens,
            "requests_ok": len(results),
            **{key: slowest.config[key] for key in ("engine", "quantization", "num_threads", "chunk_length", "compute")},
        }

    return run


def memory_probe(options: dict[str, Any]) -> TrialBody:
    """Write ``alloc_mb`` MB (every page resident), hold it ``hold_s`` seconds, free it."""
    alloc_bytes = int(float(options.get("alloc_mb", 0)) * MIB)
    hold_s = float(options.get("hold_s", 0))

    def run(request: TrialRequest) -> dict[str, Any]:
        start = time.perf_counter()
        held = bytearray(b"\x01") * alloc_bytes
        time.sleep(hold_s)
        del held
        return {"latency_ms": (time.perf_counter() - start) * 1000, "engine": "memory_probe"}

    return run
