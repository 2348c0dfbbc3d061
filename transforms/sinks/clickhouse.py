"""ClickHouse sink through clickhouse-connect: ``http(s)://`` servers or embedded ``chdb:///path``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from schemas.tables import TABLES
from transforms.sinks.base import SinkFn
from transforms.sinks.retry import RetryPolicy


def dedup_token(table: str, rows: Sequence[dict[str, Any]]) -> str:
    """Deterministic ``insert_deduplication_token``: the same batch retried is written once.

    >>> dedup_token("predictions", [{"event_id": "a"}]) == dedup_token("predictions", [{"event_id": "a"}])
    True
    """
    key = TABLES[table].key
    h = hashlib.sha256(table.encode())
    for row in rows:
        h.update(b"\x00" + str(row[key]).encode())
    return h.hexdigest()


class ClickHouseSinkFn(SinkFn):
    name = "clickhouse"

    def __init__(self, dsn: str, database: str, policy: RetryPolicy | None = None) -> None:
        super().__init__(policy or RetryPolicy())
        self.dsn, self.database = dsn, database

    def client_key(self) -> tuple:
        return (self.dsn,)

    def make_client(self):
        import clickhouse_connect

        return clickhouse_connect.get_client(dsn=self.dsn)

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        cols = TABLES[table].column_names
        self.client.insert(
            f"`{self.database}`.`{table}`",
            [[row.get(c) for row in rows] for c in cols],
            column_names=cols,
            column_oriented=True,
            settings={"insert_deduplication_token": dedup_token(table, rows)},
        )
        return []

    def is_transient(self, exc: BaseException) -> bool:
        from clickhouse_connect.driver.exceptions import OperationalError

        if isinstance(exc, OperationalError | ConnectionError | TimeoutError):
            return True
        text = str(exc)
        # server-side overload / storage trouble that a later attempt can get past
        return any(
            s in text for s in ("TOO_MANY_PARTS", "Cannot lock file", "Permission denied", "No space left")
        )
