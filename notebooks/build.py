"""``python notebooks/build.py``: write the notebooks of this folder from the cells below.

The notebooks are generated rather than edited so that the committed files never carry outputs (which
would go stale and bloat the history) and so that tests/test_notebooks.py can check the committed files
are exactly what this script writes, then execute them against real rows.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
#: The environment variables notebook 02 reads (the tests set them; so can a reader).
DATASET_ENV, OUT_ENV, QUANTIZE_ENV = "THESIS_DATASET", "THESIS_REPORT_OUT", "THESIS_QUANTIZE"

RUNTIME_DEMO = [
    new_markdown_cell(
        "# The adaptive TTS runtime, step by step\n\n"
        "Detect the machine, pick its profile, estimate the memory a text needs, synthesize it, listen, and "
        "read the system status — the same calls the HTTP service makes. Full precision and no CPU pinning, "
        "so the notebook changes nothing about the process it runs in."
    ),
    new_code_cell(
        "from adaptive_tts.backend import BackendOptions, SmartAdaptiveBackend\n"
        "from adaptive_tts.runtime.hardware import detect_hardware\n"
        "from IPython.display import Audio, display\n\n"
        'TEXT = "The runtime checks its memory budget before it speaks."'
    ),
    new_markdown_cell("## The machine\nWhat the runtime sees: CPU, cores, memory (and a cgroup limit, if any)."),
    new_code_cell("info = detect_hardware()\ninfo"),
    new_markdown_cell("## The backend and the configuration it selected for this machine"),
    new_code_cell(
        'backend = SmartAdaptiveBackend(options=BackendOptions(quantization="fp32", affinity=False))\n'
        "hardware = backend.hardware()\n"
        '{key: hardware[key] for key in ("profile", "memory_budget", "selected_configuration", "runtime_features")}'
    ),
    new_markdown_cell("## Memory estimate before synthesis\nThe seed's `/estimate-memory` payload for `TEXT`."),
    new_code_cell("backend.estimate(TEXT)"),
    new_markdown_cell("## Synthesize and listen"),
    new_code_cell(
        "result = backend.synthesize(TEXT)\n"
        'print(f"latency {result.latency_s:.2f} s, first audio {result.first_audio_s:.2f} s, "\n'
        '      f"audio {result.audio_s:.2f} s, real-time factor {result.rtf:.2f}, tokens {result.text_tokens}")\n'
        "display(Audio(result.audio, rate=result.sample_rate))"
    ),
    new_markdown_cell("## System status\nResources, throttling risk and the recommended action, right now."),
    new_code_cell("backend.system_status()"),
    new_code_cell("backend.close()"),
]

THESIS_FIGURES = [
    new_markdown_cell(
        "# Thesis tables and figures from a dataset\n\n"
        "Regenerates what `python -m experiments.report` writes, and shows it here. Set the dataset in the "
        f"next cell or through `{DATASET_ENV}` (a run folder, a folder of runs or a Parquet file); the "
        "default is the small real smoke dataset beside this notebook (`data/README.md` says where it came "
        "from), which is enough to see every figure, not to conclude anything."
    ),
    new_code_cell(
        "# Parameters\n"
        "import os\n\n"
        f'DATASET = os.environ.get("{DATASET_ENV}", "data/smoke.parquet")\n'
        f'OUT_DIR = os.environ.get("{OUT_ENV}", "")  # empty: a temporary folder\n'
        f'QUANTIZE = os.environ.get("{QUANTIZE_ENV}", "")  # optional bench_quantize CSV/Parquet',
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell(
        "import tempfile\n"
        "from pathlib import Path\n\n"
        "from IPython.display import Image, Markdown, display\n\n"
        "from experiments.report import load_bench, load_rows, render_report\n\n"
        "rows = load_rows(DATASET)\n"
        "out_dir = Path(OUT_DIR or tempfile.mkdtemp(prefix='thesis-report-'))\n"
        "bench = load_bench(QUANTIZE) if QUANTIZE else None\n"
        'rows.groupby(["profile", "ablation", "status"], dropna=False).size().rename("trials").to_frame()'
    ),
    new_code_cell(
        "report = render_report(rows, out_dir, bench)\n"
        'print(f"{len(report.written)} files under {out_dir}")\n'
        "for skipped in report.skipped:\n"
        '    print(f"skipped {skipped.name}: {skipped.reason}")'
    ),
    new_markdown_cell("## Tables"),
    new_code_cell(
        'for path in report.written:\n    if path.suffix == ".md":\n        display(Markdown(path.read_text()))'
    ),
    new_markdown_cell("## Figures\nEach with its caption file: what is drawn, n, runs and the machine."),
    new_code_cell(
        "for path in report.written:\n"
        '    if path.suffix == ".png":\n'
        "        display(Image(filename=str(path), width=480))\n"
        '        print(path.with_name(path.stem + ".caption.txt").read_text())'
    ),
]


def notebook(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    """A notebook with stable cell ids (so regenerating it changes nothing) and the venv's kernel."""
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index:02d}"
    return nb


NOTEBOOKS = {
    "01_runtime_demo.ipynb": notebook(RUNTIME_DEMO),
    "02_thesis_figures.ipynb": notebook(THESIS_FIGURES),
}


def render(name: str) -> str:
    """The file content of notebook ``name`` as this script writes it."""
    return nbformat.writes(NOTEBOOKS[name])


def main() -> None:
    for name in NOTEBOOKS:
        (HERE / name).write_text(render(name), encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
