"""The label join and per-window performance through their public API (written to kill
mutmut's survivors, issue #14): which prediction and which label meet, the horizon's edges,
what each dropped label or prediction counts, the outcomes' event time, regression errors,
and the accuracy rows and breaches a window yields."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.transforms.window import TimestampedValue

from tests.unit.test_label_join import T0, label, pred, streaming, ts
from transforms.monitors.labels import (
    JoinLabels,
    MonitorPerformance,
    applies,
    join_group,
    outcome,
    performance_limits,
    performance_metrics,
)

US = 1_000_000


def regression_pred(event_id: str, second: int, value: float | None) -> dict:
    return {**pred("reg", event_id, second, None), "prediction_label": None, "prediction_value": value}


def numeric_label(event_id: str, second: int, value: float | None) -> dict:
    return {**label(event_id, second, str(value)), "label_numeric": value}


_OUT: list[tuple] = []


def _keep(element: tuple) -> None:
    _OUT.append(element)


def counters_of(result) -> dict[str, int]:
    return {c.key.metric.name: c.attempted for c in result.metrics().query(MetricsFilter())["counters"]}


def run_join(preds, labels, tasks, horizon, bounded: bool = True, stream=None) -> tuple[list, dict]:
    """JoinLabels on rows: from a TestStream of rows when ``stream`` is given (streaming
    runner), else from one batch of each (batch runner, as replay); sorted (model, version,
    second, error, window start second) outcomes and the counters."""
    p = beam.Pipeline(options=None if stream is None else streaming())
    if stream is None:
        pc, lc = p | "P" >> beam.Create([preds]), p | "L" >> beam.Create([labels])
    else:
        pc, lc = p | stream | beam.Partition(lambda e, n: 0 if "prediction_label" in e else 1, 2)
    out = (pc, lc) | JoinLabels(tasks, horizon, bounded=bounded)
    _OUT.clear()
    _ = (
        out
        | "W" >> beam.WindowInto(window.FixedWindows(60))
        | "Stamp" >> beam.Map(lambda o, w=beam.DoFn.WindowParam: (*o, int(w.start.micros) // US - T0))
        | beam.Map(_keep)
    )
    result = p.run()
    result.wait_until_finish()
    outs = sorted((m, v, t // US - T0, err, ws) for m, v, t, err, ws in _OUT)
    return outs, counters_of(result)


# -- pure functions -------------------------------------------------------------------------
def test_outcome_needs_a_comparable_prediction_and_label() -> None:
    assert outcome("regression", ("m", "1", 0, "x", 10.0), (5, "7", 7.0, None)) == 3.0  # |7 - 10|
    assert outcome("regression", ("m", "1", 0, None, 10.0), (5, "n/a", None, None)) is None
    assert outcome("classification", ("m", "1", 0, None, 0.3), (5, "fraud", None, None)) is None
    assert outcome("classification", ("m", "1", 0, "1", None), (5, 1, None, None)) == 0.0  # rendered text
    assert applies((0, "x", None, None), "") and not applies((0, "x", None, "fraud"), "churn")


def test_performance_metrics_and_limits() -> None:
    assert performance_metrics("classification", 4, 1.0, 1.0) == {"accuracy": 0.75}
    assert performance_metrics("regression", 2, 3.0, 5.0) == {"mae": 1.5, "rmse": 2.5**0.5}
    assert performance_limits(None, None) == {}
    assert performance_limits(0.9, None) == {"accuracy": (0.9, 0.9 - 0.1, False)}
    assert performance_limits(None, 4.0) == {"mae": (4.0, 6.0, True)}


def test_join_group_edges() -> None:
    h = {"fraud": 60}
    p_late, p_early = ("fraud", "2", 10 * US, "legit", None), ("fraud", "1", 5 * US, "fraud", None)
    at_edge = (65 * US, "fraud", None, None)  # 60 s after the earliest prediction: in time
    pairs, late = join_group([("p", p_late), ("p", p_early), ("l", at_edge)], h)
    assert pairs == [(p_early, at_edge)] and late == 0  # the earliest copy of a prediction
    pairs, late = join_group([("p", p_early), ("p", p_late), ("l", at_edge)], h)
    assert pairs == [(p_early, at_edge)]
    twin = ("fraud", "3", 5 * US, "legit", None)  # same time: the first seen stays
    assert join_group([("p", p_early), ("p", twin), ("l", at_edge)], h)[0] == [(p_early, at_edge)]
    past = (65 * US + 1, "fraud", None, None)
    assert join_group([("p", p_early), ("l", past)], h) == ([], 1)
    # a model without a horizon gets 3600 s
    other = ("churn", "1", 0, "stay", None)
    assert join_group([("p", other), ("l", (3600 * US, "leave", None, None))], h)[0] != []
    assert join_group([("p", other), ("l", (3600 * US + 1, "leave", None, None))], h) == ([], 1)
    # a label naming a model with no prediction here joins nothing: late; so does a lone label
    assert join_group([("p", other), ("l", (1, "x", None, "fraud")), ("l", (2, "y", None, "churn"))], h) == (
        [(other, (2, "y", None, "churn"))],
        1,
    )
    assert join_group([("l", (1, "x", None, None))], h) == ([], 1)
    # a label used by one model and too late for another is not late
    both = [
        ("p", p_early),
        ("p", ("churn", "1", 5 * US, "stay", None)),
        ("l", (100 * US, "stay", None, None)),
    ]
    pairs, late = join_group(both, h)
    assert [pr[0] for pr, _ in pairs] == ["churn"] and late == 0


def test_join_group_is_independent_of_input_order() -> None:
    p = ("fraud", "1", 0, "legit", None)
    same_time = [
        (60 * US, "fraud", None, "fraud"),
        (60 * US, "fraud", None, None),
        (60 * US, "alpha", None, None),
    ]
    results = {
        tuple(join_group([("p", p), *[("l", x) for x in order]], {"fraud": 3600})[0])
        for order in (same_time, same_time[::-1], same_time[1:] + same_time[:1])
    }
    assert results == {((p, (60 * US, "fraud", None, "fraud")),)}  # ties: by text, then model


# -- bounded JoinLabels ---------------------------------------------------------------------
def test_bounded_join_outcomes_counters_and_event_time() -> None:
    tasks = {"fraud": "classification", "reg": "regression"}
    preds = [
        pred("fraud", "e1", 130, "legit"),  # the outcome is stamped at the prediction's time
        pred("fraud", "e2", 0, "legit"),
        pred("churn", "e2", 0, "stay"),  # not monitored: never joined
        regression_pred("e3", 10, 10.0),
        regression_pred("e4", 20, 3.0),
    ]
    labels = [
        label("e1", 3000, "fraud"),
        {**label("e2", 100, "legit"), "model_name": ""},  # an empty model is "every model"
        numeric_label("e3", 100, 12.5),
        numeric_label("e4", 100, None),  # no number: not comparable
        label("e5", 100, "x"),  # no prediction: both late
        label("e5", 200, "y"),
    ]
    outcomes, counters = run_join(preds, labels, tasks, {"fraud": 3600, "reg": 3600})
    assert outcomes == [("fraud", "1", 0, 0.0, 0), ("fraud", "1", 130, 1.0, 120), ("reg", "1", 10, 2.5, 0)]
    assert counters.get("labels_joined") == 3
    assert counters.get("labels_without_comparable_prediction") == 1
    assert counters.get("labels_after_horizon") == 2


def test_bounded_join_with_nothing_late_counts_nothing_late() -> None:
    outcomes, counters = run_join(
        [pred("fraud", "e1", 0, "legit")], [label("e1", 10, "legit")], {"fraud": "classification"}, {}
    )
    assert outcomes == [("fraud", "1", 0, 0.0, 0)] and "labels_after_horizon" not in counters


# -- streaming JoinLabels -------------------------------------------------------------------
STREAM_TASKS = {"fraud": "classification", "churn": "classification", "reg": "regression"}
STREAM_HORIZON = {"fraud": 3600, "churn": 600, "reg": 3600}
#: in arrival order; then the watermark passes 1500 s (past 100 + 600 s) and E10_PRED arrives
STREAM_ROWS = [
    pred("fraud", "e1", 0, "legit"),
    label("e1", 30, "fraud", model="fraud"),  # joins: wrong
    label("e1", 40, "legit", model="fraud"),  # a second label: duplicate
    pred("fraud", "e2", 0, "legit"),
    pred("fraud", "e2", 1, "fraud"),  # a second copy: ignored
    label("e2", 10, "legit"),  # joins the first copy: right
    label("e2", 20, "fraud"),  # model-less, its prediction joined: duplicate
    label("e3", 5, "fraud", model="fraud"),  # labels before the prediction:
    label("e3", 6, "legit", model="fraud"),  # the first joins, the other is a duplicate
    pred("fraud", "e3", 0, "legit"),
    pred("fraud", "e4", 0, "legit"),
    label("e4", 4000, "fraud", model="fraud"),  # past the horizon
    pred("churn", "e5", 0, "stay"),  # never labeled
    label("e6", 100, "x"),  # never a prediction
    pred("churn", "e9", 0, "stay"),
    label("e9", 700, "leave"),  # model-less: late for churn's 600 s
    regression_pred("e7", 0, 10.0),
    numeric_label("e7", 50, 12.5),
    regression_pred("e8", 0, 10.0),
    numeric_label("e8", 50, None),  # not comparable
    label("e10", 100, "legit"),  # model-less: waits the longest horizon (3600 s), not churn's
    label("e11", 7, "legit", model="fraud"),  # two labels at one time and text wait for
    label("e11", 7, "legit"),  # the prediction (the ties are ordered by model)
    pred("fraud", "e11", 0, "legit"),
    pred("fraud", "e12", 0, "legit"),  # its label comes after the watermark passed 1500 s
]
E10_PRED = pred("fraud", "e10", 1000, "legit")
E12_LABEL = label("e12", 1400, "fraud", model="fraud")


def test_streaming_join_first_label_wins_and_model_less_labels_wait_the_longest_horizon() -> None:
    stream = (
        EventStream()
        .add_elements([ts(r) for r in STREAM_ROWS])
        .advance_watermark_to(T0 + 1500)
        .add_elements([ts(E10_PRED), ts(E12_LABEL)])
        .advance_watermark_to_infinity()
    )
    outcomes, _ = run_join([], [], STREAM_TASKS, STREAM_HORIZON, bounded=False, stream=stream)
    assert outcomes == [
        ("fraud", "1", 0, 0.0, 0),  # e2
        ("fraud", "1", 0, 0.0, 0),  # e11
        ("fraud", "1", 0, 1.0, 0),  # e1
        ("fraud", "1", 0, 1.0, 0),  # e3: the label at 5 s
        ("fraud", "1", 0, 1.0, 0),  # e12: its prediction waited for it
        ("fraud", "1", 1000, 0.0, 960),  # e10
        ("reg", "1", 0, 2.5, 0),  # e7
    ]


def test_stream_join_counts_every_label_and_prediction_it_does_not_join() -> None:
    """The streaming join's counters, on the batch runner (the streaming DirectRunner does not
    report a stateful DoFn's counters); these counts do not depend on arrival order."""
    preds = [r for r in [*STREAM_ROWS, E10_PRED] if "prediction_label" in r]
    labels = [r for r in [*STREAM_ROWS, E12_LABEL] if "prediction_label" not in r]
    outcomes, counters = run_join(preds, labels, STREAM_TASKS, STREAM_HORIZON, bounded=False)
    assert len(outcomes) == 7 and ("reg", "1", 0, 2.5, 0) in outcomes
    assert counters.get("labels_joined") == 7
    assert counters.get("labels_duplicate") == 4  # e1, e2, e3, e11
    assert counters.get("predictions_duplicate_in_join") == 1  # e2
    assert counters.get("labels_after_horizon") == 3  # e4, e9 (past their horizon), e6 (expiry)
    assert counters.get("predictions_unlabeled") == 1  # e5 (e9 had its label, if late)
    assert counters.get("labels_without_comparable_prediction") == 1  # e8


# -- per-window performance -----------------------------------------------------------------
def test_accuracy_windows_statuses_and_breaches() -> None:
    def outcomes(model: str, start: int, errors: list[float], version: str = "1") -> list[TimestampedValue]:
        t = [(T0 + start) * US + k * 1000 for k in range(len(errors))]  # ms apart: one window
        return [TimestampedValue((model, version, t[k], e), t[k] / US) for k, e in enumerate(errors)]

    rows = outcomes("a", 0, [0.0] * 9 + [1.0])  # 0.9: ok
    rows += outcomes("a", 60, [0.0] * 3 + [1.0])  # 0.75: warning (floor 0.8)
    rows += outcomes("a", 120, [0.0] * 7 + [1.0] * 3)  # 0.7: critical (0.8 - 0.1)
    rows += outcomes("a", 180, [1.0] * 3)  # 3 labeled < min 4: insufficient, no breach
    rows += outcomes("b", 0, [1.0] * 99)  # no min given: 100; 99 is not enough
    rows += outcomes("b", 60, [0.0] * 100)  # exactly enough
    rows += outcomes("c", 0, [0.0, 1.0], version="7")  # no limits: a metric row, never a breach
    rows += outcomes("r", 0, [1.0, 3.0, 2.0])  # regression: MAE 2, RMSE sqrt(14 / 3)
    limits = {"a": performance_limits(0.8, None), "b": performance_limits(0.5, None)}
    with beam.Pipeline() as p:
        out = (
            p
            | beam.Create(rows)
            | MonitorPerformance(
                {"a": "classification", "r": "regression"}, limits, {"a": 4, "c": 1, "r": 1}, 60, 0
            )
        )
        assert_that(
            out["drift_metrics"]
            | beam.Map(
                lambda r: (
                    r["model_name"] + "@" + r["model_version"],
                    r["window_start"] // US - T0,
                    r["window_end"] // US - T0,
                    r["metric"],
                    r["signal"],
                    round(r["value"], 6),
                    r["sample_size"],
                    r["status"],
                    r["reference_id"],
                )
            ),
            equal_to(
                [
                    ("a@1", 0, 60, "accuracy", "accuracy", 0.9, 10, "ok", "a@labels"),
                    ("a@1", 60, 120, "accuracy", "accuracy", 0.75, 4, "warning", "a@labels"),
                    ("a@1", 120, 180, "accuracy", "accuracy", 0.7, 10, "critical", "a@labels"),
                    ("a@1", 180, 240, "accuracy", "accuracy", 0.0, 3, "insufficient", "a@labels"),
                    ("b@1", 0, 60, "accuracy", "accuracy", 0.0, 99, "insufficient", "b@labels"),
                    ("b@1", 60, 120, "accuracy", "accuracy", 1.0, 100, "ok", "b@labels"),
                    ("c@7", 0, 60, "accuracy", "accuracy", 0.5, 2, "ok", "c@labels"),
                    ("r@1", 0, 60, "mae", "mae", 2.0, 3, "ok", "r@labels"),
                    ("r@1", 0, 60, "rmse", "rmse", round((14 / 3) ** 0.5, 6), 3, "ok", "r@labels"),
                ]
            ),
            label="metrics",
        )
        assert_that(
            out["breaches"]
            | beam.Map(
                lambda b: (
                    b[0],
                    b[1][0][0],
                    round(b[1][0][1], 6),
                    round(b[1][0][2], 6),
                    b[1][0][3],
                    {k: round(v, 6) for k, v in b[1][0][4].items()},
                    b[1][1].isoformat(),
                    b[1][2].isoformat(),
                    b[1][3],
                )
            ),
            equal_to(
                [
                    (
                        "a\x001\x00accuracy\x00accuracy",
                        None,
                        0.9,
                        0.8,
                        {"limit": 0.8},
                        {"accuracy": 0.9},
                        "2026-03-01T00:00:00+00:00",
                        "2026-03-01T00:01:00+00:00",
                        10,
                    ),
                    (
                        "a\x001\x00accuracy\x00accuracy",
                        "warning",
                        0.75,
                        0.8,
                        {"limit": 0.8},
                        {"accuracy": 0.75},
                        "2026-03-01T00:01:00+00:00",
                        "2026-03-01T00:02:00+00:00",
                        4,
                    ),
                    (
                        "a\x001\x00accuracy\x00accuracy",
                        "critical",
                        0.7,
                        0.7,
                        {"limit": 0.8},
                        {"accuracy": 0.7},
                        "2026-03-01T00:02:00+00:00",
                        "2026-03-01T00:03:00+00:00",
                        10,
                    ),
                    (
                        "b\x001\x00accuracy\x00accuracy",
                        None,
                        1.0,
                        0.5,
                        {"limit": 0.5},
                        {"accuracy": 1.0},
                        "2026-03-01T00:01:00+00:00",
                        "2026-03-01T00:02:00+00:00",
                        100,
                    ),
                ]
            ),
            label="breaches",
        )


def test_sliding_performance_windows() -> None:
    """``period_s``: windows of 60 s starting every 30 s; an outcome counts in both of its windows."""
    rows = [TimestampedValue(("a", "1", (T0 + s) * US, e), T0 + s) for s, e in ((10, 0.0), (40, 1.0))]
    with beam.Pipeline() as p:
        out = p | beam.Create(rows) | MonitorPerformance({}, {}, {"a": 1}, 60, 0, period_s=30)
        assert_that(
            out["drift_metrics"]
            | beam.Map(
                lambda r: (
                    r["window_start"] // US - T0,
                    r["window_end"] // US - T0,
                    r["value"],
                    r["sample_size"],
                )
            ),
            equal_to([(-30, 30, 1.0, 1), (0, 60, 0.5, 2), (30, 90, 0.0, 1)]),
        )


def test_stream_join_without_horizons_waits_an_hour() -> None:
    """No horizon configured: 3600 s, for a label naming the model and for one naming none."""
    preds = [pred("fraud", "e1", 0, "legit"), pred("fraud", "e2", 0, "legit")]
    labels = [label("e1", 3600, "fraud", model="fraud"), label("e2", 3000, "legit")]
    outcomes, counters = run_join(preds, labels, {"fraud": "classification"}, {}, bounded=False)
    assert outcomes == [("fraud", "1", 0, 0.0, 0), ("fraud", "1", 0, 1.0, 0)]
    assert "labels_after_horizon" not in counters
