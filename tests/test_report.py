"""The thesis report: every number recomputable from the rows, every empty cell saying so, the CLI's files.

Real rows come from one short harness run per session (:func:`harness_run`: the smoke workload cut to two
short lengths, two ablations, about a minute). Where a check needs specific counts (OOMs, refusals,
n ≥ 20 for p95) the rows are real rows of that run with the treatment columns set by the test: those
tables check arithmetic, not the runtime.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from experiments import report
from experiments.report.effects import design_table, effects_table, variance_table
from experiments.report.pairs import pair_trials
from experiments.results import SCHEMA, RowStore
from experiments.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_interval,
    min_n_for_quantile,
    paired_difference_interval,
    tail_quantile,
    wilson_interval,
)

RUN_ID = "report-tests"
TABLES = (
    "ablation",
    "memory_stability",
    "affinity_latency",
    "effects",
    "design",
    "variance",
    "cross_platform",
    "quantization",
)
ROW_FIGURES = ("latency_vs_length", "memory_vs_length", "success_rate", "estimator_vs_measured")


def run_harness(base: Path) -> Path:
    """The session's real dataset: ``base/runs/report-tests``. Rerunning is nearly free — the harness
    skips trials already on disk — so test modules share the run through this function."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.run",
            "-m",
            "+ablation=baseline,estimation",
            "workload=smoke",
            "workload.lengths=[40,80]",
            "workload.iterations=2",
            f"results_dir={base / 'runs'}",
            f"run_id={RUN_ID}",
            f"hydra.sweep.dir={base / 'hydra'}",
            "progress=false",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return base / "runs" / RUN_ID


@pytest.fixture(scope="session")
def harness_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_harness(tmp_path_factory.getbasetemp() / "harness")


@pytest.fixture(scope="session")
def real_rows(harness_run: Path) -> pd.DataFrame:
    return report.load_rows(harness_run)


# -- independent recomputation ----------------------------------------------------------------------------


def wilson_by_roots(k: int, n: int) -> tuple[float, float]:
    """The Wilson interval as the roots of (p̂ − p)² = z² p (1 − p) / n — not the closed form stats.py uses."""
    z = NormalDist().inv_cdf(0.975)
    p_hat = k / n
    a = 1 + z * z / n
    roots = np.roots([a, -(2 * p_hat + z * z / n), p_hat * p_hat])
    low, high = sorted(float(np.real(r)) for r in roots)
    return max(low, 0.0), min(high, 1.0)


def bootstrap_by_recipe(values: np.ndarray, statistic) -> tuple[float, float]:
    """The documented recipe, written out again: sort, resample indices with the seed, percentiles."""
    values = np.sort(values)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))
    estimates = statistic(values[draws], axis=1)
    return float(np.percentile(estimates, 2.5)), float(np.percentile(estimates, 97.5))


def check_ablation_row(row: pd.Series, group: pd.DataFrame) -> None:
    """Recompute one row of the ablation table from its trials with pandas/numpy."""
    ok = group.loc[group["status"] == "ok", "latency_ms"].dropna()
    assert row["n"] == len(group) and row["n_ok"] == len(ok)
    k = int((group["status"] == "ok").sum())
    assert row["success"] == pytest.approx(k / len(group))
    assert (row["success_lo"], row["success_hi"]) == pytest.approx(wilson_by_roots(k, len(group)), abs=1e-9)
    assert row["lat_mean_ms"] == pytest.approx(ok.mean())
    assert row["lat_median_ms"] == pytest.approx(ok.median())
    assert row["lat_std_ms"] == pytest.approx(ok.std()) if len(ok) > 1 else math.isnan(row["lat_std_ms"])
    assert row["peak_rss_mb"] == pytest.approx(group["peak_rss_mb"].max())
    if len(ok) > 1:
        assert (row["lat_mean_ms_lo"], row["lat_mean_ms_hi"]) == pytest.approx(
            bootstrap_by_recipe(ok.to_numpy(), np.mean)
        )
        assert (row["lat_median_ms_lo"], row["lat_median_ms_hi"]) == pytest.approx(
            bootstrap_by_recipe(ok.to_numpy(), np.median)
        )
        assert row["lat_mean_ms_lo"] <= row["lat_mean_ms"] <= row["lat_mean_ms_hi"]
    for q, column in ((0.95, "lat_p95_ms"), (0.99, "lat_p99_ms")):
        if len(ok) >= {0.95: 20, 0.99: 100}[q]:
            assert row[column] == pytest.approx(ok.quantile(q))
        else:
            assert math.isnan(row[column])


# -- statistics --------------------------------------------------------------------------------------------


def test_wilson_interval_matches_the_quadratic_and_its_edge_cases() -> None:
    z2 = NormalDist().inv_cdf(0.975) ** 2
    assert wilson_interval(0, 5) == pytest.approx((0.0, z2 / (5 + z2)))  # 0 %: the upper bound is not 0
    assert wilson_interval(5, 5) == pytest.approx((5 / (5 + z2), 1.0))
    for k, n in ((8, 10), (1, 3), (199, 200), (7, 20)):
        assert wilson_interval(k, n) == pytest.approx(wilson_by_roots(k, n), abs=1e-12)
    with pytest.raises(ValueError):
        wilson_interval(1, 0)


def test_bootstrap_is_fixed_seeded_order_free_and_needs_two_values() -> None:
    values = np.array([812.0, 790.5, 845.2, 801.1, 799.9, 930.4, 777.7])
    interval = bootstrap_interval(values, "mean")
    assert interval == bootstrap_interval(values[::-1], "mean")  # row order does not matter
    assert interval == pytest.approx(bootstrap_by_recipe(values, np.mean))
    assert interval[0] <= values.mean() <= interval[1]
    assert bootstrap_interval(np.array([5.0]), "median") is None


def test_tail_percentiles_need_one_trial_beyond_them() -> None:
    assert (min_n_for_quantile(0.95), min_n_for_quantile(0.99)) == (20, 100)
    values = np.arange(100, dtype=float)
    assert tail_quantile(values[:99], 0.99) is None
    assert tail_quantile(values, 0.99) == pytest.approx(np.quantile(values, 0.99))
    assert tail_quantile(values[:19], 0.95) is None
    assert tail_quantile(values[:20], 0.95) == pytest.approx(np.quantile(values[:20], 0.95))  # 18.05


# -- real rows -------------------------------------------------------------------------------------------


def test_every_ablation_cell_recomputes_from_the_real_rows(real_rows: pd.DataFrame) -> None:
    table = report.ablation_table(real_rows)
    assert set(table.data["ablation"]) == {"baseline", "estimation"}
    for _, row in table.data.iterrows():
        check_ablation_row(row, real_rows[real_rows["ablation"] == row["ablation"]])
    assert table.data["n"].sum() == len(real_rows)


def test_other_tables_recompute_from_the_real_rows(real_rows: pd.DataFrame) -> None:
    before = real_rows[real_rows["ablation"] == "baseline"]
    after = real_rows[real_rows["ablation"] == "estimation"]
    stability = report.memory_stability_table(real_rows).data.iloc[0]
    assert (stability["n_before"], stability["n_after"]) == (len(before), len(after))
    assert stability["oom_before"] == pytest.approx((before["status"] == "oom").mean())
    assert stability["refused_after"] == pytest.approx((after["status"] == "refused").mean())

    platform = report.cross_platform_table(real_rows).data
    assert len(platform) == 1 and platform.iloc[0]["n"] == len(after)
    ok_after = after.loc[after["status"] == "ok", "latency_ms"]
    assert platform.iloc[0]["lat_mean_ms"] == pytest.approx(ok_after.mean())
    assert bool(platform.iloc[0]["simulated"]) is False
    assert real_rows["cpu_model"].iloc[0] in platform.iloc[0]["notes"]

    quantization = report.quantization_table(real_rows).data
    for _, row in quantization.iterrows():
        ok = real_rows[
            (real_rows["status"] == "ok")
            & (real_rows["ablation"] == row["ablation"])
            & (real_rows["quantization"] == row["quantization"])
        ]
        assert row["n_ok"] == len(ok) and row["lat_mean_ms"] == pytest.approx(ok["latency_ms"].mean())
        assert row["peak_rss_mb"] == pytest.approx(ok["peak_rss_mb"].max())


def test_cells_without_rows_say_so(real_rows: pd.DataFrame) -> None:
    affinity = report.affinity_table(real_rows)  # this run has neither budget nor affinity rows
    assert affinity.data.empty and "no rows for this table" in report.to_markdown(affinity)
    quantization = report.quantization_table(real_rows)
    weights = quantization.header.index("weights MB")
    assert all(row[weights] == report.NO_DATA for row in quantization.cells)
    assert report.NO_DATA_NOTE in quantization.all_notes()
    ablation = report.ablation_table(real_rows)  # 4 trials per ablation: no tail percentile
    p99 = ablation.header.index("p99 ms")
    assert all(row[p99] == report.NOT_BOUNDED for row in ablation.cells)
    assert report.NOT_BOUNDED_NOTE in ablation.all_notes()


def test_cli_renders_the_latest_run_with_captions(harness_run: Path, real_rows: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.report", "--results-dir", str(harness_run.parent), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = {Path(line.removeprefix("wrote ")) for line in done.stdout.splitlines() if line.startswith("wrote ")}
    expected = {out / "tables" / f"{t}{s}" for t in TABLES for s in (".md", ".tex", ".csv")}
    expected |= {out / "figures" / f"{f}{s}" for f in ROW_FIGURES for s in (".pdf", ".png", ".caption.txt")}
    assert printed == expected and all(p.stat().st_size > 0 for p in printed)
    assert "skipped figure quantization_tradeoff" in done.stdout  # no weight bytes / quality in these rows

    caption = (out / "figures" / "latency_vs_length.caption.txt").read_text()
    host, cpu = real_rows["host"].iloc[0], real_rows["cpu_model"].iloc[0]
    assert f"n = {len(real_rows)} trials" in caption and host in caption and cpu in caption and "real" in caption
    tex = (out / "tables" / "ablation.tex").read_text()
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule")) and r"success \%" in tex
    # The CSV holds the table's numbers at full precision.
    csv = pd.read_csv(out / "tables" / "ablation.csv")
    data = report.ablation_table(real_rows).data
    assert np.allclose(csv["lat_mean_ms"], data["lat_mean_ms"]) and (csv["n"] == data["n"]).all()


def test_cli_finds_a_run_by_id_and_a_bench_file_beside_a_parquet_dataset(harness_run: Path, tmp_path: Path) -> None:
    by_id = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.report",
            RUN_ID,
            "--results-dir",
            str(harness_run.parent),
            "--out",
            str(tmp_path / "by-id"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert by_id.returncode == 0 and f"dataset: {harness_run}" in by_id.stdout, by_id.stderr[-3000:]

    dataset = tmp_path / "merged.parquet"
    pq.write_table(pq.ParquetDataset(harness_run / "rows").read(), dataset)
    bench = tmp_path / "bench_quantize.csv"
    # Test values for the merge: weight bytes and MCD per mode, as the bench would write them.
    pd.DataFrame(
        {"mode": ["fp32", "int8", "int4"], "weight_bytes": [60e6, 16e6, 9e6], "mcd_db": [0.0, 0.4, 1.9]}
    ).to_csv(bench, index=False)
    beside = subprocess.run(
        [sys.executable, "-m", "experiments.report", str(dataset)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert beside.returncode == 0, beside.stderr[-3000:]
    assert f"quantization bench: {bench}" in beside.stdout
    out = tmp_path / "merged-report"
    assert (out / "figures" / "quantization_tradeoff.pdf").is_file()
    assert "bench" in (out / "tables" / "quantization.md").read_text()


# -- arithmetic on set counts ------------------------------------------------------------------------------


def _records(real_rows: pd.DataFrame) -> list[dict]:
    """Real rows as plain dicts the harness's RowStore accepts."""
    return [
        {k: (None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}
        for row in real_rows.astype(object).to_dict("records")
    ]


def _counted(real_rows: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """Two simulated profiles × four ablations with chosen outcomes, built from real ok rows so every
    other column is what the harness writes; latencies are the real ones, repeated."""
    templates = _records(real_rows[real_rows["status"] == "ok"])
    plan = {  # ablation: (ok, oom, refused)
        "baseline": (13, 7, 0),
        "budget": (25, 0, 0),
        "affinity": (25, 0, 0),
        "estimation": (18, 0, 2),
    }
    store = RowStore(tmp_path / "counted")
    trial = 0
    for profile, cap in (("m1_air", 8192.0), ("intel_i5", 16384.0)):
        for ablation, counts in plan.items():
            for status, count in zip(("ok", "oom", "refused"), counts):
                for i in range(count):
                    row = dict(templates[trial % len(templates)])
                    trial += 1
                    row |= {
                        "trial_id": trial,
                        "trial_key": f"{ablation}-{profile}/L{row['text_length']}/i{i}",
                        "profile": profile,
                        "simulated": True,
                        "mem_cap_mb": cap,
                        "mem_cap_mechanism": "cgroup_v2",
                        "ablation": ablation,
                        "status": status,
                    }
                    # A latency per trial (real ones scaled per position), so intervals have spread.
                    row["latency_ms"] = row["latency_ms"] * (1 + 0.01 * i) if status == "ok" else None
                    if status != "ok":
                        row |= {"error": f"{status} in test", "first_audio_ms": None, "audio_s": None, "rtf": None}
                    store.write(row)
    return report.load_rows(tmp_path / "counted")


def test_set_counts_give_the_expected_rates_intervals_and_changes(real_rows: pd.DataFrame, tmp_path: Path) -> None:
    rows = _counted(real_rows, tmp_path)
    ablation = report.ablation_table(rows)
    assert len(ablation.data) == 8
    for _, row in ablation.data.iterrows():
        group = rows[(rows["profile"] == row["profile"]) & (rows["ablation"] == row["ablation"])]
        check_ablation_row(row, group)
    budget = ablation.data[(ablation.data["profile"] == "m1_air") & (ablation.data["ablation"] == "budget")].iloc[0]
    assert not math.isnan(budget["lat_p95_ms"]) and math.isnan(budget["lat_p99_ms"])  # n = 25
    assert ablation.header[:2] == ["profile", "ablation"]  # the varying key is a column, the rest in the caption
    assert "device simulated" in ablation.caption

    stability = report.memory_stability_table(rows).data.set_index("profile")
    assert stability.loc["m1_air", "oom_before"] == pytest.approx(7 / 20)
    assert (stability.loc["m1_air", "oom_before_lo"], stability.loc["m1_air", "oom_before_hi"]) == pytest.approx(
        wilson_by_roots(7, 20)
    )
    assert stability.loc["m1_air", "oom_after"] == 0
    # 0 of 20: the upper bound is not 0
    assert (stability.loc["m1_air", "oom_after_lo"], stability.loc["m1_air", "oom_after_hi"]) == pytest.approx(
        wilson_by_roots(0, 20)
    )
    assert stability.loc["m1_air", "refused_after"] == pytest.approx(2 / 20)
    # The counted rows repeat their templates' texts within one block: no trial has one partner, so no
    # paired change is shown (test_memory_stability_pairs_... has one).
    assert stability.loc["m1_air", "n_pairs"] == 0 and math.isnan(stability.loc["m1_air", "oom_change_pp"])

    affinity = report.affinity_table(rows)
    for profile in ("m1_air", "intel_i5"):
        row = affinity.data.set_index("profile").loc[profile]
        lat = {
            a: rows.loc[(rows["profile"] == profile) & (rows["ablation"] == a), "latency_ms"].mean()
            for a in ("budget", "affinity")
        }
        assert (row["lat_before_ms"], row["lat_after_ms"]) == pytest.approx((lat["budget"], lat["affinity"]))
        # Every text ran six times per ablation here: no trial has one partner, so no pair and no Δ —
        # rather than an unpaired ratio of the means.
        assert row["n_pairs"] == 0 and all(math.isnan(row[c]) for c in ("change_pct", "change_pct_lo", "change_pct_hi"))
    assert {cells[-1] for cells in affinity.cells} == {report.NO_DATA}
    assert any("no unpaired ratio" in note for note in affinity.all_notes())

    platform = report.cross_platform_table(rows)
    simulated = platform.header.index("simulated")
    assert {row[simulated] for row in platform.cells} == {"simulated"}
    assert all("cap" in notes and "2 refused" in notes for notes in platform.data["notes"])
    shown = report.to_markdown(ablation)
    first = ablation.data.iloc[0]
    assert f"{100 * first['success']:.1f} [{100 * first['success_lo']:.1f}, {100 * first['success_hi']:.1f}]" in shown


def test_a_failed_trial_without_its_mode_stays_in_its_condition(real_rows: pd.DataFrame, tmp_path: Path) -> None:
    """With the profile choosing the precision, a refused trial's row has no quantization; it must still
    count against its condition's success rate."""
    rows = _counted(real_rows, tmp_path)
    refused = rows["status"] == "refused"
    rows.loc[refused, "quantization"] = pd.NA
    table = report.ablation_table(rows).data
    estimation = table[(table["profile"] == "m1_air") & (table["ablation"] == "estimation")]
    assert len(estimation) == 1 and estimation.iloc[0]["success"] == pytest.approx(18 / 20)


# -- rendering speed ---------------------------------------------------------------------------------------


def _thesis_sized(real_rows: pd.DataFrame, path: Path, n: int, profiles: tuple[str, ...]) -> Path:
    """``n`` rows made by replicating the real rows with varied trial id, text length, ablation and
    profile — for timing the rendering only; the numbers mean nothing."""
    templates = _records(real_rows)
    lengths = (100, 300, 500, 800, 1000)
    records = []
    for i in range(n):
        row = dict(templates[i % len(templates)])
        row |= {
            "trial_id": i,
            "text_length": lengths[i % 5],
            "ablation": report.ABLATION_ORDER[(i // 5) % 4],
            "profile": profiles[(i // 20) % len(profiles)],
            "trial_key": f"c{(i // 5) % 4}-{(i // 20) % len(profiles)}/L/i",
        }
        records.append(row)
    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), path)
    return path


def _timed_render(dataset: Path, out: Path) -> tuple[float, report.Report]:
    start = time.perf_counter()
    rendered = report.render_report(report.load_rows(dataset), out)
    return time.perf_counter() - start, rendered


def test_a_thesis_sized_dataset_renders(real_rows: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    seconds, rendered = _timed_render(
        _thesis_sized(real_rows, tmp_path / "thesis.parquet", 1040, ("generic",)), tmp_path / "out"
    )
    assert len(rendered.written) == 3 * len(TABLES) + 3 * len(ROW_FIGURES)
    with capsys.disabled():
        print(f"\nreport of 1040 rows rendered in {seconds:.1f} s")


@pytest.mark.slow
def test_a_two_machine_thesis_dataset_renders_within_a_minute(
    real_rows: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset = _thesis_sized(real_rows, tmp_path / "thesis.parquet", 2000, ("m1_air", "intel_i5"))
    seconds, rendered = _timed_render(dataset, tmp_path / "out")
    assert len(rendered.written) == 3 * len(TABLES) + 2 * 3 * len(ROW_FIGURES)  # figures per profile
    with capsys.disabled():
        print(f"\nreport of 2000 rows from 2 profiles rendered in {seconds:.1f} s")
    assert seconds < 60


def _swept(real_rows: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """A memory sweep's rows with chosen outcomes per level, built from real ok rows."""
    templates = _records(real_rows[real_rows["status"] == "ok"])
    plan = {  # (ablation, policy, level): statuses of four trials (concurrency 1, 1, 4, 4)
        ("baseline", "calibrated", -100.0): ("oom", "oom", "oom", "oom"),
        ("baseline", "calibrated", 500.0): ("ok", "ok", "oom", "ok"),
        ("estimation", "calibrated", -100.0): ("refused", "refused", "refused", "refused"),
        ("estimation", "calibrated", 500.0): ("ok", "ok", "ok", "ok"),
        ("estimation", "seed", 500.0): ("refused", "refused", "refused", "refused"),
    }
    store = RowStore(tmp_path / "swept")
    trial = 0
    for (ablation, policy, level), statuses in plan.items():
        for i, status in enumerate(statuses):
            row = dict(templates[trial % len(templates)])
            trial += 1
            concurrency = 1 if i < 2 else 4
            row |= {
                "trial_id": trial,
                "trial_key": f"{ablation}-{policy}/{level}/{i}",
                "ablation": ablation,
                "budget_policy": policy,
                "status": status,
                "concurrency": concurrency,
                "text_length": 100,
                "floor_mb": 250.0,
                "free_above_floor_mb": level,
                "free_mb": 250.0 + level,
                "mem_cap_mb": 8192.0,
                "background_kind": "static",
                "waited_ms": 500.0 * (i % 2) if status == "ok" else None,
                "latency_ms": (row["latency_ms"] + 500.0 * (i % 2)) if status == "ok" else None,
                "estimated_mb": row["peak_rss_mb"] * (1.1 if ablation == "estimation" else 1.0)
                if status == "ok" and ablation == "estimation"
                else None,
                "estimator_constants": "calibrated" if ablation == "estimation" else None,
                "safety_margin_mb": 120.0 if ablation == "estimation" else None,
                "estimator_max_under_mb": 40.0 if ablation == "estimation" else None,
            }
            if status != "ok":
                row |= {"error": f"{status} in test", "first_audio_ms": None, "audio_s": None, "rtf": None}
            store.write(row)
    return report.load_rows(tmp_path / "swept")


def test_memory_sweep_tables_recompute_from_rows(real_rows: pd.DataFrame, tmp_path: Path) -> None:
    from experiments.report.memory import memory_tables, outcome_vs_free_memory

    rows = _swept(real_rows, tmp_path)
    levels, seed, waiting, estimator = memory_tables(rows)
    data = levels.data.set_index(["budget_policy", "ablation", "free_above_floor_mb"])
    assert data.loc[("calibrated", "baseline", 500.0), "oom"] == pytest.approx(0.25)
    assert data.loc[("calibrated", "baseline", 500.0), ["oom_lo", "oom_hi"]].tolist() == pytest.approx(
        wilson_by_roots(1, 4)
    )
    assert data.loc[("calibrated", "estimation", -100.0), "refused"] == 1.0
    # The margin kept (120 MB) tells which levels the runtime should serve in full; the baseline keeps none.
    assert data.loc[("calibrated", "estimation", -100.0), "above_margin"] is False
    assert data.loc[("calibrated", "estimation", 500.0), ["margin_p50_mb", "above_margin"]].tolist() == [120.0, True]
    assert data.loc[("calibrated", "baseline", 500.0), "above_margin"] is None
    assert list(levels.data["ablation"][:2]) == ["baseline", "baseline"]  # cumulative order
    # Would have fit: baseline cells where every trial was ok — level 500, concurrency 1 (two trials).
    seed_row = seed.data.set_index(["budget_policy", "ablation"]).loc[("seed", "estimation")]
    assert (seed_row["n_fit"], seed_row["refused_fit_n"], seed_row["refused_fit"]) == (2, 2, 1.0)
    calibrated = seed.data.set_index(["budget_policy", "ablation"]).loc[("calibrated", "estimation")]
    assert calibrated["refused_fit"] == 0.0
    wait = waiting.data.set_index(["budget_policy", "ablation", "concurrency"]).loc[("calibrated", "estimation", 1)]
    assert (wait["n_waited"], wait["n_at_once"], wait["wait_p50_ms"]) == (1, 1, 500.0)
    ratio = estimator.data.set_index("budget_policy").loc["calibrated", "ratio"]
    assert ratio == pytest.approx(1.1)
    figure = outcome_vs_free_memory(rows)
    assert "floor 250 MB" in figure.caption and "n per panel" in figure.caption
    assert len(figure.figure.axes) == 3  # baseline, estimation (calibrated), estimation (seed)
    assert report.to_markdown(levels).count("\n") > len(levels.data)
    assert memory_tables(real_rows) == []  # no sweep, no sweep tables


def test_repeated_sweeps_are_compared_per_ablation_and_under_predictions_against_their_margin(
    real_rows: pd.DataFrame, tmp_path: Path
) -> None:
    """Two runs of one sweep: identical baselines agree; an estimation that went from 4/8 ok to 0/8 does
    not (0.5 lies outside 0/8's interval). One trial under-predicted by 200 MB with a 120 MB margin is
    counted; the others, over-predicted by 10 %, are not."""
    from experiments.report.memory import memory_tables

    rows = _swept(real_rows, tmp_path)
    assert len(memory_tables(rows)) == 4  # a single run: no repeats table
    first, second = rows.copy(), rows.copy()
    first["run_id"], second["run_id"] = "r1", "r2"
    whole = (second["ablation"] == "estimation") & (second["budget_policy"] == "calibrated")
    second.loc[whole & (second["free_above_floor_mb"] == 500.0), "status"] = "oom"
    under = first.index[(first["ablation"] == "estimation") & (first["status"] == "ok") & (first["concurrency"] == 1)][
        0
    ]
    first.loc[under, "estimated_mb"] = first.loc[under, "peak_rss_mb"] - 200.0
    *_, estimator, repeats = memory_tables(pd.concat([first, second], ignore_index=True))
    agree = repeats.data.set_index(["budget_policy", "ablation"])["agree"]
    assert agree[("calibrated", "baseline")] and not agree[("calibrated", "estimation")]
    assert agree[("seed", "estimation")]  # refused every time in both runs
    assert "r1 ok % [CI]" in repeats.header and "r2 ok % [CI]" in repeats.header
    assert estimator.data.set_index("budget_policy").loc["calibrated", "under_beyond_margin_n"] == 1
    only_once = pd.concat([first, second[second["ablation"] == "estimation"]], ignore_index=True)
    *_, partial = memory_tables(only_once)  # the baseline ran in one run only: not compared
    assert set(partial.data["ablation"]) == {"estimation"}
    first["background_restarted"] = False
    first.loc[first.index[0], "background_restarted"] = True  # ran without its background app
    levels, *_ = memory_tables(first)
    assert levels.data["n"].sum() == len(first) - 1
    assert any(note.startswith("1 trial(s) left out") for note in levels.notes)


# -- paired effects and variance per length -----------------------------------------------------------------

#: The texts of the synthetic sweeps below: a length and its audio duration (s), for the RTF.
AUDIO_S = {100: 6.0, 300: 18.0}


def _interleaved(
    path: Path, conditions: dict[str, str | None], latency, blocks: int = 12, restart_every: int | None = None
) -> pd.DataFrame:
    """The rows of an interleaved sweep on one machine, written with the harness's schema and read back
    as the report reads them: every condition (ablation: the ablation it repeats, or None) runs every
    length once per block, iteration = block; with ``restart_every``, on fresh workers every that many
    blocks (epochs recorded). ``latency(ablation, block, length)`` is the trial's latency in ms, None
    for a failed trial."""
    records = []
    for block in range(blocks):
        for length, audio_s in AUDIO_S.items():
            for ablation, original in conditions.items():
                ms = latency(ablation, block, length)
                records.append(
                    {
                        "run_id": "interleaved",
                        "trial_id": len(records),
                        "trial_key": f"{ablation}-generic/L{length}/i{block}",
                        "host": "bench-host",
                        "cpu_model": "Test CPU",
                        "profile": "generic",
                        "simulated": False,
                        "workload": "thesis",
                        "engine": "torch",
                        "quantization": "fp32",
                        "ablation": ablation,
                        "replicate_of": original,
                        "status": "ok" if ms is not None else "error",
                        "latency_ms": ms,
                        "audio_s": audio_s if ms is not None else None,
                        "rtf": ms / 1000 / audio_s if ms is not None else None,
                        "text_length": length,
                        "iteration": block,
                        "concurrency": 1,
                        "block": block,
                        "epoch": block // restart_every if restart_every else None,
                        "position": len(records) % (len(AUDIO_S) * len(conditions)),
                    }
                )
    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), path)
    return report.load_rows(path)


def _effect(table: report.Table, comparison: str, metric: str = "latency_ms") -> pd.Series:
    data = table.data
    found = data[(data["comparison"] == comparison) & (data["metric"] == metric)]
    assert len(found) == 1, f"{comparison} / {metric}: {len(found)} rows"
    return found.iloc[0]


def _noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, size=shape)


def test_a_feature_ten_percent_slower_per_pair_is_plus_ten_percent_and_slower(tmp_path: Path) -> None:
    noise = _noise(5, (12, 301))
    rows = _interleaved(
        tmp_path / "slower.parquet",
        {"budget": None, "affinity": None},
        lambda ablation, block, length: (
            (5.0 * length + 40.0 * noise[block, length]) * (1.1 if ablation == "affinity" else 1)
        ),
    )
    table = effects_table(rows)
    assert list(table.data["comparison"]) == ["budget vs affinity"] * 2  # the only consecutive pair present
    for metric in ("latency_ms", "rtf"):
        row = _effect(table, "budget vs affinity", metric)
        assert row["n_pairs"] == 24
        assert (row["effect_pct"], row["effect_pct_lo"], row["effect_pct_hi"]) == pytest.approx((10.0, 10.0, 10.0))
        assert row["verdict"] == "slower" and np.isnan(row["noise_floor_pct"])
    assert table.cells[0][-5:] == ["24", "pairs", "+10.0 [+10.0, +10.0]", "slower", report.NO_DATA]  # no A/A control
    assert table.name == "effects" and "2000 resamples" in " ".join(table.notes)

    affinity = report.affinity_table(rows)
    assert affinity.data.iloc[0]["n_pairs"] == 24
    assert affinity.data.iloc[0]["change_pct"] == pytest.approx(10.0)
    assert affinity.cells[0][-2:] == ["24", "+10.0 [+10.0, +10.0]"]


def test_an_aa_control_detects_nothing_and_sets_the_noise_floor(tmp_path: Path) -> None:
    """baseline and baseline_repeat drawn from one distribution (fixed seed); budget 8 % slower with the
    same noise. The A/A interval, recomputed from the pairs by hand, is every effect's noise floor."""
    noise = {a: _noise(seed, (12, 301)) for a, seed in (("baseline", 1), ("baseline_repeat", 2), ("budget", 3))}
    scale = {"baseline": 1.0, "baseline_repeat": 1.0, "budget": 1.08}
    rows = _interleaved(
        tmp_path / "aa.parquet",
        {"baseline": None, "baseline_repeat": "baseline", "budget": None},
        lambda ablation, block, length: scale[ablation] * 5.0 * length * (1 + 0.03 * noise[ablation][block, length]),
    )
    table = effects_table(rows)
    control = _effect(table, "A/A: baseline vs baseline_repeat")
    assert control["verdict"] == "no difference detected" and control["aa_control"]
    by_hand = paired_difference_interval(
        np.array([5.0 * n * (1 + 0.03 * noise["baseline"][b, n]) for b in range(12) for n in AUDIO_S]),
        np.array([5.0 * n * (1 + 0.03 * noise["baseline_repeat"][b, n]) for b in range(12) for n in AUDIO_S]),
        relative=True,
    )
    assert control["effect_pct_lo"] == pytest.approx(100 * by_hand.low)
    assert control["effect_pct_lo"] < 0 < control["effect_pct_hi"]
    floor = 100 * max(abs(by_hand.low), abs(by_hand.high))
    feature = _effect(table, "baseline vs budget")
    assert feature["verdict"] == "slower" and feature["effect_pct_lo"] > 0
    assert feature["noise_floor_pct"] == pytest.approx(floor) and control["noise_floor_pct"] == pytest.approx(floor)
    shown = table.cells[list(table.data.index[table.data["comparison"] == "baseline vs budget"])[0]]
    assert shown[-1] == f"{floor:.1f}"
    assert "Warning" not in table.caption


def test_a_worker_process_that_runs_slower_for_its_life_is_noise_once_epochs_are_resampled(tmp_path: Path) -> None:
    """Two names for one condition, 12 blocks on fresh workers every 2: the copy's worker of each epoch
    is a steady few percent off (+1.3 % on average), its pairs otherwise within 0.2 %. Without epochs
    the A/A control reads a difference (and the caption warns); with them it resamples the 6 epochs and
    detects none."""
    offsets = [0.03, 0.01, 0.02, -0.02, 0.03, 0.01]
    noise = _noise(21, (12, 1001))

    def latency(ablation: str, block: int, length: int) -> float:
        shift = offsets[block // 2] if ablation == "baseline_repeat" else 0.0
        return 5.0 * length * (1 + shift + 0.002 * noise[block, length])

    conditions = {"baseline": None, "baseline_repeat": "baseline"}
    pooled = _effect(
        effects_table(_interleaved(tmp_path / "one.parquet", conditions, latency)), "A/A: baseline vs baseline_repeat"
    )
    assert pooled["verdict"] == "slower" and pd.isna(pooled["epochs"])
    table = effects_table(_interleaved(tmp_path / "epochs.parquet", conditions, latency, restart_every=2))
    control = _effect(table, "A/A: baseline vs baseline_repeat")
    assert control["verdict"] == "no difference detected" and control["epochs"] == 6
    assert control["effect_pct"] == pytest.approx(pooled["effect_pct"])
    assert "6 epochs" in table.cells[0] and "Warning" not in table.caption


def test_pairing_ignores_failed_unmatched_and_ambiguous_trials(tmp_path: Path) -> None:
    def latency(ablation: str, block: int, length: int) -> float | None:
        if ablation == "affinity" and block == 3 and length == 100:
            return None  # failed: its budget partner is left without one
        return 1000.0 * block + length + (1.0 if ablation == "affinity" else 0.0)

    rows = _interleaved(tmp_path / "pairs.parquet", {"budget": None, "affinity": None}, latency, blocks=5)
    extra = rows[(rows["ablation"] == "affinity") & (rows["block"] == 4)].assign(block=5, iteration=5)
    twice = rows[(rows["ablation"] == "budget") & (rows["block"] == 2) & (rows["text_length"] == 300)]
    rows = pd.concat([rows, extra, twice], ignore_index=True)  # block 5 only for affinity; one text twice
    before, after, clusters = pair_trials(rows.sample(frac=1, random_state=0), "budget", "affinity", "latency_ms")
    assert set(clusters) == {0}  # no epochs recorded: one cluster, the pairs resampled one by one
    expected = [1000.0 * b + n for b in range(5) for n in (100, 300) if (b, n) not in ((3, 100), (2, 300))]
    assert list(before) == expected and list(after) == [x + 1.0 for x in expected]
    other = rows.assign(profile=np.where(rows["ablation"] == "affinity", "m1_air", "generic"))
    assert len(pair_trials(other, "budget", "affinity", "latency_ms").before) == 0  # another condition: no pair
    old = rows.drop(columns=["block", "position", "replicate_of"])  # an older dataset: the run is one block
    assert sorted(pair_trials(old, "budget", "affinity", "latency_ms").before) == sorted(expected)


def test_a_drift_both_conditions_share_makes_no_paired_effect(tmp_path: Path) -> None:
    """The machine slows by 100 ms per block; estimation's first four blocks fail. Its ok trials then sit
    in the slow blocks, and the unpaired ratio of means reads a slowdown that the pairs do not."""
    noise = {a: _noise(seed, (12, 301)) for a, seed in (("affinity", 8), ("estimation", 9))}

    def latency(ablation: str, block: int, length: int) -> float | None:
        if ablation == "estimation" and block < 4:
            return None
        return 5.0 * length + 100.0 * block + 10.0 * noise[ablation][block, length]

    rows = _interleaved(tmp_path / "drift.parquet", {"affinity": None, "estimation": None}, latency)
    ok = rows[rows["status"] == "ok"].groupby("ablation")["latency_ms"].mean()
    assert ok["estimation"] / ok["affinity"] - 1 > 0.10  # what an unpaired comparison would report
    row = _effect(effects_table(rows), "affinity vs estimation")
    assert row["n_pairs"] == 16 and row["verdict"] == "no difference detected"
    assert row["effect_pct_lo"] < 0 < row["effect_pct_hi"] and abs(row["effect_pct"]) < 1.0


def test_variance_is_per_length_with_the_pyperf_rule(tmp_path: Path) -> None:
    """Length 100: [90, 100, 110] → std 10, CV 10 % (unstable: 10 % or more); length 300: [190, 200,
    210] → std 10, CV 5 %. Pooled over both, the std would be ~55 ms: the lengths' spread, not noise."""
    spread = {0: -10.0, 1: 0.0, 2: 10.0}
    rows = _interleaved(
        tmp_path / "variance.parquet",
        {"baseline": None, "estimation": None},
        lambda ablation, block, length: (
            (100.0 if length == 100 else 200.0) + spread[block] if ablation == "baseline" or block == 0 else None
        ),
        blocks=3,
    )
    table = variance_table(rows)
    assert table.name == "variance"
    data = table.data.set_index(["ablation", "text_length"])
    assert data.loc[("baseline", 100), ["n_ok", "lat_std_ms", "lat_cv"]].tolist() == pytest.approx([3, 10.0, 0.10])
    assert data.loc[("baseline", 300), ["lat_std_ms", "lat_cv"]].tolist() == pytest.approx([10.0, 0.05])
    assert data.loc[("baseline", 100), "rtf_std"] == pytest.approx(10.0 / 1000 / 6.0)
    assert data.loc[("baseline", 100), "rtf_cv"] == pytest.approx(0.10)
    assert data.loc[("baseline", 100), "unstable"] is True and data.loc[("baseline", 300), "unstable"] is False
    assert data.loc[("estimation", 100), "n_ok"] == 1 and data.loc[("estimation", 100), "unstable"] is None
    assert rows.loc[(rows["ablation"] == "baseline"), "latency_ms"].std() > 50  # the pooled figure it replaces
    assert table.header == [
        "ablation",
        "length",
        "n ok",
        "latency std ms",
        "latency CV %",
        "RTF std",
        "RTF CV %",
        "unstable",
    ]
    assert [cells[:2] for cells in table.cells] == [
        ["baseline", "100"],
        ["baseline", "300"],
        ["estimation", "100"],
        ["estimation", "300"],
    ]
    assert table.cells[0] == ["baseline", "100", "3", "10.0", "10.0", "0.002", "10.0", "yes"]
    assert table.cells[2] == ["estimation", "100", "1", "n/a", "n/a", "n/a", "n/a", "n/a"]
    assert "pooled over lengths" in table.caption


def test_the_real_rows_variance_recomputes_with_pandas(real_rows: pd.DataFrame) -> None:
    data = variance_table(real_rows).data.set_index(["ablation", "text_length"])
    ok = real_rows[real_rows["status"] == "ok"].groupby(["ablation", "text_length"])["latency_ms"]
    assert len(data) == real_rows.groupby(["ablation", "text_length"]).ngroups
    for (ablation, length), std in ok.std().items():
        assert data.loc[(ablation, length), "lat_std_ms"] == pytest.approx(std)
        assert data.loc[(ablation, length), "lat_cv"] == pytest.approx(std / ok.mean()[(ablation, length)])


def test_shuffled_rows_give_identical_effect_variance_and_affinity_tables(tmp_path: Path) -> None:
    noise = {a: _noise(seed, (12, 301)) for seed, a in enumerate(("baseline", "baseline_repeat", "budget", "affinity"))}
    scale = {"baseline": 1.0, "baseline_repeat": 1.0, "budget": 0.97, "affinity": 0.95}
    rows = _interleaved(
        tmp_path / "shuffled.parquet",
        {"baseline": None, "baseline_repeat": "baseline", "budget": None, "affinity": None},
        lambda ablation, block, length: scale[ablation] * (5.0 * length + 30.0 * noise[ablation][block, length]),
    )
    shuffled = rows.sample(frac=1, random_state=1).reset_index(drop=True)
    for build in (effects_table, variance_table, report.affinity_table):
        first, second = build(rows), build(shuffled)
        pd.testing.assert_frame_equal(first.data, second.data)
        assert (first.cells, first.caption, first.notes) == (second.cells, second.caption, second.notes)
    assert len(effects_table(rows).data) == 2 * 3  # baseline vs budget, budget vs affinity, A/A; two metrics


def test_the_design_table_says_where_in_the_run_each_condition_ran() -> None:
    """An interleaved run spans 0-100 % with every condition; one run in sequence holds slices."""
    start = pd.Timestamp("2026-01-01", tz="UTC")
    times = [start + pd.Timedelta(seconds=s) for s in range(8)]
    rows = pd.DataFrame(
        {
            "run_id": ["mixed"] * 4 + ["sequential"] * 4,
            "ablation": ["baseline", "budget", "budget", "baseline", "baseline", "baseline", "budget", "budget"],
            "block": [0, 0, 1, 1, 0, 1, 0, 1],
            "started_at": times,
            "status": "ok",
            "host": "h",
            "cpu_model": "Test CPU",
            "profile": "m1_air",
            "simulated": True,
            "workload": "thesis",
            "engine": "torch",
            "quantization": "fp32",
        }
    )
    table = design_table(rows)
    assert table.name == "design"
    got = table.data.set_index(["run_id", "ablation"])[["n", "blocks", "first_pct", "last_pct"]]
    assert got.loc[("mixed", "baseline")].tolist() == [2, 2, 0.0, 100.0]
    assert got.loc[("mixed", "budget")].round(1).tolist() == [2, 2, 33.3, 66.7]
    assert got.loc[("sequential", "baseline")].round(1).tolist() == [2, 2, 0.0, 33.3]
    assert got.loc[("sequential", "budget")].round(1).tolist() == [2, 2, 66.7, 100.0]
    assert table.cells[1] == ["mixed", "budget", "2", "2", "33.3", "66.7"]


def _relabelled(rows: pd.DataFrame, labels: dict[str, dict[str, object]]) -> pd.DataFrame:
    """``rows`` of :func:`_interleaved` whose condition labels (its ``ablation`` column) become the
    given columns; ``trial_key`` keeps the label, so each label stays a condition of its own."""
    out = rows.copy()
    for label, columns in labels.items():
        chosen = rows["ablation"] == label
        for column, value in columns.items():
            out[column] = out[column].astype(object)
            out.loc[chosen, column] = value
    return out


def test_memory_stability_pairs_outcomes_across_the_runtime_s_own_quantization(tmp_path: Path) -> None:
    """Baseline (fp32) OOMs on the long text of every even block, 6 of 24; the whole runtime (int8, as
    it chooses) refuses those and runs the rest; the seed policy refuses everything. Paired over the 24
    texts: -25 pp for the calibrated policy, -25 pp for the seed (it OOMs nowhere either)."""

    def latency(ablation: str, block: int, length: int) -> float | None:
        tight = length == 300 and block % 2 == 0
        return None if ablation == "seed" or (tight and ablation in ("baseline", "estimation")) else 1000.0

    rows = _interleaved(tmp_path / "mem.parquet", {"baseline": None, "estimation": None, "seed": None}, latency)
    tight = (rows["text_length"] == 300) & (rows["block"] % 2 == 0)
    rows = _relabelled(
        rows,
        {
            "baseline": {"budget_policy": "calibrated"},
            "estimation": {"quantization": "int8", "budget_policy": "calibrated"},
            "seed": {"ablation": "estimation", "quantization": None, "budget_policy": "seed", "status": "refused"},
        },
    )
    rows.loc[tight & (rows["trial_key"].str.startswith("baseline")), "status"] = "oom"
    rows.loc[tight & (rows["trial_key"].str.startswith("estimation")), "status"] = "refused"
    table = report.memory_stability_table(rows)
    data = table.data.set_index("budget_policy")
    assert list(data.index) == ["calibrated", "seed"] and (data["n_pairs"] == 24).all()
    assert data["oom_before"].tolist() == pytest.approx([0.25, 0.25]) and (data["oom_after"] == 0).all()
    assert data["oom_change_pp"].tolist() == pytest.approx([-25.0, -25.0])
    assert (data["oom_change_pp_lo"] < -25.0).all() and (data["oom_change_pp_hi"] < 0).all()
    assert "policy" in table.header and "-25.0 [" in table.cells[0][-1]
    # The same outcomes in two runs: nothing pairs, and no unpaired difference is shown instead.
    apart = rows.assign(run_id=np.where(rows["trial_key"].str.startswith("baseline"), "one", "two"))
    unpaired = report.memory_stability_table(apart)
    assert (unpaired.data["n_pairs"] == 0).all() and unpaired.data["oom_change_pp"].isna().all()
    assert any("fewer than two pairs" in note for note in unpaired.notes)


def test_quantization_latency_change_is_paired_against_fp32(tmp_path: Path) -> None:
    """int8 runs every text in 0.8x the fp32 time of the same block, while both drift per block: the
    paired change is -20 % exactly, its interval excludes 0, and fp32's own row has no change."""
    drift = _noise(11, 12)

    def latency(mode: str, block: int, length: int) -> float | None:
        return 5.0 * length * (1 + 0.2 * drift[block]) * (0.8 if mode == "int8" else 1.0)

    rows = _interleaved(tmp_path / "quant.parquet", {"fp32": None, "int8": None}, latency)
    rows = _relabelled(
        rows,
        {
            "fp32": {"ablation": "estimation", "quantization": "fp32"},
            "int8": {"ablation": "estimation", "quantization": "int8"},
        },
    )
    table = report.quantization_table(rows)
    data = table.data.set_index("quantization")
    assert data.loc["int8", "n_pairs"] == 24 and data.loc["int8", "change_pct"] == pytest.approx(-20.0)
    assert data.loc["int8", "change_pct_hi"] == pytest.approx(-20.0) and math.isnan(data.loc["fp32", "change_pct"])
    changes = table.header.index("Δ latency % paired [CI]")
    assert [row[changes] for row in table.cells] == [report.NO_DATA, "-20.0 [-20.0, -20.0]"]
