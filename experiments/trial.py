"""Trials in isolated worker processes, and the supervision that turns every one of them into a row.

A worker is ``python -m experiments.trial``: it confines itself to the device, builds a *trial body* from
an import path (``experiments.bodies:tts`` loads the model once), then serves trials of one condition
over a pipe until told to stop. Serving several trials per worker is what keeps a 1000-trial sweep
under an hour on two cores; what makes it safe is that the parent outlives the worker: a worker that the
kernel OOM-kills, that crashes or that hangs is classified, its in-flight trial becomes a row, and the
next trial gets a fresh worker.

Statuses: ``ok``; ``refused`` (the body declined, with the reason); ``oom`` (SIGKILLed while the kernel's
OOM-kill counter rose, or an allocation failed under ``RLIMIT_AS``); ``timeout`` (killed after
``timeout_s``); ``error`` (anything else: an exception's text, a crash, a kill nobody accounts for).
"""

from __future__ import annotations

import argparse
import ctypes
import faulthandler
import importlib
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any, Protocol

from adaptive_tts.runtime.process import PeakMeter
from experiments import hygiene
from experiments.limits import Confinement, Device, confine_current_process

logger = logging.getLogger(__name__)

#: Exit status for "the parent went away": the worker cannot report, so it just leaves.
_ORPHANED = 3


@dataclass(frozen=True)
class TrialRequest:
    """What the worker is asked to do: ``concurrency`` simultaneous requests of ``text``."""

    trial_id: int
    text: str
    concurrency: int = 1


class TrialBody(Protocol):
    """Runs one trial in the worker; returns row columns (``status`` defaults to ``ok``).

    A body raises for failures it does not understand (they become ``error`` rows) and returns
    ``status="refused"`` with an ``error`` for the ones it does.
    """

    def __call__(self, request: TrialRequest) -> dict[str, Any]: ...


BodyFactory = Callable[[dict[str, Any]], TrialBody]


def resolve_body(path: str) -> BodyFactory:
    """``"package.module:factory"`` → the factory (so tests can run a memory probe in a real worker)."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"trial body must be 'module:factory', got {path!r}")
    return getattr(importlib.import_module(module), name)


# --------------------------------------------------------------------------------------------------
# The worker process
# --------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker if the driver dies (say, SIGKILLed mid-sweep)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _is_out_of_memory(exc: BaseException) -> bool:
    """An allocation the kernel refused (how a cap shows under RLIMIT_AS instead of as a SIGKILL)."""
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc).lower()


def _failure(exc: BaseException) -> dict[str, Any]:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"status": "oom" if _is_out_of_memory(exc) else "error", "error": text}


def serve(conn: Connection, body_path: str, options: dict[str, Any]) -> None:
    """The worker's loop: build the body, say ready, then answer trial requests until EOF."""
    meter = PeakMeter()
    try:
        body = resolve_body(body_path)(options)
    except BaseException as exc:  # noqa: BLE001 - a body that cannot load is this trial's failure
        logger.exception("trial body %s failed to load", body_path)
        conn.send(("failed", _failure(exc)))
        return
    conn.send(("ready", {}))
    while True:
        try:
            request: TrialRequest = conn.recv()
        except EOFError:
            return
        meter.start()
        try:
            result = {"status": "ok", **body(request)}
        except BaseException as exc:  # noqa: BLE001 - every failure is reported as a row
            logger.exception("trial %d failed", request.trial_id)
            result = _failure(exc)
        result.update(peak_rss_mb=meter.stop_mb(), peak_mem_mechanism=meter.mechanism)
        conn.send(("result", result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="trial worker (started by experiments.trial.Worker)")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the supervisor")
    parser.add_argument("--confinement", required=True, help="JSON of experiments.limits.Confinement")
    args = parser.parse_args(argv)
    confine_current_process(Confinement.from_json(args.confinement))  # before anything is allocated
    _die_with_parent()
    faulthandler.enable()  # a segfault leaves a Python traceback in the worker log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(name)s: %(message)s")
    conn = Connection(args.fd)
    try:
        body_path, options = conn.recv()
        serve(conn, body_path, options)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return _ORPHANED
    return 0


# --------------------------------------------------------------------------------------------------
# The supervising side
# --------------------------------------------------------------------------------------------------


class WorkerDied(Exception):
    """The worker ended without answering; ``fields`` is the row's status and error."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__(fields["error"])
        self.fields = fields


@dataclass
class Worker:
    """One worker process, confined to ``device``, with its log in ``log_path``."""

    device: Device
    body: str
    options: dict[str, Any]
    log_path: Path
    process: subprocess.Popen[bytes] = field(init=False)
    conn: Connection = field(init=False)
    trials_served: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        parent, child = Pipe()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "experiments.trial",
                    "--fd",
                    str(child.fileno()),
                    "--confinement",
                    self.device.worker_confinement().to_json(),
                ],
                pass_fds=[child.fileno()],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent,  # `-m experiments.trial` from any directory
                start_new_session=True,  # Ctrl-C reaches the driver only; it ends the worker itself
            )
        child.close()
        self.conn = parent
        self.conn.send((self.body, self.options))

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float, oom_before: int | None) -> None:
        """Wait for the body to load (the model, for TTS); a failure is raised as :class:`WorkerDied`."""
        kind, payload = self._receive(timeout_s, oom_before, "starting (loading the trial body)")
        if kind == "failed":
            self.kill()
            raise WorkerDied(payload)

    def run(self, request: TrialRequest, timeout_s: float, oom_before: int | None) -> dict[str, Any]:
        try:
            self.conn.send(request)
        except (BrokenPipeError, ConnectionResetError):  # it died just now: the answer is its exit
            raise WorkerDied(self._classify_death(oom_before, "receiving a trial")) from None
        _, result = self._receive(timeout_s, oom_before, "running the trial")
        self.trials_served += 1
        return result

    def _receive(self, timeout_s: float, oom_before: int | None, doing: str) -> tuple[str, dict[str, Any]]:
        try:
            answered = self.conn.poll(timeout_s)  # also True when the worker died: recv then hits EOF
            if answered:
                return self.conn.recv()
        except (EOFError, ConnectionResetError):
            answered = True
        if not answered:
            self.kill()
            raise WorkerDied({"status": "timeout", "error": f"no answer after {timeout_s:g} s {doing}; worker killed"})
        raise WorkerDied(self._classify_death(oom_before, doing))

    def _classify_death(self, oom_before: int | None, doing: str) -> dict[str, Any]:
        try:
            code = self.process.wait(timeout=30)  # its socket closed: it is exiting
        except subprocess.TimeoutExpired:  # closed the socket yet lives on: end it
            self.process.kill()
            code = self.process.wait()
        self.conn.close()
        oom_after = self.device.oom_kills()
        if code == -signal.SIGKILL and oom_before is not None and oom_after is not None and oom_after > oom_before:
            return {
                "status": "oom",
                "error": f"worker OOM-killed by the kernel while {doing} (oom_kill +{oom_after - oom_before})",
            }
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        if code == -signal.SIGKILL:
            how += " (no OOM kill recorded)" if oom_after is not None else " (OOM kills not observable here)"
        return {
            "status": "error",
            "error": f"worker {how} while {doing}; log: {self.log_path}\n{self._log_tail()}".strip(),
        }

    def _log_tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.conn.close()

    def stop(self) -> None:
        """Ask the worker to finish (EOF on its pipe), kill it if it does not within a few seconds."""
        self.conn.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Supervisor:
    """Runs trials of one condition on ``device``, replacing the worker whenever one is lost.

    ``max_trials_per_worker`` bounds how long one process lives (heap growth across trials would
    otherwise leak into later trials' peak RSS); ``None`` keeps a healthy worker for the whole sweep.
    """

    device: Device
    body: str
    options: dict[str, Any]
    log_dir: Path
    timeout_s: float = 300.0
    startup_timeout_s: float = 300.0
    max_trials_per_worker: int | None = None
    worker: Worker | None = field(default=None, init=False)
    _started: int = field(default=0, init=False)
    _disturbed: bool = field(default=False, init=False)  # the background app restarted in this worker's life
    _held: bool = field(default=False, init=False)  # the worker is stopped (SIGSTOP) until its next trial

    def run(self, request: TrialRequest) -> dict[str, Any]:
        """One trial → its outcome columns (status, error, measurements, peaks, the machine's state
        around it). Never raises for a failure of the trial itself: that is what the row is for."""
        self._release()
        background = self.device.background
        if background is not None and background.ensure_running():
            self._disturbed = True  # a running worker saw the app vanish and come back
        cap = self.device.cap
        if cap is not None:
            cap.reset_peak()
        oom_before = self.device.oom_kills()
        if self.worker is not None and self.worker.process.poll() is not None:
            logger.warning(
                "worker %d died between trials (exit %s); replacing it", self.worker.pid, self.worker.process.returncode
            )
            self.worker.kill()
            self.worker = None
        worker_trials = self.worker.trials_served if self.worker is not None else 0
        if self.worker is None:
            self._disturbed = False  # a fresh worker sees the background as it is now
        machine = hygiene.before()  # what the machine was doing: read around the trial (experiments.hygiene)
        try:
            if self.worker is None:
                self.worker = self._start_worker()
                self.worker.wait_ready(self.startup_timeout_s, oom_before)
                machine = hygiene.before()  # the trial starts now: loading its body is not part of it
            with self.device.busy():  # the device's busy background processes, if any, spin meanwhile
                outcome = self.worker.run(request, self.timeout_s, oom_before)
        except WorkerDied as died:
            logger.warning("trial %d: %s", request.trial_id, died.fields["error"].splitlines()[0])
            outcome = died.fields
            self.worker = None
        outcome.update(hygiene.after(machine).columns())
        if (
            self.worker is not None
            and self.max_trials_per_worker
            and self.worker.trials_served >= self.max_trials_per_worker
        ):
            self.close_worker()
        if background is not None and (background.mb > 0 or background.swing_mb > 0):
            # The app died during this trial, or while this worker served earlier ones (the kernel may
            # pick it over a dying worker): the trial did not run against the background it is
            # labelled with, or its runtime's memory watch saw the app vanish. Recorded, never hidden.
            self._disturbed = self._disturbed or not background.running
            outcome["background_restarted"] = self._disturbed
        outcome.update(
            worker_trials=worker_trials,
            mem_cap_mechanism=self.device.mem_cap_mechanism,
            cgroup_peak_mb=cap.peak_mb() if cap is not None else None,
        )
        return outcome

    def start(self) -> None:
        """Start the worker now rather than at the first trial: an interleaved sweep starts every
        condition's before its first block, so that no condition's early trials wait on start-ups
        while the others run. A worker that fails to start is left for the first trial to retry
        and record."""
        if self.worker is not None:
            return
        oom_before = self.device.oom_kills()
        self._disturbed = False
        try:
            self.worker = self._start_worker()
            self.worker.wait_ready(self.startup_timeout_s, oom_before)
        except WorkerDied as died:
            logger.warning("worker failed to start: %s", died.fields["error"].splitlines()[0])
            self.worker = None

    def hold(self) -> None:
        """Stop the worker (``SIGSTOP``, every thread) until its next trial, warm but off the CPUs.

        An interleaved sweep keeps one worker per condition: idle, each one's monitor and memory-watch
        threads still take ~3 % of a core, and on two cores they preempted the running trial's OpenMP
        threads, whose barriers then waited — with five warm workers a thesis sweep's median RTF rose
        from ~0.04 to ~0.10. A held worker costs the running trial nothing."""
        if self.worker is not None and self.worker.process.poll() is None and not self._held:
            os.kill(self.worker.pid, signal.SIGSTOP)
            self._held = True

    def _release(self) -> None:
        if self._held and self.worker is not None and self.worker.process.poll() is None:
            os.kill(self.worker.pid, signal.SIGCONT)
        self._held = False

    def _start_worker(self) -> Worker:
        self._started += 1
        log_path = self.log_dir / f"worker-{os.getpid()}-{self._started}.log"
        worker = Worker(self.device, self.body, self.options, log_path)
        logger.info("worker %d started (log %s)", worker.pid, log_path)
        return worker

    def close_worker(self) -> None:
        self._release()  # a stopped worker cannot read the end of its pipe
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release()
        if self.worker is not None:
            self.worker.kill()
            self.worker = None


if __name__ == "__main__":
    sys.exit(main())
