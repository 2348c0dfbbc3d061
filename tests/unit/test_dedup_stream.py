"""Streaming dedup (Beam state + event-time timer) with TestStream: duplicates within the
horizon collapse; a re-send after the horizon passes (the views catch that one)."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.dedup import DedupByEventId

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)


def row(event_id: str, second: int) -> dict:
    return {
        "event_id": event_id,
        "event_time": T0 + dt.timedelta(seconds=second),
        "ingest_time": T0,
        "payload_sha256": "x",
    }


def test_streaming_dedup_within_horizon() -> None:
    base = T0.timestamp()
    stream = (
        EventStream()
        .add_elements([TimestampedValue(row("a", 0), base), TimestampedValue(row("b", 1), base + 1)])
        .add_elements([TimestampedValue(row("a", 2), base + 2)])  # duplicate within the horizon
        .advance_watermark_to(base + 200)  # horizon (60 s) for "a" and "b" has expired
        .add_elements([TimestampedValue(row("a", 201), base + 201)])  # late re-send: passes
        .advance_watermark_to_infinity()
    )
    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=opts) as p:
        out = (
            p
            | stream
            | DedupByEventId(horizon_s=60)
            | beam.Map(lambda r: (r["event_id"], r["event_time"].second))
        )
        assert_that(out, equal_to([("a", 0), ("b", 1), ("a", 21)]))
