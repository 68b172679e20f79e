"""The conditions of an ablation study, end to end: plan the trials, skip those already on disk, run the
rest interleaved (experiments/design.py) in supervised workers on the (simulated) device, append a row
per trial.

This is the library under ``python -m experiments.run``; a Hydra multirun hands all its conditions to
one :func:`run_design` (the interleaved sweeper, ``hydra_plugins/adaptive_tts_sweeper``), or a block
range of them to each job of a job array, so all conditions of a sweep land in one dataset.
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
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cache
from itertools import groupby
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from experiments.design import RESTART_EVERY, Design, Slot, block_range, blocks_of, schedule
from experiments.floor import load_or_measure_floor
from experiments.limits import Device, DeviceSpec, format_cpus, host_cpus, host_memory_mb
from experiments.results import RowStore
from experiments.trial import Supervisor, TrialRequest
from experiments.workload import MemoryLevels, PlannedTrial, Workload, cut_text, plan

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Ablation:
    """Which runtime features a condition turns on. ``replicate_of``: this condition is an A/A copy of
    that ablation (same features, its own name and trials), whose difference to it is the noise floor."""

    name: str
    budget: bool
    affinity: bool
    estimation: bool
    replicate_of: str | None = None


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
                background_cpu=wl.get("background_cpu", 0),
            ),
            workload=Workload(
                name=wl.name,
                lengths=tuple(wl.lengths),
                iterations=wl.iterations,
                concurrency=concurrency,
                background_mb=wl.background_mb,
                background_cpu=wl.get("background_cpu", 0),
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
        # Conditions named before A/A copies and CPU load existed keep their ids (and their runs resume).
        if data["ablation"]["replicate_of"] is None:
            data["ablation"].pop("replicate_of")
        if self.workload.background_cpu == 0:
            data["workload"].pop("background_cpu")
            data["device"].pop("background_cpu")
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


def design_of(cfg: DictConfig) -> Design:
    return Design(
        block_size=cfg.design.block_size,
        seed=cfg.design.seed,
        restart_every=cfg.design.get("restart_every", RESTART_EVERY),
    )


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's conditions checked and given one run id: what the interleaved sweeper writes to
    ``<run>/sweep.json`` and each job of the sweep runs a block range of."""

    configs: list[DictConfig]
    specs: list[SweepSpec]
    design: Design
    n_blocks: int

    @property
    def run_id(self) -> str:
        return self.specs[0].run_id

    @property
    def run_dir(self) -> Path:
        return self.specs[0].run_dir


def plan_sweep(configs: Sequence[DictConfig]) -> SweepPlan:
    """Check every condition of a sweep (each a composed config) and give them one run id (the
    first condition's, else a new one). Bad input fails here, before anything runs: a config error,
    a condition twice, a block size below 1, or design settings that differ between conditions."""
    configs = [cfg.copy() for cfg in configs]
    run_id = configs[0].run_id or default_run_id()
    for cfg in configs:
        cfg.run_id = run_id
    designs = {design_of(cfg) for cfg in configs}
    if len(designs) != 1:
        raise ValueError("design.block_size, seed and restart_every cannot be swept: one sweep is one design")
    (design,) = designs
    specs = [SweepSpec.from_config(cfg) for cfg in configs]
    _check_sweep(specs)
    n_blocks = len(blocks_of([plan(spec.workload) for spec in specs], design))
    return SweepPlan(configs, specs, design, n_blocks)


@cache
def default_run_id() -> str:
    """A new run's id, named by the launch time. A ``-m`` sweep fixes it once, in the interleaved
    sweeper, and passes it to every job; a Slurm job launched some other way shares its array's id."""
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


def _check_sweep(specs: Sequence[SweepSpec]) -> None:
    """One sweep is one run of distinct conditions of one kind (plain or memory levels), each of which
    can run here."""
    if not specs:
        raise ValueError("a sweep needs at least one condition")
    if len({spec.run_dir for spec in specs}) != 1:
        raise ValueError("the conditions of one sweep must share run_id and results_dir")
    names = Counter(spec.condition_name for spec in specs)
    if twice := [name for name, count in names.items() if count > 1]:
        raise ValueError(
            f"condition {twice[0]} appears twice in the sweep; an A/A control is a condition of its own "
            "(+ablation=baseline,baseline_repeat)"
        )
    if len({spec.workload.memory is None for spec in specs}) != 1:
        raise ValueError("a sweep cannot mix memory-level workloads with plain ones: their blocks differ")
    for spec in specs:  # every condition's, before any floor is measured
        if spec.workload.memory is not None:
            _check_memory_sweep(spec)


def _base_row(spec: SweepSpec, floor_mb: float | None) -> dict[str, Any]:
    """The columns every trial of the condition shares."""
    dev = spec.device
    return {
        "run_id": spec.run_id,
        **environment(dev.profile),
        "simulated": dev.simulated,
        "mem_cap_mb": dev.mem_cap_mb,
        "cpus": format_cpus(dev.cpus),
        "ablation": spec.ablation.name,
        "replicate_of": spec.ablation.replicate_of,
        "budget_on": spec.ablation.budget,
        "affinity_on": spec.ablation.affinity,
        "estimation_on": spec.ablation.estimation,
        "engine": spec.engine.name,
        "quantization": spec.engine.quantization,
        "num_threads": spec.engine.num_threads,
        "chunk_length": spec.engine.chunk_length,
        "workload": spec.workload.name,
        "background_cpu": spec.workload.background_cpu,
        "budget_policy": spec.memory.budget_policy,
        "estimator_constants": spec.memory.estimator_constants if spec.ablation.estimation else None,
        "floor_mb": floor_mb,
    }


@dataclass(frozen=True)
class _Scheduled:
    slot: Slot[PlannedTrial]
    trial_id: int
    key: str


def run_design(
    specs: Sequence[SweepSpec],
    design: Design | None = None,
    *,
    blocks: Sequence[int] | None = None,
    resolved_configs: Sequence[str] | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run every trial of the conditions ``specs`` in ``blocks`` (``[start, stop)``, None: all) that is
    not yet in their run folder, in the interleaved order of :mod:`experiments.design`; each finished
    trial is on disk at once, with its block and position.

    A memory sweep first measures (or reads back) the device's floor; a condition with calibrated
    estimation first fits the estimator on the device. Plain sweeps then keep one worker per
    condition warm and run the block's trials in their shuffled order, every condition's worker
    replaced at each epoch's first block (:class:`~experiments.design.Design`); memory sweeps give each
    condition's turn at a level a fresh worker on a device holding that level's background.
    """
    _check_sweep(specs)
    design = design or Design()
    run_dir = specs[0].run_dir
    store = RowStore(run_dir)
    for spec, resolved in zip(specs, resolved_configs or (), strict=False):
        config_path = run_dir / "configs" / f"{spec.condition_name}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(resolved)
    memory_sweep = specs[0].workload.memory is not None
    slots = schedule([plan(spec.workload) for spec in specs], design, by_condition=memory_sweep)
    chosen = block_range(blocks, slots[-1].block + 1 if slots else 0)
    keyed = [
        _Scheduled(slot, trial_id(key), key)
        for slot in slots
        if slot.block in chosen
        for key in [f"{specs[slot.condition].condition_name}/{slot.trial.key}"]
    ]
    done = store.done()
    todo = [entry for entry in keyed if entry.trial_id not in done]
    logger.info(
        "run %s: %d condition(s), blocks %d-%d: %d trials, %d already done",
        specs[0].run_id,
        len(specs),
        chosen.start,
        chosen.stop - 1,
        len(keyed),
        len(keyed) - len(todo),
    )
    statuses: Counter[str] = Counter()
    if not todo:
        return SweepResult(run_dir, len(keyed), len(keyed), 0, statuses)

    running = sorted({entry.slot.condition for entry in todo})
    floors: dict[int, float | None] = {}
    for c in running:
        spec = specs[c]
        floors[c] = None
        if memory_sweep:
            longest = cut_text(max(spec.workload.lengths), 0)
            floors[c] = load_or_measure_floor(
                run_dir, spec.device, spec.body_options(), longest, timeout_s=spec.trial.startup_timeout_s
            ).floor_mb
        if spec.calibrates:
            _calibrate(spec, spec.device, spec.trial)
    bases = {c: _base_row(specs[c], floor) for c, floor in floors.items()}

    with (
        ExitStack() as stack,
        tqdm(total=len(keyed), initial=len(keyed) - len(todo), desc="trials", disable=not progress) as bar,
    ):
        devices: dict[DeviceSpec, Device] = {}

        def device_of(spec: SweepSpec) -> Device:
            if spec.device not in devices:
                devices[spec.device] = stack.enter_context(Device(spec.device))
            return devices[spec.device]

        def supervisor_of(spec: SweepSpec, device: Device) -> Supervisor:
            settings = spec.trial
            return Supervisor(
                device,
                settings.body,
                spec.body_options(),
                log_dir=run_dir / "workers" / spec.condition_name,
                timeout_s=settings.timeout_s,
                startup_timeout_s=settings.startup_timeout_s,
                max_trials_per_worker=settings.max_trials_per_worker,
            )

        def run_one(entry: _Scheduled, supervisor: Supervisor, level: DeviceSpec) -> None:
            slot, planned = entry.slot, entry.slot.trial
            started_at = datetime.now(timezone.utc)
            outcome = supervisor.run(TrialRequest(entry.trial_id, planned.text, planned.concurrency))
            store.write(
                {
                    **bases[slot.condition],
                    "background_mb": level.background_mb,
                    "background_swing_mb": level.background_swing_mb,
                    "background_kind": planned.background_kind if memory_sweep else None,
                    "free_mb": (
                        level.mem_cap_mb - level.background_mb - level.background_swing_mb / 2
                        if level.mem_cap_mb
                        else None
                    ),
                    "free_above_floor_mb": planned.free_above_floor_mb,
                    "concurrency": planned.concurrency,
                    **{column: value for column, value in outcome.items() if value is not None},
                    "trial_id": entry.trial_id,
                    "trial_key": entry.key,
                    "block": slot.block,
                    "position": slot.position,
                    # a memory sweep's every turn is a fresh worker: its block is its epoch
                    "epoch": slot.block if memory_sweep else design.epoch(slot.block),
                    "started_at": started_at,
                    "text_length": planned.text_length,
                    "iteration": planned.iteration,
                    "text": planned.text,
                }
            )
            statuses[outcome["status"]] += 1
            bar.set_postfix(statuses, refresh=False)
            bar.update()

        if memory_sweep:
            for (_, c), turn in groupby(todo, key=lambda entry: (entry.slot.block, entry.slot.condition)):
                spec, entries = specs[c], list(turn)
                level = _level_device(spec, entries[0].slot.trial, floors[c])
                device = device_of(spec)
                device.set_background(level)  # one background app, resized: a fresh one per level costs seconds
                # a fresh worker per turn: its memory watch must not see the level change
                with supervisor_of(spec, device) as supervisor:
                    for entry in entries:
                        run_one(entry, supervisor, level)
        else:
            supervisors = {c: stack.enter_context(supervisor_of(specs[c], device_of(specs[c]))) for c in running}
            for supervisor in supervisors.values():  # all warm before the first block, held between trials
                supervisor.start()
                supervisor.hold()
            active, epoch = None, design.epoch(todo[0].slot.block)
            for entry in todo:
                c = entry.slot.condition
                if design.epoch(entry.slot.block) != epoch:  # every condition's worker anew, all warm again
                    epoch, active = design.epoch(entry.slot.block), None
                    logger.info("epoch %d from block %d: fresh workers", epoch, entry.slot.block)
                    for supervisor in supervisors.values():
                        supervisor.close_worker()
                    for supervisor in supervisors.values():
                        supervisor.start()
                        supervisor.hold()
                if active is not None and active != c:
                    supervisors[active].hold()
                run_one(entry, supervisors[c], specs[c].device)
                active = c
    return SweepResult(run_dir, len(keyed), len(keyed) - len(todo), len(todo), statuses)
