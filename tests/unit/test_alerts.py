"""Alert severity boundaries and the exact anomaly envelope alerting receives.

These pin what ``make mutate`` showed the other tests let through: a threshold compared
with ``>`` instead of ``>=``, the lower-is-worse (accuracy) warning band, times rendered in
the host's zone instead of UTC, and the envelope's field names, defaults and event id (the
id must stay the same across releases so subscribers can dedup a retried window).
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from transforms.monitors.alerts import AlertState, anomaly_event, severity

T0 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("statistic", "expected"),
    [(0.0999, None), (0.1, "warning"), (0.2499, "warning"), (0.25, "critical"), (9.0, "critical")],
)
def test_a_statistic_at_a_threshold_reaches_that_level(statistic: float, expected: str | None) -> None:
    assert severity(statistic, 0.1, 0.25) == expected


@pytest.mark.parametrize(
    ("accuracy", "expected"),
    [(0.9, None), (0.8501, None), (0.85, "warning"), (0.8, "warning"), (0.75, "critical"), (0.1, "critical")],
)
def test_lower_is_worse_has_a_warning_band_between_the_floors(accuracy: float, expected: str | None) -> None:
    assert severity(accuracy, 0.85, 0.75, higher_is_worse=False) == expected


def test_a_lower_level_within_the_cooldown_stays_silent_and_a_new_incident_alerts_at_once() -> None:
    s, cd = AlertState(), dt.timedelta(hours=1)
    assert s.update("critical", T0, cd) == "critical"
    assert s.update("warning", T0 + dt.timedelta(minutes=5), cd) is None  # de-escalation is not news
    assert s.update(None, T0 + dt.timedelta(minutes=10), cd) == "resolved"
    # a fresh incident right after resolution alerts although the cooldown has not passed
    assert s.update("warning", T0 + dt.timedelta(minutes=15), cd) == "warning"


def event(**overrides) -> dict:
    args = dict(
        model="fraud",
        version="v1",
        signal="amount",
        detector="psi",
        statistic=0.31,
        threshold=0.25,
        severity="critical",
        window_start=T0,
        window_end=T0 + dt.timedelta(minutes=5),
        sample_size=1500,
    )
    return anomaly_event(**{**args, **overrides})


def test_the_envelope_is_exactly_the_documented_cloudevent() -> None:
    assert event(reference={"mean": 1.0}, current={"mean": 2.0}) == {
        "specversion": "1.0",
        # sha256 of model, version, signal, detector, window start, severity joined by NUL
        "id": "f3d7889fb6720646a676962fe9053787",
        "source": "predaudit/monitors",
        "type": "predaudit.anomaly.feature_drift",
        "time": "2026-03-01T12:05:00.000000Z",
        "subject": "fraud/v1/amount",
        "datacontenttype": "application/json",
        "data": {
            "model": "fraud",
            "version": "v1",
            "signal": "amount",
            "detector": "psi",
            "statistic": 0.31,
            "threshold": 0.25,
            "severity": "critical",
            "window_start": "2026-03-01T12:00:00.000000Z",
            "window_end": "2026-03-01T12:05:00.000000Z",
            "sample_size": 1500,
            "reference": {"mean": 1.0},
            "current": {"mean": 2.0},
        },
    }


def test_summaries_default_to_empty_objects_and_kind_overrides_the_type() -> None:
    ev = event(detector="adwin", kind="feature_drift")
    assert ev["data"]["reference"] == {} and ev["data"]["current"] == {}
    assert ev["type"] == "predaudit.anomaly.feature_drift"
    assert event(detector="adwin")["type"] == "predaudit.anomaly.concept_drift"


def test_the_id_names_series_window_and_severity() -> None:
    ids = {
        event()["id"],
        event(model="churn")["id"],
        event(version="v2")["id"],
        event(signal="country")["id"],
        event(detector="js_distance")["id"],
        event(window_start=T0 + dt.timedelta(minutes=5))["id"],
        event(severity="warning")["id"],
    }
    assert len(ids) == 7
    assert event(statistic=0.9, sample_size=3)["id"] == event()["id"]  # a retried window: same id


def test_times_are_utc_whatever_the_hosts_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "EST+5")  # a POSIX zone string: no tz database needed
    time.tzset()
    try:
        local = T0.astimezone(dt.timezone(dt.timedelta(hours=2)))  # the same instant, given in +02:00
        ev = event(window_start=local, window_end=local + dt.timedelta(minutes=5))
        assert ev["data"]["window_start"] == "2026-03-01T12:00:00.000000Z"
        assert ev["time"] == "2026-03-01T12:05:00.000000Z"
        assert ev["id"] == event()["id"]
    finally:
        monkeypatch.undo()
        time.tzset()
