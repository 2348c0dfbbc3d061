"""Pub/Sub attributes for a prediction or label payload, derived only from a *validated* event.

The pipeline reads ``event_time`` as its ``timestamp_attribute``: a malformed value there
stalls the Pub/Sub source (Beam's behaviour), so it is set only when the payload validates.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from schemas import Decoders, EventValidationError


def pubsub_attributes(
    raw: bytes, kind: str = "prediction", decoders: Decoders | None = None
) -> dict[str, str]:
    """Attributes for subscription filters and event-time windowing; ``{}`` for invalid payloads.

    >>> from schemas import REFERENCE_EVENT
    >>> sorted(pubsub_attributes(REFERENCE_EVENT).items())[:2]
    [('event_id', '0f8b7c1e-4a5d-4f7e-9a6b-3c2d1e0f9a8b'), ('event_time', '2026-03-01T12:00:00.123000Z')]
    """
    dec = decoders or Decoders()
    try:
        ev, ts = dec.prediction(raw) if kind == "prediction" else dec.label(raw)
    except EventValidationError:
        return {}
    return attributes_of(ev, ts)


def attributes_of(ev: Any, ts: _dt.datetime) -> dict[str, str]:
    """Attributes of a decoded event (``ts`` = its event or label time, UTC)."""
    attrs = {
        "event_id": ev.event_id,
        "event_time": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "schema_version": ev.schema_version,
    }
    if ev.model is not None:
        attrs["model"], attrs["model_version"] = ev.model.name, ev.model.version
    return attrs
