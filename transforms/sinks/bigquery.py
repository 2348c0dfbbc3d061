"""BigQuery sink: ``insert_rows_json`` in batches (<= 500 rows, < 9 MB) with insertId = row key."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from schemas.tables import TABLES
from transforms.rows import from_micros
from transforms.sinks.base import SinkFn
from transforms.sinks.retry import RetryPolicy

MAX_ROWS = 500
MAX_BYTES = 9_000_000


_TS_COLUMNS = {
    name: frozenset(c.name for c in t.columns if c.kind == "timestamp") for name, t in TABLES.items()
}


def to_json_row(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """Epoch-microsecond timestamps as RFC 3339 strings; nulls left out; the rest is JSON-ready.

    >>> to_json_row("labels", {"label_time": 1767225600000001, "label": "x", "model_name": None})
    {'label_time': '2026-01-01T00:00:00.000001+00:00', 'label': 'x'}
    """
    ts = _TS_COLUMNS[table]
    return {k: (from_micros(v).isoformat() if k in ts else v) for k, v in row.items() if v is not None}


def chunks(rows: Sequence[dict[str, Any]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Split into request-sized chunks; yields (offset, chunk)."""
    start, size, cur = 0, 0, []
    for i, row in enumerate(rows):
        n = len(orjson.dumps(row)) + 64
        if cur and (len(cur) >= MAX_ROWS or size + n > MAX_BYTES):
            yield start, cur
            start, size, cur = i, 0, []
        cur.append(row)
        size += n
    if cur:
        yield start, cur


def bigquery_client(project: str, endpoint: str = ""):
    """A BigQuery client; with ``endpoint`` (the emulator) anonymous credentials are used."""
    from google.cloud import bigquery

    if not endpoint:
        return bigquery.Client(project=project)
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(
        project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )


class BigQuerySinkFn(SinkFn):
    name = "bigquery"

    def __init__(
        self, project: str, dataset: str, endpoint: str = "", policy: RetryPolicy | None = None
    ) -> None:
        super().__init__(policy or RetryPolicy())
        self.project, self.dataset, self.endpoint = project, dataset, endpoint

    def client_key(self) -> tuple:
        return (self.project, self.endpoint)

    def make_client(self):
        return bigquery_client(self.project, self.endpoint)

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        key = TABLES[table].key
        ref = f"{self.project}.{self.dataset}.{table}"
        refused: list[tuple[int, str]] = []
        json_rows = [to_json_row(table, r) for r in rows]
        for offset, chunk in chunks(json_rows):
            errors = self.client.insert_rows_json(ref, chunk, row_ids=[r[key] for r in chunk], retry=None)
            for err in errors:
                refused.append((offset + err["index"], orjson.dumps(err.get("errors")).decode()))
        return refused

    def is_transient(self, exc: BaseException) -> bool:
        import requests
        from google.api_core import exceptions as gexc

        if isinstance(exc, gexc.GoogleAPICallError):
            return isinstance(exc, gexc.ServerError) or exc.code in (408, 429)
        return isinstance(exc, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError)
