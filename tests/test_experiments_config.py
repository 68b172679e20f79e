"""The Hydra configs compose into valid sweeps: cumulative ablations, simulated devices from the
library's profiles, workloads, and both spellings of a group choice."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from adaptive_tts.runtime.hardware import PROFILES
from experiments.limits import host_cpus
from experiments.run import accept_plus_for_default_groups
from experiments.sweep import SweepSpec

CONF = Path(__file__).resolve().parent.parent / "conf"
ABLATIONS = ["baseline", "budget", "affinity", "estimation"]


def config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_ablations_are_cumulative() -> None:
    switches = [SweepSpec.from_config(config(f"ablation={name}")).ablation for name in ABLATIONS]
    assert [a.name for a in switches] == ABLATIONS
    on = [{k for k in ("budget", "affinity", "estimation") if getattr(a, k)} for a in switches]
    assert on == [set(), {"budget"}, {"budget", "affinity"}, {"budget", "affinity", "estimation"}]


def test_no_overrides_is_a_short_unsimulated_run_of_the_whole_runtime() -> None:
    spec = SweepSpec.from_config(config())
    assert spec.ablation.name == "estimation"
    assert not spec.device.simulated and spec.device.mem_cap_mb is None
    assert spec.engine.name == "torch" and spec.engine.quantization == "fp32"
    assert len(spec.workload.lengths) * spec.workload.iterations <= 10
    assert spec.run_id  # generated


@pytest.mark.parametrize("hardware", sorted(p.stem for p in (CONF / "hardware").glob("*.yaml")))
def test_every_hardware_config_selects_a_library_profile(hardware: str) -> None:
    spec = SweepSpec.from_config(config(f"hardware={hardware}")).device
    if hardware == "auto":
        assert spec.profile == "auto" and not spec.simulated
        return
    assert spec.profile in PROFILES and spec.simulated
    assert spec.mem_cap_mb == PROFILES[spec.profile].memory_budget.total_ram_gb * 1024
    assert 1 <= len(spec.cpus) <= len(host_cpus()) and set(spec.cpus) <= set(host_cpus())


@pytest.mark.parametrize("workload", ["smoke", "default", "thesis", "pressure"])
def test_workloads(workload: str) -> None:
    wl = SweepSpec.from_config(config(f"workload={workload}")).workload
    assert set(wl.lengths) <= {100, 300, 500, 800, 1000}
    if workload == "thesis":
        assert wl.lengths == (100, 300, 500, 800, 1000) and wl.iterations == 50
    if workload == "smoke":
        assert wl.iterations <= 2
    if workload == "pressure":
        assert wl.concurrency > 1 and wl.background_mb > 0


def test_pressure_experiment_simulates_the_8gb_device() -> None:
    spec = SweepSpec.from_config(config("+experiment=pressure", "ablation=baseline"))
    assert spec.workload.name == "pressure" and spec.device.profile == "m1_air"
    assert spec.device.mem_cap_mb == 8 * 1024 and spec.device.background_mb == spec.workload.background_mb


def test_engines() -> None:
    assert SweepSpec.from_config(config("engine=reference")).engine.name == "reference"


def test_plus_and_plain_spellings_choose_the_same_option() -> None:
    args = ["-m", "+ablation=baseline,budget", "+workload=smoke", "hardware=auto", "+experiment=pressure", "+trial.options={a: 1}"]
    assert accept_plus_for_default_groups(args) == [
        "-m", "ablation=baseline,budget", "workload=smoke", "hardware=auto", "+experiment=pressure", "+trial.options={a: 1}",
    ]
    assert config(*accept_plus_for_default_groups(["+ablation=affinity"])).ablation.name == "affinity"


def test_conditions_differ_in_their_trial_keys() -> None:
    names = {SweepSpec.from_config(config(f"ablation={a}")).condition_name for a in ABLATIONS}
    names.add(SweepSpec.from_config(config("engine.quantization=int8")).condition_name)
    assert len(names) == 5


def test_slurm_launcher_config_composes_where_the_plugin_is_installed() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.cpus_per_task >= 1
