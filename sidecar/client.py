"""Client library for Python model servers: log predictions without ever blocking inference.

>>> logger = PredictionLogger("http://127.0.0.1:9", max_queue=2, start=False)
>>> logger.log({"event_id": "a"}), logger.log({"event_id": "b"}), logger.log({"event_id": "c"})
(True, True, False)
>>> s = logger.stats()
>>> s["logged"], s["dropped"], s["pending"]
(3, 1, 2)
>>> s["logged"] == s["sent"] + s["rejected"] + s["failed"] + s["dropped"] + s["pending"]
True

``log(event)`` only puts the event on a bounded queue and returns (a few microseconds); a
background thread serializes, validates, batches and sends. It never raises into the caller.
Every event logged ends in exactly one counter (``stats()``; Prometheus
``predaudit_logger_*_total`` when prometheus_client is installed)::

    logged = sent + rejected + failed + dropped + pending

* ``dropped``: not queued (the queue was full, or the logger was closed).
* ``rejected`` (by code): the event breaks the contract. Each event is checked alone with the
  contract decoder (``schemas``, the sidecar's own check) before it is sent, so a malformed
  event never takes its batch-mates down; the sidecar's per-event 400 answers are honoured the
  same way (only the listed events are rejected, the rest is resent).
* ``failed`` (by reason): valid, but not delivered: a sidecar unreachable or answering
  503/502/504/429 for longer than ``retry_for_s`` (Retry-After honoured, capped backoff), an
  event that got a 5xx ``max_attempts`` times on its own (a batch that gets a 500 is split until
  the event that causes it is isolated; the others go through), 401/403/404, or still pending at
  ``close()``. Nothing is dropped silently; warnings come at most once a minute per kind.
* ``sent``: acknowledged (HTTP 202: in the sidecar's spool; or confirmed by Pub/Sub).

``errors`` counts failed send attempts (each was retried, or its events counted ``failed``).

Two transports:

* ``PredictionLogger("http://127.0.0.1:8089")`` posts JSON arrays to the sidecar, which spools
  them durably (recommended: survives Pub/Sub outages and restarts). A batch whose answer was
  lost (connection reset after the request) is sent again: the pipeline collapses the copies.
* ``PredictionLogger(topic="projects/P/topics/predictions")`` publishes directly to Pub/Sub with
  the same attributes as the sidecar. No disk spool: events still queued when the process dies
  are lost, so prefer the sidecar where that matters.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import http.client
import logging
import queue
import random
import threading
import time
import urllib.parse
from typing import Any

import orjson

from schemas import DEFAULT_LIMITS, Decoders, EventValidationError, Limits

log = logging.getLogger("predaudit.client")
_STOP = object()
_KINDS = ("prediction", "label")
_PATHS = {"prediction": "/v1/predictions", "label": "/v1/labels"}
#: answers meaning "the sidecar cannot take anything now" (not about one event): wait and retry
_UNAVAILABLE = frozenset({0, 408, 429, 502, 503, 504})
#: stats() keys that Prometheus exports as ``predaudit_logger_<key>_total``
_COUNTERS = ("logged", "sent", "rejected", "failed", "dropped", "errors")


@dataclasses.dataclass(eq=False)
class _Item:
    kind: str
    raw: bytes = b""
    attrs: dict[str, str] | None = None  # Pub/Sub attributes (direct transport)
    attempts: int = 0  # 5xx answers to a request holding only this event
    done: bool = False


_PROM: dict[str, Any] | None = None
_PROM_LOCK = threading.Lock()


def _prometheus() -> dict[str, Any]:
    """Process-wide counters (shared by every logger in the process); {} without prometheus_client."""
    global _PROM
    with _PROM_LOCK:
        if _PROM is not None:
            return _PROM
        try:
            from prometheus_client import Counter
        except ImportError:
            _PROM = {}
            return _PROM
        p = "predaudit_logger_"
        _PROM = {
            "logged": Counter(p + "logged", "Events passed to log()/log_label()"),
            "sent": Counter(p + "sent", "Events accepted by the sidecar (202) or confirmed by Pub/Sub"),
            "rejected": Counter(p + "rejected", "Events rejected by the contract, by code", ["code"]),
            "failed": Counter(p + "failed", "Valid events given up on, by reason", ["reason"]),
            "dropped": Counter(p + "dropped", "Events not queued: queue full or logger closed"),
            "errors": Counter(p + "errors", "Send attempts that failed (retried, or counted failed)"),
        }
        return _PROM


def backoff_s(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: up to ``base * 2**attempt``, at most ``cap``.

    >>> r = random.Random(7)
    >>> 0.025 <= backoff_s(0, 0.05, 5.0, r) <= 0.05, backoff_s(30, 0.05, 5.0, r) <= 5.0
    (True, True)
    """
    return rng.uniform(0.5, 1.0) * min(cap, base * (2 ** min(attempt, 30)))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form); None if absent or not a number.

    >>> parse_retry_after("5"), parse_retry_after(None), parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
    (5.0, None, None)
    """
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _halves(part: list[_Item]) -> list[list[_Item]]:
    h = len(part) // 2
    return [part[:h], part[h:]]


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
        max_attempts: int = 5,
        retry_for_s: float = 60.0,
        max_backoff_s: float = 30.0,
        limits: Limits | None = None,
        start: bool = True,
    ) -> None:
        self.url, self.topic, self.labels_topic, self.token = url, topic, labels_topic, token
        self.batch_size, self.linger_s, self.timeout_s = batch_size, linger_s, timeout_s
        self.max_attempts, self.retry_for_s, self.max_backoff_s = max_attempts, retry_for_s, max_backoff_s
        self._decoders = Decoders(limits or DEFAULT_LIMITS)
        self._q: queue.Queue = queue.Queue(max_queue)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._by_code: dict[str, collections.Counter] = {
            "rejected": collections.Counter(),
            "failed": collections.Counter(),
        }
        self._busy = 0  # queued or being sent: the ``pending`` of stats()
        self._prom = _prometheus()
        self._last_warning: dict[str, float] = {}
        self._rng = random.Random()
        self._conn: http.client.HTTPConnection | None = None
        self._publisher: Any = None
        self._unavailable_since: float | None = None  # monotonic time of the first failure in a row
        self._closed = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="predaudit-logger", daemon=True)
        if start:
            self._thread.start()

    # -- the inference path ------------------------------------------------------------------
    def log(self, event: dict | bytes) -> bool:
        """Queue a PredictionEvent (dict, or its JSON bytes); False if it had to be dropped."""
        return self._put("prediction", event)

    def log_label(self, event: dict | bytes) -> bool:
        """Queue a LabelEvent (dict, or its JSON bytes); False if it had to be dropped."""
        return self._put("label", event)

    def _put(self, kind: str, event: Any) -> bool:
        with self._lock:
            self._counts["logged"] += 1
            try:
                if self._closed:
                    raise queue.Full
                self._q.put_nowait((kind, event))
                self._busy += 1
                queued = True
            except queue.Full:
                self._counts["dropped"] += 1
                queued = False
        if self._prom:
            self._prom["logged"].inc()
            if not queued:
                self._prom["dropped"].inc()
        if not queued:
            self._warn(
                "dropped", "queue full or logger closed: %d events dropped so far", self._counts["dropped"]
            )
        return queued

    # -- counters ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """A consistent snapshot of every counter (``pending`` = queued or being sent).

        ``rejected_by_code`` and ``failed_by_reason`` break the two totals down.
        """
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["pending"] = self._busy
            out["rejected_by_code"] = dict(self._by_code["rejected"])
            out["failed_by_reason"] = dict(self._by_code["failed"])
        return out

    def _resolve(self, items: list[_Item], outcome: str, code: str | None = None, path: str = "") -> None:
        """Give events their one final outcome: ``sent``, ``rejected`` (code) or ``failed`` (reason)."""
        items = [it for it in items if not it.done]
        if not items:
            return
        n = len(items)
        with self._lock:
            for it in items:
                it.done = True
            self._counts[outcome] += n
            if code is not None:
                self._by_code[outcome][code] += n
            self._busy -= n
            total = self._counts[outcome]
            if self._busy == 0:
                self._idle.notify_all()
        if self._prom:
            c = self._prom[outcome]
            (c.labels(code or "unknown") if outcome in self._by_code else c).inc(n)
        if outcome == "rejected":
            self._warn("rejected", "%d events rejected so far; latest: %s at %s", total, code, path or "$")
        elif outcome == "failed":
            self._warn("failed", "%d valid events not delivered so far; latest reason: %s", total, code)

    def _error(self) -> None:
        with self._lock:
            self._counts["errors"] += 1
        if self._prom:
            self._prom["errors"].inc()

    def _warn(self, key: str, message: str, *args: Any) -> None:
        """Log at most once a minute per kind of problem (never a payload: they may hold PII)."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -60.0) >= 60.0:
            self._last_warning[key] = now
            log.warning("predaudit logger: " + message, *args)

    # -- control -----------------------------------------------------------------------------
    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every event queued so far has its outcome; True if that happened in time."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Flush for up to ``timeout_s``, then stop: what is still pending is counted ``failed``
        (reason ``closed``); later log() calls count as dropped. True if nothing was left."""
        ok = self.flush(timeout_s)
        with self._lock:
            self._closed = True
        self._stopping.set()
        if self._thread.is_alive():
            try:
                self._q.put(_STOP, timeout=max(1.0, timeout_s))
            except queue.Full:  # the sender is stuck in a request: it stops after that one
                pass
            self._thread.join(max(1.0, timeout_s))
        else:
            self._abandon_queue()
        if self._publisher is not None:
            self._publisher, publisher = None, self._publisher
            publisher.stop()
        return ok

    def _abandon_queue(self) -> None:
        left = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                left.append(_Item(item[0]))
        self._resolve(left, "failed", "closed")

    # -- the sender thread -------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            item = self._q.get()
            if item is _STOP:
                break
            batch, stop = [item], False
            deadline = time.monotonic() + self.linger_s
            while len(batch) < self.batch_size:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._process(batch)
            if stop:
                break
        self._abandon_queue()

    def _process(self, batch: list[tuple[str, Any]]) -> None:
        """Validate each event alone, then deliver the valid ones per kind; never raises."""
        items: list[_Item] = []
        try:
            now = _dt.datetime.now(_dt.timezone.utc)
            for kind, event in batch:
                items.append(self._prepare(kind, event, now))
            for kind in _KINDS:
                part = [it for it in items if it.kind == kind and not it.done]
                if part:
                    self._deliver(kind, part)
        except Exception as exc:  # a bug here must not kill the sender: its events are counted failed
            log.exception("predaudit logger: unexpected %s while sending", type(exc).__name__)
            items += [_Item(kind) for kind, _ in batch[len(items) :]]
            self._resolve(items, "failed", "internal_error")

    def _prepare(self, kind: str, event: Any, now: _dt.datetime) -> _Item:
        it = _Item(kind)
        try:
            it.raw = event if isinstance(event, bytes) else orjson.dumps(event)
        except TypeError:  # orjson.JSONEncodeError: not JSON-serializable, the caller's bug
            self._resolve([it], "rejected", "not_json_serializable")
            return it
        decode = self._decoders.prediction if kind == "prediction" else self._decoders.label
        try:
            ev, ts = decode(it.raw, now)
        except EventValidationError as exc:
            self._resolve([it], "rejected", exc.code, exc.path)
            return it
        if self.topic:
            from sidecar.attributes import attributes_of

            it.attrs = attributes_of(ev, ts)
        return it

    def _deliver(self, kind: str, items: list[_Item]) -> None:
        if self._stopping.is_set():
            self._resolve(items, "failed", "closed")
        elif self.topic:
            self._publish(kind, items)
        else:
            self._post_all(kind, items)

    def _wait(self, seconds: float) -> bool:
        """Sleep unless closing; True if the logger is closing (then give up what is left)."""
        return self._stopping.wait(seconds)

    def _post_all(self, kind: str, items: list[_Item]) -> None:
        """Send ``items`` to the sidecar until each has its outcome (bounded, see the module doc)."""
        work: collections.deque[list[_Item]] = collections.deque([items])
        later: list[list[_Item]] = []  # lone events that got a 5xx: retried after a backoff
        rounds = unavailable = 0
        while work or later:
            if not work:
                if self._wait(backoff_s(rounds, 0.05, self.max_backoff_s, self._rng)):
                    break
                work.extend(later)
                later, rounds = [], rounds + 1
                continue
            part = work.popleft()
            status, doc, retry_after = self._request(_PATHS[kind], part)
            if status in _UNAVAILABLE:
                self._error()
                mono = time.monotonic()
                self._unavailable_since = self._unavailable_since or mono
                if mono - self._unavailable_since >= self.retry_for_s:
                    reason = "unreachable" if status == 0 else f"http_{status}"
                    for p in [part, *work, *later]:
                        self._resolve(p, "failed", reason)
                    return
                delay = backoff_s(unavailable, 0.05, self.max_backoff_s, self._rng)
                if retry_after is not None:
                    delay = min(retry_after, self.max_backoff_s)
                unavailable += 1
                work.appendleft(part)
                if self._wait(delay):
                    break
                continue
            self._unavailable_since, unavailable = None, 0  # the sidecar answers
            if 200 <= status < 300:
                self._resolve(part, "sent")
            elif status == 400:
                work.extendleft(reversed(self._on_400(part, doc)))
            elif status == 413 and len(part) > 1:
                work.extendleft(reversed(_halves(part)))
            elif status == 413:
                self._resolve(part, "rejected", "request_too_large")
            elif status >= 500:  # maybe caused by one event: isolate it, the others go through
                self._error()
                if len(part) > 1:
                    work.extendleft(reversed(_halves(part)))
                    continue
                part[0].attempts += 1
                if part[0].attempts >= self.max_attempts:
                    self._resolve(part, "failed", f"http_{status}")
                else:
                    later.append(part)
            else:  # 401/403/404/...: configuration, not the events; retrying cannot help
                self._resolve(part, "failed", f"http_{status}")
                code = (doc.get("error") or {}).get("code") if isinstance(doc.get("error"), dict) else None
                self._warn(f"http_{status}", "the sidecar answers HTTP %d (%s) at %s", status, code, self.url)
        for p in [*work, *later]:  # closing
            self._resolve(p, "failed", "closed")

    def _on_400(self, part: list[_Item], doc: dict) -> list[list[_Item]]:
        """Resolve what a 400 names; return the sub-batches to send again.

        The sidecar accepts all or nothing per request and lists the rejected events by index:
        those are rejected, the rest is resent. An older sidecar accepted the others (its body
        says ``accepted`` > 0): they are sent. A 400 naming no event (the request as a whole)
        is bisected until the event it is about stands alone.
        """
        listed: dict[int, tuple[str, str]] = {}
        rejected = doc.get("rejected")
        for r in rejected if isinstance(rejected, list) else []:
            idx = r.get("index") if isinstance(r, dict) else None
            if isinstance(idx, int) and 0 <= idx < len(part):
                listed[idx] = (str(r.get("code") or "rejected"), str(r.get("path") or "$"))
            elif isinstance(r, dict) and len(part) == 1:
                listed[0] = (str(r.get("code") or "rejected"), str(r.get("path") or "$"))
        for idx, (code, path) in listed.items():
            self._resolve([part[idx]], "rejected", code, path)
        rest = [it for i, it in enumerate(part) if i not in listed]
        accepted = doc.get("accepted")
        if isinstance(accepted, int) and accepted > 0:  # partial-accept sidecar: the rest is in
            self._resolve(rest, "sent")
            return []
        if listed:
            return [rest] if rest else []
        if len(part) > 1:
            return _halves(part)
        err = doc.get("error")
        self._resolve(part, "rejected", str(err.get("code")) if isinstance(err, dict) else "bad_request")
        return []

    def _request(self, path: str, part: list[_Item]) -> tuple[int, dict, float | None]:
        """POST one JSON array; (status, JSON body, Retry-After); status 0 = no answer."""
        body = b"[" + b",".join(it.raw for it in part) + b"]"
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for fresh in (self._conn is None, True):
            if self._conn is None:
                u = urllib.parse.urlsplit(self.url)
                self._conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=self.timeout_s)
            try:
                self._conn.request("POST", path, body, headers)
                resp = self._conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if fresh:  # a new connection failed: the sidecar is not there
                    return 0, {}, None
                continue  # a kept-alive connection the server had closed: try once on a new one
            try:
                doc = orjson.loads(data) if data else {}
            except orjson.JSONDecodeError:
                doc = {}
            return (
                resp.status,
                doc if isinstance(doc, dict) else {},
                parse_retry_after(resp.getheader("Retry-After")),
            )
        return 0, {}, None

    def _publish(self, kind: str, items: list[_Item]) -> None:
        from sidecar.publisher import make_client

        if self._publisher is None:
            self._publisher = make_client(ordering=False)
        topic = self.topic if kind == "prediction" else (self.labels_topic or self.topic)
        futures = [(it, self._publisher.publish(topic, it.raw, **(it.attrs or {}))) for it in items]
        for it, fut in futures:
            try:
                fut.result(timeout=self.timeout_s * 12)
            except Exception as exc:  # noqa: BLE001 (counted failed; never raised into inference)
                self._error()
                self._resolve([it], "failed", f"publish_{type(exc).__name__}")
            else:
                self._resolve([it], "sent")
