"""Drains the spool to Pub/Sub in spool order; a record is committed only after Pub/Sub confirmed it.

Batching is done here, on google-cloud-pubsub's generated ``Publish`` RPC: per (kind, model)
a queue in spool order; one batch (up to 1000 messages / 1 MB, sent once full or once its
oldest record waited ``max_latency_s``) in flight per queue, so order per model holds by
construction. A failed batch stays at the head of its queue and is re-sent after a backoff,
forever: nothing is dropped, other models keep flowing, and a batch whose response was lost
may be delivered twice (the pipeline dedups by ``event_id``). With ``ordering=True`` messages
also carry ``ordering_key = model`` so an ordered subscription delivers them in that order.
This path costs a fraction of the batching client's per-message Python work (futures, locks),
which matters because the HTTP handler shares the interpreter.

The drainer thread never dies of an error: a failed pass (a disk error reading a segment, say)
is counted, logged at most once a minute and retried after a backoff, and ``alive()`` is False
while passes fail (``/readyz`` says so). Publish workers are daemon threads and ``stop`` closes
the gRPC channel, so a stop while Pub/Sub is unreachable returns within its timeout (in-flight
records stay in the spool and are published by the next start).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from sidecar.metrics import SidecarMetrics
from sidecar.spool import Record, Spool

log = logging.getLogger("predaudit.sidecar")


def backoff_s(attempt: int, base: float = 0.2, cap: float = 10.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter in [cap/2^k .. ] (attempt 0 -> up to ``base``).

    >>> backoff_s(0, rng=random.Random(1)) <= 0.2 and backoff_s(20, rng=random.Random(1)) <= 10.0
    True
    """
    r = rng or random
    return r.uniform(0.5, 1.0) * min(cap, base * (2**attempt))


def make_client(
    ordering: bool,
    max_messages: int = 1000,
    max_bytes: int = 1 << 20,
    max_latency_s: float = 0.01,
    publish_timeout_s: float = 60.0,
    on_error: Callable[[BaseException], None] | None = None,
) -> Any:
    """A batching google-cloud-pubsub PublisherClient (honours ``PUBSUB_EMULATOR_HOST``).

    Transient errors are retried inside the client for ``publish_timeout_s`` (forever with
    ordering keys: the library does that to keep order); ``on_error`` sees every failed attempt.
    """
    from google.api_core import retry as api_retry
    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1 import types

    retry = api_retry.Retry(
        initial=0.1, maximum=5.0, multiplier=2.0, timeout=publish_timeout_s, on_error=on_error
    )
    return pubsub_v1.PublisherClient(
        transport=_transport(),
        batch_settings=types.BatchSettings(
            max_bytes=max_bytes, max_latency=max_latency_s, max_messages=max_messages
        ),
        publisher_options=types.PublisherOptions(
            enable_message_ordering=ordering, retry=retry, timeout=publish_timeout_s
        ),
    )


#: gRPC's default reconnect backoff grows to 120 s, so after an outage the channel could stay
#: idle for minutes while Pub/Sub is back; cap it.
GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def _transport() -> Any:
    import grpc
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if emulator:
        return PublisherGrpcTransport(
            host=emulator, channel=grpc.insecure_channel(emulator, options=GRPC_OPTIONS)
        )

    def channel(host: str, **kw: Any) -> Any:
        kw["options"] = [*kw.get("options", []), *GRPC_OPTIONS]
        return PublisherGrpcTransport.create_channel(host, **kw)

    return PublisherGrpcTransport(channel=channel)


#: how long the drainer lets appends accumulate after a wake-up (well under the 10 ms batch latency)
COALESCE_S = 0.002


class _Queue:
    """One (kind, model) stream: records in spool order, at most one batch in flight."""

    __slots__ = ("busy", "items", "retry_at", "attempts", "topic", "ordering_key")

    def __init__(self, topic: str, ordering_key: str) -> None:
        self.items: collections.deque[tuple[int, Record]] = collections.deque()
        self.busy = 0  # records of the batch in flight (the first ``busy`` items)
        self.retry_at = 0.0
        self.attempts = 0
        self.topic, self.ordering_key = topic, ordering_key


def make_api() -> Any:
    """The generated Pub/Sub publisher client (honours ``PUBSUB_EMULATOR_HOST``)."""
    from google.pubsub_v1 import PublisherClient as GapicPublisher

    return GapicPublisher(transport=_transport())


class Drainer:
    """Background thread moving spooled records to Pub/Sub topics (one per record kind)."""

    def __init__(
        self,
        spool: Spool,
        topics: dict[str, str],
        metrics: SidecarMetrics,
        api_factory: Callable[[], Any] = make_api,
        ordering: bool = True,
        max_messages: int = 1000,
        max_bytes: int = 1 << 20,
        max_latency_s: float = 0.01,
        publish_timeout_s: float = 60.0,
        max_inflight: int = 50000,
        workers: int = 8,
        commit_interval_s: float = 0.05,
    ) -> None:
        from google.api_core import exceptions as gexc
        from google.api_core import retry as api_retry

        self.spool, self.topics, self.metrics = spool, topics, metrics
        self.ordering, self.max_messages, self.max_bytes = ordering, max_messages, max_bytes
        self.max_latency_s, self.max_inflight, self.commit_interval_s = (
            max_latency_s,
            max_inflight,
            commit_interval_s,
        )
        self.timeout_s = min(publish_timeout_s, 60.0)
        transient = api_retry.if_exception_type(
            gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError, gexc.Aborted,
            gexc.ResourceExhausted, gexc.Unknown, gexc.Cancelled,
        )  # fmt: skip
        self._retry = api_retry.Retry(
            predicate=transient, initial=0.1, maximum=2.0, multiplier=2.0, timeout=publish_timeout_s,
            on_error=lambda exc: metrics.publish_errors.labels(type(exc).__name__).inc(),
        )  # fmt: skip
        self._api_factory = api_factory
        self._api: Any = None
        self._workers = workers
        self._jobs: queue.SimpleQueue[tuple[_Queue, list[Record]] | None] = queue.SimpleQueue()
        self._failing = False
        self._last_log = -120.0
        self._done_q: queue.SimpleQueue[tuple[_Queue, int, BaseException | None, float]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._inflight: collections.OrderedDict[int, Record] = collections.OrderedDict()
        self._done: set[int] = set()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="spool-drainer", daemon=True)
        spool.on_append = self._wake.set

    def start(self) -> None:
        self._api = self._api_factory()
        for i in range(self._workers):
            # daemon threads: a publish stuck in a retry must not hold the process at exit
            threading.Thread(target=self._work, name=f"pubsub-publish-{i}", daemon=True).start()
        self._thread.start()

    def alive(self) -> bool:
        """The drainer thread runs and its last pass succeeded."""
        return self._thread.is_alive() and not self._failing

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Publish what is pending for up to ``drain_timeout_s`` in all; the rest stays in the spool."""
        deadline = time.monotonic() + drain_timeout_s
        while (
            (self.spool.depth or self._inflight) and time.monotonic() < deadline and self._thread.is_alive()
        ):
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        for _ in range(self._workers):
            self._jobs.put(None)
        close = getattr(getattr(self._api, "transport", None), "close", None)
        if close is not None:  # cancels RPCs still in flight (their records stay in the spool)
            try:
                close()
            except Exception as exc:  # noqa: BLE001 (closing at exit: nothing depends on it)
                log.debug("closing the Pub/Sub channel: %s", type(exc).__name__)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._send(*job)

    @property
    def oldest_unpublished_age_s(self) -> float:
        try:
            first = next(iter(self._inflight.values()))
        except (StopIteration, RuntimeError):
            return 0.0
        return max(0.0, time.time() - first.accepted_at)  # wall clock: accepted_at survives restarts

    # -- the loop -------------------------------------------------------------------------
    def _queue(self, rec: Record) -> _Queue:
        key = (rec.kind, rec.key if self.ordering else "")
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue(self.topics[rec.kind], key[1])
        return q

    def _send(self, q: _Queue, batch: list[Record]) -> None:
        """Worker thread: one Publish RPC for a batch; reports back to the loop."""
        from google.pubsub_v1.types import PublishRequest, PubsubMessage

        try:
            # raw protobuf messages: ~3x cheaper than proto-plus wrappers, and this holds the GIL
            raw_msg, key = PubsubMessage.pb(), q.ordering_key
            msgs = [raw_msg(data=r.data, attributes=r.attributes, ordering_key=key) for r in batch]
            request = PublishRequest.wrap(PublishRequest.pb()(topic=q.topic, messages=msgs))
            self._api.publish(request=request, retry=self._retry, timeout=self.timeout_s)
            exc = None
        except Exception as e:  # noqa: BLE001 (every failure is retried by the loop, never dropped)
            exc = e
        self._done_q.put((q, len(batch), exc, time.time()))
        self._wake.set()

    def _dispatch(self, now: float) -> float:
        """Send a batch from every idle queue that is due; returns the next linger deadline."""
        next_due = now + 0.05
        for q in self._queues.values():
            if q.busy or not q.items or q.retry_at > now:
                if q.retry_at > now and q.items:
                    next_due = min(next_due, q.retry_at)
                continue
            batch: list[Record] = []
            size = 0
            for _, rec in q.items:
                if len(batch) >= self.max_messages or (batch and size + len(rec.data) > self.max_bytes):
                    break
                batch.append(rec)
                size += len(rec.data) + 64
            full = len(batch) >= self.max_messages or len(batch) < len(q.items)
            waited = time.time() - batch[0].accepted_at
            if not full and waited < self.max_latency_s and q.attempts == 0:
                next_due = min(next_due, now + self.max_latency_s - waited)
                continue
            q.busy = len(batch)
            self._jobs.put((q, batch))
        return next_due

    def _completed(self, q: _Queue, n: int, exc: BaseException | None, at: float) -> None:
        q.busy = 0
        if exc is None:
            for _ in range(n):
                seq, rec = q.items.popleft()
                self._done.add(seq)
                self.metrics.publish_lag.observe(max(0.0, at - rec.accepted_at))
            self.metrics.published.labels(
                "prediction" if q.topic == self.topics["prediction"] else "label"
            ).inc(n)
            q.attempts = 0
            return
        self.metrics.publish_errors.labels(type(exc).__name__).inc()
        delay = backoff_s(q.attempts)
        q.attempts += 1
        q.retry_at = time.monotonic() + delay
        log.warning("publish of %d messages failed (%s); retrying in %.2fs", n, type(exc).__name__, delay)

    def _read_new(self) -> None:
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for rec in self.spool.read(min(room, 5000)):
            self._seq += 1
            self._inflight[self._seq] = rec
            self._queue(rec).items.append((self._seq, rec))

    def _commit(self) -> None:
        count, last = 0, None
        while self._inflight:
            seq, rec = next(iter(self._inflight.items()))
            if seq not in self._done:
                break
            self._inflight.popitem(last=False)
            self._done.discard(seq)
            count, last = count + 1, rec
        if last is not None:
            self.spool.commit(last.segment, last.end, count)
        elif self.spool.cursor_dirty:  # an earlier cursor write failed (full disk): again
            self.spool.persist_cursor()

    def _run(self) -> None:
        next_commit, failures = 0.0, 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                next_due, next_commit = self._pass(next_commit)
            except Exception as exc:  # noqa: BLE001 (nothing is dropped: the pass is retried)
                failures += 1
                self._failing = True
                self.metrics.drainer_errors.labels(type(exc).__name__).inc()
                if time.monotonic() - self._last_log >= 60:
                    self._last_log = time.monotonic()
                    log.error("spool drainer pass failed (%s: %s); retrying", type(exc).__name__, exc)
                self._stop.wait(backoff_s(min(failures, 6), base=0.1, cap=5.0))
                continue
            failures, self._failing = 0, False
            if self._wake.wait(max(0.0, min(next_due, next_commit) - time.monotonic())):
                # woken by an append: let a few more arrive, so the drainer takes the GIL from
                # the HTTP thread a few hundred times a second rather than once per request
                time.sleep(COALESCE_S)
        try:
            self._commit()
        except Exception as exc:  # noqa: BLE001 (the records stay in the spool for the next start)
            log.error("final spool commit failed (%s); unconfirmed records are re-sent on restart", exc)

    def _pass(self, next_commit: float) -> tuple[float, float]:
        """One round: take completions, read new records, send due batches, maybe commit."""
        while True:
            try:
                self._completed(*self._done_q.get_nowait())
            except queue.Empty:
                break
        self._read_new()
        now = time.monotonic()
        next_due = self._dispatch(now)
        if now >= next_commit:
            self._commit()
            next_commit = now + self.commit_interval_s
        return next_due, next_commit
