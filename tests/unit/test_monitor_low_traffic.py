"""Low traffic (issue #11 item 4): 20 events per minute, 300 s windows of 100 events under a
min_sample_size of 500. Small windows merge with the following ones, so the distribution is
compared every 25 minutes and a 1 sd step is caught within 6 hours of event time."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue

from schemas.specs import parse_spec
from transforms.monitors.drift import MonitorDrift
from transforms.monitors.reference import reference_from_doc
from transforms.monitors.stats import numeric_reference

SPEC = parse_spec("name: m\nfeatures: [{name: x, type: numeric}]\nmonitors: {window_seconds: 300}")
T0 = 1_772_323_200  # 2026-03-01T00:00:00Z
STEP_AT = T0 + 3 * 3600
HOURS = 9


def reference():
    rng = np.random.default_rng(41)
    sig = numeric_reference(rng.normal(size=20_000))
    doc = {"format": "predaudit.reference/v1", "model": "m", "version": "*", "events": 20_000,
           "signals": {"x": sig.to_json()}, "missing": {"x": 0.0}}  # fmt: skip
    return {"m": reference_from_doc(doc, SPEC)}


def batches() -> list[list[dict]]:
    """Row batches (as the pipelines hand them to the monitors), 100 rows each."""
    rs = rows()
    return [[r.value for r in rs[i : i + 100]] for i in range(0, len(rs), 100)]


def rows() -> list[TimestampedValue]:
    rng = np.random.default_rng(42)
    out = []
    for i, t in enumerate(range(T0, T0 + HOURS * 3600, 3)):  # one event every 3 s: 20 a minute
        x = float(rng.normal() + (1.0 if t >= STEP_AT else 0.0))
        r = {"event_id": f"e{i}", "event_time": t * 1_000_000, "model_name": "m", "model_version": "1",
             "features": orjson.dumps({"x": x}).decode(), "prediction_label": None, "prediction_score": None,
             "prediction_value": None, "latency_ms": None, "status": "ok", "quality_issues": []}  # fmt: skip
        out.append(TimestampedValue(r, t))
    return out


def check_metrics(metrics: list[dict]) -> None:
    psi = sorted((r["window_start"], r["window_end"], r["sample_size"], r["status"])
                 for r in metrics if r["signal"] == "x" and r["metric"] == "psi")  # fmt: skip
    merged = [p for p in psi if p[2] >= 500]
    assert all(p[3] == "insufficient" for p in psi if p[2] < 500)
    # 5 windows of 100 events -> one comparison of 500 every 25 minutes
    assert {(end - start) // 1_000_000 for start, end, _, _ in merged} == {1500}
    assert len(merged) == HOURS * 60 // 25
    before = [p for p in merged if p[1] <= STEP_AT * 1_000_000]
    assert before and all(p[3] == "ok" for p in before)  # nothing on the stationary hours


def check_anomalies(anomalies: list[dict]) -> None:
    alerts = sorted(
        e["data"]["window_end"]
        for e in anomalies
        if e["data"]["signal"] == "x" and e["data"]["severity"] != "resolved"
    )
    assert alerts, "the step was never flagged"
    first = np.datetime64(alerts[0].rstrip("Z")).astype("datetime64[s]").astype(int)
    assert 0 < first - STEP_AT <= 6 * 3600


def run(p, source, bounded: bool) -> None:
    out = p | source | MonitorDrift(reference(), 300, 0, bounded=bounded)
    assert_that(out["drift_metrics"], lambda got: check_metrics(got) or True, label="metrics")
    assert_that(out["anomalies"], lambda got: check_anomalies(got) or True, label="anomalies")


def test_replay_merges_small_windows_and_catches_the_step() -> None:
    with TestPipeline() as p:
        run(p, beam.Create(batches()), bounded=True)


def test_stream_merges_small_windows_and_catches_the_step() -> None:
    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    stream = EventStream()
    bs = batches()
    for i in range(0, len(bs), 10):  # the watermark follows every 10 batches: windows fire in order
        group = bs[i : i + 10]
        stream = stream.add_elements([TimestampedValue(b, b[-1]["event_time"] / 1e6) for b in group])
        stream = stream.advance_watermark_to(group[-1][-1]["event_time"] / 1e6)
    with beam.Pipeline(options=opts) as p:
        run(p, stream.advance_watermark_to_infinity(), bounded=False)
