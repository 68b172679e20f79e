"""Quantization benchmark: bytes, latency, peak RSS and quality of each quantization mode vs fp32.

    python -m experiments.bench_quantize [--rounds 5] [--threads 1] [--chunk-length 256]
                                         [--calibration-size 32] [--eval-size 12] [-v]

Rows: fp32; weight-only INT8; INT8 with dynamic activations where it helps (weight-only elsewhere);
weight-only INT4; and the two layer-wise choices the seed's profiles make — M1 Air's INT8 row, and the
same profile with under 6 GB available, which switches to INT4.

* **Weight bytes** are what the model holds (parameters + buffers), and the ratio to fp32.
* **Latency**: every mode's model lives in this one process; a round synthesizes the same texts
  (pre-phonemized, seeded, chunked like the profiles) with every mode, in an order rotated each round so
  that drifting machine load hits all alike. Reported: the median over rounds, and the median of the
  per-round ratio to fp32 (paired, so it survives load that shifts whole rounds).
* **Peak RSS**: each mode in a fresh process (peak RSS is per process): load, quantize (the layer-wise
  rows apply the choice calibrated here, without calibrating again), read the start-up peak, reset the
  kernel's high-water mark, synthesize the texts once, read the synthesis peak.
* **Quality**: MCD and log-mel distance to fp32 with the same noise and the same durations, and how far
  the durations themselves moved, on ``--eval-size`` corpus sentences with seeds the calibration never
  saw. The reference point: fp32 against itself with another prior-noise seed (the voice's own variation).
  Layer-wise rows also print each group's calibration result (the group alone at the mode, all else fp32).

Every mode computes in fp32 (``Engine(compute="fp32")``), so the rows measure weight quantization
alone; bf16 compute, the default on CPUs with native bf16, is judged against fp32 the same way by
``experiments.regression`` (``default_mcd_db``) and ``tests/test_compute.py``.

The default is one intra-op thread: on a shared two-core machine a second thread mostly measures the
other processes. Absolute numbers belong to this machine and this moment; the ratios are the result.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gc
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from adaptive_tts.runtime.process import run_probe
from adaptive_tts.units import mib

if TYPE_CHECKING:
    from adaptive_tts.runtime.quality import QualityScore

#: Latency/RSS texts: two lengths from the harness's fixed corpus (the same characters on every machine).
TEXT_LENGTHS = (100, 300)
WARM_UP = "Warming up the engine."


@dataclass(frozen=True)
class Row:
    """One benchmark row: a name and the strategy that makes it."""

    name: str
    strategy: dict


@dataclass
class Result:
    row: Row
    weight_bytes: int
    ratio: float
    precisions: dict[str, str]
    quality_mcd_db: float
    quality_log_mel_db: float
    duration_change: float
    report_groups: list
    notes: list[str]
    latencies_s: list[float]
    latency_ratios: list[float]
    audio_s: float = 0.0
    startup_peak_mb: float = 0.0
    steady_rss_mb: float = 0.0
    synthesis_peak_mb: float = 0.0


def rows(calibration_size: int) -> list[Row]:
    from adaptive_tts.runtime.hardware import PROFILES
    from adaptive_tts.runtime.quantize import QuantizationStrategy

    air = PROFILES["m1_air"]
    layer_wise_int8 = replace(QuantizationStrategy.for_profile(air), calibration_size=calibration_size)
    layer_wise_int4 = replace(
        QuantizationStrategy.for_profile(air, available_mb=4096), calibration_size=calibration_size
    )
    return [
        Row("fp32", asdict(QuantizationStrategy(mode="fp32"))),
        Row("int8", asdict(QuantizationStrategy(mode="int8"))),
        Row("int8 dynamic", asdict(QuantizationStrategy(mode="int8", dynamic=True))),
        Row("int4", asdict(QuantizationStrategy(mode="int4"))),
        Row("int8 layer-wise (m1_air)", asdict(layer_wise_int8)),
        Row("int4 layer-wise (<6 GB)", asdict(layer_wise_int4)),
    ]


def texts() -> list[str]:
    from experiments.workload import cut_text

    return [cut_text(n, 0) for n in TEXT_LENGTHS]


# --------------------------------------------------------------------------------------------------
# Peak RSS, in a fresh process per mode
# --------------------------------------------------------------------------------------------------


def probe(strategy: dict, threads: int, chunk_length: int | None) -> dict:
    """Child side: load, quantize as told, synthesize the texts once; the kernel's memory counters."""
    import torch

    from adaptive_tts.runtime.process import current_rss_mb, peak_rss_mb, reset_peak_rss
    from adaptive_tts.runtime.quantize import QuantizationStrategy, quantize_
    from adaptive_tts.voice.engine import Engine
    from adaptive_tts.voice.weights import load_vits

    torch.set_num_threads(threads)
    model, voice_config = load_vits()
    quantize_(model, QuantizationStrategy(**strategy))
    gc.collect()
    engine = Engine(model=model, voice_config=voice_config, compute="fp32")
    startup_peak, steady = peak_rss_mb(), current_rss_mb()
    options = engine.resolve(seed=0, chunk_length=chunk_length)
    engine.synthesize(WARM_UP, options)
    reset_peak_rss()  # the high-water mark from here on: synthesis only
    for text in texts():
        engine.synthesize(text, options)
    return {"startup_peak_mb": startup_peak, "steady_rss_mb": steady, "synthesis_peak_mb": peak_rss_mb()}


def measure_rss(strategy: dict, threads: int, chunk_length: int | None) -> dict:
    request = {"strategy": strategy, "threads": threads, "chunk_length": chunk_length}
    return run_probe(["-m", "experiments.bench_quantize", "--probe"], request, what="quantization probe")


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> tuple[list[Result], QualityScore]:
    import torch

    from adaptive_tts.runtime.quality import QualityScore, compare
    from adaptive_tts.runtime.quantize import CalibrationSet, QuantizationStrategy, quantize_
    from adaptive_tts.voice.engine import Engine
    from adaptive_tts.voice.weights import load_vits
    from experiments.workload import cut_text

    torch.set_num_threads(args.threads)
    fp32, voice_config = load_vits()
    engine = Engine(model=fp32, voice_config=voice_config, compute="fp32")
    frontend = engine.frontend
    calibration = CalibrationSet.default(frontend, voice_config, args.calibration_size)
    held_out = CalibrationSet.from_texts(
        frontend,
        [cut_text(120, i) for i in range(args.eval_size)],
        voice_config,
        size=args.eval_size,
        first_seed=10_000,
    )
    bench_rows = rows(args.calibration_size)
    chunk_length = args.chunk_length or None
    sentences = [frontend.sentences(t) for t in texts()]
    work = len(bench_rows) * (2 + args.rounds)
    results: list[Result] = []
    with tqdm(total=work, unit="step") as bar:
        bar.set_description("fp32 references")
        references = held_out.references(fp32)
        own_variation = QualityScore.mean(
            [
                compare(ref.audio, held_out.render(fp32, i, durations=ref.durations, noise_seed=20_000 + i).audio)
                for i, ref in enumerate(references)
            ]
        )
        models, engines = {}, {}
        for row in bench_rows:
            bar.set_description(f"quantize {row.name}")
            strategy = QuantizationStrategy(**row.strategy)
            model = fp32 if strategy.mode == "fp32" else copy.deepcopy(fp32)
            report = quantize_(model, strategy, calibration if strategy.layer_wise else None)
            score = held_out.score(model, references)
            models[row.name] = model
            engines[row.name] = Engine(model=model, voice_config=voice_config, compute="fp32")
            results.append(
                Result(
                    row=row,
                    weight_bytes=report.bytes_after,
                    ratio=report.ratio,
                    precisions=report.precisions,
                    quality_mcd_db=score.quality.mcd_db,
                    quality_log_mel_db=score.quality.log_mel_db,
                    duration_change=score.duration_change,
                    report_groups=report.groups,
                    notes=report.notes,
                    latencies_s=[],
                    latency_ratios=[],
                )
            )
            bar.update()

        options = engine.resolve(seed=0, chunk_length=chunk_length)
        for e in engines.values():
            list(e.stream(WARM_UP, options))
        for r in range(args.rounds):
            order = results[r % len(results) :] + results[: r % len(results)]
            elapsed = {}
            for result in order:
                bar.set_description(f"latency round {r + 1}: {result.row.name}")
                e = engines[result.row.name]
                samples = 0
                start = time.perf_counter()
                for sentence_list in sentences:
                    for chunk in e.stream_sentences(sentence_list, options):
                        samples += len(chunk)
                elapsed[result.row.name] = time.perf_counter() - start
                result.audio_s = samples / e.sample_rate
                bar.update()
            for result in results:
                result.latencies_s.append(elapsed[result.row.name])
                result.latency_ratios.append(elapsed[result.row.name] / elapsed["fp32"])
        del engines, models
        gc.collect()

        for result in results:
            bar.set_description(f"peak RSS {result.row.name}")
            strategy = {**result.row.strategy, "precisions": result.precisions}
            for key, value in measure_rss(strategy, args.threads, chunk_length).items():
                setattr(result, key, value)
            bar.update()
    return results, own_variation


def print_tables(results: list[Result], own: QualityScore, args: argparse.Namespace) -> None:
    fp32 = next(r for r in results if r.row.name == "fp32")
    print(
        f"\n{args.threads} thread(s); chunk {args.chunk_length or 'one pass'}; latency = median of "
        f"{args.rounds} rotated rounds over {len(TEXT_LENGTHS)} texts ({fp32.audio_s:.1f} s of audio); "
        f"quality on {args.eval_size} held-out samples (same noise + durations as fp32); "
        f"layer-wise calibrated on {args.calibration_size} samples"
    )
    print(
        f"{'mode':<26}{'weights MB':>11}{'×fp32':>7} | {'latency s':>10}{'×fp32':>7} | "
        f"{'start-up peak':>13}{'steady':>8}{'synth peak':>11}{'×fp32':>7} | "
        f"{'MCD dB':>7}{'log-mel':>8}{'dur moved':>10}"
    )
    for r in results:
        print(
            f"{r.row.name:<26}{mib(r.weight_bytes):>11.2f}{r.ratio:>7.3f} | "
            f"{statistics.median(r.latencies_s):>10.3f}{statistics.median(r.latency_ratios):>7.2f} | "
            f"{r.startup_peak_mb:>10.0f} MB{r.steady_rss_mb:>8.0f}{r.synthesis_peak_mb:>11.0f}"
            f"{r.synthesis_peak_mb / fp32.synthesis_peak_mb:>7.2f} | "
            f"{r.quality_mcd_db:>7.3f}{r.quality_log_mel_db:>8.3f}{100 * r.duration_change:>9.2f}%"
        )
    print(
        f"{'fp32, other prior noise':<26}{'':>11}{'':>7} | {'':>10}{'':>7} | {'':>13}{'':>8}{'':>11}{'':>7} | "
        f"{own.mcd_db:>7.3f}{own.log_mel_db:>8.3f}{'':>10}   (the voice's own variation)"
    )
    for r in results:
        if not r.row.strategy["layer_wise"]:
            continue
        print(f"\n{r.row.name}: per group (calibration: the group alone at {r.row.strategy['mode']}, all else fp32)")
        print(f"{'group':<22}{'params':>10}{'chosen':>8}{'MB':>8} | {'MCD dB':>7}{'log-mel':>8}{'dur moved':>10}")
        for g in r.report_groups:
            alone = g.alone
            print(
                f"{g.name:<22}{g.parameters:>10,}{g.precision:>8}{mib(g.bytes):>8.3f} | "
                f"{alone.mcd_db:>7.3f}{alone.log_mel_db:>8.3f}{100 * g.alone_duration_change:>9.2f}%"
            )
        for note in r.notes:
            print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds (median; order rotates)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-length", type=int, default=256, help="decoder chunk in frames (0 = one pass)")
    parser.add_argument(
        "--calibration-size",
        type=int,
        default=32,
        help="layer-wise calibration samples (the m1_air profile's row says 32)",
    )
    parser.add_argument("--eval-size", type=int, default=12, help="held-out samples for the quality columns")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each calibration step")
    parser.add_argument(
        "--csv",
        type=Path,
        default=Path("results/bench_quantize.csv"),
        help="also write the measurements here for experiments.report (default: %(default)s)",
    )
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        request = json.loads(sys.stdin.read())
        print(json.dumps(probe(request["strategy"], request["threads"], request["chunk_length"])))
        return 0
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    results, own_variation = run(args)
    print_tables(results, own_variation, args)
    if args.csv is not None:
        write_csv(results, args.csv)
        print(f"\nwrote {args.csv}")
    return 0


def write_csv(results: list[Result], path: Path) -> None:
    """One row per configuration, in the columns ``experiments.report`` reads (``--quantize``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["mode", "variant", "weight_bytes", "mcd_db", "log_mel_db"])
        for r in results:
            writer.writerow(
                [r.row.strategy["mode"], r.row.name, r.weight_bytes, r.quality_mcd_db, r.quality_log_mel_db]
            )


if __name__ == "__main__":
    sys.exit(main())
