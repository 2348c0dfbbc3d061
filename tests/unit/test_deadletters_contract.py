"""The dead-letter record as an operator and a replay rely on it, without Beam.

Exact outputs of the PII byte scan (quoted, single-quoted and bare keys and values, nested and
unterminated values, escapes, a key hidden inside another key), the three payload modes at
their size edges, message scrubbing, and every field of a ``dead_letters`` row: its id is a
stored contract (a replay of the same file must give the same ids), so it is checked against
the formula computed here with hashlib, independently of the code under test.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import hmac

import orjson
import pytest

from schemas.specs import PiiKey, parse_spec
from transforms.deadletters import (
    PayloadRedactor,
    RawMessage,
    conflict_dead_letter,
    dead_letter,
    row_dead_letter,
    scrub,
    stored_payload,
)
from transforms.rows import PIPELINE_VERSION, from_micros

SECRET = b"contract-test-key-0123456789abcd"
SPEC = parse_spec(
    "name: m\nfeatures: [{name: email, type: text, pii: hash}, {name: ssn, type: text, pii: drop},"
    " {name: a, type: numeric}]"
)
NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc)
NOW_US = 1772366400000000


def hmac_of(value: str) -> str:
    return "hmac-sha256:" + hmac.new(SECRET, value.encode(), hashlib.sha256).hexdigest()


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()


@pytest.fixture()
def red() -> PayloadRedactor:
    return PayloadRedactor({"m": SPEC}, PiiKey(SECRET))


# -- the byte scan (payloads that do not parse) -----------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected", "found"),
    [
        # quoted, single-quoted and bare keys; the value up to its end
        (b'{"ssn": "12", x: NaN}', b'{"ssn": "pii:dropped", x: NaN}', ["12"]),
        (b"{'ssn': 'ab', x: NaN}", b"{'ssn': \"pii:dropped\", x: NaN}", ["ab"]),
        (b"{ssn: 9-9, x: NaN}", b'{ssn: "pii:dropped", x: NaN}', ["9-9"]),
        # a bare token ends at , } ] or a line end, trailing blanks not included
        (b"{ssn: 12 \t, x}", b'{ssn: "pii:dropped" \t, x}', ["12"]),
        (b"{ssn: 12}x", b'{ssn: "pii:dropped"}x', ["12"]),
        (b"[ssn: 12]x", b'[ssn: "pii:dropped"]x', ["12"]),
        (b"{ssn: 12\r\nx: NaN", b'{ssn: "pii:dropped"\r\nx: NaN', ["12"]),
        (b"{ssn: 12\nx: NaN", b'{ssn: "pii:dropped"\nx: NaN', ["12"]),
        (b"{ssn: XXXX, a: NaN", b'{ssn: "pii:dropped", a: NaN', ["XXXX"]),  # any token is a value
        # quoted strings with escaped quotes, in both quote styles
        (b'{"ssn": "a\\"b", x: NaN}', b'{"ssn": "pii:dropped", x: NaN}', ['a"b']),
        (b"{'ssn': 'a\\'b', x: NaN}", b"{'ssn': \"pii:dropped\", x: NaN}", ["a\\'b"]),
        (b"{'ssn': '', x: NaN}", b"{'ssn': \"pii:dropped\", x: NaN}", [""]),
        (b"{'ssn': 'a\"b', x: NaN}", b"{'ssn': \"pii:dropped\", x: NaN}", ['a"b']),
        # bracketed values: nesting, closers inside strings, escapes inside strings
        (b'{"ssn": [1, [2], 3], x: NaN}', b'{"ssn": "pii:dropped", x: NaN}', ["[1, [2], 3]"]),
        (b'{"ssn": {"v": {"w": 1}}, x}', b'{"ssn": "pii:dropped", x}', ['{"v": {"w": 1}}']),
        (b'{"ssn": ["]", "}"], x: NaN}', b'{"ssn": "pii:dropped", x: NaN}', ['["]", "}"]']),
        (b"{\"ssn\": ['}', ']'], x: NaN}", b'{"ssn": "pii:dropped", x: NaN}', ["['}', ']']"]),
        (b'{"ssn": ["\\"]"], x: NaN}', b'{"ssn": "pii:dropped", x: NaN}', ['["\\"]"]']),
        (b'{"ssn": [{"a": 1}, 2], x}', b'{"ssn": "pii:dropped", x}', ['[{"a": 1}, 2]']),
        # unterminated values run to the end of the data (a truncated prefix)
        (b'{"ssn": "open', b'{"ssn": "pii:dropped"', ["open"]),
        (b'{"ssn": [1, {"a": 2', b'{"ssn": "pii:dropped"', ['[1, {"a": 2']),
        (b'{"ssn": ["a\\', b'{"ssn": "pii:dropped"', ['["a\\']),
        # a separator or closer inside a quoted value is part of the value
        (b'{"ssn": "a,b", x: NaN}', b'{"ssn": "pii:dropped", x: NaN}', ["a,b"]),
        (b"{'ssn': 'a,b', x: NaN}", b"{'ssn': \"pii:dropped\", x: NaN}", ["a,b"]),
        (b'{"ssn": "a\\"", "b": 1, NaN', b'{"ssn": "pii:dropped", "b": 1, NaN', ['a"']),
        (b'{"ssn": ["\\"", 1], "a": 2, NaN', b'{"ssn": "pii:dropped", "a": 2, NaN', ['["\\"", 1]']),
        # a bare value running to the end; one trailing blank
        (b"{ssn: 12", b'{ssn: "pii:dropped"', ["12"]),
        (b"{ssn: 12 , x}", b'{ssn: "pii:dropped" , x}', ["12"]),
        # a key at the very end (no value) and a key with an empty value are left alone
        (b'{"x": 1, "ssn": ', b'{"x": 1, "ssn": ', []),
        (b'{"ssn": , "email": ,x', b'{"ssn": , "email": ,x', []),
        (b'{"email": , "ssn": "12", x', b'{"email": , "ssn": "pii:dropped", x', ["12"]),
        # null is not a PII value (nothing to scrub) but the token is still replaced
        (b'{"ssn": null, x: NaN}', b'{"ssn": "pii:dropped", x: NaN}', []),
        (b'{"ssn":null}x', b'{"ssn":"pii:dropped"}x', []),
        # a PII key inside a non-PII single-quoted key is still found
        (b"{'x, \"ssn\": 7, y': 2, NaN", b'{\'x, "ssn": "pii:dropped", y\': 2, NaN', ["7"]),
        (b"{'\"ssn\": 7, y': 2, NaN", b'{\'"ssn": "pii:dropped", y\': 2, NaN', ["7"]),
        # keys by spelling: escapes decoded, case and surrounding space ignored; a raw tab in a
        # key (not valid JSON) is read as its bytes
        (b'{"s\\u0073n": "12", x}', b'{"s\\u0073n": "pii:dropped", x}', ["12"]),
        (b'{" SSN\\t": "12", x}', b'{" SSN\\t": "pii:dropped", x}', ["12"]),
        (b'{"ssn\t": "12", x}', b'{"ssn\t": "pii:dropped", x}', ["12"]),
        (b'{"ss\xffn": "12", x}', b'{"ss\xffn": "12", x}', []),  # not a PII key: kept
        # non-PII keys and values are copied byte for byte
        (b'{"note": "a \\"ssn\\"", "k": 1, NaN', b'{"note": "a \\"ssn\\"", "k": 1, NaN', []),
        (b'  {"a": 1, "b": [1, 2], NaN  ', b'  {"a": 1, "b": [1, 2], NaN  ', []),
    ],
)
def test_the_byte_scan_replaces_exactly_the_pii_values(
    red: PayloadRedactor, raw: bytes, expected: bytes, found: list[str]
) -> None:
    assert red.redact(raw) == (expected, found)
    assert red.redact(raw, parse=False) == (expected, found)


def test_the_byte_scan_hashes_hash_rule_values_like_the_audit_row(red: PayloadRedactor) -> None:
    """A complete JSON string hashes to the audit row's value; anything else by its text."""
    cases = {
        b'{"email": "x@y.z", a: NaN}': ("x@y.z", b'{"email": "H", a: NaN}'),
        b"{'email': 'x@y.z', a: NaN}": ("x@y.z", b"{'email': \"H\", a: NaN}"),
        b'{"email": "x\\u0040y", a: NaN}': ("x@y", b'{"email": "H", a: NaN}'),
        b'{"email": "x@y\xff.z", a: NaN}': ("x@y\ufffd.z", b'{"email": "H", a: NaN}'),
        b'{"email": "cut sh': ("cut sh", b'{"email": "H"'),
        b'{"email": "': ("", b'{"email": "H"'),
        b"{email: 42, a: NaN}": ("42", b'{email: "H", a: NaN}'),
        b"{email: 4\xff2, a: NaN}": ("4\ufffd2", b'{email: "H", a: NaN}'),
    }
    for raw, (value, shape) in cases.items():
        out, found = red.redact(raw)
        assert found == [value], raw
        assert out == shape.replace(b"H", hmac_of(value).encode()), raw


def test_the_hash_of_a_hash_rule_without_a_key_is_the_drop_marker() -> None:
    keyless = PayloadRedactor({"m": SPEC}, None)
    assert keyless.redact(b'{"email": "x@y.z", a: NaN}') == (
        b'{"email": "pii:dropped", a: NaN}',
        ["x@y.z"],
    )
    assert keyless.redact(b'{"email": "x@y.z", "ssn": 1}') == (b'{"email":"pii:dropped"}', ["x@y.z", "1"])


# -- parseable payloads ----------------------------------------------------------------------
def test_a_parseable_payload_is_redacted_as_a_document(red: PayloadRedactor) -> None:
    doc = {
        "features": {"Email": "x@y.z", "ssn": 123, "a": 1.5, "nested": [{"ssn": [1, 2]}, 3, "s"]},
        "list": [[{"EMAIL ": 7}]],
        "email": None,
        "ssn": None,
    }
    out, found = red.redact(orjson.dumps(doc))
    assert orjson.loads(out) == {
        "features": {"Email": hmac_of("x@y.z"), "a": 1.5, "nested": [{}, 3, "s"]},
        "list": [[{"EMAIL ": PiiKey(SECRET).hash(7)}]],
        "email": None,  # a null hash value stays null; a null drop value goes
    }
    assert found == ["x@y.z", "123", "[1,2]", "7"]
    # the same bytes without parsing: the byte scan keeps the document's formatting
    spaced = b'{"ssn": 1,  "a": 2}'
    assert red.redact(spaced) == (b'{"a":2}', ["1"])
    assert red.redact(spaced, parse=False) == (b'{"ssn": "pii:dropped",  "a": 2}', ["1"])


def test_no_pii_rules_means_the_payload_is_kept_as_sent() -> None:
    plain = PayloadRedactor({"p": parse_spec("name: p\nfeatures: [{name: ssn, type: text}]")}, None)
    assert not plain and plain.redact(b'{"ssn": "1",  "a": 2}') == (b'{"ssn": "1",  "a": 2}', [])
    assert PayloadRedactor({"m": SPEC}, None)


# -- scrubbing messages --------------------------------------------------------------------
def test_scrub_removes_values_of_three_chars_or_more_longest_first() -> None:
    assert scrub("a ab abc abcd", ["ab", "abc"]) == "a ab <pii> <pii>d"
    assert scrub("id abcdzz1 and zz1", ["zz1", "abcdzz1"]) == "id <pii> and <pii>"
    assert scrub("no values", []) == "no values"


# -- what a dead letter stores ----------------------------------------------------------------
def test_stored_payload_modes_at_the_size_edge(red: PayloadRedactor) -> None:
    raw = b'{"ssn": "123",  "a": 1}'  # parses: a redacted copy is re-serialized
    n = len(raw)
    assert stored_payload(raw, "redacted", red, 4, n) == (b'{"a":1}', ["123"])  # exactly the cap
    assert stored_payload(raw, "full", red, 4, n) == (raw, ["123"])
    assert stored_payload(raw, "hash", red, 4, n) == (None, ["123"])
    # one byte over: only the prefix, byte-scanned (a prefix never parses as the whole)
    assert stored_payload(raw, "redacted", red, 12, n - 1) == (b'{"ssn": "pii:dropped"', ["123"])
    assert stored_payload(raw, "full", red, 12, n - 1) == (raw[:12], ["123"])
    assert stored_payload(raw, "redacted", None, 12, n - 1) == (raw[:12], [])
    # a prefix that happens to parse is still byte-scanned (the documented form of a prefix)
    padded = b'{"ssn":  1}' + b" " * 20
    assert stored_payload(padded, "redacted", red, 11, 15) == (b'{"ssn":  "pii:dropped"}', ["1"])
    for bad in ("raw", "", "REDACTED"):
        with pytest.raises(ValueError, match=r"dead letter payload mode must be one of .*'redacted'"):
            stored_payload(raw, bad, red, 4, n)


def msg(data: bytes = b"{bad", **kw) -> RawMessage:
    return RawMessage(data, kw.pop("attributes", {"k": "v"}), **kw)


def letter(m: RawMessage, **kw) -> dict:
    args = dict(
        stage="decode",
        kind="prediction",
        code="invalid_json",
        path="$",
        message="bad json",
        ingest_time=NOW,
        prefix_bytes=4096,
        max_bytes=262144,
    )
    return dead_letter(m, **{**args, **kw})


def test_every_field_of_a_decode_dead_letter() -> None:
    published = dt.datetime(2026, 3, 1, 11, 59, 59, 5, tzinfo=dt.timezone.utc)
    raw = b'{"x": 1'
    d = letter(
        msg(raw, message_id="m-1", publish_time=published, attributes={"a": "1", "b": "2"}),
        event_id="e-1",
        model=("fraud", "3"),
    )
    assert d == {
        "dead_letter_id": sha(f"decode\x00invalid_json\x00{sha(raw)}\x00m-1"),
        "stage": "decode",
        "kind": "prediction",
        "error_code": "invalid_json",
        "error_path": "$",
        "error_message": "bad json",
        "event_id": "e-1",
        "model_name": "fraud",
        "model_version": "3",
        "payload_text": '{"x": 1',
        "payload_base64": None,
        "payload_sha256": sha(raw),
        "payload_size": 7,
        "payload_truncated": False,
        "attributes": '{"a":"1","b":"2"}',
        "message_id": "m-1",
        "publish_time": NOW_US - 1_000_000 + 5,
        "ingest_time": NOW_US,
        "pipeline_version": PIPELINE_VERSION,
    }
    bare = letter(RawMessage(b"{bad", None))  # type: ignore[arg-type]
    assert bare["dead_letter_id"] == sha(f"decode\x00invalid_json\x00{sha(b'{bad')}\x00")
    assert (bare["attributes"], bare["message_id"], bare["publish_time"]) == ("{}", None, None)
    assert (bare["event_id"], bare["model_name"], bare["model_version"]) == (None, None, None)


def test_dead_letter_ids_separate_stage_code_payload_and_message() -> None:
    base = letter(msg(message_id="m-1"))["dead_letter_id"]
    assert letter(msg(message_id="m-1"), ingest_time=NOW + dt.timedelta(hours=1))["dead_letter_id"] == base
    assert letter(msg(message_id="m-1"), message="other")["dead_letter_id"] == base
    others = [
        letter(msg(message_id="m-1"), stage="dedup"),
        letter(msg(message_id="m-1"), code="too_large"),
        letter(msg(b"{bad2", message_id="m-1")),
        letter(msg(message_id="m-2")),
        letter(msg()),
    ]
    assert len({base, *(o["dead_letter_id"] for o in others)}) == 6
    assert letter(msg(message_id=""))["dead_letter_id"] == letter(msg())["dead_letter_id"]


def test_a_large_payload_keeps_its_prefix_and_the_whole_payloads_hash_and_size() -> None:
    data = b"x" * 300
    at_cap = letter(msg(data), prefix_bytes=10, max_bytes=300)
    assert (at_cap["payload_text"], at_cap["payload_truncated"]) == ("x" * 300, False)
    over = letter(msg(data), prefix_bytes=10, max_bytes=299)
    assert (over["payload_text"], over["payload_truncated"]) == ("x" * 10, True)
    assert (over["payload_size"], over["payload_sha256"]) == (300, sha(data))


def test_binary_payloads_are_base64_and_hash_mode_stores_neither() -> None:
    d = letter(msg(b"\xff\xfe{"))
    assert (d["payload_text"], base64.b64decode(d["payload_base64"])) == (None, b"\xff\xfe{")
    h = letter(msg(b"\xff\xfe{"), payload_mode="hash")
    assert (h["payload_text"], h["payload_base64"], h["payload_size"]) == (None, None, 3)


def test_pii_found_in_the_payload_is_scrubbed_from_message_and_path(red: PayloadRedactor) -> None:
    for mode in ("redacted", "hash", "full"):
        d = letter(
            msg(b'{"ssn": "123-45", x}'),
            path="$.features['123-45']",
            message="value '123-45' is not numeric",
            redactor=red,
            payload_mode=mode,
        )
        assert (d["error_path"], d["error_message"]) == (
            "$.features['<pii>']",
            "value '<pii>' is not numeric",
        )
    assert letter(msg(), message="m" * 2500)["error_message"] == "m" * 2000


# -- dead letters for rows -------------------------------------------------------------------
ROW = {
    "event_id": "evt-1",
    "model_name": "fraud",
    "model_version": "2",
    "message_id": "m-9",
    "publish_time": NOW_US - 7,
    "ingest_time": NOW_US,
    "payload_sha256": "ab" * 32,
    "score": 0.5,
}


def test_a_row_dead_letter_carries_the_row_as_payload() -> None:
    d = row_dead_letter("predictions", ROW, stage="sink.clickhouse", code="sink_rejected", message="no")
    payload = orjson.dumps(ROW)
    assert d == {
        "dead_letter_id": sha(f"sink.clickhouse\x00sink_rejected\x00{sha(payload)}\x00m-9"),
        "stage": "sink.clickhouse",
        "kind": "row",
        "error_code": "sink_rejected",
        "error_path": "$.predictions",
        "error_message": "no",
        "event_id": "evt-1",
        "model_name": "fraud",
        "model_version": "2",
        "payload_text": payload.decode(),
        "payload_base64": None,
        "payload_sha256": sha(payload),
        "payload_size": len(payload),
        "payload_truncated": False,
        "attributes": '{"table":"predictions"}',
        "message_id": "m-9",
        "publish_time": NOW_US - 7,
        "ingest_time": NOW_US,
        "pipeline_version": PIPELINE_VERSION,
    }
    big = {"event_id": "e", "blob": "y" * 300_000}  # above any decode cap: still kept whole
    assert (
        orjson.loads(row_dead_letter("labels", big, stage="s", code="c", message="m")["payload_text"]) == big
    )
    d = row_dead_letter("labels", ROW, stage="s", code="c", message="m", kind="label", path="$.label")
    assert (d["kind"], d["error_path"]) == ("label", "$.label")


def test_a_row_dead_letter_serializes_any_value_and_stamps_rows_without_ingest_time() -> None:
    row = {"value": decimal.Decimal("1.25"), 7: "int key", "when": dt.date(2026, 1, 2)}
    before = dt.datetime.now(dt.timezone.utc)
    d = row_dead_letter("drift_metrics", row, stage="sink.bigquery", code="sink_rejected", message="m")
    after = dt.datetime.now(dt.timezone.utc)
    assert orjson.loads(d["payload_text"]) == {"value": "1.25", "7": "int key", "when": "2026-01-02"}
    assert d["publish_time"] is None and d["message_id"] is None and d["event_id"] is None
    assert before <= from_micros(d["ingest_time"]) <= after  # the diversion time


def test_a_conflicting_duplicate_names_the_identity_and_keeps_its_id_across_runs() -> None:
    d = conflict_dead_letter("predictions", ROW, "content sha256 cd")
    assert (d["stage"], d["kind"], d["error_code"], d["error_path"]) == (
        "dedup",
        "prediction",
        "conflicting_duplicate",
        "$",
    )
    assert d["error_message"] == (
        "predictions: a later copy of (fraud, evt-1) with different content than the audit row "
        "(the first copy: content sha256 cd); this copy is not audited, it is kept here as "
        "evidence. Fix the producer: one event_id per prediction and model, re-sent only unchanged"
    )
    assert d["dead_letter_id"] == sha(f"dedup\x00conflicting_duplicate\x00{'ab' * 32}\x00m-9")
    assert orjson.loads(d["payload_text"]) == ROW and d["attributes"] == '{"table":"predictions"}'
    label = conflict_dead_letter("labels", ROW, "first")
    assert label["kind"] == "label"
    assert label["error_message"].startswith("labels: a later copy of label for evt-1 with different")
    other = conflict_dead_letter("drift_metrics", ROW, "first")
    assert other["kind"] == "row" and "a later copy of label for evt-1" in other["error_message"]
    # without the original payload's hash or a message id: the row's own hash, no message id
    bare = {k: v for k, v in ROW.items() if k not in ("payload_sha256", "message_id")}
    b = conflict_dead_letter("predictions", bare, "first")
    assert b["dead_letter_id"] == sha(f"dedup\x00conflicting_duplicate\x00{sha(orjson.dumps(bare))}\x00")
