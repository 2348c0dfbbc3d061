"""Identity (model name, event_id) and conflicting duplicates in the replay dedup.

``DuplicateKeys`` (keys from the raw bytes) + ``DropLaterCopies`` (rows), as replay wires them:
two models may share an event_id; a later copy of one identity with other content is a
``conflicting_duplicate`` dead letter and the FIRST copy (by ingest time) is the audit row.
"""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics.metric import MetricsFilter

from pipelines.replay import identity_of
from schemas import Decoders
from tests.helpers import event
from transforms.dedup import DropLaterCopies, DuplicateKeys
from transforms.identity import identity, row_identity
from transforms.rows import canonical_content, content_sha256, prediction_row

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
DEC = Decoders()


def raw_event(model: str, event_id: str, score: float = 0.9, **changes) -> bytes:
    return orjson.dumps(
        event(
            event_id=event_id,
            model={"name": model, "version": "1"},
            prediction={"label": "legit", "score": score},
            **changes,
        )
    )


def row_of(raw: bytes, ingest_s: float) -> dict:
    ev, ts = DEC.prediction(raw)
    return prediction_row(ev, ts, raw, ingest_time=T0 + dt.timedelta(seconds=ingest_s))


def test_identity_from_raw_bytes_is_the_identity_of_the_row() -> None:
    for model, eid in [("fraud", "evt-00000001"), ("churn", "evt-00000001"), ("a.b", "x:y-z_0.1")]:
        raw = raw_event(model, eid)
        assert identity_of(raw) == row_identity(row_of(raw, 0)) == identity(model, eid)
    assert identity_of(raw_event("fraud", "evt-00000001")) != identity_of(raw_event("churn", "evt-00000001"))
    # unparseable or without a model: no key (the event is a dead letter at validation)
    assert identity_of(b'{"event_id": "evt-00000001", "model": "fraud"}') is None
    assert identity_of(b"\xff") is None


def test_canonical_content_ignores_delivery_and_serialisation_only() -> None:
    base = row_of(raw_event("fraud", "evt-00000001"), 0)
    ev = orjson.loads(raw_event("fraud", "evt-00000001"))
    # same instant at another offset, keys in another order, other spacing: other bytes
    ev["event_time"] = "2026-03-01T13:00:00.123+01:00"
    ev["features"] = dict(reversed(list(ev["features"].items())))
    reordered = {k: ev[k] for k in reversed(list(ev))}
    raw2 = orjson.dumps(reordered, option=orjson.OPT_INDENT_2)
    again = {**row_of(raw2, 5), "message_id": "m2", "publish_time": 7}
    assert again["payload_sha256"] != base["payload_sha256"]
    assert canonical_content(again) == canonical_content(base)
    for change in (
        {"prediction": {"label": "legit", "score": 0.5}},
        {"model": {"name": "fraud", "version": "2"}},
        {"latency_ms": 99.0},
        {"event_time": "2026-03-01T12:00:01.123Z"},
    ):
        changed = {**orjson.loads(raw_event("fraud", "evt-00000001")), **change}
        assert content_sha256(row_of(orjson.dumps(changed), 0)) != content_sha256(base), change


_STORE: dict[str, list] = {}


def _keep(x: dict, name: str) -> None:
    _STORE.setdefault(name, []).append(x)


def replay_dedup(raws_with_ingest: list[tuple[bytes, float]]) -> tuple[list, list, dict[str, int]]:
    """Run DuplicateKeys + DropLaterCopies over one 'file' (one batch per input list entry order).

    Returns (audit rows, dead letters, counters)."""
    raws = [r for r, _ in raws_with_ingest]
    rows = [row_of(r, s) for r, s in raws_with_ingest]
    p = beam.Pipeline()
    dup_keys = p | "Raw" >> beam.Create([raws]) | DuplicateKeys(identity_of)
    unique, firsts, dead = p | "Rows" >> beam.Create([rows]) | DropLaterCopies(dup_keys, "predictions")
    got_rows = (unique, firsts) | beam.Flatten() | beam.FlatMap(lambda b: b)
    _STORE.clear()
    # the in-process DirectRunner: a module-level function reaches this module's _STORE
    _ = got_rows | "KeepRows" >> beam.Map(_keep, "rows")
    _ = dead | "KeepDead" >> beam.Map(_keep, "dead")
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter())["counters"]
        if c.key.metric.name.startswith("predictions_")
    }
    return list(_STORE.get("rows", [])), list(_STORE.get("dead", [])), counters


def test_two_models_sharing_event_ids_keep_all_their_rows() -> None:
    ids = [f"evt-{i:08d}" for i in range(10)]
    raws = [(raw_event("fraud", i), 0) for i in ids] + [(raw_event("churn", i, score=0.1), 0) for i in ids]
    rows, dead, counters = replay_dedup(raws)
    assert sorted((r["model_name"], r["event_id"]) for r in rows) == sorted(
        [("fraud", i) for i in ids] + [("churn", i) for i in ids]
    )
    assert dead == [] and counters.get("predictions_duplicates", 0) == 0


@pytest.mark.parametrize("order", ["first_then_later", "later_then_first"])
def test_replay_conflicting_duplicate_first_copy_is_the_row_later_is_a_dead_letter(order: str) -> None:
    """Two copies of one identity that differ in payload and ingest time: WHICH one is the row."""
    first = (raw_event("fraud", "evt-00000042", score=0.9), 1.0)
    later = (raw_event("fraud", "evt-00000042", score=0.1), 2.0)
    identical = (raw_event("fraud", "evt-00000042", score=0.9), 3.0)  # same content as the first
    other_model = (raw_event("churn", "evt-00000042", score=0.5), 0.5)
    inputs = [first, later, identical, other_model]
    if order == "later_then_first":
        inputs.reverse()
    rows, dead, counters = replay_dedup(inputs)
    by_model = {r["model_name"]: r for r in rows}
    assert len(rows) == 2 and set(by_model) == {"fraud", "churn"}
    assert by_model["fraud"]["prediction_score"] == 0.9
    assert by_model["fraud"]["ingest_time"] == row_of(*first)["ingest_time"]
    assert len(dead) == 1
    (d,) = dead
    assert (d["error_code"], d["stage"], d["kind"]) == ("conflicting_duplicate", "dedup", "prediction")
    assert (d["model_name"], d["event_id"]) == ("fraud", "evt-00000042")
    evidence = orjson.loads(d["payload_text"])
    assert evidence["prediction_score"] == 0.1
    assert evidence["payload_sha256"] == row_of(*later)["payload_sha256"]
    assert by_model["fraud"]["payload_sha256"] in d["error_message"]
    assert counters["predictions_conflicting_duplicates"] == 1
    assert counters["predictions_duplicates"] == 1  # the identical copy collapsed, counted


def test_conflict_dead_letter_keeps_pii_as_the_row_has_it() -> None:
    """The evidence is the row: PII features already hashed/dropped, never the raw value."""
    from schemas.specs import PiiKey, PiiRedactor, parse_spec
    from transforms.deadletters import conflict_dead_letter

    spec = parse_spec(
        "name: fraud\nfeatures: [{name: email, type: text, pii: hash}, {name: ssn, type: text, pii: drop}]"
    )
    red = PiiRedactor(spec, PiiKey(b"unit-test-key-0123456789abcdef"))
    raw = raw_event(
        "fraud", "evt-00000077", score=0.1, features={"email": "a@secret.example", "ssn": "123-45"}
    )
    ev, ts = DEC.prediction(raw)
    row = prediction_row(ev, ts, raw, ingest_time=T0, redactor=red)
    d = conflict_dead_letter("predictions", row, "first")
    assert "a@secret.example" not in d["payload_text"] and "123-45" not in d["payload_text"]
    assert "hmac-sha256:" in d["payload_text"]
