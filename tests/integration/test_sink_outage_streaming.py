"""Stop BigQuery (the emulator) mid-stream and bring it back: nothing is lost.

An unreachable sink is a sink failure, not a row refusal: the streaming pipeline keeps
retrying the same rows with capped backoff (back-pressure, Pub/Sub keeps the backlog),
logs it, and after recovery every row reaches BigQuery; no row becomes a dead letter.
(On the DirectRunner one executor thread runs every step, so BigQuery's backoff also
holds back ClickHouse.)
"""

from __future__ import annotations

import datetime as dt
import logging
import os

import apache_beam as beam

from pipelines import localstack
from pipelines.audit_pipeline import build, streaming_options
from pipelines.common import patch_direct_runner_pubsub
from pipelines.demo import SPECS, publish, wait_for
from pipelines.provision import PubSubNames, provision_bigquery, provision_clickhouse, provision_pubsub
from schemas.simulate import SimConfig, Simulator
from schemas.specs import load_specs
from tests.conftest import BQ_PROJECT
from transforms.sinks.base import LogLimiter, SinkFn
from transforms.sinks.bigquery import bigquery_client


def test_bigquery_outage_mid_stream(pubsub_emulator, chdb_path, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.endpoint)
    monkeypatch.setattr(SinkFn, "limiter", LogLimiter())  # this test's own once-a-minute budget
    caplog.set_level(logging.ERROR, logger="transforms.sinks.base")
    port, data = localstack.free_port(), tmp_path / "bq-data"
    data.mkdir()
    bq = localstack.start_bqemulator(BQ_PROJECT, tmp_path, port=port, data_dir=data)
    try:
        names = PubSubNames(
            BQ_PROJECT,
            predictions_topic="outage-p",
            labels_topic="outage-l",
            dead_letters_topic="outage-d",
            predictions_subscription="outage-p-sub",
            labels_subscription="outage-l-sub",
        )
        provision_pubsub(names)
        provision_bigquery(BQ_PROJECT, "outage", bq.endpoint)
        ch = provision_clickhouse(f"chdb://{chdb_path}", "outage")
        opts = streaming_options(
            [
                f"--predictions_subscription={names.subscription(names.predictions_subscription)}",
                "--sinks=bigquery,clickhouse",
                f"--bq_project={BQ_PROJECT}",
                "--bq_dataset=outage",
                f"--bq_endpoint={bq.endpoint}",
                f"--clickhouse_dsn=chdb://{chdb_path}",
                "--clickhouse_database=outage",
                f"--model_specs={SPECS}",
                "--sink_max_attempts=4",
            ]
        )
        patch_direct_runner_pubsub(opts)
        p = beam.Pipeline(options=opts)
        build(p, opts)
        result = p.run()
        start = dt.datetime.now(dt.timezone.utc)
        lines = [
            ln.raw
            for ln in Simulator(
                load_specs(SPECS)["fraud"], SimConfig(events=160, seed=3, start=start)
            ).lines()
        ]
        client = bigquery_client(BQ_PROJECT, bq.endpoint)

        def bq_rows() -> int:
            q = f"SELECT count(*) AS n FROM `{BQ_PROJECT}.outage.predictions`"
            return next(iter(bigquery_client(BQ_PROJECT, bq.endpoint).query(q).result())).n

        def ch_count(sql: str) -> int:
            return int(ch.command(sql))

        try:
            publish(names.topic(names.predictions_topic), lines[:80])
            wait_for(lambda: (bq_rows() >= 80, str(bq_rows())), 120, None, "first half in BigQuery")
            bq.stop()  # outage
            publish(names.topic(names.predictions_topic), lines[80:])

            def failure_logged() -> tuple[bool, str]:
                hits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bigquery: ")]
                return bool(hits), (hits or ["nothing logged yet"])[-1]

            # the sink reports the outage (one line naming the table) and holds the rows
            wait_for(failure_logged, 120, None, "the BigQuery sink failure logged")
            message = failure_logged()[1]
            assert message.startswith(f"bigquery: {BQ_PROJECT}.outage.")
            assert "gave up after 4 attempts" in message and "-- fix: check that BigQuery" in message
            bq = localstack.start_bqemulator(BQ_PROJECT, tmp_path, port=port, data_dir=data)  # recovery
            client = bigquery_client(BQ_PROJECT, bq.endpoint)

            def distinct_ids() -> set[str]:
                q = f"SELECT DISTINCT event_id FROM `{BQ_PROJECT}.outage.predictions`"
                return {r.event_id for r in bigquery_client(BQ_PROJECT, bq.endpoint).query(q).result()}

            wait_for(
                lambda: (len(distinct_ids()) >= 160, str(len(distinct_ids()))), 180, None, "all in BigQuery"
            )
            # every event published arrived, the ones published during the outage included
            assert distinct_ids() == {f"fraud-3-{i:09d}" for i in range(160)}
            # a sink failure never turns rows into dead letters
            assert ch_count("SELECT count() FROM outage.dead_letters") == 0
            q = f"SELECT count(*) AS n FROM `{BQ_PROJECT}.outage.dead_letters`"
            assert next(iter(client.query(q).result())).n == 0
            wait_for(
                lambda: (ch_count("SELECT count() FROM outage.predictions") >= 160, ""),
                60,
                None,
                "ClickHouse",
            )
            assert ch_count("SELECT uniqExact(event_id) FROM outage.predictions") == 160
        finally:
            result.cancel()
    finally:
        bq.stop()
        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
