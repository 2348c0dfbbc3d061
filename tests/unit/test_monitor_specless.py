"""A model without a spec (issue #11 item 6): monitored on a spec inferred from its first
rows, against a warm-up baseline of them; its drift is caught and its rows say so."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from transforms.monitors.drift import MonitorDrift, inferred_spec

T0 = 1_772_323_200  # 2026-03-01T00:00:00Z
DRIFT_AT = T0 + 700  # 10 events/s: 7,000 rows before (2,000 of them the warm-up), then +1 sd on "b"


def row(i: int, t: float, rng: np.random.Generator) -> dict:
    b = float(rng.normal(10, 2) + (2.0 if t >= DRIFT_AT else 0.0))
    features = {"a": float(rng.normal()), "b": b, "c": str(rng.choice(["x", "y", "z"])), "flag": bool(i % 2)}
    return {"event_id": f"e{i}", "event_time": int(t * 1e6), "model_name": "nospec", "model_version": "7",
            "features": orjson.dumps(features).decode(), "prediction_label": "yes" if b > 10 else "no",
            "prediction_score": None, "prediction_value": None, "latency_ms": 5.0, "status": "ok",
            "quality_issues": []}  # fmt: skip


def batches() -> list[list[dict]]:
    rng = np.random.default_rng(51)
    rows = [row(i, T0 + i / 10, rng) for i in range(12_000)]
    return [rows[i : i + 500] for i in range(0, len(rows), 500)]


def test_the_inferred_spec_has_the_events_features_by_json_type() -> None:
    spec = inferred_spec("nospec", batches()[0])
    assert {f.name: f.type for f in spec.features} == {"a": "numeric", "b": "numeric", "c": "categorical",
                                                       "flag": "boolean"}  # fmt: skip


def check_metrics(metrics: list[dict]) -> None:
    ids = {r["reference_id"] for r in metrics}
    assert ids == {"nospec@7#inferred"}, ids
    signals = {r["signal"] for r in metrics if r["metric"] == "psi"}
    assert {"a", "b", "c", "prediction.label", "latency_ms"} <= signals


def check_anomalies(anomalies: list[dict]) -> None:
    fired = sorted(
        (e["data"]["window_start"], e["data"]["signal"])
        for e in anomalies
        if e["data"]["severity"] != "resolved"
    )
    assert fired, "the spec-less model's drift was not caught"
    assert all(w >= "2026-03-01T00:10:00" for w, _ in fired), fired  # nothing before the shift's window
    assert "b" in {s for _, s in fired}


def test_a_spec_less_model_is_monitored_and_its_drift_caught() -> None:
    with TestPipeline() as p:
        out = p | beam.Create(batches()) | MonitorDrift({}, 300, 0, bounded=True, infer_unknown=True)
        assert_that(out["drift_metrics"], lambda got: check_metrics(got) or True, label="metrics")
        assert_that(out["anomalies"], lambda got: check_anomalies(got) or True, label="anomalies")
