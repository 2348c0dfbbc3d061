"""Signals extracted from audit rows, in one place: which column or feature a signal reads.

A signal is a spec feature (read from the row's ``features`` JSON) or one of the prediction
columns below; every monitor (window histograms, ADWIN/CUSUM, warm-up baselines) reads values
through ``signal_value``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: signal -> (audit-row column, kind)
ROW_COLUMNS: dict[str, tuple[str, str]] = {
    "prediction.score": ("prediction_score", "numeric"),
    "prediction.value": ("prediction_value", "numeric"),
    "prediction.label": ("prediction_label", "categorical"),
    "latency_ms": ("latency_ms", "numeric"),
}
#: signal -> audit-row column, for the prediction signals (features are read from ``features``)
ROW_COLUMN = {s: col for s, (col, _) in ROW_COLUMNS.items()}


def signal_value(row: Mapping[str, Any], features: Mapping[str, Any], signal: str) -> Any:
    """The signal's value in one audit row (None when missing).

    >>> signal_value({"prediction_score": 0.3}, {}, "prediction.score"), signal_value({}, {"a": 2}, "a")
    (0.3, 2)
    """
    col = ROW_COLUMN.get(signal)
    return row.get(col) if col is not None else features.get(signal)
