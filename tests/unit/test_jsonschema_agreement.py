"""The published JSON Schema files and the fast decoder accept and reject the same events.

Known, documented differences the corpus stays clear of: payload size and the ingest-time
bounds (runtime policy JSON Schema cannot express), nesting depth of extension values,
and integer-valued float labels beyond 64-bit range (JSON Schema cannot tell 1e20 from
100000000000000000000).
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import Decoders, EventValidationError
from schemas.decode import EVENT_ID_PATTERN, NAME_MAX, SCHEMA_VERSION_PATTERN, TIMESTAMP_PATTERN
from schemas.limits import DEFAULT_LIMITS

SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "json"
DEC = Decoders()


def load(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = load(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


PRED = validator("prediction_event")
LABEL = validator("label_event")


def test_format_checker_really_checks_date_time() -> None:
    assert "date-time" in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers
    assert not PRED.is_valid({"event_time": "x"})


def test_schema_constants_match_the_decoder() -> None:
    defs = load("prediction_event")["$defs"]
    assert defs["event_id"]["pattern"] == EVENT_ID_PATTERN
    assert defs["timestamp"]["pattern"] == TIMESTAMP_PATTERN
    assert defs["schema_version"]["pattern"] == SCHEMA_VERSION_PATTERN
    assert defs["model"]["properties"]["name"]["maxLength"] == NAME_MAX
    props = load("prediction_event")["properties"]
    assert props["features"]["maxProperties"] == DEFAULT_LIMITS.max_features
    assert defs["text"]["maxLength"] == DEFAULT_LIMITS.max_string_length
    assert props["metadata"]["anyOf"][1]["maxProperties"] == DEFAULT_LIMITS.max_metadata_entries
    for name in ("anomaly_event", "dead_letter", "label_event"):
        jsonschema.Draft202012Validator.check_schema(load(name))


# ---- the corpus -------------------------------------------------------------------------
small_text = st.text(max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
number = st.one_of(finite, st.integers(-(2**70), 2**70))
json_scalar = st.one_of(st.none(), st.booleans(), number, small_text)
json_value = st.recursive(
    json_scalar,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(small_text, c, max_size=3)),
    max_leaves=6,
)

valid_id = st.from_regex(r"\A[A-Za-z0-9._:-]{8,40}\Z")
event_id = st.one_of(valid_id, valid_id, small_text, st.integers())
offsets = st.sampled_from(["Z", "+00:00", "-05:30", "+23:59", "-00:00", "+14:00"])
frac = st.sampled_from(["", ".1", ".123", ".123456", ".123456789"])


@st.composite
def valid_timestamps(draw) -> str:
    d = draw(st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2199, 12, 30)))
    return d.strftime("%Y-%m-%dT%H:%M:%S") + draw(frac) + draw(offsets)


BAD_TIMESTAMPS = [
    "2026-02-30T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:60:00Z",
    "2026-01-01 00:00:00Z",
    "2026-01-01T00:00:00",
    "2026-01-01t00:00:00z",
    "1969-12-31T23:59:59Z",
    "2200-01-01T00:00:00Z",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01",
    "2026-01-01T00:00:00.1234567890Z",
    "2024-02-29T00:00:00Z",
    "2023-02-29T00:00:00Z",
    "2026-06-30T23:59:60Z",
    "",
    1700000000,
]
timestamps = st.one_of(valid_timestamps(), st.sampled_from(BAD_TIMESTAMPS))

good_feature = st.one_of(st.none(), st.booleans(), number, small_text, st.lists(number, max_size=4))
bad_feature = st.one_of(
    st.lists(json_scalar, min_size=1, max_size=3), st.dictionaries(small_text, json_scalar, max_size=2)
)
# booleans are class labels (binary classifiers, KServe V2 BOOL outputs) in both contracts
good_label = st.one_of(small_text, st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6), st.booleans())
bad_label = st.one_of(
    st.lists(st.one_of(st.integers(), st.booleans()), max_size=2),
    st.dictionaries(small_text, st.integers(), max_size=1),
)
good_model = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=NAME_MAX), "version": st.text(min_size=1, max_size=12)}
)
bad_model = st.one_of(
    st.fixed_dictionaries({"name": st.text(max_size=NAME_MAX + 3), "version": st.text(max_size=3)}),
    st.fixed_dictionaries({"name": small_text}),
    st.just("m"),
    st.none(),
    st.fixed_dictionaries({"name": st.just("m"), "version": st.just("1"), "x": st.integers()}),
)


@st.composite
def good_prediction(draw) -> dict:
    keys = draw(
        st.lists(st.sampled_from(["label", "score", "scores", "value"]), min_size=1, max_size=4, unique=True)
    )
    strat = {
        "label": good_label,
        "score": finite,
        "value": number,
        "scores": st.dictionaries(small_text, st.floats(0, 1), max_size=3),
    }
    return {k: draw(strat[k]) for k in keys}


@st.composite
def bad_prediction(draw) -> object:
    pred = draw(good_prediction())
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(st.one_of(st.none(), small_text, st.lists(st.integers(), max_size=2)))
    if kind == 1:
        return {k: None for k in pred}
    if kind == 2:
        return {**pred, "label": draw(bad_label)}
    if kind == 3:
        return {
            **pred,
            "scores": draw(
                st.dictionaries(
                    small_text, st.one_of(st.floats(-2, 2), st.booleans(), small_text), min_size=1, max_size=2
                )
            ),
        }
    if kind == 4:
        return {**pred, "score": draw(st.one_of(small_text, st.booleans()))}
    return {**pred, draw(st.sampled_from(["calibrated", "label2"])): draw(json_value)}  # extension field


GOOD = {
    "schema_version": st.sampled_from(["1", "1.0", "1.2"]),
    "event_id": valid_id,
    "event_time": valid_timestamps(),
    "model": good_model,
    "features": st.dictionaries(small_text, good_feature, max_size=6),
    "prediction": good_prediction(),
    "request_id": st.one_of(small_text, st.none()),
    "latency_ms": st.one_of(st.floats(0, 1e6), st.integers(0, 10**6), st.none()),
    "status": st.sampled_from(["ok", "error"]),
    "metadata": st.one_of(st.none(), st.dictionaries(small_text, small_text, max_size=3)),
}
BAD = {
    "schema_version": st.sampled_from(["2", "1.x", "01", "", "1.01", 1, None]),
    "event_id": st.one_of(
        small_text, st.integers(), st.from_regex(r"\A[A-Za-z0-9._:-]{1,7}\Z"), st.just("a" * 129)
    ),
    "event_time": timestamps,
    "model": bad_model,
    "features": st.one_of(
        st.dictionaries(small_text, bad_feature, min_size=1, max_size=3), st.lists(st.integers(), max_size=2)
    ),
    "prediction": bad_prediction(),
    "request_id": st.one_of(st.integers(), st.booleans()),
    "latency_ms": st.one_of(st.floats(-10, -0.001), small_text, st.booleans()),
    "status": st.sampled_from(["bad", None, "OK"]),
    "metadata": st.one_of(st.dictionaries(small_text, st.integers(), min_size=1, max_size=2), small_text),
}
REQUIRED = ["schema_version", "event_id", "event_time", "model", "features", "prediction"]


@st.composite
def events(draw) -> dict:
    ev = {k: draw(GOOD[k]) for k in REQUIRED}
    for key in ("request_id", "latency_ms", "status", "metadata"):
        if draw(st.booleans()):
            ev[key] = draw(GOOD[key])
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        action = draw(st.integers(0, 9))
        if action == 0:
            ev.pop(draw(st.sampled_from(REQUIRED)), None)
        elif action == 1:  # an extension field: valid only in a newer minor version
            ev[draw(st.sampled_from(["trace", "extensions", "debug"]))] = draw(json_value)
        else:
            key = draw(st.sampled_from(list(BAD)))
            ev[key] = draw(BAD[key])
    return ev


def decoder_accepts(payload: bytes) -> bool:
    try:
        DEC.prediction(payload)
        return True
    except EventValidationError:
        return False


@settings(
    max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(events())
def test_prediction_schema_and_decoder_agree(ev: dict) -> None:
    payload = json.dumps(ev, allow_nan=False).encode()
    expected = PRED.is_valid(json.loads(payload))
    assert decoder_accepts(payload) == expected, (
        f"schema says {expected}; errors: {[e.message for e in PRED.iter_errors(json.loads(payload))][:3]}"
    )


@st.composite
def label_events(draw) -> dict:
    ev = {
        "schema_version": draw(st.sampled_from(["1", "1.3", "3"])),
        "event_id": draw(event_id),
        "label_time": draw(st.one_of(valid_timestamps(), timestamps)),
        "label": draw(st.one_of(good_label, good_label, bad_label)),
    }
    if draw(st.booleans()):
        ev["model"] = draw(
            st.one_of(st.none(), st.fixed_dictionaries({"name": small_text, "version": small_text}))
        )
    if draw(st.integers(0, 5)) == 0:
        ev["extra"] = 1
    if draw(st.integers(0, 5)) == 0:
        del ev[draw(st.sampled_from(list(ev)))]
    return ev


@settings(max_examples=1000, deadline=None)
@given(label_events())
def test_label_schema_and_decoder_agree(ev: dict) -> None:
    payload = json.dumps(ev).encode()
    try:
        DEC.label(payload)
        accepted = True
    except EventValidationError:
        accepted = False
    assert accepted == LABEL.is_valid(json.loads(payload))


@pytest.mark.parametrize("version", ["1", "1.0"])
def test_strict_versions_reject_unknown_fields_in_both(version: str) -> None:
    from tests.helpers import event, raw

    ev = event(schema_version=version, trace=1)
    assert not PRED.is_valid(ev) and not decoder_accepts(raw(ev))
    ev = event(schema_version="1.1", trace=1)
    assert PRED.is_valid(ev) and decoder_accepts(raw(ev))


def test_corpus_holds_both_valid_and_invalid_events() -> None:
    from hypothesis import find

    def ok(ev: dict) -> bool:
        return PRED.is_valid(json.loads(json.dumps(ev)))

    assert ok(find(events(), ok))
    assert not ok(find(events(), lambda ev: not ok(ev)))
    assert LABEL.is_valid(find(label_events(), LABEL.is_valid))
    assert LABEL.is_valid(
        find(label_events(), lambda ev: LABEL.is_valid(ev) and isinstance(ev["label"], bool))
    )


@pytest.mark.parametrize("value", [True, False])
def test_boolean_labels_are_valid_in_both(value: bool) -> None:
    from tests.helpers import event, raw

    ev = event(prediction={"label": value, "score": 0.9})
    assert PRED.is_valid(ev) and decoder_accepts(raw(ev))
    lbl = {"schema_version": "1", "event_id": "evt-00000001", "label_time": "2026-01-01T00:00:00Z"}
    lbl["label"] = value
    assert LABEL.is_valid(lbl)
    assert DEC.label(json.dumps(lbl).encode())[0].label is value
