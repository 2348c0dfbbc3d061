"""Configurable contract limits, with documented defaults."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Limits:
    """Size and time limits a v1 consumer enforces. The JSON Schema files carry the defaults.

    >>> Limits().max_features
    500
    >>> Limits.from_mapping({"max_features": 10}).max_features
    10
    """

    #: largest serialized event accepted (Pub/Sub allows 10 MB; audit rows should stay small)
    max_payload_bytes: int = 262_144
    #: features per event
    max_features: int = 500
    #: characters in a feature value, label, metadata value or request_id
    max_string_length: int = 4096
    #: numbers in a vector feature
    max_vector_length: int = 4096
    #: entries in `metadata`
    max_metadata_entries: int = 64
    #: nesting levels of extension values (future minor versions)
    max_depth: int = 16
    #: how far an event may be in the future of the ingest time (producer clock skew)
    max_clock_skew_s: float = 300.0
    #: how far an event may be in the past of the ingest time (Pub/Sub keeps 7 days)
    max_event_age_s: float = 7 * 24 * 3600.0
    #: bytes of an oversized payload kept in a dead letter (plus its sha256 and size)
    dead_letter_prefix_bytes: int = 4096

    @classmethod
    def from_mapping(cls, values: dict) -> Limits:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown limit(s) {unknown}; known: {sorted(names)}")
        for key, value in values.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"limit {key} must be a positive number, got {value!r}")
        return cls(**values)


DEFAULT_LIMITS = Limits()
