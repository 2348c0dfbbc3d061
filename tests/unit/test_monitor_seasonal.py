"""Seasonal references (issue #11 item 2): a daily cycle of 1 sd with a one-day reference.

The reference is built by ``build_reference(..., seasonality="daily")`` (hour-of-day
profiles); the next two days go through ``bin_rows`` / ``window_metrics`` (the window
statistics) and ``series_values`` + ADWIN/CUSUM (the sequential detectors), as in the pipeline.
"""

from __future__ import annotations

import datetime as dt
import math
import types

import numpy as np
import orjson
import pytest

from schemas.specs import parse_spec
from transforms.monitors.adwin import _emit, adwin_settings, numeric_signals, series_values
from transforms.monitors.drift import bin_rows, window_metrics
from transforms.monitors.reference import build_reference, reference_from_doc
from transforms.rows import from_micros

SPEC = parse_spec(
    "name: m\nfeatures: [{name: x, type: numeric}, {name: y, type: numeric}]\n"
    "monitors: {min_sample_size: 200}"
)
T0 = 1_772_323_200  # 2026-03-01T00:00:00Z
STEP_S = 4  # one event every 4 s: 21,600 a day, 900 an hour
DAY = 86_400


def stream(rng: np.random.Generator, days: tuple[int, int], step_at: int | None = None) -> list[dict]:
    out = []
    for t in range(T0 + days[0] * DAY, T0 + days[1] * DAY, STEP_S):
        cycle = math.sin(2 * math.pi * (t - T0) / DAY)  # amplitude 1 sd
        x = float(rng.normal() + cycle + (1.0 if step_at is not None and t >= step_at else 0.0))
        out.append({"t": t, "x": x, "y": float(rng.normal())})
    return out


def reference(rng: np.random.Generator, seasonality: str):
    events = [
        types.SimpleNamespace(
            features={"x": e["x"], "y": e["y"]},
            prediction=types.SimpleNamespace(score=None, value=None, label=None),
            latency_ms=None,
            event_time=from_micros(e["t"] * 1_000_000).isoformat(),
        )
        for e in stream(rng, (0, 1))
    ]
    doc = orjson.loads(orjson.dumps(build_reference(events, SPEC, "*", seasonality=seasonality)))
    return reference_from_doc(doc, SPEC)


def rows(events: list[dict]) -> list[dict]:
    return [
        {
            "model_name": "m",
            "model_version": "1",
            "event_time": e["t"] * 1_000_000,
            "features": orjson.dumps({"x": e["x"], "y": e["y"]}).decode(),
            "prediction_score": None,
            "prediction_value": None,
            "prediction_label": None,
            "latency_ms": None,
            "status": "ok",
            "quality_issues": [],
        }
        for e in events
    ]


def window_alerts(ref, audit_rows: list[dict]) -> list[tuple[str, int]]:
    window_us = 3600 * 1_000_000
    fired = []
    for (model, version), (n, counts, t) in bin_rows(audit_rows, lambda _: ref, window_us):
        start = from_micros(t // window_us * window_us)
        for row, alert in window_metrics(
            model, version, n, counts, ref, start, start + dt.timedelta(hours=1)
        ):
            if alert is not None and alert.breach.level is not None:
                fired.append((row["signal"], row["window_start"]))
    return fired


def sequential_alerts(ref, audit_rows: list[dict]) -> list[dict]:
    cfg = adwin_settings(SPEC, ref)
    signals = numeric_signals(SPEC)[:2]
    values: dict[str, list] = {"x": [], "y": []}
    for r in audit_rows:
        for s, v in series_values(r, signals, ref):
            values[s].append((r["event_time"], v))
    out = []
    for s, vs in values.items():
        series = cfg.series(s)
        for pos in range(0, len(vs), 1000):
            out += list(_emit(f"m\x001\x00{s}", series, vs[pos : pos + 1000], cfg))
    return out


@pytest.fixture(scope="module")
def two_days() -> tuple[list[dict], object, object]:
    rng = np.random.default_rng(31)
    seasonal, flat = reference(rng, "daily"), reference(np.random.default_rng(31), "none")
    return rows(stream(rng, (1, 3))), seasonal, flat


def test_a_daily_cycle_raises_nothing_against_a_seasonal_reference(two_days) -> None:
    audit_rows, seasonal, flat = two_days
    assert seasonal.seasonality == "daily" and len(seasonal.profiles) == 24
    assert window_alerts(seasonal, audit_rows) == []
    assert sequential_alerts(seasonal, audit_rows) == []
    # against the pooled day the cycle itself is "drift": most hours breach
    assert len({w for s, w in window_alerts(flat, audit_rows) if s == "x"}) >= 24
    assert sequential_alerts(flat, audit_rows) != []


def test_a_step_on_top_of_the_cycle_is_still_caught() -> None:
    rng = np.random.default_rng(32)
    ref = reference(rng, "daily")
    onset = T0 + DAY + 6 * 3600
    events = stream(rng, (1, 2), step_at=onset)
    fired = [w for s, w in window_alerts(ref, rows(events)) if s == "x"]
    assert fired and min(fired) == onset * 1_000_000  # the first window after the step
    seq = sequential_alerts(ref, rows(events))
    assert seq and all(e["data"]["signal"] == "x" for e in seq)
