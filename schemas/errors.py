"""Stable error codes for contract violations, each with the fix a producer should apply."""

from __future__ import annotations

#: code -> what the producer should do about it. Codes are stable: dashboards,
#: alert rules and dead-letter queries key on them. Add, never rename.
ERROR_CODES: dict[str, str] = {
    "invalid_encoding": "Send UTF-8 encoded JSON (no lone surrogates, no other encodings).",
    "invalid_json": "Send one syntactically valid JSON document per message.",
    "not_an_object": "The event must be a JSON object at the top level.",
    "missing_field": "Add the required field named in `path`.",
    "wrong_type": "Send the JSON type the contract names for `path` (see schemas/json/).",
    "out_of_range": "Send a value inside the documented range for `path`.",
    "invalid_value": "Send one of the allowed values for `path`.",
    "non_finite_number": "Replace NaN/Infinity (or numbers beyond float64) with a finite number or null.",
    "string_too_long": "Shorten the string at `path` or raise `max_string_length`.",
    "too_many_features": "Send at most `max_features` features (or raise the limit).",
    "too_many_entries": "Send fewer entries in the object at `path` (see limits).",
    "vector_too_long": "Send a shorter list at `path` or raise `max_vector_length`.",
    "nesting_too_deep": "Flatten the value at `path`; extension values may nest `max_depth` levels.",
    "too_large": "Keep the serialized event under `max_payload_bytes`; move blobs out of the event.",
    "invalid_timestamp": "Send an RFC 3339 timestamp with an offset, e.g. 2026-01-31T12:00:00.123Z.",
    "timestamp_out_of_bounds": "Check the producer clock: the time is too far in the future or past.",
    "unknown_schema_version": 'Send schema_version "1" (or "1.N"); this consumer reads major version 1.',
    "invalid_event_id": "event_id must be 8-128 chars of [A-Za-z0-9._:-]; a UUID works.",
    "unknown_field": 'Remove the field at `path`, or send schema_version "1.N" (N>0) if it is an extension.',
}


class EventValidationError(ValueError):
    """An event that breaks the contract: a stable ``code``, the JSON ``path`` and a message.

    >>> e = EventValidationError("missing_field", "$.event_id", "Object missing required field")
    >>> e.code, e.path
    ('missing_field', '$.event_id')
    >>> e.hint.startswith("Add the required field")
    True
    """

    def __init__(self, code: str, path: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code} at {path}: {message}")
        self.code = code
        self.path = path
        self.message = message

    @property
    def hint(self) -> str:
        return ERROR_CODES[self.code]

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "path": self.path, "message": self.message, "hint": self.hint}

    def __reduce__(self):  # keep codes across pickling (Beam moves exceptions between stages)
        return (EventValidationError, (self.code, self.path, self.message))
