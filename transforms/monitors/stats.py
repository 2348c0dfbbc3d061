"""Reference distributions and drift statistics computed from the same histograms.

Numeric signals: quantile bin edges from the reference sample (open-ended outer bins), so
each reference bin holds about 1/bins of the mass. Categorical signals: the top-K reference
categories plus ``__other__`` (which also catches categories never seen in the reference).
PSI uses a fixed epsilon for empty bins (recorded with every metric); Jensen-Shannon
distance (base 2, in [0, 1]) and L-infinity distance (as Vertex AI uses) come from the
same proportions. PSI with 10 bins is noisy for small windows: E[PSI] ~ (bins-1)(1/n+1/m).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from statistics import NormalDist

import numpy as np

OTHER = "__other__"


#: quantile points a numeric reference keeps for the rank (normal-score) transform
QUANTILES = 101
#: normal scores are clipped here (a value beyond the reference's range is 3.09 sd out)
_P_CLIP = 1e-3


@dataclasses.dataclass(frozen=True)
class NumericReference:
    edges: tuple[float, ...]  # interior edges; len(edges) + 1 bins
    expected: tuple[float, ...]
    sample_size: int
    #: rank transform: distinct reference quantile values and their normal scores
    quantiles: tuple[float, ...] = ()
    qz: tuple[float, ...] = ()
    #: mean and sd of the transformed reference sample (0 / 1 for a continuous one)
    z_mean: float = 0.0
    z_sd: float = 1.0

    kind = "numeric"

    def standardize(self, v: float) -> float:
        """The value's normal score under the reference CDF, standardized by the reference's
        own scores: ~N(0, 1) for a stationary stream whatever the shape (heavy tails, counts).

        >>> ref = numeric_reference([float(i) for i in range(1000)])
        >>> abs(round(ref.standardize(499.5), 2)), ref.standardize(-10.0) < -3, ref.standardize(1e9) > 3
        (0.0, True, True)
        """
        xs = self.quantiles
        i = bisect.bisect_left(xs, v)
        if i == 0:
            z = self.qz[0]
        elif i == len(xs):
            z = self.qz[-1]
        else:
            x0, x1 = xs[i - 1], xs[i]
            z0 = self.qz[i - 1]
            z = z0 + (self.qz[i] - z0) * (v - x0) / (x1 - x0)
        return (z - self.z_mean) / self.z_sd

    def bins(self, values: Sequence[float]) -> np.ndarray:
        """Counts per bin (value == edge falls in the lower bin).

        >>> ref = NumericReference((0.0, 1.0), (0.3, 0.4, 0.3), 10)
        >>> ref.bins([-5, 0.0, 0.5, 1.0, 2, 3]).tolist()
        [2, 2, 2]
        """
        idx = np.searchsorted(np.asarray(self.edges), np.asarray(values, dtype=float), side="left")
        return np.bincount(idx, minlength=len(self.edges) + 1)

    def to_json(self) -> dict:
        doc = {
            "type": "numeric",
            "edges": list(self.edges),
            "expected": list(self.expected),
            "sample_size": self.sample_size,
        }
        if self.quantiles:
            doc.update(quantiles=list(self.quantiles), qz=list(self.qz), z_mean=self.z_mean, z_sd=self.z_sd)
        return doc


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


def numeric_reference(values: Sequence[float], bins: int = 10, keep_ties: bool = False) -> NumericReference:
    """Quantile edges from a reference sample (ties merge bins, unless ``keep_ties``: then
    every reference has ``bins`` bins, some empty, as seasonal profiles need), plus the
    rank transform (``standardize``).

    >>> ref = numeric_reference(list(range(100)), bins=4)
    >>> ref.edges, ref.expected
    ((24.75, 49.5, 74.25), (0.25, 0.25, 0.25, 0.25))
    >>> len(numeric_reference([0] * 90 + [1] * 10, bins=4, keep_ties=True).expected)
    4
    """
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("empty reference sample")
    qs = np.quantile(arr, np.linspace(0, 1, bins + 1)[1:-1])
    edges = tuple(float(e) for e in (qs if keep_ties else np.unique(qs)))
    counts = NumericReference(edges, (), 0).bins(arr)
    quantiles, qz = rank_transform(arr)
    scores = np.interp(arr, quantiles, qz)
    sd = float(scores.std())
    return NumericReference(
        edges,
        tuple(float(c) / arr.size for c in counts),
        int(arr.size),
        tuple(quantiles),
        tuple(qz),
        float(scores.mean()),
        sd if sd > 1e-9 else 1.0,
    )


def rank_transform(arr: np.ndarray, points: int = QUANTILES) -> tuple[list[float], list[float]]:
    """Distinct quantile values of a sample and the normal score of each (tied quantiles
    get their mid probability, so a count feature's value maps to its mid-rank).

    >>> q, z = rank_transform(np.array([0.0] * 50 + [1.0] * 50), points=5)
    >>> q, [round(v, 3) for v in z]
    ([0.0, 1.0], [-0.674, 1.15])
    """
    probs = np.linspace(0, 1, points)
    qs = np.quantile(arr, probs, method="inverted_cdf")  # sample values: ties stay ties
    values, inverse = np.unique(qs, return_inverse=True)
    mid = np.bincount(inverse, weights=probs) / np.bincount(inverse)
    nd = NormalDist()
    z = [nd.inv_cdf(min(max(float(p), _P_CLIP), 1 - _P_CLIP)) for p in mid]
    return [float(v) for v in values], z


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
        return NumericReference(
            tuple(doc["edges"]),
            tuple(doc["expected"]),
            int(doc["sample_size"]),
            tuple(doc.get("quantiles", ())),
            tuple(doc.get("qz", ())),
            float(doc.get("z_mean", 0.0)),
            float(doc.get("z_sd", 1.0)),
        )
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
