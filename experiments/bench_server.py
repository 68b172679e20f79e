"""Benchmark the HTTP service on loopback: ``python -m experiments.bench_server``.

Starts ``python -m adaptive_tts serve`` on a free loopback port and measures, as a client sees them:

* ``/tts`` latency (request sent → last byte) of 100-character texts at concurrency 1 and 8, p50/p95;
* time to first byte of a streamed 1000-character ``/tts`` (the client leaves after the first bytes);
* ``/system-status`` latency p50/p95 while 8 syntheses run (the event loop must not wait for the model).

Every request has its own text (cut from the experiment corpus), so the audio cache never answers.
Load from other processes on the machine changes every number: the load average is printed with them.

``--soak`` measures the service's own memory instead (:mod:`experiments.bench_soak`, which is also
``python -m experiments.bench_soak``): bursts of varied traffic with idle gaps between them, the server's
RSS and audio cache after each burst, then ``/cache/clear`` and the RSS it leaves after two idle seconds.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from experiments.bench_soak import add_soak_options, run_soak
from experiments.serving import add_server_options, running_server, server_args
from experiments.workload import cut_text


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: an observed value, which is what a handful of samples supports."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def distinct_texts(length: int, count: int, skip: set[str]) -> list[str]:
    """``count`` different corpus texts of at most ``length`` characters, none of them in ``skip``."""
    texts: list[str] = []
    iteration = 0
    while len(texts) < count:
        text = cut_text(length, iteration)
        iteration += 1
        if text not in skip and text not in texts:
            texts.append(text)
        if iteration > 100 * count:
            raise RuntimeError(f"the corpus has fewer than {count} distinct {length}-character texts")
    skip.update(texts)
    return texts


def tts_latencies(url: str, texts: list[str], concurrency: int) -> list[float]:
    local = threading.local()

    def one(text: str) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=600)
        started = time.perf_counter()
        response = local.client.post("/tts", data={"text": text})
        response.raise_for_status()
        return time.perf_counter() - started

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, texts))


def status_while_busy(url: str, texts: list[str], concurrency: int) -> tuple[list[float], list[float]]:
    """/tts latencies at ``concurrency``, and /system-status latencies polled while they run."""
    done = threading.Event()
    polls: list[float] = []

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get("/system-status").raise_for_status()
                polls.append(time.perf_counter() - started)
                time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        latencies = tts_latencies(url, texts, concurrency)
    finally:
        done.set()
        poller.join()
    return latencies, polls


def time_to_first_byte(url: str, text: str) -> float:
    with httpx.Client(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        with client.stream("POST", "/tts", data={"text": text}) as response:
            response.raise_for_status()
            next(response.iter_raw())
            ttfb = time.perf_counter() - started
        # The client left mid-stream; wait until the server has closed the job before the next run.
        deadline = time.monotonic() + 120
        while client.get("/health").json()["queue"]["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.1)
    return ttfb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_server", description=__doc__.splitlines()[0])
    parser.add_argument("--requests-c1", type=int, default=10, help="/tts requests at concurrency 1")
    parser.add_argument("--requests-c8", type=int, default=32, help="/tts requests at concurrency 8")
    parser.add_argument("--ttfb-runs", type=int, default=3)
    add_server_options(parser)
    parser.add_argument(
        "--soak",
        action="store_true",
        help="measure the server's memory over bursts of varied traffic instead of latency",
    )
    add_soak_options(parser)
    args = parser.parse_args(argv)
    serve_args = server_args(args)
    if args.soak:
        return run_soak(serve_args, args)
    used: set[str] = set()
    warmup = distinct_texts(100, 8, used)
    c1 = distinct_texts(100, args.requests_c1, used)
    c8 = distinct_texts(100, args.requests_c8, used)
    long_texts = distinct_texts(1000, args.ttfb_runs, used)

    with tempfile.TemporaryDirectory() as tmp, running_server(serve_args, Path(tmp) / "server.log") as (url, _):
        hardware = httpx.get(url + "/hardware", timeout=60).json()
        config = hardware["selected_configuration"]
        print(
            f"server: {hardware['hardware']['cpu_model']}, {hardware['hardware']['logical_cores']} logical CPUs, "
            f"profile {hardware['profile']}, {config['quantization']} weights, {config['compute']} compute, "
            f"{config['num_threads']} threads, "
            f"chunk {config['chunk_length']} frames"
        )
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        tts_latencies(url, warmup, 8)
        one = tts_latencies(url, c1, 1)
        eight, polls = status_while_busy(url, c8, 8)
        ttfb = [time_to_first_byte(url, text) for text in long_texts]
        print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")

    mean_chars = statistics.mean(len(t) for t in c1 + c8)
    print(f"{'measure':<46}{'n':>5}{'p50 s':>9}{'p95 s':>9}")
    rows = [
        (f"/tts, {mean_chars:.0f} characters, concurrency 1", one),
        (f"/tts, {mean_chars:.0f} characters, concurrency 8", eight),
        ("/system-status while 8 syntheses run", polls),
        (f"first byte of a streamed {statistics.mean(len(t) for t in long_texts):.0f}-character /tts", ttfb),
    ]
    for name, values in rows:
        print(f"{name:<46}{len(values):>5}{percentile(values, 50):>9.3f}{percentile(values, 95):>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
