"""Test helpers that need Beam (kept apart from tests/helpers.py, which the slim sidecar tests import)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from apache_beam.metrics.execution import MetricsContainer
from apache_beam.metrics.metricbase import MetricName
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory

from transforms.metrics import NAMESPACE


@contextlib.contextmanager
def counted() -> Iterator[Callable[[str], int]]:
    """Counters incremented inside the block, as a runner's step container records them."""
    sampler = statesampler.StateSampler("test", CounterFactory())
    statesampler.set_current_tracker(sampler)
    container = MetricsContainer("sink")
    try:
        with sampler.scoped_state("sink", "process", metrics_container=container):
            yield lambda name: container.get_counter(MetricName(NAMESPACE, name)).get_cumulative()
    finally:
        statesampler.set_current_tracker(None)
