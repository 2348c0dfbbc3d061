"""Drains the spool to Pub/Sub in spool order; a record is committed only after its future succeeds.

Order per model: with ``ordering=True`` every message carries ``ordering_key = model`` and the
client library keeps one batch in flight per key. When a publish for a key fails (its retries
exhausted, e.g. Pub/Sub down longer than ``publish_timeout_s``) that key is *paused*: later
records of the same model queue behind it, and after a backoff the whole queue is re-published
in spool order (``resume_publish`` first). Other models keep flowing. With ``ordering=False``
a failure pauses everything (one key), so order is still kept by the drainer, but Pub/Sub does
not promise ordered delivery. Nothing is ever dropped: every failure is retried until it
succeeds; a message whose response was lost may be delivered twice (the pipeline dedups by
``event_id``).
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


class Drainer:
    """Background thread moving spooled records to Pub/Sub topics (one per record kind)."""

    def __init__(
        self,
        spool: Spool,
        topics: dict[str, str],
        metrics: SidecarMetrics,
        client_factory: Callable[[], Any],
        ordering: bool = True,
        max_inflight: int = 20000,
        commit_interval_s: float = 0.05,
    ) -> None:
        self.spool, self.topics, self.metrics = spool, topics, metrics
        self.ordering, self.max_inflight, self.commit_interval_s = ordering, max_inflight, commit_interval_s
        self._client_factory = client_factory
        self._client: Any = None
        self._done_q: queue.SimpleQueue[tuple[int, BaseException | None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: collections.OrderedDict[int, Record] = collections.OrderedDict()
        self._done: set[int] = set()
        self._paused: dict[str, list[int]] = {}
        self._retry_at: dict[str, float] = {}
        self._attempts: dict[str, int] = collections.Counter()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="spool-drainer", daemon=True)
        spool.on_append = self._wake.set

    def start(self) -> None:
        self._client = self._client_factory()
        self._thread.start()

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Publish what is pending for up to ``drain_timeout_s``; the rest stays in the spool."""
        deadline = time.monotonic() + drain_timeout_s
        while (
            (self.spool.depth or self._inflight) and time.monotonic() < deadline and self._thread.is_alive()
        ):
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        self._thread.join(5)
        if self._client is not None and not self._inflight:
            try:
                self._client.stop()
            except Exception as exc:  # noqa: BLE001 (shutting down; anything unpublished stays spooled)
                log.warning("publisher stop: %s", type(exc).__name__)

    @property
    def oldest_unpublished_age_s(self) -> float:
        try:
            first = next(iter(self._inflight.values()))
        except (StopIteration, RuntimeError):
            return 0.0
        return max(0.0, time.time() - first.accepted_at)  # wall clock: accepted_at survives restarts

    # -- the loop -------------------------------------------------------------------------
    def _key(self, rec: Record) -> str:
        return rec.key if self.ordering else ""

    def _publish(self, seq: int, rec: Record) -> None:
        try:
            fut = self._client.publish(
                self.topics[rec.kind], rec.data, ordering_key=self._key(rec), **rec.attributes
            )
        except Exception as exc:  # noqa: BLE001 (paused key, stopped client: retried like a failed future)
            self._done_q.put((seq, exc))
            self._wake.set()
            return
        fut.add_done_callback(lambda f, seq=seq: self._completed(seq, f))

    def _completed(self, seq: int, fut: Any) -> None:
        self._done_q.put((seq, fut.exception()))
        self._wake.set()

    def _on_failure(self, seq: int, exc: BaseException) -> None:
        rec = self._inflight[seq]
        key = self._key(rec)
        self.metrics.publish_errors.labels(type(exc).__name__).inc()
        pending = self._paused.setdefault(key, [])
        if not pending:
            delay = backoff_s(self._attempts[key])
            self._attempts[key] += 1
            self._retry_at[key] = time.monotonic() + delay
            log.warning("publish failed for key %r (%s); retrying in %.2fs", key, type(exc).__name__, delay)
        pending.append(seq)

    def _retry_due(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self._retry_at.items() if t <= now]:
            del self._retry_at[key]
            seqs = sorted(self._paused.pop(key))
            if self.ordering:
                for topic in set(self.topics.values()):
                    self._client.resume_publish(topic, key)
            for seq in seqs:
                self._publish(seq, self._inflight[seq])

    def _read_new(self) -> None:
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for rec in self.spool.read(min(room, 5000)):
            self._seq += 1
            self._inflight[self._seq] = rec
            key = self._key(rec)
            if key in self._paused:
                self._paused[key].append(self._seq)
            else:
                self._publish(self._seq, rec)

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

    def _run(self) -> None:
        next_commit = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            while True:
                try:
                    seq, exc = self._done_q.get_nowait()
                except queue.Empty:
                    break
                if exc is None:
                    rec = self._inflight[seq]
                    self._done.add(seq)
                    self._attempts.pop(self._key(rec), None)
                    self.metrics.published.labels(rec.kind).inc()
                    self.metrics.publish_lag.observe(max(0.0, time.time() - rec.accepted_at))
                else:
                    self._on_failure(seq, exc)
            self._retry_due()
            self._read_new()
            now = time.monotonic()
            if now >= next_commit:
                self._commit()
                next_commit = now + self.commit_interval_s
            timeout = 0.05
            if self._retry_at:
                timeout = min(timeout, max(0.0, min(self._retry_at.values()) - now))
            self._wake.wait(timeout)
        self._commit()
