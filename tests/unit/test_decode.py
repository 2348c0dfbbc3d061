"""The fast decoder: every error code, limits, time bounds, evolution rule, robustness."""

from __future__ import annotations

import datetime as dt
import pickle

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    ERROR_CODES,
    REFERENCE_EVENT,
    Decoders,
    EventValidationError,
    Limits,
    decode_label,
    decode_prediction,
)
from schemas.decode import TIMESTAMP_PATTERN, _types
from schemas.limits import DEFAULT_LIMITS
from tests.helpers import BASE_EVENT, event, raw

DEC = Decoders()


def fresh(limits: Limits = DEFAULT_LIMITS) -> Decoders:
    """Decoders built now, by the test: ``_types`` caches the struct classes per limits, and a
    decoder built at import would not show what ``Decoders()`` builds (mutation testing)."""
    _types.cache_clear()
    return Decoders(limits)


def code_of(payload: bytes, dec: Decoders | None = None, now: dt.datetime | None = None) -> tuple[str, str]:
    with pytest.raises(EventValidationError) as info:
        (dec or fresh()).prediction(payload, now)
    return info.value.code, info.value.path


def test_reference_event_decodes() -> None:
    ev, ts = fresh().prediction(REFERENCE_EVENT)
    assert ev.event_id == BASE_EVENT["event_id"]
    assert ts == dt.datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=dt.timezone.utc)
    assert ev.features["country"] == "DE" and ev.features["num_00"] == 0.123456
    assert ev.prediction.scores == {"legit": 0.93, "fraud": 0.07}


def features_with(**kv: object) -> dict:
    return {**BASE_EVENT["features"], **kv}


CASES: list[tuple[str, bytes, str, str]] = [
    ("invalid utf-8", REFERENCE_EVENT.replace(b'"DE"', b'"D\xff"'), "invalid_encoding", "$"),
    ("lone surrogate", REFERENCE_EVENT.replace(b'"DE"', b'"\\ud800"'), "invalid_encoding", "$"),
    ("truncated", REFERENCE_EVENT[:200], "invalid_json", "$"),
    ("garbage", b"hello", "invalid_json", "$"),
    ("empty", b"", "invalid_json", "$"),
    ("array", b"[1, 2]", "not_an_object", "$"),
    ("string", b'"x"', "not_an_object", "$"),
    ("missing event_id", raw(event(event_id=None)), "missing_field", "$.event_id"),
    ("missing model.version", raw(event(model={"name": "m"})), "missing_field", "$.model.version"),
    ("empty prediction", raw(event(prediction={})), "missing_field", "$.prediction"),
    (
        "all-null prediction",
        raw(event(prediction={"label": None, "score": None})),
        "missing_field",
        "$.prediction",
    ),
    ("latency string", raw(event(latency_ms="fast")), "wrong_type", "$.latency_ms"),
    ("bool feature list", raw(event(features=features_with(v=[1, True]))), "wrong_type", "$.features.v[1]"),
    ("object feature", raw(event(features=features_with(o={"a": 1}))), "wrong_type", "$.features.o"),
    ("model not object", raw(event(model="fraud")), "wrong_type", "$.model"),
    ("negative latency", raw(event(latency_ms=-1)), "out_of_range", "$.latency_ms"),
    (
        "score prob > 1",
        raw(event(prediction={"scores": {"a": 1.5}})),
        "out_of_range",
        "$.prediction.scores.a",
    ),
    ("empty model name", raw(event(model={"name": "", "version": "1"})), "out_of_range", "$.model.name"),
    (
        "huge class id",
        raw(event(prediction={"label": 7})).replace(b":7}", b":1180591620717411303424}"),
        "out_of_range",
        "$.prediction.label",
    ),
    ("bad status", raw(event(status="maybe")), "invalid_value", "$.status"),
    ("NaN literal", REFERENCE_EVENT.replace(b"12.7", b"NaN"), "non_finite_number", "$..latency_ms"),
    (
        "Infinity literal",
        REFERENCE_EVENT.replace(b"12.7", b"-Infinity"),
        "non_finite_number",
        "$..latency_ms",
    ),
    ("overflow 1e999", REFERENCE_EVENT.replace(b"12.7", b"1e999"), "non_finite_number", "$..latency_ms"),
    (
        "long model name",
        raw(event(model={"name": "m" * 129, "version": "1"})),
        "string_too_long",
        "$.model.name",
    ),
    ("unknown top field", raw(event(debug=True)), "unknown_field", "$.debug"),
    (
        "unknown model field",
        raw(event(model={"name": "m", "version": "1", "x": 1})),
        "unknown_field",
        "$.model.x",
    ),
    ("bad event_id", raw(event(event_id="short")), "invalid_event_id", "$.event_id"),
    ("event_id charset", raw(event(event_id="has space in it")), "invalid_event_id", "$.event_id"),
    ("event_id newline", raw(event(event_id="abcdefgh\n")), "invalid_event_id", "$.event_id"),
    ("no offset", raw(event(event_time="2026-03-01T12:00:00")), "invalid_timestamp", "$.event_time"),
    ("space separator", raw(event(event_time="2026-03-01 12:00:00Z")), "invalid_timestamp", "$.event_time"),
    ("feb 30", raw(event(event_time="2026-02-30T12:00:00Z")), "invalid_timestamp", "$.event_time"),
    ("leap second", raw(event(event_time="2026-06-30T23:59:60Z")), "invalid_timestamp", "$.event_time"),
    ("year 1969", raw(event(event_time="1969-12-31T23:59:59Z")), "invalid_timestamp", "$.event_time"),
    ("version 2", raw(event(schema_version="2")), "unknown_schema_version", "$.schema_version"),
    (
        "version 2 other errors",
        raw(event(schema_version="2.1", event_id=5)),
        "unknown_schema_version",
        "$.schema_version",
    ),
    ("version int", raw(event(schema_version=1)), "wrong_type", "$.schema_version"),
    ("version missing", raw(event(schema_version=None)), "missing_field", "$.schema_version"),
]


@pytest.mark.parametrize(("name", "payload", "code", "path"), CASES, ids=[c[0] for c in CASES])
def test_error_codes(name: str, payload: bytes, code: str, path: str) -> None:
    assert code_of(payload) == (code, path)


TS_RULE = f"must be RFC 3339 with an offset ({TIMESTAMP_PATTERN})"
#: the message a producer reads in its dead letter, per case: ours exactly, msgspec's as it words
#: them (a pinned dependency), orjson's by its stable part (it adds the position)
MESSAGES: dict[str, str] = {
    "invalid utf-8": "str is not valid UTF-8: surrogates not allowed",
    "lone surrogate": "no low surrogate in string",
    "truncated": "unexpected end of data",
    "empty": "Input is a zero-length, empty document",
    "array": "expected a JSON object, got list",
    "string": "expected a JSON object, got str",
    "missing event_id": "Object missing required field `event_id`",
    "missing model.version": "Object missing required field `version`",
    "empty prediction": "prediction needs at least one of label, score, scores, value",
    "latency string": "Expected `float | null`, got `str`",
    "bool feature list": "Expected `float`, got `bool`",
    "model not object": "Expected `object`, got `str`",
    "negative latency": "Expected `float` >= 0.0",
    "score prob > 1": "Expected `float` <= 1.0",
    "empty model name": "must not be empty",
    "huge class id": "Expected `int` <= 9223372036854775807",
    "bad status": "Invalid enum value 'maybe'",
    "NaN literal": "unexpected character, expected a JSON value",
    "overflow 1e999": "number is infinity when parsed as double",
    "long model name": "129 > 128 characters",
    "unknown top field": "Object contains unknown field `debug`",
    "unknown model field": "Object contains unknown field `x`",
    "bad event_id": "must match ^[A-Za-z0-9._:-]{8,128}$",
    "no offset": TS_RULE,
    "year 1969": TS_RULE,
    "feb 30": "not a valid date-time: day is out of range for month",
    "version 2": "'2': this consumer reads 1 and 1.N",
    "version 2 other errors": "'2.1': this consumer reads 1 and 1.N",
    "version int": "Expected `str`",
    "version missing": "Object missing required field",
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_error_messages_say_what_is_wrong(name: str) -> None:
    """Ours exactly; a parser's message is kept whole (orjson's with its position appended)."""
    payload = next(c[1] for c in CASES if c[0] == name)
    with pytest.raises(EventValidationError) as info:
        fresh().prediction(payload)
    expected = MESSAGES[name]
    message = info.value.message
    assert message == expected or (message.startswith(expected + ": line ") and " (char " in message)


def test_every_error_code_is_exercised() -> None:
    covered = {c[2] for c in CASES} | {"too_large", "too_many_features", "string_too_long", "vector_too_long"}
    covered |= {"too_many_entries", "nesting_too_deep", "timestamp_out_of_bounds"}
    assert covered == set(ERROR_CODES)


def test_limits_are_configurable() -> None:
    small = Decoders(Limits(max_payload_bytes=500, max_features=3, max_string_length=5, max_vector_length=2))
    assert code_of(REFERENCE_EVENT, small) == ("too_large", "$")
    tiny = raw(event(features={"a": 1}, metadata=None, request_id=None, prediction={"score": 0.5}))
    assert small.prediction(tiny)[0].features == {"a": 1.0}
    assert code_of(
        raw(event(features={"a": 1, "b": 2, "c": 3, "d": 4}, metadata=None)), Decoders(Limits(max_features=3))
    )[0] == ("too_many_features")
    assert code_of(tiny.replace(b'"a":1', b'"a":"toolong"'), small) == ("string_too_long", "$.features.a")
    assert code_of(raw(event(features={"v": [1, 2, 3]})), Decoders(Limits(max_vector_length=2))) == (
        "vector_too_long",
        "$.features.v",
    )
    many_meta = raw(event(metadata={f"k{i}": "v" for i in range(5)}))
    assert code_of(many_meta, Decoders(Limits(max_metadata_entries=4))) == ("too_many_entries", "$.metadata")
    with pytest.raises(ValueError, match="unknown limit"):
        Limits.from_mapping({"max_feature": 1})
    with pytest.raises(ValueError, match="positive"):
        Limits.from_mapping({"max_features": 0})


def test_default_string_limit_applies_to_large_payloads() -> None:
    # a payload above the fast-path threshold takes the fully constrained decoder
    assert code_of(raw(event(request_id="r" * 4097))) == ("string_too_long", "$.request_id")
    assert fresh().prediction(raw(event(request_id="r" * 4096)))[0].request_id == "r" * 4096
    assert code_of(raw(event(features=features_with(v=[0.5] * 4097)))) == ("vector_too_long", "$.features.v")
    assert code_of(raw(event(features={f"f{i}": 1 for i in range(501)}))) == (
        "too_many_features",
        "$.features",
    )


def test_time_bounds_use_the_given_ingest_time() -> None:
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert fresh().prediction(REFERENCE_EVENT, now)[1].hour == 12
    future = raw(event(event_time="2026-03-01T12:06:00Z"))
    assert code_of(future, now=now) == ("timestamp_out_of_bounds", "$.event_time")
    assert fresh().prediction(future, now + dt.timedelta(minutes=2))  # within skew
    old = raw(event(event_time="2026-02-20T00:00:00+01:00"))
    assert code_of(old, now=now) == ("timestamp_out_of_bounds", "$.event_time")
    assert fresh().prediction(old)  # replay: no ingest time, no relative bound
    lenient = Decoders(Limits(max_event_age_s=30 * 86400))
    assert lenient.prediction(old, now)


def test_schema_evolution_rule() -> None:
    # "1" / "1.0": strict everywhere
    for version in ("1", "1.0"):
        assert code_of(raw(event(schema_version=version, new_field=1))) == ("unknown_field", "$.new_field")
    # a newer minor: extra fields allowed at top level and in prediction, kept as extensions
    newer = event(schema_version="1.3", trace={"span": "a"})
    newer["prediction"] = {**newer["prediction"], "calibrated": True}
    ev, _ = fresh().prediction(raw(newer))
    assert ev.extensions == {"trace": {"span": "a"}}
    assert ev.prediction.score == 0.93
    # ... but not inside model (not an extension point)
    bad = event(schema_version="1.3", model={"name": "m", "version": "1", "x": 1})
    assert code_of(raw(bad)) == ("unknown_field", "$.model.x")
    # ... and the v1 types still hold for known fields
    assert code_of(raw(event(schema_version="1.3", trace=1, latency_ms="x")))[0] == "wrong_type"
    # extension values may nest only max_depth levels
    deep: object = 1
    for _ in range(20):
        deep = [deep]
    assert code_of(raw(event(schema_version="1.1", deep=deep)))[0] == "nesting_too_deep"
    # a new major version is refused outright
    assert code_of(raw(event(schema_version="2.0")))[0] == "unknown_schema_version"
    # labels stay strict in every minor
    lbl = {
        "schema_version": "1.2",
        "event_id": "evt-00000001",
        "label_time": "2026-01-01T00:00:00Z",
        "label": 1,
    }
    with pytest.raises(EventValidationError, match="unknown_field"):
        decode_label(orjson.dumps({**lbl, "extra": 1}))


def test_label_events() -> None:
    base = {"schema_version": "1", "event_id": "evt-00000001", "label_time": "2026-01-01T00:00:00Z"}
    assert decode_label(orjson.dumps({**base, "label": "fraud"})).label == "fraud"
    assert decode_label(orjson.dumps({**base, "label": 3})).label == 3
    assert (
        decode_label(orjson.dumps({**base, "label": 2.5, "model": {"name": "m", "version": "1"}})).model.name
        == "m"
    )
    for bad, code in [
        ({**base}, "missing_field"),
        ({**base, "label": [1]}, "wrong_type"),
        ({**base, "label": "x", "label_time": "yesterday"}, "invalid_timestamp"),
        ({**base, "label": "x", "event_id": "x"}, "invalid_event_id"),
    ]:
        with pytest.raises(EventValidationError) as info:
            decode_label(orjson.dumps(bad))
        assert info.value.code == code


def test_boolean_labels_are_classes_true_and_false() -> None:
    """Binary classifiers / KServe V2 BOOL: ``"label": true`` is a class, stored as "true"."""
    import datetime as dt

    from schemas import Decoders
    from transforms.rows import label_row, prediction_row

    now = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    dec = Decoders()
    for value, text in ((True, "true"), (False, "false")):
        payload = raw(event(prediction={"label": value, "score": 0.7}))
        ev, ts = dec.prediction(payload)
        assert ev.prediction.label is value
        assert prediction_row(ev, ts, payload, ingest_time=now)["prediction_label"] == text
        lbl = orjson.dumps(
            {
                "schema_version": "1",
                "event_id": "evt-00000001",
                "label_time": "2026-01-01T00:00:00Z",
                "label": value,
            }
        )
        lev, lts = dec.label(lbl)
        row = label_row(lev, lts, lbl, ingest_time=now)
        assert (row["label"], row["label_numeric"]) == (text, None)
    # a 1 is still the integer class "1", not true
    ev, ts = dec.prediction(raw(event(prediction={"label": 1})))
    assert prediction_row(ev, ts, b"", ingest_time=now)["prediction_label"] == "1"


def test_error_is_an_actionable_value() -> None:
    with pytest.raises(EventValidationError) as info:
        decode_prediction(raw(event(event_id="x")))
    err = info.value
    assert err.to_dict()["hint"] == ERROR_CODES["invalid_event_id"]
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.code, copy.path, copy.message) == (err.code, err.path, err.message)


def test_nesting_too_deep_for_pathological_payloads() -> None:
    assert code_of(b"[" * 5000 + b"]" * 5000) == ("nesting_too_deep", "$")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_escape_as_other_exceptions(data: bytes) -> None:
    try:
        DEC.prediction(data)
    except EventValidationError as exc:
        assert exc.code in ERROR_CODES


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=len(REFERENCE_EVENT) - 1), st.binary(min_size=1, max_size=8))
def test_corrupted_reference_is_valid_or_coded(pos: int, junk: bytes) -> None:
    data = REFERENCE_EVENT[:pos] + junk + REFERENCE_EVENT[pos:]
    try:
        ev, _ = DEC.prediction(data)
        assert isinstance(ev.features, dict)
    except EventValidationError as exc:
        assert exc.code in ERROR_CODES


def test_decoded_events_convert_to_builtins() -> None:
    ev, _ = fresh().prediction(REFERENCE_EVENT)
    assert msgspec.to_builtins(ev)["model"] == {"name": "fraud", "version": "2026-02-15"}


def error_of(call, payload: bytes, *args) -> tuple[str, str, str]:
    with pytest.raises(EventValidationError) as info:
        call(payload, *args)
    return info.value.code, info.value.path, info.value.message


LABEL = orjson.dumps(
    {"schema_version": "1", "event_id": "evt-00000001", "label_time": "2026-03-01T12:00:00Z", "label": "x"}
)


def test_each_limit_holds_at_its_value_and_refuses_one_more_with_the_numbers() -> None:
    small = raw(
        event(
            features={"a": 1, "b": 2},
            metadata={"k": "v", "l": "w"},
            prediction={"scores": {"x": 0.5, "y": 0.5}},
        )
    )
    at = Decoders(Limits(max_payload_bytes=len(small), max_features=2, max_metadata_entries=2))
    assert at.prediction(small)[0].features == {"a": 1.0, "b": 2.0}
    below = Decoders(Limits(max_payload_bytes=len(small) - 1))
    assert error_of(below.prediction, small) == (
        "too_large",
        "$",
        f"{len(small)} bytes > max_payload_bytes={len(small) - 1}",
    )
    assert Decoders(Limits(max_payload_bytes=len(LABEL))).label(LABEL)[0].label == "x"
    assert error_of(Decoders(Limits(max_payload_bytes=len(LABEL) - 1)).label, LABEL) == (
        "too_large",
        "$",
        f"{len(LABEL)} bytes > max_payload_bytes={len(LABEL) - 1}",
    )
    one = Decoders(Limits(max_features=1, max_metadata_entries=1))
    assert error_of(one.prediction, raw(event(features={"a": 1, "b": 2}, metadata=None))) == (
        "too_many_features",
        "$.features",
        "2 > max_features=1",
    )
    assert error_of(one.prediction, raw(event(features={"a": 1}, metadata={"k": "v", "l": "w"}))) == (
        "too_many_entries",
        "$.metadata",
        "more than max_metadata_entries=1",
    )
    scores = raw(event(features={"a": 1}, metadata=None, prediction={"scores": {"x": 0.5, "y": 0.5}}))
    assert error_of(one.prediction, scores) == (
        "too_many_features",
        "$.prediction.scores",
        "more than max_features=1",
    )


def test_model_name_and_version_are_1_to_128_characters() -> None:
    for key in ("name", "version"):
        ok = {"name": "m", "version": "1", key: "n" * 128}
        assert getattr(fresh().prediction(raw(event(model=ok)))[0].model, key) == "n" * 128
        assert error_of(fresh().prediction, raw(event(model={**ok, key: "n" * 129}))) == (
            "string_too_long",
            f"$.model.{key}",
            "129 > 128 characters",
        )
        assert error_of(fresh().prediction, raw(event(model={**ok, key: ""}))) == (
            "out_of_range",
            f"$.model.{key}",
            "must not be empty",
        )
    labelled = orjson.loads(LABEL) | {"model": {"name": "", "version": "1"}}
    assert error_of(fresh().label, orjson.dumps(labelled))[:2] == ("out_of_range", "$.model.name")


def test_time_bounds_are_inclusive_and_the_message_gives_the_distance() -> None:
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    limits = Limits(max_clock_skew_s=60, max_event_age_s=3600)
    dec = Decoders(limits)
    assert dec.prediction(raw(event(event_time="2026-03-01T12:01:00Z")), now)[1].minute == 1
    assert dec.prediction(raw(event(event_time="2026-03-01T11:00:00Z")), now)[1].hour == 11
    assert error_of(dec.prediction, raw(event(event_time="2026-03-01T12:01:01Z")), now) == (
        "timestamp_out_of_bounds",
        "$.event_time",
        "2026-03-01T12:01:01Z is 61s after ingest time (max_clock_skew_s=60)",
    )
    assert error_of(dec.prediction, raw(event(event_time="2026-03-01T10:59:59Z")), now) == (
        "timestamp_out_of_bounds",
        "$.event_time",
        "2026-03-01T10:59:59Z is 3601s before ingest time (max_event_age_s=3600)",
    )
    late_label = orjson.loads(LABEL) | {"label_time": "2026-03-01T12:01:01Z"}
    assert error_of(dec.label, orjson.dumps(late_label), now) == (
        "timestamp_out_of_bounds",
        "$.label_time",
        "2026-03-01T12:01:01Z is 61s after ingest time (max_clock_skew_s=60)",
    )
    assert dec.label(LABEL, now)[1] == now


def test_label_errors_name_the_field_and_the_rule() -> None:
    base = orjson.loads(LABEL)
    assert error_of(fresh().label, orjson.dumps(base | {"label_time": "2026-03-01 12:00:00Z"})) == (
        "invalid_timestamp",
        "$.label_time",
        f"must be RFC 3339 with an offset ({TIMESTAMP_PATTERN})",
    )
    assert error_of(fresh().label, orjson.dumps(base | {"label_time": "2026-02-30T12:00:00Z"})) == (
        "invalid_timestamp",
        "$.label_time",
        "not a valid date-time: day is out of range for month",
    )
    assert error_of(fresh().label, orjson.dumps(base | {"schema_version": "3"})) == (
        "unknown_schema_version",
        "$.schema_version",
        "'3': this consumer reads 1 and 1.N",
    )
    assert error_of(fresh().label, orjson.dumps({k: v for k, v in base.items() if k != "label"})) == (
        "missing_field",
        "$.label",
        "Object missing required field `label`",
    )
    assert error_of(fresh().label, b"[1]") == ("not_an_object", "$", "expected a JSON object, got list")


def test_small_payloads_still_get_every_length_limit() -> None:
    """The unconstrained fast decoder only takes payloads too small to break a limit."""
    short_strings = Decoders(Limits(max_string_length=10))
    payload = raw(event(features={"a": "x" * 11}, metadata=None, request_id=None, prediction={"score": 0.5}))
    assert len(payload) < 2 * 4096  # far below the vector bound: only the string limit protects it
    assert error_of(short_strings.prediction, payload)[:2] == ("string_too_long", "$.features.a")
    assert short_strings.prediction(payload.replace(b'"x' + b"x" * 10, b'"' + b"x" * 10))[0]
    short_vectors = Decoders(Limits(max_vector_length=300))
    vector = raw(event(features={"v": [0] * 301}, metadata=None, request_id=None, prediction={"score": 0.5}))
    assert len(vector) < 3 * 300  # a payload this small can still hold one element too many
    assert error_of(short_vectors.prediction, vector)[:2] == ("vector_too_long", "$.features.v")
    assert short_vectors.prediction(vector.replace(b"[0,", b"[", 1))[0].features["v"] == [0.0] * 300
    label = orjson.loads(LABEL) | {"label": "y" * 11}
    assert error_of(short_strings.label, orjson.dumps(label))[:2] == ("string_too_long", "$.label")


def test_large_labels_and_newer_minor_events_get_the_length_limits() -> None:
    long_label = orjson.dumps(orjson.loads(LABEL) | {"label": "y" * 4097})
    assert error_of(fresh().label, long_label)[:2] == ("string_too_long", "$.label")
    assert fresh().label(orjson.dumps(orjson.loads(LABEL) | {"label": "y" * 4096}))[0].label == "y" * 4096
    newer = raw(event(schema_version="1.1", trace="t", request_id="r" * 4097))
    assert error_of(fresh().prediction, newer)[:2] == ("string_too_long", "$.request_id")


def deep_list(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("levels", [17, 1000, 1020])
def test_a_newer_minors_deep_extension_is_a_coded_error_not_a_recursion_error(levels: int) -> None:
    """orjson parses up to 1024 levels; msgspec's lenient decode used to raise RecursionError
    (escaping every caller) at about 1000. Both extension points are bounded by max_depth."""
    top = raw(event(schema_version="1.1"))[:-1] + b',"deep":' + deep_list(levels) + b"}"
    assert error_of(fresh().prediction, top) == (
        "nesting_too_deep",
        "$.deep" + "[0]" * 16,
        "more than max_depth=16 levels",
    )
    inside = raw(event(schema_version="1.1")).replace(
        b'"prediction":{', b'"prediction":{"deep":' + deep_list(levels) + b",", 1
    )
    assert error_of(fresh().prediction, inside) == (
        "nesting_too_deep",
        "$.prediction.deep" + "[0]" * 16,
        "more than max_depth=16 levels",
    )


def test_extension_values_nest_up_to_max_depth_levels_in_lists_and_objects() -> None:
    dec = Decoders(Limits(max_depth=3))
    ok = event(schema_version="1.2", ext={"a": [1]})  # object, list, number: 3 levels
    ok["prediction"] = {**ok["prediction"], "why": [[1]]}
    assert dec.prediction(raw(ok))[0].extensions == {"ext": {"a": [1]}}
    deep_obj = raw(event(schema_version="1.2", ext={"a": {"b": {"c": 1}}}))
    assert error_of(dec.prediction, deep_obj) == (
        "nesting_too_deep",
        "$.ext.a.b.c",
        "more than max_depth=3 levels",
    )
    deep_list_pred = event(schema_version="1.2")
    deep_list_pred["prediction"] = {**deep_list_pred["prediction"], "why": [[[1]]]}
    assert error_of(dec.prediction, raw(deep_list_pred)) == (
        "nesting_too_deep",
        "$.prediction.why[0][0][0]",
        "more than max_depth=3 levels",
    )


def test_decoded_events_are_the_named_v1_types_with_their_defaults() -> None:
    dec = fresh()
    ev, _ = dec.prediction(raw(event(status=None, prediction={"value": 3.25})))
    assert (type(ev).__name__, type(ev.model).__name__, type(ev.prediction).__name__) == (
        "PredictionEvent",
        "ModelRef",
        "Prediction",
    )
    assert ev.status == "ok" and ev.prediction.value == 3.25 and ev.prediction.label is None
    assert dec.prediction(raw(event(status="error")))[0].status == "error"
    lbl, _ = dec.label(LABEL)
    assert type(lbl).__name__ == "LabelEvent" and lbl.model is None
    assert repr(ev).startswith("PredictionEvent(schema_version='1', event_id=")


def test_strict_v1_refuses_unknown_prediction_fields_a_newer_minor_ignores_them() -> None:
    dec = fresh()
    v1 = event()
    v1["prediction"] = {**v1["prediction"], "calibrated": True}
    assert code_of(raw(v1), dec) == ("unknown_field", "$.prediction.calibrated")
    newer = {**v1, "schema_version": "1.1"}
    ev, _ = dec.prediction(raw(newer))
    assert ev.extensions is None and ev.prediction.score == 0.93  # nothing at the top level to keep
    assert not hasattr(dec.prediction(raw(event()))[0], "extensions")  # v1 events carry none


def test_bad_values_in_free_form_objects_are_named_by_their_key() -> None:
    dec = fresh()
    assert code_of(raw(event(metadata={"host": "h", "port": 8080})), dec) == ("wrong_type", "$.metadata.port")
    assert code_of(raw(event(features=features_with(o={"a": 1}))), dec) == ("wrong_type", "$.features.o")
    # the extension comes first, so the strict decoder stops there and the lenient one finds o
    newer = raw({"trace": "t", **event(schema_version="1.1", features=features_with(o={"a": 1}))})
    assert code_of(newer, dec) == ("wrong_type", "$.features.o")  # the newer minor's path too


def test_length_errors_keep_the_parsers_words() -> None:
    small = fresh(Limits(max_string_length=5, max_vector_length=2))
    assert error_of(small.prediction, raw(event(request_id="abcdef", metadata=None))) == (
        "string_too_long",
        "$.request_id",
        "Expected `str` of length <= 5",
    )
    assert error_of(
        small.prediction, raw(event(features={"v": [1, 2, 3]}, metadata=None, request_id=None))
    ) == (
        "vector_too_long",
        "$.features.v",
        "Expected `array` of length <= 2",
    )


def test_non_finite_literals_anywhere_even_first_and_the_parsers_depth_limit() -> None:
    assert code_of(b"NaN") == ("non_finite_number", "$")
    assert code_of(b"Infinity") == ("non_finite_number", "$")
    code, path, message = error_of(fresh().prediction, b"[" * 5000 + b"]" * 5000)
    assert (code, path) == ("nesting_too_deep", "$") and message.startswith("depth limit exceeded")


def test_the_module_functions_take_limits_and_the_ingest_time() -> None:
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    two = raw(event(features={"a": 1, "b": 2}, metadata=None))
    assert decode_prediction(two).features == {"a": 1.0, "b": 2.0}
    with pytest.raises(EventValidationError, match="max_features=1"):
        decode_prediction(two, limits=Limits(max_features=1))
    with pytest.raises(EventValidationError, match="after ingest time"):
        decode_prediction(raw(event(event_time="2026-03-01T12:10:00Z")), now)
    long_label = orjson.dumps(orjson.loads(LABEL) | {"label": "abcdef"})
    assert decode_label(long_label).label == "abcdef"
    with pytest.raises(EventValidationError, match="length <= 5"):
        decode_label(long_label, limits=Limits(max_string_length=5))
    with pytest.raises(EventValidationError, match="after ingest time"):
        decode_label(LABEL, now - dt.timedelta(hours=1))


def test_event_time_is_utc_whatever_the_machines_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from schemas.decode import parse_timestamp

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_timestamp("2026-01-31T12:00:00+01:00").isoformat() == "2026-01-31T11:00:00+00:00"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_to_builtins_drops_unset_optional_fields_only() -> None:
    from schemas.decode import to_builtins

    ev, _ = fresh().prediction(raw(event(request_id=None, metadata=None, latency_ms=0)))
    out = to_builtins(ev)
    assert "request_id" not in out and "metadata" not in out
    assert out["latency_ms"] == 0.0 and out["model"] == {"name": "fraud", "version": "2026-02-15"}
    assert out["prediction"]["score"] == 0.93
