"""Soak the HTTP service's memory on loopback: ``python -m experiments.bench_soak``.

(Also ``python -m experiments.bench_server --soak``, with the same options.) Bursts of traffic that
looks like real use (:func:`varied_traffic`) with idle gaps between them, the server's RSS and audio
cache after each burst, then ``/cache/clear`` and the RSS it leaves after two idle seconds (:func:`soak`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from adaptive_tts.units import MIB
from experiments.serving import add_server_options, running_server, server_args
from experiments.workload import _corpus_words

_FORM = {"content-type": "application/x-www-form-urlencoded"}
_JSON = {"content-type": "application/json"}
#: Malformed requests a real client population sends, each with the status the server must answer.
#: ``{limit}`` is replaced by a text one character over the server's ``max_text_length``.
MALFORMED: list[tuple[str, dict, int]] = [
    ("/tts", {"data": {}}, 422),
    ("/tts", {"data": {"text": "   "}}, 422),
    ("/tts", {"data": {"text": "...!?"}}, 422),
    ("/tts", {"data": {"text": "{limit}"}}, 413),
    ("/tts", {"content": b"text=%C3%28", "headers": _FORM}, 400),
    ("/tts", {"data": {"text": "Hello.", "length_scale": "fast"}}, 422),
    ("/v1/audio/speech", {"json": {"input": "Hello.", "response_format": "flac"}}, 422),
    ("/v1/audio/speech", {"json": {"input": "{limit}"}}, 413),
    ("/v1/audio/speech", {"json": {"input": "Hello.", "speed": 10}}, 422),
    ("/v1/audio/speech", {"content": b'{"input": "hi"', "headers": _JSON}, 422),
]


@dataclass(frozen=True)
class Request:
    """One HTTP request of a traffic mix and the status it must get."""

    method: str
    path: str
    kwargs: dict
    expected: int


def random_text(rng: random.Random, min_words: int, max_words: int) -> str:
    """``min_words``-``max_words`` consecutive corpus words from a random sentence start."""
    words, starts = _corpus_words()
    start = rng.choice(starts)
    count = rng.randint(min_words, max_words)
    return " ".join(words[(start + i) % len(words)] for i in range(count))


def varied_traffic(
    count: int,
    rng: random.Random,
    text_limit: int,
    *,
    min_words: int = 5,
    max_words: int = 60,
    malformed_share: float = 0.2,
    repeat_share: float = 0.1,
    probe_share: float = 0.0,
) -> list[Request]:
    """``count`` requests the way a client population sends them: texts of random length, ``/tts`` and
    ``/v1/audio/speech`` (WAV or PCM, streamed or whole, at varied speeds), a ``malformed_share`` of bad
    requests, a ``repeat_share`` of texts asked for before (UI phrases), which the cache answers, and a
    ``probe_share`` of status reads and estimates (a UI polling the service).

    Varied lengths are the point: a load of repeated texts hits the cache and the same kernel shapes,
    and hides whatever grows with new lengths.
    """
    seen: list[str] = []
    out: list[Request] = []
    for _ in range(count):
        if rng.random() < malformed_share:
            path, kwargs, status = rng.choice(MALFORMED)
            over = "a " * (text_limit // 2) + "b"
            kwargs = {
                k: {f: over if v == "{limit}" else v for f, v in value.items()}
                if isinstance(value, dict) and k in ("data", "json")
                else value
                for k, value in kwargs.items()
            }
            out.append(Request("POST", path, kwargs, status))
            continue
        if rng.random() < probe_share:
            out.append(
                rng.choice(
                    [
                        Request("GET", "/health", {}, 200),
                        Request("GET", "/system-status", {}, 200),
                        Request("GET", "/hardware", {}, 200),
                        Request(
                            "POST", "/estimate-memory", {"data": {"text": random_text(rng, min_words, max_words)}}, 200
                        ),
                    ]
                )
            )
            continue
        if seen and rng.random() < repeat_share:
            text = rng.choice(seen)
        else:
            text = random_text(rng, min_words, max_words)
            seen.append(text)
        if rng.random() < 0.5:
            out.append(Request("POST", "/tts", {"data": {"text": text}}, 200))
        else:
            body = {
                "model": "tts-1",
                "voice": "alloy",
                "input": text,
                "speed": rng.choice((0.9, 1.0, 1.0, 1.2)),
                "response_format": rng.choice(("wav", "pcm")),
                "stream": rng.random() < 0.5,
            }
            out.append(Request("POST", "/v1/audio/speech", {"json": body}, 200))
    return out


def every_length(rng: random.Random, min_words: int, max_words: int, per_length: int = 2) -> list[Request]:
    """``per_length`` ``/tts`` requests of each text length from ``min_words`` to ``max_words`` words
    (texts drawn as :func:`varied_traffic` draws them).

    A warm-up that leaves the service at its working level must meet every length: the engine compiles
    kernels per padded length and sentence batch, and keeps them, and 150 random requests need not meet
    them all. With those alone, the test's soak in one CI run read a warm level of 531 MB and a cleared
    RSS of 1.10x that (the bound), a command-line soak 580 MB and 1.02x; with every length first, the
    test's soak read 520 MB and 1.05x, a command-line soak 581 MB and 1.04x. One run each: how much of
    that spread is the warm-up's is not measured apart from the runs' own.
    """
    return [
        Request("POST", "/tts", {"data": {"text": random_text(rng, n, n)}}, 200)
        for n in range(min_words, max_words + 1)
        for _ in range(per_length)
    ]


def send_all(url: str, requests: list[Request], concurrency: int, timeout_s: float = 600) -> list[int | str]:
    """Each request's status code, or the name of the transport error that ended it (a dropped
    connection is a finding, not a crash of the benchmark); ``concurrency`` clients at once."""
    local = threading.local()

    def send(request: Request) -> int | str:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        try:
            return local.client.request(request.method, request.path, **request.kwargs).status_code
        except httpx.TransportError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(send, requests, timeout=timeout_s))


#: The share of the warm level that the idle RSS less the cache may sit above it after a burst, and
#: (a third of it) the most it may climb per burst once the cache is full. The idle RSS after a burst
#: varies by tens of MB from one burst to the next: with a full 32 MB cache, 466, 506, 484, 460 MB in
#: one soak (warm 428 MB, slope -4.1 MB a burst) and 571, 607, 588, 615 MB in another (warm 546 MB,
#: +11.4), so a 4-burst slope has a standard error near 9 MB. The leak these guard against, +1 GB over 900
#: requests, is ~170 MB a burst of 150.
IDLE_SLACK = 0.15


@dataclass
class Burst:
    """One burst of a soak and the server's memory once it had been idle for ``idle_s``."""

    requests: int
    seconds: float
    peak_rss_mb: float
    rss_mb: float
    cache_mb: float
    cache_limit_mb: float
    server_errors: int
    dropped: int
    unexpected: int


@dataclass
class SoakResult:
    warm_rss_mb: float
    warm_cache_mb: float
    bursts: list[Burst]
    cleared_rss_mb: float
    freed_rss_mb: float
    freed_cache_mb: float
    reported_freed_rss_mb: float | None

    def bound_mb(self, burst: Burst) -> float:
        """The most RSS a burst may leave: the warm level, the cache, and :data:`IDLE_SLACK` of the warm
        level."""
        return (1 + IDLE_SLACK) * self.warm_rss_mb + burst.cache_mb

    def slope_bound_mb(self) -> float:
        """The most RSS may climb per burst once the cache is full (see :data:`IDLE_SLACK`)."""
        return IDLE_SLACK / 3 * self.warm_rss_mb

    def slope_mb(self, last: int = 4) -> float:
        """Least-squares slope of RSS over the last ``last`` bursts, MB per burst."""
        ys = [b.rss_mb for b in self.bursts[-last:]]
        xs = range(len(ys))
        mx, my = statistics.mean(xs), statistics.mean(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MIB


def _burst(url: str, pid: int, requests: list[Request], concurrency: int, idle_s: float) -> Burst:
    """Send ``requests``, sampling the server's RSS every 0.1 s for its peak, then idle ``idle_s``."""
    done = threading.Event()
    peak = [_rss_mb(pid)]

    def sample() -> None:
        while not done.wait(0.1):
            peak.append(_rss_mb(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        statuses = send_all(url, requests, concurrency)
    finally:
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    time.sleep(idle_s)
    cache = httpx.get(url + "/system-status", timeout=60).json().get("cache") or {"mb": 0.0, "limit_mb": 0.0}
    return Burst(
        len(requests),
        seconds,
        max(peak),
        _rss_mb(pid),
        cache["mb"],
        cache["limit_mb"],
        sum(1 for s in statuses if isinstance(s, int) and s >= 500),
        sum(1 for s in statuses if not isinstance(s, int)),
        sum(1 for r, s in zip(requests, statuses) if s != r.expected),
    )


#: Requests of the soak's warm-up burst, after which the warm level is read: enough texts of every
#: length in range that the kernels for the soak's shapes exist by then. With 48 (a fifth of them
#: malformed) the warm level was read early: the idle RSS less the cache after the later bursts went from
#: 37 MB under it back up to it in one run (a slope of +8 MB per burst), and reached 10 % over it in another.
SOAK_WARMUP = 150


def soak(
    url: str,
    pid: int,
    bursts: list[int],
    *,
    warmup: int = SOAK_WARMUP,
    concurrency: int = 8,
    idle_s: float = 2.0,
    seed: int = 0,
    min_words: int = 5,
    max_words: int = 60,
    **traffic,
) -> SoakResult:
    """A warm-up burst (every text length, :func:`every_length`, then ``warmup`` requests of
    :func:`varied_traffic`), then ``bursts`` (request counts) of :func:`varied_traffic` with ``idle_s``
    idle after each, then ``/cache/clear`` and ``idle_s`` more. The warm level is the RSS after the
    warm-up burst with its audio cleared from the cache: the process with its threads, arenas and
    kernels made, holding no audio."""
    rng = random.Random(seed)
    limit = httpx.get(url + "/hardware", timeout=60).json()["selected_configuration"]["max_text_length"]
    words = {"min_words": min_words, "max_words": max_words}
    warm_up = every_length(rng, min_words, max_words) + varied_traffic(warmup, rng, limit, **words, **traffic)
    _burst(url, pid, warm_up, concurrency, 0.0)
    httpx.post(url + "/cache/clear", timeout=60).raise_for_status()
    time.sleep(idle_s)
    warm = _burst(url, pid, [], concurrency, 0.0)
    done = [_burst(url, pid, varied_traffic(n, rng, limit, **words, **traffic), concurrency, idle_s) for n in bursts]
    before = _rss_mb(pid)
    cleared = httpx.post(url + "/cache/clear", timeout=60).json()
    time.sleep(idle_s)
    after = _rss_mb(pid)
    return SoakResult(
        warm.rss_mb, warm.cache_mb, done, after, before - after, cleared["freed_mb"], cleared.get("freed_rss_mb")
    )


def print_soak(result: SoakResult) -> None:
    """The per-burst table of a soak, and what a clear gave back."""
    print(f"warm RSS {result.warm_rss_mb:.0f} MB (after the warm-up burst, cache cleared, idle)")
    print(
        f"{'burst':>5}{'requests':>9}{'s':>6}{'peak RSS':>10}{'RSS MB':>8}{'cache MB':>10}{'limit':>7}"
        f"{'bound MB':>10}{'5xx':>5}{'dropped':>8}{'unexpected':>11}"
    )
    for i, b in enumerate(result.bursts, 1):
        print(
            f"{i:>5}{b.requests:>9}{b.seconds:>6.0f}{b.peak_rss_mb:>10.0f}{b.rss_mb:>8.0f}{b.cache_mb:>10.1f}"
            f"{b.cache_limit_mb:>7.0f}{result.bound_mb(b):>10.0f}{b.server_errors:>5}{b.dropped:>8}"
            f"{b.unexpected:>11}"
        )
    if len(result.bursts) >= 2:
        print(f"RSS slope over the last {min(4, len(result.bursts))} bursts: {result.slope_mb():+.1f} MB per burst")
    reported = (
        "" if result.reported_freed_rss_mb is None else f", reported freed_rss_mb {result.reported_freed_rss_mb:.1f}"
    )
    print(
        f"/cache/clear freed {result.freed_cache_mb:.1f} MB of cache{reported}; RSS then and after "
        f"2 s idle {result.cleared_rss_mb:.0f} MB ({result.cleared_rss_mb / result.warm_rss_mb:.2f}x warm, "
        f"{result.freed_rss_mb:.0f} MB less than before the clear)"
    )


def add_soak_options(parser: argparse.ArgumentParser) -> None:
    """The soak's options (its own CLI's, and ``experiments.bench_server --soak``'s)."""
    parser.add_argument(
        "--bursts",
        default="300,150,150,150,150",
        help=f"soak: requests per burst, after a warm-up of every text length and {SOAK_WARMUP} "
        "requests (default 300,150,150,150,150)",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="soak: clients at once (default 8)")
    parser.add_argument("--max-words", type=int, default=60, help="soak: longest text in words (default 60)")


def run_soak(serve_args: list[str], args: argparse.Namespace) -> int:
    """Start a server with ``serve_args``, soak it as the options of :func:`add_soak_options` say, print the table."""
    bursts = [int(n) for n in args.bursts.split(",")]
    with tempfile.TemporaryDirectory() as tmp, running_server(serve_args, Path(tmp) / "server.log") as (url, pid):
        print(
            f"soak: a warm-up of every text length and {SOAK_WARMUP} requests, then {sum(bursts)} at "
            f"concurrency {args.concurrency}, texts of 5-{args.max_words} words, /tts and /v1/audio/speech, "
            "a fifth malformed, 2 s idle after each burst"
        )
        result = soak(url, pid, bursts, concurrency=args.concurrency, max_words=args.max_words)
    print_soak(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_soak", description=__doc__.splitlines()[0])
    add_server_options(parser)
    add_soak_options(parser)
    args = parser.parse_args(argv)
    return run_soak(server_args(args), args)


if __name__ == "__main__":
    sys.exit(main())
