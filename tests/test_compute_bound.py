"""The compute bound of a run: the voice's arithmetic counted on the real model, for a run's own rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from experiments.compute_bound import account, encoder_flops, frame_flops, main
from experiments.results import RowStore

SHORT = "It rained."
LONG = "The committee met on Tuesday and agreed to repair the old bridge before the winter floods."
START = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def _row(trial_id: int, text: str, status: str, audio_s: float, latency_ms: float, started_s: float) -> dict:
    return {
        "trial_id": trial_id,
        "text": text,
        "status": status,
        "error": None if status == "ok" else "refused: not enough memory",
        "audio_s": audio_s if status == "ok" else None,
        "latency_ms": latency_ms if status == "ok" else None,
        "started_at": START + timedelta(seconds=started_s),
        "compute": "fp32",
    }


def test_the_flow_and_decoder_cost_the_same_per_frame_at_any_length(engine):
    """Counted per frame, so a window's margins or padding can never enter the bound."""
    short, long = frame_flops(engine, 64), frame_flops(engine, 192)
    assert short == long
    assert 0 < short.flow < short.decoder


def test_a_text_s_encoder_arithmetic_is_its_sentences_and_grows_with_them(engine):
    both = f"{SHORT} {LONG}"
    assert encoder_flops(engine, LONG) > encoder_flops(engine, SHORT) > 0
    assert encoder_flops(engine, both) == encoder_flops(engine, SHORT) + encoder_flops(engine, LONG)


def test_a_run_counts_each_ok_trial_and_nothing_else(engine):
    rows = pd.DataFrame(
        [
            _row(1, LONG, "ok", 6.0, 900.0, 0.0),
            _row(2, LONG, "ok", 6.2, 1100.0, 1.0),  # the same text in another condition: encoded again
            _row(3, SHORT, "refused", 0.0, 0.0, 3.0),
        ]
    )
    per_frame = frame_flops(engine)
    run = account(rows, engine, per_frame)
    frames = round(6.0 * 22050 / 256) + round(6.2 * 22050 / 256)
    assert (run.trials, run.texts, run.frames) == (2, 1, frames)
    assert run.encoder == 2 * encoder_flops(engine, LONG)
    assert run.decoder == per_frame.decoder * frames and run.flow == per_frame.flow * frames
    assert run.synthesis_s == pytest.approx(2.0)
    assert run.wall_s == pytest.approx(2.1)  # the first start to the last end
    assert run.floor_s(run.total / 4) == pytest.approx(4.0)


def test_a_run_with_no_ok_trial_is_an_error(engine):
    with pytest.raises(ValueError, match="no ok trial"):
        account(pd.DataFrame([_row(1, SHORT, "refused", 0.0, 0.0, 0.0)]), engine)


def test_the_command_prints_the_bound_of_a_run_on_disk(tmp_path, capsys):
    store = RowStore(tmp_path / "run")
    store.write(_row(1, LONG, "ok", 6.0, 900.0, 0.0))
    store.write(_row(2, SHORT, "refused", 0.0, 0.0, 1.0))
    assert main([str(tmp_path / "run"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 ok trials of 1 distinct texts" in out
    assert "fp32 matrix multiply on 1 threads" in out and "floor:" in out


def test_the_command_names_what_is_wrong(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "absent")])
    assert f"no run at {tmp_path / 'absent'}" in capsys.readouterr().err
    store = RowStore(tmp_path / "mixed")
    store.write(_row(1, SHORT, "ok", 1.0, 100.0, 0.0))
    store.write({**_row(2, SHORT, "ok", 1.0, 100.0, 1.0), "compute": "bf16"})
    assert main([str(tmp_path / "mixed")]) == 2
    assert "mixes compute precisions ['bf16', 'fp32']" in capsys.readouterr().err
    store = RowStore(tmp_path / "unrecorded")
    store.write({**_row(1, SHORT, "ok", 1.0, 100.0, 0.0), "compute": None})
    assert main([str(tmp_path / "unrecorded")]) == 2
    assert "do not record their compute precision" in capsys.readouterr().err
    store = RowStore(tmp_path / "int8")
    store.write({**_row(1, SHORT, "ok", 1.0, 100.0, 0.0), "compute": "int8"})
    assert main([str(tmp_path / "int8")]) == 2
    assert "unknown compute precision 'int8'" in capsys.readouterr().err
