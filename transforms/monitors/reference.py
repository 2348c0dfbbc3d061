"""Reference distributions per model version, from a sample of valid events (JSON file).

Signals: every numeric and categorical feature of the spec, ``prediction.score``,
``prediction.value``, ``prediction.label`` and ``latency_ms``; plus each spec feature's
missing-value rate. A seasonal reference (``seasonality`` daily / weekly) also holds a
profile per hour of day / of week, built from the reference events in that hour: a window is
compared with the profiles of the hours its events fall in. The monitors compare each
event-time window against this; without a reference file they warm up on the first N valid
events of the version.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from schemas import fsio
from schemas.specs import ModelSpec
from transforms.monitors.settings import SLOTS, ModelReference, drift_settings, season_slot
from transforms.monitors.stats import (
    CategoricalReference,
    Reference,
    categorical_reference,
    numeric_reference,
    reference_from_json,
)

FORMAT = "predaudit.reference/v1"
#: a seasonal slot needs this many values of a signal for its own profile (else: the overall one)
MIN_PROFILE_VALUES = 50

__all__ = ["FORMAT", "build_reference", "drift_settings", "load_reference", "model_references"]


def _feature_values(features: Mapping[str, Any], spec: ModelSpec) -> Iterable[tuple[str, str, object]]:
    for f in spec.features:
        v = features.get(f.name)
        if v is None:
            continue
        if f.type == "numeric" and v.__class__ in (float, int):
            yield f.name, "numeric", v
        elif f.type == "categorical":
            yield f.name, "categorical", v


def signal_values(ev: Any, spec: ModelSpec) -> Iterable[tuple[str, str, object]]:
    """(signal, kind, value) for one decoded PredictionEvent; missing values are skipped."""
    yield from _feature_values(ev.features, spec)
    pred = ev.prediction
    if pred.score is not None:
        yield "prediction.score", "numeric", pred.score
    if pred.value is not None:
        yield "prediction.value", "numeric", pred.value
    if pred.label is not None:
        yield "prediction.label", "categorical", str(pred.label)
    if ev.latency_ms is not None:
        yield "latency_ms", "numeric", ev.latency_ms


def _event_us(ev: Any) -> int:
    from schemas.decode import parse_timestamp
    from transforms.rows import to_micros

    return to_micros(parse_timestamp(ev.event_time))


class _Sample:
    """Values per signal (overall and per seasonal slot) and missing counts per feature."""

    def __init__(self, spec: ModelSpec, seasonality: str) -> None:
        if seasonality not in SLOTS:
            raise ValueError(f"seasonality {seasonality!r}: use one of {', '.join(SLOTS)}")
        self.spec, self.seasonality = spec, seasonality
        self.values: dict[str, list] = defaultdict(list)
        self.slots: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.kinds: dict[str, str] = {}
        self.missing: dict[str, int] = dict.fromkeys((f.name for f in spec.features), 0)
        self.n = 0

    def add(self, features: Mapping[str, Any], signals: Iterable[tuple[str, str, object]], t_us: int) -> None:
        self.n += 1
        for name in self.missing:
            if features.get(name) is None:
                self.missing[name] += 1
        slot = self.slots[season_slot(t_us, self.seasonality)] if self.seasonality != "none" else None
        for signal, kind, v in signals:
            self.values[signal].append(v)
            self.kinds[signal] = kind
            if slot is not None:
                slot[signal].append(v)

    def signals(self, bins: int, top_k: int) -> dict[str, Reference]:
        seasonal = self.seasonality != "none"
        return {
            s: numeric_reference(v, bins, keep_ties=seasonal)
            if self.kinds[s] == "numeric"
            else categorical_reference(v, top_k)
            for s, v in sorted(self.values.items())
        }

    def profiles(self, overall: Mapping[str, Reference], bins: int) -> dict[int, dict[str, Reference]]:
        out: dict[int, dict[str, Reference]] = {}
        for slot, per in sorted(self.slots.items()):
            refs: dict[str, Reference] = {}
            for s, v in sorted(per.items()):
                if len(v) < MIN_PROFILE_VALUES:
                    continue
                base = overall[s]
                if isinstance(base, CategoricalReference):  # the overall categories, slot proportions
                    counts = base.bins(v)
                    refs[s] = CategoricalReference(
                        base.categories, tuple(float(c) / len(v) for c in counts), len(v)
                    )
                else:
                    refs[s] = numeric_reference(v, bins, keep_ties=True)
            out[slot] = refs
        return out

    def missing_rates(self) -> dict[str, float]:
        return {f: c / self.n for f, c in sorted(self.missing.items())} if self.n else {}


def build_reference(
    events: Iterable[Any],
    spec: ModelSpec,
    version: str,
    bins: int = 10,
    top_k: int = 20,
    seasonality: str = "none",
) -> dict:
    """The reference document from decoded events (``seasonality``: none | daily | weekly)."""
    sample = _Sample(spec, seasonality)
    for ev in events:
        sample.add(ev.features, signal_values(ev, spec), _event_us(ev) if seasonality != "none" else 0)
    if sample.n == 0:
        raise ValueError(
            f"no valid events of model {spec.name!r} version {version!r} to build a reference from"
        )
    signals = sample.signals(bins, top_k)
    doc = {
        "format": FORMAT,
        "model": spec.name,
        "version": version,
        "events": sample.n,
        "bins": bins,
        "top_k": top_k,
        "signals": {s: r.to_json() for s, r in signals.items()},
        "missing": sample.missing_rates(),
        "seasonality": seasonality,
    }
    if seasonality != "none":
        doc["profiles"] = {
            str(slot): {s: r.to_json() for s, r in refs.items()}
            for slot, refs in sample.profiles(signals, bins).items()
        }
    return doc


def load_reference(doc: dict) -> dict[str, Reference]:
    if doc.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} document (format={doc.get('format')!r})")
    return {s: reference_from_json(r) for s, r in doc["signals"].items()}


def reference_from_doc(doc: dict, spec: ModelSpec) -> ModelReference:
    """A ``ModelReference`` from a reference document (older documents: no missing rates,
    no seasonality)."""
    return ModelReference(
        spec.name,
        doc["version"],
        load_reference(doc),
        drift_settings(spec),
        missing=dict(doc.get("missing", {})),
        events=int(doc.get("events", 0)),
        baseline="reference",
        seasonality=doc.get("seasonality", "none"),
        profiles={
            int(slot): {s: reference_from_json(r) for s, r in refs.items()}
            for slot, refs in doc.get("profiles", {}).items()
        },
    )


def model_references(specs: Mapping[str, ModelSpec], references_dir: str = "") -> dict[str, ModelReference]:
    """The reference per model: ``<references_dir>/<model>.json`` or the spec's ``monitors.reference``.

    Models without one are monitored against a warm-up baseline (``transforms.monitors.drift``).
    """
    out = {}
    for name, spec in specs.items():
        candidates = [fsio.join(references_dir, f"{name}.json")] if references_dir else []
        if spec.monitors.reference:
            candidates.append(spec.monitors.reference)
        path = next((c for c in candidates if fsio.is_file(c)), None)
        if path is None:
            continue
        doc = orjson.loads(fsio.read_bytes(path))
        if doc.get("model") != name:
            raise ValueError(f"{path}: reference is for model {doc.get('model')!r}, not {name!r}")
        out[name] = reference_from_doc(doc, spec)
    return out


def row_signal_values(row: Mapping[str, Any], spec: ModelSpec) -> Iterable[tuple[str, str, object]]:
    """``signal_values`` for an audit row (what the warm-up baseline sees).

    >>> from schemas.specs import parse_spec
    >>> spec = parse_spec("name: m\\nfeatures: [{name: a, type: numeric}, {name: c, type: categorical}]")
    >>> sorted(row_signal_values({"features": '{"a": 1.5, "c": "x"}', "prediction_score": 0.2,
    ...     "prediction_value": None, "prediction_label": None, "latency_ms": 3.0}, spec))
    [('a', 'numeric', 1.5), ('c', 'categorical', 'x'), ('latency_ms', 'numeric', 3.0), ('prediction.score', 'numeric', 0.2)]
    """
    yield from _feature_values(orjson.loads(row["features"]), spec)
    yield from _row_predictions(row)


def _row_predictions(row: Mapping[str, Any]) -> Iterable[tuple[str, str, object]]:
    from transforms.monitors.signals import ROW_COLUMNS

    for signal, (col, kind) in ROW_COLUMNS.items():
        if row.get(col) is not None:
            yield signal, kind, row[col]


def warmup_baseline(
    rows: Iterable[Mapping[str, Any]], spec: ModelSpec, version: str, bins: int = 10, top_k: int = 20
) -> tuple[dict[str, Reference], dict[str, float], int]:
    """Signals, missing rates and size of a baseline from the first rows of a version."""
    sample = _Sample(spec, "none")
    for row in rows:
        features = orjson.loads(row["features"])
        sample.add(features, (*_feature_values(features, spec), *_row_predictions(row)), 0)
    return sample.signals(bins, top_k), sample.missing_rates(), sample.n


def warmup_reference(
    rows: Iterable[Mapping[str, Any]], spec: ModelSpec, version: str, bins: int = 10, top_k: int = 20
) -> dict[str, Reference]:
    """A reference from the first rows of a version (the warm-up baseline)."""
    return warmup_baseline(rows, spec, version, bins, top_k)[0]
