"""Command line: ``python -m adaptive_tts {synthesize,hardware,estimate,calibrate,serve,bench}``.

A thin layer over the library: it parses arguments, calls one function, prints the result, and turns
expected failures into a one-line error and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


class CliError(Exception):
    """An expected failure, reported as one line on stderr."""


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if number < 0 or number != number:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return number


def _check_writable(path: Path) -> None:
    """Fail before synthesis, not after, when the output cannot be written."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise CliError(f"cannot write {path}: directory {parent} does not exist")
    if path.is_dir():
        raise CliError(f"cannot write {path}: it is a directory")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"cannot write {path}: permission denied")


def cmd_synthesize(args: argparse.Namespace) -> int:
    from .audio import write_wav
    from .backend import BackendOptions, SmartAdaptiveBackend, SynthesisRefused
    from .synthesis import Synthesis
    from .voice import TimedChunks, load_engine
    from .voice.frontend import TextError, validate_text
    from .voice.speech import SynthesisOptions

    out = Path(args.output)
    try:
        validate_text(args.text)
    except TextError as exc:
        raise CliError(str(exc)) from None
    _check_writable(out)
    options = SynthesisOptions(
        noise_scale=args.noise_scale,
        length_scale=args.length_scale,
        noise_w=args.noise_w,
        seed=args.seed,
        chunk_length=args.chunk_length,
    )
    chunks: TimedChunks | Synthesis
    try:
        if args.profile is not None or args.quantization is not None:
            backend = SmartAdaptiveBackend(
                profile=args.profile or "auto", options=BackendOptions.from_settings(vars(args))
            )
            chunks = backend.stream(args.text, options)
            sample_rate = backend.sample_rate
        else:
            engine = load_engine(args.engine, args.num_threads, args.compute)
            chunks = TimedChunks(engine.stream(args.text, options))
            sample_rate = engine.sample_rate
        samples = write_wav(out, chunks, sample_rate)
    except (TextError, SynthesisRefused) as exc:
        out.unlink(missing_ok=True)
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
    audio_s = samples / sample_rate
    print(f"wrote {out} ({sample_rate} Hz mono)")
    print(f"audio seconds:      {audio_s:.2f}")
    print(f"latency:            {chunks.latency_s:.3f} s")
    print(f"first audio:        {chunks.first_audio_s or 0.0:.3f} s")
    print(f"real-time factor:   {chunks.latency_s / audio_s if audio_s else float('nan'):.3f}")
    return 0


def cmd_hardware(args: argparse.Namespace) -> int:
    from .runtime.hardware import detect_hardware, hardware_payload, select_profile

    info = detect_hardware()
    print(json.dumps(hardware_payload(info, select_profile(info, args.profile)), indent=2))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from .backend import BackendOptions, SmartAdaptiveBackend
    from .voice.frontend import TextError, validate_text

    try:
        validate_text(args.text)
    except TextError as exc:
        raise CliError(str(exc)) from None
    backend = SmartAdaptiveBackend(
        profile=args.profile or "auto", options=BackendOptions.from_settings(vars(args), affinity=False)
    )
    print(json.dumps(backend.estimate(args.text), indent=2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import functools
    import itertools

    from tqdm import tqdm

    from .calibration import calibrate, measure_start_up, measuring_backend
    from .runtime.estimator import CalibrationStore, ConfigKey, EstimatorConstants, calibration_texts, machine_key
    from .runtime.hardware import detect_hardware
    from .voice import engine_capabilities
    from .voice.engine import resolve_compute

    store = CalibrationStore(args.output)
    machine = machine_key(detect_hardware())
    train, test = calibration_texts()
    capabilities = engine_capabilities(args.engine)
    compute = resolve_compute(args.compute) if len(capabilities.computes) > 1 else capabilities.computes[0]
    keys = [
        ConfigKey(args.engine, q, c if c and capabilities.chunking else None, t, compute)
        for q, c, t in itertools.product(args.quantization, args.chunk_length, args.threads)
    ]
    print(
        f"calibrating {len(keys)} configuration(s) on {machine}: {len(train)} training and "
        f"{len(test)} held-out texts each, measured in this process"
    )
    rows: list[tuple[ConfigKey, EstimatorConstants]] = []
    with tqdm(unit="request") as bar:
        for _, grouped in itertools.groupby(sorted(keys, key=lambda k: k.num_threads), key=lambda k: k.num_threads):
            group = list(grouped)
            first = max(group, key=lambda k: (-["fp32", "int8", "int4"].index(k.quantization), k.chunk_length or 0))
            backend, startup = measure_start_up(functools.partial(measuring_backend, first, warm_up=False))
            store.save_start_up(machine, startup)

            def tick(key: ConfigKey, done: int, total: int) -> None:
                bar.total = total
                bar.set_postfix_str(str(key), refresh=False)
                bar.update()

            rows += calibrate(backend, group, store=store, machine=machine, progress=tick).items()
            backend.close()
    print(f"\nsaved to {store.path}")
    print(
        f"{'configuration':<28}{'rest MB':>9}{'MB/request':>12}{'MB/100 ids':>12}{'up to ids':>11}"
        f"{'queued':>8}{'MAPE %':>9}{'max under MB':>14}{'max over MB':>13}"
    )
    for key, c in rows:
        knee = "all" if c.knee_tokens is None else f"{c.knee_tokens:.0f}"
        queued = "-" if c.queued_share is None else f"{c.queued_share:.2f}"
        fit = (
            f"{c.fit.mape_percent:>9.2f}{c.fit.max_under_mb:>14.1f}{c.fit.max_over_mb:>13.1f}"
            if c.fit
            else f"{'-':>9}{'-':>14}{'-':>13}"
        )
        print(
            f"{str(key):<28}{c.base_model_mb:>9.1f}{c.per_request_mb:>12.1f}{c.per_100_tokens_mb:>12.2f}{knee:>11}"
            f"{queued:>8}{fit}"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .backend import BackendOptions
    from .runtime.hardware import PROFILES, HardwareProfile, detect_hardware, select_profile, with_cache_limit
    from .server import create_app

    # The model loads inside the server's start-up, where a bad name would end in uvicorn's traceback.
    if args.profile not in (None, "auto", *PROFILES):
        raise CliError(f"unknown hardware profile {args.profile!r}; valid: auto, {', '.join(PROFILES)}")
    options = BackendOptions.from_settings(vars(args), quantization=args.quantization or "fp32")
    name: str = args.profile or "auto"
    profile: str | HardwareProfile = name
    if args.cache_limit is not None:
        profile = with_cache_limit(select_profile(detect_hardware(), name), args.cache_limit)
    app = create_app(profile=profile, options=options, max_jobs=args.max_jobs, retry_after_s=args.retry_after)
    print(f"loading the voice, then serving on http://{args.host}:{args.port} (API docs at /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0


def _add_compute(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compute",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="what our engine multiplies in; auto: bf16 on CPUs with native bf16 (AVX512-BF16, AMX), else fp32",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m adaptive_tts", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    syn = sub.add_parser("synthesize", help="text → 22 050 Hz mono WAV")
    syn.add_argument("text")
    syn.add_argument("-o", "--output", default="out.wav", help="WAV file to write (default out.wav)")
    syn.add_argument("--noise-scale", type=_non_negative_float, default=None)
    syn.add_argument("--length-scale", type=_non_negative_float, default=None)
    syn.add_argument("--noise-w", type=_non_negative_float, default=None)
    syn.add_argument("--seed", type=int, default=None)
    syn.add_argument("--chunk-length", type=_positive_int, default=None, help="decoder chunk in latent frames")
    syn.add_argument("--threads", dest="num_threads", type=_positive_int, default=None)
    syn.add_argument("--engine", choices=["torch", "reference"], default="torch")
    syn.add_argument("--profile", default=None, help="run through the adaptive backend with this hardware profile")
    syn.add_argument("--quantization", choices=["fp32", "int8", "int4"], default=None)
    _add_compute(syn)
    syn.set_defaults(func=cmd_synthesize)

    hw = sub.add_parser("hardware", help="print the detected hardware and selected profile as JSON")
    hw.add_argument("--profile", default=None, help="force a profile by name (default: auto)")
    hw.set_defaults(func=cmd_hardware)

    est = sub.add_parser("estimate", help="pre-synthesis memory estimate of a text, as JSON")
    est.add_argument("text")
    est.add_argument("--profile", default=None)
    est.add_argument("--engine", choices=["torch", "reference"], default="torch")
    est.add_argument("--quantization", choices=["fp32", "int8", "int4"], default=None)
    _add_compute(est)
    est.add_argument("--chunk-length", type=_positive_int, default=None)
    est.add_argument("--threads", dest="num_threads", type=_positive_int, default=None)
    est.set_defaults(func=cmd_estimate)

    cal = sub.add_parser("calibrate", help="fit the memory estimator's constants on this machine")
    cal.add_argument("--engine", choices=["torch", "reference"], default="torch")
    cal.add_argument("--quantization", nargs="+", choices=["fp32", "int8", "int4"], default=["fp32"])
    _add_compute(cal)
    cal.add_argument(
        "--chunk-length", nargs="+", type=int, default=[256], help="decoder chunk lengths in frames; 0 = one pass"
    )
    cal.add_argument("--threads", nargs="+", type=_positive_int, default=[os.cpu_count() or 1])
    cal.add_argument(
        "--output", default=None, help="calibration file (default: ~/.cache/adaptive-tts/calibration.json)"
    )
    cal.set_defaults(func=cmd_calibrate)

    srv = sub.add_parser("serve", help="HTTP service: the seed's API and OpenAI's /v1/audio/speech")
    srv.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)"
    )
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--profile", default=None, help="hardware profile by name (default: auto)")
    srv.add_argument("--engine", choices=["torch", "reference"], default="torch")
    srv.add_argument("--quantization", choices=["fp32", "int8", "int4"], default=None, help="default fp32")
    _add_compute(srv)
    srv.add_argument("--chunk-length", type=_positive_int, default=None, help="decoder chunk in latent frames")
    srv.add_argument("--threads", dest="num_threads", type=_positive_int, default=None)
    srv.add_argument(
        "--max-jobs",
        type=_positive_int,
        default=16,
        help="synthesis requests held at once, running or waiting for memory; more get 503 (default 16)",
    )
    srv.add_argument("--retry-after", type=_positive_int, default=5, help="Retry-After seconds of a 503 (default 5)")
    srv.add_argument(
        "--cache-limit",
        type=_non_negative_float,
        default=None,
        metavar="MB",
        help="most the audio cache may hold, in MB (default: the profile's max cache; the budget "
        "manager lowers it further as memory tightens)",
    )
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # invalid option values the library rejects
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
