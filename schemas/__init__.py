"""The predaudit contracts: event decoding/validation, model specs and table definitions.

>>> from schemas import decode_prediction, EventValidationError
>>> decode_prediction(REFERENCE_EVENT).model.version
'2026-02-15'
"""

from schemas.decode import (
    REFERENCE_EVENT,
    Decoders,
    decode_label,
    decode_prediction,
    parse_timestamp,
    to_builtins,
)
from schemas.errors import ERROR_CODES, EventValidationError
from schemas.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DEFAULT_LIMITS",
    "ERROR_CODES",
    "REFERENCE_EVENT",
    "Decoders",
    "EventValidationError",
    "Limits",
    "decode_label",
    "decode_prediction",
    "parse_timestamp",
    "to_builtins",
]
