"""The interleaved block design: every condition gets the same texts in every block, in a seeded order
that a resumed run or another job of an array reproduces; through the CLI, every condition's trials
span the whole run, and bad input is one line naming it."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, harness_cli

from experiments.design import Design, block_range, schedule, spans, split_blocks
from experiments.results import read_rows
from experiments.workload import MemoryLevels, Workload, plan

PLAIN = Workload("w", lengths=(100, 300, 500), iterations=4, concurrency=1)
MEMORY = Workload(
    "m",
    lengths=(100,),
    iterations=2,
    concurrency=(1, 4),
    memory=MemoryLevels(free_above_floor_mb=(-100.0, 500.0), kinds=("static", "dynamic"), swing_mb=300.0),
)


def test_every_block_gives_every_condition_the_same_texts_in_a_shuffled_order() -> None:
    slots = schedule([plan(PLAIN)] * 3, Design(block_size=1, seed=7))
    assert len(slots) == 3 * len(plan(PLAIN))
    assert Counter((s.condition, s.trial) for s in slots) == Counter(
        (c, t) for c in range(3) for t in plan(PLAIN)
    )  # each trial of each condition exactly once
    blocks = sorted({s.block for s in slots})
    assert blocks == [0, 1, 2, 3]
    orders = []
    for block in blocks:
        part = [s for s in slots if s.block == block]
        assert [s.position for s in part] == list(range(9))
        texts = {c: sorted(s.trial.text for s in part if s.condition == c) for c in range(3)}
        assert texts[0] == texts[1] == texts[2] and len(texts[0]) == 3
        assert {s.trial.iteration for s in part} == {block}
        orders.append([(s.condition, s.trial.text_length) for s in part])
    assert len({tuple(order) for order in orders}) > 1  # shuffled per block, not one fixed order
    conditions = [s.condition for s in slots[:9]]
    assert conditions != sorted(conditions)  # interleaved within the block, not condition after condition


def test_the_order_is_a_function_of_seed_and_block_only() -> None:
    design = Design(block_size=2, seed=3)
    again = schedule([plan(PLAIN), plan(PLAIN)], design)
    assert again == schedule([plan(PLAIN), plan(PLAIN)], design)
    assert {s.block for s in again} == {0, 1} and sum(s.block == 0 for s in again) == 2 * 3 * 2
    assert again != schedule([plan(PLAIN), plan(PLAIN)], Design(block_size=2, seed=4))


def test_a_memory_sweep_blocks_by_level_and_takes_turns_by_condition() -> None:
    slots = schedule([plan(MEMORY), plan(MEMORY)], Design(), by_condition=True)
    assert len({s.block for s in slots}) == 2 * 2 * 2  # kinds x levels x iterations
    for block in {s.block for s in slots}:
        part = [s for s in slots if s.block == block]
        assert len({(s.trial.background_kind, s.trial.free_above_floor_mb) for s in part}) == 1
        turns = [s.condition for s in part]
        assert turns in ([0, 0, 1, 1], [1, 1, 0, 0])  # one condition's trials at a time (a fresh worker each)


def test_block_ranges_split_a_run_into_jobs_and_bad_input_names_itself() -> None:
    assert split_blocks(5, None) == [(0, 5)]
    assert split_blocks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert block_range([2, 9], 5) == range(2, 5) and block_range(None, 3) == range(3)
    with pytest.raises(ValueError, match="design.block_size must be an integer >= 1, got 0"):
        Design(block_size=0)
    assert [Design(restart_every=3).epoch(b) for b in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    assert Design(restart_every=None).epoch(99) == 0
    with pytest.raises(ValueError, match="blocks_per_job must be >= 1, got 0"):
        split_blocks(5, 0)
    with pytest.raises(ValueError, match=r"design.blocks must be \[start, stop\)"):
        block_range([3, 1], 5)


def cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """The harness CLI; a ``-m`` among ``overrides`` makes it a multirun."""
    argv = harness_cli(tmp_path, *(o for o in overrides if o != "-m"), multirun="-m" in overrides)
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_every_conditions_trials_span_the_whole_run(tmp_path: Path) -> None:
    """Three conditions (an A/A copy among them) of 10 iterations: each condition has trials in the
    first block and in the last, so its trials span the run (run in sequence, each holds a third).
    Every 4 blocks each condition gets a fresh worker: three epochs, three processes per condition."""
    done = cli(
        tmp_path,
        "-m",
        "+ablation=baseline,baseline_repeat,budget",
        "workload=smoke",
        "workload.lengths=[100,300]",
        "workload.iterations=10",
        "design.restart_every=4",
        "run_id=span",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(tmp_path / "runs" / "span").sort_values("started_at").reset_index(drop=True)
    assert len(rows) == 60 and set(rows["block"]) == set(range(10))
    copies = rows.groupby("ablation")["replicate_of"].agg(lambda values: set(values.dropna()))
    assert copies.to_dict() == {"baseline": set(), "baseline_repeat": {"baseline"}, "budget": set()}
    assert list(rows["block"]) == sorted(rows["block"])  # blocks in order, one after another
    for ablation, part in rows.groupby("ablation"):  # in the first block and in the last
        assert part["block"].min() == 0 and part["block"].max() == 9, ablation
    order = {a: part.index for a, part in rows.groupby("ablation")}  # places in the run, by start time
    assert all(index.min() < 6 and index.max() >= 54 for index in order.values())  # first and last block
    assert (rows["epoch"] == rows["block"] // 4).all()
    served = rows.groupby(["ablation", "epoch"])["worker_trials"].agg(["min", "max"])  # counted anew per worker
    assert (served["min"] == 0).all() and served["max"].tolist() == [7, 7, 3] * 3
    workers = tmp_path / "runs" / "span" / "workers"
    assert sorted(len(list(d.glob("worker-*.log"))) for d in workers.iterdir()) == [3, 3, 3]


def test_spans_say_where_in_the_run_each_condition_ran() -> None:
    start = pd.Timestamp("2026-01-01", tz="UTC")
    rows = pd.DataFrame(
        {
            "ablation": ["a", "b", "a", "b", "c", "c"],
            "started_at": [start + pd.Timedelta(seconds=s) for s in (0, 10, 50, 100, 20, 30)],
        }
    )
    span = spans(rows)
    assert span.loc["a"].tolist() == [0.0, 0.5, 2] and span.loc["b"].tolist() == [0.1, 1.0, 2]
    assert span.loc["c"].tolist() == [0.2, 0.3, 2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("-m", "+ablation=baseline,nope"), "error: unknown ablation 'nope'; valid: affinity, baseline, "),
        (("design.block_size=0",), "error: design.block_size must be an integer >= 1, got 0"),
        (("-m", "design.block_size=0", "+ablation=baseline,budget"), "error: design.block_size must be an integer"),
        (("design.restart_every=0",), "error: design.restart_every must be an integer >= 1 or null, got 0"),
        (("-m", "+ablation=baseline,baseline"), "error: condition baseline-auto-torch-default-"),
        (
            ("-m", "hydra.sweeper.blocks_per_job=0", "+ablation=baseline,budget"),
            "error: hydra.sweeper.blocks_per_job must be >= 1",
        ),
    ],
    ids=[
        "unknown condition",
        "block size",
        "block size in a sweep",
        "restart every",
        "a condition twice",
        "blocks per job",
    ],
)
def test_bad_design_input_is_one_line_naming_it(tmp_path: Path, overrides: tuple[str, ...], message: str) -> None:
    done = cli(tmp_path, *overrides)
    assert done.returncode == 1 and not done.stdout.strip()
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(message), done.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.parquet"))
