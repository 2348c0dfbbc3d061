"""Calibrated decisions: a window's statistic against its null distribution at the window's n.

A fixed PSI threshold ignores the sample size: at 15,000 events per window a 0.25 sd mean
shift gives PSI ~0.06 against window noise ~0.001, and 0.1 never fires; at 500 events noise
alone reaches 0.05. Here the threshold is the PSI the null (window and reference drawn from
the same distribution) exceeds with probability ``alpha / tests``: for two samples of sizes n
and m, ``n_eff * PSI`` is asymptotically chi-square with (bins - 1) degrees of freedom
(PSI is the symmetric Kullback-Leibler divergence, ``n_eff = n m / (n + m)``), so the
threshold is ``chi2.isf(alpha / tests, bins - 1) / n_eff``. ``alpha`` is the family-wise
error per model and window (Bonferroni over the model's tests in that window). A minimum
effect (PSI ``min_effect``, ~0.14 sd of a normal mean) keeps huge windows from alerting on
trivia. Missing-value rates use a two-proportion z-test with the same correction and a
minimum absolute change. Pure functions: tested without Beam.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from scipy.stats import chi2, norm


class Decision(NamedTuple):
    """A level (None / warning / critical) and the thresholds it was judged by (same scale
    as the statistic)."""

    level: str | None
    warning: float
    critical: float

    @property
    def threshold(self) -> float:
        """The threshold of the level reached (the warning one when none was)."""
        return self.critical if self.level == "critical" else self.warning


def effective_n(n: int, m: int | None) -> float:
    """``n m / (n + m)``: a two-sample test's sample size (``m`` None or 0: an exact reference).

    >>> effective_n(15000, 20000), effective_n(500, None)
    (8571.42857142857, 500.0)
    """
    return float(n) if not m else n * m / (n + m)


def null_psi_threshold(n: int, m: int | None, bins: int, alpha: float) -> float:
    """The PSI that window noise exceeds with probability ``alpha`` at this n.

    >>> round(null_psi_threshold(15000, 20000, 10, 1e-4 / 30), 4)
    0.0049
    >>> round(null_psi_threshold(500, 20000, 10, 1e-4 / 30), 4)
    0.086
    """
    return _chi2_isf(alpha, max(bins - 1, 1)) / effective_n(n, m)


@functools.lru_cache(maxsize=4096)
def _chi2_isf(alpha: float, df: int) -> float:
    return float(chi2.isf(alpha, df))  # scipy's isf costs ~1 ms: a window asks few distinct ones


@functools.lru_cache(maxsize=1024)
def _norm_isf(alpha: float) -> float:
    return float(norm.isf(alpha))


def decide_psi(
    value: float, n: int, m: int | None, bins: int, alpha: float, min_effect: float, critical: float
) -> Decision:
    """Calibrated PSI decision: warning at max(min_effect, null threshold), critical at
    max(critical, warning threshold).

    >>> decide_psi(0.06, 15000, 20000, 10, 1e-4 / 30, 0.02, 0.25)
    Decision(level='warning', warning=0.02, critical=0.25)
    >>> decide_psi(0.06, 500, 20000, 10, 1e-4 / 30, 0.02, 0.25).level is None
    True
    """
    warning = max(min_effect, null_psi_threshold(n, m, bins, alpha))
    crit = max(critical, warning)
    level = "critical" if value >= crit else "warning" if value >= warning else None
    return Decision(level, warning, crit)


def decide_fixed(value: float, warning: float, critical: float) -> Decision:
    """The spec's fixed thresholds (``monitors.psi.mode: fixed``).

    >>> decide_fixed(0.12, 0.1, 0.25).level
    'warning'
    """
    level = "critical" if value >= critical else "warning" if value >= warning else None
    return Decision(level, warning, critical)


def decide_rate_change(
    current: float, n: int, reference: float, m: int | None, alpha: float, min_effect: float
) -> Decision:
    """|current - reference| rate (e.g. missing values) against a two-proportion z-test at
    ``alpha`` and a minimum absolute change; critical at 5x the warning threshold (or 0.5).

    >>> decide_rate_change(0.30, 3000, 0.0, 20000, 1e-4 / 30, 0.02)
    Decision(level='critical', warning=0.02, critical=0.1)
    >>> decide_rate_change(0.01, 3000, 0.0, 20000, 1e-4 / 30, 0.02).level is None
    True
    """
    pooled = (current * n + reference * (m or 0)) / (n + (m or 0))
    se = math.sqrt(max(pooled * (1 - pooled), 0.0) * (1 / n + (1 / m if m else 0.0)))
    warning = max(min_effect, _norm_isf(alpha / 2) * se)
    crit = min(5 * warning, max(0.5, warning))
    diff = abs(current - reference)
    level = "critical" if diff >= crit else "warning" if diff >= warning else None
    return Decision(level, warning, crit)


def pool_rare(expected, counts, min_expected: float = 10.0):
    """Pool bins whose expected count in this window is under ``min_expected`` into one bin
    (the chi-square rule: PSI's tail is heavy on near-empty bins). Returns numpy arrays
    (expected proportions, counts); unchanged when no bin is rare.

    >>> import numpy as np
    >>> e, c = pool_rare([0.5, 0.49, 0.005, 0.005], np.array([50, 48, 2, 0]), 5)
    >>> e.tolist(), c.tolist()
    ([0.5, 0.49, 0.01], [50, 48, 2])
    """
    import numpy as np

    e = np.asarray(expected, dtype=float)
    c = np.asarray(counts)
    rare = e * c.sum() < min_expected
    if rare.sum() < 2:
        return e, c
    keep = ~rare
    return np.append(e[keep], e[rare].sum()), np.append(c[keep], c[rare].sum())
