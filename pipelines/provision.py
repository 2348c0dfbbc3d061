"""``predaudit provision``: topics, subscriptions and tables, created idempotently.

Works against Google Cloud or the local emulators (``PUBSUB_EMULATOR_HOST``, ``--bq_endpoint``).
"""

from __future__ import annotations

import dataclasses

from schemas.tables import create_bigquery_tables, create_clickhouse_tables
from transforms.sinks.bigquery import bigquery_client


@dataclasses.dataclass(frozen=True)
class PubSubNames:
    project: str
    predictions_topic: str = "predictions"
    labels_topic: str = "labels"
    anomalies_topic: str = "anomalies"
    dead_letters_topic: str = "dead-letters"
    predictions_subscription: str = "predictions-audit"
    labels_subscription: str = "labels-audit"

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"


def provision_pubsub(names: PubSubNames) -> None:
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for t in (names.predictions_topic, names.labels_topic, names.anomalies_topic, names.dead_letters_topic):
        try:
            pub.create_topic(name=names.topic(t))
        except AlreadyExists:
            pass
    for s, t in (
        (names.predictions_subscription, names.predictions_topic),
        (names.labels_subscription, names.labels_topic),
    ):
        try:
            sub.create_subscription(name=names.subscription(s), topic=names.topic(t), ack_deadline_seconds=60)
        except AlreadyExists:
            pass
    sub.close()


def provision_bigquery(project: str, dataset: str, endpoint: str = "") -> None:
    create_bigquery_tables(bigquery_client(project, endpoint), project, dataset)


def provision_clickhouse(dsn: str, database: str, ttl_days: int = 0):
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=dsn)
    create_clickhouse_tables(client, database, ttl_days)
    return client
