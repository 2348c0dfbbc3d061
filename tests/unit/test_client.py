"""The client library never blocks or raises into inference, and every event ends in a counter.

The sidecar here is a real aiohttp server on loopback that answers as the sidecar does (all or
nothing per request, per-event errors by index) or misbehaves on purpose (500 for one event,
503 with Retry-After, 401).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from schemas import Decoders, EventValidationError
from sidecar.client import PredictionLogger
from tests.helpers import event

Answer = tuple[int, dict, dict[str, str]]


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def valid(i: int, prefix: str = "ev") -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return event(event_id=f"{prefix}-{i:05d}-{uuid.uuid4().hex[:6]}", event_time=now)


def all_or_nothing(events: list[bytes]) -> Answer:
    """The sidecar's semantics: any invalid event -> 400 listing each by index, nothing accepted."""
    dec, now, rejected = Decoders(), dt.datetime.now(dt.timezone.utc), []
    for i, raw in enumerate(events):
        try:
            dec.prediction(raw, now)
        except EventValidationError as exc:
            rejected.append({"index": i, **exc.to_dict()})
    if rejected:
        return 400, {"accepted": 0, "rejected": rejected}, {}
    return 202, {"accepted": len(events)}, {}


class FakeSidecar:
    """A loopback aiohttp server; ``answer(events)`` decides each response. Records everything."""

    def __init__(self, answer: Callable[[list[bytes]], Answer] = all_or_nothing) -> None:
        self.answer = answer
        self.requests: list[tuple[float, list[str]]] = []  # (monotonic time, event ids)
        self.accepted: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        app = web.Application()
        app.router.add_post("/v1/predictions", self._handle)
        app.router.add_post("/v1/labels", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            events = [orjson.dumps(e) for e in orjson.loads(body)]
        except orjson.JSONDecodeError:  # as the sidecar: an array that does not parse is refused whole
            self.requests.append((time.monotonic(), []))
            return web.json_response({"error": {"code": "invalid_json"}}, status=400)
        ids = [orjson.loads(e).get("event_id", "?") for e in events]
        self.requests.append((time.monotonic(), ids))
        status, doc, headers = self.answer(events)
        if status == 202:
            self.accepted += ids
        return web.json_response(doc, status=status, headers=headers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture()
def fake() -> Iterator[Callable[..., FakeSidecar]]:
    servers: list[FakeSidecar] = []

    def start(answer: Callable[[list[bytes]], Answer] = all_or_nothing) -> FakeSidecar:
        servers.append(FakeSidecar(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def ids_of(events: list[dict]) -> list[str]:
    return [e["event_id"] for e in events]


def assert_adds_up(s: dict[str, Any]) -> None:
    assert s["logged"] == s["sent"] + s["rejected"] + s["failed"] + s["dropped"] + s["pending"], s
    assert sum(s["rejected_by_code"].values()) == s["rejected"], s
    assert sum(s["failed_by_reason"].values()) == s["failed"], s


# -- the inference path ----------------------------------------------------------------------
def test_log_returns_at_once_and_counts_drops_when_the_sidecar_is_down() -> None:
    logger = PredictionLogger(f"http://127.0.0.1:{dead_port()}", max_queue=100, batch_size=10)
    t0 = time.perf_counter()
    results = [logger.log(valid(i)) for i in range(1000)]
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"1000 log() calls took {elapsed:.3f}s"
    assert results.count(False) >= 800  # the bounded queue overflowed: dropped, counted, no exception
    assert logger.stats()["dropped"] == results.count(False)
    assert logger.close(timeout_s=0.5) is False  # still retrying: what is left is counted failed
    s = logger.stats()
    assert s["pending"] == 0 and s["failed"] == 1000 - results.count(False)
    assert set(s["failed_by_reason"]) <= {"closed", "unreachable"}
    assert logger.log(valid(1001)) is False
    assert_adds_up(logger.stats())


def test_unserializable_events_are_counted_not_raised() -> None:
    logger = PredictionLogger(f"http://127.0.0.1:{dead_port()}", start=False)
    assert logger.log({"event_id": "x", "features": {"f": object()}}) is True
    logger._thread.start()
    assert logger.flush(5)
    assert logger.stats()["rejected_by_code"] == {"not_json_serializable": 1}
    logger.close(1)


# -- item 1: one malformed event does not take its batch-mates down --------------------------
def test_one_malformed_event_does_not_take_its_batch_mates_down(fake) -> None:
    sidecar = fake()
    logger = PredictionLogger(sidecar.url, linger_s=0.2)
    good = [valid(i) for i in range(3)]
    wrong_type = valid(9)
    wrong_type["latency_ms"] = "slow"
    for item in [good[0], b"{not json", good[1], wrong_type, good[2], {"f": object()}]:
        assert logger.log(item)
    assert logger.close(10)
    assert sorted(sidecar.accepted) == sorted(ids_of(good))
    assert [len(ids) for _, ids in sidecar.requests] == [3]  # the bad ones never left the process
    s = logger.stats()
    assert (s["sent"], s["rejected"], s["failed"], s["pending"]) == (3, 3, 0, 0)
    assert s["rejected_by_code"] == {"invalid_json": 1, "wrong_type": 1, "not_json_serializable": 1}
    assert_adds_up(s)


@pytest.mark.parametrize("semantics", ["all_or_nothing", "first_listed_only", "partial_accept"])
def test_a_sidecar_400_rejects_only_the_listed_events_and_the_rest_arrives_once(fake, semantics) -> None:
    """Events valid here but refused by the sidecar (e.g. stricter limits there)."""

    def answer(events: list[bytes]) -> Answer:
        refused = [
            {"index": i, "code": "string_too_long", "path": "$.features.merchant_category"}
            for i, raw in enumerate(events)
            if orjson.loads(raw)["event_id"].startswith("refused")
        ]
        if not refused:
            return 202, {"accepted": len(events)}, {}
        if semantics == "partial_accept":  # an older sidecar kept the valid ones
            sidecar.accepted += [
                orjson.loads(e)["event_id"]
                for i, e in enumerate(events)
                if i not in {r["index"] for r in refused}
            ]
            return 400, {"accepted": len(events) - len(refused), "rejected": refused}, {}
        if semantics == "first_listed_only":  # a bounded 400 body lists only some rejections
            return 400, {"accepted": 0, "rejected": refused[:1], "rejected_count": len(refused)}, {}
        return 400, {"accepted": 0, "rejected": refused}, {}

    sidecar = fake(answer)
    logger = PredictionLogger(sidecar.url, linger_s=0.2)
    events = [valid(i, "refused" if i in (3, 7) else "ok") for i in range(10)]
    for e in events:
        logger.log(e)
    assert logger.close(10)
    wanted = [e["event_id"] for e in events if e["event_id"].startswith("ok")]
    assert sorted(sidecar.accepted) == sorted(wanted)  # each exactly once: no loss, no duplicate
    assert (
        len(sidecar.requests) == {"all_or_nothing": 2, "first_listed_only": 3, "partial_accept": 1}[semantics]
    )
    s = logger.stats()
    assert (s["sent"], s["rejected"], s["rejected_by_code"]) == (8, 2, {"string_too_long": 2})
    assert_adds_up(s)


def test_a_400_about_the_whole_request_is_bisected_to_the_event_it_is_about(fake) -> None:
    def answer(events: list[bytes]) -> Answer:  # names no index, like a body-level refusal
        if any(orjson.loads(e)["event_id"].startswith("odd") for e in events):
            return 400, {"error": {"code": "invalid_value", "message": "refused"}}, {}
        return 202, {"accepted": len(events)}, {}

    sidecar = fake(answer)
    logger = PredictionLogger(sidecar.url, linger_s=0.2)
    events = [valid(i, "odd" if i == 5 else "ok") for i in range(8)]
    for e in events:
        logger.log(e)
    assert logger.close(10)
    assert sorted(sidecar.accepted) == sorted(ids_of(events[:5] + events[6:]))
    assert logger.stats()["rejected_by_code"] == {"invalid_value": 1}


# -- item 1: a poison event does not block the sender ----------------------------------------
def test_a_poison_event_that_gets_500_is_isolated_and_later_events_are_not_blocked(fake) -> None:
    def answer(events: list[bytes]) -> Answer:
        if any(orjson.loads(e)["event_id"].startswith("poison") for e in events):
            return 500, {"error": {"code": "internal"}}, {}
        return 202, {"accepted": len(events)}, {}

    sidecar = fake(answer)
    logger = PredictionLogger(sidecar.url, linger_s=0.2, max_attempts=4)
    first = [valid(i, "poison" if i == 7 else "ok") for i in range(20)]
    for e in first:
        logger.log(e)
    assert logger.flush(10), "the sender is stuck on the poison batch"
    later = [valid(i, "later") for i in range(10)]
    for e in later:
        logger.log(e)
    assert logger.close(10)
    poison = first[7]["event_id"]
    assert sorted(sidecar.accepted) == sorted(ids_of(first[:7] + first[8:] + later))
    assert sum(ids == [poison] for _, ids in sidecar.requests) == 4  # tried alone max_attempts times
    s = logger.stats()
    assert (s["sent"], s["failed"], s["failed_by_reason"]) == (29, 1, {"http_500": 1})
    assert_adds_up(s)


def test_503_with_retry_after_is_honoured_then_everything_arrives(fake) -> None:
    calls = {"n": 0}

    def answer(events: list[bytes]) -> Answer:
        calls["n"] += 1
        if calls["n"] == 1:
            return 503, {"error": {"code": "spool_full"}}, {"Retry-After": "1"}
        return 202, {"accepted": len(events)}, {}

    sidecar = fake(answer)
    logger = PredictionLogger(sidecar.url, linger_s=0.2)
    events = [valid(i) for i in range(5)]
    for e in events:
        logger.log(e)
    assert logger.close(10)
    (t0, first), (t1, second) = sidecar.requests
    assert first == second == ids_of(events)  # the same batch again, not split: 503 is not about events
    assert t1 - t0 >= 0.9, f"retried after {t1 - t0:.2f}s despite Retry-After: 1"
    assert sorted(sidecar.accepted) == sorted(ids_of(events))
    s = logger.stats()
    assert (s["sent"], s["errors"], s["failed"]) == (5, 1, 0)


def test_an_unreachable_sidecar_fails_events_after_the_retry_budget(fake) -> None:
    logger = PredictionLogger(f"http://127.0.0.1:{dead_port()}", retry_for_s=0.3, max_backoff_s=0.05)
    for i in range(5):
        logger.log(valid(i))
    assert logger.flush(5), "retried past retry_for_s"
    s = logger.stats()
    assert (s["failed"], s["failed_by_reason"], s["pending"]) == (5, {"unreachable": 5}, 0)
    t0 = time.monotonic()
    for i in range(5):  # the outage is older than the budget: later batches get one try each
        logger.log(valid(i, "later"))
    assert logger.flush(5) and time.monotonic() - t0 < 1.0
    assert logger.stats()["failed"] == 10
    logger.close(1)
    assert_adds_up(logger.stats())


def test_a_wrong_token_fails_the_batch_at_once_and_says_so(fake, caplog) -> None:
    sidecar = fake(lambda events: (401, {"error": {"code": "unauthorized"}}, {}))
    logger = PredictionLogger(sidecar.url, token="wrong")
    logger.log(valid(1))
    assert logger.close(5)
    assert len(sidecar.requests) == 1
    assert logger.stats()["failed_by_reason"] == {"http_401": 1}
    assert any("HTTP 401 (unauthorized)" in r.getMessage() for r in caplog.records)


def test_close_counts_what_is_still_pending_as_failed(fake) -> None:
    sidecar = fake(lambda events: (503, {}, {"Retry-After": "30"}))
    logger = PredictionLogger(sidecar.url, max_backoff_s=30.0)
    for i in range(3):
        logger.log(valid(i))
    t0 = time.monotonic()
    assert logger.close(0.5) is False
    assert time.monotonic() - t0 < 3.0  # the 30 s Retry-After wait is cut short by close()
    s = logger.stats()
    assert (s["failed_by_reason"], s["pending"]) == ({"closed": 3}, 0)


# -- counting and visibility ------------------------------------------------------------------
def test_counters_add_up_under_concurrent_load_with_every_outcome(fake) -> None:
    def answer(events: list[bytes]) -> Answer:
        time.sleep(0.002)  # a slow sidecar, so the small queue overflows
        if any(orjson.loads(e)["event_id"].startswith("poison") for e in events):
            return 500, {}, {}
        return all_or_nothing(events)

    sidecar = fake(answer)
    logger = PredictionLogger(sidecar.url, max_queue=40, batch_size=16, max_attempts=2)
    snapshots: list[dict] = []

    def produce(t: int) -> None:
        for i in range(300):
            kind = i % 50
            if kind == 0:
                logger.log(b"not json")
            elif kind == 1:
                logger.log(valid(i, f"poison{t}"))
            else:
                logger.log(valid(i, f"t{t}"))
            if i % 60 == 0:
                snapshots.append(logger.stats())

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert logger.close(30)
    for snap in [*snapshots, logger.stats()]:
        assert_adds_up(snap)
    s = logger.stats()
    assert s["logged"] == 1200 and s["pending"] == 0 and s["dropped"] > 0
    assert s["sent"] == len(sidecar.accepted) == len(set(sidecar.accepted))
    assert s["failed_by_reason"].keys() <= {"http_500"} and s["rejected_by_code"].keys() <= {"invalid_json"}


def test_rejections_warn_at_most_once_a_minute_and_reach_prometheus(fake, caplog) -> None:
    from prometheus_client import REGISTRY

    def sample(code: str) -> float:
        return REGISTRY.get_sample_value("predaudit_logger_rejected_total", {"code": code}) or 0.0

    before = sample("missing_field")
    sidecar = fake()
    logger = PredictionLogger(sidecar.url)
    caplog.set_level(logging.WARNING, logger="predaudit.client")
    for i in range(50):
        ev = valid(i)
        del ev["prediction"]
        logger.log(ev)
    assert logger.close(5)
    assert logger.stats()["rejected_by_code"] == {"missing_field": 50}
    assert sample("missing_field") - before == 50
    warnings = [r for r in caplog.records if r.name == "predaudit.client"]
    assert len(warnings) == 1 and "missing_field at $.prediction" in warnings[0].getMessage()
    assert not sidecar.requests
