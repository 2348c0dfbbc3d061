"""The identity of a prediction: (model name, event_id).

Producers choose event ids, so two models may reuse one: every place that dedups, joins
or keys a write (stream state, replay dedup, ClickHouse insert tokens, BigQuery insertIds,
the dedup views, the label join) uses this identity, never the bare event_id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

SEP = "\x1f"  # ASCII unit separator: cannot occur in an event_id ([A-Za-z0-9._:-])


def identity(model_name: str | None, event_id: str) -> str:
    """One string for (model name, event_id), usable as a Beam key.

    >>> identity("fraud", "evt-1") == identity("churn", "evt-1")
    False
    >>> identity("fraud", "evt-1")
    'fraud\\x1fevt-1'
    """
    return f"{model_name or ''}{SEP}{event_id}"


def row_identity(row: Mapping[str, Any]) -> str:
    """The identity of an audit row (predictions: model_name + event_id)."""
    return identity(row.get("model_name"), row["event_id"])


def identity_id(key: str) -> str:
    """A fixed-length id for an identity (BigQuery insertId, insert-token material).

    >>> len(identity_id(identity("fraud", "evt-1")))
    32
    """
    return hashlib.sha256(key.encode()).hexdigest()[:32]
