"""``predaudit provision`` against the Pub/Sub emulator, bqemulator and chDB: run twice
(idempotent), dead-letter policy on the subscriptions, ``--dry-run`` touches nothing; the
start-up table check names what is missing or different."""

from __future__ import annotations

import io
import uuid

import pytest

from pipelines.cli import main
from pipelines.provision import check_bigquery, check_clickhouse, provision_command
from schemas.tables import TABLES, clickhouse_side_objects
from tests.conftest import BQ_PROJECT

VIEWS = {"predictions_dedup", "labels_dedup", "accuracy_full_join"}


def provision(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    return main(["provision", *args], out), out.getvalue()


@pytest.fixture()
def pubsub_project(pubsub_emulator, monkeypatch) -> str:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.endpoint)
    return f"prov-{uuid.uuid4().hex[:8]}"


def test_provision_twice_creates_everything_once(
    pubsub_project, chdb_path, chdb_client, bq_client, bq_emulator
) -> None:
    from google.cloud import pubsub_v1

    database, dataset = f"p_{uuid.uuid4().hex[:8]}", f"p_{uuid.uuid4().hex[:8]}"
    args = [
        "--project",
        pubsub_project,
        "--sinks",
        "clickhouse,bigquery",
        "--bq_project",
        BQ_PROJECT,
        "--bq_dataset",
        dataset,
        "--bq_endpoint",
        bq_emulator.endpoint,
        "--clickhouse_dsn",
        f"chdb://{chdb_path}",
        "--clickhouse_database",
        database,
        "--max_delivery_attempts",
        "7",
    ]
    code, first = provision(args)
    assert code == 0, first
    code, second = provision(args)  # idempotent: everything exists, nothing fails
    assert code == 0, second
    assert "created" in first and "created" not in second
    assert second.count("exists") == first.count("created") + first.count("exists")

    sub = pubsub_v1.SubscriberClient()
    try:
        for name, topic in (("predictions-audit", "predictions"), ("labels-audit", "labels")):
            got = sub.get_subscription(subscription=f"projects/{pubsub_project}/subscriptions/{name}")
            assert got.topic == f"projects/{pubsub_project}/topics/{topic}"
            assert (
                got.dead_letter_policy.dead_letter_topic == f"projects/{pubsub_project}/topics/undeliverable"
            )
            assert got.dead_letter_policy.max_delivery_attempts == 7
        # what Pub/Sub gives up on is kept by a subscription, not dropped
        hold = sub.get_subscription(
            subscription=f"projects/{pubsub_project}/subscriptions/undeliverable-hold"
        )
        assert hold.topic.endswith("/topics/undeliverable")
    finally:
        sub.close()
    pub = pubsub_v1.PublisherClient()
    topics = {t.name.rsplit("/", 1)[1] for t in pub.list_topics(project=f"projects/{pubsub_project}")}
    assert topics == {"predictions", "labels", "anomalies", "dead-letters", "undeliverable"}

    names = {t.table_id for t in bq_client.list_tables(f"{BQ_PROJECT}.{dataset}")}
    assert names == set(TABLES) | VIEWS
    ch = {
        r[0]
        for r in chdb_client.query(
            f"SELECT name FROM system.tables WHERE database = '{database}'"
        ).result_rows
    }
    assert ch == set(TABLES) | VIEWS | set(clickhouse_side_objects())
    assert check_clickhouse(chdb_client, database) == []


def test_dry_run_prints_the_plan_and_touches_nothing(pubsub_project, chdb_path, chdb_client) -> None:
    from google.cloud import pubsub_v1

    database = f"p_{uuid.uuid4().hex[:8]}"
    code, out = provision(
        [
            "--project",
            pubsub_project,
            "--clickhouse_dsn",
            f"chdb://{chdb_path}",
            "--clickhouse_database",
            database,
            "--dry-run",
        ]
    )
    assert code == 0
    assert f"projects/{pubsub_project}/subscriptions/predictions-audit" in out
    assert "dead letters -> undeliverable after 10 attempts" in out
    assert f"{database}.predictions" in out and "nothing changed" in out
    pub = pubsub_v1.PublisherClient()
    assert list(pub.list_topics(project=f"projects/{pubsub_project}")) == []
    assert chdb_client.command(f"SELECT count() FROM system.databases WHERE name = '{database}'") == 0


def test_provision_upgrades_an_old_subscription_without_dead_letter_policy(pubsub_project) -> None:
    """A subscription made before the policy existed (e.g. by an older demo) gets it."""
    from google.cloud import pubsub_v1

    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = pub.create_topic(name=f"projects/{pubsub_project}/topics/predictions").name
    path = f"projects/{pubsub_project}/subscriptions/predictions-audit"
    sub.create_subscription(name=path, topic=topic)
    code, out = provision(["--project", pubsub_project, "--sinks", ""])
    assert code == 0, out
    assert any(line.startswith("updated") and "predictions-audit" in line for line in out.splitlines())
    assert sub.get_subscription(subscription=path).dead_letter_policy.max_delivery_attempts == 10
    sub.close()


def test_table_check_names_missing_and_changed_tables(chdb_client, ch_database) -> None:
    from schemas.tables import create_clickhouse_tables

    problems = check_clickhouse(chdb_client, ch_database)
    assert f"clickhouse: {ch_database}.predictions: table does not exist" in problems
    create_clickhouse_tables(chdb_client, ch_database)
    chdb_client.command(f"ALTER TABLE `{ch_database}`.labels DROP COLUMN label_numeric")
    assert check_clickhouse(chdb_client, ch_database) == [
        f"clickhouse: {ch_database}.labels: columns differ from the schema (missing label_numeric Nullable(Float64))"
    ]


def test_bigquery_check_accepts_string_for_json_columns_and_names_real_differences(
    bq_client, bq_dataset
) -> None:
    """A predictions table made before the Write API schema keeps STRING where the schema now
    says JSON (the sink writes JSON text to both): no problem. A wrong type is one."""
    from google.cloud import bigquery

    from schemas.tables import BQ_JSON_COLUMNS, bigquery_table_resource

    assert check_bigquery(bq_client, BQ_PROJECT, bq_dataset, ["predictions"]) == [
        f"bigquery: {BQ_PROJECT}.{bq_dataset}.predictions: table does not exist"
    ]
    bq_client.create_dataset(bigquery.Dataset(f"{BQ_PROJECT}.{bq_dataset}"), exists_ok=True)

    def make(table_id: str, retype: dict[str, str]) -> None:
        res = bigquery_table_resource(TABLES["predictions"], BQ_PROJECT, bq_dataset)
        res["tableReference"]["tableId"] = table_id
        for field in res["schema"]["fields"]:
            field["type"] = retype.get(field["name"], field["type"])
        bq_client.create_table(bigquery.Table.from_api_repr(res))

    old = {c: "STRING" for t, c in BQ_JSON_COLUMNS if t == "predictions"}
    make("predictions", old)
    assert check_bigquery(bq_client, BQ_PROJECT, bq_dataset, ["predictions"]) == []
    bq_client.delete_table(f"{BQ_PROJECT}.{bq_dataset}.predictions")
    make("predictions", {**old, "latency_ms": "STRING"})
    (problem,) = check_bigquery(bq_client, BQ_PROJECT, bq_dataset, ["predictions"])
    assert "missing latency_ms FLOAT NULLABLE" in problem and "unexpected latency_ms STRING" in problem


def test_provision_user_errors_are_one_line(capsys) -> None:
    assert main(["provision", "--sinks", "bq"]) == 2
    assert main(["provision", "--pubsub", "off", "--clickhouse_dsn", "tcp://x"]) == 2
    assert main(["provision", "--dry"]) == 2  # no abbreviation of --dry-run
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all("error:" in line for line in err), err


def test_provision_command_in_messages_hides_the_password() -> None:
    class Opts:
        bq_project, bq_dataset, bq_endpoint = "p", "audit", ""
        clickhouse_dsn, clickhouse_database = "https://w:secret@ch:8443", "audit"

    cmd = provision_command(Opts, ["clickhouse", "bigquery"])
    assert "secret" not in cmd and "--clickhouse_dsn https://w:***@ch:8443" in cmd
