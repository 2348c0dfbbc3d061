"""The monitors' settings and a model's reference, translated from a spec once.

``drift_settings(spec)`` is the only spec -> settings translation of the window monitors;
``ModelReference`` is what a window is compared with (a reference file, a seasonal profile
set, or a warm-up baseline). Both are plain frozen dataclasses (picklable: a warm-up
baseline travels in Beam state and in partial counts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from transforms.monitors.stats import Reference

#: how a window is compared: the spec's fixed thresholds, or calibrated to the window's n
MODES = ("calibrated", "fixed")


@dataclasses.dataclass(frozen=True)
class DriftSettings:
    """Per-model window-monitor settings (from the model spec's ``monitors`` section)."""

    min_sample_size: int = 500
    epsilon: float = 1e-4
    warning: float = 0.1
    critical: float = 0.25
    cooldown_s: float = 3600.0
    latency_slo_ms: float | None = None
    #: rate metric -> (warning, critical) share of the window's events
    rates: tuple[tuple[str, float, float], ...] = (
        ("latency_over_slo", 0.1, 0.3),
        ("error_rate", 0.05, 0.2),
        ("quality_issue_rate", 0.05, 0.2),
    )
    #: traffic drop: (warning, critical) count / baseline median
    traffic: tuple[float, float] = (0.3, 0.1)
    #: "calibrated" (null distribution at the window's n) or "fixed" (warning / critical)
    mode: str = "calibrated"
    #: family-wise false-alarm probability per model and window (Bonferroni over its tests)
    alpha: float = 1e-4
    #: smallest PSI worth an alert, whatever the window's n (~0.14 sd of a normal mean)
    min_effect: float = 0.02
    #: smallest change of a feature's missing-value rate worth an alert
    missing_min_effect: float = 0.02
    #: every spec feature (optional ones too): each has a missing-rate signal
    features: tuple[str, ...] = ()
    #: a window under min_sample_size events is merged with the following ones
    merge_small_windows: bool = True


@dataclasses.dataclass(frozen=True)
class ModelReference:
    """A model's reference signals, for one version or (``version='*'``) all of them.

    ``baseline``: "reference" (a file), "warmup" (the version's first rows) or "inferred"
    (a spec-less model: signals inferred over its warm-up). ``profiles``: seasonal slot ->
    signals (``seasonality`` "daily": hour of day, "weekly": hour of week).
    """

    model: str
    version: str
    signals: Mapping[str, Reference]
    settings: DriftSettings
    missing: Mapping[str, float] = dataclasses.field(default_factory=dict)
    events: int = 0
    baseline: str = "reference"
    seasonality: str = "none"
    profiles: Mapping[int, Mapping[str, Reference]] = dataclasses.field(default_factory=dict)

    def applies_to(self, version: str) -> bool:
        return self.version in ("*", version)

    @property
    def reference_id(self) -> str:
        """``model@version`` (``#inferred`` when the model has no spec)."""
        return f"{self.model}@{self.version}" + ("#inferred" if self.baseline == "inferred" else "")


SLOTS = {"none": 1, "daily": 24, "weekly": 168}


def season_slot(t_us: int, seasonality: str) -> int:
    """The seasonal slot of an event time: hour of day (daily) or hour of week, Monday 00:00
    UTC = 0 (weekly); 0 without seasonality.

    >>> season_slot(1_772_323_200_000_000 + 5 * 3_600_000_000, "daily")  # 2026-03-01T05:00Z
    5
    >>> season_slot(1_772_323_200_000_000, "weekly")  # a Sunday
    144
    """
    if seasonality == "none":
        return 0
    hours = t_us // 3_600_000_000
    return int(hours % 24) if seasonality == "daily" else int((hours + 72) % 168)


def drift_settings(spec: Any) -> DriftSettings:
    """The window monitors' settings from a spec's ``monitors`` section (the one translation).

    Options newer than the spec schema fall back to the defaults above.
    """
    m = spec.monitors
    return DriftSettings(
        min_sample_size=m.min_sample_size,
        epsilon=m.psi.epsilon,
        warning=m.psi.warning,
        critical=m.psi.critical,
        cooldown_s=float(m.cooldown_seconds),
        latency_slo_ms=m.latency_slo_ms,
        rates=tuple(
            (k, getattr(m, k).warning, getattr(m, k).critical)
            for k in ("latency_over_slo", "error_rate", "quality_issue_rate")
        ),
        traffic=(m.traffic_drop.warning, m.traffic_drop.critical),
        mode=getattr(m.psi, "mode", "calibrated"),
        alpha=getattr(m.psi, "alpha", 1e-4),
        min_effect=getattr(m.psi, "min_effect", 0.02),
        missing_min_effect=getattr(m, "missing_min_effect", 0.02),
        features=tuple(f.name for f in spec.features if f.pii != "drop"),  # dropped: never in rows
        merge_small_windows=getattr(m, "merge_small_windows", True),
    )
