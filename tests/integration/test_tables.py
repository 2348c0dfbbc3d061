"""Every table is created in the real engines available here: chDB (ClickHouse 26.x) and bqemulator."""

from __future__ import annotations

import datetime as dt

from schemas import REFERENCE_EVENT, Decoders
from schemas.tables import (
    PREDICTIONS,
    TABLES,
    bigquery_schema,
    create_bigquery_tables,
    create_clickhouse_tables,
    render_ddl,
)
from tests.conftest import BQ_PROJECT
from transforms.rows import prediction_row


def test_clickhouse_tables_engine_keys_and_dedup(chdb_client, ch_database) -> None:
    create_clickhouse_tables(chdb_client, ch_database, ttl_days=400)
    create_clickhouse_tables(chdb_client, ch_database, ttl_days=400)  # idempotent
    meta = {
        r[0]: r[1:]
        for r in chdb_client.query(
            "SELECT name, engine, sorting_key, partition_key, create_table_query FROM system.tables "
            f"WHERE database = '{ch_database}'"
        ).result_rows
    }
    for table in TABLES.values():
        engine, sorting, partition, ddl = meta[table.name]
        assert engine == "MergeTree"  # never Replacing: a later copy must not replace the first
        assert sorting == ", ".join(table.order_by)
        assert partition == f"toYYYYMM({table.time_column})"
        assert "TTL" in ddl and "non_replicated_deduplication_window = 1000" in ddl
        cols = chdb_client.query(f"DESCRIBE TABLE `{ch_database}`.`{table.name}`").result_rows
        assert [c[0] for c in cols] == table.column_names
    assert meta["predictions_dedup"][0] == "View"
    # a retried batch (same token) is written once; the view collapses a duplicate that still lands
    ev, ts = Decoders().prediction(REFERENCE_EVENT)
    row = prediction_row(
        ev, ts, REFERENCE_EVENT, ingest_time=dt.datetime(2026, 3, 1, 12, 0, 1, tzinfo=dt.timezone.utc)
    )
    values = [[row[c] for c in PREDICTIONS.column_names]]
    target = f"{ch_database}.predictions"
    for token in ("batch-1", "batch-1", "batch-2"):
        chdb_client.insert(
            target,
            values,
            column_names=PREDICTIONS.column_names,
            settings={"insert_deduplication_token": token},
        )
    assert chdb_client.command(f"SELECT count() FROM `{ch_database}`.predictions") == 2
    assert chdb_client.command(f"SELECT count() FROM `{ch_database}`.predictions_dedup") == 1


def test_bigquery_tables_partitioning_clustering_views(bq_client, bq_dataset) -> None:
    create_bigquery_tables(bq_client, BQ_PROJECT, bq_dataset)
    create_bigquery_tables(bq_client, BQ_PROJECT, bq_dataset)  # idempotent
    names = {t.table_id for t in bq_client.list_tables(f"{BQ_PROJECT}.{bq_dataset}")}
    assert names == set(TABLES) | {"predictions_dedup", "labels_dedup", "accuracy_full_join"}
    for table in TABLES.values():
        got = bq_client.get_table(f"{BQ_PROJECT}.{bq_dataset}.{table.name}")
        assert got.time_partitioning.field == table.time_column
        assert got.clustering_fields == list(table.cluster_by)
        assert [f.to_api_repr()["name"] for f in got.schema] == table.column_names
        assert [(f.field_type, f.mode) for f in got.schema] == [
            (c["type"], c["mode"]) for c in bigquery_schema(table)
        ]
    row = {
        "event_id": "evt-00000001",
        "event_time": "2026-03-01T12:00:00Z",
        "model_name": "m",
        "model_version": "1",
        "schema_version": "1",
        "features": "{}",
        "status": "ok",
        "quality_issues": ["missing_feature:a"],
        "ingest_time": "2026-03-01T12:00:01Z",
        "payload_sha256": "0" * 64,
        "pipeline_version": "test",
    }
    assert (
        bq_client.insert_rows_json(f"{BQ_PROJECT}.{bq_dataset}.predictions", [row, row], row_ids=["a", "a"])
        == []
    )
    q = f"SELECT count(*) AS n FROM `{BQ_PROJECT}.{bq_dataset}.predictions_dedup`"
    assert next(iter(bq_client.query(q).result())).n == 1


def test_rendered_ddl_mentions_every_table() -> None:
    ch = render_ddl("clickhouse", database="audit", ttl_days=30)
    bq = render_ddl("bigquery", database="audit", project="p")
    for name in TABLES:
        assert f"`audit`.`{name}`" in ch
        assert f'"tableId": "{name}"' in bq


def _pred(model: str, ingest_s: int, request_id: str, label: str) -> dict:
    """A predictions row (epoch-microsecond timestamps) for (model, evt-00000001)."""
    base = int(dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
    return {
        "event_id": "evt-00000001",
        "event_time": base,
        "model_name": model,
        "model_version": "1",
        "schema_version": "1",
        "request_id": request_id,
        "features": "{}",
        "prediction_label": label,
        "status": "ok",
        "quality_issues": [],
        "ingest_time": base + ingest_s * 1_000_000,
        "payload_sha256": request_id.ljust(64, "0"),
        "pipeline_version": "test",
    }


def _label(model: str, label: str, label_s: int) -> dict:
    base = int(dt.datetime(2026, 3, 1, 13, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
    return {
        "event_id": "evt-00000001",
        "label_time": base + label_s * 1_000_000,
        "label": label,
        "model_name": model,
        "schema_version": "1",
        "ingest_time": base + label_s * 1_000_000,
        "payload_sha256": f"{model}{label}".ljust(64, "0"),
        "pipeline_version": "test",
    }


# two models reuse one event_id; fraud's copies arrive out of ingest order (the later copy
# is inserted first); fraud's label is corrected later. Expected: two predictions (one per
# identity), fraud's is the FIRST copy by ingest time, and accuracy uses the correction.
PREDS = [
    _pred("fraud", 9, "late", "yes"),
    _pred("fraud", 1, "early", "yes"),
    _pred("churn", 5, "churn", "stay"),
]
LABELS_ = [_label("fraud", "no", 0), _label("fraud", "yes", 60), _label("churn", "stay", 0)]


def test_clickhouse_views_use_identity_and_first_copy(chdb_client, ch_database) -> None:
    from schemas.tables import LABELS

    create_clickhouse_tables(chdb_client, ch_database)
    for table, rows in ((PREDICTIONS, PREDS), (LABELS, LABELS_)):
        for i, row in enumerate(rows):  # one insert (part) per row, like separate batches
            chdb_client.insert(
                f"`{ch_database}`.`{table.name}`",
                [[row.get(c) for c in table.column_names]],
                column_names=table.column_names,
                settings={"insert_deduplication_token": f"{table.name}-{i}"},
            )
    got = chdb_client.query(
        f"SELECT model_name, request_id FROM `{ch_database}`.predictions_dedup ORDER BY model_name"
    ).result_rows
    assert got == [("churn", "churn"), ("fraud", "early")]
    acc = chdb_client.query(
        f"SELECT model_name, labeled, accuracy FROM `{ch_database}`.accuracy_full_join ORDER BY model_name"
    ).result_rows
    assert acc == [("churn", 1, 1.0), ("fraud", 1, 1.0)]


def test_bigquery_views_use_identity_and_first_copy(bq_client, bq_dataset) -> None:
    from transforms.sinks.bigquery import to_json_row

    create_bigquery_tables(bq_client, BQ_PROJECT, bq_dataset)
    for table, rows in (("predictions", PREDS), ("labels", LABELS_)):
        for i, row in enumerate(rows):
            ref = f"{BQ_PROJECT}.{bq_dataset}.{table}"
            assert bq_client.insert_rows_json(ref, [to_json_row(table, row)], row_ids=[f"{table}-{i}"]) == []
    q = f"SELECT model_name, request_id FROM `{BQ_PROJECT}.{bq_dataset}.predictions_dedup` ORDER BY model_name"
    assert [tuple(r.values()) for r in bq_client.query(q).result()] == [
        ("churn", "churn"),
        ("fraud", "early"),
    ]
    q = (
        f"SELECT model_name, labeled, accuracy FROM `{BQ_PROJECT}.{bq_dataset}.accuracy_full_join` "
        "ORDER BY model_name"
    )
    assert [tuple(r.values()) for r in bq_client.query(q).result()] == [("churn", 1, 1.0), ("fraud", 1, 1.0)]
