"""Fast decode + validate of raw event bytes against the v1 contract (msgspec).

The typed msgspec decode is the hot path (about the cost of ``orjson.loads``); it
checks types, required fields, patterns and limits in one pass. Only when it fails
do we spend more time: a second, lenient parse classifies the failure into a stable
error code with the exact JSON path (see ``schemas/errors.py``).

The JSON Schema files in ``schemas/json/`` describe the same rules; a property test
keeps the two in agreement.

Schema evolution: ``schema_version`` is ``"1"`` or ``"1.N"``. A v1 consumer reads
any 1.N. For ``"1"``/``"1.0"`` unknown fields are errors. For ``"1.N"`` with N > 0
(a minor version newer than this consumer) unknown fields are tolerated at exactly
two extension points -- the top-level object and ``prediction`` -- and kept in
``extensions``; everywhere else (``model``, ``features`` values, label events) the
v1 shape stays strict. A new major version is ``unknown_schema_version``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
from typing import Annotated, Any, Literal, Union

import msgspec
import orjson

from schemas.errors import EventValidationError
from schemas.limits import DEFAULT_LIMITS, Limits

EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{8,128}$"
SCHEMA_VERSION_PATTERN = r"^1(\.(0|[1-9][0-9]{0,5}))?$"
# RFC 3339 date-time with a mandatory offset; years 1970-2199 (what both sinks can store).
TIMESTAMP_PATTERN = (
    r"^(19[7-9][0-9]|2[01][0-9][0-9])-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-9]|2[0-3]):[0-5][0-9])$"
)
KNOWN_MINOR = 0
NAME_MAX = 128

_MSG_RE = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)
_FIELD_RE = re.compile(r"field `(?P<field>[^`]*)`")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
ClassId = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

_EVENT_ID_RE = re.compile(EVENT_ID_PATTERN)
_TIMESTAMP_RE = re.compile(TIMESTAMP_PATTERN)
_VERSION_RE = re.compile(SCHEMA_VERSION_PATTERN)


class _Types:
    """The struct classes for one set of limits.

    With ``constrained=False`` no string/list length is checked inside msgspec (that is
    ~2x faster); ``Decoders`` uses that variant only for payloads too small to break
    those limits, so both variants accept exactly the same events.
    """

    def __init__(self, limits: Limits, constrained: bool) -> None:
        def sized(tp: Any, n: int) -> Any:
            return Annotated[tp, msgspec.Meta(max_length=n)] if constrained else tp

        text = sized(str, limits.max_string_length)
        vector = sized(list[float], limits.max_vector_length)
        feature_value = Union[text, float, bool, None, vector]  # noqa: UP007 (msgspec needs a Union object)
        scores = dict[text, Probability]
        metadata = dict[text, text]
        model = msgspec.defstruct(
            "ModelRef",
            [("name", str), ("version", str)],  # lengths checked in _check_common
            forbid_unknown_fields=True,
            gc=False,
            module=__name__,
        )

        def prediction(strict: bool) -> type:
            return msgspec.defstruct(
                "Prediction",
                [
                    # bool: binary classifiers and KServe V2 BOOL outputs (stored as "true"/"false")
                    ("label", Union[text, ClassId, float, bool, None], None),  # noqa: UP007
                    ("score", Union[float, None], None),  # noqa: UP007
                    ("scores", Union[scores, None], None),  # noqa: UP007
                    ("value", Union[float, None], None),  # noqa: UP007
                ],
                forbid_unknown_fields=strict,
                gc=False,
                module=__name__,
            )

        def event(strict: bool, pred: type) -> type:
            return msgspec.defstruct(
                "PredictionEvent",
                [
                    ("schema_version", str),
                    ("event_id", str),
                    ("event_time", str),
                    ("model", model),
                    ("features", dict[text, feature_value]),
                    ("prediction", pred),
                    ("request_id", Union[text, None], None),  # noqa: UP007
                    ("latency_ms", Union[NonNegative, None], None),  # noqa: UP007
                    ("status", Literal["ok", "error"], "ok"),
                    ("metadata", Union[metadata, None], None),  # noqa: UP007
                ]
                # only the lenient (newer minor) struct carries the extension fields it tolerated
                + ([] if strict else [("extensions", Any, None)]),
                forbid_unknown_fields=strict,
                gc=False,
                module=__name__,
            )

        self.event_strict = event(True, prediction(True))
        self.event_lenient = event(False, prediction(False))
        self.label = msgspec.defstruct(
            "LabelEvent",
            [
                ("schema_version", str),
                ("event_id", str),
                ("label_time", str),
                ("label", Union[text, ClassId, float, bool]),  # noqa: UP007
                ("model", Union[model, None], None),  # noqa: UP007
            ],
            forbid_unknown_fields=True,
            gc=False,
            module=__name__,
        )
        #: value type of each free-form object, to name the offending key in errors
        self.dict_values = {
            "$.features": feature_value,
            "$.metadata": text,
            "$.prediction.scores": Probability,
        }


@functools.lru_cache(maxsize=16)
def _types(limits: Limits, constrained: bool) -> _Types:
    return _Types(limits, constrained)


PREDICTION_FIELDS = frozenset(
    ["schema_version", "event_id", "event_time", "model", "features", "prediction"]
    + ["request_id", "latency_ms", "status", "metadata"]
)
PREDICTION_REQUIRED = ("schema_version", "event_id", "event_time", "model", "features", "prediction")
PREDICTION_KEYS = ("label", "score", "scores", "value")
LABEL_FIELDS = frozenset(["schema_version", "event_id", "label_time", "label", "model"])


def parse_timestamp(text: str) -> _dt.datetime:
    """Parse an RFC 3339 timestamp already matched by ``TIMESTAMP_PATTERN`` (UTC-aware result).

    >>> parse_timestamp("2026-01-31T12:00:00.5+01:00").isoformat()
    '2026-01-31T11:00:00.500000+00:00'
    """
    return _dt.datetime.fromisoformat(text).astimezone(_dt.timezone.utc)


def _check_time(text: str, path: str, now: _dt.datetime | None, limits: Limits) -> _dt.datetime:
    try:
        ts = parse_timestamp(text)
    except ValueError as exc:
        raise EventValidationError("invalid_timestamp", path, f"not a valid date-time: {exc}") from None
    if now is not None:
        delta = (ts - now).total_seconds()
        if delta > limits.max_clock_skew_s:
            raise EventValidationError(
                "timestamp_out_of_bounds",
                path,
                f"{text} is {delta:.0f}s after ingest time (max_clock_skew_s={limits.max_clock_skew_s:g})",
            )
        if -delta > limits.max_event_age_s:
            raise EventValidationError(
                "timestamp_out_of_bounds",
                path,
                f"{text} is {-delta:.0f}s before ingest time (max_event_age_s={limits.max_event_age_s:g})",
            )
    return ts


def _check_common(ev: Any, time_field: str) -> None:
    """Checks kept out of msgspec for speed: patterns and O(1) size checks."""
    version = ev.schema_version
    if version != "1" and not _VERSION_RE.fullmatch(version):
        raise EventValidationError(
            "unknown_schema_version", "$.schema_version", f"{version!r}: this consumer reads 1 and 1.N"
        )
    if not _EVENT_ID_RE.fullmatch(ev.event_id):
        raise EventValidationError("invalid_event_id", "$.event_id", f"must match {EVENT_ID_PATTERN}")
    if not _TIMESTAMP_RE.fullmatch(getattr(ev, time_field)):
        raise EventValidationError(
            "invalid_timestamp", f"$.{time_field}", f"must be RFC 3339 with an offset ({TIMESTAMP_PATTERN})"
        )
    model = ev.model
    if model is not None:
        for key in ("name", "version"):
            n = len(getattr(model, key))
            if n == 0:
                raise EventValidationError("out_of_range", f"$.model.{key}", "must not be empty")
            if n > NAME_MAX:
                raise EventValidationError(
                    "string_too_long", f"$.model.{key}", f"{n} > {NAME_MAX} characters"
                )


def _too_large(raw: bytes, limits: Limits) -> EventValidationError:
    return EventValidationError(
        "too_large", "$", f"{len(raw)} bytes > max_payload_bytes={limits.max_payload_bytes}"
    )


class Decoders:
    """Reusable decoders for one set of limits. Not picklable: build it in ``DoFn.setup()``.

    >>> d = Decoders()
    >>> ev, ts = d.prediction(REFERENCE_EVENT)
    >>> ev.model.name, ts.year
    ('fraud', 2026)
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        fast, checked = _types(limits, False), _types(limits, True)
        self.types = checked
        self._fast = msgspec.json.Decoder(fast.event_strict)
        self._checked = msgspec.json.Decoder(checked.event_strict)
        self._lenient = msgspec.json.Decoder(checked.event_lenient)
        self._label_fast = msgspec.json.Decoder(fast.label)
        self._label_checked = msgspec.json.Decoder(checked.label)
        # A decoded string/list is never longer than the payload, so below this size the
        # unconstrained (fast) types accept exactly what the constrained ones accept.
        self._fast_below = min(limits.max_string_length, 2 * limits.max_vector_length - 1)

    def prediction(self, raw: bytes, now: _dt.datetime | None = None) -> tuple[Any, _dt.datetime]:
        """Decode and validate a PredictionEvent; returns (event, event time in UTC).

        ``now`` is the ingest time (e.g. the Pub/Sub publish time) for the clock-skew and
        age bounds; ``None`` skips them (replay of old files).
        """
        limits = self.limits
        size = len(raw)
        if size > limits.max_payload_bytes:
            raise _too_large(raw, limits)
        try:
            ev = (self._fast if size <= self._fast_below else self._checked).decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            ev = self._recover(raw, exc, PREDICTION_FIELDS)
        _check_common(ev, "event_time")
        if len(ev.features) > limits.max_features:
            raise EventValidationError(
                "too_many_features", "$.features", f"{len(ev.features)} > max_features={limits.max_features}"
            )
        if ev.metadata is not None and len(ev.metadata) > limits.max_metadata_entries:
            raise EventValidationError(
                "too_many_entries",
                "$.metadata",
                f"more than max_metadata_entries={limits.max_metadata_entries}",
            )
        pred = ev.prediction
        if pred.scores is not None and len(pred.scores) > limits.max_features:
            raise EventValidationError(
                "too_many_features", "$.prediction.scores", f"more than max_features={limits.max_features}"
            )
        if pred.label is None and pred.score is None and pred.scores is None and pred.value is None:
            raise EventValidationError(
                "missing_field",
                "$.prediction",
                "prediction needs at least one of label, score, scores, value",
            )
        return ev, _check_time(ev.event_time, "$.event_time", now, limits)

    def label(self, raw: bytes, now: _dt.datetime | None = None) -> tuple[Any, _dt.datetime]:
        """Decode and validate a LabelEvent; returns (event, label time in UTC)."""
        size = len(raw)
        if size > self.limits.max_payload_bytes:
            raise _too_large(raw, self.limits)
        try:
            ev = (self._label_fast if size <= self._fast_below else self._label_checked).decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            parsed = _classify_syntax(raw)
            _check_version(parsed)
            raise _from_msgspec(exc, parsed, self.types) from None
        _check_common(ev, "label_time")
        return ev, _check_time(ev.label_time, "$.label_time", now, self.limits)

    def _recover(self, raw: bytes, exc: Exception, fields: frozenset[str]) -> Any:
        """Failure path: a newer minor version's extension fields, or a classified error."""
        parsed = _classify_syntax(raw)
        _check_version(parsed)
        minor = _minor(parsed["schema_version"])
        if minor > KNOWN_MINOR and isinstance(exc, msgspec.ValidationError) and "unknown field" in str(exc):
            # depth first, on orjson's parse: msgspec would recurse into a ~1000-level value
            # and raise RecursionError (not a coded error) before any limit applied
            extra = {k: v for k, v in parsed.items() if k not in fields}
            for key, value in extra.items():
                _check_depth(value, f"$.{key}", 1, self.limits.max_depth)
            pred = parsed.get("prediction")
            if isinstance(pred, dict):
                for key, value in pred.items():
                    if key not in PREDICTION_KEYS:
                        _check_depth(value, f"$.prediction.{key}", 1, self.limits.max_depth)
            try:
                ev = self._lenient.decode(raw)
            except msgspec.ValidationError as exc2:
                raise _from_msgspec(exc2, parsed, self.types) from None
            ev.extensions = extra or None
            return ev
        raise _from_msgspec(exc, parsed, self.types) from None


def _minor(version: str) -> int:
    return int(version.split(".")[1]) if "." in version else 0


def _check_depth(value: Any, path: str, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise EventValidationError("nesting_too_deep", path, f"more than max_depth={max_depth} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_depth(v, f"{path}.{k}", depth + 1, max_depth)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_depth(v, f"{path}[{i}]", depth + 1, max_depth)


def _classify_syntax(raw: bytes) -> dict:
    """Lenient parse for the failure path: encoding / JSON / shape errors first."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        low = msg.lower()
        if "utf-8" in low or "surrogate" in low:
            raise EventValidationError("invalid_encoding", "$", msg) from None
        if "infinity" in low or _non_finite_literal_at(raw, exc.pos):
            raise EventValidationError("non_finite_number", _approx_path(raw, exc.pos), msg) from None
        if "depth limit" in low or "recursion" in low:
            raise EventValidationError("nesting_too_deep", "$", msg) from None
        raise EventValidationError("invalid_json", "$", msg) from None
    if not isinstance(parsed, dict):
        raise EventValidationError(
            "not_an_object", "$", f"expected a JSON object, got {type(parsed).__name__}"
        )
    return parsed


def _non_finite_literal_at(raw: bytes, pos: int) -> bool:
    head = raw[max(pos - 1, 0) : pos + 9]
    return any(tok in head for tok in (b"NaN", b"Infinity"))


def _approx_path(raw: bytes, pos: int) -> str:
    """Best-effort path of a literal at byte ``pos``: the last key before it."""
    keys = re.findall(rb'"([^"\\]{1,128})"\s*:', raw[:pos])
    return f"$..{keys[-1].decode('utf-8', 'replace')}" if keys else "$"


def _check_version(parsed: dict) -> None:
    version = parsed.get("schema_version")
    if version is None:
        raise EventValidationError("missing_field", "$.schema_version", "Object missing required field")
    if not isinstance(version, str):
        raise EventValidationError("wrong_type", "$.schema_version", "Expected `str`")
    if not _VERSION_RE.fullmatch(version):
        raise EventValidationError(
            "unknown_schema_version", "$.schema_version", f"{version!r}: this consumer reads 1 and 1.N"
        )


def _from_msgspec(exc: Exception, parsed: dict, types: _Types) -> EventValidationError:
    """Map a msgspec error message to a stable code (messages are msgspec's, codes are ours)."""
    m = _MSG_RE.match(str(exc))
    msg, path = (m.group("msg"), m.group("path") or "$") if m else (str(exc), "$")
    if not isinstance(exc, msgspec.ValidationError):  # a DecodeError orjson did not see
        return EventValidationError("invalid_json", path, msg)
    field = _FIELD_RE.search(msg)
    if msg.startswith("Object missing required field"):
        return EventValidationError("missing_field", f"{path}.{field.group('field')}", msg)
    if msg.startswith("Object contains unknown field"):
        return EventValidationError("unknown_field", f"{path}.{field.group('field')}", msg)
    path = _name_dict_key(path, parsed, types)
    # No "Number out of range" (orjson refuses a number beyond float64 first: non_finite_number),
    # no "matching regex" (the structs carry no pattern: _check_common matches them) and no
    # "Expected `object` of length" (no dict is sized: Decoders.prediction counts entries).
    if msg.startswith("Expected `str` of length <="):
        return EventValidationError("string_too_long", path, msg)
    if msg.startswith("Expected `array` of length <="):
        return EventValidationError("vector_too_long", path, msg)
    if msg.startswith("Invalid enum value"):
        return EventValidationError("invalid_value", path, msg)
    if re.match(r"Expected `\w+` (>=|<=|>|<|of length >=) ", msg):
        return EventValidationError("out_of_range", path, msg)
    return EventValidationError("wrong_type", path, msg)


def _name_dict_key(path: str, parsed: dict, types: _Types) -> str:
    """msgspec writes dict keys as ``[...]``; name the first offending key instead."""
    head, sep, tail = path.partition("[...]")
    value_type = types.dict_values.get(head)
    if not sep or value_type is None:
        return path
    node: Any = parsed
    for part in head[2:].split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        for key, value in node.items():
            try:
                msgspec.convert(value, value_type)
            except msgspec.ValidationError:
                return f"{head}.{key}{tail}"
    return path


_DEFAULT: Decoders | None = None


def _default() -> Decoders:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Decoders()
    return _DEFAULT


def decode_prediction(raw: bytes, now: _dt.datetime | None = None, limits: Limits | None = None) -> Any:
    """Decode raw bytes into a PredictionEvent or raise ``EventValidationError``.

    >>> decode_prediction(REFERENCE_EVENT).prediction.score
    0.93
    >>> try:
    ...     decode_prediction(b'{"schema_version": "2"}')
    ... except EventValidationError as e:
    ...     print(e.code, e.path)
    unknown_schema_version $.schema_version
    """
    dec = _default() if limits is None else Decoders(limits)
    return dec.prediction(raw, now)[0]


def decode_label(raw: bytes, now: _dt.datetime | None = None, limits: Limits | None = None) -> Any:
    """Decode raw bytes into a LabelEvent or raise ``EventValidationError``.

    >>> decode_label(b'{"schema_version":"1","event_id":"evt-00000001",'
    ...              b'"label_time":"2026-01-01T00:00:00Z","label":"fraud"}').label
    'fraud'
    """
    dec = _default() if limits is None else Decoders(limits)
    return dec.label(raw, now)[0]


def to_builtins(event: Any) -> dict:
    """An event as plain JSON-compatible Python values (drops unset optional fields)."""
    out = msgspec.to_builtins(event)
    return {k: v for k, v in out.items() if v is not None}


#: The reference event of the docs and the benchmark: ~1 KB, 20 numeric + 3 categorical features.
REFERENCE_EVENT: bytes = orjson.dumps(
    {
        "schema_version": "1",
        "event_id": "0f8b7c1e-4a5d-4f7e-9a6b-3c2d1e0f9a8b",
        "event_time": "2026-03-01T12:00:00.123Z",
        "model": {"name": "fraud", "version": "2026-02-15"},
        "request_id": "req-7d1c9a4e5b",
        "features": {
            **{f"num_{i:02d}": round(0.123456 * (i + 1) * (-1) ** i, 6) for i in range(20)},
            "country": "DE",
            "channel": "mobile_app",
            "merchant_category": "electronics",
        },
        "prediction": {"label": "legit", "score": 0.93, "scores": {"legit": 0.93, "fraud": 0.07}},
        "latency_ms": 12.7,
        "status": "ok",
        "metadata": {"host": "fraud-7f9c-abcde", "endpoint": "/v1/predict", "region": "europe-west1"},
    }
)
