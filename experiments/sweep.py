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

from experiments.limits import Device, DeviceSpec, format_cpus, host_cpus
from experiments.results import RowStore
from experiments.trial import Supervisor, TrialRequest
from experiments.workload import Workload, plan

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

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SweepSpec:
        hw, wl = cfg.hardware, cfg.workload
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
                concurrency=wl.concurrency,
                background_mb=wl.background_mb,
            ),
            trial=TrialSettings(**OmegaConf.to_container(cfg.trial, resolve=True)),
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
            **self.trial.options,
        }


@cache
def default_run_id() -> str:
    """A new run's id, shared by every job of one ``-m`` sweep: local jobs run in this process (the id
    is fixed at first use), Slurm jobs of one submitit array share the array's job id."""
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


def run_sweep(spec: SweepSpec, *, resolved_config: str | None = None, progress: bool = True) -> SweepResult:
    """Run every trial of ``spec`` not yet in its run folder; each finished trial is on disk at once."""
    store = RowStore(spec.run_dir)
    if resolved_config is not None:
        config_path = spec.run_dir / "configs" / f"{spec.condition_name}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(resolved_config)
    keyed = [(f"{spec.condition_name}/L{t.text_length}/i{t.iteration}", t) for t in plan(spec.workload)]
    trials = [(trial_id(key), key, t) for key, t in keyed]
    done = store.done()
    todo = [trial for trial in trials if trial[0] not in done]
    logger.info("run %s, %s: %d trials, %d already done", spec.run_id, spec.condition_name, len(trials), len(trials) - len(todo))
    statuses: Counter[str] = Counter()
    if not todo:
        return SweepResult(spec.run_dir, len(trials), len(trials), 0, statuses)

    dev = spec.device
    base = {
        "run_id": spec.run_id,
        **environment(dev.profile),
        "simulated": dev.simulated,
        "mem_cap_mb": dev.mem_cap_mb,
        "cpus": format_cpus(dev.cpus),
        "background_mb": dev.background_mb,
        "ablation": spec.ablation.name,
        "budget_on": spec.ablation.budget,
        "affinity_on": spec.ablation.affinity,
        "estimation_on": spec.ablation.estimation,
        "engine": spec.engine.name,
        "quantization": spec.engine.quantization,
        "num_threads": spec.engine.num_threads,
        "chunk_length": spec.engine.chunk_length,
        "concurrency": spec.workload.concurrency,
        "workload": spec.workload.name,
    }
    settings = spec.trial
    with (
        Device(dev) as device,
        Supervisor(
            device,
            settings.body,
            spec.body_options(),
            log_dir=spec.run_dir / "workers" / spec.condition_name,
            timeout_s=settings.timeout_s,
            startup_timeout_s=settings.startup_timeout_s,
            max_trials_per_worker=settings.max_trials_per_worker,
        ) as supervisor,
        tqdm(total=len(trials), initial=len(trials) - len(todo), desc=spec.ablation.name, disable=not progress) as bar,
    ):
        for tid, key, planned in todo:
            started_at = datetime.now(timezone.utc)
            outcome = supervisor.run(TrialRequest(tid, planned.text, spec.workload.concurrency))
            store.write(
                {
                    **base,
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
