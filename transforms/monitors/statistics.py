"""The registry of window statistics: each is registered once, with what it consumes and
whether it decides (alerts).

A window statistic consumes a signal's histogram counts (``consumes="counts"``: the
reference's expected proportions and the window's counts per bin) and returns a number
recorded in ``drift_metrics`` under its name. A deciding statistic is also judged: by its
null distribution at the window's n (calibrated mode, the default) or by the spec's fixed
thresholds. Sequential detectors on raw values (ADWIN, CUSUM) live in ``adwin.py``.
Adding a statistic = a function + one ``register`` call (README "Adding a statistic").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from transforms.monitors.stats import js_distance, linf_distance, psi


@dataclasses.dataclass(frozen=True)
class WindowStatistic:
    """``compute(expected, counts, epsilon) -> value``; ``decides``: alerts through the
    calibrated (chi-square at the window's n) or fixed thresholds."""

    name: str
    compute: Callable[[Sequence[float], np.ndarray, float], float]
    consumes: str = "counts"
    decides: bool = False


WINDOW_STATISTICS: dict[str, WindowStatistic] = {}


def register(stat: WindowStatistic) -> WindowStatistic:
    """Add a statistic (names are unique: a second registration of a name is an error)."""
    if stat.name in WINDOW_STATISTICS:
        raise ValueError(f"window statistic {stat.name!r} is already registered")
    if stat.consumes != "counts":
        raise ValueError(f"{stat.name}: window statistics consume histogram counts, not {stat.consumes!r}")
    WINDOW_STATISTICS[stat.name] = stat
    return stat


register(WindowStatistic("psi", psi, decides=True))
register(WindowStatistic("js_distance", lambda e, c, _eps: js_distance(e, c)))
register(WindowStatistic("linf_distance", lambda e, c, _eps: linf_distance(e, c)))
