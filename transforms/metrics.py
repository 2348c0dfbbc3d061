"""Beam counters under one namespace, so every path (received, valid, invalid by code,
duplicates, rows per sink, retries, permanent failures) is visible in one place."""

from __future__ import annotations

import functools

from apache_beam.metrics import Metrics

NAMESPACE = "predaudit"


@functools.lru_cache(maxsize=512)
def counter(name: str):
    return Metrics.counter(NAMESPACE, name)
