"""Dead-letter redaction and the PII rules' edges, without Beam: the byte scan of payloads that
do not parse, the three ``--dead_letter_payload`` modes, misspelt model names and feature keys,
and error messages or logs that could quote a value.

Expected hashes come from the standard library's hmac, independent of the code under test.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging

import orjson
import pytest

from schemas import Limits
from schemas.specs import PiiKey, PiiRedactor, load_specs, parse_spec
from tests.integration.test_pii_paths import MARK, NEEDLE, corpus
from transforms import validate as validate_mod
from transforms.deadletters import PayloadRedactor, RawMessage, dead_letter, stored_payload
from transforms.validate import PIPELINE_ERROR_CODES, _ValidateFn, spelling_of

SECRET = b"unit-test-key-0123456789abcdef"
SPEC = parse_spec(
    "name: m\nfeatures: [{name: email, type: text, pii: hash}, {name: ssn, type: text, pii: drop},"
    " {name: a, type: numeric}]"
)
OTHER = parse_spec("name: other\nfeatures: [{name: card, type: text, pii: hash}, {name: email, type: text}]")
SPECS = load_specs("schemas/models")
NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc)


def hmac_of(value: str) -> str:
    return "hmac-sha256:" + hmac.new(SECRET, value.encode(), hashlib.sha256).hexdigest()


@pytest.fixture()
def red() -> PayloadRedactor:
    return PayloadRedactor({"m": SPEC, "other": OTHER}, PiiKey(SECRET))


def test_rules_of_every_spec_apply_whatever_model_the_payload_names(red: PayloadRedactor) -> None:
    doc = {"model": {"name": "other"}, "features": {"ssn": "1-2-3", "card": "4111", "a": 1}}
    out, found = red.redact(orjson.dumps(doc))
    assert orjson.loads(out) == {"model": {"name": "other"}, "features": {"card": hmac_of("4111"), "a": 1}}
    assert sorted(found) == ["1-2-3", "4111"]


def test_a_parseable_payload_is_redacted_anywhere_in_the_document(red: PayloadRedactor) -> None:
    doc = [{"feature": {"EMAIL ": "x@y.z"}}, {"deep": [{"ssn": 5}]}]
    out, found = red.redact(orjson.dumps(doc))
    assert orjson.loads(out) == [{"feature": {"EMAIL ": hmac_of("x@y.z")}}, {"deep": [{}]}]
    assert found == ["x@y.z", "5"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # a NaN literal elsewhere: the hash of a complete string equals the audit row's
        (b'{"a": NaN, "email": "x@y.z", "ssn": "12"}', b'{"a": NaN, "email": "HASH", "ssn": "pii:dropped"}'),
        (b'{"email": "x@y\xff.z", "a": 1}', None),  # invalid UTF-8 inside the value
        (b'{"ssn": -Infinity, "a": 1}', b'{"ssn": "pii:dropped", "a": 1}'),
        (b'{"ssn": "open to the end', b'{"ssn": "pii:dropped"'),  # a truncated prefix
        (b'{"ssn": ["a", "b"], "x": NaN}', b'{"ssn": "pii:dropped", "x": NaN}'),
        (b'{"ssn": {"v": "}"}, "x": NaN}', b'{"ssn": "pii:dropped", "x": NaN}'),
        (b"{'ssn': 'q\\'x', x: NaN}", b"{'ssn': \"pii:dropped\", x: NaN}"),  # single quotes
        (b"{ssn: 1-2-3, x: NaN}", b'{ssn: "pii:dropped", x: NaN}'),  # bare keys and values
        (b'{"s\\u0073n": "12", "x": NaN}', b'{"s\\u0073n": "pii:dropped", "x": NaN}'),  # escaped key
        (b'{"SSN ": "12", "x": NaN}', b'{"SSN ": "pii:dropped", "x": NaN}'),  # case and space
        (b'{"note": "a \\"ssn\\"", "ssn": "12", NaN', b'{"note": "a \\"ssn\\"", "ssn": "pii:dropped", NaN'),
        (b'{"ssn": null, "email": , NaN', b'{"ssn": "pii:dropped", "email": , NaN'),
    ],
)
def test_the_byte_scan_redacts_what_does_not_parse(
    red: PayloadRedactor, raw: bytes, expected: bytes | None
) -> None:
    out, _ = red.redact(raw)
    if expected is None:
        assert out.startswith(b'{"email": "hmac-sha256:') and out.endswith(b', "a": 1}') and b"x@y" not in out
    else:
        assert out == expected.replace(b"HASH", hmac_of("x@y.z").encode())


def test_without_pii_rules_payloads_are_kept_and_hash_rules_without_a_key_never_come_here() -> None:
    plain = PayloadRedactor({"p": parse_spec("name: p\nfeatures: [{name: a, type: numeric}]")}, None)
    assert not plain and plain.redact(b'{"a": NaN') == (b'{"a": NaN', [])
    drop_only = PayloadRedactor(
        {"d": parse_spec("name: d\nfeatures: [{name: ssn, type: text, pii: drop}]")}, None
    )
    assert drop_only.redact(b'{"ssn": "1", x') == (b'{"ssn": "pii:dropped", x', ["1"])


def test_payload_modes(red: PayloadRedactor) -> None:
    raw = b'{"ssn": "123-45", "a": NaN}'
    # hash and full keep the found values too: messages are scrubbed of them in every mode
    assert stored_payload(raw, "hash", red, 4096, 1000) == (None, ["123-45"])
    assert stored_payload(raw, "full", red, 4096, 1000) == (raw, ["123-45"])
    assert stored_payload(raw, "redacted", red, 4096, 1000) == (
        b'{"ssn": "pii:dropped", "a": NaN}',
        ["123-45"],
    )
    # oversized: the prefix is kept, and scanned even when the whole payload would parse
    big = b'{"ssn": "123-45", "pad": "' + b"x" * 100 + b'"}'
    assert stored_payload(big, "redacted", red, 20, 50) == (b'{"ssn": "pii:dropped", "p', ["123-45"])
    assert stored_payload(big, "full", red, 12, 50) == (big[:12], ["123"])  # the value's kept part
    with pytest.raises(ValueError, match="must be one of"):
        stored_payload(raw, "raw", red, 4096, 1000)


def test_dead_letter_keeps_hash_and_size_and_scrubs_the_message(red: PayloadRedactor) -> None:
    raw = b'{"ssn": "123-45-6789", "x": NaN}'
    for mode in ("redacted", "hash"):
        d = dead_letter(
            RawMessage(raw, {}),
            stage="decode",
            kind="prediction",
            code="internal_error",
            path="$.x",
            message="bad '123-45-6789' here",
            ingest_time=NOW,
            prefix_bytes=4096,
            max_bytes=262144,
            redactor=red,
            payload_mode=mode,
        )
        assert d["payload_sha256"] == hashlib.sha256(raw).hexdigest() and d["payload_size"] == len(raw)
        assert "123-45" not in str(d)
        assert d["payload_text"] == (None if mode == "hash" else '{"ssn": "pii:dropped", "x": NaN}')
    # invalid UTF-8 stays base64, redacted
    d = dead_letter(
        RawMessage(b'{"ssn": "12\xff34", "x": "\xfe"', {}),
        stage="decode",
        kind="prediction",
        code="invalid_encoding",
        path="$",
        message="m",
        ingest_time=NOW,
        prefix_bytes=4096,
        max_bytes=262144,
        redactor=red,
    )
    assert (
        d["payload_text"] is None
        and base64.b64decode(d["payload_base64"]) == b'{"ssn": "pii:dropped", "x": "\xfe"'
    )


def test_a_misspelt_pii_key_in_a_valid_event_is_still_redacted() -> None:
    out = PiiRedactor(SPEC, PiiKey(SECRET)).apply({"Email": "x@y.z", " ssn ": "1", "a": 1.0, "b": 2})
    assert out == {"Email": hmac_of("x@y.z"), "a": 1.0, "b": 2}


def test_spelling_of_names_the_spec_a_name_misspells() -> None:
    specs = {"fraud": SPEC}
    assert [spelling_of(n, specs) for n in ("fraud", "Fraud", " fraud\t", "FRAUD ", "fraud2")] == [
        None,
        "fraud",
        "fraud",
        "fraud",
        None,
    ]


@pytest.fixture()
def fn(monkeypatch: pytest.MonkeyPatch) -> _ValidateFn:
    monkeypatch.setenv("PREDAUDIT_PII_KEY", SECRET.decode())
    f = _ValidateFn("prediction", Limits(), SPECS, check_time_bounds=False)
    f.setup()
    return f


def test_every_corpus_case_leaves_no_marker_in_rows_or_dead_letters(fn: _ValidateFn) -> None:
    for case in corpus("2026-03-01T12:00:00Z"):
        row, dead = fn.validate(RawMessage(case.raw, {"k": "v"}, "m-1"), NOW)
        out = row if row is not None else dead
        assert NEEDLE not in str(out).lower(), case.name
        if dead is not None and dead["payload_base64"]:
            assert NEEDLE.encode() not in base64.b64decode(dead["payload_base64"]).lower(), case.name


def test_a_model_name_differing_only_by_case_or_space_is_model_name_mismatch(fn: _ValidateFn) -> None:
    for name in ("Fraud", "fraud ", "\tFRAUD"):
        ev = orjson.loads(corpus("2026-03-01T12:00:00Z")[0].raw)
        ev["model"]["name"] = name
        row, dead = fn.validate(RawMessage(orjson.dumps(ev), {}), NOW)
        assert row is None and dead["error_code"] == "model_name_mismatch", name
        assert dead["error_path"] == "$.model.name" and "'fraud'" in dead["error_message"]
        stored = orjson.loads(dead["payload_text"])["features"]
        assert stored["email"] == PiiKey(SECRET).hash(MARK) and "phone_number" not in stored
    assert "model_name_mismatch" in PIPELINE_ERROR_CODES
    # a name no spec resembles is an unmonitored model, audited as sent
    ev["model"]["name"] = "churn"
    row, dead = fn.validate(RawMessage(orjson.dumps(ev), {}), NOW)
    assert dead is None and row["model_name"] == "churn"


def test_an_internal_error_never_quotes_the_exception_text(
    fn: _ValidateFn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args, **kwargs):
        raise ValueError(f"cannot use {MARK}")

    monkeypatch.setattr(validate_mod, "prediction_row", boom)
    caplog.set_level(logging.DEBUG)
    row, dead = fn.validate(RawMessage(corpus("2026-03-01T12:00:00Z")[0].raw, {}), NOW)
    assert row is None and dead["error_code"] == "internal_error"
    assert dead["error_message"] == "ValueError (details in the worker log)"
    assert NEEDLE not in str(dead).lower()
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "ValueError" in logged and "boom" in logged and NEEDLE not in logged.lower()
