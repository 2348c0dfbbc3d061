"""A 202 is a promise, against the real Pub/Sub emulator: a full disk, a naive retrying
client, and SIGTERM while Pub/Sub is unreachable."""

from __future__ import annotations

import collections
import errno
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
import requests

from pipelines import localstack
from sidecar.spool import Spool
from tests.helpers import TcpProxy
from tests.integration.test_sidecar import (
    PROJECT,
    Bus,
    bus,
    ids,
    metric,
    prediction,
    start_sidecar,
    url,
    wait_for,
)
from tests.unit.test_spool import small_volume

__all__ = ["bus", "start_sidecar"]  # fixtures used here


def exactly_once(acked: list[dict], got: list) -> None:
    """Every acknowledged event arrived once, and nothing else arrived."""
    counts = collections.Counter(ids(got))
    twice = [i for i, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} events delivered more than once, e.g. {twice[:3]}"
    missing = {e["event_id"] for e in acked} - set(counts)
    assert not missing, f"{len(missing)} acknowledged events never delivered, e.g. {sorted(missing)[:3]}"
    assert set(counts) == {e["event_id"] for e in acked}, "an event nobody acknowledged was published"


# -- a full disk ----------------------------------------------------------------------------
def test_a_full_spool_disk_answers_503_and_every_acknowledged_event_is_delivered_once(
    pubsub_emulator, start_sidecar, tmp_path: pathlib.Path, monkeypatch
) -> None:
    bus = Bus(pubsub_emulator.endpoint)
    proxy = TcpProxy(int(pubsub_emulator.endpoint.rsplit(":", 1)[1]))  # closed: Pub/Sub unreachable
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", proxy.address)
    with small_volume(tmp_path / "vol", 2 << 20, monkeypatch) as vol:
        # the default --spool-max-bytes (1 GiB) is far above this 2 MiB volume: the disk fills first
        sc = start_sidecar(bus, spool_dir=str(vol.path / "spool"), publish_timeout_s=5.0)
        session = requests.Session()
        acked: list[dict] = []
        refused: list[requests.Response] = []
        n = 0
        while len(refused) < 5:  # fill the disk, then keep knocking
            evs = [prediction(i=n + k) for k in range(10)]
            n += 10
            r = session.post(url(sc, "/v1/predictions"), data=orjson.dumps(evs), timeout=10)
            assert r.status_code in (202, 503), r.text[:300]
            if r.status_code == 202:
                acked += evs
            else:
                refused.append(r)
            assert n < 20_000, "the disk never filled"
        assert len(acked) > 1000  # ~2 MiB of events went in before the disk was full
        for r in refused:
            assert r.headers["Retry-After"] == "5"
            assert (
                r.json()["error"]["code"] == "spool_write_failed" and "ENOSPC" in r.json()["error"]["message"]
            )
        assert metric(sc, 'predaudit_sidecar_spool_errors_total{errno="ENOSPC",op="append"}') >= 5

        proxy.open()  # Pub/Sub is back: the backlog drains and its segment is deleted
        more: list[dict] = []
        deadline = time.monotonic() + 60
        evs = [prediction(i=n + k) for k in range(10)]
        while len(more) < 300:  # a client honouring 503 + Retry-After (shortened) gets in again
            assert time.monotonic() < deadline, "the spool never took events again"
            r = session.post(url(sc, "/v1/predictions"), data=orjson.dumps(evs), timeout=10)
            if r.status_code == 503:
                time.sleep(0.2)
                continue
            assert r.status_code == 202, r.text[:300]
            more += evs
            n += 10
            evs = [prediction(i=n + k) for k in range(10)]
        acked += more
        wait_for(lambda: metric(sc, "predaudit_sidecar_spool_depth") == 0, 60, "the spool to drain")
        assert requests.get(url(sc, "/readyz"), timeout=5).status_code == 200  # the drainer lives
        got = bus.pull(want=len(acked), timeout=60, quiet=1.0)
        exactly_once(acked, got)
        sc.stop(0)
        proxy.close()


def test_the_drainer_survives_failing_passes(bus: Bus, start_sidecar) -> None:
    sc = start_sidecar(bus)
    real_read, left = sc.spool.read, [4]

    def flaky_read(*args: Any, **kw: Any) -> list:
        if left[0] > 0:  # a disk error reading a segment, four times in a row
            left[0] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real_read(*args, **kw)

    sc.spool.read = flaky_read  # type: ignore[method-assign]
    events = [prediction(i=i) for i in range(20)]
    assert requests.post(url(sc, "/v1/predictions"), data=orjson.dumps(events), timeout=10).status_code == 202
    got = bus.pull(want=20, timeout=60, quiet=1.0)
    exactly_once(events, got)
    assert metric(sc, 'predaudit_sidecar_drainer_errors_total{error="OSError"}') == 4
    assert requests.get(url(sc, "/readyz"), timeout=5).status_code == 200


# -- partial batches ------------------------------------------------------------------------
def naive_post(base: str, body: bytes, ctype: str = "application/json", attempts: int = 3) -> list[int]:
    """A client that retries every non-2xx answer (the statuses it saw)."""
    statuses = []
    for _ in range(attempts):
        r = requests.post(f"{base}/v1/predictions", data=body, headers={"Content-Type": ctype}, timeout=10)
        statuses.append(r.status_code)
        if 200 <= r.status_code < 300:
            break
    return statuses


def test_a_naive_retrying_client_cannot_duplicate_or_lose_events(bus: Bus, start_sidecar) -> None:
    sc = start_sidecar(bus)
    base = url(sc, "")
    mixed = [prediction(i=i) for i in range(4)]
    mixed[3]["latency_ms"] = -5  # 3 valid + 1 invalid
    ndjson = b"\n".join(orjson.dumps(e) for e in mixed)
    assert naive_post(base, ndjson, "application/x-ndjson") == [400, 400, 400]
    array = orjson.dumps([prediction(i=10 + i) for i in range(3)])
    broken = array[:-1] + b", {oops}]"  # one unparseable element
    assert naive_post(base, broken) == [400, 400, 400]
    valid = [prediction(i=20 + i) for i in range(5)]
    assert naive_post(base, orjson.dumps(valid)) == [202]
    got = bus.pull(want=5, timeout=30, quiet=2.0)
    exactly_once(valid, got)  # nothing of the refused requests, the accepted one once


# -- SIGTERM while Pub/Sub is down ----------------------------------------------------------
def sidecar_process(
    bus: Bus, spool: pathlib.Path, port: int, emulator: str, log: pathlib.Path
) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "pipelines.cli", "sidecar", "--port", str(port), "--project", PROJECT,
        "--predictions-topic", bus.topics["predictions"], "--labels-topic", bus.topics["labels"],
        "--spool-dir", str(spool), "--publish-timeout-s", "60",
    ]  # fmt: skip
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": emulator}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    localstack.wait_until(lambda: localstack._http_up(f"http://127.0.0.1:{port}/readyz"), 60, "sidecar", proc)
    return proc


GRACE_S = 5.0  # the documented default of --shutdown-grace-s


def test_sigterm_while_pubsub_is_down_exits_within_the_grace_and_keeps_the_events(
    bus: Bus, pubsub_emulator, tmp_path: pathlib.Path
) -> None:
    proxy = TcpProxy(int(pubsub_emulator.endpoint.rsplit(":", 1)[1]))  # closed: Pub/Sub unreachable
    port = localstack.free_port()
    spool = tmp_path / "spool"
    log = tmp_path / "sidecar.log"
    proc = sidecar_process(bus, spool, port, proxy.address, log)
    try:
        events = [prediction(i=i) for i in range(50)]
        r = requests.post(f"http://127.0.0.1:{port}/v1/predictions", data=orjson.dumps(events), timeout=10)
        assert r.status_code == 202
        # publishes are failing and retrying (a 60 s publish timeout) when the signal comes
        errors = f"http://127.0.0.1:{port}/metrics"
        wait_for(
            lambda: "predaudit_sidecar_publish_errors_total{" in requests.get(errors, timeout=5).text, 30
        )
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(GRACE_S + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {GRACE_S + 10:.0f} s after SIGTERM (grace {GRACE_S} s)")
        took = time.monotonic() - t0
        assert rc == 0 and took <= GRACE_S + 1.5, f"exit {rc} after {took:.1f} s (grace {GRACE_S} s)"
        view = Spool(spool, fsync="never")  # what the next start will publish
        assert view.depth == 50
        view.close()
        proxy.open()
        proc = sidecar_process(bus, spool, port, proxy.address, log)
        got = bus.pull(want=50, timeout=60, quiet=1.0)
        exactly_once(events, got)
    finally:
        proc.kill()
        proc.wait(10)
        proxy.close()
