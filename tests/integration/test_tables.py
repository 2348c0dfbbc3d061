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
        "row_sha256": request_id.ljust(64, "1"),
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
                [[row.get(c) for c in table.column_names]],  # keys the table lacks are ignored
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
            row = {k: v for k, v in row.items() if k in TABLES[table].column_names}
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


def _copy(model: str, event: str, ingest_s: int, request_id: str, label: str, latency: float) -> dict:
    row = _pred(model, ingest_s, request_id, label)
    return {**row, "event_id": event, "latency_ms": latency}


# Copies with other ingest times AND content, inserted out of order, one batch each unless
# grouped: (fraud, e1) three copies, the first by ingest time inserted second; (credit, e3)
# two copies in ONE batch; (fraud, e2) the same payload twice in one microsecond under two
# insert tokens (a tie only LIMIT 1 BY resolves); (churn, e1) reuses fraud's event_id.
COPY_BATCHES = [
    [_copy("fraud", "e1", 9, "f1-late", "no", 90.0)],
    [_copy("fraud", "e1", 1, "f1-first", "yes", 10.0)],
    [_copy("churn", "e1", 5, "c1-only", "stay", 50.0)],
    [_copy("fraud", "e1", 5, "f1-mid", "maybe", 50.0)],
    [_copy("credit", "e3", 4, "k3-late", "no", 40.0), _copy("credit", "e3", 2, "k3-first", "yes", 20.0)],
    [_copy("fraud", "e2", 3, "f2-tie", "yes", 30.0)],
    [_copy("fraud", "e2", 3, "f2-tie", "yes", 30.0)],
    [_copy("churn", "e4", 6, "c4-b", "go", 60.0)],  # one ingest time, two payloads: the
    [_copy("churn", "e4", 6, "c4-a", "stay", 61.0)],  # smaller payload hash is first
]
FIRST_COPIES = [
    ("churn", "e1", "c1-only"),
    ("churn", "e4", "c4-a"),
    ("credit", "e3", "k3-first"),
    ("fraud", "e1", "f1-first"),
    ("fraud", "e2", "f2-tie"),
]
VIEW_QUERIES = {  # analyst queries through the view -> expected (model, event, request_id) rows
    "all": ("", FIRST_COPIES),
    "event_id": ("WHERE event_id = 'e1'", [FIRST_COPIES[0], FIRST_COPIES[3]]),
    "request_id first": ("WHERE request_id = 'f1-first'", [FIRST_COPIES[3]]),
    "request_id later copy": ("WHERE request_id IN ('f1-late', 'f1-mid', 'k3-late', 'c4-b')", []),
    "tie": ("WHERE event_id = 'e2'", [FIRST_COPIES[4]]),
    "same ingest time": ("WHERE event_id = 'e4'", [FIRST_COPIES[1]]),
    "one day, one model": (
        "WHERE model_name = 'fraud' AND event_time >= '2026-03-01' AND event_time < '2026-03-02'",
        [FIRST_COPIES[3], FIRST_COPIES[4]],
    ),
}


def _insert_ch(client, database: str, batches: list[list[dict]], prefix: str = "b") -> None:
    names = PREDICTIONS.column_names
    for i, batch in enumerate(batches):
        client.insert(
            f"`{database}`.predictions",
            [[row.get(c) for c in names] for row in batch],
            column_names=names,
            settings={"insert_deduplication_token": f"{prefix}-{i}"},
        )


def _ch_view(client, database: str, where: str) -> list[tuple]:
    q = f"SELECT model_name, event_id, request_id FROM `{database}`.predictions_dedup {where} ORDER BY 1, 2"
    return [tuple(r) for r in client.query(q).result_rows]


def test_dedup_views_return_the_first_copy_in_both_engines(
    chdb_client, ch_database, bq_client, bq_dataset
) -> None:
    from transforms.sinks.bigquery import to_json_row

    create_clickhouse_tables(chdb_client, ch_database)
    _insert_ch(chdb_client, ch_database, COPY_BATCHES)
    create_bigquery_tables(bq_client, BQ_PROJECT, bq_dataset)
    ref = f"{BQ_PROJECT}.{bq_dataset}.predictions"
    for i, batch in enumerate(COPY_BATCHES):
        rows = [to_json_row("predictions", r) for r in batch]
        assert bq_client.insert_rows_json(ref, rows, row_ids=[f"{i}-{j}" for j in range(len(rows))]) == []
    assert chdb_client.command(f"SELECT count() FROM `{ch_database}`.predictions") == 10  # every copy kept
    for name, (where, expected) in VIEW_QUERIES.items():
        ch = _ch_view(chdb_client, ch_database, where)
        q = (
            f"SELECT model_name, event_id, request_id FROM `{BQ_PROJECT}.{bq_dataset}.predictions_dedup` "
            f"{where.replace('event_time >=', 'event_time >= TIMESTAMP').replace('event_time <', 'event_time < TIMESTAMP')} "
            "ORDER BY 1, 2"
        )
        bq = [tuple(r.values()) for r in bq_client.query(q).result()]
        assert ch == expected, name
        assert bq == expected, name
    # BigQuery's time-range table function (partition pruning) gives the view's rows for the day
    fn = f"`{BQ_PROJECT}.{bq_dataset}.predictions_first`(TIMESTAMP '2026-03-01', TIMESTAMP '2026-03-02')"
    q = f"SELECT model_name, event_id, request_id FROM {fn} ORDER BY 1, 2"
    assert [tuple(r.values()) for r in bq_client.query(q).result()] == FIRST_COPIES
    q = f"SELECT count(*) AS n FROM `{BQ_PROJECT}.{bq_dataset}.predictions_first`(TIMESTAMP '2026-03-02', TIMESTAMP '2026-03-03')"
    assert next(iter(bq_client.query(q).result())).n == 0
    # the whole first row, not just its request id: the same content in both engines
    ch_row = chdb_client.query(
        f"SELECT prediction_label, latency_ms FROM `{ch_database}`.predictions_dedup WHERE event_id = 'e3'"
    ).result_rows
    bq_row = bq_client.query(
        f"SELECT prediction_label, latency_ms FROM `{BQ_PROJECT}.{bq_dataset}.predictions_dedup` WHERE event_id = 'e3'"
    ).result()
    assert [tuple(r) for r in ch_row] == [tuple(r.values()) for r in bq_row] == [("yes", 20.0)]


def test_clickhouse_side_tables_backfill_existing_rows(chdb_client, ch_database) -> None:
    """A database made before the side tables: provisioning fills them from the rows there."""
    create_clickhouse_tables(chdb_client, ch_database)
    for name in ("copies_mv", "repeats_mv", "not_first_mv", "copies", "repeats", "not_first"):
        chdb_client.command(f"DROP TABLE `{ch_database}`.`predictions_{name}`")
    chdb_client.command(f"DROP VIEW `{ch_database}`.`predictions_dedup`")
    _insert_ch(chdb_client, ch_database, COPY_BATCHES, prefix="old")
    create_clickhouse_tables(chdb_client, ch_database, replace_views=True)
    assert _ch_view(chdb_client, ch_database, "") == FIRST_COPIES
    _insert_ch(chdb_client, ch_database, [[_copy("churn", "e1", 0, "c1-earlier", "go", 1.0)]], prefix="new")
    assert _ch_view(chdb_client, ch_database, "WHERE event_id = 'e1' AND model_name = 'churn'") == [
        ("churn", "e1", "c1-earlier")
    ]


def test_clickhouse_not_first_set_is_computed_once_on_upgrade(chdb_client, ch_database) -> None:
    """A database of the previous view design (copies kept, later/tied side objects, no
    ``<t>_not_first``): provisioning drops the old derived objects and computes the set from
    the rows, and later copies keep it current."""
    create_clickhouse_tables(chdb_client, ch_database)
    for name in ("not_first_mv", "not_first"):
        chdb_client.command(f"DROP TABLE `{ch_database}`.`predictions_{name}`")
    chdb_client.command(f"DROP VIEW `{ch_database}`.`predictions_dedup`")
    chdb_client.command(f"CREATE TABLE `{ch_database}`.predictions_later (k String) ENGINE = Set")
    _insert_ch(chdb_client, ch_database, COPY_BATCHES, prefix="old")
    create_clickhouse_tables(chdb_client, ch_database, replace_views=True)
    names = {r[0] for r in chdb_client.query(f"SHOW TABLES FROM `{ch_database}`").result_rows}
    assert "predictions_later" not in names and "predictions_not_first" in names
    assert _ch_view(chdb_client, ch_database, "") == FIRST_COPIES
    # 10 rows, 5 identities: 5 positions in the set
    assert chdb_client.command(f"SELECT count() FROM `{ch_database}`.predictions_not_first") == 5
    _insert_ch(chdb_client, ch_database, [[_copy("fraud", "e2", 0, "f2-earlier", "no", 1.0)]], prefix="new")
    assert _ch_view(chdb_client, ch_database, "WHERE event_id = 'e2'") == [("fraud", "e2", "f2-earlier")]


def test_clickhouse_view_lookups_read_what_the_table_reads(chdb_client, ch_database) -> None:
    """The analyst's WHERE reaches the table scan through the view (index pruning), at 60k rows."""
    create_clickhouse_tables(chdb_client, ch_database)
    chdb_client.command(
        f"INSERT INTO `{ch_database}`.predictions (event_id, event_time, model_name, model_version, "
        "schema_version, request_id, features, status, quality_issues, ingest_time, payload_sha256, "
        "pipeline_version, row_sha256) SELECT concat('e', toString(number)), "
        "toDateTime64('2026-03-01', 6, 'UTC') + toIntervalSecond(number * 40), "
        "['fraud', 'churn'][number % 2 + 1], '1', '1', concat('r', toString(number)), '{}', 'ok', [], "
        "toDateTime64('2026-03-01', 6, 'UTC') + toIntervalSecond(number * 40 + 1), "
        "hex(SHA256(toString(number))), 'test', hex(SHA256(toString(number))) FROM numbers(60000)"
    )
    _insert_ch(chdb_client, ch_database, COPY_BATCHES)

    def rows_read(sql: str) -> int:
        return sum(int(r[3]) for r in chdb_client.query(f"EXPLAIN ESTIMATE {sql}").result_rows)

    for where in (
        "request_id = 'r4242'",
        "event_id = 'e4242'",
        "model_name = 'fraud' AND event_id = 'e4242'",
    ):
        raw = rows_read(f"SELECT * FROM `{ch_database}`.predictions WHERE {where}")
        view = rows_read(f"SELECT * FROM `{ch_database}`.predictions_dedup WHERE {where}")
        # a granule or two (the view filters the same granules by insert position); not the
        # 60k rows a view that sorts the table first reads
        assert raw <= 2 * 8192 and view <= raw + 2 * 8192, (where, raw, view)
    got = chdb_client.query(
        f"SELECT event_id, request_id FROM `{ch_database}`.predictions_dedup WHERE request_id = 'r4242'"
    ).result_rows
    assert got == [("e4242", "r4242")]


def test_clickhouse_view_keeps_the_first_copy_under_concurrent_inserts(
    chdb_path, chdb_client, ch_database
) -> None:
    """Three writers insert copies of the same 50 identities at once, the one with the
    earliest ingest times last to start: each identity's not-first copies are found (a
    writer's lookup runs after its own rows are committed, so of two racing inserts the
    later lookup sees both)."""
    import threading

    import clickhouse_connect

    create_clickhouse_tables(chdb_client, ch_database)
    names = PREDICTIONS.column_names
    errors: list[BaseException] = []

    def writer(offset: int, tag: str) -> None:
        try:
            client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")
            for i in range(5):
                rows = [
                    _copy("fraud", f"e{k}", offset + k, f"{tag}-{k}", tag, 1.0)
                    for k in range(i * 10, i * 10 + 10)
                ]
                client.insert(
                    f"`{ch_database}`.predictions",
                    [[r.get(n) for n in names] for r in rows],
                    column_names=names,
                    settings={"insert_deduplication_token": f"{tag}-{i}"},
                )
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=a) for a in ((1, "a"), (2, "b"), (0, "c"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert chdb_client.command(f"SELECT count() FROM `{ch_database}`.predictions") == 150
    got = chdb_client.query(f"SELECT request_id FROM `{ch_database}`.predictions_dedup").result_rows
    assert sorted(r for (r,) in got) == sorted(f"c-{k}" for k in range(50))
