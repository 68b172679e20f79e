"""Engine benchmark: our PyTorch engine against Piper's onnxruntime graph, side by side in one run.

    python -m experiments.bench_engine [--runs 3] [--threads 2] [--chunk-length 256] [--quantization fp32]
        [--compute auto]

For each text (100, 300, 500, 800 and 1000 characters from the corpus, plus one 1000-character sentence
with no punctuation) each engine runs in its own fresh process — peak RSS is per process — and the two
alternate (ours first for one text, the reference first for the next) so that drifting machine load
hits both alike. A process loads its engine (ours also compiles its decoder's kernels for every
window length, ``Engine.warm_up``, as the service does at start-up), warms up on a short sentence,
resets the kernel's peak-RSS counter, then synthesizes the text ``runs`` times. Reported: median latency, real-time
factor, time to first audio, peak RSS of the synthesis, and the ratios ours / reference.
Absolute times are printed, never asserted: they belong to this machine and this moment.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from adaptive_tts.runtime.process import run_probe

LENGTHS = (100, 300, 500, 800, 1000)
WARM_UP = "Warming up the engine."


def texts() -> dict[str, str]:
    """The benchmark's texts, from the harness's fixed corpus so every machine runs the same ones."""
    from experiments.workload import cut_text

    cases = {f"{n} chars": cut_text(n, 0) for n in LENGTHS}
    unpunctuated = re.sub(r"\s+", " ", re.sub(r"[^\w\s'$%-]", " ", cut_text(1000, 1))).strip().lower()
    cases["1000 chars, no punctuation"] = unpunctuated
    return cases


@dataclass(frozen=True)
class Measurement:
    latency_s: float
    first_audio_s: float
    audio_s: float
    peak_rss_mb: float

    @property
    def rtf(self) -> float:
        return self.latency_s / self.audio_s


def probe(
    engine_name: str, text: str, runs: int, threads: int, chunk_length: int | None, quantization: str, compute: str
) -> dict:
    """Child side: one engine, one text, ``runs`` timed syntheses."""
    from adaptive_tts.runtime.process import reset_peak_rss
    from adaptive_tts.voice import TimedChunks
    from adaptive_tts.voice.speech import SynthesisOptions

    if engine_name == "reference":
        from adaptive_tts.voice.reference import ReferenceEngine

        engine = ReferenceEngine(num_threads=threads)
        options = SynthesisOptions()
    else:
        from adaptive_tts.backend import FIRST_CHUNK_LENGTH
        from adaptive_tts.voice.engine import Engine

        engine = Engine(num_threads=threads, compute=compute)
        if quantization != "fp32":
            from adaptive_tts.runtime.quantize import QuantizationStrategy, quantize_

            quantize_(engine.model, QuantizationStrategy(mode=quantization))
        first = min(FIRST_CHUNK_LENGTH, chunk_length) if chunk_length else None
        engine.warm_up(chunk_length)
        options = SynthesisOptions(chunk_length=chunk_length, first_chunk_length=first)
    for _ in engine.stream(WARM_UP, options):
        pass
    mechanism = reset_peak_rss()
    results = []
    for _ in range(runs):
        stats = TimedChunks(engine.stream(text, options))
        for _ in stats:
            pass
        results.append(
            {
                "latency_s": stats.latency_s,
                "first_audio_s": stats.first_audio_s,
                "audio_s": stats.samples / engine.sample_rate,
            }
        )
    from adaptive_tts.runtime.process import peak_rss_mb

    return {"runs": results, "peak_rss_mb": peak_rss_mb(), "peak_mechanism": mechanism}


def measure(engine_name: str, text: str, args: argparse.Namespace) -> tuple[Measurement, str]:
    request = {
        "engine": engine_name,
        "text": text,
        "runs": args.runs,
        "threads": args.threads,
        "chunk_length": args.chunk_length,
        "quantization": args.quantization,
        "compute": args.compute,
    }
    out = run_probe(["-m", "experiments.bench_engine", "--probe"], request, what=f"{engine_name} probe")
    runs = out["runs"]
    return Measurement(
        latency_s=statistics.median(r["latency_s"] for r in runs),
        first_audio_s=statistics.median(r["first_audio_s"] for r in runs),
        audio_s=runs[0]["audio_s"],
        peak_rss_mb=out["peak_rss_mb"],
    ), out["peak_mechanism"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed syntheses per text and engine (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-length", type=int, default=256, help="our decoder chunk (0 = one pass)")
    parser.add_argument(
        "--quantization", choices=["fp32", "int8", "int4"], default="fp32", help="our weights (int8/int4: weight-only)"
    )
    parser.add_argument(
        "--compute",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="what our encoder, flow and decoder multiply in (auto: bf16 on CPUs with native bf16)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        req = json.loads(sys.stdin.read())
        print(
            json.dumps(
                probe(
                    req["engine"],
                    req["text"],
                    req["runs"],
                    req["threads"],
                    req["chunk_length"] or None,
                    req["quantization"],
                    req["compute"],
                )
            )
        )
        return 0

    cases = texts()
    rows = []
    mechanism = ""
    with tqdm(total=2 * len(cases), unit="process") as bar:
        for i, (name, text) in enumerate(cases.items()):
            order = ("torch", "reference") if i % 2 == 0 else ("reference", "torch")
            got = {}
            for engine_name in order:
                bar.set_description(f"{name}: {engine_name}")
                got[engine_name], mechanism = measure(engine_name, text, args)
                bar.update()
            rows.append((name, len(text), got["torch"], got["reference"]))

    from adaptive_tts.voice.engine import resolve_compute

    ours = (
        f"torch {args.quantization} weights, {resolve_compute(args.compute)} compute, "
        f"chunk {args.chunk_length or 'one pass'}"
    )
    print(
        f"\nours = {ours}; reference = Piper's onnxruntime graph, one sentence per run; "
        f"{args.threads} threads; median of {args.runs} runs; peak RSS = {mechanism}"
    )
    header = (
        f"{'text':<28}{'audio s':>8} | {'latency s':>19} | {'RTF':>17} | {'first audio s':>19} | "
        f"{'peak RSS MB':>17} | {'ratios ours/ref: RTF':>20}{'first':>7}{'RSS':>7}"
    )
    print(header)
    print(
        f"{'':<28}{'':>8} | {'ours':>9}{'ref':>10} | {'ours':>8}{'ref':>9} | {'ours':>9}{'ref':>10} | "
        f"{'ours':>8}{'ref':>9} |"
    )
    table = []
    for name, n_chars, a, b in rows:
        print(
            f"{name:<28}{a.audio_s:>8.1f} | {a.latency_s:>9.3f}{b.latency_s:>10.3f} | {a.rtf:>8.4f}{b.rtf:>9.4f} | "
            f"{a.first_audio_s:>9.3f}{b.first_audio_s:>10.3f} | {a.peak_rss_mb:>8.0f}{b.peak_rss_mb:>9.0f} | "
            f"{a.rtf / b.rtf:>20.2f}{a.first_audio_s / b.first_audio_s:>7.2f}{a.peak_rss_mb / b.peak_rss_mb:>7.2f}"
        )
        table.append(
            {
                "text": name,
                "chars": n_chars,
                "audio_s": a.audio_s,
                "ours": a.__dict__,
                "reference": b.__dict__,
                "rtf_ratio": a.rtf / b.rtf,
                "first_audio_ratio": a.first_audio_s / b.first_audio_s,
                "peak_rss_ratio": a.peak_rss_mb / b.peak_rss_mb,
            }
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "configuration": ours,
                    "threads": args.threads,
                    "runs": args.runs,
                    "peak_mechanism": mechanism,
                    "rows": table,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
