"""The notebooks run, top to bottom, in a fresh kernel — so they cannot rot — and are what
notebooks/build.py writes (no outputs committed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient
from test_report import run_harness

NOTEBOOKS = REPO / "notebooks"


def _build_module():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def execute(name: str) -> nbformat.NotebookNode:
    """Run a notebook in a new kernel from its own folder, as Jupyter would."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def test_committed_notebooks_are_generated_and_carry_no_outputs() -> None:
    build = _build_module()
    for name in build.NOTEBOOKS:
        committed = (NOTEBOOKS / name).read_text(encoding="utf-8")
        assert committed == build.render(name), f"{name} differs from notebooks/build.py: run it"
        nb = nbformat.reads(committed, as_version=4)
        nbformat.validate(nb)
        assert not outputs(nb) and all(
            cell.get("execution_count") is None for cell in nb.cells if cell.cell_type == "code"
        )


def test_runtime_demo_synthesizes_and_plays() -> None:
    nb = execute("01_runtime_demo.ipynb")
    html = [o["data"]["text/html"] for o in outputs(nb) if "text/html" in o.get("data", {})]
    assert any("<audio" in h for h in html), "no audio player in the outputs"
    assert any("latency" in o.get("text", "") for o in outputs(nb))


def test_thesis_figures_notebook_renders_a_real_dataset(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_harness(tmp_path_factory.getbasetemp() / "harness")
    build = _build_module()
    monkeypatch.setenv(build.DATASET_ENV, str(run))
    monkeypatch.setenv(build.OUT_ENV, str(tmp_path))
    nb = execute("02_thesis_figures.ipynb")
    images = [o for o in outputs(nb) if "image/png" in o.get("data", {})]
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert pngs and len(images) == len(pngs)
    assert all((tmp_path / "figures" / f"{png.stem}.caption.txt").is_file() for png in pngs)
    assert any("text/markdown" in o.get("data", {}) for o in outputs(nb))


def test_the_notebook_default_dataset_is_real_harness_rows() -> None:
    from experiments.report import load_rows

    rows = load_rows(NOTEBOOKS / "data" / "smoke.parquet")
    # notebooks/data/README.md: one run, 5 text lengths x 1 iteration x 2 ablations, every trial served
    assert list(rows["run_id"].unique()) == ["20261127-214652"]
    assert sorted(rows.groupby("ablation")["text_length"].apply(sorted).items()) == [
        ("baseline", [100, 300, 500, 800, 1000]),
        ("estimation", [100, 300, 500, 800, 1000]),
    ]
    assert set(rows["status"]) == {"ok"}
