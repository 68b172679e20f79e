"""Benchmark hygiene: each reader on captured /proc and /sys files, nulls where a file is missing, the steal
share between two /proc/stat reads, the columns in a real sweep's rows, and the report's warning for a
condition whose latency varies by pyperf's 10 % or more."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from conftest import REPO

from experiments import hygiene, report
from experiments.report.cells import CV_NOTE, HYGIENE_NOTE, NOT_AVAILABLE, cv_stats
from experiments.results import SCHEMA, RowStore, read_rows

# -- captured files, as the kernel prints them --------------------------------------------------------------

PRESSURE_CPU = """some avg10=1.53 avg60=0.87 avg300=0.29 total=541655339
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""
#: /proc/stat of a 2-CPU VM (user nice system idle iowait irq softirq steal guest guest_nice)
STAT_BEFORE = """cpu  287145 0 54630 1061458 1291 0 429 1363 0 0
cpu0 125791 0 25281 550775 212 0 113 690 0 0
cpu1 161353 0 29349 510682 1078 0 315 672 0 0
intr 43788155 0 9 0 0 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 81286327
btime 1764686400
processes 25304
procs_running 2
procs_blocked 0
softirq 9341209 0 2196740 58 1105232 0 0 1181 3062105 0 2975893
"""
#: 1000 ticks later: 300 user, 50 system, 600 idle, 50 stolen by the hypervisor (and 20 guest, inside user)
STAT_AFTER = STAT_BEFORE.replace(
    "cpu  287145 0 54630 1061458 1291 0 429 1363 0 0", "cpu  287445 0 54680 1062058 1291 0 429 1413 20 0"
)
LOADAVG = "0.42 0.32 0.70 1/88 25304\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def supplies(root: Path, **devices: dict[str, str]) -> Path:
    """``/sys/class/power_supply/<name>/<file>`` for each device."""
    return write(
        root, {f"class/power_supply/{name}/{f}": f"{v}\n" for name, files in devices.items() for f, v in files.items()}
    )


# -- readers ---------------------------------------------------------------------------------------------


def test_each_reader_reads_its_captured_file(tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"pressure/cpu": PRESSURE_CPU, "stat": STAT_BEFORE, "loadavg": LOADAVG})
    sysfs = write(tmp_path / "sys", {"devices/system/cpu/cpu0/cpufreq/scaling_governor": "performance\n"})
    assert hygiene.read_cpu_pressure_some_avg10(proc) == 1.53  # "some", not "full"
    assert hygiene.read_loadavg_1m(proc) == 0.42
    assert hygiene.read_cpu_times(proc) == hygiene.CpuTimes(
        steal=1363, total=287145 + 54630 + 1061458 + 1291 + 429 + 1363, idle=1061458 + 1291
    )
    assert hygiene.read_cpu_governor(sysfs) == "performance"


def test_missing_files_are_none(tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    assert hygiene.read_cpu_pressure_some_avg10(empty) is None  # a kernel without PSI
    assert hygiene.read_loadavg_1m(empty) is None
    assert hygiene.read_cpu_times(empty) is None
    assert hygiene.read_cpu_governor(empty) is None  # no cpufreq (many VMs)
    assert hygiene.read_power_source(empty) is None  # no power_supply class
    state = hygiene.after(hygiene.before(empty, empty))
    assert state == hygiene.MachineState()  # every column null, nothing raised


def test_garbled_files_are_none_not_a_failed_trial(tmp_path: Path) -> None:
    proc = write(tmp_path, {"pressure/cpu": "some avg10=\n", "stat": "cpu  1 2 3\n", "loadavg": "\n"})
    assert hygiene.read_cpu_pressure_some_avg10(proc) is None
    assert hygiene.read_cpu_times(proc) is None  # a kernel without steal accounting
    assert hygiene.read_loadavg_1m(proc) is None
    write(proc, {"stat": "cpu  a b c d e f g h\n"})
    assert hygiene.read_cpu_times(proc) is None


def test_steal_share_from_two_proc_stat_snapshots(tmp_path: Path) -> None:
    before = hygiene.read_cpu_times(write(tmp_path / "a", {"stat": STAT_BEFORE}))
    after = hygiene.read_cpu_times(write(tmp_path / "b", {"stat": STAT_AFTER}))
    assert after.total - before.total == 1000  # guest is inside user: not counted twice
    assert hygiene.steal_share(before, after) == pytest.approx(5.0)
    assert hygiene.steal_share(before, before) is None  # no tick passed
    assert hygiene.steal_share(after, before) is None  # counters went backwards
    assert hygiene.steal_share(None, after) is None


def test_before_and_after_bracket_a_trial(tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", {"pressure/cpu": PRESSURE_CPU, "stat": STAT_BEFORE, "loadavg": LOADAVG})
    sysfs = write(tmp_path / "sys", {"devices/system/cpu/cpu0/cpufreq/scaling_governor": "powersave\n"})
    supplies(sysfs, AC={"type": "Mains", "online": "1"})
    with hygiene.bracket(proc, sysfs) as columns:
        assert set(columns) == set(hygiene.COLUMNS)
        write(proc, {"stat": STAT_AFTER, "loadavg": "9.99 1 1 1/1 1\n"})  # the trial runs
    assert columns == {
        "loadavg_1m": 0.42,  # read at the start
        "cpu_pressure_some_avg10": 1.53,
        "steal_percent": pytest.approx(5.0),
        "cpu_governor": "powersave",
        "power_source": "ac",
    }
    for name in hygiene.COLUMNS:  # the row's columns, with the schema's types
        expected = pa.string() if name in ("cpu_governor", "power_source") else pa.float64()
        assert SCHEMA.field(name).type == expected


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ({"AC": {"type": "Mains", "online": "1"}, "BAT0": {"type": "Battery", "status": "Charging"}}, "ac"),
        ({"AC": {"type": "Mains", "online": "0"}, "BAT0": {"type": "Battery", "status": "Discharging"}}, "battery"),
        ({"BAT1": {"type": "Battery", "status": "Discharging", "scope": "System"}}, "battery"),
        ({"AC": {"type": "Mains", "online": "0"}, "BAT0": {"type": "Battery", "status": "Full"}}, None),
        (  # a wireless mouse's battery discharging says nothing about the machine
            {
                "ADP1": {"type": "Mains", "online": "0"},
                "BAT0": {"type": "Battery", "status": "Not charging"},
                "hid-00:1f:20:aa:bb:cc-battery": {"type": "Battery", "status": "Discharging", "scope": "Device"},
            },
            None,
        ),
        ({"ucsi-source-psy-USBC000:001": {"type": "USB", "online": "1"}}, None),
    ],
    ids=["ac-charging", "battery", "battery-system-scope", "unplugged-full", "peripheral-battery", "usb-only"],
)
def test_power_source_from_power_supply(tmp_path: Path, devices: dict, expected: str | None) -> None:
    assert hygiene.read_power_source(supplies(tmp_path, **devices)) == expected


def test_macos_power_source_from_pmset() -> None:
    ac = "Now drawing from 'AC Power'\n -InternalBattery-0 (id=4653155)\t100%; charged; 0:00 remaining present: true\n"
    battery = "Now drawing from 'Battery Power'\n -InternalBattery-0 (id=4653155)\t87%; discharging; 5:12 remaining\n"
    assert (hygiene.parse_pmset(ac), hygiene.parse_pmset(battery), hygiene.parse_pmset("")) == ("ac", "battery", None)


def test_this_machine_is_read_without_raising() -> None:
    state = hygiene.after(hygiene.before())
    if hasattr(os, "getloadavg"):
        assert state.loadavg_1m == pytest.approx(os.getloadavg()[0], abs=5)
    assert (state.cpu_pressure_some_avg10 is None) == (hygiene.read_cpu_pressure_some_avg10() is None)
    assert state.cpu_governor == hygiene.read_cpu_governor() and state.power_source == hygiene.power_source()


# -- a real sweep ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Two 0.3 s trials of the memory probe through the real CLI (long enough for ticks to pass)."""
    tmp = tmp_path_factory.mktemp("hygiene-sweep")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "trial.body=experiments.bodies:memory_probe",
            f"results_dir={tmp / 'runs'}",
            f"hydra.run.dir={tmp / 'hydra'}",
            "progress=false",
            "workload.lengths=[100]",
            "workload.iterations=2",
            "+trial.options={hold_s: 0.3}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return read_rows(tmp / "runs")


def test_a_real_sweeps_rows_carry_the_machine_state(swept: pd.DataFrame) -> None:
    assert len(swept) == 2 and set(hygiene.COLUMNS) <= set(swept.columns)
    for _, row in swept.iterrows():
        if hasattr(os, "getloadavg"):
            assert row["loadavg_1m"] >= 0
        if hygiene.read_cpu_pressure_some_avg10() is not None:
            assert 0 <= row["cpu_pressure_some_avg10"] <= 100
        else:
            assert pd.isna(row["cpu_pressure_some_avg10"])
        if hygiene.read_cpu_times() is not None:  # 0.3 s on every CPU: ticks passed
            assert 0 <= row["steal_percent"] <= 100
        governor, power = hygiene.read_cpu_governor(), hygiene.power_source()
        assert (row["cpu_governor"] if not pd.isna(row["cpu_governor"]) else None) == governor
        assert (row["power_source"] if not pd.isna(row["power_source"]) else None) == power


# -- the report ------------------------------------------------------------------------------------------


def _records(rows: pd.DataFrame) -> list[dict]:
    return [
        {k: (None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}
        for row in rows.astype(object).to_dict("records")
    ]


def _conditions(swept: pd.DataFrame, tmp_path: Path, spreads: dict[str, float]) -> pd.DataFrame:
    """Per ablation, 6 ok trials at each of two lengths, latencies ``1000 × (1 ± spread)`` at length 300
    (±1 % at 100), built from the real sweep's rows so every other column is what the harness writes."""
    template = _records(swept)[0]
    store = RowStore(tmp_path / "conditions")
    trial = 0
    for ablation, spread in spreads.items():
        for length, relative in ((100, 0.01), (300, spread)):
            for i in range(6):
                trial += 1
                store.write(
                    template
                    | {
                        "trial_id": trial,
                        "trial_key": f"{ablation}/L{length}/i{i}",
                        "ablation": ablation,
                        "text_length": length,
                        "iteration": i,
                        "latency_ms": 1000.0 * (1 + relative * (-1) ** i),
                        "loadavg_1m": 0.25 * i,
                        "steal_percent": 0.5,
                        "cpu_governor": "performance",
                        "power_source": "ac",
                    }
                )
    return report.load_rows(tmp_path / "conditions")


def test_a_condition_with_cv_of_10_percent_or_more_gets_the_warning(swept: pd.DataFrame, tmp_path: Path) -> None:
    rows = _conditions(swept, tmp_path, {"baseline": 0.15, "estimation": 0.05})
    table = report.ablation_table(rows)
    data = table.data.set_index("ablation")
    cv_unstable = rows.loc[(rows["ablation"] == "baseline") & (rows["text_length"] == 300), "latency_ms"]
    assert data.loc["baseline", "lat_cv_max"] == pytest.approx(cv_unstable.std() / cv_unstable.mean())  # ≈ 16 %
    assert data.loc["baseline", "lat_cv_max"] > 0.10 > data.loc["estimation", "lat_cv_max"]
    assert data.loc["baseline", "lat_cv_max_length"] == 300 and data.loc["baseline", "unstable_lengths"] == "300"
    assert bool(data.loc["baseline", "unstable"]) is True and bool(data.loc["estimation", "unstable"]) is False
    unstable = table.header.index("unstable")
    by_ablation = {row[table.header.index("ablation")]: row for row in table.cells}
    assert by_ablation["baseline"][unstable] == "yes" and by_ablation["estimation"][unstable] == "no"
    assert by_ablation["baseline"][table.header.index("max CV % (length)")].endswith("(300)")
    assert "Warning: 1 of 2 conditions are unstable" in table.caption
    warnings = [note for note in table.all_notes() if note.startswith("Unstable")]
    assert len(warnings) == 1 and "ablation baseline" in warnings[0] and "load avg 1 min ≤ 1.25" in warnings[0]
    shown = report.to_markdown(table)
    assert "Warning:" in shown and CV_NOTE in shown
    assert r"CV $\geq$ 10 \%" in report.to_latex(table)

    quiet = report.ablation_table(_conditions(swept, tmp_path / "quiet", {"baseline": 0.05, "estimation": 0.02}))
    assert "Warning" not in quiet.caption and not any(n.startswith("Unstable") for n in quiet.all_notes())
    assert {row[quiet.header.index("unstable")] for row in quiet.cells} == {"no"}


def test_old_datasets_without_the_columns_still_render(swept: pd.DataFrame, tmp_path: Path) -> None:
    rows = _conditions(swept, tmp_path, {"baseline": 0.15}).drop(columns=list(hygiene.COLUMNS))
    table = report.ablation_table(rows)
    assert f"{HYGIENE_NOTE}: {NOT_AVAILABLE}." in table.all_notes()
    assert "machine: n/a." in next(n for n in table.all_notes() if n.startswith("Unstable"))
    one_each = rows.drop_duplicates("text_length")  # no length with two ok trials: no CV
    assert cv_stats(one_each)["unstable"] is None
    cells = report.ablation_table(one_each).cells[0]
    assert cells[-2:] == [NOT_AVAILABLE, NOT_AVAILABLE]
    rendered = report.render_report(rows, tmp_path / "out")
    assert (tmp_path / "out" / "tables" / "ablation.md") in rendered.written
