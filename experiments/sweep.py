"""One condition of the ablation study, end to end: plan the trials, skip those already on disk, run the
rest in supervised workers on the (simulated) device, append a row per trial.

This is the library under ``python -m experiments.run``; a Hydra multirun calls it once per condition
with the same run id, so all conditions of a sweep land in one dataset.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from experiments.floor import load_or_measure_floor
from experiments.limits import Device, DeviceSpec, format_cpus, host_cpus, host_memory_mb
from experiments.results import RowStore
from experiments.trial import Supervisor, TrialRequest
from experiments.workload import MemoryLevels, PlannedTrial, Workload, cut_text, plan

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Ablation:
    name: str
    budget: bool
    affinity: bool
    estimation: bool


@dataclass(frozen=True)
class EngineChoice:
    """The engine and its settings; None is the profile's choice (the row records what was used)."""

    name: str
    quantization: str | None = None
    num_threads: int | None = None
    chunk_length: int | None = None
    #: auto: bf16 on CPUs with native bf16, else fp32 (the row records what was used)
    compute: str = "auto"


@dataclass(frozen=True)
class MemoryPolicy:
    """How the runtime decides about memory: the budget's safety margin (``seed`` table or
    ``calibrated`` from measurements) and where the estimator's constants come from (``calibrated``
    on this device before the trials, or the ``seed`` table, explicitly uncalibrated)."""

    budget_policy: str = "calibrated"
    estimator_constants: str = "calibrated"

    def __post_init__(self) -> None:
        from adaptive_tts.runtime.budget import BUDGET_POLICIES

        if self.budget_policy not in BUDGET_POLICIES:
            raise ValueError(f"unknown budget.policy {self.budget_policy!r}; valid: {', '.join(BUDGET_POLICIES)}")
        if self.estimator_constants not in ("calibrated", "seed"):
            raise ValueError(f"unknown estimator.constants {self.estimator_constants!r}; valid: calibrated, seed")


@dataclass(frozen=True)
class TrialSettings:
    body: str = "experiments.bodies:tts"
    options: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 300.0
    startup_timeout_s: float = 300.0
    max_trials_per_worker: int | None = None


@dataclass(frozen=True)
class SweepSpec:
    """Everything one condition needs; built from the Hydra config by :meth:`from_config`."""

    run_id: str
    results_dir: Path
    ablation: Ablation
    engine: EngineChoice
    device: DeviceSpec
    workload: Workload
    trial: TrialSettings = field(default_factory=TrialSettings)
    memory: MemoryPolicy = field(default_factory=MemoryPolicy)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SweepSpec:
        hw, wl = cfg.hardware, cfg.workload
        levels = wl.get("memory")
        concurrency = wl.concurrency
        concurrency = tuple(concurrency) if not isinstance(concurrency, int) else concurrency
        return cls(
            run_id=cfg.run_id or default_run_id(),
            results_dir=Path(cfg.results_dir),
            ablation=Ablation(**cfg.ablation),
            engine=EngineChoice(**cfg.engine),
            device=DeviceSpec.for_profile(
                hw.profile,
                simulate=hw.simulate,
                cores=hw.cores,
                background_mb=wl.background_mb,
                mechanism=hw.mem_cap_mechanism,
            ),
            workload=Workload(
                name=wl.name,
                lengths=tuple(wl.lengths),
                iterations=wl.iterations,
                concurrency=concurrency,
                background_mb=wl.background_mb,
                memory=None
                if levels is None
                else MemoryLevels(
                    free_above_floor_mb=tuple(levels.free_above_floor_mb),
                    kinds=tuple(levels.kinds),
                    swing_mb=levels.swing_mb,
                    step_s=tuple(levels.step_s),
                    seed=levels.seed,
                ),
            ),
            trial=TrialSettings(**OmegaConf.to_container(cfg.trial, resolve=True)),
            memory=MemoryPolicy(budget_policy=cfg.budget.policy, estimator_constants=cfg.estimator.constants),
        )

    @property
    def run_dir(self) -> Path:
        return self.results_dir / self.run_id

    @property
    def condition(self) -> dict[str, Any]:
        """What distinguishes this condition's trials from any other's in the same run."""
        data = asdict(self)
        for per_run in ("run_id", "results_dir"):
            data.pop(per_run)
        for per_trial_handling in ("timeout_s", "startup_timeout_s", "max_trials_per_worker"):
            data["trial"].pop(per_trial_handling)
        return data

    @property
    def condition_name(self) -> str:
        digest = hashlib.blake2b(json.dumps(self.condition, sort_keys=True).encode(), digest_size=6).hexdigest()
        return f"{self.ablation.name}-{self.device.profile}-{self.engine.name}-{self.workload.name}-{digest}"

    def body_options(self) -> dict[str, Any]:
        return {
            "profile": self.device.profile,
            "budget": self.ablation.budget,
            "affinity": self.ablation.affinity,
            "estimation": self.ablation.estimation,
            "engine": self.engine.name,
            "quantization": self.engine.quantization,
            "num_threads": self.engine.num_threads,
            "chunk_length": self.engine.chunk_length,
            "compute": self.engine.compute,
            "budget_policy": self.memory.budget_policy,
            "estimator_constants": self.memory.estimator_constants,
            "calibration_path": str(self.calibration_path),
            **self.trial.options,
        }

    @property
    def calibration_path(self) -> Path:
        """The harness's calibration file: beside the runs, keyed inside by device and configuration,
        so every run on this device reuses it and a fresh clone measures its own."""
        return self.results_dir / "calibration.json"

    @property
    def calibrates(self) -> bool:
        """Whether this condition fits the estimator on the device before its trials."""
        return (
            self.ablation.estimation
            and self.memory.estimator_constants == "calibrated"
            and self.trial.body == "experiments.bodies:tts"
        )


@cache
def default_run_id() -> str:
    """A new run's id, shared by every job of one ``-m`` sweep: the basic launcher's jobs run in this
    process (the id is fixed at first use), Slurm jobs of one submitit array share the array's job id.
    submitit's local executor runs each job in a process of its own, so such a sweep names its
    ``run_id`` (conf/hydra/launcher/local.yaml)."""
    if array_job := os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"slurm-{array_job}"
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def trial_id(trial_key: str) -> int:
    """A stable 63-bit id from the trial's key (condition name with a digest of everything that
    defines the condition, length, iteration): a rerun finds its finished trials by id, and no two
    conditions of a run collide, whatever is swept."""
    return int.from_bytes(hashlib.blake2b(trial_key.encode(), digest_size=8).digest(), "big") >> 1


def _git_commit() -> str:
    """HEAD, marked ``-dirty`` when tracked files differ from it (the rows then are not reproducible
    from the commit alone)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO_ROOT, check=False).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def environment(profile: str) -> dict[str, Any]:
    """The environment columns; "auto" resolves to the profile the runtime matches this machine to."""
    from adaptive_tts.runtime.hardware import detect_hardware, select_profile

    info = detect_hardware(probe_gpu=False)
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {
        "git_commit": _git_commit(),
        "host": socket.gethostname(),
        "os": platform.platform(),
        "cpu_model": info.cpu_model,
        "torch_version": torch_version,
        "profile": select_profile(info, profile).name,
        "host_cpus": len(host_cpus()),
        "host_mem_mb": info.total_ram_mb,
    }


@dataclass(frozen=True)
class SweepResult:
    run_dir: Path
    planned: int
    skipped: int  # already on disk from an earlier, interrupted run
    ran: int
    statuses: Counter[str]


def _calibrate(spec: SweepSpec, device: DeviceSpec, settings: TrialSettings) -> dict[str, Any]:
    """Fit the estimator on ``device`` (no background) for every configuration the condition's planner
    may choose, unless the calibration file has them all; a worker of its own does it."""
    quiet = device.with_background(0.0)
    options = {**spec.body_options(), "calibration_max_length": max(spec.workload.lengths)}
    with (
        Device(quiet) as live,
        Supervisor(
            live,
            "experiments.bodies:calibrate",
            options,
            log_dir=spec.run_dir / "workers" / "calibration",
            timeout_s=settings.timeout_s * 10,
            startup_timeout_s=settings.startup_timeout_s,
        ) as supervisor,
    ):
        outcome = supervisor.run(TrialRequest(0, "", 1))
    if outcome["status"] != "ok":
        raise RuntimeError(f"calibrating the estimator on {device.profile} failed: {outcome.get('error')}")
    logger.info(
        "estimator calibration: %d configuration(s) fitted now (file %s)", outcome["requests_ok"], spec.calibration_path
    )
    return outcome


def _level_device(spec: SweepSpec, trial: PlannedTrial, floor_mb: float | None) -> DeviceSpec:
    """The device of one memory level: its background app holds the cap less the level's free MB."""
    levels = spec.workload.memory
    if levels is None:
        return spec.device
    free = floor_mb + trial.free_above_floor_mb
    swing = levels.swing_mb if trial.background_kind == "dynamic" else 0.0
    if free + swing / 2 > spec.device.mem_cap_mb:
        raise ValueError(
            f"memory level free_above_floor_mb={trial.free_above_floor_mb:g} leaves {free:.0f} MB free "
            f"(floor {floor_mb:.0f} MB{f', swing {swing:.0f} MB' if swing else ''}), more than the "
            f"device's {spec.device.mem_cap_mb:.0f} MB of RAM"
        )
    # A level is the least memory left free: a dynamic app peaks at the static app's size.
    return spec.device.with_background(
        spec.device.mem_cap_mb - free - swing / 2, swing_mb=swing, step_s=levels.step_s, seed=levels.seed
    )


def _check_memory_sweep(spec: SweepSpec) -> None:
    """A memory sweep means something only under a cap the kernel enforces on resident memory."""
    dev = spec.device
    if not dev.simulated or dev.mem_cap_mb is None:
        raise ValueError(
            f"workload {spec.workload.name!r} sweeps memory levels: it needs a simulated device "
            "(hardware=m1_air, say, or +experiment=memory_sweep)"
        )
    if dev.mechanism == "rlimit":
        raise ValueError(
            "mem_cap_mechanism=rlimit caps address space, not resident memory: a memory sweep "
            "needs cgroup_v2 or cgroup_v1"
        )
    host_mb = host_memory_mb()
    if dev.mem_cap_mb > host_mb:
        raise ValueError(f"a {dev.mem_cap_mb:.0f} MB cap cannot bind on this {host_mb:.0f} MB host")
    for level in spec.workload.memory.free_above_floor_mb:  # the floor is >= 0: caught before measuring it
        if level >= dev.mem_cap_mb:
            raise ValueError(
                f"memory level free_above_floor_mb={level:g} leaves more free than the device's "
                f"{dev.mem_cap_mb:.0f} MB of RAM"
            )


def run_sweep(spec: SweepSpec, *, resolved_config: str | None = None, progress: bool = True) -> SweepResult:
    """Run every trial of ``spec`` not yet in its run folder; each finished trial is on disk at once.

    A memory sweep first measures (or reads back) the device's floor; a condition with calibrated
    estimation first fits the estimator on the device. Trials then run level by level, each level on
    a device of its own (cap, background app, worker).
    """
    store = RowStore(spec.run_dir)
    if resolved_config is not None:
        config_path = spec.run_dir / "configs" / f"{spec.condition_name}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(resolved_config)
    keyed = [(f"{spec.condition_name}/{t.key}", t) for t in plan(spec.workload)]
    trials = [(trial_id(key), key, t) for key, t in keyed]
    done = store.done()
    todo = [trial for trial in trials if trial[0] not in done]
    logger.info(
        "run %s, %s: %d trials, %d already done", spec.run_id, spec.condition_name, len(trials), len(trials) - len(todo)
    )
    statuses: Counter[str] = Counter()
    if not todo:
        return SweepResult(spec.run_dir, len(trials), len(trials), 0, statuses)

    dev = spec.device
    settings = spec.trial
    floor_mb = None
    if spec.workload.memory is not None:
        _check_memory_sweep(spec)
        longest = cut_text(max(spec.workload.lengths), 0)
        floor_mb = load_or_measure_floor(
            spec.run_dir, dev, spec.body_options(), longest, timeout_s=settings.startup_timeout_s
        ).floor_mb
    if spec.calibrates:
        _calibrate(spec, dev, settings)
    base = {
        "run_id": spec.run_id,
        **environment(dev.profile),
        "simulated": dev.simulated,
        "mem_cap_mb": dev.mem_cap_mb,
        "cpus": format_cpus(dev.cpus),
        "ablation": spec.ablation.name,
        "budget_on": spec.ablation.budget,
        "affinity_on": spec.ablation.affinity,
        "estimation_on": spec.ablation.estimation,
        "engine": spec.engine.name,
        "quantization": spec.engine.quantization,
        "num_threads": spec.engine.num_threads,
        "chunk_length": spec.engine.chunk_length,
        "workload": spec.workload.name,
        "budget_policy": spec.memory.budget_policy,
        "estimator_constants": spec.memory.estimator_constants if spec.ablation.estimation else None,
        "floor_mb": floor_mb,
    }
    levels: dict[DeviceSpec, list[tuple[int, str, PlannedTrial]]] = {}
    for trial in todo:
        levels.setdefault(_level_device(spec, trial[2], floor_mb), []).append(trial)
    with (
        Device(dev) as device,
        tqdm(total=len(trials), initial=len(trials) - len(todo), desc=spec.ablation.name, disable=not progress) as bar,
    ):
        for level, level_trials in levels.items():
            device.set_background(level)  # one background app, resized: a fresh one per level costs seconds
            with Supervisor(
                device,
                settings.body,
                spec.body_options(),
                log_dir=spec.run_dir / "workers" / spec.condition_name,
                timeout_s=settings.timeout_s,
                startup_timeout_s=settings.startup_timeout_s,
                max_trials_per_worker=settings.max_trials_per_worker,
            ) as supervisor:  # a fresh worker per level: its memory watch must not see the level change
                for tid, key, planned in level_trials:
                    started_at = datetime.now(timezone.utc)
                    outcome = supervisor.run(TrialRequest(tid, planned.text, planned.concurrency))
                    store.write(
                        {
                            **base,
                            "background_mb": level.background_mb,
                            "background_swing_mb": level.background_swing_mb,
                            "background_kind": planned.background_kind if spec.workload.memory else None,
                            "free_mb": (
                                level.mem_cap_mb - level.background_mb - level.background_swing_mb / 2
                                if level.mem_cap_mb
                                else None
                            ),
                            "free_above_floor_mb": planned.free_above_floor_mb,
                            "concurrency": planned.concurrency,
                            **{column: value for column, value in outcome.items() if value is not None},
                            "trial_id": tid,
                            "trial_key": key,
                            "started_at": started_at,
                            "text_length": planned.text_length,
                            "iteration": planned.iteration,
                            "text": planned.text,
                        }
                    )
                    statuses[outcome["status"]] += 1
                    bar.set_postfix(statuses, refresh=False)
                    bar.update()
    return SweepResult(spec.run_dir, len(trials), len(trials) - len(todo), len(todo), statuses)
