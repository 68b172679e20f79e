"""The seed's hardware profiles and how one is chosen for a detected machine.

A profile carries the seed's three tables per device class (memory budget, quantization, pre-synthesis
estimate) plus the configuration the runtime starts with. The library must work without Hydra, so these
dataclasses are the source of truth and ``conf/hardware/*.yaml`` only selects one by name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .detect import HardwareInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryBudget:
    """The seed's budget table row, in GB."""

    total_ram_gb: float
    reserved_os_gb: float
    max_model_gb: float
    max_cache_gb: float
    safety_margin_gb: float

    @property
    def safety_margin_mb(self) -> float:
        return self.safety_margin_gb * 1024

    @property
    def max_cache_mb(self) -> float:
        return self.max_cache_gb * 1024


@dataclass(frozen=True)
class QuantizationConfig:
    """The seed's quantization table row."""

    quantization: str  # "int8" or "int4"
    layer_wise: bool
    weight_only: bool
    dynamic: bool
    calibration_size: int


@dataclass(frozen=True)
class EstimateDefaults:
    """The seed's pre-synthesis estimate row. Uncalibrated: the estimator falls back to these only until
    constants fitted from measurements on the machine exist."""

    base_model_mb: float
    per_100_tokens_mb: float
    cache_overhead_mb: float


@dataclass(frozen=True)
class SelectedConfiguration:
    """What the runtime starts synthesis with on this profile.

    ``chunk_length`` counts decoder latent frames (256 samples each at 22050 Hz, ~11.6 ms), so 256 frames
    is ~3 s of audio per decoded chunk. ``cache_limit`` is MB of audio cache, at most the budget's max
    cache. A backend runs with one of these too: the profile's, with its options' overrides and what
    it adapts later (``SmartAdaptiveBackend.config``); ``compute`` is then what its engine resolved.
    """

    chunk_length: int = field(metadata={"description": "decoder chunk in latent frames (256 samples each)"})
    num_threads: int = field(metadata={"description": "intra-op threads of each compute lane"})
    cache_limit: float = field(metadata={"description": "audio cache limit, MB"})
    max_text_length: int = field(metadata={"description": "longest text /tts accepts, in characters"})
    quantization: str = field(metadata={"description": "weight precision: fp32, int8 or int4"})
    #: the engine resolves it, so a profile says fp32, the precision every CPU runs
    compute: str = field(
        default="fp32",
        metadata={"description": "what the engine multiplies in: fp32, or bf16 on CPUs with native bf16"},
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    memory_budget: MemoryBudget
    quantization: QuantizationConfig
    estimates: EstimateDefaults
    selected_configuration: SelectedConfiguration
    #: CPU cores of the reference device (what a simulation of it pins the worker to).
    cores: int = 0


#: Characters one request may carry, per GB of the profile's model budget. Streaming decoding keeps a
#: request's memory flat in its length (measured: tests/test_streaming_memory.py), so this limit bounds
#: how long one request holds the engine (~1 minute of audio per 1000 characters), not its memory; the
#: seed's quick-start answer of 300 for Intel i5 would refuse the seed's own 1000-character benchmark.
_TEXT_LENGTH_PER_MODEL_GB = 500
#: The seed's "< 6 GB" row: below this the model must be INT4 to leave room for anything else.
INT4_BELOW_GB = 6.0


def _max_text_length(max_model_gb: float) -> int:
    return max(500, int(round(max_model_gb * _TEXT_LENGTH_PER_MODEL_GB / 500) * 500))


def _profile(
    name: str,
    description: str,
    budget: tuple[float, float, float, float, float],
    quant: tuple[str, bool, bool, bool, int],
    estimates: tuple[float, float, float],
    chunk_length: int,
    num_threads: int,
    cores: int,
) -> HardwareProfile:
    memory_budget = MemoryBudget(*(float(gb) for gb in budget))
    quantization = QuantizationConfig(*quant)
    return HardwareProfile(
        name=name,
        description=description,
        memory_budget=memory_budget,
        quantization=quantization,
        estimates=EstimateDefaults(*estimates),
        cores=cores,
        selected_configuration=SelectedConfiguration(
            chunk_length=chunk_length,
            num_threads=num_threads,
            cache_limit=memory_budget.max_cache_mb,
            max_text_length=_max_text_length(memory_budget.max_model_gb),
            quantization=quantization.quantization,
        ),
    )


#: The five seed device classes. num_threads is the reference device's physical performance cores
#: (M1: 4 P; M1 Pro 10-core: 8 P; i5-1235U: 2 P; Ryzen 5 5600: 6; high end: 8); ``select_profile``
#: replaces it with the detected machine's count. The seed gives M1 Pro no quantization row: it gets the
#: 16 GB machines' row (Intel i5 / Ryzen 5).
# fmt: off
# (the seed's table, one device per two lines, read as the feature document prints it)
PROFILES: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        # budget GB (total, OS, model, cache, margin); quantization (type, layer-wise, weight-only, dynamic,
        # calibration samples); estimates MB (base model, per 100 tokens, cache overhead)
        _profile("m1_air", "Apple M1 Air, 8 GB", (8, 2.0, 2.0, 1.0, 1.5),
                 ("int8", True, True, True, 32), (2000, 50, 200), chunk_length=256, num_threads=4, cores=8),
        _profile("m1_pro", "Apple M1 Pro/Max, 16 GB", (16, 2.5, 4.0, 2.0, 2.0),
                 ("int8", True, True, True, 64), (3000, 40, 300), chunk_length=512, num_threads=8, cores=10),
        _profile("intel_i5", "Intel Core i5 (12th gen hybrid), 16 GB", (16, 3.0, 3.0, 1.5, 2.0),
                 ("int8", True, True, True, 64), (2500, 60, 250), chunk_length=256, num_threads=2, cores=10),
        _profile("ryzen5", "AMD Ryzen 5, 16 GB", (16, 3.0, 3.0, 1.5, 2.0),
                 ("int8", True, True, True, 64), (2500, 60, 250), chunk_length=256, num_threads=6, cores=6),
        _profile("high_end", "32 GB or more", (32, 4.0, 6.0, 3.0, 3.0),
                 ("int8", False, False, True, 128), (3000, 50, 300), chunk_length=512, num_threads=8, cores=8),
    )
}
# fmt: on

#: Budget anchors by RAM for machines no profile names: the seed's 8, 16 and 32 GB rows.
_BUDGET_ANCHORS: list[tuple[float, MemoryBudget]] = [
    (8.0, PROFILES["m1_air"].memory_budget),
    (16.0, PROFILES["intel_i5"].memory_budget),
    (32.0, PROFILES["high_end"].memory_budget),
]


def _scaled_budget(ram_gb: float) -> MemoryBudget:
    """Budget for ``ram_gb`` of RAM: proportional to the 8 GB row below 8 GB (a 4 GB box gets half of
    every reserve), linear between the seed's rows, the 32 GB row above it (more RAM needs no bigger
    reserve for one model)."""
    fields = ("reserved_os_gb", "max_model_gb", "max_cache_gb", "safety_margin_gb")
    lo_ram, lo = _BUDGET_ANCHORS[0]
    if ram_gb <= lo_ram:
        scale = ram_gb / lo_ram
        return MemoryBudget(ram_gb, *(round(getattr(lo, f) * scale, 2) for f in fields))
    for (a_ram, a), (b_ram, b) in zip(_BUDGET_ANCHORS, _BUDGET_ANCHORS[1:]):
        if ram_gb <= b_ram:
            t = (ram_gb - a_ram) / (b_ram - a_ram)
            return MemoryBudget(
                ram_gb, *(round(getattr(a, f) + t * (getattr(b, f) - getattr(a, f)), 2) for f in fields)
            )
    top = _BUDGET_ANCHORS[-1][1]
    return MemoryBudget(ram_gb, *(getattr(top, f) for f in fields))


def generic_profile(info: HardwareInfo) -> HardwareProfile:
    """A profile for a machine no seed profile names, derived from its effective RAM (the cgroup cap
    when lower: that is what the process can use) and its performance cores."""
    ram_gb = round(info.effective_memory_mb / 1024, 1)
    budget = _scaled_budget(ram_gb)
    if ram_gb < INT4_BELOW_GB:
        quant = QuantizationConfig("int4", True, True, True, 32)
    elif ram_gb >= 32:
        quant = PROFILES["high_end"].quantization
    elif ram_gb < 12:
        quant = PROFILES["m1_air"].quantization
    else:
        quant = PROFILES["intel_i5"].quantization
    chunk_length = 128 if ram_gb < 8 else 256 if ram_gb < 24 else 512
    return HardwareProfile(
        name=f"generic-{max(1, round(ram_gb))}gb",
        description=f"derived from {ram_gb:g} GB RAM and {info.performance_cores} performance cores",
        memory_budget=budget,
        quantization=quant,
        estimates=PROFILES["intel_i5"].estimates,  # the x86 CPU row: uncalibrated either way
        cores=info.physical_cores,
        selected_configuration=SelectedConfiguration(
            chunk_length=chunk_length,
            num_threads=max(1, info.performance_cores),
            cache_limit=budget.max_cache_mb,
            max_text_length=_max_text_length(budget.max_model_gb),
            quantization=quant.quantization,
        ),
    )


def _match_profile_name(info: HardwareInfo) -> tuple[str | None, str]:
    model = info.cpu_model
    if model.startswith("Apple M"):
        if re.search(r"\b(Pro|Max|Ultra)\b", model):
            return "m1_pro", f"{model} is a Pro/Max-class Apple chip"
        if info.total_ram_gb > 8.5:
            return "m1_pro", f"Apple chip with {info.total_ram_gb:.0f} GB > 8 GB"
        return "m1_air", f"Apple chip with {info.total_ram_gb:.0f} GB"
    if re.search(r"Core\(TM\) i5|Core i5", model):
        return "intel_i5", f"{model} is an Intel Core i5"
    if "Ryzen 5" in model:
        return "ryzen5", f"{model} is an AMD Ryzen 5"
    if info.total_ram_gb >= 30:  # a "32 GB" machine reports ~31 GB: firmware keeps some
        return "high_end", f"{info.total_ram_gb:.0f} GB RAM"
    return None, f"no seed profile matches {model!r} with {info.total_ram_gb:.0f} GB"


def _with_threads(profile: HardwareProfile, num_threads: int) -> HardwareProfile:
    config = replace(profile.selected_configuration, num_threads=max(1, num_threads))
    return replace(profile, selected_configuration=config)


def with_cache_limit(profile: HardwareProfile, cache_limit_mb: float) -> HardwareProfile:
    """``profile`` with its audio cache limited to ``cache_limit_mb`` (never above its max cache): a
    service that wants less of its memory spent on repeated prompts, or a soak that fills the cache."""
    if cache_limit_mb < 0:
        raise ValueError(f"cache limit must be >= 0 MB, got {cache_limit_mb}")
    selected = replace(
        profile.selected_configuration, cache_limit=min(cache_limit_mb, profile.memory_budget.max_cache_mb)
    )
    return replace(profile, selected_configuration=selected)


def select_profile(info: HardwareInfo, name: str | None = None) -> HardwareProfile:
    """The profile for ``info``: ``name`` forces one of PROFILES ("auto"/None matches the machine).

    An auto-matched profile takes the machine's own performance-core count as its thread count (an
    i5-12400 has 6 P-cores, not the i5-1235U's 2). A forced profile simulates that device, so it keeps
    the device's thread count, capped by what this machine has.
    """
    if name is not None and name != "auto":
        if name not in PROFILES:
            raise ValueError(f"unknown hardware profile {name!r}; valid: auto, {', '.join(PROFILES)}")
        profile = PROFILES[name]
        threads = min(profile.selected_configuration.num_threads, max(1, info.performance_cores))
        logger.info("hardware profile %s forced", name)
        return _with_threads(profile, threads)
    matched, why = _match_profile_name(info)
    if matched is None:
        profile = generic_profile(info)
        logger.info("hardware profile %s: %s", profile.name, why)
        return profile
    logger.info("hardware profile %s: %s", matched, why)
    return _with_threads(PROFILES[matched], info.performance_cores)


def hardware_payload(info: HardwareInfo, profile: HardwareProfile) -> dict[str, Any]:
    """The seed's ``/hardware`` response: what was detected and what the runtime chose from it."""
    return {
        "hardware": info.to_dict(),
        "profile": profile.name,
        "memory_budget": asdict(profile.memory_budget),
        "quantization": asdict(profile.quantization),
        "estimation_defaults": asdict(profile.estimates),
        "selected_configuration": asdict(profile.selected_configuration),
    }


__all__ = [
    "INT4_BELOW_GB",
    "PROFILES",
    "EstimateDefaults",
    "HardwareProfile",
    "MemoryBudget",
    "QuantizationConfig",
    "SelectedConfiguration",
    "generic_profile",
    "hardware_payload",
    "select_profile",
    "with_cache_limit",
]
