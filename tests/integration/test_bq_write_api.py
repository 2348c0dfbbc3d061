"""The BigQuery sink on the Storage Write API, against bqemulator's gRPC port.

Replay: a batch goes to a PENDING stream and is committed (visible whole or not at all); rows
already in the table (a re-run, an attempt whose commit answer was lost) are skipped.
Streaming: a COMMITTED stream with explicit offsets; a retried append is written once.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from schemas.tables import TABLES, create_bigquery_tables
from tests.conftest import BQ_PROJECT
from tests.unit.test_sinks import drive
from tests.unit.test_sinks import pred_row as base_row
from transforms.sinks.bigquery import BigQuerySinkFn, WriteApi, encode_row, write_client
from transforms.sinks.errors import find_sink_failure
from transforms.sinks.retry import RetryPolicy


def pred_row(i: int, model: str = "fraud", **over: Any) -> dict[str, Any]:
    """A predictions row with every REQUIRED column (the Write API path checks them first)."""
    row = base_row(i, model, **over)
    for c in TABLES["predictions"].columns:
        if c.required and row.get(c.name) is None:
            row[c.name] = "0" * 64
    return row


@pytest.fixture(scope="module")
def write_endpoint(bq_emulator) -> str:
    """The emulator's gRPC port (Storage Write API), as ``pipelines.localstack`` exposes it."""
    assert bq_emulator.grpc_endpoint.startswith("127.0.0.1:")
    return bq_emulator.grpc_endpoint


@pytest.fixture()
def tables(bq_client, bq_dataset) -> str:
    create_bigquery_tables(bq_client, BQ_PROJECT, bq_dataset, views=False)
    return bq_dataset


def sink(dataset: str, write_endpoint: str, bq_client, mode: str = "replay", batch: int = 10, **kw):
    endpoint = bq_client._connection.API_BASE_URL
    policy = RetryPolicy(attempts=3, base_delay_s=0.0)
    fn = BigQuerySinkFn(BQ_PROJECT, dataset, endpoint, policy, mode, write_endpoint=write_endpoint, **kw)  # type: ignore[arg-type]
    return fn.for_table("predictions", batch)


def rows_in(bq_client, dataset: str, table: str = "predictions") -> list[dict[str, Any]]:
    q = f"SELECT * FROM `{BQ_PROJECT}.{dataset}.{table}` ORDER BY model_name, event_id"
    return [dict(r.items()) for r in bq_client.query(q).result()]


def test_replay_rows_land_whole_and_a_rerun_writes_each_once(bq_client, tables, write_endpoint) -> None:
    rows = [pred_row(i, quality_issues=["range:amount"] if i == 3 else []) for i in range(25)]
    rows.append(pred_row(0, model="churn"))  # same event_id, another model: another identity
    fn = sink(tables, write_endpoint, bq_client)
    assert fn.uses_write_api
    assert drive(fn, rows) == []
    got = rows_in(bq_client, tables)
    assert len(got) == 26
    one = next(r for r in got if r["event_id"] == "evt-000003" and r["model_name"] == "fraud")
    assert one["quality_issues"] == ["range:amount"]
    assert int(one["event_time"].timestamp() * 1_000_000) == 1767225600000003
    # a re-run (new DoFn, new streams) over the same rows plus 5 new ones: only the new land
    again = sink(tables, write_endpoint, bq_client, batch=7)
    assert drive(again, rows + [pred_row(i) for i in range(100, 105)]) == []
    got = rows_in(bq_client, tables)
    assert len(got) == 31
    assert len({(r["model_name"], r["event_id"]) for r in got}) == 31


def test_crash_between_append_and_commit_leaves_nothing_and_a_rerun_writes_once(
    bq_client, tables, write_endpoint
) -> None:
    api = WriteApi(write_client(write_endpoint))
    parent = f"projects/{BQ_PROJECT}/datasets/{tables}/tables/predictions"
    rows = [pred_row(i) for i in range(8)]
    stream = api.create(parent, pending=True)
    refused, nxt = api.append(stream, "predictions", [encode_row("predictions", r) for r in rows], 0)
    assert (refused, nxt) == ([], 8)
    # the process dies here: the PENDING stream is never finalized nor committed
    assert rows_in(bq_client, tables) == []
    assert drive(sink(tables, write_endpoint, bq_client), rows) == []
    assert len(rows_in(bq_client, tables)) == 8


def test_a_commit_whose_answer_is_lost_is_not_written_twice_on_retry(
    bq_client, tables, write_endpoint
) -> None:
    """The commit lands, its answer does not: the retried batch finds its rows present."""
    from google.api_core import exceptions as gexc

    lost: list[str] = []

    class LostCommit(WriteApi):
        def commit(self, parent: str, stream: str) -> None:
            super().commit(parent, stream)
            if not lost:
                lost.append(stream)
                raise gexc.ServiceUnavailable("connection reset after commit")

    fn = sink(tables, write_endpoint, bq_client)
    fn.setup()
    fn.client = type("C", (), {})()
    fn.client.rest, fn.client.write = bq_client, LostCommit(write_client(write_endpoint))
    fn.start_bundle()
    from apache_beam.utils.timestamp import Timestamp

    out = [d for i in range(6) for d in fn.process(pred_row(i), ts=Timestamp(0))]
    out += [wv.value for wv in fn.finish_bundle()]
    assert out == [] and len(lost) == 1
    assert len(rows_in(bq_client, tables)) == 6


def test_streaming_retried_append_with_the_same_offset_is_written_once(
    bq_client, tables, write_endpoint
) -> None:
    """The append lands but its answer is lost (a reset after the server wrote): the retry at
    the same offset is answered ALREADY_EXISTS and counts as written; nothing doubles."""
    from google.api_core import exceptions as gexc

    real = write_client(write_endpoint)
    dropped: list[int] = []

    class LossyClient:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def append_rows(self, requests, retry=None):
            answers = list(real.append_rows(requests, retry=retry))
            if not dropped:
                dropped.append(len(answers))
                raise gexc.ServiceUnavailable("connection reset before the answer")
            return answers

    fn = sink(tables, write_endpoint, bq_client, mode="streaming", batch=5)
    fn.setup()
    fn.client = type("C", (), {})()
    fn.client.rest, fn.client.write = bq_client, WriteApi(LossyClient())
    fn.start_bundle()
    from apache_beam.utils.timestamp import Timestamp

    out = [d for i in range(12) for d in fn.process(pred_row(i), ts=Timestamp(0))]
    out += [wv.value for wv in fn.finish_bundle()]
    assert out == [] and dropped == [1]
    got = rows_in(bq_client, tables)
    assert sorted(r["event_id"] for r in got) == [f"evt-{i:06d}" for i in range(12)]


def test_same_offset_twice_on_a_committed_stream_is_one_write(bq_client, tables, write_endpoint) -> None:
    api = WriteApi(write_client(write_endpoint))
    parent = f"projects/{BQ_PROJECT}/datasets/{tables}/tables/predictions"
    stream = api.create(parent, pending=False)
    enc = [encode_row("predictions", pred_row(i)) for i in range(3)]
    assert api.append_chunk(stream, "predictions", enc, 0) == []
    assert api.append_chunk(stream, "predictions", enc, 0) == []  # ALREADY_EXISTS: written before
    assert len(rows_in(bq_client, tables)) == 3


def test_a_row_of_the_wrong_type_is_a_dead_letter_and_the_others_land(
    bq_client, tables, write_endpoint
) -> None:
    rows = [pred_row(i) for i in range(5)]
    rows[2] = {**pred_row(2), "prediction_score": "high"}  # after its row hash: a bad value
    dead = drive(sink(tables, write_endpoint, bq_client), rows)
    assert [(d["event_id"], d["error_code"]) for d in dead] == [("evt-000002", "sink_rejected")]
    assert "prediction_score" in dead[0]["error_message"]
    assert len(rows_in(bq_client, tables)) == 4


@pytest.mark.parametrize("mode", ["replay", "streaming"])
def test_missing_table_is_a_sink_failure_naming_table_and_fix(
    bq_client, tables, write_endpoint, mode
) -> None:
    bq_client.delete_table(f"{BQ_PROJECT}.{tables}.predictions")
    fn = sink(tables, write_endpoint, bq_client, mode="replay")
    if mode == "streaming":  # the COMMITTED stream cannot be created: the same failure class
        fn.mode = "streaming"
        fn.setup()
        fn.client = fn.make_client()
        with pytest.raises(Exception) as info:
            fn.insert("predictions", [pred_row(0)])
        v = fn.classify(info.value)
        assert (v.kind, v.code) == ("sink_failure", "not_found")
        return
    with pytest.raises(Exception) as info:
        drive(fn, [pred_row(i) for i in range(3)])
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.code == "not_found"
    assert failure.table == f"{BQ_PROJECT}.{tables}.predictions"
    assert "predaudit provision --sinks bigquery" in failure.fix
    assert rows_in(bq_client, tables, "dead_letters") == []


def test_unreachable_write_endpoint_is_retried_then_unreachable(bq_client, tables) -> None:
    from pipelines.localstack import free_port

    fn = sink(tables, f"127.0.0.1:{free_port()}", bq_client)
    fn.policy = RetryPolicy(attempts=2, base_delay_s=0.0)
    with pytest.raises(Exception) as info:
        drive(fn, [pred_row(0)])
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.code == "unreachable"
    assert "127.0.0.1:" in failure.fix


def test_every_audit_table_encodes_and_lands(bq_client, tables, write_endpoint) -> None:
    """The proto descriptor derived from schemas/tables.py matches each table the emulator made."""
    from transforms.deadletters import row_dead_letter

    dl = row_dead_letter("predictions", pred_row(1), stage="sink.bigquery", code="x", message="m")
    fn = sink(tables, write_endpoint, bq_client).for_table("dead_letters", 10)
    assert drive(fn, [dl]) == []
    got = rows_in(bq_client, tables, "dead_letters")
    assert [r["dead_letter_id"] for r in got] == [dl["dead_letter_id"]]
    assert uuid.UUID  # keep the import honest for dataset names


def test_features_scores_and_metadata_are_json_columns_analysts_can_path_into(
    bq_client, tables, write_endpoint
) -> None:
    ref = f"{BQ_PROJECT}.{tables}.predictions"
    types = {f.name: f.field_type for f in bq_client.get_table(ref).schema}
    assert (types["features"], types["prediction_scores"], types["metadata"]) == ("JSON", "JSON", "JSON")
    assert types["extensions"] == "STRING"
    row = pred_row(
        1,
        features='{"amount": 12.5, "country": "DE"}',
        prediction_scores='{"fraud": 0.9}',
        metadata='{"region": "eu"}',
    )
    assert drive(sink(tables, write_endpoint, bq_client), [row]) == []
    q = (
        "SELECT LAX_FLOAT64(features.amount) AS amount, JSON_VALUE(features, '$.country') AS country, "
        f"LAX_FLOAT64(prediction_scores.fraud) AS p, JSON_VALUE(metadata.region) AS region FROM `{ref}`"
    )
    assert [dict(r.items()) for r in bq_client.query(q).result()] == [
        {"amount": 12.5, "country": "DE", "p": 0.9, "region": "eu"}
    ]
