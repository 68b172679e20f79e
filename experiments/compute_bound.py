"""The least time a run's syntheses can take on this machine: their arithmetic at its matrix-multiply rate.

    python -m experiments.compute_bound results/runs/<run_id> [--threads 2]

Why: a sweep's wall time is almost all synthesis, and synthesis is almost all multiply-adds, so how
long a sweep takes on a machine is bounded below by arithmetic, whatever the harness or the engine
do. For a run's ``ok`` trials this counts the floating-point operations the voice needs (torch's
``FlopCounterMode``, which counts matrix multiplies and convolutions, 2 per multiply-add):

- the text encoder and duration predictor, for each trial's text, its sentences encoded one at a time
  and unpadded (each trial encodes its text again);
- the flow and the decoder, per latent frame (both are convolutions along time, so linear in frames),
  times the frames of audio each trial produced: no streaming margins, no padding.

It divides that by the rate of one large matrix multiply in the run's compute precision on
``--threads`` threads (best of several): a convolution is a matrix multiply at best, so no engine on
this machine does the voice's arithmetic faster. Printed: the arithmetic per stage, the rate, the
floor, and the run's synthesis time and wall time against it. Only the trials' own syntheses count:
worker start-ups and the estimator's calibration come on top of the floor.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from adaptive_tts.voice.engine import COMPUTE_DTYPES, Engine
from experiments.results import read_rows

#: Latent frames the per-frame counts are taken over (any length gives the same count per frame).
COUNT_FRAMES = 256
#: Side of the square matrices whose multiply sets the machine's rate, and how many times it runs.
GEMM_SIZE, GEMM_REPEATS = 2048, 30


@dataclass(frozen=True)
class FrameFlops:
    """Operations per latent frame of the two stages that run along the audio's frames."""

    flow: float
    decoder: float


@dataclass(frozen=True)
class RunArithmetic:
    """What a run's ``ok`` trials computed, counted in floating-point operations."""

    trials: int
    texts: int
    frames: int
    encoder: float
    flow: float
    decoder: float
    synthesis_s: float  # the trials' summed latency
    wall_s: float  # from the first trial's start to the last one's end

    @property
    def total(self) -> float:
        return self.encoder + self.flow + self.decoder

    def floor_s(self, rate: float) -> float:
        """Seconds the arithmetic takes at ``rate`` operations a second."""
        return self.total / rate


def frame_flops(engine: Engine, frames: int = COUNT_FRAMES) -> FrameFlops:
    """The flow's and the decoder's operations per latent frame, counted over one pass of ``frames``."""
    model = engine.model
    channels = model.config.hidden_channels
    z = torch.zeros(1, channels, frames)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as flow:
            model.flow_reverse(z, torch.ones(1, 1, frames))
        with FlopCounterMode(display=False) as decoder:
            model.decode(z)
    return FrameFlops(flow.get_total_flops() / frames, decoder.get_total_flops() / frames)


def encoder_flops(engine: Engine, text: str) -> int:
    """The encoder's and duration predictor's operations for ``text``, a sentence at a time, unpadded."""
    total = 0
    with torch.inference_mode():
        for sentence in engine.frontend.sentences(text):
            ids = torch.as_tensor(list(sentence.ids), dtype=torch.long)
            with FlopCounterMode(display=False) as counter:
                engine.model.encode_batch([ids], [torch.zeros(2, len(ids))], 1.0)
            total += counter.get_total_flops()
    return total


def account(
    rows: pd.DataFrame, engine: Engine, per_frame: FrameFlops | None = None, progress: bool = False
) -> RunArithmetic:
    """Count what ``rows``' ``ok`` trials computed; each distinct text is counted once and reused
    (``progress``: a bar over them, since a thesis run's ~150 texts take minutes)."""
    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        raise ValueError("the run has no ok trial to count")
    per_frame = per_frame or frame_flops(engine)
    frames_per_second = engine.sample_rate / engine.hop_length
    frames = int((ok["audio_s"] * frames_per_second).round().sum())
    texts = tqdm(ok["text"].unique(), desc="texts", unit="text", disable=not progress)
    per_text = {text: encoder_flops(engine, text) for text in texts}
    started = pd.to_datetime(ok["started_at"])
    ended = started + pd.to_timedelta(ok["latency_ms"], unit="ms")
    return RunArithmetic(
        trials=len(ok),
        texts=len(per_text),
        frames=frames,
        encoder=float(sum(per_text[text] for text in ok["text"])),
        flow=per_frame.flow * frames,
        decoder=per_frame.decoder * frames,
        synthesis_s=float(ok["latency_ms"].sum()) / 1000,
        wall_s=(ended.max() - started.min()).total_seconds(),
    )


def gemm_rate(threads: int, dtype: torch.dtype, size: int = GEMM_SIZE, repeats: int = GEMM_REPEATS) -> float:
    """Operations a second of the fastest of ``repeats`` ``size``-square matrix multiplies."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best = float("inf")
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def compute_of(rows: pd.DataFrame) -> str:
    """The one compute precision of ``rows``' ``ok`` trials, which sets the rate to compare with."""
    recorded = rows.loc[rows["status"] == "ok", "compute"]
    if recorded.empty:
        raise ValueError("the run has no ok trial to count")
    if recorded.isna().any():
        raise ValueError("the run's rows do not record their compute precision (a harness before the column)")
    found = sorted(set(recorded))
    if len(found) > 1:
        raise ValueError(f"the run mixes compute precisions {found}: count one at a time")
    if found[0] not in COMPUTE_DTYPES:
        raise ValueError(
            f"unknown compute precision {found[0]!r} in the rows: expected one of {sorted(COMPUTE_DTYPES)}"
        )
    return found[0]


def render(run: RunArithmetic, rate: float, compute: str, threads: int) -> str:
    floor = run.floor_s(rate)
    tera = 1e12
    return "\n".join(
        [
            f"{run.trials} ok trials of {run.texts} distinct texts, {run.frames:,} latent frames",
            f"arithmetic: encoder {run.encoder / tera:.1f} + flow {run.flow / tera:.1f} + decoder "
            f"{run.decoder / tera:.1f} = {run.total / tera:.1f} TFLOP",
            f"{compute} matrix multiply on {threads} threads: {rate / 1e9:.0f} GFLOP/s "
            f"(best of {GEMM_REPEATS}, {GEMM_SIZE}^3)",
            f"floor: {floor / 60:.1f} min of synthesis",
            f"the run: {run.synthesis_s / 60:.1f} min of synthesis ({floor / run.synthesis_s:.0%} of the rate), "
            f"{run.wall_s / 60:.1f} min from its first trial to its last",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (results/runs/<run_id>) or a rows folder")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of the matrix multiply")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if not args.run.exists():
        parser.error(f"no run at {args.run}")
    rows = read_rows(args.run)
    try:
        compute = compute_of(rows)  # before the minutes of counting
        run = account(rows, Engine(compute="fp32"), progress=True)  # the counts do not depend on the precision
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(run, gemm_rate(args.threads, COMPUTE_DTYPES[compute]), compute, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
