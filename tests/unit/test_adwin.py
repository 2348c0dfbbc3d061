"""ADWIN series: exactly river's detections on the same ordered values, whatever the batching."""

from __future__ import annotations

import random

import pytest
from river import drift

from transforms.monitors.adwin import AdwinSeries


def standalone(values: list[float], delta: float = 0.002, clock: int = 32) -> list[int]:
    a, out = drift.ADWIN(delta=delta, clock=clock), []
    for i, v in enumerate(values):
        a.update(v)
        if a.drift_detected:
            out.append(i)
    return out


@pytest.mark.parametrize(
    ("seed", "shift", "scale", "within"),
    [(1, 0.5, 1.0, 500), (2, 1.0, 1.0, 200), (3, 0.0, 2.5, 1000), (4, 0.0, 1.0, 0)],
)
def test_same_detection_indices_as_river_standalone(
    seed: int, shift: float, scale: float, within: int
) -> None:
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in range(3000)] + [rng.gauss(shift, scale) for _ in range(3000)]
    expected = standalone(values)
    timed = list(enumerate(values))
    one_pass = [d.index for d in AdwinSeries(0.002, 32).feed(timed)]
    series, batched = AdwinSeries(0.002, 32), []
    pos = 0
    while pos < len(timed):  # arbitrary batch sizes, each shuffled then sorted by event time
        size = rng.randint(1, 700)
        batch = timed[pos : pos + size]
        rng.shuffle(batch)
        batched += [d.index for d in series.feed(sorted(batch))]
        pos += size
    assert one_pass == batched == expected
    if within:
        assert expected and 3000 <= expected[0] < 3000 + within  # mean shift 0.5 sd: within 500 events
    else:
        assert all(i < 3000 for i in expected) or not expected  # no late false alarm after a non-change


def test_no_false_alarm_on_a_long_stationary_stream() -> None:
    rng = random.Random(7)
    assert standalone([rng.gauss(0, 1) for _ in range(100_000)]) == []
