"""Calibrated window decisions (issue #11 items 1 and 5) on seeded synthetic windows.

The decision functions are exercised through ``window_metrics`` (the code the pipeline
runs per window), with window counts binned by the reference itself, so no Beam is needed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from transforms.monitors.drift import MISSING, window_metrics
from transforms.monitors.settings import DriftSettings, ModelReference
from transforms.monitors.stats import categorical_reference, numeric_reference

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
M = 20_000  # reference sample size
CATS = [f"c{i}" for i in range(26)]
P_CATS = np.array([0.5 ** (i / 3) for i in range(26)])
P_CATS /= P_CATS.sum()


def generators(rng: np.random.Generator) -> dict:
    """32 stationary features: normal, heavy-tailed, skewed, counts, rare categories."""
    gens = {}
    for i in range(10):
        gens[f"normal{i}"] = lambda n, i=i: rng.normal(i, 1 + i / 10, size=n)
    for i in range(6):
        gens[f"lognormal{i}"] = lambda n, i=i: rng.lognormal(0, 0.5 + i / 4, size=n)
    for i in range(4):
        gens[f"pareto{i}"] = lambda n, i=i: rng.pareto(1.5 + i, size=n)
    for i, lam in enumerate((0.2, 0.7, 2.0, 8.0, 30.0)):
        gens[f"count{i}"] = lambda n, lam=lam: rng.poisson(lam, size=n)
    gens["zero_inflated"] = lambda n: rng.poisson(3, size=n) * (rng.random(n) < 0.3)
    gens["exponential"] = lambda n: rng.exponential(2, size=n)
    for i in range(5):
        gens[f"category{i}"] = lambda n: rng.choice(len(CATS), p=P_CATS, size=n)
    return gens


def reference(gens: dict, settings: DriftSettings) -> ModelReference:
    signals = {}
    for name, g in gens.items():
        sample = g(M)
        signals[name] = (
            categorical_reference([CATS[i] for i in sample])
            if name.startswith("category")
            else numeric_reference(sample)
        )
    return ModelReference("m", "*", signals, settings, events=M)


def window_counts(ref: ModelReference, values: dict) -> dict:
    out = {}
    for name, v in values.items():
        r = ref.signals[name]
        if name.startswith("category"):  # category indices -> the reference's bins (top-K + other)
            index = {c: i for i, c in enumerate(r.categories)}
            lookup = np.array([index.get(c, len(r.categories)) for c in CATS])
            counts = np.bincount(lookup[v], minlength=len(r.expected))
        else:
            counts = r.bins(v)
        out[name] = {b: int(c) for b, c in enumerate(counts) if c}
    return out


def alerts(ref: ModelReference, n: int, counts: dict) -> list[tuple[str, str, float, float]]:
    return [
        (row["signal"], row["metric"], alert.breach.statistic, alert.breach.threshold)
        for row, alert in window_metrics("m", "1", n, counts, ref, T0, T0 + dt.timedelta(seconds=300))
        if alert is not None and alert.breach.level is not None
    ]


@pytest.fixture(scope="module")
def stationary() -> tuple[dict, ModelReference]:
    gens = generators(np.random.default_rng(11))
    return gens, reference(gens, DriftSettings())


@pytest.mark.parametrize(("n", "windows"), [(15_000, 6), (3_000, 20), (500, 50)])
def test_no_false_alarm_on_stationary_windows_of_32_features(n: int, windows: int, stationary) -> None:
    gens, ref = stationary
    fired = []
    for _ in range(windows):
        fired += alerts(ref, n, window_counts(ref, {k: g(n) for k, g in gens.items()}))
    assert fired == []


def test_a_quarter_sd_shift_on_one_of_ten_features_fires_in_each_of_two_windows() -> None:
    rng = np.random.default_rng(12)
    gens = {f"x{i}": (lambda n: rng.normal(0, 1, size=n)) for i in range(10)}
    ref = reference(gens, DriftSettings())
    fixed = dataclasses.replace(ref, settings=DriftSettings(mode="fixed"))
    for _ in range(2):
        values = {k: g(15_000) for k, g in gens.items()}
        values["x3"] = values["x3"] + 0.25
        counts = window_counts(ref, values)
        fired = alerts(ref, 15_000, counts)
        assert [(s, m) for s, m, _, _ in fired] == [("x3", "psi")]
        (_, _, statistic, threshold) = fired[0]
        assert 0.04 < statistic and threshold == 0.02  # the minimum effect decides at this n
        assert alerts(fixed, 15_000, counts) == []  # the old fixed 0.1 misses it


def test_small_windows_need_a_larger_effect() -> None:
    rng = np.random.default_rng(13)
    ref = reference({"x": lambda n: rng.normal(size=n)}, DriftSettings(min_sample_size=100))
    thresholds = [
        a.breach.threshold
        for n in (200, 800, 20_000)
        for r, a in window_metrics("m", "1", n, window_counts(ref, {"x": rng.normal(size=n)}), ref, T0, T0)
        if r["metric"] == "psi"
    ]
    assert thresholds[0] > thresholds[1] > thresholds[2] == 0.02  # ~1/n_eff, floored at the minimum effect


def test_an_optional_feature_going_30_percent_null_is_named_within_one_window() -> None:
    settings = DriftSettings(features=("email", "amount"))
    ref = ModelReference("m", "*", {}, settings, missing={"email": 0.05, "amount": 0.0}, events=M)
    rng = np.random.default_rng(14)
    quiet = {MISSING: {"email": int(rng.binomial(3000, 0.05))}}
    assert alerts(ref, 3000, quiet) == []
    nulls = int(rng.binomial(3000, 0.35))
    spoilt = {MISSING: {"email": nulls}}
    fired = alerts(ref, 3000, spoilt)
    assert [(s, m) for s, m, _, _ in fired] == [("email", "missing_rate")]
    _, _, rate, threshold = fired[0]
    assert rate > threshold > 0.05  # both are missing-value rates: comparable


def test_a_registered_statistic_is_computed_for_every_signal_once_registered() -> None:
    from transforms.monitors.statistics import WINDOW_STATISTICS, WindowStatistic, register
    from transforms.monitors.stats import proportions

    def hellinger(expected, counts, _epsilon):
        p, q = np.asarray(expected, dtype=float), proportions(counts)
        return float(np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)))

    rng = np.random.default_rng(15)
    ref = reference({"x": lambda n: rng.normal(size=n), "y": lambda n: rng.normal(size=n)}, DriftSettings())
    register(WindowStatistic("hellinger", hellinger))
    try:
        with pytest.raises(ValueError, match="already registered"):
            register(WindowStatistic("hellinger", hellinger))
        counts = window_counts(ref, {"x": rng.normal(size=2000), "y": rng.normal(1.0, size=2000)})
        rows = {r["signal"]: r["value"] for r, _ in window_metrics("m", "1", 2000, counts, ref, T0, T0)
                if r["metric"] == "hellinger"}  # fmt: skip
    finally:
        del WINDOW_STATISTICS["hellinger"]
    assert set(rows) == {"x", "y"} and rows["x"] < 0.05 < rows["y"]
