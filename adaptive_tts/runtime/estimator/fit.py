"""The fit from measurements: the calibration texts (:func:`calibration_texts`), one measurement
(:class:`ProbeResult`) and :func:`fit_constants`, which turns measurements into
:class:`~.constants.EstimatorConstants` scored on held-out texts.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from ..planner import Reservation, held_mb
from .constants import EstimatorConstants, FitQuality, lane_increment_mb


def calibration_texts() -> tuple[list[str], list[str]]:
    """Training and held-out texts from 50 to 1000 characters, cut at word boundaries.

    Paragraphs are disjoint between the two sets, so the held-out error is an honest one.
    """
    paragraphs = [
        p
        for p in resources.files("adaptive_tts")
        .joinpath("data", "calibration.txt")
        .read_text(encoding="utf-8")
        .splitlines()
        if p.strip()
    ]
    train_src, test_src = " ".join(paragraphs[::2]), " ".join(paragraphs[1::2])

    def cut(source: str, length: int) -> str:
        source = (source + " ") * (length // max(1, len(source)) + 1)
        return source[: length + 1].rsplit(" ", 1)[0].strip()

    return (
        [cut(train_src, n) for n in (50, 150, 300, 500, 750, 1000)],
        [cut(test_src, n) for n in (100, 300, 500, 800, 1000)],
    )


@dataclass(frozen=True)
class ProbeResult:
    """One calibration measurement: ``concurrency`` requests of one text side by side."""

    text_length: int
    text_tokens: int
    peak_rss_mb: float
    #: the process's RSS just before the request(s); None: a whole-process peak (no increment known)
    rest_mb: float | None = None
    concurrency: int = 1


def _rest_mb(result: ProbeResult) -> float:
    """``result``'s rest reading, for the fit of increments over rest (which runs only when every
    result has one)."""
    if result.rest_mb is None:
        raise ValueError(f"the probe of {result.text_tokens} ids has no rest reading to fit an increment to")
    return result.rest_mb


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope, the slope clipped at 0 (memory never falls with length)."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var_x = sum((x - mean_x) ** 2 for x in xs)
    slope = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var_x) if var_x else 0.0
    return mean_y - slope * mean_x, slope


def _hinge(tokens: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """``y = intercept + slope * min(tokens, knee) / 100`` by least squares, the knee chosen among the
    measured token counts (on a tie the larger: growth is assumed to go on as far as it was seen)."""
    best: tuple[float, float, float, float] | None = None
    for knee in sorted(set(tokens)):
        xs = [min(t, knee) / 100.0 for t in tokens]
        intercept, slope = _line(xs, ys)
        sse = sum((intercept + slope * x - y) ** 2 for x, y in zip(xs, ys))
        if best is None or sse <= best[0] + 1e-9 * (1.0 + best[0]):
            best = (sse, intercept, slope, knee)
    assert best is not None
    return best[1], best[2], best[3]


def fit_constants(
    results: Sequence[ProbeResult], held_out: Sequence[ProbeResult], *, lanes: int = 1, knee: bool = False
) -> EstimatorConstants:
    """Fit the formula on ``results`` and score it on ``held_out``.

    With rest readings: the increment of one request alone against its ids, a straight line or, with
    ``knee`` (a chunked decoder), a line that stops rising at a fitted knee; base = median rest; the
    requests measured side by side beyond ``lanes`` give what a request waiting for a lane adds
    (``queued_share`` of its increment). A held-out prediction is
    ``rest + (min(n, lanes) + queued_share * max(0, n - lanes)) * increment``.
    Without rest readings: a line through (tokens / 100, whole-process peak). MAPE is scored on the
    held-out texts; ``max_under_mb`` is the largest under-prediction over all measurements (the
    calibrated budget policy keeps it free).
    """
    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}")
    incremental = all(r.rest_mb is not None for r in [*results, *held_out])
    per_request: float | None = None
    knee_tokens: float | None = None
    share: float | None = None
    if incremental:
        alone = [r for r in results if r.concurrency == 1] or list(results)
        tokens = [float(r.text_tokens) for r in alone]
        ys = [(r.peak_rss_mb - _rest_mb(r)) / r.concurrency for r in alone]
        if knee:
            per_request, slope, knee_tokens = _hinge(tokens, ys)
        else:
            per_request, slope = _line([t / 100.0 for t in tokens], ys)
        base = statistics.median(_rest_mb(r) for r in results)
        lane_fit = EstimatorConstants(base, slope, None, True, None, per_request, knee_tokens)
        shares = [
            (r.peak_rss_mb - _rest_mb(r) - lanes * increment) / (r.concurrency - lanes) / increment
            for r in results
            if r.concurrency > lanes and (increment := lane_increment_mb(lane_fit, r.text_tokens)) > 0
        ]
        if shares:
            share = min(1.0, max(0.0, statistics.fmean(shares)))

        def predict(r: ProbeResult) -> float:
            increment = lane_increment_mb(lane_fit, r.text_tokens)
            one = Reservation(increment, increment * (1.0 if share is None else share))
            return _rest_mb(r) + held_mb([one] * r.concurrency, lanes)
    else:
        base, slope = _line([r.text_tokens / 100.0 for r in results], [r.peak_rss_mb for r in results])

        def predict(r: ProbeResult) -> float:
            return base + slope * r.text_tokens / 100.0

    errors = [predict(r) - r.peak_rss_mb for r in held_out]
    # The worst under-prediction is taken over every measurement, training ones too: with a handful of
    # held-out texts the held-out worst alone can be 0, and it is what the calibrated policy keeps free.
    worst = min(errors + [predict(r) - r.peak_rss_mb for r in results])
    fit = FitQuality(
        n_train=len(results),
        n_test=len(held_out),
        mape_percent=100.0 * statistics.fmean(abs(e) / r.peak_rss_mb for e, r in zip(errors, held_out)),
        max_under_mb=max(0.0, -worst),
        max_over_mb=max(0.0, max(errors)),
    )
    return EstimatorConstants(base, slope, None, True, fit, per_request, knee_tokens, share)
