"""Tamper evidence end to end through the STREAMING pipeline, into real chDB.

The streaming graph (``pipelines.audit_pipeline.build``: validate, dedup by identity,
hourly integrity records, the sinks) reads a TestStream in place of Pub/Sub: the same
RawMessages its Pub/Sub read makes, with publish times, then the watermark passes the event
hours so each hour's integrity pane fires (no processing-time wait). Both sinks: chDB and
bqemulator through the Storage Write API. Then ``predaudit verify`` finds both clean, and an
admin ``ALTER TABLE ... UPDATE`` in chDB is reported with the identity it changed.
"""

from __future__ import annotations

import datetime as dt
import io
import pathlib

import apache_beam as beam
import orjson
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue

from pipelines import audit_pipeline, verify
from schemas.tables import create_bigquery_tables, create_clickhouse_tables
from tests.conftest import BQ_PROJECT
from tests.helpers import event
from transforms.deadletters import RawMessage

SPECS = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "models"
MODEL, VERSION = "fraud", "2026-02-15"
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
RANGE = ["--from", "2026-03-01T12:00:00Z", "--to", "2026-03-01T14:00:00Z"]


def messages() -> list[RawMessage]:
    """10 predictions over two event-time hours, published a minute after each event, and
    a redelivery of one (same message, later) that dedup collapses."""
    out = []
    for i in range(10):
        when = T0 + dt.timedelta(minutes=11 * i)
        ev = event(
            event_id=f"evt-{i:08d}",
            event_time=when.isoformat().replace("+00:00", "Z"),
            prediction={"label": "fraud" if i % 3 == 0 else "legit", "score": 0.1 + i / 20},
        )
        out.append(RawMessage(orjson.dumps(ev), {}, f"m{i}", when + dt.timedelta(minutes=1)))
    again = out[4]
    return [*out, again._replace(publish_time=again.publish_time + dt.timedelta(minutes=30))]


def test_streamed_rows_verify_clean_then_an_admin_update_is_reported(
    monkeypatch, chdb_path, chdb_client, ch_database, bq_emulator, bq_client, bq_dataset
) -> None:
    msgs = messages()

    def read(p: beam.Pipeline, label: str, subscription: str, opts) -> beam.PCollection:
        assert label == "Predictions"  # no labels subscription is configured
        stream = test_stream.TestStream()
        for m in msgs:
            stream = stream.add_elements([TimestampedValue(m, m.publish_time.timestamp())])
        stream = stream.advance_watermark_to(T0.timestamp() + 3 * 3600).advance_watermark_to_infinity()
        return p | f"Read{label}" >> stream

    monkeypatch.setattr(audit_pipeline, "_read", read)  # only the Pub/Sub read is replaced
    create_clickhouse_tables(chdb_client, ch_database)
    create_bigquery_tables(bq_client, BQ_PROJECT, bq_dataset, views=False)
    bq = [f"--bq_project={BQ_PROJECT}", f"--bq_dataset={bq_dataset}", f"--bq_endpoint={bq_emulator.endpoint}"]
    opts = audit_pipeline.streaming_options(
        [
            "--predictions_subscription=projects/verify-e2e/subscriptions/predictions-audit",
            "--sinks=clickhouse,bigquery",
            *bq,
            # the BigQuery sink's default path: the Storage Write API (COMMITTED stream, offsets)
            f"--bq_write_endpoint={bq_emulator.grpc_endpoint}",
            f"--clickhouse_dsn=chdb://{chdb_path}",
            f"--clickhouse_database={ch_database}",
            "--monitors=off",
            f"--model_specs={SPECS}",
        ]
    )
    with beam.Pipeline(options=opts) as p:
        audit_pipeline.build(p, opts)

    db = f"`{ch_database}`"
    assert chdb_client.command(f"SELECT count() FROM {db}.predictions") == 10  # the redelivery collapsed
    # the latest pane of each hour covers its rows (the watermark passed the hours; the
    # panes are not ``final`` while late data may still come, within the allowed lateness)
    recs = chdb_client.query(
        f"SELECT toHour(hour_start), row_count, writer FROM {db}.integrity "
        "ORDER BY 1, sequence DESC LIMIT 1 BY hour_start"
    ).result_rows
    writer = "streaming:projects/verify-e2e/subscriptions/predictions-audit"
    assert [tuple(r) for r in recs] == [(12, 6, writer), (13, 4, writer)]

    args = [
        "--sink",
        "clickhouse",
        f"--clickhouse_dsn=chdb://{chdb_path}",
        f"--clickhouse_database={ch_database}",
    ]
    for sink_args in (args, ["--sink", "bigquery", *bq]):
        out = io.StringIO()
        assert verify.run([*sink_args, *RANGE], out) == 0, out.getvalue()
        assert "clean" in out.getvalue() and "10 rows" in out.getvalue(), out.getvalue()

    chdb_client.command(
        f"ALTER TABLE {db}.predictions UPDATE prediction_label = 'legit' WHERE event_id = 'evt-00000006'",
        settings={"mutations_sync": 2},
    )
    out = io.StringIO()
    assert verify.run([*args, *RANGE], out) == 1
    text = out.getvalue()
    assert f"altered  ({MODEL}, evt-00000006) version {VERSION} hour 2026-03-01T13:00Z" in text, text
    assert text.splitlines()[-1] == "1 difference(s): altered 1", text
