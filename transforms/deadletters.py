"""The one dead-letter record type, fed by every stage (decode, sinks, monitors).

A dead letter keeps the full raw payload (or, above the cap, its prefix + sha256 + size),
the Pub/Sub attributes, a stable code, the JSON path and a message, so an operator can
fix the producer and replay. PII features of a parseable payload are redacted first.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from schemas.specs import PiiRedactor
from transforms.rows import PIPELINE_VERSION, from_micros, to_micros


class RawMessage(NamedTuple):
    """One input message, from Pub/Sub or a replayed file line."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str | None = None
    publish_time: dt.datetime | None = None


def redact_payload(data: bytes, redactors: Mapping[str, PiiRedactor]) -> bytes:
    """Apply PII rules to a rejected payload when it parses and names a model with PII rules.

    A payload that does not parse cannot be searched for feature values; it is kept as is.

    >>> redact_payload(b"not json", {})
    b'not json'
    """
    if not redactors:
        return data
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not isinstance(doc, dict):
        return data
    model = doc.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    red = redactors.get(name) if isinstance(name, str) else None
    features = doc.get("features")
    if red is None or not isinstance(features, dict):
        return data
    doc["features"] = red.apply(features)
    return orjson.dumps(doc)


def dead_letter(
    msg: RawMessage,
    *,
    stage: str,
    kind: str,
    code: str,
    path: str,
    message: str,
    ingest_time: dt.datetime,
    prefix_bytes: int,
    max_bytes: int,
    redactors: Mapping[str, PiiRedactor] | None = None,
    event_id: str | None = None,
    model: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    """A ``dead_letters`` row. ``dead_letter_id`` is stable for the same stage, payload and message.

    >>> now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    >>> d = dead_letter(RawMessage(b"{x", {"a": "b"}), stage="decode", kind="prediction",
    ...                 code="invalid_json", path="$", message="bad", ingest_time=now,
    ...                 prefix_bytes=4096, max_bytes=262144)
    >>> d["payload_text"], d["payload_size"], d["payload_truncated"], d["attributes"]
    ('{x', 2, False, '{"a":"b"}')
    """
    data = msg.data
    digest = hashlib.sha256(data).hexdigest()
    truncated = len(data) > max_bytes
    stored = data[:prefix_bytes] if truncated else redact_payload(data, redactors or {})
    try:
        text: str | None = stored.decode("utf-8")
        b64 = None
    except UnicodeDecodeError:
        text, b64 = None, base64.b64encode(stored).decode()
    return {
        # distinct messages with the same bytes stay distinct; a redelivery of one message
        # (same message_id) or an identical replayed line collapses
        "dead_letter_id": hashlib.sha256(
            f"{stage}\x00{code}\x00{digest}\x00{msg.message_id or ''}".encode()
        ).hexdigest(),
        "stage": stage,
        "kind": kind,
        "error_code": code,
        "error_path": path,
        "error_message": message[:2000],
        "event_id": event_id,
        "model_name": model[0],
        "model_version": model[1],
        "payload_text": text,
        "payload_base64": b64,
        "payload_sha256": digest,
        "payload_size": len(data),
        "payload_truncated": truncated,
        "attributes": orjson.dumps(dict(msg.attributes or {})).decode(),
        "message_id": msg.message_id,
        "publish_time": to_micros(msg.publish_time),
        "ingest_time": to_micros(ingest_time),
        "pipeline_version": PIPELINE_VERSION,
    }


def row_dead_letter(
    table: str,
    row: Mapping[str, Any],
    *,
    stage: str,
    code: str,
    message: str,
    kind: str = "row",
    path: str | None = None,
) -> dict[str, Any]:
    """A dead letter for an audit row a sink refused or could not write (the row is the payload).

    The row already has its PII rules applied, so the payload needs no further redaction.
    """
    payload = orjson.dumps(dict(row), default=str, option=orjson.OPT_NON_STR_KEYS)
    return dead_letter(
        RawMessage(payload, {"table": table}, row.get("message_id"), _maybe_dt(row.get("publish_time"))),
        stage=stage,
        kind=kind,
        code=code,
        path=path or f"$.{table}",
        message=message,
        # tables without an ingest_time (monitor output): the diversion time is the ingest stamp
        ingest_time=_maybe_dt(row.get("ingest_time")) or dt.datetime.now(dt.timezone.utc),
        prefix_bytes=len(payload),
        max_bytes=len(payload),
        event_id=row.get("event_id"),
        model=(row.get("model_name"), row.get("model_version")),
    )


#: the dead-letter ``kind`` of a later copy, per audit table
_KIND = {"predictions": "prediction", "labels": "label"}


def conflict_dead_letter(table: str, row: Mapping[str, Any], first: str) -> dict[str, Any]:
    """A ``conflicting_duplicate`` dead letter: ``row`` has the identity of an audit row already
    kept (the first copy, described by ``first``) but different canonical content.

    The later copy itself is the payload (the evidence; PII rules already applied, as on every
    audit row). Its id depends on the copy's original payload and message id only, not on
    when it was processed, so replaying the same file twice stores one dead letter per copy.

    >>> row = {"event_id": "evt-00000001", "model_name": "fraud", "model_version": "1",
    ...        "payload_sha256": "ab" * 32, "ingest_time": 0, "prediction_score": 0.2}
    >>> d = conflict_dead_letter("predictions", row, "content sha256 " + "cd" * 32)
    >>> d["stage"], d["kind"], d["error_code"], d["model_name"], d["event_id"]
    ('dedup', 'prediction', 'conflicting_duplicate', 'fraud', 'evt-00000001')
    >>> d["dead_letter_id"] == conflict_dead_letter("predictions", {**row, "ingest_time": 9}, "x")["dead_letter_id"]
    True
    """
    model, event_id = row.get("model_name"), row.get("event_id")
    who = f"({model}, {event_id})" if table == "predictions" else f"label for {event_id}"
    dead = row_dead_letter(
        table,
        row,
        stage="dedup",
        code="conflicting_duplicate",
        kind=_KIND.get(table, "row"),
        path="$",
        message=(
            f"{table}: a later copy of {who} with different content than the audit row "
            f"(the first copy: {first}); this copy is not audited, it is kept here as evidence. "
            "Fix the producer: one event_id per prediction and model, re-sent only unchanged"
        ),
    )
    dead["dead_letter_id"] = hashlib.sha256(
        f"dedup\x00conflicting_duplicate\x00{row.get('payload_sha256') or dead['payload_sha256']}"
        f"\x00{row.get('message_id') or ''}".encode()
    ).hexdigest()
    return dead


def _maybe_dt(us: int | None) -> dt.datetime | None:
    return None if us is None else from_micros(us)
