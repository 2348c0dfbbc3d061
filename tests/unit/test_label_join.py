"""The label join on identity: bounded (replay) horizon and corrections, model-less labels,
model-specific labels, boolean classes; the streaming join on the same identity rules."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.monitors.labels import JoinLabels

T0 = 1_772_323_200  # 2026-03-01T00:00:00Z, seconds
TASKS = {"fraud": "classification", "churn": "classification"}
HORIZON = {"fraud": 3600, "churn": 3600}


def pred(model: str, event_id: str, second: int, label: str) -> dict:
    return {
        "event_id": event_id,
        "model_name": model,
        "model_version": "1",
        "event_time": (T0 + second) * 1_000_000,
        "prediction_label": label,
        "prediction_value": None,
    }


def label(event_id: str, second: int, value: str, model: str | None = None) -> dict:
    return {
        "event_id": event_id,
        "label_time": (T0 + second) * 1_000_000,
        "label": value,
        "label_numeric": None,
        "model_name": model,
    }


def bounded_join(preds: list[dict], labels: list[dict]) -> tuple[list[tuple], dict[str, int]]:
    """Run the bounded JoinLabels (as replay does: row batches); (model, t, error) outcomes + counters."""
    p = beam.Pipeline()
    pc = p | "Preds" >> beam.Create([preds])  # one batch of rows, like the replay pipeline
    lc = p | "Labels" >> beam.Create([labels])
    out = (pc, lc) | JoinLabels(TASKS, HORIZON, bounded=True)
    _STORE.clear()
    _ = out | beam.Map(_keep)
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter())["counters"]
        if c.key.metric.name.startswith("labels_")
    }
    return sorted((o[0], o[2] // 1_000_000 - T0, o[3]) for o in _STORE), counters


_STORE: list[tuple] = []


def _keep(outcome: tuple) -> None:
    _STORE.append(outcome)


def test_bounded_label_past_the_horizon_gives_no_outcome_and_is_counted_late() -> None:
    outcomes, counters = bounded_join(
        [pred("fraud", "evt-00000001", 0, "legit"), pred("fraud", "evt-00000002", 0, "legit")],
        [label("evt-00000001", 3601, "fraud"), label("evt-00000002", 600, "fraud")],  # 1 h 1 s: late
    )
    assert outcomes == [("fraud", 0, 1.0)]  # only evt-00000002 joined
    assert counters.get("labels_after_horizon") == 1
    assert counters.get("labels_joined") == 1


def test_bounded_correction_replaces_the_first_label() -> None:
    outcomes, counters = bounded_join(
        [pred("fraud", "evt-00000001", 0, "legit")],
        [label("evt-00000001", 60, "fraud"), label("evt-00000001", 300, "legit")],  # corrected to legit
    )
    assert outcomes == [("fraud", 0, 0.0)]  # judged by the correction: the prediction was right
    assert counters.get("labels_after_horizon", 0) == 0


def test_bounded_label_with_a_model_joins_that_models_prediction_only() -> None:
    outcomes, counters = bounded_join(
        [pred("fraud", "evt-00000001", 0, "legit"), pred("churn", "evt-00000001", 1, "stay")],
        [label("evt-00000001", 60, "stay", model="churn")],
    )
    assert outcomes == [("churn", 1, 0.0)]
    assert counters.get("labels_after_horizon", 0) == 0


def test_bounded_label_without_a_model_joins_every_prediction_with_that_event_id() -> None:
    outcomes, _ = bounded_join(
        [pred("fraud", "evt-00000001", 0, "legit"), pred("churn", "evt-00000001", 1, "stay")],
        [label("evt-00000001", 60, "legit")],
    )
    assert outcomes == [("churn", 1, 1.0), ("fraud", 0, 0.0)]


def test_bounded_model_specific_correction_wins_over_an_earlier_model_less_label() -> None:
    outcomes, _ = bounded_join(
        [pred("fraud", "evt-00000001", 0, "legit"), pred("churn", "evt-00000001", 1, "stay")],
        [label("evt-00000001", 60, "legit"), label("evt-00000001", 120, "fraud", model="fraud")],
    )
    assert outcomes == [("churn", 1, 1.0), ("fraud", 0, 1.0)]


def test_boolean_classes_compare_as_the_same_text() -> None:
    """``"label": true`` on both sides is stored as "true": a correct prediction."""
    import datetime as dt

    import orjson

    from schemas import Decoders
    from tests.helpers import event
    from transforms.rows import label_row, prediction_row

    dec, now = Decoders(), dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    raw = orjson.dumps(
        event(event_id="evt-00000009", model={"name": "fraud", "version": "1"}, prediction={"label": True})
    )
    ev, ts = dec.prediction(raw)
    prow = prediction_row(ev, ts, raw, ingest_time=now)
    rows = []
    for value in (True, False):
        lraw = orjson.dumps(
            {
                "schema_version": "1",
                "event_id": "evt-00000009",
                "label_time": "2026-03-01T12:05:00Z",
                "label": value,
                "model": {"name": "fraud", "version": "1"},
            }
        )
        lev, lts = dec.label(lraw)
        rows.append(label_row(lev, lts, lraw, ingest_time=now))
    outcomes, _ = bounded_join([prow], rows[:1])
    assert [o[2] for o in outcomes] == [0.0]
    outcomes, _ = bounded_join([prow], rows[1:])
    assert [o[2] for o in outcomes] == [1.0]


def streaming() -> PipelineOptions:
    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    return opts


def ts(element: dict) -> TimestampedValue:
    return TimestampedValue(element, element.get("event_time", element.get("label_time")) / 1e6)


def test_streaming_join_on_identity() -> None:
    """Streams: a label naming a model joins that model's prediction only; a label without one
    joins every model's prediction with the id, also a prediction that arrives after it."""
    stream = (
        EventStream()
        .add_elements(
            [
                ts(pred("fraud", "evt-00000001", 0, "legit")),
                ts(pred("churn", "evt-00000001", 1, "stay")),
                ts(label("evt-00000001", 30, "leave", model="churn")),  # churn only: wrong
                ts(label("evt-00000002", 40, "legit")),  # no model: waits for both
                ts(pred("fraud", "evt-00000002", 50, "legit")),  # right
            ]
        )
        .add_elements([ts(pred("churn", "evt-00000002", 60, "leave"))])  # wrong ("legit")
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=streaming()) as p:
        preds, labels = p | stream | beam.Partition(lambda e, n: 0 if "prediction_label" in e else 1, 2)
        out = (preds, labels) | JoinLabels(TASKS, HORIZON, bounded=False)
        assert_that(
            out | beam.Map(lambda o: (o[0], o[2] // 1_000_000 - T0, o[3])),
            equal_to([("churn", 1, 1.0), ("fraud", 50, 0.0), ("churn", 60, 1.0)]),
        )
