"""Typed records between the monitors and the one alerting step, and the drift_metrics row.

Every monitor (window statistics, rates, traffic, accuracy) hands ``AlertInput`` records to
``alerts`` (severity, cooldown, resolved); ``metric_row`` is the one place a
``drift_metrics`` row is built. Both are tuples/dicts underneath, so Beam pickles them cheaply.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import NamedTuple

from schemas.tables import TABLES
from transforms.rows import to_micros

DRIFT_METRICS, ANOMALIES = "drift_metrics", "anomalies"
_COLUMNS = frozenset(TABLES[DRIFT_METRICS].column_names)


class Breach(NamedTuple):
    """One judged statistic: ``level`` None (ok) / warning / critical, and the threshold it
    was compared with (same kind of number as ``statistic``)."""

    level: str | None
    statistic: float
    threshold: float
    reference: dict
    current: dict


class AlertInput(NamedTuple):
    """What the alerting step receives, keyed by series "model\\0version\\0signal\\0detector"."""

    breach: Breach
    start: dt.datetime
    end: dt.datetime
    sample_size: int


def series_key(model: str, version: str, signal: str, detector: str) -> str:
    return f"{model}\x00{version}\x00{signal}\x00{detector}"


def metric_row(
    model: str,
    version: str,
    signal: str,
    metric: str,
    value: float | None,
    size: int,
    status: str,
    reference_id: str,
    start: dt.datetime,
    end: dt.datetime,
    **extra,
) -> dict:
    """A ``drift_metrics`` row; ``extra`` columns (e.g. ``threshold``, ``baseline``,
    ``epsilon``, ``bins``) are kept only when the table has them.

    >>> t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    >>> r = metric_row("m", "1", "x", "psi", 0.1, 10, "ok", "m@1", t, t, bins=10, nope=1)
    >>> r["bins"], "nope" in r, len(r["metric_id"])
    (10, False, 64)
    """
    key = f"{model}\x00{version}\x00{signal}\x00{metric}\x00{start.isoformat()}"
    row = {
        "metric_id": hashlib.sha256(key.encode()).hexdigest(),
        "model_name": model,
        "model_version": version,
        "signal": signal,
        "metric": metric,
        "value": value,
        "window_start": to_micros(start),
        "window_end": to_micros(end),
        "sample_size": size,
        "status": status,
        "epsilon": None,
        "bins": None,
        "reference_id": reference_id,
    }
    row.update((k, v) for k, v in extra.items() if k in _COLUMNS)
    return row
