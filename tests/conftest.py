"""Session-scoped real components: one chDB path per process, one bqemulator."""

from __future__ import annotations

import pathlib
import uuid

import pytest
from hypothesis import settings

from pipelines import localstack

# Seeded randomness only: the same examples on every run and in CI.
settings.register_profile("predaudit", derandomize=True, print_blob=True)
settings.load_profile("predaudit")

BQ_PROJECT = "predaudit-test"


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    # chDB allows ONE path per process: every test shares it and isolates by database.
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(scope="session")
def chdb_client(chdb_path: pathlib.Path):
    import clickhouse_connect

    return clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")


@pytest.fixture()
def ch_database(chdb_client) -> str:
    """A fresh ClickHouse database for one test."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    chdb_client.command(f"CREATE DATABASE `{name}`")
    return name


@pytest.fixture(scope="session")
def bq_emulator(tmp_path_factory: pytest.TempPathFactory):
    svc = localstack.start_bqemulator(BQ_PROJECT, tmp_path_factory.mktemp("bqemulator-logs"))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory):
    svc = localstack.start_pubsub_emulator(tmp_path_factory.mktemp("pubsub-logs"))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def bq_client(bq_emulator):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(
        project=BQ_PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": bq_emulator.endpoint},
    )


@pytest.fixture()
def bq_dataset(bq_client) -> str:
    return f"t_{uuid.uuid4().hex[:10]}"
