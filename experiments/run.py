"""``python -m experiments.run +ablation=affinity``: run one condition and print the run's summary.

``-m +ablation=baseline,budget,affinity,estimation`` sweeps all four into one run; ``run_id=ID`` resumes
a run. The work is :func:`experiments.sweep.run_sweep`; this is only the Hydra front end.
"""

from __future__ import annotations

import re
import sys

import hydra
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from experiments.results import read_rows, summarize
from experiments.sweep import REPO_ROOT, SweepSpec, run_sweep

#: The groups conf/config.yaml's defaults list chooses from.
DEFAULT_GROUPS = ("ablation", "hardware", "workload", "engine")


def accept_plus_for_default_groups(args: list[str]) -> list[str]:
    """Read ``+ablation=X`` as ``ablation=X`` (likewise for the other default groups).

    Hydra refuses to append a group its defaults list already chooses ("Multiple values for
    ablation"), yet both spellings are in use (``+ablation=affinity``, ``hardware=auto``); a group
    with a default can only ever mean "choose this option", so the ``+`` is dropped.
    """
    pattern = re.compile(rf"^\+(?=(?:{'|'.join(DEFAULT_GROUPS)})=)")
    return [pattern.sub("", arg) for arg in args]


def launcher_error(args: list[str]) -> str | None:
    """One line naming a ``hydra/launcher=NAME`` that does not load, or None.

    Hydra reports an unknown launcher, or one whose plugin is not installed (``local`` and ``slurm``
    build on hydra-submitit-launcher's configs), as a dozen lines of config search path; this composes
    the choice first and says which launchers there are, or which plugin to install.
    """
    names = [arg.split("=", 1)[1] for arg in args if arg.startswith("hydra/launcher=")]
    if not names:
        return None
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        try:
            compose("config", overrides=[f"hydra/launcher={names[-1]}"], return_hydra_config=True)
        except MissingConfigException as error:
            if (error.missing_cfg_file or "").rsplit("/", 1)[-1].startswith("submitit_"):
                return (
                    f"hydra/launcher={names[-1]} needs the hydra-submitit-launcher plugin, which is not installed: "
                    "pip install -e '.[slurm]'"
                )
            return f"unknown launcher hydra/launcher={names[-1]}; valid: {', '.join(error.options or ())}"
    return None


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    spec = SweepSpec.from_config(cfg)
    cfg.run_id = spec.run_id  # the saved config resumes this run
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    with logging_redirect_tqdm():
        result = run_sweep(spec, resolved_config=resolved, progress=cfg.progress)
    wl, dev = spec.workload, spec.device
    print(
        f"\nrun {spec.run_id} ({result.run_dir}): {result.ran} trials run, {result.skipped} already done\n"
        f"device: {dev.profile}, simulated={dev.simulated}, mem cap {dev.mem_cap_mb or 'none'} MB, "
        f"cpus {list(dev.cpus)}\n"
        f"workload {wl.name}: lengths {list(wl.lengths)} x {wl.iterations} iterations, "
        f"concurrency {wl.concurrency}, background {wl.background_mb:g} MB"
    )
    summary = summarize(read_rows(result.run_dir))
    summary["success"] = summary["success"].map("{:.1%}".format)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.1f}".format):
        print(summary.to_string(index=False))


if __name__ == "__main__":
    sys.argv[1:] = accept_plus_for_default_groups(sys.argv[1:])
    if error := launcher_error(sys.argv[1:]):
        sys.exit(error)
    main()
