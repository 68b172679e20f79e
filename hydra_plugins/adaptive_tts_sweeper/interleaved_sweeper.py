"""A ``-m`` sweep as one interleaved design: every condition of the sweep in every job.

Hydra's basic sweeper launches one job per combination of the swept values, and its launcher runs them
one after another (or, on Slurm, as an array of conditions): each condition in its own block of time,
so the machine's drift reads as a feature effect. This sweeper composes every condition first, checks
them all before anything runs, writes them to ``<run>/sweep.json``, and launches jobs that each run a
*range of blocks* of all conditions (:func:`experiments.sweep.run_design`). One job holds them all by
default; ``blocks_per_job=N`` makes a job array of blocks, so that each node interleaves the conditions
itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

logger = logging.getLogger(__name__)


class InterleavedSweeper(Sweeper):
    """Hydra's basic sweep grammar (``a=1,2 b=x,y``: the cartesian product), run as blocks."""

    def __init__(self, blocks_per_job: int | None = None) -> None:
        super().__init__()
        self.blocks_per_job = blocks_per_job
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from experiments.design import split_blocks
        from experiments.sweep import plan_sweep

        assert self.config is not None and self.hydra_context is not None
        parsed = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(arguments)
        (conditions,) = BasicSweeper.split_arguments(parsed, None)
        configs = [
            self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides)) for overrides in conditions
        ]
        resolved = []
        for cfg in configs:
            with open_dict(cfg):
                del cfg["hydra"]  # per job, and unresolvable before the job runs (hydra.job.num)
            resolved.append(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
        try:
            sweep = plan_sweep(resolved)  # every condition checked here, before any job starts
            ranges = split_blocks(sweep.n_blocks, self.blocks_per_job)
        except ValueError as error:  # bad input: one line naming it, not a traceback
            raise SystemExit(f"error: {error}") from None
        path = sweep.run_dir.resolve() / "sweep.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"conditions": [OmegaConf.to_container(c) for c in sweep.configs]}, indent=1))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        own = ("run_id", "design.plan", "design.blocks")  # set per job below
        fixed = [
            override.input_line
            for override in parsed
            if not override.is_sweep_override() and override.get_key_element().lstrip("+~") not in own
        ]
        logger.info(
            "sweep of %d condition(s), %d block(s), in %d job(s): run %s",
            len(sweep.configs),
            sweep.n_blocks,
            len(ranges),
            sweep.run_dir,
        )
        batch = [
            [*fixed, f"run_id={sweep.run_id}", f"design.plan={path}", f"design.blocks=[{start},{stop}]"]
            for start, stop in ranges
        ]
        results = self.launcher.launch(batch, initial_job_idx=0)
        for result in results:
            _ = result.return_value  # raises if the job failed
        return [results]
