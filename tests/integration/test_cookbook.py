"""Every query of the analysts' cookbook (pipelines/cookbook.py, quoted by the README) runs on
known rows in chDB and returns what the rows say."""

from __future__ import annotations

import collections
import datetime as dt
import json
import uuid

import pytest

from pipelines.cookbook import BY_NAME, RECIPES, bigquery_params, clickhouse_params, in_database
from tests.conftest import BQ_PROJECT
from tests.integration.test_report import (
    DRIFT_FROM,
    T0,
    insert_known_rows,
    insert_known_rows_bq,
    known_labels,
    known_predictions,
)

PARAMS = {
    "request_id": "req-00007",
    "from": T0,
    "model": "rpt",
    "ref_from": T0,
    "ref_to": DRIFT_FROM,
}


def _clickhouse(client) -> dict[str, list[dict]]:
    database = f"t_cookbook_{uuid.uuid4().hex[:8]}"
    insert_known_rows(client, database)
    out = {}
    for r in RECIPES:
        params = _params(r.name)
        got = client.query(
            in_database(r.clickhouse, database),
            parameters={n: params[n] for n in clickhouse_params(r.clickhouse)},
        )
        out[r.name] = [dict(zip(got.column_names, row, strict=True)) for row in got.result_rows]
    return out


def _params(recipe: str) -> dict:
    """The parameters above; for the score bins "now" is from DRIFT_FROM on."""
    return {**PARAMS, "from": DRIFT_FROM} if recipe == "score_distribution_now_vs_reference" else PARAMS


def _bigquery(client) -> dict[str, list[dict]]:
    from google.cloud import bigquery

    dataset = f"t_cookbook_{uuid.uuid4().hex[:8]}"
    insert_known_rows_bq(client, BQ_PROJECT, dataset)
    out = {}
    for r in RECIPES:
        params = _params(r.name)
        types = {name: bq_type for name, _, bq_type, _ in r.params}
        config = bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(n, types[n], params[n]) for n in bigquery_params(r.bigquery)
            ]
        )
        job = client.query(in_database(r.bigquery, dataset), job_config=config)
        out[r.name] = [dict(row.items()) for row in job.result()]
    return out


@pytest.fixture(scope="module", params=["clickhouse", "bigquery"])
def results(request) -> dict[str, list[dict]]:
    """Each recipe's rows (as dicts) on the known data, per engine, with the parameters above."""
    if request.param == "clickhouse":
        return _clickhouse(request.getfixturevalue("chdb_client"))
    return _bigquery(request.getfixturevalue("bq_client"))


def test_every_recipe_declares_its_parameters() -> None:
    for r in RECIPES:
        assert set(clickhouse_params(r.clickhouse)) <= set(PARAMS), r.name  # the test binds them all
        declared = {name for name, *_ in r.params}
        assert set(clickhouse_params(r.clickhouse)) == declared == set(bigquery_params(r.bigquery)), r.name
        assert "audit." in r.clickhouse and "audit." in r.bigquery, r.name


def test_prediction_by_request_id(results) -> None:
    (row,) = results["prediction_by_request_id"]
    assert row["event_id"] == "e00007" and json.loads(row["features"]) == {"amount": 25.0, "country": "US"}


def test_accuracy_per_day_per_version(results) -> None:
    rows = results["accuracy_per_day_per_version"]
    assert [(r["day"], r["model_name"], r["model_version"], r["labeled"], r["accuracy"]) for r in rows] == [
        (dt.date(2026, 3, 1), "rpt", "1", 1200, 0.8)
    ]


def test_drifted_features(results) -> None:
    # only amount breached (12 windows from DRIFT_FROM); the 9.9 of a smaller pane is not read
    assert [(r["signal"], r["max_psi"], r["windows_over"]) for r in results["drifted_features"]] == [
        ("amount", 0.31, 12)
    ]
    first = results["drifted_features"][0]["first_over"]
    assert first.replace(tzinfo=dt.timezone.utc) == DRIFT_FROM


def test_rejections_by_reason(results) -> None:
    rows = results["rejections_by_reason"]
    assert [(r["stage"], r["error_code"], r["n"]) for r in rows] == [
        ("decode", "invalid_json", 20),
        ("decode", "missing_field", 10),
        ("decode", "wrong_type", 1),
    ]


def test_latency_quantiles_per_version(results) -> None:
    (row,) = results["latency_p95_per_version"]
    assert row["n"] == 1200 and 94 <= row["p95_ms"] <= 95 and 49 <= row["p50_ms"] <= 50


def test_score_distribution_now_vs_reference(results) -> None:
    rows = results["score_distribution_now_vs_reference"]
    assert [(r["bin"], r["reference_share"], r["current_share"]) for r in rows] == [
        (b, 0.1, 1.0 if b == 9 else 0.0) for b in range(10)
    ]


def test_accuracy_by_segment(results) -> None:
    # recomputed here from the rows the test inserted
    _, preds = known_predictions()
    _, labels = known_labels()
    label = {row[0]: row[2] for row in labels}
    seen: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for row in preds:
        country = json.loads(row[6])["country"]
        seen[country][0] += 1
        seen[country][1] += int(label[row[0]] == row[7])
    want = [(c, n, round(ok / n, 4)) for c, (n, ok) in sorted(seen.items())]
    assert [(r["segment"], r["labeled"], r["accuracy"]) for r in results["accuracy_by_segment"]] == want


def test_the_recipes_cover_the_analysts_questions() -> None:
    assert set(BY_NAME) == {
        "prediction_by_request_id",
        "accuracy_per_day_per_version",
        "drifted_features",
        "rejections_by_reason",
        "latency_p95_per_version",
        "score_distribution_now_vs_reference",
        "accuracy_by_segment",
    }
