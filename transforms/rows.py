"""Audit-row encoding: a validated event -> one immutable row of ``schemas/tables.py``.

Pure functions (no Beam): the DoFns in ``transforms/`` are thin wrappers around them.
Timestamps are integer microseconds since the epoch (UTC): cheap for Beam's coders to move
between stages, the native tick of ClickHouse DateTime64(6); the BigQuery sink renders them
as RFC 3339.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import orjson

from schemas.specs import PiiRedactor

PIPELINE_VERSION = "0.1.0"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_US = dt.timedelta(microseconds=1)


def to_micros(t: dt.datetime | None) -> int | None:
    """Epoch microseconds of an aware datetime (exact, no float rounding).

    >>> to_micros(dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc))
    1772366400123456
    """
    return None if t is None else (t - _EPOCH) // _US


def from_micros(us: int) -> dt.datetime:
    """
    >>> from_micros(1772366400123456).isoformat()
    '2026-03-01T12:00:00.123456+00:00'
    """
    return _EPOCH + dt.timedelta(microseconds=us)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def prediction_row(
    ev: Any,
    event_time: dt.datetime,
    raw: bytes,
    *,
    ingest_time: dt.datetime,
    quality_issues: list[str] | None = None,
    redactor: PiiRedactor | None = None,
    message_id: str | None = None,
    publish_time: dt.datetime | None = None,
    pipeline_version: str = PIPELINE_VERSION,
) -> dict[str, Any]:
    """The ``predictions`` row for a decoded PredictionEvent; PII rules applied first.

    >>> from schemas import Decoders, REFERENCE_EVENT
    >>> ev, ts = Decoders().prediction(REFERENCE_EVENT)
    >>> row = prediction_row(ev, ts, REFERENCE_EVENT, ingest_time=ts)
    >>> row["model_name"], row["prediction_label"], row["quality_issues"]
    ('fraud', 'legit', [])
    """
    features = ev.features if redactor is None else redactor.apply(ev.features)
    pred = ev.prediction
    label = pred.label
    return {
        "event_id": ev.event_id,
        "event_time": to_micros(event_time),
        "model_name": ev.model.name,
        "model_version": ev.model.version,
        "schema_version": ev.schema_version,
        "request_id": ev.request_id,
        "features": orjson.dumps(features).decode(),
        "prediction_label": None if label is None else str(label),
        "prediction_score": pred.score,
        "prediction_scores": _json(pred.scores),
        "prediction_value": pred.value,
        "latency_ms": ev.latency_ms,
        "status": ev.status,
        "metadata": _json(ev.metadata),
        "extensions": _json(getattr(ev, "extensions", None)),
        "quality_issues": quality_issues or [],
        "message_id": message_id,
        "publish_time": to_micros(publish_time),
        "ingest_time": to_micros(ingest_time),
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
        "pipeline_version": pipeline_version,
    }


def label_row(
    ev: Any,
    label_time: dt.datetime,
    raw: bytes,
    *,
    ingest_time: dt.datetime,
    message_id: str | None = None,
    publish_time: dt.datetime | None = None,
    pipeline_version: str = PIPELINE_VERSION,
) -> dict[str, Any]:
    """The ``labels`` row for a decoded LabelEvent.

    >>> from schemas import Decoders
    >>> raw = b'{"schema_version":"1","event_id":"evt-00000001","label_time":"2026-01-01T00:00:00Z","label":2}'
    >>> ev, ts = Decoders().label(raw)
    >>> r = label_row(ev, ts, raw, ingest_time=ts)
    >>> r["label"], r["label_numeric"]
    ('2', 2.0)
    """
    label = ev.label
    numeric = float(label) if isinstance(label, int | float) and not isinstance(label, bool) else None
    return {
        "event_id": ev.event_id,
        "label_time": to_micros(label_time),
        "label": label if isinstance(label, str) else orjson.dumps(label).decode(),
        "label_numeric": numeric,
        "model_name": ev.model.name if ev.model is not None else None,
        "model_version": ev.model.version if ev.model is not None else None,
        "schema_version": ev.schema_version,
        "message_id": message_id,
        "publish_time": to_micros(publish_time),
        "ingest_time": to_micros(ingest_time),
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
        "pipeline_version": pipeline_version,
    }
