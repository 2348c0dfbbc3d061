"""Dedup, precisely: which copy is the audit row, with which event time, what is counted, and
what the dead letter says; bounded (GroupByKey), streaming (state + timer) and replay paths.

``make mutate`` showed the dedup tests let these through: the element timestamps of kept rows
and dead letters (event time, or label time for labels), the payload-hash tie-break when two
copies share an ingest time, the count of identical copies, the first copy named in the dead
letter, the horizon timer, which keys the replay's first pass calls duplicated, and the batches
``DropLaterCopies`` passes on.
"""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from pipelines.replay import identity_of
from schemas import Decoders
from tests.unit.test_dedup_stream import T0, counter_value, prediction, streaming
from tests.unit.test_identity import raw_event, replay_dedup, row_of
from transforms.dedup import DEAD_LETTERS, DedupByEventId, DropLaterCopies, DuplicateKeys
from transforms.identity import row_identity
from transforms.rows import content_sha256, label_row


def _with_time(value: dict, ts=beam.DoFn.TimestampParam) -> tuple[str, float, int]:
    """(event_id, prediction score or label, element timestamp in whole microseconds)."""
    return value["event_id"], value.get("prediction_score", value.get("label")), ts.micros


def _micros(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1_000_000)


def test_bounded_rows_and_dead_letters_are_stamped_with_their_own_event_time() -> None:
    first = prediction("fraud", "evt-00000010", 0.9, ingest_s=1, event_time="2026-03-01T12:00:00Z")
    later = prediction("fraud", "evt-00000010", 0.2, ingest_s=5, event_time="2026-03-01T12:30:00Z")
    p = beam.Pipeline()
    out = p | beam.Create([later, first]) | DedupByEventId(horizon_s=3600)
    assert_that(
        out.rows | "RowTime" >> beam.Map(_with_time),
        equal_to([("evt-00000010", 0.9, _micros("2026-03-01T12:00:00+00:00"))]),
        label="rows",
    )
    dead = out[DEAD_LETTERS] | "DeadTime" >> beam.Map(
        lambda d, ts=beam.DoFn.TimestampParam: (d["error_message"], ts.micros)
    )
    first_copy = (
        f"(the first copy: payload sha256 {first['payload_sha256']}, ingested 2026-03-01T00:00:01+00:00)"
    )
    assert_that(
        dead | beam.Map(lambda m: (first_copy in m[0], m[1])),
        equal_to([(True, _micros("2026-03-01T12:30:00+00:00"))]),
        label="dead",
    )
    p.run().wait_until_finish()


def label(ingest_s: int, value: str = "fraud") -> dict:
    payload = orjson.dumps(
        {
            "schema_version": "1",
            "event_id": "evt-00000011",
            "label_time": "2026-03-01T13:00:00Z",
            "label": value,
        }
    )
    ev, ts = Decoders().label(payload)
    return label_row(ev, ts, payload, ingest_time=T0 + dt.timedelta(seconds=ingest_s))


def test_bounded_label_dedup_keeps_one_copy_stamped_with_its_label_time() -> None:
    """Labels dedup by payload hash (a correction is another label) and carry the label time."""
    first, again, correction = label(1), label(9), label(4, "legit")
    p = beam.Pipeline()
    out = p | beam.Create([again, first, correction]) | DedupByEventId(3600, "labels", "payload_sha256")
    at = _micros("2026-03-01T13:00:00+00:00")
    assert_that(
        out.rows | beam.Map(lambda r, ts=beam.DoFn.TimestampParam: (r["label"], r["ingest_time"], ts.micros)),
        equal_to([("fraud", first["ingest_time"], at), ("legit", correction["ingest_time"], at)]),
        label="rows",
    )
    assert_that(out[DEAD_LETTERS], equal_to([]), label="dead")
    result = p.run()
    result.wait_until_finish()
    assert counter_value(result, "labels_duplicates") == 1
    assert counter_value(result, "labels_conflicting_duplicates") == 0


@pytest.mark.parametrize("reverse", [False, True])
def test_an_ingest_time_tie_is_broken_by_the_payload_hash_in_any_input_order(reverse: bool) -> None:
    a = prediction("fraud", "evt-00000012", 0.9, ingest_s=3)
    b = prediction("fraud", "evt-00000012", 0.1, ingest_s=3)
    winner, loser = sorted([a, b], key=lambda r: r["payload_sha256"])
    p = beam.Pipeline()
    out = p | beam.Create([b, a] if reverse else [a, b]) | DedupByEventId(horizon_s=3600)
    assert_that(
        out.rows | beam.Map(lambda r: r["payload_sha256"]), equal_to([winner["payload_sha256"]]), label="rows"
    )
    assert_that(
        out[DEAD_LETTERS] | beam.Map(lambda d: orjson.loads(d["payload_text"])["payload_sha256"]),
        equal_to([loser["payload_sha256"]]),
        label="dead",
    )
    p.run().wait_until_finish()


def test_bounded_dedup_counts_every_identical_and_reserialised_copy() -> None:
    """Three byte-identical copies and one with other bytes but the same content: 4 duplicates."""
    first = prediction("fraud", "evt-00000013", 0.9, ingest_s=1)
    copies = [prediction("fraud", "evt-00000013", 0.9, ingest_s=s) for s in (2, 3, 4)]
    features = dict(reversed(list(orjson.loads(first["features"]).items())))
    reserialised = {**first, "ingest_time": first["ingest_time"] + 9, "payload_sha256": "f" * 64}
    reserialised["features"] = orjson.dumps(features).decode()
    p = beam.Pipeline()
    out = p | beam.Create([*copies, reserialised, first]) | DedupByEventId(horizon_s=3600)
    assert_that(
        out.rows | beam.Map(lambda r: r["ingest_time"]), equal_to([first["ingest_time"]]), label="rows"
    )
    assert_that(out[DEAD_LETTERS], equal_to([]), label="dead")
    result = p.run()
    result.wait_until_finish()
    assert counter_value(result, "predictions_duplicates") == 4
    assert counter_value(result, "predictions_conflicting_duplicates") == 0


def test_streaming_dead_letter_names_the_kept_content() -> None:
    first = prediction("fraud", "evt-00000014", 0.9, ingest_s=1)
    same = [prediction("fraud", "evt-00000014", 0.9, ingest_s=s) for s in (2, 3)]
    conflict = prediction("fraud", "evt-00000014", 0.3, ingest_s=4)
    t = first["event_time"] / 1e6
    stream = EventStream().add_elements([TimestampedValue(first, t)])
    for r in [*same, conflict]:
        stream = stream.add_elements([TimestampedValue(r, t)])
    p = beam.Pipeline(options=streaming())
    out = p | stream.advance_watermark_to_infinity() | DedupByEventId(horizon_s=3600)
    assert_that(
        out.rows | beam.Map(lambda r: r["ingest_time"]), equal_to([first["ingest_time"]]), label="rows"
    )
    said = f"predictions: a later copy of (fraud, evt-00000014) with different content than the audit row (the first copy: content sha256 {content_sha256(first)});"
    assert_that(
        out[DEAD_LETTERS]
        | beam.Map(
            lambda d: (
                d["error_message"].startswith(said),
                d["error_code"],
                d["kind"],
                orjson.loads(d["attributes"])["table"],
            )
        ),
        equal_to([(True, "conflicting_duplicate", "prediction", "predictions")]),
        label="dead",
    )
    p.run().wait_until_finish()


def test_streaming_keeps_the_first_copy_for_the_whole_horizon_after_its_event_time() -> None:
    """The watermark passes the event time (not yet the horizon): a copy is still a duplicate."""
    first = prediction("fraud", "evt-00000015", 0.9, ingest_s=1)
    t = first["event_time"] / 1e6
    stream = (
        EventStream()
        .add_elements([TimestampedValue(first, t)])
        .advance_watermark_to(t + 30)  # half of the 60 s horizon
        .add_elements([TimestampedValue(prediction("fraud", "evt-00000015", 0.9, ingest_s=2), t + 31)])
        .advance_watermark_to(t + 59)
        .add_elements([TimestampedValue(prediction("fraud", "evt-00000015", 0.9, ingest_s=3), t + 59.5)])
        .advance_watermark_to(t + 120)  # horizon over: the state is gone, a re-send passes
        .add_elements([TimestampedValue(prediction("fraud", "evt-00000015", 0.9, ingest_s=4), t + 121)])
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=streaming()) as p:
        out = p | stream | DedupByEventId(horizon_s=60)
        assert_that(
            out.rows | beam.Map(lambda r: r["ingest_time"]),
            equal_to([first["ingest_time"], first["ingest_time"] + 3_000_000]),
        )


def test_streaming_default_horizon_is_one_hour() -> None:
    first = prediction("fraud", "evt-00000016", 0.9, ingest_s=1)
    t = first["event_time"] / 1e6
    copy = [prediction("fraud", "evt-00000016", 0.9, ingest_s=s) for s in (2, 3)]
    stream = (
        EventStream()
        .add_elements([TimestampedValue(first, t)])
        .advance_watermark_to(t + 3599)
        .add_elements([TimestampedValue(copy[0], t + 3599)])  # within the hour: a duplicate
        .advance_watermark_to(t + 3600.5)
        .add_elements([TimestampedValue(copy[1], t + 3600.5)])  # after it: passes (views catch it)
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=streaming()) as p:
        out = p | stream | DedupByEventId()
        assert_that(
            out.rows | beam.Map(lambda r: r["ingest_time"]),
            equal_to([first["ingest_time"], copy[1]["ingest_time"]]),
        )


@pytest.mark.parametrize("horizon", [0, 0.0, -1])
def test_a_horizon_that_is_not_positive_is_refused(horizon: float) -> None:
    with pytest.raises(ValueError) as info:
        DedupByEventId(horizon_s=horizon)
    assert str(info.value) == "dedup horizon must be > 0 seconds"
    assert DedupByEventId(horizon_s=0.001).horizon_s == 0.001


def key_of(raw: bytes) -> str | None:
    """Test key extractor: the payload text, or None for an unkeyable payload."""
    return None if raw.startswith(b"?") else raw.decode()


def test_duplicate_keys_finds_keys_repeated_within_and_across_batches_only() -> None:
    batches = [[b"a", b"b", b"?x"], [b"b", b"c", b"c", b"d"], [b"e", b"?x"], [b"f", b"a", b"a"]]
    with beam.Pipeline() as p:
        for shards in (1, 3, 64):
            dups = (
                p
                | f"Batches{shards}" >> beam.Create(batches)
                | f"Keys{shards}" >> DuplicateKeys(key_of, shards)
            )
            assert_that(dups, equal_to(["a", "b", "c"]), label=f"shards{shards}")


def _ids(batches: list[list[dict]]) -> list[list[str]]:
    return [[r["event_id"] for r in b] for b in batches]


def test_drop_later_copies_passes_unique_rows_in_their_batches_and_skips_empty_ones() -> None:
    """Rows whose key is not duplicated keep their batch; a batch of only duplicates vanishes."""
    r1 = row_of(raw_event("fraud", "evt-00000021"), 0)
    d_first = row_of(raw_event("fraud", "evt-00000022"), 1)
    d_later = row_of(raw_event("fraud", "evt-00000022"), 2)
    r3 = row_of(raw_event("fraud", "evt-00000023"), 0)
    raws = [[raw_event("fraud", f"evt-0000002{i}") for i in (1, 2, 2, 3)]]
    with beam.Pipeline() as p:
        dup_keys = p | "Raw" >> beam.Create(raws) | DuplicateKeys(identity_of)
        batches = p | "Rows" >> beam.Create([[r1, d_later], [d_first], [r3]])
        unique, firsts, dead = batches | DropLaterCopies(dup_keys, "predictions")
        assert_that(
            unique | "U" >> beam.Map(lambda b: [r["event_id"] for r in b]),
            equal_to([["evt-00000021"], ["evt-00000023"]]),
            label="unique",
        )
        assert_that(
            firsts | "F" >> beam.Map(lambda b: [(r["event_id"], r["ingest_time"]) for r in b]),
            equal_to([[("evt-00000022", d_first["ingest_time"])]]),
            label="firsts",
        )
        assert_that(dead, equal_to([]), label="dead")


def test_drop_later_copies_by_default_dedups_predictions_by_identity() -> None:
    """The defaults (predictions, keyed by identity, stamped by event time): a conflict is a
    prediction's dead letter; the resolved row keeps the first copy's event time."""
    first = row_of(raw_event("fraud", "evt-00000024", 0.9, event_time="2026-03-01T12:00:00Z"), 1)
    later = row_of(raw_event("fraud", "evt-00000024", 0.1, event_time="2026-03-01T12:05:00Z"), 2)
    with beam.Pipeline() as p:
        dup_keys = p | "Keys" >> beam.Create([row_identity(first)])
        unique, firsts, dead = p | "Rows" >> beam.Create([[later], [first]]) | DropLaterCopies(dup_keys)
        assert_that(unique, equal_to([]), label="unique")
        assert_that(
            firsts | "F" >> beam.FlatMap(lambda b: b) | "FT" >> beam.Map(_with_time),
            equal_to([("evt-00000024", 0.9, _micros("2026-03-01T12:00:00+00:00"))]),
            label="firsts",
        )
        said = "predictions: a later copy of (fraud, evt-00000024) with different content"
        assert_that(
            dead
            | "D"
            >> beam.Map(
                lambda d, ts=beam.DoFn.TimestampParam: (
                    d["error_message"].startswith(said),
                    d["kind"],
                    ts.micros,
                )
            ),
            equal_to([(True, "prediction", _micros("2026-03-01T12:05:00+00:00"))]),
            label="dead",
        )


def test_drop_later_copies_without_duplicates_passes_every_batch_whole() -> None:
    rows = [row_of(raw_event("fraud", f"evt-0000003{i}"), 0) for i in range(4)]
    with beam.Pipeline() as p:
        dup_keys = p | "NoDups" >> beam.Create([])
        unique, firsts, dead = p | "Rows" >> beam.Create([rows[:3], rows[3:]]) | DropLaterCopies(dup_keys)
        assert_that(
            unique | "U" >> beam.Map(lambda b: [r["event_id"] for r in b]),
            equal_to([["evt-00000030", "evt-00000031", "evt-00000032"], ["evt-00000033"]]),
            label="unique",
        )
        assert_that(firsts, equal_to([]), label="firsts")
        assert_that(dead, equal_to([]), label="dead")


def test_replay_resolved_copies_carry_the_first_copys_event_time_and_counts() -> None:
    """Through DuplicateKeys + DropLaterCopies: 3 identical later copies are counted, not kept."""
    ev = "evt-00000040"
    first = (raw_event("fraud", ev, event_time="2026-03-01T12:00:00Z"), 1.0)
    rows, dead, counters = replay_dedup([*[(first[0], s) for s in (4.0, 2.0, 3.0)], first])
    assert [(r["event_id"], r["ingest_time"]) for r in rows] == [(ev, row_of(*first)["ingest_time"])]
    assert dead == [] and counters["predictions_duplicates"] == 3
    assert counters.get("predictions_conflicting_duplicates", 0) == 0


class _State:
    """A ReadModifyWriteState as the runner hands it to one key."""

    def __init__(self) -> None:
        self.value: str | None = None

    def read(self) -> str | None:
        return self.value

    def write(self, value: str) -> None:
        self.value = value

    def clear(self) -> None:
        self.value = None


class _Timer:
    def __init__(self) -> None:
        self.at: Timestamp | None = None

    def set(self, at: Timestamp) -> None:
        self.at = at


def test_streaming_state_counts_each_copy_and_expires_one_horizon_after_the_event() -> None:
    """The stream's counters (the DirectRunner reports none for a TestStream pipeline), read
    from the step's MetricsContainer as a runner records them."""
    from tests.beam_helpers import counted
    from transforms.dedup import _DedupFn

    first = prediction("fraud", "evt-00000017", 0.9, ingest_s=1)
    conflict = prediction("fraud", "evt-00000017", 0.4, ingest_s=5)
    fn, state, timer = _DedupFn(90.0, "labels"), _State(), _Timer()
    at = Timestamp(first["event_time"] / 1e6)

    def feed(row: dict) -> list:
        return list(fn.process(("k", row), ts=at, first=state, expiry=timer))

    with counted() as count:
        assert feed(first) == [first]
        assert timer.at == at + Duration.of(90) and state.read() == content_sha256(first)
        assert feed(prediction("fraud", "evt-00000017", 0.9, ingest_s=2)) == []
        assert feed(prediction("fraud", "evt-00000017", 0.9, ingest_s=3)) == []
        (dead,) = feed(conflict)
        assert (count("labels_duplicates"), count("labels_conflicting_duplicates")) == (2, 1)
        fn.expire(first=state)  # the horizon is over: the next copy is a first copy again
        assert feed(conflict) == [conflict]
    assert dead.tag == DEAD_LETTERS and dead.value["error_code"] == "conflicting_duplicate"
    assert dead.value["error_message"].startswith("labels: a later copy of label for evt-00000017 with")


def test_first_of_group_directly_keeps_the_first_copy_and_says_why_for_each_other() -> None:
    """The replay's per-key step without a pipeline (fast: mutation testing runs it first)."""
    from tests.beam_helpers import counted
    from transforms.dedup import _FirstOfGroup

    first = prediction("fraud", "evt-00000018", 0.9, ingest_s=1, event_time="2026-03-01T12:00:00Z")
    same = prediction("fraud", "evt-00000018", 0.9, ingest_s=2, event_time="2026-03-01T12:00:00Z")
    other = prediction("fraud", "evt-00000018", 0.5, ingest_s=3, event_time="2026-03-01T12:07:00Z")
    with counted() as count:
        out = list(_FirstOfGroup("predictions", "event_time").process(("k", [other, same, first])))
        assert (count("predictions_duplicates"), count("predictions_conflicting_duplicates")) == (1, 1)
    kept, tagged = out
    assert kept.value is first and kept.timestamp.micros == _micros("2026-03-01T12:00:00+00:00")
    assert tagged.tag == DEAD_LETTERS and tagged.value.timestamp.micros == _micros(
        "2026-03-01T12:07:00+00:00"
    )
    dead = tagged.value.value
    assert orjson.loads(dead["payload_text"])["prediction_score"] == 0.5
    assert (
        f"(the first copy: payload sha256 {first['payload_sha256']}, ingested 2026-03-01T00:00:01+00:00)"
        in dead["error_message"]
    )
    with counted() as count:
        (alone,) = _FirstOfGroup("labels", "label_time").process(("k", [label(7)]))
        assert count("labels_duplicates") == 0
    assert alone.timestamp.micros == _micros("2026-03-01T13:00:00+00:00")


def test_the_key_pass_helpers_directly() -> None:
    from transforms.dedup import _duplicated, _shard_keys, _SplitDuplicates

    shards = dict(_shard_keys([b"a", b"?x", b"b", b"a"], key_of, 4))
    assert sorted(k for keys in shards.values() for k in keys) == ["a", "a", "b"]
    assert all(0 <= s < 4 for s in shards) and len({s for s, keys in shards.items() if "a" in keys}) == 1
    assert sorted(_duplicated((0, [["a", "b"], ["b", "c", "c"], ["d"]]))) == ["b", "c"]
    split = _SplitDuplicates("payload_sha256")
    rows = [{"payload_sha256": k} for k in "abc"]
    assert list(split.process(rows, [])) == [rows]
    out = list(split.process(rows, ["b"]))
    assert out[0].tag == "dupes" and out[0].value == ("b", rows[1])
    assert out[1] == [rows[0], rows[2]]
    assert [o.tag for o in split.process([rows[1]], ["b"])] == ["dupes"]  # no empty batch
    assert list(split.process(rows, [])) == [rows]  # a new side input replaces the cached set
