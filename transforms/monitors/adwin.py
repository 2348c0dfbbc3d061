"""ADWIN (river) per (model, version, signal): change detection on each numeric signal.

The detector lives in Beam state (river's ADWIN pickles, ~1.6 KB) and is fed in batches per
key, sorted by event time within a batch. Out-of-order arrival across batches is fed in
arrival order: ADWIN sees a sequence, not timestamps, so a late value is treated as the
newest one (detections can shift by the size of the disorder; they are not lost). Replay
feeds each series fully sorted by event time, which reproduces a standalone river run
exactly. Detections within ``cooldown_s`` of the last one for the series are counted but
not re-emitted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.coders import PickleCoder
from apache_beam.transforms import trigger, window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from river import drift

from schemas.specs import ModelSpec
from transforms.metrics import counter
from transforms.monitors.alerts import anomaly_event
from transforms.rows import from_micros


@dataclasses.dataclass
class Detection:
    index: int  # position in the series (0-based, over everything fed so far)
    time_us: int
    mean_before: float
    mean_after: float
    width_before: int
    #: |mean_after - mean_before| in standard deviations of the values seen so far
    effect_sd: float = 0.0


class AdwinSeries:
    """One signal's detector plus its position and last emitted detection.

    >>> s = AdwinSeries(delta=0.002, clock=32)
    >>> [d.index for d in s.feed([(i, 0.0) for i in range(1000)] + [(1000 + i, 5.0) for i in range(200)])]
    [1023]
    """

    def __init__(self, delta: float, clock: int, confirm_events: int = 200) -> None:
        self.adwin = drift.ADWIN(delta=delta, clock=clock)
        self.seen = 0
        self.last_emitted_us: int | None = None
        self.total = self.total_sq = 0.0
        self.confirm_events = confirm_events
        self.pending: list[list] = []  # [detection, values after it, their sum]
        self.confirmed: list[Detection] = []

    def feed(self, values: Sequence[tuple[int, float]]) -> list[Detection]:
        """Feed (event time us, value) pairs in the given order; returns river's detections.

        Each detection is also measured on the ``confirm_events`` values after it: its
        ``effect_sd`` is |their mean - the mean before| in standard deviations of the series,
        and it lands in ``confirmed`` once measured (ADWIN's first cut keeps some old values,
        so the size of a change is only known a little later).
        """
        out = []
        adwin, pending = self.adwin, self.pending
        t1, t2, seen = self.total, self.total_sq, self.seen
        for t, v in values:
            before, width = adwin.estimation, adwin.width
            adwin.update(v)
            t1 += v
            t2 += v * v
            if pending:
                self._measure(v, t1, t2, seen + 1)
            if adwin.drift_detected:
                d = Detection(seen, t, before, adwin.estimation, int(width))
                out.append(d)
                pending.append([d, 0, 0.0])
            seen += 1
        self.total, self.total_sq, self.seen = t1, t2, seen
        return out

    def _measure(self, v: float, t1: float, t2: float, n_seen: int) -> None:
        for p in self.pending:
            p[1] += 1
            p[2] += v
        while self.pending and self.pending[0][1] >= self.confirm_events:
            d, n, total = self.pending.pop(0)
            mean = t1 / n_seen
            sd = math.sqrt(max(t2 / n_seen - mean * mean, 0.0)) or 1.0
            d.effect_sd = abs(total / n - d.mean_before) / sd
            self.confirmed.append(d)


def numeric_signals(spec: ModelSpec) -> tuple[tuple[str, float, float], ...]:
    """(signal, low, high) for every numeric signal: the spec's ranges bound the features."""
    inf = math.inf
    feats = tuple((f.name, *(f.range or (-inf, inf))) for f in spec.features if f.type == "numeric")
    return feats + (("prediction.score", -inf, inf), ("latency_ms", 0.0, inf))


def series_values(
    row: Mapping[str, Any], signals: tuple[tuple[str, float, float], ...]
) -> Iterator[tuple[str, float]]:
    """The values ADWIN sees. Out-of-range values are data-quality issues (flagged on the row,
    counted by the quality monitor), not distribution change: they are not fed."""
    features = orjson.loads(row["features"])
    for s, lo, hi in signals:
        if s == "prediction.score":
            v = row.get("prediction_score")
        elif s == "latency_ms":
            v = row.get("latency_ms")
            if v is not None:  # latencies are heavy-tailed: ADWIN's bound holds on the log scale
                yield s, math.log1p(v)
            continue
        else:
            v = features.get(s)
        if v.__class__ in (float, int) and lo <= v <= hi:
            yield s, float(v)


def _detection_event(key: str, d: Detection, delta: float, start_us: int) -> dict:
    model, version, signal = key.split("\x00")
    kind = {
        "prediction.score": "prediction_drift",
        "latency_ms": "latency_regression",
        "prediction.error": "concept_drift",
    }.get(signal, "feature_drift")
    return anomaly_event(
        model=model,
        version=version,
        signal=signal,
        detector="adwin",
        kind=kind,
        statistic=abs(d.mean_after - d.mean_before),
        threshold=delta,
        severity="warning",
        window_start=from_micros(start_us),
        window_end=from_micros(d.time_us),
        sample_size=d.width_before,
        reference={"mean": d.mean_before},
        current={"mean": d.mean_after, "index": d.index, "effect_sd": round(d.effect_sd, 4)},
    )


@dataclasses.dataclass(frozen=True)
class AdwinSettings:
    delta: float
    clock: int
    cooldown_s: float
    min_effect_sd: float = 0.2
    confirm_events: int = 200


class _SeriesValuesFn(beam.DoFn):
    """Rows or row batches -> ((model, version, signal) key, [(t_us, value), ...]) per batch."""

    def __init__(self, settings: Mapping[str, AdwinSettings], signals: Mapping[str, tuple]) -> None:
        self.settings, self.signals = dict(settings), dict(signals)

    def process(self, element) -> Iterator[tuple[str, list[tuple[int, float]]]]:
        per: dict[str, list[tuple[int, float]]] = {}
        for row in element if isinstance(element, list) else (element,):
            signals = self.signals.get(row["model_name"])
            if signals is None:
                continue
            prefix = f"{row['model_name']}\x00{row['model_version']}\x00"
            t = row["event_time"]
            for s, v in series_values(row, signals):
                per.setdefault(prefix + s, []).append((t, v))
        yield from per.items()


class _AdwinStateFn(beam.DoFn):
    """Streams: the detector in Beam state, one read/write per key and batch."""

    STATE = ReadModifyWriteStateSpec("adwin", PickleCoder())

    def __init__(self, settings: Mapping[str, AdwinSettings]) -> None:
        self.settings = dict(settings)

    def process(self, element, state=beam.DoFn.StateParam(STATE)) -> Iterator[dict]:
        key, batches = element
        cfg = self.settings[key.split("\x00", 1)[0]]
        values = sorted(v for batch in batches for v in batch)  # event-time order within the batch
        series: AdwinSeries = state.read() or AdwinSeries(cfg.delta, cfg.clock, cfg.confirm_events)
        yield from _emit(key, series, values, cfg)
        state.write(series)


def _emit(
    key: str, series: AdwinSeries, values: list[tuple[int, float]], cfg: AdwinSettings
) -> Iterator[dict]:
    start = values[0][0] if values else 0
    for _ in series.feed(values):
        counter("adwin_detections").inc()
    confirmed, series.confirmed = series.confirmed, []
    for d in confirmed:
        if d.effect_sd < cfg.min_effect_sd:  # a real but negligible change: not worth a page
            counter("adwin_detections_below_min_effect").inc()
            continue
        if series.last_emitted_us is not None and d.time_us - series.last_emitted_us < cfg.cooldown_s * 1e6:
            continue
        series.last_emitted_us = d.time_us
        yield _detection_event(key, d, cfg.delta, start)


def _replay_series(element, settings: Mapping[str, AdwinSettings]) -> Iterator[dict]:
    key, batches = element
    cfg = settings[key.split("\x00", 1)[0]]
    values = sorted(v for batch in batches for v in batch)  # the whole series, in event-time order
    yield from _emit(key, AdwinSeries(cfg.delta, cfg.clock, cfg.confirm_events), values, cfg)


class MonitorAdwin(beam.PTransform):
    """Audit rows or row batches -> ADWIN anomaly CloudEvents (detector ``adwin``)."""

    def __init__(self, specs: Mapping[str, ModelSpec], bounded: bool) -> None:
        super().__init__()
        self.settings = {
            n: AdwinSettings(
                s.monitors.adwin.delta,
                s.monitors.adwin.clock,
                float(s.monitors.cooldown_seconds),
                s.monitors.adwin.min_effect_sd,
                s.monitors.adwin.confirm_events,
            )
            for n, s in specs.items()
        }
        self.signals = {n: numeric_signals(s) for n, s in specs.items()}
        self.bounded = bounded

    def expand(self, rows) -> beam.PCollection:
        parts = rows if isinstance(rows, tuple | list) else (rows,)
        values = [
            pc | f"SeriesValues{i}" >> beam.ParDo(_SeriesValuesFn(self.settings, self.signals))
            for i, pc in enumerate(parts)
        ]
        merged = values[0] if len(values) == 1 else values | "AllSeries" >> beam.Flatten()
        return merged | "Detect" >> AdwinDetect(self.settings, self.bounded)


class AdwinDetect(beam.PTransform):
    """(series key "model\x00version\x00signal", [(t_us, value), ...]) -> anomaly CloudEvents.

    Replays: the whole series grouped and fed in event-time order. Streams: each series is
    batched every 5 s of processing time and fed, event-time sorted within the batch, to the
    detector kept in Beam state (one state read/write per key and batch). Values of a batch
    that are older than values already fed are fed late: ADWIN sees arrival order across
    batches, so out-of-order arrival beyond one batch blurs, but never drops, a change.
    """

    def __init__(self, settings: Mapping[str, AdwinSettings], bounded: bool) -> None:
        super().__init__()
        self.settings, self.bounded = dict(settings), bounded

    def expand(self, series) -> beam.PCollection:
        if self.bounded:
            grouped = series | "GroupSeries" >> beam.GroupByKey()
            return grouped | "Adwin" >> beam.FlatMap(_replay_series, self.settings)
        grouped = (
            series
            | "BatchEvery5s"
            >> beam.WindowInto(
                window.GlobalWindows(),
                trigger=trigger.Repeatedly(trigger.AfterProcessingTime(5)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
            )
            | "GroupSeries" >> beam.GroupByKey()
        )
        return grouped | "Adwin" >> beam.ParDo(_AdwinStateFn(self.settings))
