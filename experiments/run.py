"""``python -m experiments.run +ablation=affinity``: run one condition and print the run's summary.

``-m +ablation=baseline,budget,affinity,estimation`` sweeps all four into one run, interleaved in
blocks (experiments/design.py); ``run_id=ID`` resumes a run. The work is
:func:`experiments.sweep.run_design`; this is only the Hydra front end.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import hydra
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from experiments.results import read_rows, summarize
from experiments.sweep import REPO_ROOT, plan_sweep, run_design

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


def unknown_option_error(args: list[str], conf_dir: Path = REPO_ROOT / "conf") -> str | None:
    """One line naming an option of a config group that does not exist (``ablation=nope``, or one
    value of a sweep ``ablation=baseline,nope``), or None. Hydra's own message is a dozen lines of
    config search path; the launcher has its own check (:func:`launcher_error`)."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        group = conf_dir / key
        if key.startswith("hydra/") or not value or not group.is_dir():
            continue
        valid = sorted(path.stem for path in group.glob("*.yaml"))
        for option in value.split(","):
            if option not in valid:
                return f"error: unknown {key} {option!r}; valid: {', '.join(valid)}"
    return None


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


def conditions_of(cfg: DictConfig) -> list[DictConfig]:
    """The conditions this job runs: the sweep's (``design.plan``, written by the interleaved sweeper),
    else the job's own config as the one condition."""
    if cfg.design.plan is None:
        return [cfg]
    return [OmegaConf.create(c) for c in json.loads(Path(cfg.design.plan).read_text())["conditions"]]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        sweep = plan_sweep(conditions_of(cfg))
    except ValueError as error:  # bad input: one line naming it, not a traceback
        sys.exit(f"error: {error}")
    blocks = None if cfg.design.blocks is None else list(cfg.design.blocks)
    resolved = [OmegaConf.to_yaml(c, resolve=True) for c in sweep.configs]  # saved configs resume this run
    with logging_redirect_tqdm():
        result = run_design(sweep.specs, sweep.design, blocks=blocks, resolved_configs=resolved, progress=cfg.progress)
    print(f"\nrun {sweep.run_id} ({result.run_dir}): {result.ran} trials run, {result.skipped} already done")
    for spec in sweep.specs:
        wl, dev = spec.workload, spec.device
        print(
            f"{spec.ablation.name}: device {dev.profile}, simulated={dev.simulated}, "
            f"mem cap {dev.mem_cap_mb or 'none'} MB, cpus {list(dev.cpus)}; workload {wl.name}: lengths "
            f"{list(wl.lengths)} x {wl.iterations} iterations, concurrency {wl.concurrency}, "
            f"background {wl.background_mb:g} MB"
        )
    summary = summarize(read_rows(result.run_dir))
    summary["success"] = summary["success"].map("{:.1%}".format)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.1f}".format):
        print(summary.to_string(index=False))


if __name__ == "__main__":
    # Ctrl-C stops a sweep cleanly (its trial in flight is lost, nothing else), even when whatever started
    # it ignores or blocks SIGINT (a non-interactive shell ignores it for the jobs it puts in the
    # background, and Python keeps an ignored SIGINT ignored): the interrupt would have no effect at all.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    sys.argv[1:] = accept_plus_for_default_groups(sys.argv[1:])
    if error := unknown_option_error(sys.argv[1:]) or launcher_error(sys.argv[1:]):
        sys.exit(error)
    main()
