"""Streaming dedup (Beam state + event-time timer) with TestStream: duplicates within the
horizon collapse; a re-send after the horizon passes (the views catch that one); the key is
the identity (model name, event_id); a later copy with other content is a dead letter."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.dedup import DEAD_LETTERS, DedupByEventId

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)


def row(event_id: str, second: int) -> dict:
    return {
        "event_id": event_id,
        "event_time": int((T0 + dt.timedelta(seconds=second)).timestamp() * 1e6),
        "ingest_time": int(T0.timestamp() * 1e6),
        "payload_sha256": "x",
    }


def test_streaming_dedup_within_horizon() -> None:
    base = T0.timestamp()
    stream = (
        EventStream()
        .add_elements([TimestampedValue(row("a", 0), base), TimestampedValue(row("b", 1), base + 1)])
        .add_elements([TimestampedValue(row("a", 0), base + 2)])  # duplicate within the horizon
        .advance_watermark_to(base + 200)  # horizon (60 s) for "a" and "b" has expired
        .add_elements([TimestampedValue(row("a", 0), base + 201)])  # late re-send: passes
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=streaming()) as p:
        dedup = p | stream | DedupByEventId(horizon_s=60)
        out = dedup.rows | beam.Map(
            lambda r, ts=beam.DoFn.TimestampParam: (r["event_id"], int(ts.micros // 1e6 - base))
        )
        assert_that(out, equal_to([("a", 0), ("b", 1), ("a", 201)]))
        assert_that(dedup[DEAD_LETTERS], equal_to([]), label="dead")


def streaming() -> PipelineOptions:
    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    return opts


def prediction(model: str, event_id: str, score: float, ingest_s: int, **changes) -> dict:
    """A real audit row (decoded and encoded as the pipeline does), ingested at T0 + ingest_s."""
    import orjson

    from schemas import Decoders
    from tests.helpers import event
    from transforms.rows import prediction_row

    ev = event(
        event_id=event_id,
        model={"name": model, "version": "1"},
        prediction={"label": "legit", "score": score},
        **changes,
    )
    raw = orjson.dumps(ev)
    decoded, ts = Decoders().prediction(raw)
    return prediction_row(decoded, ts, raw, ingest_time=T0 + dt.timedelta(seconds=ingest_s))


def test_streaming_dedup_by_identity_keeps_the_first_copy_and_dead_letters_a_conflicting_one() -> None:
    first = prediction("fraud", "evt-00000001", 0.9, ingest_s=1)
    other_model = prediction("churn", "evt-00000001", 0.1, ingest_s=2)  # same id, another model
    conflict = prediction("fraud", "evt-00000001", 0.2, ingest_s=3)  # same identity, other score
    t = first["event_time"] / 1e6
    stream = (
        EventStream()
        .add_elements([TimestampedValue(first, t)])
        .add_elements([TimestampedValue(other_model, t)])
        .add_elements([TimestampedValue(conflict, t)])
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=streaming()) as p:
        out = p | stream | DedupByEventId(horizon_s=3600)
        assert_that(
            out.rows | beam.Map(lambda r: (r["model_name"], r["prediction_score"], r["ingest_time"])),
            equal_to([("fraud", 0.9, first["ingest_time"]), ("churn", 0.1, other_model["ingest_time"])]),
            label="rows",
        )
        assert_that(
            out[DEAD_LETTERS]
            | beam.Map(
                lambda d: (
                    d["error_code"],
                    d["stage"],
                    d["model_name"],
                    orjson_loads(d["payload_text"])["ingest_time"],
                )
            ),
            equal_to([("conflicting_duplicate", "dedup", "fraud", conflict["ingest_time"])]),
            label="dead",
        )


def test_reserialised_copy_is_a_plain_duplicate_not_a_conflict() -> None:
    """Same content, other bytes (keys reordered, another offset for the same instant)."""
    import orjson

    first = prediction("fraud", "evt-00000002", 0.9, ingest_s=1)
    # the same event with its features in reverse order and the time at +01:00: other bytes
    again = prediction("fraud", "evt-00000002", 0.9, ingest_s=2)
    features = dict(reversed(list(orjson.loads(again["features"]).items())))
    again = {**again, "features": orjson.dumps(features).decode(), "payload_sha256": "f" * 64}
    assert again["features"] != first["features"]
    t = first["event_time"] / 1e6
    stream = (
        EventStream()
        .add_elements([TimestampedValue(first, t)])
        .add_elements([TimestampedValue(again, t)])
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=streaming()) as p:
        out = p | stream | DedupByEventId(horizon_s=3600)
        assert_that(
            out.rows | beam.Map(lambda r: r["ingest_time"]), equal_to([first["ingest_time"]]), label="rows"
        )
        assert_that(out[DEAD_LETTERS], equal_to([]), label="dead")


def test_bounded_dedup_keeps_the_first_copy_by_ingest_time() -> None:
    """Bounded input (GroupByKey): the copy ingested first is the audit row, whatever the order."""
    first = prediction("fraud", "evt-00000003", 0.9, ingest_s=1)
    later = prediction("fraud", "evt-00000003", 0.2, ingest_s=5)
    p = beam.Pipeline()
    out = p | beam.Create([later, first]) | DedupByEventId(horizon_s=3600)
    assert_that(
        out.rows | beam.Map(lambda r: (r["prediction_score"], r["ingest_time"])),
        equal_to([(0.9, first["ingest_time"])]),
        label="rows",
    )
    assert_that(
        out[DEAD_LETTERS]
        | beam.Map(lambda d: (d["error_code"], orjson_loads(d["payload_text"])["prediction_score"])),
        equal_to([("conflicting_duplicate", 0.2)]),
        label="dead",
    )
    result = p.run()
    result.wait_until_finish()
    assert counter_value(result, "predictions_conflicting_duplicates") == 1
    assert counter_value(result, "predictions_duplicates") == 0


def orjson_loads(text: str) -> dict:
    import orjson

    return orjson.loads(text)


def counter_value(result, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)
