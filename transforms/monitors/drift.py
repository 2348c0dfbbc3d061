"""MonitorDrift: per event-time window PSI / JS / L-inf of every signal against its reference.

Per row the work is stateless (find each signal's bin); counts are combined per
(model, version) and fixed event-time window, so no per-element state is touched.
Windows fire when the watermark passes their end, and again (at most every 5 s of
processing time) while late rows within the allowed lateness arrive: accumulating, so a
re-fired window's statistics replace the earlier ones (same ``metric_id``). Rows later than
the allowed lateness are still audited but dropped from the monitors by Beam. Every statistic becomes a ``drift_metrics`` row, breaches or not; windows
below the minimum sample size are recorded as ``insufficient`` and never alerted on. PSI
drives alerts through a per-series severity/cooldown state (``alerts.AlertState``).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.coders import PickleCoder
from apache_beam.transforms import trigger, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.metrics import counter
from transforms.monitors.alerts import AlertState, anomaly_event, severity
from transforms.monitors.stats import (
    NumericReference,
    Reference,
    js_distance,
    linf_distance,
    psi,
)
from transforms.monitors.traffic import TrafficSettings, TrafficState, observe, silent_window
from transforms.monitors.traffic import breaches as traffic_breaches
from transforms.rows import from_micros, to_micros

ANOMALIES, DRIFT_METRICS = "anomalies", "drift_metrics"
LATE_FIRING_DELAY_S = 5


@dataclasses.dataclass(frozen=True)
class DriftSettings:
    """Per-model thresholds (from the model spec's ``monitors`` section)."""

    min_sample_size: int = 500
    epsilon: float = 1e-4
    warning: float = 0.1
    critical: float = 0.25
    cooldown_s: float = 3600.0
    latency_slo_ms: float | None = None
    #: rate metric -> (warning, critical) share of the window's events
    rates: tuple[tuple[str, float, float], ...] = (
        ("latency_over_slo", 0.1, 0.3),
        ("error_rate", 0.05, 0.2),
        ("quality_issue_rate", 0.05, 0.2),
    )
    #: traffic drop: (warning, critical) count / baseline median
    traffic: tuple[float, float] = (0.3, 0.1)


@dataclasses.dataclass(frozen=True)
class ModelReference:
    """A model's reference signals, for one version or (``version='*'``) all of them."""

    model: str
    version: str
    signals: Mapping[str, Reference]
    settings: DriftSettings

    def applies_to(self, version: str) -> bool:
        return self.version in ("*", version)


def signal_bins(row: Mapping[str, Any], ref: ModelReference) -> dict[str, int]:
    """Each referenced signal's bin index for one audit row (missing signals are skipped).

    >>> from transforms.monitors.stats import CategoricalReference
    >>> ref = ModelReference("m", "*", {"a": NumericReference((1.0,), (0.5, 0.5), 2),
    ...                                 "prediction.label": CategoricalReference(("x",), (1.0, 0.0), 1)},
    ...                      DriftSettings())
    >>> signal_bins({"features": '{"a": 3.0}', "prediction_label": "y"}, ref)
    {'a': 1, 'prediction.label': 1}
    """
    features = orjson.loads(row["features"])
    out: dict[str, int] = {}
    for signal, r in ref.signals.items():
        if signal == "prediction.score":
            v = row.get("prediction_score")
        elif signal == "prediction.value":
            v = row.get("prediction_value")
        elif signal == "prediction.label":
            v = row.get("prediction_label")
        elif signal == "latency_ms":
            v = row.get("latency_ms")
        else:
            v = features.get(signal)
        if v is None:
            continue
        if isinstance(r, NumericReference):
            if v.__class__ in (float, int):
                out[signal] = bisect.bisect_left(r.edges, v)
        else:
            cats = r.categories
            key = v if isinstance(v, str) else str(v)
            out[signal] = cats.index(key) if key in cats else len(cats)
    return out


RATE_DETECTORS = {"latency_over_slo": "latency", "error_rate": "threshold", "quality_issue_rate": "quality"}


def rate_hits(row: Mapping[str, Any], s: DriftSettings) -> Iterator[tuple[str, int]]:
    """(rate metric, 1 if the row counts towards it else 0) for one audit row.

    >>> sorted(rate_hits({"status": "error", "quality_issues": [], "latency_ms": 900.0},
    ...                  DriftSettings(latency_slo_ms=150)))
    [('error_rate', 1), ('latency_over_slo', 1), ('quality_issue_rate', 0)]
    """
    yield "error_rate", int(row.get("status") == "error")
    yield "quality_issue_rate", int(bool(row.get("quality_issues")))
    latency = row.get("latency_ms")
    if s.latency_slo_ms is not None and latency is not None:
        yield "latency_over_slo", int(latency > s.latency_slo_ms)


class _BinFn(beam.DoFn):
    """A row, or a batch of rows, -> partial counts per (model, version) and window.

    A batch is pre-aggregated here, so the monitors pay Beam's per-element cost once per
    window per batch; each partial is stamped with an event time inside its window.
    """

    def __init__(self, references: Mapping[str, ModelReference], bucket_s: int, skip: frozenset[str]) -> None:
        # bucket = the window, or the period of sliding windows: a bucket lies in one set of windows
        self.references, self.window_us, self.skip = dict(references), bucket_s * 1_000_000, skip

    def process(self, element) -> Iterator[Any]:
        batch = isinstance(element, list)
        rows = element if batch else (element,)
        if self.skip:  # warm-up models are binned by _WarmupFn
            rows = [r for r in rows if r["model_name"] not in self.skip]
        for key, (n, counts, t) in bin_rows(rows, self.references.get, self.window_us):
            value = (key, (n, counts, None))
            yield TimestampedValue(value, t / 1e6) if batch else value


def bin_rows(rows, reference_for, window_us: int) -> Iterator[tuple[tuple[str, str], tuple[int, dict, int]]]:
    """Partial counts per (model, version) and window: ((model, version), (n, counts, last t))."""
    partial: dict[tuple, list] = {}
    for row in rows:
        ref = reference_for(row["model_name"])
        if ref is None or not ref.applies_to(row["model_version"]):
            counter("monitor_rows_without_reference").inc()
            continue
        t = row["event_time"]
        acc = partial.setdefault(((row["model_name"], row["model_version"]), t // window_us), [0, {}, t])
        acc[0] += 1
        acc[2] = max(acc[2], t)
        counts = acc[1]
        for rate, hit in rate_hits(row, ref.settings):
            per = counts.setdefault(rate, {})
            per[hit] = per.get(hit, 0) + 1
        for signal, b in signal_bins(row, ref).items():
            per = counts.setdefault(signal, {})
            per[b] = per.get(b, 0) + 1
    for (key, _), (n, counts, t) in partial.items():
        yield key, (n, counts, t)


#: row fields the warm-up baseline keeps
_WARMUP_FIELDS = ("features", "prediction_score", "prediction_value", "prediction_label", "latency_ms")


class _WarmupFn(beam.DoFn):
    """Models without a reference file: the first N valid rows per version (in arrival order)
    become its baseline; later rows are binned against it (the baseline travels with the
    partial counts, so the window statistics need no side input)."""

    ROWS = ReadModifyWriteStateSpec("rows", PickleCoder())
    REF = ReadModifyWriteStateSpec("ref", PickleCoder())

    def __init__(
        self, specs: Mapping[str, Any], settings: Mapping[str, DriftSettings], bucket_s: int
    ) -> None:
        self.specs, self.settings, self.window_us = dict(specs), dict(settings), bucket_s * 1_000_000

    def process(self, element, rows_state=beam.DoFn.StateParam(ROWS), ref_state=beam.DoFn.StateParam(REF)):
        from transforms.monitors.reference import warmup_reference

        key, rows = element
        model, version = key.split("\x00")
        ref = ref_state.read()
        if ref is None:
            spec = self.specs[model]
            n_warmup = spec.monitors.warmup_events
            buf = rows_state.read() or []
            take = rows[: max(n_warmup - len(buf), 0)]
            buf.extend({f: r.get(f) for f in _WARMUP_FIELDS} for r in take)
            counter("monitor_rows_in_warmup").inc(len(take))
            rows = rows[len(take) :]
            if len(buf) < n_warmup:
                rows_state.write(buf)
                return
            signals = warmup_reference(buf, spec, version, bins=spec.monitors.psi.bins)
            ref = ModelReference(model, version, signals, self.settings[model])
            ref_state.write(ref)
            rows_state.clear()
            counter("warmup_baselines_built").inc()
        for k, (n, counts, t) in bin_rows(rows, lambda _: ref, self.window_us):
            yield TimestampedValue((k, (n, counts, ref)), t / 1e6)


def _warmup_keys(element, models: frozenset[str]) -> Iterator[tuple[str, list]]:
    per: dict[str, list] = {}
    for row in element if isinstance(element, list) else (element,):
        if row["model_name"] in models:
            per.setdefault(f"{row['model_name']}\x00{row['model_version']}", []).append(row)
    yield from per.items()


class _SumBins(beam.CombineFn):
    """Merges partial counts: (events, {signal: {bin: count}}, warm-up reference or None)."""

    def create_accumulator(self) -> tuple[int, dict[str, dict[int, int]], Any]:
        return 0, {}, None

    def add_input(self, acc, partial):
        return self.merge_accumulators([acc, partial])

    def merge_accumulators(self, accs):
        n, out, ref = 0, {}, None
        for m, counts, r in accs:
            n += m
            ref = ref or r  # a warm-up baseline, the same in every partial of the key
            for signal, per in counts.items():
                dst = out.setdefault(signal, {})
                for b, c in per.items():
                    dst[b] = dst.get(b, 0) + c
        return n, out, ref

    def extract_output(self, acc):
        return acc


def _utc(ts) -> dt.datetime:
    return from_micros(int(ts.micros))


def window_metrics(
    model: str,
    version: str,
    n: int,
    counts: Mapping[str, Mapping[int, int]],
    ref: ModelReference,
    start: dt.datetime,
    end: dt.datetime,
) -> Iterator[tuple[dict, tuple | None]]:
    """(drift_metrics row, breach or None) for every signal and statistic of one window."""
    s = ref.settings
    yield from _rate_metrics(model, version, n, counts, ref, start, end)
    for signal, r in sorted(ref.signals.items()):
        per = counts.get(signal, {})
        arr = np.zeros(len(r.expected), dtype=np.int64)
        for b, c in per.items():
            arr[b] += c
        size = int(arr.sum())
        enough = size >= s.min_sample_size
        for metric, value in (
            ("psi", psi(r.expected, arr, s.epsilon) if size else None),
            ("js_distance", js_distance(r.expected, arr) if size else None),
            ("linf_distance", linf_distance(r.expected, arr) if size else None),
        ):
            level = (
                severity(value, s.warning, s.critical)
                if (enough and metric == "psi" and value is not None)
                else None
            )
            status = "insufficient" if not enough else (level or "ok")
            row = _metric_row(model, version, signal, metric, value, size, status, ref, start, end)
            row["epsilon"], row["bins"] = (s.epsilon if metric == "psi" else None), len(r.expected)
            breach = None
            if metric == "psi" and enough:
                current = (arr / size).round(6).tolist()
                breach = (
                    level,
                    value,
                    s.critical if level == "critical" else s.warning,
                    {"expected": list(r.expected)},
                    {"proportions": current},
                )
            yield row, breach


def _metric_row(
    model: str,
    version: str,
    signal: str,
    metric: str,
    value: float | None,
    size: int,
    status: str,
    ref: ModelReference,
    start: dt.datetime,
    end: dt.datetime,
) -> dict:
    key = f"{model}\x00{version}\x00{signal}\x00{metric}\x00{start.isoformat()}"
    return {
        "metric_id": hashlib.sha256(key.encode()).hexdigest(),
        "model_name": model,
        "model_version": version,
        "signal": signal,
        "metric": metric,
        "value": value,
        "window_start": to_micros(start),
        "window_end": to_micros(end),
        "sample_size": size,
        "status": status,
        "epsilon": None,
        "bins": None,
        "reference_id": f"{ref.model}@{ref.version}",
    }


def _rate_metrics(model, version, n, counts, ref, start, end) -> Iterator[tuple[dict, tuple | None]]:
    """Traffic volume (recorded) and the rate detectors (recorded and alerted)."""
    s = ref.settings
    yield _metric_row(model, version, "events", "count", float(n), n, "ok", ref, start, end), None
    thresholds = {name: (w, c) for name, w, c in s.rates}
    for rate, per in sorted((k, v) for k, v in counts.items() if k in RATE_DETECTORS):
        size = sum(per.values())
        value = per.get(1, 0) / size if size else None
        enough = size >= s.min_sample_size
        warning, critical = thresholds[rate]
        level = severity(value, warning, critical) if enough and value is not None else None
        status = "insufficient" if not enough else (level or "ok")
        row = _metric_row(
            model, version, rate.removesuffix("_rate"), rate, value, size, status, ref, start, end
        )
        breach = (
            (level, value, critical if level == "critical" else warning, {}, {"rate": value})
            if enough
            else None
        )
        yield row, breach


class _WindowStatsFn(beam.DoFn):
    def __init__(self, references: Mapping[str, ModelReference]) -> None:
        self.references = dict(references)

    def process(self, element, win=beam.DoFn.WindowParam) -> Iterator[Any]:
        (model, version), (n, counts, baseline) = element
        ref = baseline or self.references[model]
        start, end = _utc(win.start), _utc(win.end)
        counter("monitor_windows").inc()
        for row, breach in window_metrics(model, version, n, counts, ref, start, end):
            yield beam.pvalue.TaggedOutput(DRIFT_METRICS, row)
            if breach is not None:
                detector = RATE_DETECTORS.get(row["metric"], "psi")
                yield (
                    f"{model}\x00{version}\x00{row['signal']}\x00{detector}",
                    (breach, start, end, row["sample_size"]),
                )


class _AlertFn(beam.DoFn):
    """Per series: severity with cooldown; emits CloudEvents (warning / critical / resolved)."""

    STATE = ReadModifyWriteStateSpec("alert", PickleCoder())

    def __init__(self, settings: Mapping[str, DriftSettings]) -> None:
        self.settings = dict(settings)

    def process(self, element, state=beam.DoFn.StateParam(STATE)) -> Iterator[dict]:
        series, ((level, value, threshold, ref_summary, cur_summary), start, end, size) = element
        model, version, signal, detector = series.split("\x00")
        st: AlertState = state.read() or AlertState()
        cooldown = dt.timedelta(seconds=self.settings[model].cooldown_s)
        emit = st.update(level, end, cooldown)
        state.write(st)
        if emit is None:
            return
        counter(f"anomalies_{emit}").inc()
        yield anomaly_event(
            model=model,
            version=version,
            signal=signal,
            detector=detector,
            statistic=value,
            threshold=threshold,
            severity=emit,
            window_start=start,
            window_end=end,
            sample_size=size,
            reference=ref_summary,
            current=cur_summary,
        )


class _TrafficCountFn(beam.DoFn):
    def process(self, element, win=beam.DoFn.WindowParam) -> Iterator[Any]:
        (model, version), (n, _, _) = element
        yield f"{model}\x00{version}", (to_micros(_utc(win.start)), n)


#: a model silent this many windows in a row stops re-arming its timer (its alert stays open)
MAX_SILENT_WINDOWS = 12


class _TrafficFn(beam.DoFn):
    """Per (model, version): traffic drop against recent windows; a timer sees silent windows."""

    STATE = ReadModifyWriteStateSpec("traffic", PickleCoder())
    TIMER = TimerSpec("silent", TimeDomain.WATERMARK)

    def __init__(
        self, settings: Mapping[str, DriftSettings], window_s: int, step_s: int, bounded: bool
    ) -> None:
        self.settings, self.window_us, self.bounded = dict(settings), window_s * 1_000_000, bounded
        self.step_us = step_s * 1_000_000  # windows start every step (= the size unless sliding)

    def _settings(self, model: str) -> TrafficSettings:
        s = self.settings[model]
        return TrafficSettings(warning=s.traffic[0], critical=s.traffic[1], min_sample_size=s.min_sample_size)

    def process(
        self, element, state=beam.DoFn.StateParam(STATE), timer=beam.DoFn.TimerParam(TIMER)
    ) -> Iterator[Any]:
        key, (start_us, n) = element
        model, version = key.split("\x00")
        st: TrafficState = state.read() or TrafficState()
        s = self._settings(model)
        verdicts = observe(st, start_us, n, self.step_us, s)
        state.write(st)
        if verdicts and not self.bounded:  # bounded: the final watermark would fire every timer
            timer.set(Timestamp(micros=st.last_start_us + self.step_us + self.window_us))
        yield from traffic_breaches(model, version, verdicts, self.window_us, s)

    @on_timer(TIMER)
    def silent(
        self, key=beam.DoFn.KeyParam, state=beam.DoFn.StateParam(STATE), timer=beam.DoFn.TimerParam(TIMER)
    ) -> Iterator[Any]:
        model, version = key.split("\x00")
        st: TrafficState = state.read() or TrafficState()
        if st.last_start_us is None:
            return
        s = self._settings(model)
        verdict = silent_window(st, st.last_start_us + self.step_us, s)
        st.silent_streak += 1
        state.write(st)
        counter("monitor_silent_windows").inc()
        if st.silent_streak < MAX_SILENT_WINDOWS:
            timer.set(Timestamp(micros=st.last_start_us + self.step_us + self.window_us))
        yield from traffic_breaches(model, version, [verdict] if verdict else [], self.window_us, s)


def anomaly_row(event: dict) -> dict:
    """The ``anomalies`` table row for a CloudEvent."""
    d = event["data"]

    def micros(text: str) -> int:
        return to_micros(dt.datetime.fromisoformat(text))

    return {
        "anomaly_id": event["id"],
        "time": micros(event["time"]),
        "type": event["type"],
        "source": event["source"],
        "subject": event["subject"],
        "model_name": d["model"],
        "model_version": d["version"],
        "signal": d["signal"],
        "detector": d["detector"],
        "statistic": d["statistic"],
        "threshold": d["threshold"],
        "severity": d["severity"],
        "window_start": micros(d["window_start"]),
        "window_end": micros(d["window_end"]),
        "sample_size": d["sample_size"],
        "reference": orjson.dumps(d["reference"]).decode(),
        "current": orjson.dumps(d["current"]).decode(),
        "cloudevent": orjson.dumps(event).decode(),
    }


def monitor_windows(window_s: int, allowed_lateness_s: int, period_s: int = 0) -> beam.WindowInto:
    """The monitors' event-time windows (fixed, or sliding every ``period_s``): fire at the
    watermark, then late rows within the allowed lateness re-fire a window at most every
    LATE_FIRING_DELAY_S (accumulating)."""
    return beam.WindowInto(
        window.SlidingWindows(window_s, period_s) if period_s else window.FixedWindows(window_s),
        trigger=trigger.AfterWatermark(late=trigger.AfterProcessingTime(LATE_FIRING_DELAY_S)),
        accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
        allowed_lateness=allowed_lateness_s,
    )


class MonitorDrift(beam.PTransform):
    """Audit rows (event-time stamped) or row batches -> {"drift_metrics": rows, "anomalies": CloudEvents}."""

    def __init__(
        self,
        references: Mapping[str, ModelReference],
        window_s: int = 300,
        allowed_lateness_s: int = 600,
        bounded: bool = False,
        warmup: Mapping[str, Any] | None = None,
        period_s: int = 0,
    ) -> None:
        """``warmup``: model name -> ModelSpec for models without a reference file;
        ``period_s``: sliding windows starting every period (0 = fixed windows)."""
        super().__init__()
        if period_s and (period_s >= window_s or window_s % period_s):
            raise ValueError("a sliding period must divide the window and be shorter than it")
        self.period_s = period_s
        self.step_s = period_s or window_s
        self.bounded = bounded
        self.warmup = dict(warmup or {})
        from transforms.monitors.reference import drift_settings

        self.settings = {n: r.settings for n, r in references.items()}
        self.settings.update({n: drift_settings(spec) for n, spec in self.warmup.items()})
        if window_s <= 0 or allowed_lateness_s < 0:
            raise ValueError("monitor window must be > 0 s and allowed lateness >= 0 s")
        self.references, self.window_s, self.allowed_lateness_s = (
            dict(references),
            window_s,
            allowed_lateness_s,
        )

    def expand(self, rows) -> dict[str, beam.PCollection]:
        """``rows``: a PCollection of rows, or several (each is binned before they meet, so a
        Flatten never forces full rows to be materialized between stages)."""
        parts = rows if isinstance(rows, tuple | list) else (rows,)
        binned = [
            pc | f"Bin{i}" >> beam.ParDo(_BinFn(self.references, self.step_s, frozenset(self.warmup)))
            for i, pc in enumerate(parts)
        ]
        if self.warmup:
            models = frozenset(self.warmup)
            binned += [
                pc
                | f"WarmupKeys{i}" >> beam.FlatMap(_warmup_keys, models)
                | f"Warmup{i}" >> beam.ParDo(_WarmupFn(self.warmup, self.settings, self.step_s))
                for i, pc in enumerate(parts)
            ]
        if len(binned) > 1:
            binned = [binned | "AllBinned" >> beam.Flatten()]
        windowed = (
            binned[0]
            | "Window" >> monitor_windows(self.window_s, self.allowed_lateness_s, self.period_s)
            | "Count" >> beam.CombinePerKey(_SumBins())
        )
        stats = windowed | "Stats" >> beam.ParDo(_WindowStatsFn(self.references)).with_outputs(
            DRIFT_METRICS, main="breaches"
        )
        traffic = (
            windowed
            | "TrafficCounts" >> beam.ParDo(_TrafficCountFn())
            | "TrafficGlobal" >> beam.WindowInto(window.GlobalWindows())
            | "Traffic" >> beam.ParDo(_TrafficFn(self.settings, self.window_s, self.step_s, self.bounded))
        )
        anomalies = (
            (stats.breaches | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows()), traffic)
            | "AllBreaches" >> beam.Flatten()
            | "Alert" >> beam.ParDo(_AlertFn(self.settings))
        )
        return {DRIFT_METRICS: stats[DRIFT_METRICS], ANOMALIES: anomalies}
