"""One source of truth for the audit tables; BigQuery schemas and ClickHouse DDL derive from it.

Rows are insert-only. BigQuery: partitioned by the event date, clustered by model/version,
insertId = the row's key. ClickHouse: plain MergeTree (never Replacing: a later copy must not
replace the first) ordered by (model, version, time, key) with
``non_replicated_deduplication_window`` so a retried batch with the same
``insert_deduplication_token`` is written once. ``*_dedup`` views return the FIRST copy by
ingest time of each identity (predictions: (model_name, event_id); labels: the payload, so a
later correction is kept) in both engines, for analysts.

JSON-valued columns are String holding JSON in ClickHouse (``JSONExtract*``). In BigQuery
``features``, ``prediction_scores`` and ``metadata`` of ``predictions`` are JSON columns
(``BQ_JSON_COLUMNS``: analysts write ``features.amount``, ``LAX_FLOAT64(features.amount)``;
bqemulator supports them, tests/integration/test_bq_write_api.py); the other JSON-valued
columns stay STRING holding JSON (``JSON_VALUE``). A table created before keeps its STRING
columns (BigQuery cannot change STRING to JSON in place): both are written the same way.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

Kind = Literal["string", "lowcard", "int", "float", "bool", "timestamp", "json", "strings"]
Mode = Literal["REQUIRED", "NULLABLE", "REPEATED"]

_BQ_TYPES = {
    "string": "STRING",
    "lowcard": "STRING",
    "int": "INTEGER",
    "float": "FLOAT",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMP",
    "json": "STRING",
    "strings": "STRING",
}
_CH_TYPES = {
    "string": "String",
    "lowcard": "LowCardinality(String)",
    "int": "Int64",
    "float": "Float64",
    "bool": "Bool",
    "timestamp": "DateTime64(6, 'UTC')",
    "json": "String",
    "strings": "Array(String)",
}


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = False
    description: str = ""

    @property
    def mode(self) -> Mode:
        return "REPEATED" if self.kind == "strings" else ("REQUIRED" if self.required else "NULLABLE")


def _c(name: str, kind: Kind, required: bool = False, description: str = "") -> Column:
    return Column(name, kind, required, description)


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    time_column: str
    key: str  # the idempotency key: BigQuery insertId, ClickHouse dedup-by column
    cluster_by: tuple[str, ...]
    order_by: tuple[str, ...]
    dedup_by: tuple[str, ...] = ()  # what the ``*_dedup`` view collapses by (default: key)

    @property
    def identity(self) -> tuple[str, ...]:
        """The columns one logical row is identified by in the analyst views."""
        return self.dedup_by or (self.key,)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


_AUDIT_TAIL = (
    _c("message_id", "string", description="Pub/Sub message id (null for replayed files)."),
    _c("publish_time", "timestamp", description="Pub/Sub publish time."),
    _c("ingest_time", "timestamp", True, "When the pipeline processed the message (processing time)."),
    _c("payload_sha256", "string", True, "sha256 of the raw payload as received."),
    _c("pipeline_version", "lowcard", True, "predaudit version that wrote the row."),
)

PREDICTIONS = Table(
    "predictions",
    "One immutable row per prediction (event_id), PII rules applied.",
    (
        _c("event_id", "string", True, "Idempotency key from the producer."),
        _c("event_time", "timestamp", True, "When the prediction was made."),
        _c("model_name", "lowcard", True),
        _c("model_version", "lowcard", True),
        _c("schema_version", "lowcard", True),
        _c("request_id", "string"),
        _c("features", "json", True, "Feature values as a JSON object (PII hashed or dropped)."),
        _c("prediction_label", "string"),
        _c("prediction_score", "float"),
        _c("prediction_scores", "json", description="Class -> probability as a JSON object."),
        _c("prediction_value", "float"),
        _c("latency_ms", "float"),
        _c("status", "lowcard", True, "ok | error"),
        _c("metadata", "json"),
        _c("extensions", "json", description="Fields from a newer minor schema version."),
        _c("quality_issues", "strings", description="Spec checks that failed, as code:feature."),
        *_AUDIT_TAIL,
        _c(
            "row_sha256",
            "string",
            True,
            "sha256 of the row's canonical content (transforms.rows.row_sha256; README: Audit integrity).",
        ),
    ),
    time_column="event_time",
    key="event_id",
    cluster_by=("model_name", "model_version"),
    order_by=("model_name", "model_version", "event_time", "event_id"),
    dedup_by=("model_name", "event_id"),  # producers choose ids: two models may reuse one
)

LABELS = Table(
    "labels",
    "Ground truth for predictions, joined by event_id.",
    (
        _c("event_id", "string", True, "The event_id of the labelled prediction."),
        _c("label_time", "timestamp", True),
        _c("label", "string", True, "The label as text (numbers in JSON form)."),
        _c("label_numeric", "float", description="The label when it is a number (regression)."),
        _c("model_name", "lowcard"),
        _c("model_version", "lowcard"),
        _c("schema_version", "lowcard", True),
        *_AUDIT_TAIL,
    ),
    time_column="label_time",
    key="event_id",
    cluster_by=("model_name", "event_id"),
    order_by=("event_id", "label_time"),
    dedup_by=("payload_sha256",),  # a resent label collapses; a correction is another label
)

DEAD_LETTERS = Table(
    "dead_letters",
    "Inputs that could not be audited or written, with the reason and the payload.",
    (
        _c(
            "dead_letter_id",
            "string",
            True,
            "sha256 of stage, code, payload and message id: stable across retries.",
        ),
        _c("stage", "lowcard", True, "decode | sink.bigquery | sink.clickhouse | monitor"),
        _c("kind", "lowcard", True, "prediction | label | row"),
        _c("error_code", "lowcard", True),
        _c("error_path", "string", True),
        _c("error_message", "string", True),
        _c("event_id", "string"),
        _c("model_name", "lowcard"),
        _c("model_version", "lowcard"),
        _c("payload_text", "string", description="The payload when UTF-8 (PII redacted)."),
        _c("payload_base64", "string", description="The payload when not UTF-8."),
        _c("payload_sha256", "string", True),
        _c("payload_size", "int", True),
        _c("payload_truncated", "bool", True),
        _c("attributes", "json", description="Pub/Sub attributes."),
        _c("message_id", "string"),
        _c("publish_time", "timestamp"),
        _c("ingest_time", "timestamp", True),
        _c("pipeline_version", "lowcard"),
    ),
    time_column="ingest_time",
    key="dead_letter_id",
    cluster_by=("stage", "error_code"),
    order_by=("stage", "error_code", "ingest_time", "dead_letter_id"),
)

ANOMALIES = Table(
    "anomalies",
    "Anomaly events (CloudEvents) emitted by the monitors.",
    (
        _c("anomaly_id", "string", True, "CloudEvent id."),
        _c("time", "timestamp", True),
        _c("type", "lowcard", True, "e.g. predaudit.anomaly.feature_drift"),
        _c("source", "string", True),
        _c("subject", "string", True),
        _c("model_name", "lowcard", True),
        _c("model_version", "lowcard", True),
        _c("signal", "lowcard", True),
        _c("detector", "lowcard", True),
        _c("statistic", "float", True),
        _c("threshold", "float", True),
        _c("severity", "lowcard", True, "warning | critical | resolved"),
        _c("window_start", "timestamp", True),
        _c("window_end", "timestamp", True),
        _c("sample_size", "int", True),
        _c("reference", "json"),
        _c("current", "json"),
        _c("cloudevent", "json", True, "The full CloudEvents JSON as published."),
    ),
    time_column="time",
    key="anomaly_id",
    cluster_by=("model_name", "model_version", "signal"),
    order_by=("model_name", "model_version", "time", "anomaly_id"),
)

DRIFT_METRICS = Table(
    "drift_metrics",
    "Every computed monitor statistic per window, breach or not.",
    (
        _c("metric_id", "string", True, "Deterministic: model/version/signal/metric/window."),
        _c("model_name", "lowcard", True),
        _c("model_version", "lowcard", True),
        _c("signal", "lowcard", True),
        _c("metric", "lowcard", True, "psi | js_distance | linf_distance | accuracy | ..."),
        _c("value", "float"),
        _c("window_start", "timestamp", True),
        _c("window_end", "timestamp", True),
        _c("sample_size", "int", True),
        _c("status", "lowcard", True, "ok | insufficient | warning | critical"),
        _c("epsilon", "float"),
        _c("bins", "int"),
        _c("reference_id", "string"),
        _c(
            "threshold",
            "float",
            False,
            "The threshold the value was judged by (calibrated or fixed); null if not judged.",
        ),
        _c("baseline", "lowcard", False, "reference | seasonal | warmup | inferred | labels"),
    ),
    time_column="window_start",
    key="metric_id",
    cluster_by=("model_name", "model_version", "signal"),
    order_by=("model_name", "model_version", "signal", "window_start", "metric_id"),
)

INTEGRITY = Table(
    "integrity",
    "Tamper evidence: per (model, version, hour of event time) the count and Merkle root of the "
    "audit rows' row_sha256 (transforms.integrity; checked by predaudit verify).",
    (
        _c("integrity_id", "string", True, "sha256 of writer, model, version, hour, sequence and root."),
        _c("model_name", "lowcard", True),
        _c("model_version", "lowcard", True),
        _c("hour_start", "timestamp", True, "Start of the event-time hour the record covers."),
        _c("row_count", "int", True, "Audit rows (first copies) in the hour."),
        _c("merkle_root", "string", True, "RFC 6962 Merkle tree hash over row_sha256, identity order."),
        _c("leaves", "json", description="[[event_id, row_sha256], ...] in identity order (null if large)."),
        _c(
            "sequence",
            "int",
            True,
            "Pane index: the highest per (writer, model, version, hour) is the latest.",
        ),
        _c("final", "bool", True, "The last pane of the hour (its window closed)."),
        _c("writer", "string", True, "replay:<input glob> or streaming:<subscription>."),
        _c("scheme", "lowcard", True, "Hash scheme version (row-sha256-v1/rfc6962-sha256)."),
    ),
    time_column="hour_start",
    key="integrity_id",
    cluster_by=("model_name", "model_version"),
    order_by=("model_name", "model_version", "hour_start", "integrity_id"),
)

TABLES: dict[str, Table] = {
    t.name: t for t in (PREDICTIONS, LABELS, DEAD_LETTERS, ANOMALIES, DRIFT_METRICS, INTEGRITY)
}


def bigquery_schema(table: Table) -> list[dict[str, str]]:
    """The table's BigQuery schema as the JSON the API and ``bq mk`` take.

    >>> bigquery_schema(PREDICTIONS)[0]
    {'name': 'event_id', 'type': 'STRING', 'mode': 'REQUIRED', 'description': 'Idempotency key from the producer.'}
    """
    return [
        {"name": c.name, "type": bigquery_type(table, c), "mode": c.mode, "description": c.description}
        for c in table.columns
    ]


#: (table, column) stored as BigQuery JSON (the others of kind "json" are STRING holding JSON)
BQ_JSON_COLUMNS = frozenset(
    {("predictions", "features"), ("predictions", "prediction_scores"), ("predictions", "metadata")}
)


def bigquery_type(table: Table, c: Column) -> str:
    """A column's BigQuery type.

    >>> [bigquery_type(PREDICTIONS, PREDICTIONS.column(n)) for n in ("features", "extensions")]
    ['JSON', 'STRING']
    """
    return "JSON" if (table.name, c.name) in BQ_JSON_COLUMNS else _BQ_TYPES[c.kind]


def bigquery_table_resource(table: Table, project: str, dataset: str) -> dict[str, Any]:
    """A full ``tables.insert`` resource: schema, day partitioning, clustering."""
    return {
        "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table.name},
        "description": table.description,
        "schema": {"fields": bigquery_schema(table)},
        "timePartitioning": {"type": "DAY", "field": table.time_column},
        "clustering": {"fields": list(table.cluster_by)},
    }


def bigquery_dedup_view_sql(table: Table, project: str, dataset: str) -> str:
    """Analyst view keeping the first-ingested row per identity (ties: the payload hash)."""
    return (
        f"SELECT * EXCEPT(_rn) FROM (SELECT *, ROW_NUMBER() OVER "
        f"(PARTITION BY {', '.join(table.identity)} ORDER BY ingest_time, payload_sha256) AS _rn "
        f"FROM `{project}.{dataset}.{table.name}`) WHERE _rn = 1"
    )


def clickhouse_column_type(c: Column) -> str:
    """The ClickHouse type of a column, as ``system.columns`` reports it.

    >>> clickhouse_column_type(PREDICTIONS.column("model_name")), clickhouse_column_type(PREDICTIONS.column("latency_ms"))
    ('LowCardinality(String)', 'Nullable(Float64)')
    """
    ch = _CH_TYPES[c.kind]
    if c.mode == "NULLABLE":
        ch = "LowCardinality(Nullable(String))" if c.kind == "lowcard" else f"Nullable({ch})"
    return ch


def clickhouse_ddl(table: Table, database: str = "audit", ttl_days: int = 0) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for ClickHouse (26.x, also chDB).

    >>> print(clickhouse_ddl(LABELS).splitlines()[0])
    CREATE TABLE IF NOT EXISTS `audit`.`labels`
    """
    cols = []
    for c in table.columns:
        ch = clickhouse_column_type(c)
        comment = f" COMMENT '{_sql_str(c.description)}'" if c.description else ""
        cols.append(f"    `{c.name}` {ch}{comment}")
    cols += [f"    INDEX {name} {expr}" for name, expr in CLICKHOUSE_SKIP_INDEXES.get(table.name, ())]
    ttl = f"\nTTL toDateTime({table.time_column}) + INTERVAL {int(ttl_days)} DAY" if ttl_days > 0 else ""
    return (
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{table.name}`\n(\n"
        + ",\n".join(cols)
        + f"\n)\nENGINE = MergeTree\nPARTITION BY toYYYYMM({table.time_column})\n"
        + f"ORDER BY ({', '.join(table.order_by)}){ttl}\n"
        + "SETTINGS non_replicated_deduplication_window = 1000"
        + (_ROW_ID_SETTINGS if table.name in _DEDUP_VIEW_TABLES else "")
        + "\n"
        + f"COMMENT '{_sql_str(table.description)}'"
    )


# Bloom-filter skip indexes for the analysts' point lookups (event_id is 4th in the sort key,
# request_id not in it): without them a lookup reads every granule (tests/bench/views_bench.py).
CLICKHOUSE_SKIP_INDEXES: dict[str, tuple[tuple[str, str], ...]] = {
    "predictions": (
        ("idx_event_id", "event_id TYPE bloom_filter(0.001) GRANULARITY 1"),
        ("idx_request_id", "request_id TYPE bloom_filter(0.001) GRANULARITY 1"),
    ),
}

_FIRST_BY = ("ingest_time", "payload_sha256")  # "first copy" order in both engines
_DEDUP_VIEW_TABLES = ("predictions", "labels")
# persisted per-row insert position: tells byte-identical copies apart (clickhouse_dedup_view_ddl)
_ROW_ID_SETTINGS = ", enable_block_number_column = 1, enable_block_offset_column = 1"


def _copies_columns(table: Table) -> list[str]:
    return list(dict.fromkeys((*table.identity, table.time_column, *_FIRST_BY)))


def clickhouse_copies_ddl(table: Table, database: str = "audit", ttl_days: int = 0) -> list[str]:
    """Side tables that let ``<t>_dedup`` drop later copies without sorting the table.

    All are filled at insert time by materialized views; duplicates are rare, so all but
    ``<t>_copies`` stay tiny.

    - ``<t>_copies``: (identity, time, ingest_time, payload_sha256) of every row.
    - ``<t>_repeats``: every copy of an identity written more than once, emitted when a copy
      arrives: the inserted block's identities are looked up in the whole of ``<t>_copies`` by
      its sort key (``merge()`` reads the table itself: inside a materialized view the source
      table's name means the inserted block, which is already committed).
    - ``<t>_not_first`` (Set): the insert position (time, ``_block_number``,
      ``_block_offset``) of every copy that is not its identity's first by
      (ingest_time, payload_sha256, insert position). Filled when a repeat arrives, from the
      table itself (``_not_first_select``). A copy, once not first, stays not first (the
      order is total and fixed), so the set only grows. The position is fixed-width and
      persisted (``enable_block_number_column``), so the view reads 24 bytes a row more than
      the table, not the identity's strings; the time column makes it unique where block
      numbers count per partition (ReplicatedMergeTree).

    >>> [q.split("`")[3] for q in clickhouse_copies_ddl(PREDICTIONS)]
    ['predictions_copies', 'predictions_repeats', 'predictions_not_first', 'predictions_not_first_mv', 'predictions_repeats_mv', 'predictions_copies_mv']
    """
    db, t = f"`{database}`", table.name
    cols = _copies_columns(table)

    def defs(names: list[str], types: list[str]) -> str:
        return ",\n".join(f"    `{n}` {ty}" for n, ty in zip(names, types, strict=True))

    types = {c: clickhouse_column_type(table.column(c)) for c in cols}
    ttl = f"\nTTL toDateTime({table.time_column}) + INTERVAL {int(ttl_days)} DAY" if ttl_days > 0 else ""
    key = ", ".join(table.identity)
    sel = ", ".join(cols)
    side = (
        f"(\n{defs(cols, [types[c] for c in cols])}\n)\nENGINE = MergeTree\nORDER BY ({key}){ttl}\n"
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    pos = [table.time_column, "block_number", "block_offset"]
    whole = f"merge('{_sql_str(database)}', '^{_re_literal(t)}_copies$')"
    on = " AND ".join(f"a.{c} = k.{c}" for c in table.identity)
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.`{t}_copies`\n{side}\n"
        f"COMMENT 'Identity and first-copy order of every {t} row (for {t}_dedup).'",
        f"CREATE TABLE IF NOT EXISTS {db}.`{t}_repeats`\n{side}\n"
        f"COMMENT 'Every copy of a {t} identity written more than once (for {t}_dedup).'",
        f"CREATE TABLE IF NOT EXISTS {db}.`{t}_not_first`\n(\n"
        f"{defs(pos, [types[table.time_column], 'UInt64', 'UInt64'])}\n)\nENGINE = Set",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.`{t}_not_first_mv` TO {db}.`{t}_not_first` AS "
        f"SELECT {', '.join(f'p.{c} AS {c}' for c in pos)} "
        f"FROM (SELECT DISTINCT {key} FROM {db}.`{t}_repeats`) AS k INNER JOIN ("
        f"{_not_first_select(table, database, f'{db}.`{t}_repeats`')}) AS p ON "
        + " AND ".join(f"p.{c} = k.{c}" for c in table.identity),
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.`{t}_repeats_mv` TO {db}.`{t}_repeats` AS "
        f"SELECT {', '.join(f'a.{c} AS {c}' for c in cols)} "
        f"FROM (SELECT DISTINCT {key} FROM {db}.`{t}_copies`) AS k INNER JOIN (SELECT {sel} FROM {whole} "
        f"WHERE ({key}) IN (SELECT {key} FROM {whole} WHERE ({key}) IN (SELECT {key} FROM {db}.`{t}_copies`) "
        f"GROUP BY {key} HAVING count() > 1)) AS a ON {on}",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.`{t}_copies_mv` TO {db}.`{t}_copies` AS "
        f"SELECT {sel} FROM {db}.`{t}`",
    ]


def _not_first_select(table: Table, database: str, identities: str) -> str:
    """(identity, time, block_number, block_offset) of every copy of the identities in the
    table ``identities`` that is not the first, read from the table itself.

    Each identity column is also matched on its own, so a bloom-filter skip index on it
    (``idx_event_id``) prunes granules even where the identity is not a sort-key prefix.
    """
    key = ", ".join(table.identity)
    first = ", ".join(_FIRST_BY)
    src = f"merge('{_sql_str(database)}', '^{_re_literal(table.name)}$')"
    where = " AND ".join(
        [f"({key}) IN (SELECT {key} FROM {identities})"]
        + [f"{c} IN (SELECT {c} FROM {identities})" for c in table.identity if len(table.identity) > 1]
    )
    return (
        f"SELECT {key}, x.5 AS {table.time_column}, x.3 AS block_number, x.4 AS block_offset FROM ("
        f"SELECT {key}, arrayJoin(arrayPopFront(arraySort(groupArray(({first}, _block_number, "
        f"_block_offset, {table.time_column}))))) AS x FROM {src} WHERE {where} GROUP BY {key})"
    )


#: side objects of the design before ``<t>_not_first`` (dropped by create_clickhouse_tables: derived data)
_LEGACY_SIDE_SUFFIXES = ("later_mv", "tied_mv", "later", "tied")
DEDUP_SIDE_SUFFIXES = ("copies", "repeats", "not_first", "not_first_mv", "repeats_mv", "copies_mv")


def clickhouse_side_objects() -> list[str]:
    """Names of the side tables and materialized views ``create_clickhouse_tables`` adds.

    >>> clickhouse_side_objects()[:3]
    ['predictions_copies', 'predictions_repeats', 'predictions_not_first']
    """
    return [f"{n}_{s}" for n in ("predictions", "labels") for s in DEDUP_SIDE_SUFFIXES]


def clickhouse_dedup_view_ddl(table: Table, database: str = "audit", replace: bool = False) -> str:
    """The first copy by (ingest_time, payload_sha256, insert position) per identity, as a
    filter on the table.

    Every row passes except those whose insert position is in the ``<t>_not_first`` set
    (see ``clickhouse_copies_ddl``), so an analyst's WHERE is pushed into the table scan and
    uses the sort key, partitions and skip indexes (a ``LIMIT 1 BY`` view sorted the whole
    table first). One Set lookup on three fixed-width columns, no subquery and no UNION:
    the view costs a plain ``SELECT *`` view's planning plus that lookup (a subquery for
    copies sharing an ingest time cost as much as the point lookup it wrapped).
    ``identity()`` keeps the anti-join out of primary-key analysis. Copies sharing the
    earliest ingest time (e.g. a batch re-sent under another insert token) are ordered by
    payload_sha256, then by the row's persisted ``_block_number`` and ``_block_offset``.

    >>> "NOT IN `audit`.`predictions_not_first`" in clickhouse_dedup_view_ddl(PREDICTIONS)
    True
    """
    create = "CREATE OR REPLACE VIEW" if replace else "CREATE VIEW IF NOT EXISTS"
    db, t = f"`{database}`", table.name
    return (
        f"{create} {db}.`{t}_dedup` AS "
        f"SELECT * FROM {db}.`{t}` WHERE identity(({table.time_column}, _block_number, _block_offset)) "
        f"NOT IN {db}.`{t}_not_first`"
    )


def _re_literal(text: str) -> str:
    r"""``text`` as a literal inside a ClickHouse (re2) regular expression in a SQL string.

    >>> print(_re_literal("a.b_c"))
    a\\.b_c
    """
    return "".join("\\\\" + ch if not (ch.isalnum() or ch == "_") else ch for ch in text)


def clickhouse_accuracy_view_ddl(database: str = "audit", replace: bool = False) -> str:
    """Analyst view: accuracy / MAE per model, version and day over the full label join
    (every label, however late; the latest label per prediction wins). Labels join on the
    identity (model_name, event_id); a label without a model joins on event_id alone."""
    create = "CREATE OR REPLACE VIEW" if replace else "CREATE VIEW IF NOT EXISTS"
    return (
        f"{create} `{database}`.`accuracy_full_join` AS "
        "SELECT p.model_name AS model_name, p.model_version AS model_version, "
        "toDate(p.event_time) AS day, count() AS labeled, "
        "countIf(l.label = p.prediction_label) / count() AS accuracy, "
        "avgIf(abs(l.label_numeric - p.prediction_value), "
        "l.label_numeric IS NOT NULL AND p.prediction_value IS NOT NULL) AS mae "
        f"FROM `{database}`.`predictions_dedup` AS p INNER JOIN ("
        "SELECT model_name AS label_model, event_id, argMax(label, label_time) AS label, "
        "argMax(label_numeric, label_time) AS label_numeric "
        f"FROM `{database}`.`labels_dedup` GROUP BY label_model, event_id) AS l ON l.event_id = p.event_id "
        "WHERE l.label_model IS NULL OR l.label_model = p.model_name "
        "GROUP BY model_name, model_version, day"
    )


def bigquery_accuracy_view_sql(project: str, dataset: str) -> str:
    """The same view in GoogleSQL."""
    return (
        "SELECT p.model_name, p.model_version, DATE(p.event_time) AS day, COUNT(*) AS labeled, "
        "COUNTIF(l.label = p.prediction_label) / COUNT(*) AS accuracy, "
        "AVG(ABS(l.label_numeric - p.prediction_value)) AS mae "
        f"FROM `{project}.{dataset}.predictions_dedup` AS p JOIN ("
        "SELECT model_name, event_id, label, label_numeric FROM (SELECT model_name, event_id, label, "
        "label_numeric, ROW_NUMBER() OVER (PARTITION BY model_name, event_id "
        "ORDER BY label_time DESC, ingest_time DESC) AS _rn "
        f"FROM `{project}.{dataset}.labels_dedup`) WHERE _rn = 1) AS l ON l.event_id = p.event_id "
        "AND (l.model_name IS NULL OR l.model_name = p.model_name) "
        "GROUP BY p.model_name, p.model_version, day"
    )


def _sql_str(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def render_ddl(target: str, database: str = "audit", project: str = "my-project", ttl_days: int = 0) -> str:
    """What ``predaudit schema ddl`` prints."""
    if target == "clickhouse":
        parts = [f"CREATE DATABASE IF NOT EXISTS `{database}`"]
        for t in TABLES.values():
            parts.append(clickhouse_ddl(t, database, ttl_days))
        for n in ("predictions", "labels"):
            parts += clickhouse_copies_ddl(TABLES[n], database, ttl_days)
        parts += [clickhouse_dedup_view_ddl(TABLES[n], database) for n in ("predictions", "labels")]
        parts.append(clickhouse_accuracy_view_ddl(database))
        return ";\n\n".join(parts) + ";\n"
    if target == "bigquery":
        doc = {
            "tables": [bigquery_table_resource(t, project, database) for t in TABLES.values()],
            "views": [{"name": n, "query": q} for n, q in bigquery_views(project, database).items()],
            "table_functions": [bigquery_first_copies_function_ddl(PREDICTIONS, project, database)],
        }
        return json.dumps(doc, indent=2) + "\n"
    raise ValueError(f"unknown target {target!r}: use bigquery or clickhouse")


def create_clickhouse_tables(
    client: Any, database: str = "audit", ttl_days: int = 0, replace_views: bool = False
) -> None:
    """Create the database, tables and views idempotently through a clickhouse-connect client.

    ``replace_views`` re-creates the views (they hold no data) so a provision run upgrades them.
    A ``<t>_copies`` side table created next to existing rows is filled from them (a row
    written meanwhile lands twice there, with the same ingest time and hash: harmless).
    """
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    foreign: set[str] = set()  # tables an operator made with another engine (e.g. Null)
    for t in TABLES.values():
        client.command(clickhouse_ddl(t, database, ttl_days))
        engine = client.command(
            f"SELECT engine FROM system.tables WHERE database = '{database}' AND name = '{t.name}'"
        )
        if not str(engine).endswith("MergeTree"):  # leave it, and build no side objects on it
            foreign.add(t.name)
            continue
        for name, expr in CLICKHOUSE_SKIP_INDEXES.get(t.name, ()):  # tables made before the index
            client.command(f"ALTER TABLE `{database}`.`{t.name}` ADD INDEX IF NOT EXISTS {name} {expr}")
        if t.name in _DEDUP_VIEW_TABLES:  # tables made before the setting (idempotent)
            client.command(f"ALTER TABLE `{database}`.`{t.name}` MODIFY SETTING {_ROW_ID_SETTINGS[2:]}")
    for n in ("predictions", "labels"):
        if n in foreign:
            continue
        table = TABLES[n]

        def exists(name: str) -> bool:
            return bool(
                int(
                    client.command(
                        f"SELECT count() FROM system.tables WHERE database = '{_sql_str(database)}' "
                        f"AND name = '{_sql_str(name)}'"
                    )
                )
            )

        had_copies, had_not_first = exists(f"{n}_copies"), exists(f"{n}_not_first")
        for suffix in _LEGACY_SIDE_SUFFIXES:  # derived data of the previous view design
            client.command(f"DROP TABLE IF EXISTS `{database}`.`{n}_{suffix}`")
        for q in clickhouse_copies_ddl(table, database, ttl_days):
            client.command(q)
        if not had_copies:  # fills <t>_repeats and <t>_not_first too, through their views
            cols = ", ".join(_copies_columns(table))
            client.command(
                f"INSERT INTO `{database}`.`{n}_copies` ({cols}) SELECT {cols} FROM `{database}`.`{n}`"
            )
        elif not had_not_first:  # side tables of the previous design: compute the set once
            key = ", ".join(table.identity)
            repeated = f"(SELECT {key} FROM `{database}`.`{n}_copies` GROUP BY {key} HAVING count() > 1)"
            client.command(
                f"INSERT INTO `{database}`.`{n}_not_first` SELECT {table.time_column}, block_number, "
                f"block_offset FROM ({_not_first_select(table, database, repeated)})"
            )
        client.command(clickhouse_dedup_view_ddl(table, database, replace_views))
    if not foreign & {"predictions", "labels"}:
        client.command(clickhouse_accuracy_view_ddl(database, replace_views))


def bigquery_first_copies_function_ddl(table: Table, project: str, dataset: str) -> str:
    """``<t>_first(from_ts, to_ts)``: the ``*_dedup`` rows with ``from_ts <= time < to_ts``.

    The time filter sits below the window function, so BigQuery prunes day partitions (a
    filter on the view's ``event_time`` is not pushed through ``ROW_NUMBER() OVER (PARTITION
    BY model_name, event_id)``: only filters on the PARTITION BY columns are). Same rows as
    the view when the copies of an identity share their event time (a re-send of the same
    event does: event_time comes from the producer). Always ``OR REPLACE`` (it holds no data;
    bqemulator does not parse ``IF NOT EXISTS`` here).

    >>> bigquery_first_copies_function_ddl(PREDICTIONS, "p", "d").split("(")[0]
    'CREATE OR REPLACE TABLE FUNCTION `p.d.predictions_first`'
    """
    return (
        f"CREATE OR REPLACE TABLE FUNCTION `{project}.{dataset}.{table.name}_first`(from_ts TIMESTAMP, to_ts TIMESTAMP) AS "
        f"SELECT * EXCEPT(_rn) FROM (SELECT *, ROW_NUMBER() OVER "
        f"(PARTITION BY {', '.join(table.identity)} ORDER BY {', '.join(_FIRST_BY)}) AS _rn "
        f"FROM `{project}.{dataset}.{table.name}` "
        f"WHERE {table.time_column} >= from_ts AND {table.time_column} < to_ts) WHERE _rn = 1"
    )


def bigquery_views(project: str, dataset: str) -> dict[str, str]:
    """View name -> GoogleSQL query."""
    views = {
        f"{n}_dedup": bigquery_dedup_view_sql(TABLES[n], project, dataset) for n in ("predictions", "labels")
    }
    views["accuracy_full_join"] = bigquery_accuracy_view_sql(project, dataset)
    return views


def create_bigquery_tables(
    client: Any, project: str, dataset: str, views: bool = True, replace_views: bool = False
) -> None:
    """Create the dataset, tables and views idempotently through a google-cloud-bigquery client.

    ``replace_views`` updates a view whose query differs (a provision run upgrades them).
    """
    from google.cloud import bigquery

    client.create_dataset(bigquery.Dataset(f"{project}.{dataset}"), exists_ok=True)
    for t in TABLES.values():
        table = bigquery.Table.from_api_repr(bigquery_table_resource(t, project, dataset))
        client.create_table(table, exists_ok=True)
    if views:
        for name, query in bigquery_views(project, dataset).items():
            view = bigquery.Table(f"{project}.{dataset}.{name}")
            view.view_query = query
            got = client.create_table(view, exists_ok=True)
            if replace_views and got.view_query != query:
                got.view_query = query
                client.update_table(got, ["view_query"])
        client.query(bigquery_first_copies_function_ddl(PREDICTIONS, project, dataset)).result()
