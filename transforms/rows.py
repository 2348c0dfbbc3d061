"""Audit-row encoding: a validated event -> one immutable row of ``schemas/tables.py``.

Pure functions (no Beam): the DoFns in ``transforms/`` are thin wrappers around them.
Timestamps are integer microseconds since the epoch (UTC): cheap for Beam's coders to move
between stages, the native tick of ClickHouse DateTime64(6); the BigQuery sink renders them
as RFC 3339.
"""

from __future__ import annotations

import datetime as dt
import functools
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


def label_text(label: str | int | float | bool) -> str:
    """A class label as stored: strings as they are, numbers and booleans as JSON text.

    Predictions and labels use this one rendering, so the label join and the SQL accuracy
    views compare like with like (``true`` from a binary classifier meets ``true``).

    >>> label_text("fraud"), label_text(True), label_text(False), label_text(3), label_text(2.5)
    ('fraud', 'true', 'false', '3', '2.5')
    """
    return label if isinstance(label, str) else orjson.dumps(label).decode()


#: Row fields that describe the delivery, not the prediction: two copies of one event that
#: differ only here are the same content (a redelivery, a replayed line, re-serialised JSON).
INGEST_FIELDS = frozenset(
    {
        "ingest_time",
        "message_id",
        "publish_time",
        "payload_sha256",
        "attributes",
        "source_file",
        "pipeline_version",
        "quality_issues",  # derived from the features by this pipeline's spec
        "row_sha256",
    }
)
#: Row fields that hold JSON text: compared by value (key order and spacing do not matter).
JSON_FIELDS = frozenset({"features", "prediction_scores", "metadata", "extensions"})


def canonical_content(row: dict[str, Any]) -> bytes:
    """The canonical content of an audit row: what a duplicate must share with the first copy.

    Every field of the event as the row holds it (identity, event/label time in microseconds,
    model version, features after PII rules, prediction, latency, status, metadata,
    extensions, label) except ``INGEST_FIELDS``; JSON-text fields are parsed, and all keys
    sorted. So re-serialised or reordered JSON, another time-zone offset for the same
    instant, a redelivery or a replay have the same content; a different score does not.

    >>> a = {"event_id": "e1", "features": '{"x": 1.0, "y": "a"}', "prediction_score": 0.9,
    ...      "ingest_time": 1, "payload_sha256": "aa"}
    >>> b = {**a, "features": '{"y":"a","x":1.0}', "ingest_time": 2, "payload_sha256": "bb"}
    >>> canonical_content(a) == canonical_content(b)
    True
    >>> canonical_content(a) == canonical_content({**a, "prediction_score": 0.8})
    False
    >>> canonical_content(a)
    b'{"event_id":"e1","features":{"x":1.0,"y":"a"},"prediction_score":0.9}'
    """
    doc = {
        k: (orjson.loads(v) if k in JSON_FIELDS and isinstance(v, str) else v)
        for k, v in row.items()
        if k not in INGEST_FIELDS
    }
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS, default=str)


def content_sha256(row: dict[str, Any]) -> str:
    """sha256 (hex) of ``canonical_content(row)``: what the dedup state keeps per identity."""
    return hashlib.sha256(canonical_content(row)).hexdigest()


#: Column kinds as ``schemas/tables.py`` declares them (kept here: rows.py does not import the
#: table module's BigQuery/ClickHouse helpers); only the kinds that change a value's encoding.
_TIMESTAMP, _FLOAT, _JSON = "timestamp", "float", "json"
_NORMALISED = frozenset({_TIMESTAMP, _FLOAT, _JSON})
_TEXT = (str, bytes)


def _hashed_value(kind: str, value: Any) -> Any:
    """One stored value as the row hash encodes it, whichever engine returned it.

    Timestamps -> epoch microseconds (int; an aware or naive-UTC datetime is converted);
    FLOAT columns -> float (``12`` and ``12.0`` are one stored value); JSON columns -> the
    parsed value (text is parsed, an already-parsed object is kept); null stays null.

    >>> _hashed_value("timestamp", dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc))
    1772366400000000
    >>> _hashed_value("timestamp", dt.datetime(2026, 3, 1, 12)), _hashed_value("float", 12)
    (1772366400000000, 12.0)
    >>> _hashed_value("json", '{"b": 1, "a": [2.5]}'), _hashed_value("json", None)
    ({'b': 1, 'a': [2.5]}, None)
    """
    if value is None:
        return None
    if kind == _TIMESTAMP:
        if type(value) is int:
            return value
        if isinstance(value, dt.datetime):
            return to_micros(value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc))
        return int(value)
    if kind == _FLOAT:
        return value if type(value) is float else float(value)
    if kind == _JSON:
        return orjson.loads(value) if isinstance(value, _TEXT) else value
    return value


@functools.cache
def row_hash_columns(table: str = "predictions") -> tuple[tuple[str, str], ...]:
    """(column, kind) pairs ``row_sha256`` covers: the table's columns except ``INGEST_FIELDS``
    (delivery metadata and the hash itself), in schema order.

    >>> [c for c, _ in row_hash_columns()][:4]
    ['event_id', 'event_time', 'model_name', 'model_version']
    >>> "ingest_time" in dict(row_hash_columns()) or "row_sha256" in dict(row_hash_columns())
    False
    """
    from schemas.tables import TABLES

    return tuple((c.name, c.kind) for c in TABLES[table].columns if c.name not in INGEST_FIELDS)


def row_sha256(row: dict[str, Any], table: str = "predictions", parsed: dict[str, Any] | None = None) -> str:
    """sha256 (hex) of a row's canonical content, recomputable from the stored row.

    The document is ``{column: value}`` over ``row_hash_columns(table)`` (a missing column is
    null), values normalised by ``_hashed_value``, encoded by ``canonical_content``: orjson,
    keys sorted, no spaces, UTF-8. So the hash of the row the pipeline wrote equals the hash
    of the row read back from ClickHouse or BigQuery (timestamps as datetimes or micros, JSON
    columns as text or parsed). Delivery fields (ingest time, message id, payload hash, ...)
    are not covered: a replay of the same event has the same row hash. ``parsed``: JSON
    columns' values the caller already holds as objects (the writer), used instead of
    parsing the row's text (the same value: the text is their orjson encoding).

    >>> from schemas import Decoders, REFERENCE_EVENT
    >>> ev, ts = Decoders().prediction(REFERENCE_EVENT)
    >>> row = prediction_row(ev, ts, REFERENCE_EVENT, ingest_time=ts)
    >>> stored = {**row, "event_time": from_micros(row["event_time"]), "ingest_time": 0,
    ...           "features": orjson.dumps(orjson.loads(row["features"]), option=orjson.OPT_INDENT_2)}
    >>> row_sha256(stored) == row["row_sha256"] == row_sha256(row)
    True
    >>> row_sha256({**row, "prediction_score": 0.5}) == row["row_sha256"]
    False
    """
    doc = {}
    for name, kind in row_hash_columns(table):
        if parsed is not None and name in parsed:  # the writer's own JSON values: no re-parse
            doc[name] = parsed[name]
            continue
        value = row.get(name)
        if value is not None and kind in _NORMALISED:
            value = _hashed_value(kind, value)
        doc[name] = value
    return hashlib.sha256(canonical_content(doc)).hexdigest()


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
    row: dict[str, Any] = {
        "event_id": ev.event_id,
        "event_time": to_micros(event_time),
        "model_name": ev.model.name,
        "model_version": ev.model.version,
        "schema_version": ev.schema_version,
        "request_id": ev.request_id,
        "features": orjson.dumps(features).decode(),
        "prediction_label": None if label is None else label_text(label),
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
    json_values = {"features": features, "prediction_scores": pred.scores, "metadata": ev.metadata}
    if row["extensions"] is None:
        json_values["extensions"] = None
    row["row_sha256"] = row_sha256(row, parsed=json_values)
    return row


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
        "label": label_text(label),
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
