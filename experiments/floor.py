"""The memory floor of a simulated device: the least free memory in which one request succeeds.

A memory sweep sets its levels relative to this floor, not to a guess: "floor - 100 MB" is below what
the most frugal plan (lowest precision, smallest decoder chunk, one request) can run in, "floor + 2 GB"
is ample. It is measured by bisection under the device's real cap: each probe starts the background
app holding ``cap - free`` MB, starts a worker, runs one request of the sweep's longest text with
every runtime feature off and the frugal configuration forced, and records whether it finished or
was OOM-killed. The result (with every probe) is saved in the run folder and reused by every
condition of the run and by a resumed run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from experiments.limits import Device, DeviceSpec
from experiments.trial import Supervisor, TrialRequest

logger = logging.getLogger(__name__)

FLOOR_FILE = "floor.json"


@dataclass(frozen=True)
class Floor:
    floor_mb: float  # the least free MB (device cap less background) in which the probe succeeded
    resolution_mb: float
    text_length: int
    options: dict[str, Any]  # the frugal configuration the probe ran
    probes: tuple[tuple[float, str], ...]  # (free MB, status) of every probe, in order


def frugal_options(body_options: dict[str, Any]) -> dict[str, Any]:
    """The trial body's options with every runtime feature off and the cheapest configuration forced."""
    from adaptive_tts.backend import MIN_CHUNK_LENGTH
    from adaptive_tts.runtime.planner import PRECISIONS

    return {
        **body_options,
        "budget": False,
        "affinity": False,
        "estimation": False,
        "quantization": PRECISIONS[-1],
        "chunk_length": MIN_CHUNK_LENGTH,
    }


def probe_free(
    device: Device, free_mb: float, options: dict[str, Any], text: str, log_dir: Path, timeout_s: float
) -> str:
    """Run one frugal request in a fresh worker with ``free_mb`` of the device free; its status."""
    device.set_background(device.spec.with_background(device.spec.mem_cap_mb - free_mb))
    with Supervisor(
        device, "experiments.bodies:tts", options, log_dir, timeout_s=timeout_s, startup_timeout_s=timeout_s
    ) as supervisor:
        outcome = supervisor.run(TrialRequest(0, text, 1))
    logger.info("floor probe: %.0f MB free -> %s", free_mb, outcome["status"])
    return outcome["status"]


def measure_floor(
    device: DeviceSpec,
    body_options: dict[str, Any],
    text: str,
    log_dir: Path,
    *,
    low_mb: float = 64.0,
    high_mb: float = 2048.0,
    resolution_mb: float = 16.0,
    confirmations: int = 2,
    timeout_s: float = 300.0,
) -> Floor:
    """Bisect free memory between ``low_mb`` (must fail) and ``high_mb`` (must succeed), then confirm
    the answer ``confirmations`` more times, stepping up by ``resolution_mb`` while a confirmation
    fails (the threshold is a little noisy: page cache, allocator state)."""
    if device.mem_cap_mb is None:
        raise ValueError("a memory floor needs a simulated device with a memory cap (hardware.simulate=true)")
    if high_mb >= device.mem_cap_mb:
        high_mb = device.mem_cap_mb - 64
    options = frugal_options(body_options)
    probes: list[tuple[float, str]] = []
    live = Device(device.with_background(0.0))

    def ok(free_mb: float) -> bool:
        status = probe_free(live, free_mb, options, text, log_dir, timeout_s)
        probes.append((free_mb, status))
        if status not in ("ok", "oom"):
            raise RuntimeError(f"floor probe at {free_mb:.0f} MB free ended {status!r}; see {log_dir}")
        return status == "ok"

    with live:
        if not ok(high_mb):
            raise RuntimeError(f"one frugal request does not run even with {high_mb:.0f} MB free")
        if ok(low_mb):
            raise RuntimeError(f"one frugal request runs in {low_mb:.0f} MB: the floor is below the bisection range")
        low, high = low_mb, high_mb
        while high - low > resolution_mb:
            middle = (low + high) / 2
            if ok(middle):
                high = middle
            else:
                low = middle
        while not all(ok(high) for _ in range(confirmations)):
            high += resolution_mb
    return Floor(round(high, 1), resolution_mb, len(text), options, tuple(probes))


def load_or_measure_floor(
    run_dir: Path, device: DeviceSpec, body_options: dict[str, Any], text: str, **kwargs: Any
) -> Floor:
    """The run's floor from ``run_dir/floor.json``, measured first if the run has none yet."""
    path = run_dir / FLOOR_FILE
    if path.exists():
        data = json.loads(path.read_text())
        return Floor(**{**data, "probes": tuple(tuple(p) for p in data["probes"])})
    logger.info("measuring the memory floor of %s (%.0f MB) by bisection", device.profile, device.mem_cap_mb)
    floor = measure_floor(device, body_options, text, run_dir / "workers" / "floor", **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(floor), indent=2))
    tmp.replace(path)
    logger.info("memory floor: %.0f MB free (%d probes)", floor.floor_mb, len(floor.probes))
    return floor
