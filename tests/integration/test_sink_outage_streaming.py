"""Stop BigQuery (the emulator) mid-stream and bring it back: nothing is lost.

Every row either reaches BigQuery after recovery or sits in the dead letters with the
sink's reason. (On the DirectRunner one executor thread runs every step, so BigQuery's
retry backoff also holds back ClickHouse: backpressure, with Pub/Sub keeping the rest.)
"""

from __future__ import annotations

import datetime as dt
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
from transforms.sinks.bigquery import bigquery_client


def test_bigquery_outage_mid_stream(pubsub_emulator, chdb_path, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.endpoint)
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
            # at least one batch exhausts its 4 attempts during the outage and is dead-lettered
            wait_for(
                lambda: (
                    ch_count("SELECT count() FROM outage.dead_letters WHERE stage = 'sink.bigquery'") > 0,
                    "",
                ),
                120,
                None,
                "a batch dead-lettered during the outage",
            )
            bq = localstack.start_bqemulator(BQ_PROJECT, tmp_path, port=port, data_dir=data)  # recovery

            def accounted() -> tuple[bool, str]:
                dead = ch_count("SELECT count() FROM outage.dead_letters WHERE stage = 'sink.bigquery'")
                n = bq_rows()
                return n + dead >= 160, f"{n} in BigQuery + {dead} dead letters"

            wait_for(accounted, 180, None, "every row accounted for")
            dead = ch.query(
                "SELECT event_id, error_code, error_message FROM outage.dead_letters WHERE stage = 'sink.bigquery'"
            ).result_rows
            arrived = bq_rows()
            assert arrived + len(dead) == 160  # every row: in BigQuery or a dead letter, none twice
            assert arrived > 80  # rows published during the outage arrived after recovery
            for _event_id, code, message in dead:
                assert (
                    code == "sink_exhausted"
                    and "gave up after 4 attempts" in message
                    and "refused" in message
                )
            assert ch_count("SELECT count() FROM outage.predictions") == 160  # ClickHouse has them all
            # rows that arrived are the events published, each once
            ids = {
                r.event_id
                for r in client.query(
                    f"SELECT event_id FROM `{BQ_PROJECT}.outage.predictions_dedup`"
                ).result()
            }
            assert ids <= {f"fraud-3-{i:09d}" for i in range(160)}
        finally:
            result.cancel()
    finally:
        bq.stop()
        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
