"""Severity, cooldown and resolution for one (model, version, signal, detector) series,
and the CloudEvents 1.0 anomaly envelope.

A persistent drift must not flood alerting: after an alert, the same series re-alerts only
on escalation (warning -> critical) or once the cooldown has passed; when the statistic
returns under the warning threshold, one ``resolved`` event is emitted. Time is the
window's event time, never the wall clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from typing import Any

_RANK = {None: 0, "warning": 1, "critical": 2}


def severity(statistic: float, warning: float, critical: float, higher_is_worse: bool = True) -> str | None:
    """
    >>> severity(0.12, 0.1, 0.25), severity(0.3, 0.1, 0.25), severity(0.05, 0.1, 0.25)
    ('warning', 'critical', None)
    >>> severity(0.7, 0.85, 0.75, higher_is_worse=False)  # accuracy below its floors
    'critical'
    """
    if higher_is_worse:
        return "critical" if statistic >= critical else "warning" if statistic >= warning else None
    return "critical" if statistic <= critical else "warning" if statistic <= warning else None


@dataclasses.dataclass
class AlertState:
    """What the series last alerted (picklable: it lives in Beam state)."""

    active: str | None = None
    last_alert: dt.datetime | None = None

    def update(self, level: str | None, at: dt.datetime, cooldown: dt.timedelta) -> str | None:
        """The event to emit for this window's severity ``level`` (or None).

        >>> s, t0, cd = AlertState(), dt.datetime(2026, 1, 1), dt.timedelta(hours=1)
        >>> [s.update(lvl, t0 + dt.timedelta(minutes=5 * i), cd)
        ...  for i, lvl in enumerate([None, "warning", "warning", "critical", "critical", None, None])]
        [None, 'warning', None, 'critical', None, 'resolved', None]
        """
        if level is None:
            if self.active is None:
                return None
            self.active, self.last_alert = None, at
            return "resolved"
        new_incident = self.active is None
        if new_incident or _RANK[level] > _RANK[self.active] or at - self.last_alert >= cooldown:
            self.active, self.last_alert = level, at
            return level
        return None  # persistent at the same (or a lower) level within the cooldown


ANOMALY_TYPES = {
    "psi": "feature_drift",
    "js_distance": "feature_drift",
    "linf_distance": "feature_drift",
    "adwin": "concept_drift",
    "cusum": "feature_drift",
    "missing": "data_quality",
    "accuracy": "performance_degradation",
    "latency": "latency_regression",
    "traffic": "traffic_anomaly",
    "quality": "data_quality",
    "threshold": "threshold_breach",
}


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def anomaly_event(
    *,
    model: str,
    version: str,
    signal: str,
    detector: str,
    statistic: float,
    threshold: float,
    severity: str,
    window_start: dt.datetime,
    window_end: dt.datetime,
    sample_size: int,
    reference: dict | None = None,
    current: dict | None = None,
    source: str = "predaudit/monitors",
    kind: str | None = None,
) -> dict[str, Any]:
    """A CloudEvents 1.0 JSON anomaly (``schemas/json/anomaly_event.schema.json``).

    The id is deterministic for the series, window and severity, so a retried window
    publishes the same event id (subscribers can dedup). ``kind`` overrides the type suffix
    (e.g. ADWIN on a feature is ``feature_drift``, on labelled errors ``concept_drift``).
    """
    key = "\x00".join([model, version, signal, detector, _iso(window_start), severity])
    return {
        "specversion": "1.0",
        "id": hashlib.sha256(key.encode()).hexdigest()[:32],
        "source": source,
        "type": f"predaudit.anomaly.{kind or ANOMALY_TYPES[detector]}",
        "time": _iso(window_end),
        "subject": f"{model}/{version}/{signal}",
        "datacontenttype": "application/json",
        "data": {
            "model": model,
            "version": version,
            "signal": signal,
            "detector": detector,
            "statistic": statistic,
            "threshold": threshold,
            "severity": severity,
            "window_start": _iso(window_start),
            "window_end": _iso(window_end),
            "sample_size": sample_size,
            "reference": reference or {},
            "current": current or {},
        },
    }


def pubsub_attributes(event: dict[str, Any]) -> dict[str, str]:
    """Attributes for subscription filters (model, version, severity, type)."""
    d = event["data"]
    return {"model": d["model"], "version": d["version"], "severity": d["severity"], "type": event["type"]}
