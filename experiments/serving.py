"""The HTTP service for the benchmarks and tests: ``python -m adaptive_tts serve`` on a free loopback port.

Shared by the latency benchmark (:mod:`experiments.bench_server`), the memory soak
(:mod:`experiments.bench_soak`) and the service's tests: the launcher (:func:`running_server`) and the
server options both benchmark CLIs pass on to ``serve`` (:func:`add_server_options`, :func:`server_args`).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

HOST = "127.0.0.1"
#: The ``serve`` options a benchmark CLI passes on (argparse dests), in its ``--help`` order.
SERVER_OPTIONS = ("profile", "quantization", "threads", "chunk_length", "cache_limit")


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the kernel's choice, released at once)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(
    args: list[str], log: Path, timeout_s: float = 300, env: dict[str, str] | None = None, verbose: bool = False
) -> Iterator[tuple[str, int]]:
    """``python -m adaptive_tts serve`` on a free loopback port, until the block ends.

    Yields the URL and the server's pid once ``/health`` answers; the server's output goes to ``log``.
    The tests start their server with this too.
    """
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "adaptive_tts",
                *(["-v"] if verbose else []),
                "serve",
                "--host",
                HOST,
                "--port",
                str(port),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not up after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The server's configuration options of a benchmark CLI (each passed on to ``serve`` when given)."""
    parser.add_argument("--profile", default=None, help="the server's hardware profile (default: auto)")
    parser.add_argument("--quantization", choices=["fp32", "int8", "int4"], default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chunk-length", type=int, default=None)
    parser.add_argument(
        "--cache-limit",
        type=float,
        default=None,
        metavar="MB",
        help="the server's audio cache limit (default: the profile's)",
    )


def server_args(args: argparse.Namespace) -> list[str]:
    """The ``serve`` arguments for the options of :func:`add_server_options` that were given."""
    return [
        item
        for option in SERVER_OPTIONS
        if getattr(args, option) is not None
        for item in (f"--{option.replace('_', '-')}", str(getattr(args, option)))
    ]
