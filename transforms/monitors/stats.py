"""Reference distributions and drift statistics computed from the same histograms.

Numeric signals: quantile bin edges from the reference sample (open-ended outer bins), so
each reference bin holds about 1/bins of the mass. Categorical signals: the top-K reference
categories plus ``__other__`` (which also catches categories never seen in the reference).
PSI uses a fixed epsilon for empty bins (recorded with every metric); Jensen-Shannon
distance (base 2, in [0, 1]) and L-infinity distance (as Vertex AI uses) come from the
same proportions. PSI with 10 bins is noisy for small windows: E[PSI] ~ (bins-1)(1/n+1/m).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

OTHER = "__other__"


@dataclasses.dataclass(frozen=True)
class NumericReference:
    edges: tuple[float, ...]  # interior edges; len(edges) + 1 bins
    expected: tuple[float, ...]
    sample_size: int

    kind = "numeric"

    def bins(self, values: Sequence[float]) -> np.ndarray:
        """Counts per bin (value == edge falls in the lower bin).

        >>> ref = NumericReference((0.0, 1.0), (0.3, 0.4, 0.3), 10)
        >>> ref.bins([-5, 0.0, 0.5, 1.0, 2, 3]).tolist()
        [2, 2, 2]
        """
        idx = np.searchsorted(np.asarray(self.edges), np.asarray(values, dtype=float), side="left")
        return np.bincount(idx, minlength=len(self.edges) + 1)

    def to_json(self) -> dict:
        return {
            "type": "numeric",
            "edges": list(self.edges),
            "expected": list(self.expected),
            "sample_size": self.sample_size,
        }


@dataclasses.dataclass(frozen=True)
class CategoricalReference:
    categories: tuple[str, ...]  # the top-K; the last bin is OTHER
    expected: tuple[float, ...]  # len(categories) + 1
    sample_size: int

    kind = "categorical"

    def bins(self, values: Iterable[object]) -> np.ndarray:
        """
        >>> ref = CategoricalReference(("a", "b"), (0.5, 0.4, 0.1), 10)
        >>> ref.bins(["a", "a", "c", None]).tolist()
        [2, 0, 2]
        """
        index = {c: i for i, c in enumerate(self.categories)}
        counts = np.zeros(len(self.categories) + 1, dtype=np.int64)
        for v in values:
            counts[index.get(v if isinstance(v, str) else str(v), len(self.categories))] += 1
        return counts

    def to_json(self) -> dict:
        return {
            "type": "categorical",
            "categories": list(self.categories),
            "expected": list(self.expected),
            "sample_size": self.sample_size,
        }


Reference = NumericReference | CategoricalReference


def numeric_reference(values: Sequence[float], bins: int = 10) -> NumericReference:
    """Quantile edges from a reference sample (ties merge bins).

    >>> ref = numeric_reference(list(range(100)), bins=4)
    >>> ref.edges, ref.expected
    ((24.75, 49.5, 74.25), (0.25, 0.25, 0.25, 0.25))
    """
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("empty reference sample")
    qs = np.quantile(arr, np.linspace(0, 1, bins + 1)[1:-1])
    edges = tuple(float(e) for e in np.unique(qs))
    counts = NumericReference(edges, (), 0).bins(arr)
    return NumericReference(edges, tuple(float(c) / arr.size for c in counts), int(arr.size))


def categorical_reference(values: Iterable[object], top_k: int = 20) -> CategoricalReference:
    """
    >>> categorical_reference(["a"] * 6 + ["b"] * 3 + ["c"], top_k=2).expected
    (0.6, 0.3, 0.1)
    """
    counts = Counter(v if isinstance(v, str) else str(v) for v in values)
    n = sum(counts.values())
    if n == 0:
        raise ValueError("empty reference sample")
    top = tuple(c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k])
    other = n - sum(counts[c] for c in top)
    return CategoricalReference(top, tuple(counts[c] / n for c in top) + (other / n,), n)


def reference_from_json(doc: dict) -> Reference:
    if doc.get("type") == "numeric":
        return NumericReference(tuple(doc["edges"]), tuple(doc["expected"]), int(doc["sample_size"]))
    if doc.get("type") == "categorical":
        return CategoricalReference(tuple(doc["categories"]), tuple(doc["expected"]), int(doc["sample_size"]))
    raise ValueError(f"unknown reference type {doc.get('type')!r}")


def proportions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros_like(counts, dtype=float)


def psi(expected: Sequence[float], counts: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population stability index of a window's counts against reference proportions.

    >>> round(psi([0.5, 0.5], np.array([50, 50])), 6)
    0.0
    >>> round(psi([0.5, 0.5], np.array([90, 10])), 3)
    0.879
    """
    e = np.clip(np.asarray(expected, dtype=float), epsilon, None)
    a = np.clip(proportions(counts), epsilon, None)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(expected: Sequence[float], counts: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2: 0 for identical, 1 for disjoint distributions.

    >>> js_distance([1.0, 0.0], np.array([0, 5]))
    1.0
    """
    p, q = np.asarray(expected, dtype=float), proportions(counts)
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def linf_distance(expected: Sequence[float], counts: np.ndarray) -> float:
    """Largest absolute difference of proportions (Vertex AI's categorical drift statistic).

    >>> round(linf_distance([0.5, 0.5], np.array([80, 20])), 6)
    0.3
    """
    return float(np.max(np.abs(np.asarray(expected, dtype=float) - proportions(counts))))


def expected_psi_noise(bins: int, n: int, m: int) -> float:
    """Approximate E[PSI] between two samples of the same distribution: (bins-1)(1/n + 1/m)."""
    return (bins - 1) * (1 / n + 1 / m)
