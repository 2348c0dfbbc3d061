"""Streaming monitors with TestStream: a silent window is reported by the traffic timer, a
model without a reference warms up on its first rows, and labels join within the horizon."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from schemas.specs import parse_spec
from transforms.monitors.drift import MonitorDrift
from transforms.monitors.labels import JoinLabels

T0 = 1_772_323_200  # 2026-03-01T00:00:00Z, a multiple of 60
SPEC = parse_spec(
    "name: m\nversions: ['1']\nfeatures: [{name: x, type: numeric, range: [0, 100]}]\n"
    "monitors: {min_sample_size: 5, warmup_events: 20}"
)


def row(i: int, second: float, x: float = 50.0) -> TimestampedValue:
    r = {
        "event_id": f"e{i:06d}",
        "event_time": int((T0 + second) * 1e6),
        "model_name": "m",
        "model_version": "1",
        "features": f'{{"x": {x}}}',
        "prediction_label": "a",
        "prediction_score": 0.5,
        "prediction_value": None,
        "latency_ms": 10.0,
        "status": "ok",
        "quality_issues": [],
    }
    return TimestampedValue(r, T0 + second)


def streaming() -> PipelineOptions:
    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    return opts


def test_a_silent_window_raises_a_traffic_alert_from_the_timer() -> None:
    # 4 windows of 60 s with 30 rows each (the first 20 rows are the warm-up baseline), then silence
    rows = [row(i, w * 60 + k * 2) for w in range(4) for k, i in enumerate(range(w * 30, w * 30 + 30))]
    stream = EventStream().add_elements(rows).advance_watermark_to(T0 + 240).advance_watermark_to(T0 + 420)
    with beam.Pipeline(options=streaming()) as p:
        out = (
            p
            | stream.advance_watermark_to_infinity()
            | MonitorDrift({}, 60, 0, bounded=False, warmup={"m": SPEC})
        )
        traffic = (
            out["anomalies"]
            | beam.Filter(lambda e: e["data"]["detector"] == "traffic")
            | beam.Map(
                lambda e: (e["data"]["severity"], e["data"]["window_start"], e["data"]["current"]["count"])
            )
        )
        # window 4 (240-300 s) passed without a pane: reported as 0 events, critical; the
        # cooldown keeps the following silent windows from paging again
        assert_that(traffic, equal_to([("critical", "2026-03-01T00:04:00.000000Z", 0)]), label="traffic")
        psi_windows = (
            out["drift_metrics"]
            | beam.Filter(lambda r: r["signal"] == "x" and r["metric"] == "psi")
            | beam.Map(lambda r: (r["window_start"] // 1_000_000 - T0, r["sample_size"], r["reference_id"]))
        )
        # the first window holds 10 monitored rows (20 went into the baseline)
        assert_that(
            psi_windows,
            equal_to([(0, 10, "m@1"), (60, 30, "m@1"), (120, 30, "m@1"), (180, 30, "m@1")]),
            label="warmup",
        )


def test_labels_join_within_the_horizon_in_a_stream() -> None:
    def label(event_id: str, second: float, value: str) -> TimestampedValue:
        lb = {
            "event_id": event_id,
            "label_time": int((T0 + second) * 1e6),
            "label": value,
            "label_numeric": None,
        }
        return TimestampedValue(lb, T0 + second)

    stream = (  # one TestStream: predictions and labels, split below
        EventStream()
        .add_elements([row(1, 0), row(2, 1), row(3, 2), label("e000001", 30, "a"), label("e000002", 40, "b")])
        .advance_watermark_to(T0 + 5000)  # past the 3600 s horizon of e000003
        .add_elements([label("e000003", 4000, "a")])  # too late: audited, not joined
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=streaming()) as p:
        preds, labels = p | stream | beam.Partition(lambda e, n: 0 if "prediction_label" in e else 1, 2)
        out = (preds, labels) | JoinLabels({"m": "classification"}, {"m": 3600}, bounded=False)
        assert_that(out | beam.Map(lambda o: (o[2] // 1_000_000 - T0, o[3])), equal_to([(0, 0.0), (1, 1.0)]))


def test_regression_windows_get_mae_rmse_and_alert_above_mae_max() -> None:
    from transforms.monitors.labels import MonitorPerformance, performance_limits

    # window 0: errors 1.0 (MAE 1), window 1: errors 4.0 (MAE 4 > 1.5 x 2: critical)
    outcomes = [TimestampedValue(("r", "1", int((T0 + k) * 1e6), 1.0), T0 + k) for k in range(0, 50)]
    outcomes += [
        TimestampedValue(("r", "1", int((T0 + 60 + k) * 1e6), 4.0), T0 + 60 + k) for k in range(0, 50)
    ]
    with beam.Pipeline() as p:
        out = (
            p
            | beam.Create(outcomes)
            | MonitorPerformance({"r": "regression"}, {"r": performance_limits(None, 2.0)}, {"r": 10}, 60, 0)
        )
        metrics = out["drift_metrics"] | beam.Map(
            lambda r: (r["window_start"] // 1_000_000 - T0, r["metric"], r["value"], r["status"])
        )
        assert_that(
            metrics,
            equal_to(
                [
                    (0, "mae", 1.0, "ok"),
                    (0, "rmse", 1.0, "ok"),
                    (60, "mae", 4.0, "critical"),
                    (60, "rmse", 4.0, "ok"),
                ]
            ),
            label="metrics",
        )
        levels = out["breaches"] | beam.Map(lambda b: (b[0].split("\x00")[2], b[1][0][0]))
        assert_that(levels, equal_to([("mae", None), ("mae", "critical")]), label="breaches")
