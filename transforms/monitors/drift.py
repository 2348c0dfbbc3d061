"""MonitorDrift: per event-time window statistics of every signal against its reference.

Per row the work is stateless (find each signal's bin, count missing features); counts are
combined per (model, version) and event-time window, so no per-element state is touched.
Windows fire when the watermark passes their end, and again (at most every 5 s of
processing time) while late rows within the allowed lateness arrive: accumulating, so a
re-fired window's statistics replace the earlier ones (same ``metric_id``). Rows later than
the allowed lateness are still audited but dropped from the monitors by Beam. Every
registered statistic (``statistics.py``: PSI, JS, L-inf) and each feature's missing rate
becomes a ``drift_metrics`` row, breaches or not. PSI and missing rates are judged
calibrated to the window's n (``calibrate.py``) or by fixed spec thresholds; a window below
the minimum sample size is ``insufficient`` and also merged with the following ones (low
traffic). Seasonal references compare each window with its hours' profiles. Every judged
statistic goes as an ``AlertInput`` to the one alerting step (``AlertFn``: severity,
cooldown, resolved).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.metrics import counter
from transforms.monitors.alerts import AlertState, anomaly_event, severity
from transforms.monitors.calibrate import Decision, decide_fixed, decide_psi, decide_rate_change, pool_rare
from transforms.monitors.records import (
    ANOMALIES,
    DRIFT_METRICS,
    AlertInput,
    Breach,
    metric_row,
    series_key,
)
from transforms.monitors.settings import DriftSettings, ModelReference, drift_settings, season_slot
from transforms.monitors.signals import ROW_COLUMN
from transforms.monitors.statistics import WINDOW_STATISTICS
from transforms.monitors.stats import NumericReference, Reference
from transforms.monitors.traffic import TrafficSettings, TrafficState, observe, silent_window
from transforms.monitors.traffic import breaches as traffic_breaches
from transforms.monitors.windows import monitor_windows
from transforms.rows import from_micros, to_micros

__all__ = ["ANOMALIES", "DRIFT_METRICS", "DriftSettings", "ModelReference", "MonitorDrift", "AlertFn"]
#: count keys that are not signals: the window's events per seasonal slot
SLOT_KEY = "\x00slot"
#: count key of the window's missing values per feature ({feature: rows missing it})
MISSING = "\x00missing"


def signal_bins(
    row: Mapping[str, Any], ref: ModelReference, signals: Mapping[str, Reference] | None = None
) -> dict[str, int]:
    """Each referenced signal's bin index for one audit row (missing signals are skipped);
    ``signals``: the seasonal profile of the row's slot (default: the reference's signals).

    >>> from transforms.monitors.stats import CategoricalReference
    >>> ref = ModelReference("m", "*", {"a": NumericReference((1.0,), (0.5, 0.5), 2),
    ...                                 "prediction.label": CategoricalReference(("x",), (1.0, 0.0), 1)},
    ...                      DriftSettings())
    >>> signal_bins({"features": '{"a": 3.0}', "prediction_label": "y"}, ref)
    {'a': 1, 'prediction.label': 1}
    """
    features = orjson.loads(row["features"])
    return _bins(row, features, signals if signals is not None else ref.signals)


def _bins(
    row: Mapping[str, Any], features: Mapping[str, Any], signals: Mapping[str, Reference]
) -> dict[str, int]:
    out: dict[str, int] = {}
    for signal, r in signals.items():
        col = ROW_COLUMN.get(signal)  # signal_value, inlined: this runs per row and signal
        v = row.get(col) if col is not None else features.get(signal)
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

    def __init__(
        self,
        references: Mapping[str, ModelReference],
        bucket_s: int,
        skip: frozenset[str],
        infer_unknown: bool = False,
    ) -> None:
        # bucket = the window, or the period of sliding windows: a bucket lies in one set of windows
        self.references, self.window_us, self.skip = dict(references), bucket_s * 1_000_000, skip
        self.infer_unknown = infer_unknown

    def process(self, element) -> Iterator[Any]:
        batch = isinstance(element, list)
        rows = element if batch else (element,)
        if self.infer_unknown:  # every model without a reference is binned by _WarmupFn
            rows = [r for r in rows if r["model_name"] in self.references]
        elif self.skip:  # warm-up models are binned by _WarmupFn
            rows = [r for r in rows if r["model_name"] not in self.skip]
        for key, (n, counts, t) in bin_rows(rows, self.references.get, self.window_us):
            value = (key, (n, counts, None))
            yield TimestampedValue(value, t / 1e6) if batch else value


def bin_rows(rows, reference_for, window_us: int) -> Iterator[tuple[tuple[str, str], tuple[int, dict, int]]]:
    """Partial counts per (model, version) and window: ((model, version), (n, counts, last t)).

    Counts per signal and bin, per rate metric, per feature's missingness (``MISSING``) and,
    for a seasonal reference, events per slot (``SLOT_KEY``).
    """
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
        features = orjson.loads(row["features"])
        for f in ref.settings.features:
            if features.get(f) is None:
                per = counts.setdefault(MISSING, {})
                per[f] = per.get(f, 0) + 1
        signals = ref.signals
        if ref.profiles:
            slot = season_slot(t, ref.seasonality)
            signals = ref.profiles.get(slot, signals)
            per = counts.setdefault(SLOT_KEY, {})
            per[slot] = per.get(slot, 0) + 1
        for signal, b in _bins(row, features, signals).items():
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
        from transforms.monitors.reference import warmup_baseline

        key, rows = element
        model, version = key.split("\x00")
        ref = ref_state.read()
        if ref is None:
            spec = self.specs.get(model)
            n_warmup = spec.monitors.warmup_events if spec is not None else DEFAULT_WARMUP_EVENTS
            buf = rows_state.read() or []
            take = rows[: max(n_warmup - len(buf), 0)]
            buf.extend({f: r.get(f) for f in _WARMUP_FIELDS} for r in take)
            counter("monitor_rows_in_warmup").inc(len(take))
            rows = rows[len(take) :]
            if len(buf) < n_warmup:
                rows_state.write(buf)
                return
            baseline = "warmup"
            if spec is None:  # a model without a spec: signals inferred over its warm-up
                spec, baseline = inferred_spec(model, buf), "inferred"
                counter("monitor_inferred_specs").inc()
                logging.getLogger(__name__).info(
                    "model %s version %s has no spec: monitored on a spec inferred from its first %d rows",
                    model, version, len(buf),
                )  # fmt: skip
            else:
                logging.getLogger(__name__).info(
                    "model %s version %s has no reference: monitored against its first %d rows",
                    model, version, len(buf),
                )  # fmt: skip
            signals, missing, n = warmup_baseline(buf, spec, version, bins=spec.monitors.psi.bins)
            settings = self.settings.get(model) or drift_settings(spec)
            ref = ModelReference(
                model, version, signals, settings, missing=missing, events=n, baseline=baseline
            )
            ref_state.write(ref)
            rows_state.clear()
            counter("warmup_baselines_built").inc()
        for k, (n, counts, t) in bin_rows(rows, lambda _: ref, self.window_us):
            yield TimestampedValue((k, (n, counts, ref)), t / 1e6)


#: warm-up rows of a model without a spec (its spec is inferred from them)
DEFAULT_WARMUP_EVENTS = 2000


def inferred_spec(model: str, rows: list[Mapping[str, Any]]) -> Any:
    """A ModelSpec inferred (``schemas.infer``) from warm-up rows of a model without a spec."""
    from schemas.infer import infer_spec, spec_yaml
    from schemas.specs import parse_spec

    events = (
        {
            "model": {"name": model},
            "features": orjson.loads(r["features"]),
            "prediction": {
                k: r[c]
                for k, c in (
                    ("label", "prediction_label"),
                    ("score", "prediction_score"),
                    ("value", "prediction_value"),
                )
                if r.get(c) is not None
            },
        }
        for r in rows
    )
    return parse_spec(spec_yaml(infer_spec(events, model)), f"<inferred {model}>")


def _warmup_keys(
    element, models: frozenset[str], referenced: frozenset[str] | None = None
) -> Iterator[tuple[str, list]]:
    """Rows of warm-up models (and with ``referenced``: of every model not in it) per key."""
    per: dict[str, list] = {}
    for row in element if isinstance(element, list) else (element,):
        name = row["model_name"]
        if name in models or (referenced is not None and name not in referenced):
            per.setdefault(f"{row['model_name']}\x00{row['model_version']}", []).append(row)
    yield from per.items()


def merge_counts(accs) -> tuple[int, dict, Any]:
    """Sum partial counts ``(events, {signal: {bin: count}}, warm-up reference or None)``.

    >>> merge_counts([(2, {"a": {0: 2}}, None), (1, {"a": {0: 1, 3: 1}}, None)])
    (3, {'a': {0: 3, 3: 1}}, None)
    """
    n, out, ref = 0, {}, None
    for m, counts, r in accs:
        n += m
        ref = ref or r  # a warm-up baseline, the same in every partial of the key
        for signal, per in counts.items():
            dst = out.setdefault(signal, {})
            for b, c in per.items():
                dst[b] = dst.get(b, 0) + c
    return n, out, ref


class _SumBins(beam.CombineFn):
    """Merges partial counts: (events, {signal: {bin: count}}, warm-up reference or None)."""

    def create_accumulator(self) -> tuple[int, dict[str, dict[int, int]], Any]:
        return 0, {}, None

    def add_input(self, acc, partial):
        return merge_counts([acc, partial])

    def merge_accumulators(self, accs):
        return merge_counts(accs)

    def extract_output(self, acc):
        return acc


def _utc(ts) -> dt.datetime:
    return from_micros(int(ts.micros))


def _expected(
    ref: ModelReference, signal: str, r: Reference, slots: Mapping[int, int]
) -> tuple[np.ndarray, int]:
    """The expected proportions of a signal in this window and the reference's effective size:
    the reference itself, or for a seasonal one the mix of the slot profiles the window's events
    fall in (weighted by events; size 1 / sum(w^2 / m_slot))."""
    if not slots:
        return np.asarray(r.expected, dtype=float), r.sample_size
    total = sum(slots.values())
    mix = np.zeros(len(r.expected))
    inv = 0.0
    for slot, c in slots.items():
        prof = ref.profiles.get(slot, {}).get(signal, r)
        if len(prof.expected) != len(mix):  # a profile of another shape: fall back to the overall one
            prof = r
        w = c / total
        mix += w * np.asarray(prof.expected, dtype=float)
        inv += w * w / max(prof.sample_size, 1)
    return mix, int(1 / inv) if inv else r.sample_size


def window_metrics(
    model: str,
    version: str,
    n: int,
    counts: Mapping[str, Mapping[int, int]],
    ref: ModelReference,
    start: dt.datetime,
    end: dt.datetime,
) -> Iterator[tuple[dict, AlertInput | None]]:
    """(drift_metrics row, alert input or None) for every signal and statistic of one window.

    Deciding statistics (PSI) and missing-value rates are judged calibrated to the window's
    n (Bonferroni over the model's tests in this window) or by fixed thresholds; every row
    records the threshold it was judged by.
    """
    s = ref.settings
    baseline = "seasonal" if ref.profiles else ref.baseline
    extra = {"baseline": baseline}
    yield from _rate_metrics(model, version, n, counts, ref, start, end)
    slots = counts.get(SLOT_KEY, {}) if ref.profiles else {}
    judged = [sig for sig in ref.signals if sum(counts.get(sig, {}).values()) >= s.min_sample_size]
    missing = [f for f in s.features if n >= s.min_sample_size]
    tests = max(len(judged) + len(missing), 1)
    alpha = s.alpha / tests
    for signal, r in sorted(ref.signals.items()):
        per = counts.get(signal, {})
        arr = np.zeros(len(r.expected), dtype=np.int64)
        for b, c in per.items():
            arr[b] += c
        size = int(arr.sum())
        enough = size >= s.min_sample_size
        expected, m = _expected(ref, signal, r, slots)
        pooled_e, pooled_c = pool_rare(expected, arr) if size else (expected, arr)
        for stat in WINDOW_STATISTICS.values():
            value = stat.compute(pooled_e, pooled_c, s.epsilon) if size else None
            decision: Decision | None = None
            if stat.decides and enough and value is not None:
                decision = (
                    decide_fixed(value, s.warning, s.critical)
                    if s.mode == "fixed"
                    else decide_psi(value, size, m, len(pooled_e), alpha, s.min_effect, s.critical)
                )
            status = "insufficient" if not enough else ((decision and decision.level) or "ok")
            row = metric_row(
                model, version, signal, stat.name, value, size, status, ref.reference_id, start, end,
                epsilon=s.epsilon if stat.name == "psi" else None, bins=len(pooled_e),
                threshold=decision.threshold if decision else None, **extra,
            )  # fmt: skip
            alert = None
            if decision is not None:
                summary = {"expected": [round(float(x), 6) for x in expected], "sample_size": m}
                current = {
                    "proportions": (arr / size).round(6).tolist(),
                    "mode": s.mode,
                    "warning": round(decision.warning, 6),
                    "critical": round(decision.critical, 6),
                    "baseline": baseline,
                }
                alert = AlertInput(
                    Breach(decision.level, value, decision.threshold, summary, current), start, end, size
                )
            yield row, alert
    yield from _missing_metrics(model, version, n, counts, ref, start, end, alpha, extra)


def _missing_metrics(
    model, version, n, counts, ref, start, end, alpha, extra
) -> Iterator[tuple[dict, AlertInput | None]]:
    """Each feature's missing-value rate against the reference's (a monitored signal)."""
    s = ref.settings
    enough = n >= s.min_sample_size
    missing = counts.get(MISSING, {})
    size = n  # every row of the window says whether each feature is there
    if not size:
        return
    for f in s.features:
        rate = missing.get(f, 0) / size
        ref_rate = float(ref.missing.get(f, 0.0))
        decision = (
            decide_rate_change(rate, size, ref_rate, ref.events or None, alpha, s.missing_min_effect)
            if enough
            else None
        )
        sign = 1.0 if rate >= ref_rate else -1.0
        threshold = ref_rate + sign * decision.threshold if decision else None
        status = "insufficient" if not enough else (decision.level or "ok")
        row = metric_row(
            model, version, f, "missing_rate", rate, size, status, ref.reference_id, start, end,
            threshold=threshold, **extra,
        )  # fmt: skip
        alert = None
        if decision is not None:
            alert = AlertInput(
                Breach(
                    decision.level,
                    rate,
                    threshold,
                    {"missing_rate": round(ref_rate, 6), "sample_size": ref.events},
                    {"missing_rate": round(rate, 6), "change": round(rate - ref_rate, 6)},
                ),
                start,
                end,
                size,
            )
        yield row, alert


def _metric_row(model, version, signal, metric, value, size, status, ref, start, end) -> dict:
    """Kept for callers of the old private name (use ``records.metric_row``)."""
    return metric_row(model, version, signal, metric, value, size, status, ref.reference_id, start, end)


def _rate_metrics(model, version, n, counts, ref, start, end) -> Iterator[tuple[dict, AlertInput | None]]:
    """Traffic volume (recorded) and the rate detectors (recorded and alerted)."""
    s = ref.settings
    rid = ref.reference_id
    yield metric_row(model, version, "events", "count", float(n), n, "ok", rid, start, end), None
    thresholds = {name: (w, c) for name, w, c in s.rates}
    for rate, per in sorted((k, v) for k, v in counts.items() if k in RATE_DETECTORS):
        size = sum(per.values())
        value = per.get(1, 0) / size if size else None
        enough = size >= s.min_sample_size
        warning, critical = thresholds[rate]
        level = severity(value, warning, critical) if enough and value is not None else None
        status = "insufficient" if not enough else (level or "ok")
        threshold = critical if level == "critical" else warning
        row = metric_row(
            model, version, rate.removesuffix("_rate"), rate, value, size, status, rid, start, end,
            threshold=threshold,
        )  # fmt: skip
        alert = (
            AlertInput(Breach(level, value, threshold, {}, {"rate": value}), start, end, size)
            if enough
            else None
        )
        yield row, alert


#: the detector name (and series suffix) of each alerting metric
DETECTORS = {**RATE_DETECTORS, "missing_rate": "missing"}


@dataclasses.dataclass
class Span:
    """One window's (or merged windows') counts, with its event-time bounds."""

    start_us: int
    end_us: int
    n: int
    counts: dict
    ref: Any = None
    windows: int = 1


#: a run of small windows merges for at most this long (a model silent for days is not compared)
MAX_MERGE_US = 86_400 * 1_000_000


def merge_small(
    pending: Span | None, last_end_us: int | None, w: Span, min_n: int
) -> tuple[list[Span], Span | None, int]:
    """Low traffic: every window is reported on its own; a window under ``min_n`` events is
    also merged with the following ones until together they reach ``min_n``, and the merged
    span is reported as one window (from the first one's start). Returns (spans to report,
    pending merge, end of the latest window seen). Windows older than one already seen (late
    re-firings) are reported alone.

    >>> small = [Span(i * 10, i * 10 + 10, 200, {}) for i in range(3)]
    >>> pending, last, out = None, None, []
    >>> for w in small:
    ...     spans, pending, last = merge_small(pending, last, w, 500)
    ...     out += [(x.start_us, x.end_us, x.n) for x in spans]
    >>> out
    [(0, 10, 200), (10, 20, 200), (20, 30, 200), (0, 30, 600)]
    """
    if last_end_us is not None and w.start_us < last_end_us:
        return [w], pending, last_end_us
    if w.n >= min_n:
        return [w], None, w.end_us
    if pending is None or w.start_us - pending.start_us >= MAX_MERGE_US:
        merged = w
    else:
        n, counts, ref = merge_counts([(pending.n, pending.counts, pending.ref), (w.n, w.counts, w.ref)])
        merged = Span(pending.start_us, w.end_us, n, counts, ref, pending.windows + 1)
    if merged.n >= min_n:
        counter("monitor_windows_merged").inc()
        return [w, merged], None, w.end_us
    return [w], merged, w.end_us


def _span(element, win=beam.DoFn.WindowParam):
    key, (n, counts, ref) = element
    yield key, Span(int(win.start.micros), int(win.end.micros), n, counts, ref)


def _merge_sorted(element, settings: Mapping[str, DriftSettings]) -> Iterator[tuple]:
    """Replays: a series' windows in event-time order through ``merge_small``."""
    key, spans = element
    s = settings.get(key[0]) or DriftSettings()
    pending, last = None, None
    for w in sorted(spans, key=lambda x: x.start_us):
        out, pending, last = merge_small(pending, last, w, s.min_sample_size)
        yield from ((key, x) for x in out)


class _MergeSmallFn(beam.DoFn):
    """Streams: the pending merge per (model, version) in Beam state."""

    STATE = ReadModifyWriteStateSpec("merge", PickleCoder())

    def __init__(self, settings: Mapping[str, DriftSettings]) -> None:
        self.settings = dict(settings)

    def process(self, element, state=beam.DoFn.StateParam(STATE)) -> Iterator[tuple]:
        key, w = element
        s = self.settings.get(key[0]) or DriftSettings()
        pending, last = state.read() or (None, None)
        out, pending, last = merge_small(pending, last, w, s.min_sample_size)
        state.write((pending, last))
        yield from ((key, x) for x in out)


class _WindowStatsFn(beam.DoFn):
    def __init__(self, references: Mapping[str, ModelReference]) -> None:
        self.references = dict(references)

    def process(self, element) -> Iterator[Any]:
        (model, version), span = element
        ref = span.ref or self.references[model]
        start, end = from_micros(span.start_us), from_micros(span.end_us)
        counter("monitor_windows").inc()
        for row, alert in window_metrics(model, version, span.n, span.counts, ref, start, end):
            yield beam.pvalue.TaggedOutput(DRIFT_METRICS, row)
            if alert is not None:
                detector = DETECTORS.get(row["metric"], row["metric"])
                yield series_key(model, version, row["signal"], detector), alert


class AlertFn(beam.DoFn):
    """The one alerting step. Per series: severity with cooldown; emits CloudEvents
    (warning / critical / resolved) from ``AlertInput`` records of every monitor."""

    STATE = ReadModifyWriteStateSpec("alert", PickleCoder())

    def __init__(self, settings: Mapping[str, DriftSettings]) -> None:
        self.settings = dict(settings)

    def process(self, element, state=beam.DoFn.StateParam(STATE)) -> Iterator[dict]:
        series, (breach, start, end, size) = element
        level, value, threshold, ref_summary, cur_summary = breach
        model, version, signal, detector = series.split("\x00")
        st: AlertState = state.read() or AlertState()
        s = self.settings.get(model) or DriftSettings()
        cooldown = dt.timedelta(seconds=s.cooldown_s)
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


_AlertFn = AlertFn  # the name the pipelines import


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
        s = self.settings.get(model) or DriftSettings()  # a spec-less model: the defaults
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
        infer_unknown: bool = False,
    ) -> None:
        """``warmup``: model name -> ModelSpec for models without a reference file;
        ``period_s``: sliding windows starting every period (0 = fixed windows);
        ``infer_unknown``: models with neither (no spec) are monitored too, on a spec inferred
        from their first rows and a warm-up baseline of them (``baseline = inferred``)."""
        super().__init__()
        self.infer_unknown = infer_unknown
        if period_s and (period_s >= window_s or window_s % period_s):
            raise ValueError("a sliding period must divide the window and be shorter than it")
        self.period_s = period_s
        self.step_s = period_s or window_s
        self.bounded = bounded
        self.warmup = dict(warmup or {})
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
            pc
            | f"Bin{i}"
            >> beam.ParDo(_BinFn(self.references, self.step_s, frozenset(self.warmup), self.infer_unknown))
            for i, pc in enumerate(parts)
        ]
        if self.warmup or self.infer_unknown:
            models = frozenset(self.warmup)
            referenced = frozenset(self.references) if self.infer_unknown else None
            binned += [
                pc
                | f"WarmupKeys{i}"
                >> beam.FlatMap(_warmup_keys, models, referenced).with_output_types(tuple[str, Any])
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
        spans = windowed | "Spans" >> beam.FlatMap(_span)
        if not self.period_s and any(s.merge_small_windows for s in self.settings.values()):
            # low traffic: small windows also merge with the following ones (per series, in order)
            spans = spans | "SpansGlobal" >> beam.WindowInto(window.GlobalWindows())
            if self.bounded:
                spans = (
                    spans
                    | "GroupSpans" >> beam.GroupByKey()
                    | "MergeSmall" >> beam.FlatMap(_merge_sorted, self.settings)
                )
            else:
                spans = spans | "MergeSmall" >> beam.ParDo(_MergeSmallFn(self.settings))
        stats = spans | "Stats" >> beam.ParDo(_WindowStatsFn(self.references)).with_outputs(
            DRIFT_METRICS, main="breaches"
        )
        traffic = (
            windowed
            | "TrafficCounts" >> beam.ParDo(_TrafficCountFn()).with_output_types(tuple[str, Any])
            | "TrafficGlobal" >> beam.WindowInto(window.GlobalWindows())
            | "Traffic" >> beam.ParDo(_TrafficFn(self.settings, self.window_s, self.step_s, self.bounded))
        )
        anomalies = (
            (stats.breaches | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows()), traffic)
            | "AllBreaches" >> beam.Flatten().with_output_types(tuple[str, Any])
            | "Alert" >> beam.ParDo(AlertFn(self.settings))
        )
        # one windowing for every monitor's metrics (merged spans are global): they are flattened
        metrics = stats[DRIFT_METRICS] | "MetricsGlobal" >> beam.WindowInto(window.GlobalWindows())
        return {DRIFT_METRICS: metrics, ANOMALIES: anomalies}
