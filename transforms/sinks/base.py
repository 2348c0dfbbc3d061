"""The shared sink mechanics: batching, retries, failure classes, bisection, dead letters.

A concrete sink supplies ``client_key()``/``make_client()``, ``insert(table, rows)``
(returning the indexes of rows the service refused individually), ``classify(exc)`` (which
of the three failure classes in :mod:`transforms.sinks.errors` an exception belongs to) and
``where(table)`` (the table as the user knows it). One DoFn instance writes one table; rows
are buffered per bundle and flushed at ``max_batch_size`` and at the end of the bundle.

- transient: retried with backoff (``RetryPolicy``); when the retries run out it becomes a
  sink failure (``exhausted``: unreachable after retries).
- row refusal: the batch is bisected until the refused rows are isolated; exactly those
  become ``sink_rejected`` dead letters, every other row is written.
- sink failure: no dead letters. ``mode="replay"`` raises :class:`SinkStopped` (carrying the
  SinkFailure: the run stops non-zero with one line); ``mode="streaming"`` keeps retrying the
  same rows with capped backoff (back-pressure: Pub/Sub keeps the backlog), counting
  ``<sink>_sink_failures`` and logging at most once a minute.

A dead letter the ``dead_letters`` table refuses has nowhere further to go: it is a sink
failure too (replay stops, streaming back-pressures). Nothing is logged and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from transforms.deadletters import row_dead_letter
from transforms.metrics import counter
from transforms.sinks.errors import (
    ROW_REFUSAL,
    SINK_FAILURE,
    TRANSIENT,
    SinkFailure,
    Verdict,
    sink_stopped,
)
from transforms.sinks.retry import RetriesExhausted, RetryPolicy, call_with_retries

_log = logging.getLogger(__name__)
_clients = threading.local()

Mode = Literal["replay", "streaming"]
MODES: tuple[str, ...] = ("replay", "streaming")
LOG_EVERY_S = 60.0


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


class LogLimiter:
    """At most one log line per key and ``every_s`` seconds; counts what it held back.

    Lives in the sink's IO layer, not in transform logic: it reads a monotonic clock only to
    rate-limit operator logs while a sink is down (no event data depends on it).

    >>> now = [0.0]
    >>> lim = LogLimiter(60, clock=lambda: now[0])
    >>> lim.allow("k"), lim.allow("k")
    ((True, 0), (False, 0))
    >>> now[0] = 61.0
    >>> lim.allow("k")
    (True, 1)
    """

    def __init__(self, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, int]:
        """(may log now, how many lines were held back since the last one)."""
        with self._lock:
            now, last = self.clock(), self._last.get(key)
            if last is not None and now - last < self.every_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False, 0
            self._last[key] = now
            return True, self._held.pop(key, 0)


_limiter = LogLimiter()  # one per process: every DoFn instance of a sink/table shares the budget


class ConnectFailed(Exception):
    """Making the client failed (its ``__cause__`` says why); never a row refusal."""


class SinkFn(beam.DoFn):
    """Writes rows (or lists of rows) of one table; yields dead letters for the rows it refused."""

    name = "sink"
    # injectable for tests (a fake clock/sleep); the real ones otherwise
    sleep: Callable[[float], None] = staticmethod(time.sleep)
    limiter: LogLimiter = _limiter

    def __init__(
        self,
        policy: RetryPolicy,
        table: str = "predictions",
        max_batch_size: int = 5000,
        mode: Mode = "replay",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"sink mode must be one of {MODES}, not {mode!r}")
        self.policy, self.table, self.max_batch_size, self.mode = policy, table, max_batch_size, mode

    def for_table(self, table: str, max_batch_size: int) -> SinkFn:
        """A copy of this sink (same connection settings and mode) that writes ``table``."""
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
        """Write ``rows``; return (index, reason) for each row the service refused individually."""
        raise NotImplementedError

    def classify(self, exc: BaseException) -> Verdict:
        """Which failure class ``exc`` (raised by ``insert``) belongs to, by type and server code."""
        raise NotImplementedError

    def where(self, table: str) -> str:
        """The table as the user names it (``db.table``, ``project.dataset.table``)."""
        return table

    def exhausted(self, exc: RetriesExhausted) -> Verdict:
        """A transient error that outlasted every retry: the sink is unreachable or overloaded."""
        return Verdict(SINK_FAILURE, "unreachable", str(exc), f"check that {self.name} is reachable")

    def is_transient(self, exc: BaseException) -> bool:
        return self._classify(exc).kind == TRANSIENT

    # -- mechanics ---------------------------------------------------------------------------
    def connect_fix(self) -> str:
        """The fix when no client can be made (bad settings, a store locked by another process)."""
        return f"check the {self.name} connection settings"

    def setup(self) -> None:
        # the client is made on first write, inside the retry loop: a refused connection, bad
        # credentials or TLS at connect time are classified like any other sink error
        self.client = None

    def _connected_insert(self, table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        if self.client is None:
            try:
                self.client = cached_client((type(self).__name__, *self.client_key()), self.make_client)
            except Exception as exc:  # classified by _classify, then retried or raised
                raise ConnectFailed(exc) from exc
        return self.insert(table, rows)

    def _classify(self, exc: BaseException) -> Verdict:
        if isinstance(exc, ConnectFailed):
            inner = exc.__cause__ or exc
            verdict = self.classify(inner)
            # a typed answer (unreachable, TLS, auth, unknown database) stands; what would read
            # as a row or schema problem cannot be one before any row was sent
            if verdict.kind != ROW_REFUSAL and verdict.code not in ("missing_column", "unexpected_error"):
                return verdict
            return Verdict(
                SINK_FAILURE, "connect_failed", f"cannot connect: {verdict.reason}", self.connect_fix()
            )
        return self.classify(exc)

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
        """Write ``rows``: retry transients, bisect row refusals, stop or wait on sink failures."""
        table, pending, rounds = self.table, rows, 0
        while pending:
            batch = pending
            verdict: Verdict | None = None
            refused: list[tuple[int, str]] = []
            try:
                refused = call_with_retries(
                    lambda batch=batch: self._connected_insert(table, batch),
                    self.is_transient,
                    self.policy,
                    on_retry=lambda exc: counter(f"{self.name}_retries").inc(),
                    sleep=self.sleep,
                )
            except RetriesExhausted as exc:
                verdict = self.exhausted(exc)
            except Exception as exc:  # noqa: BLE001 -- classified: a row refusal or a sink failure, never dropped
                verdict = self._classify(exc)
                if verdict.kind == ROW_REFUSAL:
                    if len(batch) > 1:  # isolate the refused rows: the others are written
                        mid = len(batch) // 2
                        yield from self._write(batch[:mid])
                        yield from self._write(batch[mid:])
                        return
                    refused, verdict = [(0, f"{verdict.code}: {verdict.reason}")], None
            if verdict is None:
                reasons = dict(refused)  # row index -> why: one dead letter per refused row
                bad = sorted(reasons)
                counter(f"{self.name}_rows_written_{table}").inc(len(batch) - len(bad))
                if not bad:
                    return
                if table != "dead_letters":
                    counter(f"{self.name}_rejected_rows").inc(len(bad))
                    for i in bad:
                        yield from self._dead([batch[i]], "sink_rejected", reasons[i])
                    return
                # a dead letter its own table refuses has nowhere further to go: the run fails
                counter(f"{self.name}_dead_letters_refused").inc(len(bad))
                pending = [batch[i] for i in bad]
                ids = ", ".join(str(r.get("dead_letter_id")) for r in pending[:3])
                verdict = Verdict(
                    SINK_FAILURE,
                    "dead_letter_refused",
                    f"{len(bad)} dead letter(s) refused ({ids}): {reasons[bad[0]]}",
                    "check that the dead_letters table has the expected columns (`predaudit provision`)",
                )
            self._failed(verdict, pending, rounds)
            rounds += 1

    def _failed(self, verdict: Verdict, rows: list[dict[str, Any]], rounds: int) -> None:
        """A sink failure: replay raises; streaming counts, logs (rate-limited) and waits."""
        failure = SinkFailure(self.name, self.where(self.table), verdict.reason, verdict.fix, verdict.code)
        counter(f"{self.name}_sink_failures").inc()
        if self.mode == "replay":
            raise sink_stopped(failure) from failure
        delay = self.policy.failure_delay(rounds)
        ok, held = self.limiter.allow(f"{self.name}/{self.table}")
        if ok:
            _log.error(
                "%s (%d rows waiting; retrying every <= %.0f s; %d similar lines suppressed)",
                failure,
                len(rows),
                self.policy.failure_max_delay_s,
                held,
            )
        self.sleep(delay)

    def _dead(self, rows: list[dict[str, Any]], code: str, message: str) -> Iterator[dict[str, Any]]:
        for row in rows:
            yield row_dead_letter(self.table, row, stage=f"sink.{self.name}", code=code, message=message)
