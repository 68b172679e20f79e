"""The command line, run as a user runs it: a real process, real files, real exit codes."""

from __future__ import annotations

import subprocess
import wave

import pytest
from conftest import CLI

#: Exit codes: 1 for a failure the command reports (a bad text, an unwritable output), 2 for a usage
#: error argparse reports (a bad option value, an unknown option).
FAILED, USAGE = 1, 2


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_synthesize_writes_a_wav_and_reports_timings(tmp_path):
    out = tmp_path / "hello.wav"
    result = run("synthesize", "Hello there.", "-o", str(out), "--seed", "1", "--chunk-length", "64")
    assert result.returncode == 0, result.stderr
    with wave.open(str(out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (22050, 1, 2)
        assert wav.getnframes() > 22050 * 0.3
    for label in ("audio seconds", "latency", "first audio", "real-time factor"):
        assert label in result.stdout


def test_reference_engine_through_the_same_cli(tmp_path):
    out = tmp_path / "ref.wav"
    result = run("synthesize", "Hello there.", "-o", str(out), "--engine", "reference", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 44


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["synthesize", ""], "text is empty", FAILED),
        (["synthesize", "   "], "text is empty", FAILED),
        (["synthesize", "...!?"], "nothing speakable", FAILED),
        (["synthesize", "hi", "-o", "/nonexistent-dir/x.wav"], "does not exist", FAILED),
        (["synthesize", "hi", "--threads", "0"], "positive integer", USAGE),
        (["synthesize", "hi", "--bogus"], "unrecognized arguments", USAGE),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, args, message, code):
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.wav"))
