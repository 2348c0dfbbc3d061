"""Test helpers shared across test modules."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from schemas import REFERENCE_EVENT

BASE_EVENT: dict[str, Any] = orjson.loads(REFERENCE_EVENT)


def event(**changes: Any) -> dict[str, Any]:
    """A deep copy of the reference event with top-level fields replaced (None deletes)."""
    ev = copy.deepcopy(BASE_EVENT)
    for key, value in changes.items():
        if value is None:
            ev.pop(key, None)
        else:
            ev[key] = value
    return ev


def raw(ev: dict[str, Any]) -> bytes:
    return orjson.dumps(ev)
