"""Sink failure classes against the real components: chDB (the ClickHouse engine) and bqemulator.

A sink failure (database or table missing) stops a replay with a SinkFailure that survives
the runner's re-raise and produces no dead letters; a row the service refuses becomes a
``sink_rejected`` dead letter while every other row is written; a streaming sink waits for
the sink to come back and then writes everything.
"""

from __future__ import annotations

import types
import uuid
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.common import sink_fns
from schemas.tables import create_bigquery_tables, create_clickhouse_tables
from tests.conftest import BQ_PROJECT
from tests.unit.test_sinks import drive, pred_row
from transforms.sinks.clickhouse import ClickHouseSinkFn
from transforms.sinks.errors import SinkStopped, find_sink_failure
from transforms.sinks.retry import RetryPolicy
from transforms.sinks.write import WriteAudit


def opts(**kw: Any) -> types.SimpleNamespace:
    base = {
        "sink_max_attempts": 2,
        "clickhouse_dsn": "",
        "clickhouse_database": "audit",
        "bq_project": BQ_PROJECT,
        "bq_dataset": "audit",
        "bq_endpoint": "",
    }
    return types.SimpleNamespace(**{**base, **kw})


def replay_write(fns, rows: list[dict[str, Any]], expect_dead: list[tuple[str, str]] | None = None) -> None:
    """The replay's write step on the batch runner: rows (and no decode dead letters) -> WriteAudit."""
    with beam.Pipeline() as p:
        preds = p | "Rows" >> beam.Create(rows)
        none = p | "NoDecodeDeadLetters" >> beam.Create([])
        dead = {"predictions": preds, "dead_letters": none} | "Write" >> WriteAudit(fns, max_batch_size=50)
        if expect_dead is not None:
            pairs = dead | beam.Map(lambda d: (d["event_id"], d["error_code"]))
            assert_that(pairs, equal_to(expect_dead))


def ch_count(client, sql: str) -> int:
    return int(client.command(sql))


def test_missing_clickhouse_database_stops_replay_naming_sink_and_table(chdb_path) -> None:
    db = f"missing_{uuid.uuid4().hex[:8]}"
    fns = sink_fns(
        opts(clickhouse_dsn=f"chdb://{chdb_path}", clickhouse_database=db), ["clickhouse"], "replay"
    )
    with pytest.raises(Exception) as info:
        replay_write(fns, [pred_row(i) for i in range(120)])
    failure = find_sink_failure(info.value)
    assert failure is not None, f"no SinkFailure in {info.value!r}"
    assert (failure.sink, failure.table, failure.code) == (
        "clickhouse",
        f"{db}.predictions",
        "unknown_database",
    )
    assert f"--clickhouse_database {db}" in failure.fix and "predaudit provision" in failure.fix
    assert "\n" not in str(failure)  # one line for the user


def test_missing_clickhouse_table_stops_replay_with_zero_dead_letters(
    chdb_path, chdb_client, ch_database
) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    chdb_client.command(f"DROP VIEW IF EXISTS `{ch_database}`.accuracy_full_join")
    chdb_client.command(f"DROP VIEW IF EXISTS `{ch_database}`.predictions_dedup")
    chdb_client.command(f"DROP TABLE `{ch_database}`.predictions")
    fns = sink_fns(
        opts(clickhouse_dsn=f"chdb://{chdb_path}", clickhouse_database=ch_database), ["clickhouse"], "replay"
    )
    with pytest.raises(Exception) as info:
        replay_write(fns, [pred_row(i) for i in range(337)])
    failure = find_sink_failure(info.value)
    assert failure is not None and (failure.table, failure.code) == (
        f"{ch_database}.predictions",
        "unknown_table",
    )
    # the bug this guards: 337 rows bisected into 337 dead letters, run "succeeded"
    assert ch_count(chdb_client, f"SELECT count() FROM `{ch_database}`.dead_letters") == 0


def test_rows_clickhouse_refuses_become_dead_letters_and_the_rest_is_written(
    chdb_path, chdb_client, ch_database
) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    # an operator's CHECK constraint: the server refuses those rows (VIOLATED_CONSTRAINT)
    chdb_client.command(
        f"ALTER TABLE `{ch_database}`.predictions ADD CONSTRAINT latency_ok CHECK latency_ms >= 0"
    )
    rows = [pred_row(i, latency_ms=float(i)) for i in range(200)]
    rows[17]["latency_ms"] = -1.0
    rows[150]["latency_ms"] = -5.0
    rows[99]["payload_sha256"] = None  # the client cannot encode a null in a non-Nullable column
    bad = sorted(rows[i]["event_id"] for i in (17, 99, 150))
    fns = sink_fns(
        opts(clickhouse_dsn=f"chdb://{chdb_path}", clickhouse_database=ch_database), ["clickhouse"], "replay"
    )
    replay_write(fns, rows, expect_dead=[(e, "sink_rejected") for e in bad])
    ids = {r[0] for r in chdb_client.query(f"SELECT event_id FROM `{ch_database}`.predictions").result_rows}
    assert ids == {r["event_id"] for r in rows} - set(bad)
    assert ch_count(chdb_client, f"SELECT count() FROM `{ch_database}`.predictions") == 197
    dead = chdb_client.query(
        f"SELECT event_id, stage, error_code, error_message FROM `{ch_database}`.dead_letters ORDER BY event_id"
    ).result_rows
    assert [(e, s, c) for e, s, c, _ in dead] == [(e, "sink.clickhouse", "sink_rejected") for e in bad]
    assert "VIOLATED_CONSTRAINT" in dead[0][3] and "unencodable_value" in dead[1][3]


def test_two_models_sharing_event_ids_are_both_written_to_clickhouse(
    chdb_path, chdb_client, ch_database
) -> None:
    """The insert token is keyed by identity: churn's batch is not taken for a retry of fraud's."""
    create_clickhouse_tables(chdb_client, ch_database)
    fn = ClickHouseSinkFn(f"chdb://{chdb_path}", ch_database).for_table("predictions", 100)
    assert drive(fn, [pred_row(i, "fraud") for i in range(10)]) == []
    assert drive(fn, [pred_row(i, "churn") for i in range(10)]) == []
    assert drive(fn, [pred_row(i, "churn") for i in range(10)]) == []  # a true retry: deduplicated
    got = chdb_client.query(
        f"SELECT model_name, count() FROM `{ch_database}`.predictions GROUP BY model_name ORDER BY model_name"
    ).result_rows
    assert got == [("churn", 10), ("fraud", 10)]


def test_streaming_clickhouse_waits_for_a_missing_table_then_writes_everything(
    chdb_path, chdb_client, ch_database
) -> None:
    fn = ClickHouseSinkFn(
        f"chdb://{chdb_path}",
        ch_database,
        RetryPolicy(attempts=2, base_delay_s=0.0, failure_max_delay_s=8.0),
        mode="streaming",
    ).for_table("predictions", 1000)
    waits: list[float] = []

    def sleep(s: float) -> None:  # an injected sleep: the operator provisions after four rounds
        waits.append(s)
        if len(waits) == 4:
            create_clickhouse_tables(chdb_client, ch_database)

    fn.sleep = sleep  # type: ignore[method-assign]
    rows = [pred_row(i) for i in range(60)]
    assert drive(fn, rows) == []  # no dead letters
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert ch_count(chdb_client, f"SELECT count() FROM `{ch_database}`.predictions") == 60
    assert ch_count(chdb_client, f"SELECT count() FROM `{ch_database}`.dead_letters") == 0


def test_missing_bigquery_table_stops_replay_with_zero_dead_letters(bq_client, bq_dataset) -> None:
    create_bigquery_tables(bq_client, BQ_PROJECT, bq_dataset, views=False)
    bq_client.delete_table(f"{BQ_PROJECT}.{bq_dataset}.predictions")
    endpoint = bq_client._connection.API_BASE_URL
    fns = sink_fns(opts(bq_dataset=bq_dataset, bq_endpoint=endpoint), ["bigquery"], "replay")
    with pytest.raises(Exception) as info:
        replay_write(fns, [pred_row(i) for i in range(80)])
    failure = find_sink_failure(info.value)
    assert failure is not None, f"no SinkFailure in {info.value!r}"
    assert (failure.sink, failure.table, failure.code) == (
        "bigquery",
        f"{BQ_PROJECT}.{bq_dataset}.predictions",
        "not_found",
    )
    assert f"--bq_dataset {bq_dataset}" in failure.fix
    q = f"SELECT count(*) AS n FROM `{BQ_PROJECT}.{bq_dataset}.dead_letters`"
    assert next(iter(bq_client.query(q).result())).n == 0


def test_unreachable_bigquery_is_tried_exactly_the_policy_attempts_then_replay_stops() -> None:
    """A real refused connection (nothing listens): N attempts, then a sink failure, no dead letters."""
    from pipelines.localstack import free_port
    from transforms.sinks.bigquery import BigQuerySinkFn

    attempts: list[int] = []

    class Counting(BigQuerySinkFn):
        def insert(self, table, rows):
            attempts.append(len(rows))
            return super().insert(table, rows)

    fn = Counting(
        BQ_PROJECT, "down", f"http://127.0.0.1:{free_port()}", RetryPolicy(attempts=3, base_delay_s=0.0)
    ).for_table("predictions", 100)
    with pytest.raises(Exception) as info:
        drive(fn, [pred_row(i) for i in range(5)])
    assert attempts == [5, 5, 5]
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.code == "unreachable"
    assert "gave up after 3 attempts" in failure.reason and "ConnectionError" in failure.reason


def test_sink_failure_survives_a_runner_that_keeps_only_the_text() -> None:
    """Multi-process workers send back a traceback string: the marker line still carries it.
    (BigQuery on a port nothing listens on: forked workers cannot open chDB directories.)"""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.localstack import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    fns = sink_fns(opts(sink_max_attempts=1, bq_dataset="down", bq_endpoint=endpoint), ["bigquery"], "replay")
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=1"])
    with pytest.raises(Exception) as info:
        with beam.Pipeline(options=options) as p:
            preds = p | "Rows" >> beam.Create([pred_row(i) for i in range(10)])
            none = p | "None" >> beam.Create([])
            _ = {"predictions": preds, "dead_letters": none} | "Write" >> WriteAudit(fns)
    assert not isinstance(info.value, SinkStopped)  # only text crossed the process boundary
    failure = find_sink_failure(info.value)
    assert failure is not None, f"no SinkFailure in {info.value!r}"
    assert (failure.sink, failure.table, failure.code) == (
        "bigquery",
        f"{BQ_PROJECT}.down.predictions",
        "unreachable",
    )
    assert endpoint in failure.fix
