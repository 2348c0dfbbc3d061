"""The client library never blocks or raises into the inference path."""

from __future__ import annotations

import socket
import time

from sidecar.client import PredictionLogger


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_log_returns_at_once_and_counts_drops_when_the_sidecar_is_down() -> None:
    logger = PredictionLogger(f"http://127.0.0.1:{dead_port()}", max_queue=100, batch_size=10)
    t0 = time.perf_counter()
    results = [logger.log({"event_id": f"e{i}"}) for i in range(1000)]
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"1000 log() calls took {elapsed:.3f}s"
    assert results.count(False) >= 800  # the bounded queue overflowed: dropped, counted, no exception
    assert logger.stats["dropped"] == results.count(False)
    assert logger.close(timeout_s=5) is False or logger.stats["dropped"] >= results.count(False)
    assert logger.log({"event_id": "after-close"}) is False


def test_unserializable_events_are_counted_not_raised() -> None:
    logger = PredictionLogger(f"http://127.0.0.1:{dead_port()}", start=False)
    assert logger.log({"event_id": "x", "features": {"f": object()}}) is True
    logger._thread.start()
    logger.flush(5)
    assert logger.stats["rejected"] == 1
    logger.close(1)
