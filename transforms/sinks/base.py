"""The shared sink mechanics: batching, retries, bisecting a refused batch, dead letters.

A concrete sink supplies ``connect()``, ``insert(table, rows)`` (returning the indexes of
rows the service refused individually) and ``is_transient(exc)``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam

from transforms.deadletters import row_dead_letter
from transforms.metrics import counter
from transforms.sinks.retry import RetriesExhausted, RetryPolicy, call_with_retries

_log = logging.getLogger(__name__)


class SinkFn(beam.DoFn):
    """Writes batches of ``(table, row)``; yields dead letters for rows it could not write."""

    name = "sink"

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    # -- to implement ----------------------------------------------------------------------
    def connect(self) -> None:
        raise NotImplementedError

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        raise NotImplementedError

    def is_transient(self, exc: BaseException) -> bool:
        raise NotImplementedError

    # -- mechanics ---------------------------------------------------------------------------
    def setup(self) -> None:
        self.connect()

    def process(self, batch: Sequence[tuple[str, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for table, row in batch:
            by_table[table].append(row)
        for table, rows in by_table.items():
            yield from self._write(table, rows)

    def _write(self, table: str, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        stage = f"sink.{self.name}"
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
            yield from self._dead(table, rows, "sink_exhausted", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 -- a permanent refusal: isolate the bad rows by bisection
            if len(rows) > 1:
                mid = len(rows) // 2
                yield from self._write(table, rows[:mid])
                yield from self._write(table, rows[mid:])
                return
            counter(f"{self.name}_rejected_rows").inc()
            yield from self._dead(table, rows, "sink_rejected", f"{type(exc).__name__}: {exc}")
            return
        bad = {i for i, _ in refused}
        counter(f"{self.name}_rows_written_{table}").inc(len(rows) - len(bad))
        if refused:
            counter(f"{self.name}_rejected_rows").inc(len(bad))
            for i, reason in refused:
                yield from self._dead(table, [rows[i]], "sink_rejected", reason)

    def _dead(
        self, table: str, rows: list[dict[str, Any]], code: str, message: str
    ) -> Iterator[dict[str, Any]]:
        if table == "dead_letters":
            # nowhere further to divert: the other sinks hold the same dead letters
            counter(f"{self.name}_dead_letters_unwritten").inc(len(rows))
            for row in rows:
                _log.error(
                    "%s: dead letter %s not written: %s", self.name, row.get("dead_letter_id"), message
                )
            return
        for row in rows:
            yield row_dead_letter(table, row, stage=f"sink.{self.name}", code=code, message=message)


class WriteToSink(beam.PTransform):
    """``(table, row)`` -> batched writes; the output PCollection holds the sink's dead letters."""

    def __init__(self, fn: SinkFn, max_batch_size: int = 5000) -> None:
        super().__init__()
        self.fn, self.max_batch_size = fn, max_batch_size

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.max_batch_size)
            | "Write" >> beam.ParDo(self.fn)
        )
