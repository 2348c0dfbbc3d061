"""ADWIN (river) and CUSUM per (model, version, signal): change detection on each numeric signal.

With a reference, a numeric feature or score is fed as its normal score under the reference
CDF (``NumericReference.standardize``, the rank transform; a seasonal reference's profile of
the value's hour), so heavy tails and counts look like N(0, 1) and a detection's size is
measured against the reference: ``effect_sd`` = |mean of the ``confirm_events`` values after
the detection| in reference standard deviations. ADWIN compares the stream with its own
recent past (fast on steps); CUSUM (two-sided, allowance k = ``min_effect_sd`` / 2,
decision interval h) accumulates the standardized excess over the reference and catches
slow ramps that every ADWIN cut sees as small. Latency is fed on a log scale (no reference
transform); without a reference, raw values are fed and the effect is measured in the
series' own sd against ADWIN's mean before the cut.

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
from transforms.monitors.settings import SLOTS, ModelReference, season_slot
from transforms.monitors.signals import ROW_COLUMN
from transforms.monitors.stats import NumericReference
from transforms.rows import from_micros


@dataclasses.dataclass
class Detection:
    index: int  # position in the series (0-based, over everything fed so far)
    time_us: int
    mean_before: float
    mean_after: float
    width_before: int
    #: the change's size in standard deviations (of the reference when standardized)
    effect_sd: float = 0.0
    detector: str = "adwin"
    #: CUSUM: the cumulative sum at the alarm
    statistic: float = 0.0


class AdwinSeries:
    """One signal's detector plus its position and last emitted detection.

    >>> s = AdwinSeries(delta=0.002, clock=32)
    >>> [d.index for d in s.feed([(i, 0.0) for i in range(1000)] + [(1000 + i, 5.0) for i in range(200)])]
    [1023]
    """

    def __init__(
        self,
        delta: float,
        clock: int,
        confirm_events: int = 200,
        standardized: bool = False,
        cusum: tuple[float, float] | None = None,
    ) -> None:
        """``standardized``: values are reference normal scores (effects are measured
        against the reference mean 0, sd 1); ``cusum``: (k, h) runs a two-sided CUSUM too."""
        self.adwin = drift.ADWIN(delta=delta, clock=clock)
        self.seen = 0
        self.last_emitted_us: int | None = None
        self.last_cusum_us: int | None = None
        self.total = self.total_sq = 0.0
        self.confirm_events = confirm_events
        self.pending: list[list] = []  # [detection, values after it, their sum]
        self.confirmed: list[Detection] = []
        self.standardized = standardized
        self.cusum = cusum
        self.up = self.down = 0.0  # CUSUM sums
        #: (values, their sum) since each sum was last 0
        self.up_run: tuple[int, float] = (0, 0.0)
        self.down_run: tuple[int, float] = (0, 0.0)

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
        # two-sided CUSUM (inlined: it runs per value): an alarm when either sum passes h;
        # its effect is the mean of that side's values since its sum was last 0
        cusum = self.cusum
        k, h = cusum if cusum is not None else (0.0, 0.0)
        up, down = self.up, self.down
        (un, us), (dn, ds) = self.up_run, self.down_run
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
            if cusum is not None:
                up += v - k
                if up > 0.0:
                    un, us = un + 1, us + v
                else:
                    up, un, us = 0.0, 0, 0.0
                down -= v + k
                if down > 0.0:
                    dn, ds = dn + 1, ds + v
                else:
                    down, dn, ds = 0.0, 0, 0.0
                if up > h or down > h:
                    top, run, total = (up, un, us) if up >= down else (down, dn, ds)
                    mean = total / run
                    self.confirmed.append(Detection(seen, t, 0.0, mean, run, abs(mean), "cusum", top))
                    up = down = us = ds = 0.0
                    un = dn = 0
            seen += 1
        self.total, self.total_sq, self.seen = t1, t2, seen
        self.up, self.down, self.up_run, self.down_run = up, down, (un, us), (dn, ds)
        return out

    def _measure(self, v: float, t1: float, t2: float, n_seen: int) -> None:
        for p in self.pending:
            p[1] += 1
            p[2] += v
        while self.pending and self.pending[0][1] >= self.confirm_events:
            d, n, total = self.pending.pop(0)
            if self.standardized:  # against the reference: mean 0, sd 1
                d.effect_sd = abs(total / n)
            else:
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
    row: Mapping[str, Any],
    signals: tuple[tuple[str, float, float], ...],
    ref: ModelReference | None = None,
) -> Iterator[tuple[str, float]]:
    """The values ADWIN sees. Out-of-range values are data-quality issues (flagged on the row,
    counted by the quality monitor), not distribution change: they are not fed. With a
    reference, a signal it has quantiles for is fed as its standardized normal score.

    >>> from transforms.monitors.settings import DriftSettings
    >>> from transforms.monitors.stats import numeric_reference
    >>> ref = ModelReference("m", "*", {"a": numeric_reference([float(i) for i in range(100)])}, DriftSettings())
    >>> row = {"features": '{"a": 49.5, "b": 3}', "latency_ms": 0.0}
    >>> [(s, abs(round(v, 1))) for s, v in series_values(row, (("a", 0, 100), ("b", 0, 9), ("latency_ms", 0, 1e9)), ref)]
    [('a', 0.0), ('b', 3.0), ('latency_ms', 0.0)]
    """
    features = orjson.loads(row["features"])
    refs = ref.signals if ref is not None else {}
    near, w = None, 0.0
    if ref is not None and ref.profiles:
        # between hour centres the score blends the two nearest hours' profiles (linear in
        # time), so a cycle's slope within an hour is not read as drift
        t = row["event_time"]
        slot = season_slot(t, ref.seasonality)
        f = (t % 3_600_000_000) / 3_600_000_000 - 0.5
        slots = SLOTS[ref.seasonality]
        near = ref.profiles.get((slot + (1 if f > 0 else -1)) % slots)
        refs, w = ref.profiles.get(slot, refs), abs(f)
    for s, lo, hi in signals:
        col = ROW_COLUMN.get(s)  # signal_value, inlined: this runs per row and signal
        v = row.get(col) if col is not None else features.get(s)
        if s == "latency_ms":
            if v is not None:  # latencies are heavy-tailed: ADWIN's bound holds on the log scale
                yield s, math.log1p(v)
            continue
        if v.__class__ in (float, int) and lo <= v <= hi:
            r = refs.get(s)
            if isinstance(r, NumericReference) and r.quantiles:
                z = r.standardize(v)
                other = near.get(s) if near is not None else None
                if isinstance(other, NumericReference) and other.quantiles:
                    z = (1.0 - w) * z + w * other.standardize(v)
                yield s, z
            else:
                yield s, float(v)


def standardized_signals(ref: ModelReference | None) -> frozenset[str]:
    """The signals a reference standardizes (numeric ones with quantiles; not latency)."""
    if ref is None:
        return frozenset()
    return frozenset(
        s
        for s, r in ref.signals.items()
        if isinstance(r, NumericReference) and r.quantiles and s != "latency_ms"
    )


def _detection_event(key: str, d: Detection, cfg: AdwinSettings, start_us: int) -> dict:
    """An ADWIN / CUSUM anomaly: ``statistic`` is the change in standard deviations and
    ``threshold`` the smallest change that alerts (ADWIN), or the CUSUM sum and its decision
    interval h (both in standard deviations)."""
    model, version, signal = key.split("\x00")
    kind = {
        "prediction.score": "prediction_drift",
        "latency_ms": "latency_regression",
        "prediction.error": "concept_drift",
    }.get(signal, "feature_drift")
    against = "reference" if signal in cfg.standardized else "series"
    if d.detector == "cusum":
        statistic, threshold = round(d.statistic, 4), cfg.cusum_h
        reference = {"mean_sd": 0.0, "against": against, "k": cfg.cusum_k}
        current = {"mean_sd": round(d.mean_after, 4), "effect_sd": round(d.effect_sd, 4), "run": d.width_before,
                   "index": d.index}  # fmt: skip
    else:
        statistic, threshold = round(d.effect_sd, 4), cfg.min_effect_sd
        reference = {"mean": d.mean_before, "against": against, "delta": cfg.delta}
        current = {"mean": d.mean_after, "index": d.index, "effect_sd": round(d.effect_sd, 4)}
    return anomaly_event(
        model=model,
        version=version,
        signal=signal,
        detector=d.detector,
        kind=kind,
        statistic=statistic,
        threshold=threshold,
        severity="warning",
        window_start=from_micros(start_us),
        window_end=from_micros(d.time_us),
        sample_size=d.width_before,
        reference=reference,
        current=current,
    )


@dataclasses.dataclass(frozen=True)
class AdwinSettings:
    delta: float
    clock: int
    cooldown_s: float
    min_effect_sd: float = 0.2
    confirm_events: int = 200
    #: signals fed as reference normal scores (effects against the reference; CUSUM runs)
    standardized: frozenset[str] = frozenset()
    cusum_k: float = 0.1
    cusum_h: float = 100.0

    def series(self, signal: str) -> AdwinSeries:
        std = signal in self.standardized
        cusum = (self.cusum_k, self.cusum_h) if std else None
        return AdwinSeries(self.delta, self.clock, self.confirm_events, std, cusum)


def adwin_settings(spec: ModelSpec, ref: ModelReference | None = None) -> AdwinSettings:
    """The sequential detectors' settings from a spec (and which signals its reference
    standardizes); the one spec -> settings translation of ADWIN / CUSUM."""
    a = spec.monitors.adwin
    return AdwinSettings(
        a.delta,
        a.clock,
        float(spec.monitors.cooldown_seconds),
        a.min_effect_sd,
        a.confirm_events,
        standardized_signals(ref),
        getattr(a, "cusum_k", a.min_effect_sd / 2),
        getattr(a, "cusum_h", 100.0),
    )


class _SeriesValuesFn(beam.DoFn):
    """Rows or row batches -> ((model, version, signal) key, [(t_us, value), ...]) per batch."""

    def __init__(
        self,
        settings: Mapping[str, AdwinSettings],
        signals: Mapping[str, tuple],
        references: Mapping[str, ModelReference] | None = None,
    ) -> None:
        self.settings, self.signals = dict(settings), dict(signals)
        self.references = dict(references or {})

    def process(self, element) -> Iterator[tuple[str, list[tuple[int, float]]]]:
        per: dict[str, list[tuple[int, float]]] = {}
        for row in element if isinstance(element, list) else (element,):
            model = row["model_name"]
            signals = self.signals.get(model)
            if signals is None:
                continue
            ref = self.references.get(model)
            if ref is not None and not ref.applies_to(row["model_version"]):
                ref = None
            prefix = f"{model}\x00{row['model_version']}\x00"
            t = row["event_time"]
            for s, v in series_values(row, signals, ref):
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
        series: AdwinSeries = state.read() or cfg.series(key.rsplit("\x00", 1)[1])
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
        if d.detector == "cusum":
            counter("cusum_detections").inc()
            if series.last_cusum_us is not None and d.time_us - series.last_cusum_us < cfg.cooldown_s * 1e6:
                continue
            series.last_cusum_us = d.time_us
            yield _detection_event(key, d, cfg, start)
            continue
        if d.effect_sd < cfg.min_effect_sd:  # a real but negligible change: not worth a page
            counter("adwin_detections_below_min_effect").inc()
            continue
        if series.last_emitted_us is not None and d.time_us - series.last_emitted_us < cfg.cooldown_s * 1e6:
            continue
        series.last_emitted_us = d.time_us
        yield _detection_event(key, d, cfg, start)


def _replay_series(element, settings: Mapping[str, AdwinSettings]) -> Iterator[dict]:
    key, batches = element
    cfg = settings[key.split("\x00", 1)[0]]
    values = sorted(v for batch in batches for v in batch)  # the whole series, in event-time order
    yield from _emit(key, cfg.series(key.rsplit("\x00", 1)[1]), values, cfg)


class MonitorAdwin(beam.PTransform):
    """Audit rows or row batches -> ADWIN / CUSUM anomaly CloudEvents (detectors ``adwin``,
    ``cusum``). ``references``: model -> ``ModelReference`` (its numeric signals are fed
    standardized; without it, raw values and ADWIN only)."""

    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        bounded: bool,
        references: Mapping[str, ModelReference] | None = None,
    ) -> None:
        super().__init__()
        self.references = dict(references or {})
        self.settings = {n: adwin_settings(s, self.references.get(n)) for n, s in specs.items()}
        self.signals = {n: numeric_signals(s) for n, s in specs.items()}
        self.bounded = bounded

    def expand(self, rows) -> beam.PCollection:
        parts = rows if isinstance(rows, tuple | list) else (rows,)
        values = [
            pc
            | f"SeriesValues{i}"
            >> beam.ParDo(_SeriesValuesFn(self.settings, self.signals, self.references)).with_output_types(
                tuple[str, Any]
            )
            for i, pc in enumerate(parts)
        ]
        merged = (
            values[0]
            if len(values) == 1
            else values | "AllSeries" >> beam.Flatten().with_output_types(tuple[str, Any])
        )
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
