"""The Hydra configs compose into valid sweeps: cumulative ablations, simulated devices from the
library's profiles, workloads, and both spellings of a group choice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from adaptive_tts.runtime.hardware import PROFILES
from experiments.limits import host_cpus
from experiments.run import accept_plus_for_default_groups
from experiments.sweep import SweepSpec

CONF = REPO / "conf"
ABLATIONS = ["baseline", "budget", "affinity", "estimation"]


def config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_ablations_are_cumulative() -> None:
    switches = [SweepSpec.from_config(config(f"ablation={name}")).ablation for name in ABLATIONS]
    assert [a.name for a in switches] == ABLATIONS
    on = [{k for k in ("budget", "affinity", "estimation") if getattr(a, k)} for a in switches]
    assert on == [set(), {"budget"}, {"budget", "affinity"}, {"budget", "affinity", "estimation"}]


def test_no_overrides_is_a_short_unsimulated_run_of_the_whole_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    spec = SweepSpec.from_config(config())
    assert spec.ablation.name == "estimation"
    assert not spec.device.simulated and spec.device.mem_cap_mb is None
    assert spec.engine.name == "torch" and spec.engine.quantization == "fp32"
    assert len(spec.workload.lengths) * spec.workload.iterations <= 10
    assert re.fullmatch(r"\d{8}-\d{6}", spec.run_id)  # generated: the local start's date and time


@pytest.mark.parametrize("hardware", sorted(p.stem for p in (CONF / "hardware").glob("*.yaml")))
def test_every_hardware_config_selects_a_library_profile(hardware: str) -> None:
    spec = SweepSpec.from_config(config(f"hardware={hardware}")).device
    if hardware == "auto":
        assert spec.profile == "auto" and not spec.simulated
        return
    assert spec.profile in PROFILES and spec.simulated
    assert spec.mem_cap_mb == PROFILES[spec.profile].memory_budget.total_ram_gb * 1024
    assert 1 <= len(spec.cpus) <= len(host_cpus()) and set(spec.cpus) <= set(host_cpus())


@pytest.mark.parametrize("workload", ["smoke", "default", "thesis", "memory_sweep", "memory_sweep_short"])
def test_workloads(workload: str) -> None:
    wl = SweepSpec.from_config(config(f"workload={workload}")).workload
    assert set(wl.lengths) <= {60, 100, 160, 200, 300, 500, 800, 1000}
    if workload == "thesis":
        assert wl.lengths == (100, 300, 500, 800, 1000) and wl.iterations == 50
    if workload == "smoke":
        assert wl.iterations <= 2
    if workload.startswith("memory_sweep"):
        assert max(wl.concurrencies) > 1 and wl.memory is not None and wl.background_mb == 0


def test_engines() -> None:
    assert SweepSpec.from_config(config("engine=reference")).engine.name == "reference"


def test_plus_and_plain_spellings_choose_the_same_option() -> None:
    args = [
        "-m",
        "+ablation=baseline,budget",
        "+workload=smoke",
        "hardware=auto",
        "+experiment=memory_sweep",
        "+trial.options={a: 1}",
    ]
    assert accept_plus_for_default_groups(args) == [
        "-m",
        "ablation=baseline,budget",
        "workload=smoke",
        "hardware=auto",
        "+experiment=memory_sweep",
        "+trial.options={a: 1}",
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
    assert cfg.hydra.launcher.cpus_per_task == 2  # conf/hydra/launcher/slurm.yaml


def test_memory_sweep_is_a_curve_on_the_8gb_device() -> None:
    spec = SweepSpec.from_config(config("+experiment=memory_sweep", "ablation=estimation"))
    assert spec.device.simulated and spec.device.mem_cap_mb == 8 * 1024
    levels = spec.workload.memory
    assert len(levels.free_above_floor_mb) >= 6 and min(levels.free_above_floor_mb) < 0 < max(
        levels.free_above_floor_mb
    )
    assert set(levels.kinds) == {"static", "dynamic"} and levels.swing_mb > 0
    assert set(spec.workload.concurrencies) == {1, 4, 8} and len(spec.workload.lengths) == 2
    assert spec.memory.budget_policy == "calibrated" and spec.memory.estimator_constants == "calibrated"
    assert spec.calibrates and spec.engine.quantization is None  # the runtime may choose the precision
    short = SweepSpec.from_config(config("+experiment=memory_sweep", "workload=memory_sweep_short"))
    assert short.workload.memory == levels and short.workload.iterations == 1


def test_bad_memory_settings_name_the_value() -> None:
    with pytest.raises(ValueError, match="'generous'"):
        SweepSpec.from_config(config("budget.policy=generous"))
    with pytest.raises(ValueError, match="'guessed'"):
        SweepSpec.from_config(config("estimator.constants=guessed"))
    with pytest.raises(ValueError, match="9000 MB"):
        SweepSpec.from_config(config("hardware=m1_air", "workload.background_mb=9000"))
    with pytest.raises(ValueError, match="'sometimes'"):
        SweepSpec.from_config(config("+experiment=memory_sweep", "workload.memory.kinds=[sometimes]"))


def test_a_memory_sweep_needs_a_cap_the_kernel_enforces(tmp_path: Path) -> None:
    from experiments.sweep import run_design

    rlimit = SweepSpec.from_config(
        config("+experiment=memory_sweep", "hardware.mem_cap_mechanism=rlimit", f"results_dir={tmp_path}")
    )
    with pytest.raises(ValueError, match="rlimit"):
        run_design([rlimit], progress=False)
    native = SweepSpec.from_config(config("workload=memory_sweep", f"results_dir={tmp_path}"))
    with pytest.raises(ValueError, match="simulated device"):
        run_design([native], progress=False)
    roomy = SweepSpec.from_config(
        config("+experiment=memory_sweep", "workload.memory.free_above_floor_mb=[50,9000]", f"results_dir={tmp_path}")
    )
    with pytest.raises(ValueError, match="free_above_floor_mb=9000 leaves more free than the device's 8192 MB"):
        run_design([roomy], progress=False)  # before the floor is measured
    assert not list(tmp_path.rglob("*.parquet"))  # nothing ran, nothing was written


def test_a_level_above_the_devices_ram_once_the_floor_is_known_names_it() -> None:
    from experiments.sweep import _level_device
    from experiments.workload import plan

    spec = SweepSpec.from_config(config("+experiment=memory_sweep", "workload.memory.free_above_floor_mb=[8000]"))
    trial = next(t for t in plan(spec.workload) if t.background_kind == "dynamic")
    with pytest.raises(ValueError, match="free_above_floor_mb=8000 leaves 8250 MB free .floor 250 MB, swing 300 MB."):
        _level_device(spec, trial, floor_mb=250.0)
