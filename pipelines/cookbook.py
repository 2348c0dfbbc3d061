"""The analysts' cookbook: the questions asked of the audit tables, each in ClickHouse SQL and
GoogleSQL (BigQuery), kept here once so the README quotes them and a test runs them.

Queries read the analyst views (``predictions_dedup``, ``labels_dedup``: the first copy of
each identity) of the ``audit`` database / dataset, and ``drift_metrics`` as its fullest pane
per ``metric_id`` (the table is append-only). Parameters are ClickHouse query parameters
(``{name:Type}``; ``clickhouse-client --param_name=value``) and BigQuery named parameters
(``@name``; ``bq query --parameter=name:TYPE:value``).
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    question: str
    clickhouse: str
    bigquery: str
    #: parameter -> (ClickHouse type, BigQuery type, example value)
    params: tuple[tuple[str, str, str, str], ...] = ()


FROM = ("from", "DateTime64(6)", "TIMESTAMP", "2026-03-01 00:00:00")
MODEL = ("model", "String", "STRING", "fraud")

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "prediction_by_request_id",
        "A prediction and its features, by request id",
        """SELECT event_id, event_time, model_name, model_version, features,
       prediction_label, prediction_score, latency_ms, quality_issues, row_sha256
FROM audit.predictions_dedup
WHERE request_id = {request_id:String}
ORDER BY event_time""",
        """SELECT event_id, event_time, model_name, model_version, TO_JSON_STRING(features) AS features,
       prediction_label, prediction_score, latency_ms, quality_issues, row_sha256
FROM audit.predictions_dedup
WHERE request_id = @request_id
ORDER BY event_time""",
        (("request_id", "String", "STRING", "req-1674e3bb41b3"),),
    ),
    Recipe(
        "accuracy_per_day_per_version",
        "Accuracy (and MAE) per day per model version, over every label however late",
        """SELECT day, model_name, model_version, labeled, round(accuracy, 4) AS accuracy, mae
FROM audit.accuracy_full_join
WHERE day >= toDate({from:DateTime64(6)})
ORDER BY day, model_name, model_version""",
        """SELECT day, model_name, model_version, labeled, ROUND(accuracy, 4) AS accuracy, mae
FROM audit.accuracy_full_join
WHERE day >= DATE(@from)
ORDER BY day, model_name, model_version""",
        (FROM,),
    ),
    Recipe(
        "drifted_features",
        "Which features drifted since a time (e.g. this week), and by how much (PSI)",
        """SELECT model_name, model_version, signal,
       round(max(value), 4) AS max_psi,
       countIf(status IN ('warning', 'critical')) AS windows_over,
       minIf(window_start, status IN ('warning', 'critical')) AS first_over
FROM (
    SELECT * FROM audit.drift_metrics
    WHERE metric = 'psi' AND window_start >= {from:DateTime64(6)}
    ORDER BY sample_size DESC
    LIMIT 1 BY metric_id
)
GROUP BY model_name, model_version, signal
HAVING windows_over > 0
ORDER BY max_psi DESC""",
        """SELECT model_name, model_version, signal,
       ROUND(MAX(value), 4) AS max_psi,
       COUNTIF(status IN ('warning', 'critical')) AS windows_over,
       MIN(IF(status IN ('warning', 'critical'), window_start, NULL)) AS first_over
FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY metric_id ORDER BY sample_size DESC) AS pane
    FROM audit.drift_metrics
    WHERE metric = 'psi' AND window_start >= @from
)
WHERE pane = 1
GROUP BY model_name, model_version, signal
HAVING windows_over > 0
ORDER BY max_psi DESC""",
        (FROM,),
    ),
    Recipe(
        "rejections_by_reason",
        "Rejected inputs (dead letters) by stage and reason, with an example",
        """SELECT stage, error_code, count() AS n,
       any(error_path) AS example_path, any(error_message) AS example_message
FROM audit.dead_letters
WHERE ingest_time >= {from:DateTime64(6)}
GROUP BY stage, error_code
ORDER BY n DESC, stage, error_code""",
        """SELECT stage, error_code, COUNT(*) AS n,
       ANY_VALUE(error_path) AS example_path, ANY_VALUE(error_message) AS example_message
FROM audit.dead_letters
WHERE ingest_time >= @from
GROUP BY stage, error_code
ORDER BY n DESC, stage, error_code""",
        (FROM,),
    ),
    Recipe(
        "latency_p95_per_version",
        "Latency p50 / p95 / p99 per model version",
        """SELECT model_name, model_version, count() AS n,
       quantile(0.5)(latency_ms) AS p50_ms,
       quantile(0.95)(latency_ms) AS p95_ms,
       quantile(0.99)(latency_ms) AS p99_ms
FROM audit.predictions_dedup
WHERE event_time >= {from:DateTime64(6)} AND latency_ms IS NOT NULL
GROUP BY model_name, model_version
ORDER BY model_name, model_version""",
        """SELECT model_name, model_version, COUNT(*) AS n,
       APPROX_QUANTILES(latency_ms, 100)[OFFSET(50)] AS p50_ms,
       APPROX_QUANTILES(latency_ms, 100)[OFFSET(95)] AS p95_ms,
       APPROX_QUANTILES(latency_ms, 100)[OFFSET(99)] AS p99_ms
FROM audit.predictions_dedup
WHERE event_time >= @from AND latency_ms IS NOT NULL
GROUP BY model_name, model_version
ORDER BY model_name, model_version""",
        (FROM,),
    ),
    Recipe(
        "score_distribution_now_vs_reference",
        "The score distribution now (since `from`) vs a reference period, in 10 bins",
        """SELECT bin,
       round(countIf(period = 'current') / sum(countIf(period = 'current')) OVER (), 4) AS current_share,
       round(countIf(period = 'reference') / sum(countIf(period = 'reference')) OVER (), 4) AS reference_share
FROM (
    SELECT least(toUInt8(floor(prediction_score * 10)), 9) AS bin,
           if(event_time >= {from:DateTime64(6)}, 'current', 'reference') AS period
    FROM audit.predictions_dedup
    WHERE model_name = {model:String} AND prediction_score IS NOT NULL
      AND (event_time >= {from:DateTime64(6)}
           OR (event_time >= {ref_from:DateTime64(6)} AND event_time < {ref_to:DateTime64(6)}))
)
GROUP BY bin
ORDER BY bin""",
        """SELECT bin,
       ROUND(COUNTIF(period = 'current') / SUM(COUNTIF(period = 'current')) OVER (), 4) AS current_share,
       ROUND(COUNTIF(period = 'reference') / SUM(COUNTIF(period = 'reference')) OVER (), 4) AS reference_share
FROM (
    SELECT LEAST(CAST(FLOOR(prediction_score * 10) AS INT64), 9) AS bin,
           IF(event_time >= @from, 'current', 'reference') AS period
    FROM audit.predictions_dedup
    WHERE model_name = @model AND prediction_score IS NOT NULL
      AND (event_time >= @from OR (event_time >= @ref_from AND event_time < @ref_to))
)
GROUP BY bin
ORDER BY bin""",
        (
            FROM,
            MODEL,
            ("ref_from", "DateTime64(6)", "TIMESTAMP", "2026-02-01 00:00:00"),
            ("ref_to", "DateTime64(6)", "TIMESTAMP", "2026-02-08 00:00:00"),
        ),
    ),
    Recipe(
        "accuracy_by_segment",
        "Accuracy by segment (here the feature `country`: put your feature's name)",
        """SELECT JSONExtractString(p.features, 'country') AS segment,
       count() AS labeled,
       round(countIf(l.label = p.prediction_label) / count(), 4) AS accuracy
FROM audit.predictions_dedup AS p
INNER JOIN (
    SELECT model_name AS label_model, event_id, argMax(label, label_time) AS label
    FROM audit.labels_dedup
    GROUP BY label_model, event_id
) AS l ON l.event_id = p.event_id
WHERE p.model_name = {model:String} AND p.event_time >= {from:DateTime64(6)}
  AND (l.label_model IS NULL OR l.label_model = p.model_name)
GROUP BY segment
ORDER BY segment""",
        """SELECT JSON_VALUE(p.features, '$.country') AS segment,
       COUNT(*) AS labeled,
       ROUND(COUNTIF(l.label = p.prediction_label) / COUNT(*), 4) AS accuracy
FROM audit.predictions_dedup AS p
JOIN (
    SELECT model_name AS label_model, event_id,
           ARRAY_AGG(label ORDER BY label_time DESC LIMIT 1)[OFFSET(0)] AS label
    FROM audit.labels_dedup
    GROUP BY label_model, event_id
) AS l ON l.event_id = p.event_id
WHERE p.model_name = @model AND p.event_time >= @from
  AND (l.label_model IS NULL OR l.label_model = p.model_name)
GROUP BY segment
ORDER BY segment""",
        (MODEL, FROM),
    ),
)

BY_NAME = {r.name: r for r in RECIPES}


def in_database(sql: str, database: str) -> str:
    """The recipe's SQL against another database / dataset than ``audit``.

    >>> in_database("SELECT 1 FROM audit.predictions_dedup AS p", "t_1")
    'SELECT 1 FROM t_1.predictions_dedup AS p'
    """
    return re.sub(r"\baudit\.", f"{database}.", sql)


def clickhouse_params(sql: str) -> list[str]:
    """The ``{name:Type}`` parameters a ClickHouse query takes, in order of first use.

    >>> clickhouse_params(BY_NAME["score_distribution_now_vs_reference"].clickhouse)
    ['from', 'model', 'ref_from', 'ref_to']
    """
    return list(dict.fromkeys(re.findall(r"\{(\w+):[^}]+\}", sql)))


def bigquery_params(sql: str) -> list[str]:
    """
    >>> bigquery_params(BY_NAME["accuracy_by_segment"].bigquery)
    ['model', 'from']
    """
    return list(dict.fromkeys(re.findall(r"@(\w+)", sql)))


def markdown() -> str:
    """The README's cookbook section body: each question with both engines' SQL."""
    out = []
    for r in RECIPES:
        ch_args = " ".join(f"--param_{n}='{ex}'" for n, _, _, ex in r.params)
        bq_args = " ".join(f"--parameter={n}:{bt}:'{ex}'" for n, _, bt, ex in r.params)
        out.append(f"### {r.question}\n")
        out.append(f"ClickHouse (`clickhouse-client {ch_args} --queries-file {r.name}.sql`):\n")
        out.append(f"```sql\n{r.clickhouse}\n```\n")
        out.append(f"BigQuery (`bq query --use_legacy_sql=false {bq_args}`):\n")
        out.append(f"```sql\n{r.bigquery}\n```\n")
    return "\n".join(out)
