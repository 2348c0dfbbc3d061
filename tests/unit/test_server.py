"""The sidecar's HTTP accept path in-process: no 500 for client input, bounded rejections,
all-or-nothing requests, KServe auth, fsync-before-202, and connection timeouts.

Publishing is not under test here: the drainer points at a closed port, so accepted events
stay in the spool, where the tests look for them.
"""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests

from sidecar.server import MAX_LISTED, Sidecar, SidecarConfig
from sidecar.spool import parse_frames
from tests.helpers import event
from tests.unit.test_spool import small_volume


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture()
def start(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{closed_port()}")
    started: list[Sidecar] = []

    def run(**kw: Any) -> Sidecar:
        kw.setdefault("spool_dir", str(tmp_path / f"spool-{len(started)}"))
        cfg = SidecarConfig(port=0, **kw)
        sc = Sidecar(cfg).start()
        started.append(sc)
        return sc

    yield run
    for sc in started:
        sc.stop(0)


def good(i: int = 0) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    return event(event_id=f"ev-{i:06d}-{uuid.uuid4().hex[:8]}", event_time=now)


def post(sc: Sidecar, body: bytes, path: str = "/v1/predictions", **headers: str) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{sc.port}{path}", data=body, headers=headers, timeout=30)


def raw_request(sc: Sidecar, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes as they are (headers a normal client would refuse to send); the whole answer."""
    with socket.create_connection(("127.0.0.1", sc.port), timeout=10) as s:
        s.sendall(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def spooled_ids(sc: Sidecar) -> list[str]:
    """Event ids in the spool's segment files (read from disk: the drainer owns ``read``)."""
    out = []
    for seg in sorted(pathlib.Path(sc.cfg.spool_dir).glob("seg-*.log")):
        records, _ = parse_frames(seg.read_bytes(), 0, 0)
        out += [r.attributes["event_id"] for r in records]
    return out


# -- no 500 for anything a client sends -----------------------------------------------------
def test_bodies_nested_past_the_parser_are_400_with_a_code(start) -> None:
    sc = start()
    deep_array = b"[" * 100_000 + b"]" * 100_000
    r = post(sc, deep_array)
    assert r.status_code == 400 and r.json()["error"]["code"] == "nesting_too_deep"
    deep_object = b'{"a":' * 40_000 + b"1" + b"}" * 40_000  # under max_payload_bytes
    r = post(sc, deep_object)
    assert r.status_code == 400 and r.json()["rejected"][0]["code"] == "nesting_too_deep"
    r = post(sc, orjson.dumps(good()) + b"\n" + deep_array, **{"Content-Type": "application/x-ndjson"})
    assert r.status_code == 400 and r.json()["rejected"][0]["index"] == 1
    assert sc.spool.depth == 0


def test_a_non_utf8_authorization_header_is_401_and_a_non_utf8_kserve_header_400(start, tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    mapping = tmp_path / "kserve.yaml"
    mapping.write_text(
        'services:\n  - {inferenceservice: fraud, model: fraud, version: "1", output: {field: score}}\n'
    )
    sc = start(auth_token_file=str(token), kserve_mapping=str(mapping))
    answer = raw_request(
        sc, b"POST /v1/predictions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xfd\r\n", b"{}"
    )
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b'"code":"unauthorized"' in answer
    answer = raw_request(
        sc,
        b"POST / HTTP/1.1\r\nHost: x\r\nce-id: \xff\xfe\r\nce-specversion: 1.0\r\nce-source: x\r\n"
        b"ce-type: org.kubeflow.serving.inference.request\r\nce-inferenceservicename: fraud\r\n"
        b"Content-Type: application/json\r\n",
        b'{"instances": [[1.0]]}',
    )
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    assert b'"code":"invalid_encoding"' in answer


def test_a_rejection_body_is_bounded(start) -> None:
    sc = start()
    r = post(sc, b"[" + b",".join([b"{}"] * 100_000) + b"]")
    assert r.status_code == 400
    assert len(r.content) < 64 * 1024  # was 15.6 MB: every event listed
    doc = r.json()
    assert len(doc["rejected"]) == MAX_LISTED and doc["rejected"][-1]["index"] == MAX_LISTED - 1
    assert doc["rejected_count"] == 100_000 and doc["rejected_by_code"] == {"missing_field": 100_000}
    text = requests.get(f"http://127.0.0.1:{sc.port}/metrics", timeout=5).text
    assert 'predaudit_sidecar_rejected_total{code="missing_field",kind="prediction"} 100000.0' in text


# -- all or nothing per request -------------------------------------------------------------
def test_a_request_with_one_invalid_event_is_refused_whole(start) -> None:
    sc = start()
    events = [good(i) for i in range(4)]
    events[2]["latency_ms"] = -1
    for body, ctype in (
        (orjson.dumps(events), "application/json"),
        (b"\n".join(orjson.dumps(e) for e in events), "application/x-ndjson"),
    ):
        r = post(sc, body, **{"Content-Type": ctype})
        assert r.status_code == 400, ctype
        doc = r.json()
        assert doc["accepted"] == 0 and doc["error"]["code"] == "invalid_events"
        assert [(x["index"], x["code"]) for x in doc["rejected"]] == [(2, "out_of_range")]
    assert sc.spool.depth == 0  # nothing of either request was spooled
    del events[2]
    r = post(sc, orjson.dumps(events))
    assert r.status_code == 202 and r.json() == {"accepted": 3}
    assert spooled_ids(sc) == [e["event_id"] for e in events]


# -- KServe auth ----------------------------------------------------------------------------
def test_the_kserve_route_is_not_token_checked_and_v1_is(start, tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    mapping = tmp_path / "kserve.yaml"
    mapping.write_text(
        'services:\n  - {inferenceservice: fraud, model: fraud, version: "1", output: {field: score}}\n'
    )
    sc = start(auth_token_file=str(token), kserve_mapping=str(mapping))
    ce = {
        "ce-specversion": "1.0",
        "ce-id": "req-1",
        "ce-source": "http://localhost:9081/",
        "ce-type": "org.kubeflow.serving.inference.request",
        "ce-inferenceservicename": "fraud",
        "Content-Type": "application/json",
    }
    r = post(sc, b'{"instances": [[1.0]]}', "/", **ce)
    assert r.status_code == 202 and r.json()["pending"] == 1
    assert post(sc, orjson.dumps(good())).status_code == 401
    assert post(sc, orjson.dumps(good()), Authorization="Bearer s3cret").status_code == 202


# -- durability before the answer -----------------------------------------------------------
def test_fsync_always_answers_only_after_the_fsync_completed(start, monkeypatch) -> None:
    sc = start(fsync="always")
    real_fsync = os.fsync
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow_fsync(fd: int) -> None:
        if "seg-" in os.readlink(f"/proc/self/fd/{fd}"):  # only the spool's segment files
            entered.set()
            assert release.wait(30), "the test never released the fsync"
            real_fsync(fd)
            order.append("fsync done")
        else:
            real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    answered = threading.Event()
    result: list[requests.Response] = []

    def client() -> None:
        result.append(post(sc, orjson.dumps(good())))
        order.append("answered")
        answered.set()

    threading.Thread(target=client, daemon=True).start()
    try:
        assert entered.wait(10), "the append was never fsynced"
        # the fsync is stuck: a correct sidecar cannot answer; give a wrong one time to do so
        assert not answered.wait(0.5), "answered 202 before the event was on disk"
    finally:
        release.set()
    assert answered.wait(10)
    assert result[0].status_code == 202 and order == ["fsync done", "answered"]


# -- timeouts -------------------------------------------------------------------------------
def wait_closed(s: socket.socket, within: float) -> tuple[bool, bytes]:
    """Read until the server closes the connection (True) or ``within`` s pass (False)."""
    s.settimeout(0.2)
    deadline, got = time.monotonic() + within, b""
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_slow_and_idle_connections_are_closed(start) -> None:
    sc = start(idle_timeout_s=1.0, body_timeout_s=1.0)
    addr = ("127.0.0.1", sc.port)
    # slowloris: a request line and headers trickling in, never complete
    with socket.create_connection(addr) as s:
        t0 = time.monotonic()
        closed = False
        for ch in b"POST /v1/predictions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                s.send(bytes([ch]))
            except OSError:
                closed = True
                break
            time.sleep(0.02)
            if time.monotonic() - t0 > 4:
                break
        if not closed:
            closed, _ = wait_closed(s, 2.0)
        assert closed and time.monotonic() - t0 < 5, "a connection sending headers forever stayed open"
    # headers complete, body promised and never sent: 408, connection closed
    with socket.create_connection(addr) as s:
        s.sendall(b"POST /v1/predictions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{")
        closed, got = wait_closed(s, 4.0)
        assert closed and got.startswith(b"HTTP/1.1 408 "), got[:200]
        assert b'"code":"request_timeout"' in got
    # idle keep-alive after a request
    with socket.create_connection(addr) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        closed, got = wait_closed(s, 4.0)
        assert closed and got.startswith(b"HTTP/1.1 200 "), got[:200]


# -- 503: nothing of the request stays ------------------------------------------------------
def test_a_full_spool_or_a_full_disk_is_503_with_retry_after_and_nothing_stored(
    start, tmp_path, monkeypatch
) -> None:
    capped = start(spool_max_bytes=4000)
    r = post(capped, orjson.dumps([good(i) for i in range(10)]))
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["error"]["code"] == "spool_full" and r.json()["accepted"] == 0
    assert capped.spool.depth == 0 and spooled_ids(capped) == []
    with small_volume(tmp_path / "vol", 1 << 20, monkeypatch) as vol:
        sc = start(spool_dir=str(vol.path / "spool"))
        first = good(0)
        assert post(sc, orjson.dumps(first)).status_code == 202
        vol.fill()
        r = post(sc, orjson.dumps([good(i) for i in range(1, 30)]))
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["error"]["code"] == "spool_write_failed" and "ENOSPC" in r.json()["error"]["message"]
        assert spooled_ids(sc) == [first["event_id"]]  # the refused request left nothing, not even part
        vol.free()
        second = good(99)
        assert post(sc, orjson.dumps(second)).status_code == 202
        assert spooled_ids(sc) == [first["event_id"], second["event_id"]]
        sc.stop(0)
