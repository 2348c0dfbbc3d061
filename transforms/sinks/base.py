"""The shared sink mechanics: batching, retries, bisecting a refused batch, dead letters.

A concrete sink supplies ``client_key()``/``make_client()``, ``insert(table, rows)`` (returning the indexes of
rows the service refused individually) and ``is_transient(exc)``. One DoFn instance
writes one table; rows are buffered per bundle and flushed at ``max_batch_size`` and at
the end of the bundle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from transforms.deadletters import row_dead_letter
from transforms.metrics import counter
from transforms.sinks.retry import RetriesExhausted, RetryPolicy, call_with_retries

_log = logging.getLogger(__name__)
_clients = threading.local()


def cached_client(key: tuple, make: Callable[[], Any]) -> Any:
    """One client per thread and connection settings.

    Dataflow reuses DoFn instances, but the streaming DirectRunner calls ``setup()`` for every
    bundle: without this cache each 10-message bundle built new clients (~60 ms each).
    Per thread, because a clickhouse-connect session must not run concurrent queries.
    """
    cache = getattr(_clients, "cache", None)
    if cache is None:
        cache = _clients.cache = {}
    if key not in cache:
        cache[key] = make()
    return cache[key]


class SinkFn(beam.DoFn):
    """Writes rows (or lists of rows) of one table; yields dead letters for rows it could not write."""

    name = "sink"

    def __init__(self, policy: RetryPolicy, table: str = "predictions", max_batch_size: int = 5000) -> None:
        self.policy, self.table, self.max_batch_size = policy, table, max_batch_size

    def for_table(self, table: str, max_batch_size: int) -> SinkFn:
        """A copy of this sink (same connection settings) that writes ``table``."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.table, clone.max_batch_size = table, max_batch_size
        return clone

    # -- to implement ----------------------------------------------------------------------
    def client_key(self) -> tuple:
        """What identifies an equivalent client (connection settings)."""
        raise NotImplementedError

    def make_client(self) -> Any:
        raise NotImplementedError

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        raise NotImplementedError

    def is_transient(self, exc: BaseException) -> bool:
        raise NotImplementedError

    # -- mechanics ---------------------------------------------------------------------------
    def setup(self) -> None:
        self.client = cached_client((type(self).__name__, *self.client_key()), self.make_client)

    def start_bundle(self) -> None:
        self._buffer: list[dict[str, Any]] = []
        self._last_ts = MIN_TIMESTAMP

    def process(
        self, element: dict[str, Any] | list[dict[str, Any]], ts=beam.DoFn.TimestampParam
    ) -> Iterator[dict[str, Any]]:
        if isinstance(element, list):  # a batch of rows (replay)
            self._buffer.extend(element)
        else:
            self._buffer.append(element)
        self._last_ts = max(self._last_ts, ts)
        if len(self._buffer) >= self.max_batch_size:
            rows, self._buffer = self._buffer, []
            yield from self._write(rows)

    def finish_bundle(self) -> Iterator[Any]:
        rows, self._buffer = self._buffer, []
        for dead in self._write(rows) if rows else ():
            yield GlobalWindows.windowed_value(dead, self._last_ts)

    def _write(self, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        table, stage = self.table, f"sink.{self.name}"
        try:
            refused = call_with_retries(
                lambda: self.insert(table, rows),
                self.is_transient,
                self.policy,
                on_retry=lambda exc: counter(f"{self.name}_retries").inc(),
            )
        except RetriesExhausted as exc:
            counter(f"{self.name}_exhausted_rows").inc(len(rows))
            _log.warning("%s: %d %s rows to dead letters: %s", stage, len(rows), table, exc)
            yield from self._dead(rows, "sink_exhausted", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 -- a permanent refusal: isolate the bad rows by bisection
            if len(rows) > 1:
                mid = len(rows) // 2
                yield from self._write(rows[:mid])
                yield from self._write(rows[mid:])
                return
            counter(f"{self.name}_rejected_rows").inc()
            yield from self._dead(rows, "sink_rejected", f"{type(exc).__name__}: {exc}")
            return
        bad = {i for i, _ in refused}
        counter(f"{self.name}_rows_written_{table}").inc(len(rows) - len(bad))
        if refused:
            counter(f"{self.name}_rejected_rows").inc(len(bad))
            for i, reason in refused:
                yield from self._dead([rows[i]], "sink_rejected", reason)

    def _dead(self, rows: list[dict[str, Any]], code: str, message: str) -> Iterator[dict[str, Any]]:
        if self.table == "dead_letters":
            # nowhere further to divert: the other sinks hold the same dead letters
            counter(f"{self.name}_dead_letters_unwritten").inc(len(rows))
            for row in rows:
                _log.error(
                    "%s: dead letter %s not written: %s", self.name, row.get("dead_letter_id"), message
                )
            return
        for row in rows:
            yield row_dead_letter(self.table, row, stage=f"sink.{self.name}", code=code, message=message)
