"""Label join: predictions meet their ground truth by ``event_id`` within a horizon.

Each joined prediction becomes an *outcome*: an error indicator (classification: the label
differs from ``prediction.label``) or an absolute error (regression). Outcomes feed (1)
per event-time window (of the prediction) accuracy or MAE/RMSE, recorded in ``drift_metrics``
and alerted below the spec's ``accuracy_min`` (or above ``mae_max``), and (2) ADWIN on the per-event error: the
concept-drift detector (signal ``prediction.error``).

Streams: a stateful DoFn per event_id keeps whichever side came first, and an event-time timer
at (latest time seen + horizon) clears it. A label later than the horizon finds nothing: it is
still audited in ``labels`` (counter ``labels_after_horizon``), and the analyst view
``accuracy_full_join`` (schemas/tables.py) computes accuracy over the full join in SQL. A
second label for an already joined prediction is counted, not joined again. Replays join
with CoGroupByKey under the same horizon and take the latest label.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.metrics import counter
from transforms.monitors.alerts import severity
from transforms.rows import from_micros

#: (model, version, prediction event time us, prediction label, prediction value)
Pred = tuple[str, str, int, str | None, float | None]
#: (label time us, label text, label number)
Label = tuple[int, str, float | None]


def pred_summary(row: Mapping[str, Any]) -> tuple[str, tuple[str, Pred]]:
    return row["event_id"], (
        "p",
        (
            row["model_name"],
            row["model_version"],
            row["event_time"],
            row["prediction_label"],
            row["prediction_value"],
        ),
    )


def label_summary(row: Mapping[str, Any]) -> tuple[str, tuple[str, Label]]:
    return row["event_id"], ("l", (row["label_time"], row["label"], row["label_numeric"]))


def outcome(task: str, pred: Pred, label: Label) -> float | None:
    """The error of one prediction: 0/1 (classification) or |label - value| (regression).

    >>> outcome("classification", ("m", "1", 0, "fraud", None), (5, "fraud", None))
    0.0
    >>> outcome("classification", ("m", "1", 0, "legit", None), (5, "fraud", None))
    1.0
    >>> outcome("regression", ("m", "1", 0, None, 10.0), (5, "12.5", 12.5))
    2.5
    >>> outcome("regression", ("m", "1", 0, None, None), (5, "12.5", 12.5)) is None
    True
    """
    if task == "regression":
        if pred[4] is None or label[2] is None:
            return None
        return abs(label[2] - pred[4])
    if pred[3] is None:
        return None
    return float(str(label[1]) != pred[3])


class _JoinStateFn(beam.DoFn):
    PRED = ReadModifyWriteStateSpec("pred", PickleCoder())
    LABEL = ReadModifyWriteStateSpec("label", PickleCoder())
    DONE = ReadModifyWriteStateSpec("done", PickleCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, tasks: Mapping[str, str], horizon_s: Mapping[str, int]) -> None:
        self.tasks, self.horizon_s = dict(tasks), dict(horizon_s)

    def process(
        self,
        element,
        pred_state=beam.DoFn.StateParam(PRED),
        label_state=beam.DoFn.StateParam(LABEL),
        done=beam.DoFn.StateParam(DONE),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterator[Any]:
        _, (tag, value) = element
        if done.read():
            counter("labels_duplicate" if tag == "l" else "predictions_duplicate_in_join").inc()
            return
        pred = value if tag == "p" else pred_state.read()
        label = value if tag == "l" else label_state.read()
        if pred is None:  # label first: wait for its prediction (up to the default horizon)
            label_state.write(label)
            expiry.set(Timestamp(micros=label[0] + max(self.horizon_s.values(), default=3600) * 1_000_000))
            return
        horizon_us = self.horizon_s.get(pred[0], 3600) * 1_000_000
        if label is None:
            pred_state.write(pred)
            expiry.set(Timestamp(micros=pred[2] + horizon_us))
            return
        pred_state.clear()
        label_state.clear()
        done.write(True)
        expiry.set(Timestamp(micros=max(pred[2], label[0]) + horizon_us))
        if label[0] - pred[2] > horizon_us:
            counter("labels_after_horizon").inc()
            return
        yield from _joined(self.tasks, pred, label)

    @on_timer(EXPIRY)
    def expire(
        self,
        pred_state=beam.DoFn.StateParam(PRED),
        label_state=beam.DoFn.StateParam(LABEL),
        done=beam.DoFn.StateParam(DONE),
    ) -> None:
        if label_state.read() is not None:
            counter("labels_after_horizon").inc()  # no prediction within the horizon
        if pred_state.read() is not None:
            counter("predictions_unlabeled").inc()
        pred_state.clear()
        label_state.clear()
        done.clear()


def _joined(tasks: Mapping[str, str], pred: Pred, label: Label) -> Iterator[Any]:
    err = outcome(tasks.get(pred[0], "classification"), pred, label)
    if err is None:
        counter("labels_without_comparable_prediction").inc()
        return
    counter("labels_joined").inc()
    yield TimestampedValue((pred[0], pred[1], pred[2], err), pred[2] / 1e6)


def _join_grouped(element, tasks: Mapping[str, str], horizon_s: Mapping[str, int]) -> Iterator[Any]:
    _, tagged = element
    preds = [v for t, v in tagged if t == "p"]
    labels = sorted(v for t, v in tagged if t == "l")
    if not preds:
        counter("labels_after_horizon").inc(len(labels))
        return
    pred = preds[0]
    horizon_us = horizon_s.get(pred[0], 3600) * 1_000_000
    in_time = [lb for lb in labels if lb[0] - pred[2] <= horizon_us]
    counter("labels_after_horizon").inc(len(labels) - len(in_time))
    if in_time:
        yield from _joined(tasks, pred, in_time[-1])  # a correction replaces the earlier label


class JoinLabels(beam.PTransform):
    """(prediction rows or batches, label rows or batches) -> outcomes (model, version, t_us, error)."""

    def __init__(self, tasks: Mapping[str, str], horizon_s: Mapping[str, int], bounded: bool) -> None:
        super().__init__()
        self.tasks, self.horizon_s, self.bounded = dict(tasks), dict(horizon_s), bounded

    def expand(self, pcolls) -> beam.PCollection:
        preds, labels = pcolls
        models = set(self.tasks)

        def rows(element):
            return element if isinstance(element, list) else [element]

        p = preds | "PredKeys" >> beam.FlatMap(
            lambda e: [pred_summary(r) for r in rows(e) if r["model_name"] in models]
        )
        lb = labels | "LabelKeys" >> beam.FlatMap(lambda e: [label_summary(r) for r in rows(e)])
        both = (p, lb) | "PredsAndLabels" >> beam.Flatten()
        if self.bounded:
            return (
                both
                | "ByEventId" >> beam.GroupByKey()
                | "Join" >> beam.FlatMap(_join_grouped, self.tasks, self.horizon_s)
            )
        return (
            both
            | "JoinGlobal" >> beam.WindowInto(window.GlobalWindows())
            | "Join" >> beam.ParDo(_JoinStateFn(self.tasks, self.horizon_s))
        )


# -- per-window performance ------------------------------------------------------------------
def performance_metrics(task: str, n: int, total: float, total_sq: float) -> dict[str, float]:
    """Accuracy (classification) or MAE/RMSE (regression) from summed errors.

    >>> performance_metrics("classification", 10, 2.0, 2.0)
    {'accuracy': 0.8}
    >>> performance_metrics("regression", 4, 8.0, 20.0)
    {'mae': 2.0, 'rmse': 2.23606797749979}
    """
    if task == "regression":
        return {"mae": total / n, "rmse": (total_sq / n) ** 0.5}
    return {"accuracy": 1.0 - total / n}


def performance_limits(
    accuracy_min: float | None, mae_max: float | None
) -> dict[str, tuple[float, float, bool]]:
    """metric -> (warning, critical, higher_is_worse) from a spec's floors and ceilings.

    >>> performance_limits(0.8, 2.0)
    {'accuracy': (0.8, 0.7000000000000001, False), 'mae': (2.0, 3.0, True)}
    """
    out = {}
    if accuracy_min is not None:
        out["accuracy"] = (accuracy_min, accuracy_min - 0.1, False)
    if mae_max is not None:
        out["mae"] = (mae_max, 1.5 * mae_max, True)
    return out


class _PerformanceFn(beam.DoFn):
    def __init__(self, tasks, limits, min_labeled, window_s) -> None:
        self.tasks, self.limits, self.min_labeled = dict(tasks), dict(limits), dict(min_labeled)
        self.window_s = window_s

    def process(self, element, win=beam.DoFn.WindowParam) -> Iterator[Any]:
        from transforms.monitors.drift import DRIFT_METRICS, _metric_row

        (model, version), (n, total, total_sq) = element
        start = from_micros(int(win.start.micros))
        end = start + dt.timedelta(seconds=self.window_s)
        enough = n >= self.min_labeled.get(model, 100)
        limits = self.limits.get(model, {})
        for metric, value in performance_metrics(
            self.tasks.get(model, "classification"), n, total, total_sq
        ).items():
            limit = limits.get(metric)
            level = severity(value, *limit) if limit and enough else None
            status = "insufficient" if not enough else (level or "ok")
            row = _metric_row(model, version, metric, metric, value, n, status, _Ref(model), start, end)
            yield beam.pvalue.TaggedOutput(DRIFT_METRICS, row)
            if limit and enough:
                threshold = limit[1] if level == "critical" else limit[0]
                yield (
                    f"{model}\x00{version}\x00{metric}\x00accuracy",
                    ((level, value, threshold, {"limit": limit[0]}, {metric: value}), start, end, n),
                )


class _Ref:
    """What ``_metric_row`` reads of a reference (performance needs none)."""

    def __init__(self, model: str) -> None:
        self.model, self.version = model, "labels"


def _sum3(values) -> tuple[int, float, float]:
    n, a, b = 0, 0.0, 0.0
    for x, y, z in values:
        n, a, b = n + x, a + y, b + z
    return n, a, b


class MonitorPerformance(beam.PTransform):
    """Outcomes -> {"drift_metrics": accuracy / MAE / RMSE rows, "breaches": alert inputs}."""

    def __init__(
        self, tasks, limits, min_labeled, window_s: int, allowed_lateness_s: int, period_s: int = 0
    ) -> None:
        """``limits``: model -> ``performance_limits(...)``."""
        super().__init__()
        self.args = (dict(tasks), dict(limits), dict(min_labeled), window_s)
        self.window_s, self.allowed_lateness_s, self.period_s = window_s, allowed_lateness_s, period_s

    def expand(self, outcomes) -> dict[str, beam.PCollection]:
        from transforms.monitors.drift import DRIFT_METRICS, monitor_windows

        stats = (
            outcomes
            | "Key" >> beam.Map(lambda o: ((o[0], o[1]), (1, o[3], o[3] * o[3])))
            | "Window" >> monitor_windows(self.window_s, self.allowed_lateness_s, self.period_s)
            | "Sum" >> beam.CombinePerKey(_sum3)
            | "Metrics" >> beam.ParDo(_PerformanceFn(*self.args)).with_outputs(DRIFT_METRICS, main="breaches")
        )
        return {DRIFT_METRICS: stats[DRIFT_METRICS], "breaches": stats.breaches}
