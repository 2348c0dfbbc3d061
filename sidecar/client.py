"""Client library for Python model servers: log predictions without ever blocking inference.

>>> logger = PredictionLogger("http://127.0.0.1:9", max_queue=2, start=False)
>>> logger.log({"event_id": "a"}), logger.log({"event_id": "b"}), logger.log({"event_id": "c"})
(True, True, False)
>>> logger.stats["dropped"]
1

``log(event)`` only puts the event on a bounded queue and returns (a few hundred nanoseconds);
a background thread serializes, batches and sends. It never raises into the caller: a full
queue drops the event, counts it (``stats["dropped"]``, Prometheus
``predaudit_logger_dropped_total`` when prometheus_client is installed) and warns at most once
a minute. Two transports:

* ``PredictionLogger("http://127.0.0.1:8089")`` posts JSON arrays to the sidecar, which spools
  them durably (recommended: survives Pub/Sub outages and restarts). 503/connection errors are
  retried with backoff, 413 splits the batch, 400 counts the rejected events (codes logged,
  payloads never).
* ``PredictionLogger(topic="projects/P/topics/predictions")`` validates and publishes directly
  to Pub/Sub with the same attributes as the sidecar. No disk spool: events still queued when
  the process dies are lost, so prefer the sidecar where that matters.
"""

from __future__ import annotations

import http.client
import logging
import queue
import threading
import time
import urllib.parse
from typing import Any

import orjson

from sidecar.publisher import backoff_s

log = logging.getLogger("predaudit.client")
_STOP = object()


def _prometheus_counters() -> dict[str, Any]:
    try:
        from prometheus_client import Counter
    except ImportError:
        return {}
    names = {
        "dropped": "Events dropped because the logger queue was full",
        "sent": "Events accepted by the sidecar or Pub/Sub",
        "rejected": "Events rejected by the contract",
        "errors": "Send attempts that failed and were retried",
    }
    out = {}
    for key, doc in names.items():
        try:
            out[key] = Counter(f"predaudit_logger_{key}", doc)
        except ValueError:  # already registered by another logger in this process
            from prometheus_client import REGISTRY

            out[key] = REGISTRY._names_to_collectors.get(f"predaudit_logger_{key}")
    return out


class PredictionLogger:
    """Non-blocking prediction/label logger with a bounded queue and a background sender."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8089",
        *,
        topic: str | None = None,
        labels_topic: str | None = None,
        token: str | None = None,
        max_queue: int = 10000,
        batch_size: int = 500,
        linger_s: float = 0.02,
        timeout_s: float = 5.0,
        start: bool = True,
    ) -> None:
        self.url, self.topic, self.labels_topic, self.token = url, topic, labels_topic, token
        self.batch_size, self.linger_s, self.timeout_s = batch_size, linger_s, timeout_s
        self._q: queue.Queue = queue.Queue(max_queue)
        self.stats = {"dropped": 0, "sent": 0, "rejected": 0, "errors": 0}
        self._prom = _prometheus_counters()
        self._last_warning = 0.0
        self._idle = threading.Condition()
        self._busy = 0
        self._conn: http.client.HTTPConnection | None = None
        self._publisher: Any = None
        self._decoders: Any = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="predaudit-logger", daemon=True)
        if start:
            self._thread.start()

    # -- the inference path ------------------------------------------------------------------
    def log(self, event: dict | bytes) -> bool:
        """Queue a PredictionEvent (dict or JSON bytes); False if it had to be dropped."""
        return self._put("prediction", event)

    def log_label(self, event: dict | bytes) -> bool:
        """Queue a LabelEvent; False if it had to be dropped."""
        return self._put("label", event)

    def _put(self, kind: str, event: Any) -> bool:
        try:
            if self._closed:
                raise queue.Full
            self._q.put_nowait((kind, event))
            with self._idle:
                self._busy += 1
            return True
        except queue.Full:
            self._count("dropped")
            now = time.monotonic()
            if now - self._last_warning > 60:
                self._last_warning = now
                log.warning("predaudit logger queue full: dropped %d events so far", self.stats["dropped"])
            return False
        except Exception:  # noqa: BLE001 (never raise into inference)
            self._count("dropped")
            return False

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] += n
        c = self._prom.get(key)
        if c is not None:
            c.inc(n)

    # -- control -----------------------------------------------------------------------------
    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far was sent (or given up on); True if it was."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Flush, stop the sender thread; later log() calls count as dropped."""
        ok = self.flush(timeout_s)
        self._closed = True
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join(timeout_s)
        if self._publisher is not None:
            self._publisher.stop()
        return ok

    # -- the sender thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            batch = [item]
            deadline = time.monotonic() + self.linger_s
            stop = False
            while len(batch) < self.batch_size:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            for kind in ("prediction", "label"):
                part = []
                for k, e in batch:
                    if k != kind:
                        continue
                    try:
                        part.append(e if isinstance(e, bytes) else orjson.dumps(e))
                    except TypeError as exc:  # not JSON-serializable: the caller's bug, counted
                        self._count("rejected")
                        log.warning("event is not JSON-serializable: %s", type(exc).__name__)
                if part:
                    self._send(kind, part)
            with self._idle:
                self._busy -= len(batch)
                self._idle.notify_all()
            if stop:
                return

    def _send(self, kind: str, events: list[bytes]) -> None:
        if self.topic:
            self._publish(kind, events)
            return
        path = "/v1/predictions" if kind == "prediction" else "/v1/labels"
        attempt = 0
        while True:
            try:
                status, body, retry_after = self._post(path, b"[" + b",".join(events) + b"]")
            except (OSError, http.client.HTTPException) as exc:
                status, body, retry_after = 0, {"error": str(exc)}, None
                self._conn = None
            if status == 202:
                self._count("sent", len(events))
                return
            if status == 400:
                rejected = body.get("rejected", [])
                self._count("sent", body.get("accepted", 0))
                self._count("rejected", len(rejected))
                codes = sorted({r.get("code", "?") for r in rejected})
                log.warning("sidecar rejected %d events: %s", len(rejected), ", ".join(codes))
                return
            if status == 413 and len(events) > 1:
                half = len(events) // 2
                self._send(kind, events[:half])
                self._send(kind, events[half:])
                return
            if status in (401, 413):
                self._count("dropped", len(events))
                log.error("sidecar refused a batch with HTTP %d; %d events dropped", status, len(events))
                return
            self._count("errors")
            if self._closed and attempt >= 3:  # closing: give up after a few tries, counted
                self._count("dropped", len(events))
                return
            time.sleep(retry_after if retry_after else backoff_s(attempt, base=0.05, cap=5.0))
            attempt += 1

    def _post(self, path: str, body: bytes) -> tuple[int, dict, float | None]:
        if self._conn is None:
            u = urllib.parse.urlsplit(self.url)
            self._conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=self.timeout_s)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._conn.request("POST", path, body, headers)
        resp = self._conn.getresponse()
        data = resp.read()
        retry_after = resp.getheader("Retry-After")
        try:
            doc = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError:
            doc = {}
        return resp.status, doc, float(retry_after) if retry_after else None

    def _publish(self, kind: str, events: list[bytes]) -> None:
        from schemas import Decoders, EventValidationError
        from sidecar.attributes import attributes_of
        from sidecar.publisher import make_client

        if self._publisher is None:
            self._publisher, self._decoders = make_client(ordering=False), Decoders()
        decode = self._decoders.prediction if kind == "prediction" else self._decoders.label
        topic = self.topic if kind == "prediction" else (self.labels_topic or self.topic)
        futures = []
        for raw in events:
            try:
                ev, ts = decode(raw)
            except EventValidationError as exc:
                self._count("rejected")
                log.warning("event rejected by the contract: %s at %s", exc.code, exc.path)
                continue
            futures.append(self._publisher.publish(topic, raw, **attributes_of(ev, ts)))
        for fut in futures:
            try:
                fut.result(timeout=self.timeout_s * 12)
                self._count("sent")
            except Exception:  # noqa: BLE001 (counted; never raised into inference)
                self._count("dropped")
                self._count("errors")
