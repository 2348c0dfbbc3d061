"""``predaudit provision``: topics, subscriptions and tables, created idempotently.

Works against Google Cloud or the local emulators (``PUBSUB_EMULATOR_HOST``, ``--bq_endpoint``).
The same module checks, before a pipeline writes, that every table exists with the expected
columns (``check_tables``), and lets ``predaudit replay`` create what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from schemas.tables import (
    TABLES,
    bigquery_schema,
    bigquery_views,
    clickhouse_column_type,
    create_bigquery_tables,
    create_clickhouse_tables,
)
from transforms.sinks.bigquery import bigquery_client

DEFAULT_MAX_DELIVERY_ATTEMPTS = 10


class ProvisionError(Exception):
    """A resource cannot be reached or created (bad DSN, locked chDB directory, denied, ...);
    ``str()`` is the one line the user sees."""


@dataclasses.dataclass(frozen=True)
class PubSubNames:
    project: str
    predictions_topic: str = "predictions"
    labels_topic: str = "labels"
    anomalies_topic: str = "anomalies"
    dead_letters_topic: str = "dead-letters"
    predictions_subscription: str = "predictions-audit"
    labels_subscription: str = "labels-audit"
    # messages Pub/Sub gave up delivering (max delivery attempts) land here, kept by a subscription
    undeliverable_topic: str = "undeliverable"
    undeliverable_subscription: str = "undeliverable-hold"

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"

    def topics(self) -> list[str]:
        return [
            self.predictions_topic,
            self.labels_topic,
            self.anomalies_topic,
            self.dead_letters_topic,
            self.undeliverable_topic,
        ]

    def subscriptions(self) -> list[tuple[str, str, bool]]:
        """(subscription, topic, with a dead-letter policy)."""
        return [
            (self.predictions_subscription, self.predictions_topic, True),
            (self.labels_subscription, self.labels_topic, True),
            (self.undeliverable_subscription, self.undeliverable_topic, False),
        ]


@dataclasses.dataclass(frozen=True)
class Step:
    """One resource of the plan: what it is and, after applying, what happened to it."""

    system: str  # pubsub | bigquery | clickhouse
    kind: str  # topic | subscription | dataset | database | table | view
    name: str
    detail: str = ""

    def line(self, state: str) -> str:
        detail = f"  ({self.detail})" if self.detail else ""
        return f"{state:<10} {self.system:<10} {self.kind:<12} {self.name}{detail}"


Report = Callable[[Step, str], None]


def redact_dsn(dsn: str) -> str:
    """A DSN without its password, for messages.

    >>> redact_dsn("https://writer:s3cret@ch.example:8443/audit"), redact_dsn("chdb:///tmp/x")
    ('https://writer:***@ch.example:8443/audit', 'chdb:///tmp/x')
    """
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", dsn)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (client errors are often long)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


# -- Pub/Sub -------------------------------------------------------------------------------------
def pubsub_plan(names: PubSubNames, max_delivery_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS) -> list[Step]:
    steps = [Step("pubsub", "topic", names.topic(t)) for t in names.topics()]
    for s, t, dlq in names.subscriptions():
        detail = f"topic {t}"
        if dlq:
            detail += f"; dead letters -> {names.undeliverable_topic} after {max_delivery_attempts} attempts"
        steps.append(Step("pubsub", "subscription", names.subscription(s), detail))
    return steps


def provision_pubsub(
    names: PubSubNames,
    max_delivery_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS,
    report: Report = lambda step, state: None,
) -> None:
    """Topics and subscriptions; the audit subscriptions get a dead-letter policy (a message
    that cannot be delivered after ``max_delivery_attempts`` goes to the undeliverable topic,
    which a subscription keeps). An existing subscription without the policy is updated."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1
    from google.protobuf import field_mask_pb2

    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    plan = iter(pubsub_plan(names, max_delivery_attempts))
    try:
        for t in names.topics():
            step = next(plan)
            try:
                pub.create_topic(name=names.topic(t))
                report(step, "created")
            except AlreadyExists:
                report(step, "exists")
        for s, t, dlq in names.subscriptions():
            step = next(plan)
            policy = (
                pubsub_v1.types.DeadLetterPolicy(
                    dead_letter_topic=names.topic(names.undeliverable_topic),
                    max_delivery_attempts=max_delivery_attempts,
                )
                if dlq
                else None
            )
            request: dict[str, Any] = {
                "name": names.subscription(s),
                "topic": names.topic(t),
                "ack_deadline_seconds": 60,
            }
            if policy is not None:
                request["dead_letter_policy"] = policy
            try:
                sub.create_subscription(request=request)
                report(step, "created")
            except AlreadyExists:
                got = sub.get_subscription(subscription=names.subscription(s))
                if policy is not None and (
                    got.dead_letter_policy.dead_letter_topic != policy.dead_letter_topic
                    or got.dead_letter_policy.max_delivery_attempts != policy.max_delivery_attempts
                ):
                    got.dead_letter_policy = policy
                    sub.update_subscription(
                        subscription=got, update_mask=field_mask_pb2.FieldMask(paths=["dead_letter_policy"])
                    )
                    report(step, "updated")
                else:
                    report(step, "exists")
    finally:
        sub.close()


# -- BigQuery ------------------------------------------------------------------------------------
def bigquery_plan(project: str, dataset: str) -> list[Step]:
    steps = [Step("bigquery", "dataset", f"{project}.{dataset}")]
    for t in TABLES.values():
        steps.append(
            Step("bigquery", "table", f"{project}.{dataset}.{t.name}", f"partitioned by {t.time_column}")
        )
    steps += [Step("bigquery", "view", f"{project}.{dataset}.{v}") for v in bigquery_views(project, dataset)]
    return steps


def provision_bigquery(
    project: str,
    dataset: str,
    endpoint: str = "",
    replace_views: bool = True,
    report: Report = lambda step, state: None,
) -> None:
    client = bigquery_client(project, endpoint)
    existing = _bigquery_existing(client, project, dataset)
    create_bigquery_tables(client, project, dataset, replace_views=replace_views)
    for step in bigquery_plan(project, dataset):
        report(step, "exists" if step.name in existing else "created")


def _bigquery_existing(client: Any, project: str, dataset: str) -> set[str]:
    from google.api_core.exceptions import NotFound

    try:
        tables = {f"{project}.{dataset}.{t.table_id}" for t in client.list_tables(f"{project}.{dataset}")}
    except NotFound:
        return set()
    return tables | {f"{project}.{dataset}"}


def check_bigquery(client: Any, project: str, dataset: str, tables: Iterable[str] = TABLES) -> list[str]:
    """Problems with the BigQuery tables a pipeline writes: missing, or other columns."""
    from google.api_core.exceptions import NotFound

    problems = []
    for name in tables:
        ref = f"{project}.{dataset}.{name}"
        try:
            got = client.get_table(ref)
        except NotFound:
            problems.append(f"bigquery: {ref}: table does not exist")
            continue
        want = [(c["name"], c["type"], c["mode"]) for c in bigquery_schema(TABLES[name])]
        have = [_bq_accepted(f.name, f.field_type, f.mode or "NULLABLE", want) for f in got.schema]
        if have != want:
            problems.append(f"bigquery: {ref}: columns differ from the schema ({_diff(have, want)})")
    return problems


#: GoogleSQL names of the legacy type names tables.get reports (a table made by DDL may use either)
_BQ_TYPE_ALIASES = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}


def _bq_accepted(name: str, field_type: str, mode: str, want: list[tuple]) -> tuple[str, str, str]:
    """A table column as the schema names it when the sink writes it the same way.

    A JSON column of the schema may be STRING in a table made before the Storage Write API
    schema (BigQuery cannot change STRING to JSON in place; the sink sends JSON text to
    both), and type names may be GoogleSQL aliases.

    >>> want = [("features", "JSON", "REQUIRED"), ("n", "INTEGER", "NULLABLE")]
    >>> _bq_accepted("features", "STRING", "REQUIRED", want), _bq_accepted("n", "INT64", "NULLABLE", want)
    (('features', 'JSON', 'REQUIRED'), ('n', 'INTEGER', 'NULLABLE'))
    >>> _bq_accepted("n", "STRING", "NULLABLE", want)
    ('n', 'STRING', 'NULLABLE')
    """
    field_type = _BQ_TYPE_ALIASES.get(field_type, field_type)
    if field_type == "STRING" and (name, "JSON", mode) in want:
        return (name, "JSON", mode)
    return (name, field_type, mode)


# -- ClickHouse ----------------------------------------------------------------------------------
def clickhouse_plan(database: str) -> list[Step]:
    steps = [Step("clickhouse", "database", database)]
    steps += [Step("clickhouse", "table", f"{database}.{t}", "MergeTree") for t in TABLES]
    steps += [
        Step("clickhouse", "view", f"{database}.{v}")
        for v in ("predictions_dedup", "labels_dedup", "accuracy_full_join")
    ]
    return steps


def connect_clickhouse(dsn: str) -> Any:
    """A clickhouse-connect client, or ProvisionError with one line (bad DSN, unreachable,
    a chDB directory another process holds)."""
    from transforms.sinks.clickhouse import clickhouse_client

    if not re.match(r"^(https?://[^/\s]+|chdb://\S+)", dsn):
        raise ProvisionError(
            f"--clickhouse_dsn={redact_dsn(dsn)!r}: use http(s)://user:pw@host:port or chdb:///path"
        )
    quiet = [logging.getLogger(n) for n in ("urllib3", "clickhouse_connect")]  # the error says it once
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    native = tempfile.TemporaryFile()  # chDB prints its own errors to fd 2: keep them for the message
    try:
        with _stderr_to(native):
            client = clickhouse_client(dsn)  # https:// is TLS on every port
            client.command("SELECT 1")
    except Exception as exc:  # noqa: BLE001 -- any failure to connect is reported as one line
        native.seek(0)
        printed = native.read().decode(errors="replace")
        text = first_line(exc)
        lock = re.search(r"Cannot lock file (\S+?)\.? Another", printed + str(exc))
        if lock:
            text = (
                f"the chDB directory is in use by another process (cannot lock {lock.group(1)}); "
                "wait for that process to exit, or use a ClickHouse server (http(s):// DSN)"
            )
        raise ProvisionError(f"clickhouse: cannot connect to {redact_dsn(dsn)}: {text}") from None
    finally:
        native.close()
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return client


@contextlib.contextmanager
def _stderr_to(fh: IO[bytes]) -> Iterator[None]:
    """Redirect file descriptor 2 (native libraries print there) to ``fh`` for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(fh.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def provision_clickhouse(
    dsn: str,
    database: str,
    ttl_days: int = 0,
    replace_views: bool = True,
    report: Report = lambda step, state: None,
) -> Any:
    client = connect_clickhouse(dsn)
    existing = _clickhouse_existing(client, database)
    create_clickhouse_tables(client, database, ttl_days, replace_views=replace_views)
    for step in clickhouse_plan(database):
        report(step, "exists" if step.name in existing else "created")
    return client


def _clickhouse_existing(client: Any, database: str) -> set[str]:
    rows = client.query(
        "SELECT name FROM system.databases WHERE name = {db:String} UNION ALL "
        "SELECT concat(database, '.', name) FROM system.tables WHERE database = {db:String}",
        parameters={"db": database},
    ).result_rows
    return {r[0] for r in rows}


def check_clickhouse(client: Any, database: str, tables: Iterable[str] = TABLES) -> list[str]:
    """Problems with the ClickHouse tables a pipeline writes: missing, or other columns/types."""
    rows = client.query(
        "SELECT table, name, type FROM system.columns WHERE database = {db:String} ORDER BY table, position",
        parameters={"db": database},
    ).result_rows
    have: dict[str, list[tuple[str, str]]] = {}
    for table, name, typ in rows:
        have.setdefault(table, []).append((name, typ))
    problems = []
    for name in tables:
        want = [(c.name, clickhouse_column_type(c)) for c in TABLES[name].columns]
        if name not in have:
            problems.append(f"clickhouse: {database}.{name}: table does not exist")
        elif have[name] != want:
            problems.append(
                f"clickhouse: {database}.{name}: columns differ from the schema ({_diff(have[name], want)})"
            )
    return problems


def _diff(have: list[tuple], want: list[tuple]) -> str:
    """What differs between two column lists, briefly.

    >>> _diff([("a", "Int64"), ("c", "String")], [("a", "Int64"), ("b", "String")])
    'missing b String; unexpected c String'
    """
    missing = [" ".join(map(str, w)) for w in want if w not in have]
    extra = [" ".join(map(str, h)) for h in have if h not in want]
    parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
        [f"unexpected {', '.join(extra[:3])}"] if extra else []
    )
    return "; ".join(parts) or "column order differs"


# -- what a pipeline run needs -------------------------------------------------------------------
def provision_command(opts: Any, sinks: Iterable[str]) -> str:
    """The ``predaudit provision`` command that creates the tables a pipeline with ``opts`` writes.

    >>> class O: bq_project, bq_dataset, bq_endpoint = "p", "audit", ""
    >>> O.clickhouse_dsn, O.clickhouse_database = "chdb:///d", "audit"
    >>> provision_command(O, ["clickhouse"])
    'predaudit provision --sinks clickhouse --clickhouse_dsn chdb:///d --clickhouse_database audit --pubsub off'
    """
    sinks = list(sinks)
    parts = ["predaudit provision", "--sinks", ",".join(sinks)]
    if "bigquery" in sinks:
        parts += ["--bq_project", opts.bq_project, "--bq_dataset", opts.bq_dataset]
        if opts.bq_endpoint:
            parts += ["--bq_endpoint", opts.bq_endpoint]
    if "clickhouse" in sinks:
        parts += [
            "--clickhouse_dsn",
            redact_dsn(opts.clickhouse_dsn),
            "--clickhouse_database",
            opts.clickhouse_database,
        ]
    return " ".join([*parts, "--pubsub", "off"])


def prepare_sinks(opts: Any, sinks: Iterable[str], create: bool) -> list[str]:
    """Before a pipeline writes: connect to every sink (ProvisionError on failure), create
    missing databases/tables/views when ``create``, and return the problems left (missing
    tables, other columns), each one line; empty when every table is ready."""
    problems: list[str] = []
    for sink in sinks:
        if sink == "clickhouse":
            client = connect_clickhouse(opts.clickhouse_dsn)
            try:
                if create:
                    create_clickhouse_tables(client, opts.clickhouse_database)
                problems += check_clickhouse(client, opts.clickhouse_database)
            except Exception as exc:  # noqa: BLE001 -- denied/unavailable: one line for the user
                raise ProvisionError(f"clickhouse: {opts.clickhouse_database}: {first_line(exc)}") from None
        elif sink == "bigquery":
            try:
                client = bigquery_client(opts.bq_project, opts.bq_endpoint)
                _probe_bigquery(client, opts.bq_project, opts.bq_dataset)
                if create:
                    create_bigquery_tables(client, opts.bq_project, opts.bq_dataset)
                problems += check_bigquery(client, opts.bq_project, opts.bq_dataset)
            except Exception as exc:  # noqa: BLE001 -- unreachable/denied/no credentials: one line
                raise ProvisionError(
                    f"bigquery: {opts.bq_project}.{opts.bq_dataset}: {first_line(exc)}"
                ) from None
    return problems


def _probe_bigquery(client: Any, project: str, dataset: str, deadline_s: float = 20.0) -> None:
    """Fail within ``deadline_s`` when the BigQuery endpoint cannot be reached (the client's
    default retry would keep trying a refused connection for minutes)."""
    from google.api_core.exceptions import NotFound
    from google.cloud.bigquery import DEFAULT_RETRY

    try:
        client.get_dataset(f"{project}.{dataset}", retry=DEFAULT_RETRY.with_deadline(deadline_s), timeout=10)
    except NotFound:
        pass
