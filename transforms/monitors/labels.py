"""Label join: predictions meet their ground truth on the prediction's identity, within a horizon.

The join key is the identity (model name, event_id; see ``transforms.identity``): a label
that names a ``model`` joins that model's prediction with its event_id only; a label without
a model joins every monitored prediction with that event_id (producers that use one id per
request across models label them all at once). The label's model version is recorded, not
matched: a label is about the request, not about one deployment of the model.

Each joined prediction becomes an *outcome*: an error indicator (classification: the label
text differs from ``prediction_label``; both are rendered by ``transforms.rows.label_text``,
so a boolean ``true`` meets ``"true"``) or an absolute error (regression). Outcomes feed (1)
per event-time window (of the prediction) accuracy or MAE/RMSE, recorded in ``drift_metrics``
and alerted below the spec's ``accuracy_min`` (or above ``mae_max``), and (2) ADWIN on the
per-event error: the concept-drift detector (signal ``prediction.error``).

Horizon: a label counts for a prediction only when ``label_time - event_time`` is within the
model's ``label_join_horizon_seconds``. A label that joins no prediction (none arrived, or only
later than the horizon) is still audited in ``labels`` and counted ``labels_after_horizon``;
the analyst view ``accuracy_full_join`` (schemas/tables.py) computes accuracy over the full
join in SQL.

Streams: a stateful DoFn per event_id keeps the predictions (per model) and the labels seen,
and an event-time timer at (latest time seen + horizon) clears them. The first applicable
label joins; a later label for an already joined prediction is counted
(``labels_duplicate``), not joined again. Replays (``bounded``) see everything: they group by
event_id and take, per prediction, the latest applicable label within the horizon (a
correction replaces the earlier label).
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
from transforms.monitors.records import DRIFT_METRICS, AlertInput, Breach, metric_row, series_key
from transforms.monitors.windows import monitor_windows
from transforms.rows import from_micros

#: (model, version, prediction event time us, prediction label, prediction value)
Pred = tuple[str, str, int, str | None, float | None]
#: (label time us, label text, label number, model name or None: every model)
Label = tuple[int, str, float | None, str | None]


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
    return row["event_id"], (
        "l",
        (row["label_time"], row["label"], row["label_numeric"], row.get("model_name") or None),
    )


def applies(label: Label, model: str) -> bool:
    """Whether ``label`` is for ``model``'s prediction: it names that model, or none.

    >>> applies((0, "x", None, None), "fraud"), applies((0, "x", None, "fraud"), "fraud")
    (True, True)
    >>> applies((0, "x", None, "churn"), "fraud")
    False
    """
    return label[3] is None or label[3] == model


def _label_order(label: Label) -> tuple[int, str, str]:
    """Labels in time order (ties: by text, then model): the last one is the latest correction."""
    return label[0], label[1], label[3] or ""


def outcome(task: str, pred: Pred, label: Label) -> float | None:
    """The error of one prediction: 0/1 (classification) or |label - value| (regression).

    >>> outcome("classification", ("m", "1", 0, "fraud", None), (5, "fraud", None, None))
    0.0
    >>> outcome("classification", ("m", "1", 0, "legit", None), (5, "fraud", None, None))
    1.0
    >>> outcome("classification", ("m", "1", 0, "true", None), (5, "true", None, "m"))
    0.0
    >>> outcome("regression", ("m", "1", 0, None, 10.0), (5, "12.5", 12.5, None))
    2.5
    >>> outcome("regression", ("m", "1", 0, None, None), (5, "12.5", 12.5, None)) is None
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
    """Streams, per event_id: predictions by model, labels seen (with whether they joined)."""

    PREDS = ReadModifyWriteStateSpec("preds", PickleCoder())  # model -> Pred
    LABELS = ReadModifyWriteStateSpec("labels", PickleCoder())  # [[Label, joined: bool]]
    DONE = ReadModifyWriteStateSpec("done", PickleCoder())  # models already joined
    EXPIRES = ReadModifyWriteStateSpec("expires", PickleCoder())  # timer time (us)
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, tasks: Mapping[str, str], horizon_s: Mapping[str, int]) -> None:
        self.tasks, self.horizon_s = dict(tasks), dict(horizon_s)

    def _horizon_us(self, model: str | None) -> int:
        if model is None:  # a label for every model waits as long as the longest horizon
            return max(self.horizon_s.values(), default=3600) * 1_000_000
        return self.horizon_s.get(model, 3600) * 1_000_000

    def process(
        self,
        element,
        preds_state=beam.DoFn.StateParam(PREDS),
        labels_state=beam.DoFn.StateParam(LABELS),
        done_state=beam.DoFn.StateParam(DONE),
        expires_state=beam.DoFn.StateParam(EXPIRES),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterator[Any]:
        _, (tag, value) = element
        preds: dict[str, Pred] = preds_state.read() or {}
        labels: list[list[Any]] = labels_state.read() or []
        done: set[str] = done_state.read() or set()
        out: list[Any] = []
        if tag == "p":
            model = value[0]
            if model in preds:
                counter("predictions_duplicate_in_join").inc()
                return
            preds[model] = value
            waiting = sorted((e for e in labels if applies(e[0], model)), key=lambda e: _label_order(e[0]))
            if waiting:  # the first label that applies joins; the others came too late for it
                waiting[0][1] = True
                for entry in waiting[1:]:
                    if not entry[1]:
                        counter("labels_duplicate").inc()
                        entry[1] = True
                done.add(model)
                out = list(self._join(value, waiting[0][0]))
                labels = [e for e in labels if e[0][3] != model]  # labels naming it are used up
            until = value[2] + self._horizon_us(model)
        else:
            targets = [m for m in sorted(preds) if applies(value, m)]
            fresh = [m for m in targets if m not in done]
            if targets and not fresh and value[3] is not None:
                counter("labels_duplicate").inc()  # its prediction has joined a label already
                return
            for m in fresh:
                done.add(m)
                out += self._join(preds[m], value)
            if targets and not fresh:
                counter("labels_duplicate").inc()
            # a label for every model keeps waiting for the models not seen yet
            if value[3] is None or not targets:
                labels.append([value, bool(targets)])
            until = value[0] + self._horizon_us(value[3])
        until = max(until, expires_state.read() or until)
        expires_state.write(until)
        expiry.set(Timestamp(micros=until))
        preds_state.write(preds)
        labels_state.write(labels)
        done_state.write(done)
        yield from out

    def _join(self, pred: Pred, label: Label) -> list[Any]:
        if label[0] - pred[2] > self._horizon_us(pred[0]):
            counter("labels_after_horizon").inc()
            return []
        return list(_joined(self.tasks, pred, label))

    @on_timer(EXPIRY)
    def expire(
        self,
        preds_state=beam.DoFn.StateParam(PREDS),
        labels_state=beam.DoFn.StateParam(LABELS),
        done_state=beam.DoFn.StateParam(DONE),
        expires_state=beam.DoFn.StateParam(EXPIRES),
    ) -> None:
        unjoined = sum(1 for _, joined in labels_state.read() or [] if not joined)
        if unjoined:
            counter("labels_after_horizon").inc(unjoined)  # no prediction within the horizon
        unlabeled = set(preds_state.read() or {}) - (done_state.read() or set())
        if unlabeled:
            counter("predictions_unlabeled").inc(len(unlabeled))
        for state in (preds_state, labels_state, done_state, expires_state):
            state.clear()


def _joined(tasks: Mapping[str, str], pred: Pred, label: Label) -> Iterator[Any]:
    err = outcome(tasks.get(pred[0], "classification"), pred, label)
    if err is None:
        counter("labels_without_comparable_prediction").inc()
        return
    counter("labels_joined").inc()
    yield TimestampedValue((pred[0], pred[1], pred[2], err), pred[2] / 1e6)


def join_group(
    tagged: list[tuple[str, Any]], horizon_s: Mapping[str, int]
) -> tuple[list[tuple[Pred, Label]], int]:
    """Bounded join of one event_id's predictions and labels: ([(prediction, label)], late).

    Per prediction, the latest label that applies to it (names its model, or none) within its
    model's horizon; ``late``: labels that joined no prediction (none within the horizon).

    >>> p = ("fraud", "1", 0, "legit", None)
    >>> first, fix = (60_000_000, "fraud", None, None), (120_000_000, "legit", None, "fraud")
    >>> join_group([("p", p), ("l", first), ("l", fix)], {"fraud": 3600})
    ([(('fraud', '1', 0, 'legit', None), (120000000, 'legit', None, 'fraud'))], 0)
    >>> join_group([("p", p), ("l", (7200_000_000, "fraud", None, None))], {"fraud": 3600})
    ([], 1)
    """
    preds: dict[str, Pred] = {}
    labels: list[Label] = []
    for tag, value in tagged:
        if tag == "l":
            labels.append(value)
        elif value[0] not in preds or value[2] < preds[value[0]][2]:
            preds[value[0]] = value
    labels.sort(key=_label_order)
    pairs, used = [], set()
    for model in sorted(preds):
        pred = preds[model]
        horizon_us = horizon_s.get(model, 3600) * 1_000_000
        in_time = [i for i, lb in enumerate(labels) if applies(lb, model) and lb[0] - pred[2] <= horizon_us]
        used.update(in_time)
        if in_time:
            pairs.append((pred, labels[in_time[-1]]))  # a correction replaces the earlier label
    return pairs, len(labels) - len(used)


def _join_grouped(element, tasks: Mapping[str, str], horizon_s: Mapping[str, int]) -> Iterator[Any]:
    pairs, late = join_group(list(element[1]), horizon_s)
    if late:
        counter("labels_after_horizon").inc(late)
    for pred, label in pairs:
        yield from _joined(tasks, pred, label)


class JoinLabels(beam.PTransform):
    """(prediction rows or batches, label rows or batches) -> outcomes (model, version, t_us, error).

    Only predictions of the models in ``tasks`` are joined; ``horizon_s``: model -> seconds.
    """

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
        both = (p, lb) | "PredsAndLabels" >> beam.Flatten().with_output_types(tuple[str, Any])
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
            threshold = (limit[1] if level == "critical" else limit[0]) if limit else None
            row = metric_row(
                model, version, metric, metric, value, n, status, f"{model}@labels", start, end,
                threshold=threshold, baseline="labels",
            )  # fmt: skip
            yield beam.pvalue.TaggedOutput(DRIFT_METRICS, row)
            if limit and enough:
                yield (
                    series_key(model, version, metric, "accuracy"),
                    AlertInput(
                        Breach(level, value, threshold, {"limit": limit[0]}, {metric: value}), start, end, n
                    ),
                )


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
        stats = (
            outcomes
            | "Key" >> beam.Map(lambda o: ((o[0], o[1]), (1, o[3], o[3] * o[3])))
            | "Window" >> monitor_windows(self.window_s, self.allowed_lateness_s, self.period_s)
            | "Sum" >> beam.CombinePerKey(_sum3)
            | "Metrics"
            >> beam.ParDo(_PerformanceFn(*self.args))
            .with_output_types(tuple[str, Any])
            .with_outputs(DRIFT_METRICS, main="breaches")
        )
        # global like MonitorDrift's metrics (its merged low-traffic spans), so they flatten together
        metrics = stats[DRIFT_METRICS] | "MetricsGlobal" >> beam.WindowInto(window.GlobalWindows())
        return {DRIFT_METRICS: metrics, "breaches": stats.breaches}
