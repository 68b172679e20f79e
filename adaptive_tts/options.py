"""How a backend is asked to run: which runtime features are on (the thesis's ablations) and
configuration overrides.

:class:`BackendOptions` is what a caller asks for, validated when it is made, so that a bad setting is
an error that names it before any model loads. What the backend then runs with is one
:class:`~adaptive_tts.runtime.hardware.SelectedConfiguration` (the profile's, with these overrides
and whatever the runtime adapts later), the same type the profile selects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .runtime.budget import BUDGET_POLICIES
from .runtime.planner import PRECISIONS
from .voice import ENGINES, engine_capabilities
from .voice.engine import COMPUTE_DTYPES


@dataclass(frozen=True)
class BackendOptions:
    """Which runtime features are on, and configuration overrides (``None`` = the profile's choice)."""

    budget: bool = True
    affinity: bool = True
    estimation: bool = True
    cache: bool = True
    engine: str = "torch"
    quantization: str | None = None
    chunk_length: int | None = None
    num_threads: int | None = None
    #: What our engine computes in: ``auto`` is bf16 on CPUs with native bf16, else fp32.
    compute: str = "auto"
    #: How long a request may wait for running jobs to free memory before it is refused.
    wait_timeout_s: float = 30.0
    #: The safety margin: ``seed`` (the feature document's table) or ``calibrated`` (measured error of
    #: the estimator plus how far other processes' memory may grow back to its observed peak; see
    #: runtime/budget.py)
    budget_policy: str = "calibrated"
    #: Threads the model computes on (:class:`~adaptive_tts.voice.lanes.ComputeLanes`); ``None``: as
    #: many as the CPUs this process may use hold ``num_threads`` each, at least one.
    compute_lanes: int | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **overrides: Any) -> BackendOptions:
        """Options from any mapping that names them as the fields do — a trial's options, parsed CLI
        arguments, a :class:`~adaptive_tts.runtime.estimator.ConfigKey` as a dict — so that no caller
        spells them out one by one: other keys are ignored, missing ones keep their defaults,
        ``overrides`` win."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in settings.items() if k in names}, **overrides})

    def __post_init__(self) -> None:
        if self.budget_policy not in BUDGET_POLICIES:
            raise ValueError(f"budget_policy must be one of {', '.join(BUDGET_POLICIES)}, not {self.budget_policy!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.quantization is not None and self.quantization not in PRECISIONS:
            raise ValueError(f"quantization must be one of {', '.join(PRECISIONS)}, not {self.quantization!r}")
        precisions = engine_capabilities(self.engine).precisions
        if self.quantization is not None and self.quantization not in precisions:
            raise ValueError(f"the {self.engine} engine runs {', '.join(precisions)} only, not {self.quantization}")
        if self.compute not in ("auto", *COMPUTE_DTYPES):
            raise ValueError(f"compute must be auto, {', '.join(COMPUTE_DTYPES)}, not {self.compute!r}")
        if self.chunk_length is not None and self.chunk_length < 1:
            raise ValueError(f"chunk_length must be >= 1, got {self.chunk_length}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.compute_lanes is not None and self.compute_lanes < 1:
            raise ValueError(f"compute_lanes must be >= 1, got {self.compute_lanes}")


def default_lanes(num_threads: int) -> int:
    """Compute lanes for ``num_threads`` intra-op threads each: as many as the CPUs this process may
    run on hold, at least one. More would oversubscribe the cores: on this 2-core VM, 8 syntheses at once
    with 2 threads each ran 16 threads on 2 cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // num_threads)
