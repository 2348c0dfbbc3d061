"""ADWIN and CUSUM on reference-standardized values (issue #11 items 3 and 5), pure logic.

Values go through ``NumericReference.standardize`` (the rank transform chosen from the
reference), then ``AdwinSettings.series`` (ADWIN + CUSUM) and ``_emit`` (the alert gate),
exactly as the pipeline's detector step does.
"""

from __future__ import annotations

import numpy as np
import pytest

from transforms.monitors.adwin import AdwinSettings, _emit
from transforms.monitors.stats import numeric_reference

STD = AdwinSettings(0.002, 32, 3600.0, standardized=frozenset({"x"}))
RAW = AdwinSettings(0.002, 32, 3600.0)
RATE = 50.0  # events per second of event time


def detect(values: np.ndarray, cfg: AdwinSettings, ref=None) -> list[dict]:
    """Anomalies for one series fed in 1,000-value batches (event time = index / RATE)."""
    fed = [ref.standardize(float(v)) for v in values] if ref is not None else [float(v) for v in values]
    timed = [(int(i / RATE * 1e6), v) for i, v in enumerate(fed)]
    series, out = cfg.series("x"), []
    for pos in range(0, len(timed), 1000):
        out += list(_emit("m\x001\x00x", series, timed[pos : pos + 1000], cfg))
    return out


def index_of(event: dict) -> int:
    """The value index of a detection (from its event time)."""
    return round(
        (np.datetime64(event["data"]["window_end"].rstrip("Z")) - np.datetime64("1970-01-01T00:00:00"))
        / np.timedelta64(1, "us")
        / 1e6
        * RATE
    )


def test_stationary_lognormal_raises_nothing_on_the_rank_scale_but_does_on_raw_values() -> None:
    rng = np.random.default_rng(22)
    ref = numeric_reference(rng.lognormal(0, 1.5, size=20_000))
    values = rng.lognormal(0, 1.5, size=100_000)
    assert detect(values, STD, ref) == []
    assert detect(values, RAW) != []  # outlier-driven mean jumps on raw values: the old false alerts


def test_a_plus_one_sd_ramp_over_60k_events_is_caught_by_cusum_within_20k_of_onset() -> None:
    rng = np.random.default_rng(22)
    ref = numeric_reference(rng.normal(size=20_000))
    onset = 20_000
    ramp = np.minimum(np.arange(60_000) / 60_000, 1.0)
    values = np.concatenate([rng.normal(size=onset), rng.normal(size=60_000) + ramp])
    fired = detect(values, STD, ref)
    assert fired and all(index_of(e) > onset for e in fired)  # nothing before the onset
    first = min(fired, key=index_of)
    assert first["data"]["detector"] == "cusum" and index_of(first) - onset <= 20_000
    assert first["data"]["statistic"] > first["data"]["threshold"] == 100.0


@pytest.mark.parametrize("shift", [0.25, 1.0])
def test_a_step_is_caught_quickly_and_its_effect_is_in_reference_sd(shift: float) -> None:
    rng = np.random.default_rng(23)
    ref = numeric_reference(rng.normal(5, 2, size=20_000))
    values = np.concatenate([rng.normal(5, 2, size=30_000), rng.normal(5 + 2 * shift, 2, size=20_000)])
    fired = detect(values, STD, ref)
    assert fired and all(index_of(e) > 30_000 for e in fired)
    first = min(fired, key=index_of)
    assert index_of(first) - 30_000 <= (1000 if shift < 0.5 else 300)
    for e in fired:
        effect = e["data"]["current"]["effect_sd"]
        assert abs(effect - shift) < 0.15, e["data"]  # measured against the reference, in its sd
    adwin = [e for e in fired if e["data"]["detector"] == "adwin"]
    assert all(e["data"]["threshold"] == 0.2 and e["data"]["statistic"] >= 0.2 for e in adwin)


def test_counts_and_stationary_normal_streams_stay_quiet() -> None:
    rng = np.random.default_rng(24)
    for sample in (
        lambda n: rng.poisson(0.7, size=n),
        lambda n: rng.normal(size=n),
        lambda n: rng.pareto(1.5, size=n),
    ):
        ref = numeric_reference(sample(20_000))
        assert detect(sample(60_000), STD, ref) == []
