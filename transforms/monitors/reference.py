"""Reference distributions per model version, from a sample of valid events (JSON file).

Signals: every numeric and categorical feature of the spec, ``prediction.score``,
``prediction.value``, ``prediction.label`` and ``latency_ms``. The monitors compare each
event-time window against this; without a reference file they warm up on the first N
valid events of the version.
"""

from __future__ import annotations

import pathlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from schemas.specs import ModelSpec
from transforms.monitors.stats import Reference, categorical_reference, numeric_reference, reference_from_json

FORMAT = "predaudit.reference/v1"


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


def build_reference(
    events: Iterable[Any], spec: ModelSpec, version: str, bins: int = 10, top_k: int = 20
) -> dict:
    values: dict[str, list] = defaultdict(list)
    kinds: dict[str, str] = {}
    n = 0
    for ev in events:
        n += 1
        for signal, kind, v in signal_values(ev, spec):
            values[signal].append(v)
            kinds[signal] = kind
    if n == 0:
        raise ValueError(
            f"no valid events of model {spec.name!r} version {version!r} to build a reference from"
        )
    signals: dict[str, Reference] = {
        s: numeric_reference(v, bins) if kinds[s] == "numeric" else categorical_reference(v, top_k)
        for s, v in sorted(values.items())
    }
    return {
        "format": FORMAT,
        "model": spec.name,
        "version": version,
        "events": n,
        "bins": bins,
        "top_k": top_k,
        "signals": {s: r.to_json() for s, r in signals.items()},
    }


def load_reference(doc: dict) -> dict[str, Reference]:
    if doc.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} document (format={doc.get('format')!r})")
    return {s: reference_from_json(r) for s, r in doc["signals"].items()}


def model_references(specs: Mapping[str, ModelSpec], references_dir: str = "") -> dict[str, Any]:
    """The reference per model: ``<references_dir>/<model>.json`` or the spec's ``monitors.reference``.

    Models without one are monitored against a warm-up baseline (``transforms.monitors.drift``).
    """
    from transforms.monitors.drift import ModelReference

    out = {}
    for name, spec in specs.items():
        candidates = [pathlib.Path(references_dir) / f"{name}.json"] if references_dir else []
        if spec.monitors.reference:
            candidates.append(pathlib.Path(spec.monitors.reference))
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            continue
        doc = orjson.loads(path.read_bytes())
        if doc.get("model") != name:
            raise ValueError(f"{path}: reference is for model {doc.get('model')!r}, not {name!r}")
        out[name] = ModelReference(name, doc["version"], load_reference(doc), drift_settings(spec))
    return out


def drift_settings(spec: ModelSpec) -> Any:
    """The monitors' thresholds from a spec's ``monitors`` section."""
    from transforms.monitors.drift import DriftSettings

    m = spec.monitors
    return DriftSettings(
        m.min_sample_size,
        m.psi.epsilon,
        m.psi.warning,
        m.psi.critical,
        float(m.cooldown_seconds),
        m.latency_slo_ms,
        tuple(
            (k, getattr(m, k).warning, getattr(m, k).critical)
            for k in ("latency_over_slo", "error_rate", "quality_issue_rate")
        ),
        (m.traffic_drop.warning, m.traffic_drop.critical),
    )


def row_signal_values(row: Mapping[str, Any], spec: ModelSpec) -> Iterable[tuple[str, str, object]]:
    """``signal_values`` for an audit row (what the warm-up baseline sees).

    >>> from schemas.specs import parse_spec
    >>> spec = parse_spec("name: m\\nfeatures: [{name: a, type: numeric}, {name: c, type: categorical}]")
    >>> sorted(row_signal_values({"features": '{"a": 1.5, "c": "x"}', "prediction_score": 0.2,
    ...     "prediction_value": None, "prediction_label": None, "latency_ms": 3.0}, spec))
    [('a', 'numeric', 1.5), ('c', 'categorical', 'x'), ('latency_ms', 'numeric', 3.0), ('prediction.score', 'numeric', 0.2)]
    """
    yield from _feature_values(orjson.loads(row["features"]), spec)
    for signal, col, kind in (
        ("prediction.score", "prediction_score", "numeric"),
        ("prediction.value", "prediction_value", "numeric"),
        ("prediction.label", "prediction_label", "categorical"),
        ("latency_ms", "latency_ms", "numeric"),
    ):
        if row.get(col) is not None:
            yield signal, kind, row[col]


def warmup_reference(
    rows: Iterable[Mapping[str, Any]], spec: ModelSpec, version: str, bins: int = 10, top_k: int = 20
) -> dict[str, Reference]:
    """A reference from the first rows of a version (the warm-up baseline)."""
    values: dict[str, list] = defaultdict(list)
    kinds: dict[str, str] = {}
    for row in rows:
        for signal, kind, v in row_signal_values(row, spec):
            values[signal].append(v)
            kinds[signal] = kind
    return {
        s: numeric_reference(v, bins) if kinds[s] == "numeric" else categorical_reference(v, top_k)
        for s, v in sorted(values.items())
    }
