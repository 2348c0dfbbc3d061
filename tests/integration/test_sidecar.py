"""The serving sidecar against the real Pub/Sub emulator: delivery, attributes, bad requests,
KServe CloudEvents, a Pub/Sub outage with an emulator restart, SIGKILL, and a full spool."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests

from pipelines import localstack
from sidecar.server import Sidecar, SidecarConfig
from sidecar.spool import Spool
from tests.helpers import TcpProxy, event

PROJECT = "predaudit-test"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


PII_MARKER = "pii-marker-7f3a@example.com"


def prediction(model: str = "fraud", i: int = 0) -> dict[str, Any]:
    ev = _prediction(model, i)
    ev["features"]["email"] = PII_MARKER  # must never reach a log line
    return ev


def _prediction(model: str, i: int) -> dict[str, Any]:
    return event(
        event_id=f"{model}-{i:06d}-{uuid.uuid4().hex[:8]}",
        event_time=now_iso(),
        model={"name": model, "version": "1"},
    )


class Bus:
    """Admin view of one emulator: fresh topics and ordered subscriptions per test."""

    def __init__(self, endpoint: str) -> None:
        from google.cloud import pubsub_v1

        os.environ["PUBSUB_EMULATOR_HOST"] = endpoint
        self.pub, self.sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        suffix = uuid.uuid4().hex[:8]
        self.topics = {k: f"{k}-{suffix}" for k in ("predictions", "labels")}
        self.subscriptions = {k: f"projects/{PROJECT}/subscriptions/{k}-{suffix}" for k in self.topics}
        self.create()

    def create(self) -> None:
        for k, t in self.topics.items():
            name = self.pub.create_topic(name=f"projects/{PROJECT}/topics/{t}").name
            self.sub.create_subscription(
                request={"name": self.subscriptions[k], "topic": name, "enable_message_ordering": True}
            )

    def pull(
        self, kind: str = "predictions", want: int = 1, timeout: float = 30.0, quiet: float = 0.0
    ) -> list:
        """Pull (and ack) until ``want`` messages arrived, then for ``quiet`` s more."""
        got: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = self.sub.pull(subscription=self.subscriptions[kind], max_messages=1000, timeout=2)
            msgs = resp.received_messages
            if msgs:
                self.sub.acknowledge(subscription=self.subscriptions[kind], ack_ids=[m.ack_id for m in msgs])
                got += [m.message for m in msgs]
            if len(got) >= want:
                if quiet <= 0:
                    break
                if not msgs:
                    quiet -= 0.2
                    time.sleep(0.2)
        return got


@pytest.fixture()
def bus(pubsub_emulator, monkeypatch) -> Bus:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.endpoint)
    return Bus(pubsub_emulator.endpoint)


class CheckedSidecar(Sidecar):
    """A sidecar that checks every 202 of /v1/* as it is sent: the events it acknowledges must
    already be in the spool (and fsynced with ``--fsync always``). A response sent before the
    write is recorded in ``early`` (a kill at that moment would lose acknowledged events)."""

    def __init__(self, cfg: SidecarConfig) -> None:
        super().__init__(cfg)
        self.checked = 0  # 202 answers checked
        self.early: list[str] = []
        self._writes: dict[Any, tuple[int, int]] = {}  # request task -> (events spooled, ticket)
        append = self.spool.append

        def recorded(records: Any) -> int:
            records = list(records)
            ticket = append(records)
            try:
                task = asyncio.current_task()
            except RuntimeError:  # not on the event loop
                task = None
            if task is not None:
                n, _ = self._writes.get(task, (0, 0))
                self._writes[task] = (n + len(records), ticket)
            return ticket

        self.spool.append = recorded  # type: ignore[method-assign]

    def app(self) -> Any:
        app = super().app()
        app.on_response_prepare.append(self._check)
        return app

    async def _check(self, request: Any, response: Any) -> None:
        spooled, ticket = self._writes.pop(asyncio.current_task(), (0, 0))
        if response.status != 202 or not request.path.startswith("/v1/"):
            return
        self.checked += 1
        accepted = orjson.loads(response.body)["accepted"]
        if spooled < accepted:
            self.early.append(f"202 for {accepted} events with {spooled} of them in the spool")
        if self.cfg.fsync == "always" and self.spool._synced_total < ticket:
            self.early.append("202 before the fsync of its events")


@pytest.fixture()
def start_sidecar(tmp_path: pathlib.Path) -> Iterator:
    started: list[CheckedSidecar] = []

    def start(bus: Bus, **kw: Any) -> Sidecar:
        cfg = SidecarConfig(
            port=0,
            project=PROJECT,
            predictions_topic=bus.topics["predictions"],
            labels_topic=bus.topics["labels"],
            spool_dir=str(kw.pop("spool_dir", tmp_path / f"spool-{len(started)}")),
            **kw,
        )
        sc = CheckedSidecar(cfg).start()
        started.append(sc)
        return sc

    yield start
    for sc in started:
        sc.stop(0)
    early = [e for sc in started for e in sc.early]
    assert not early, f"a 202 was sent before its events were written: {early[:3]}"


def url(sc: Sidecar, path: str) -> str:
    return f"http://127.0.0.1:{sc.port}{path}"


def metric(sc: Sidecar, name: str) -> float:
    text = requests.get(url(sc, "/metrics"), timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def ids(messages: list) -> list[str]:
    return [m.attributes["event_id"] for m in messages]


# -- delivery ------------------------------------------------------------------------------
def test_single_array_and_ndjson_posts_arrive_with_attributes(bus: Bus, start_sidecar) -> None:
    sc = start_sidecar(bus)
    events = [prediction(i=i) for i in range(7)]
    single = requests.post(url(sc, "/v1/predictions"), data=orjson.dumps(events[0]), timeout=5)
    array = requests.post(url(sc, "/v1/predictions"), data=orjson.dumps(events[1:4]), timeout=5)
    ndjson = requests.post(
        url(sc, "/v1/predictions"),
        data=b"\n".join(orjson.dumps(e) for e in events[4:]),
        headers={"Content-Type": "application/x-ndjson"},
        timeout=5,
    )
    assert [r.status_code for r in (single, array, ndjson)] == [202, 202, 202]
    assert [r.json()["accepted"] for r in (single, array, ndjson)] == [1, 3, 3]
    label = {
        "schema_version": "1",
        "event_id": events[0]["event_id"],
        "label_time": now_iso(),
        "label": "fraud",
    }
    assert requests.post(url(sc, "/v1/labels"), data=orjson.dumps(label), timeout=5).status_code == 202

    got = bus.pull(want=7)
    assert ids(got) == [e["event_id"] for e in events]  # one model: spool order kept
    first = got[0]
    assert orjson.loads(first.data) == events[0]
    assert first.ordering_key == "fraud"
    assert dict(first.attributes) == {
        "event_id": events[0]["event_id"],
        "event_time": dt.datetime.fromisoformat(events[0]["event_time"]).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "model": "fraud",
        "model_version": "1",
        "schema_version": "1",
    }
    labels = bus.pull("labels", want=1)
    assert [m.attributes["event_id"] for m in labels] == [events[0]["event_id"]]
    assert metric(sc, 'predaudit_sidecar_published_total{kind="prediction"}') == 7
    assert requests.get(url(sc, "/readyz"), timeout=5).status_code == 200
    assert requests.get(url(sc, "/healthz"), timeout=5).status_code == 200


def test_bad_requests_get_the_right_status_and_nothing_is_published(
    bus: Bus, start_sidecar, tmp_path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    sc = start_sidecar(bus, auth_token_file=str(token), max_request_bytes=64 * 1024)
    auth = {"Authorization": "Bearer s3cret"}
    post = url(sc, "/v1/predictions")

    assert requests.post(post, data=orjson.dumps(prediction()), timeout=5).status_code == 401
    assert (
        requests.post(
            post, data=orjson.dumps(prediction()), headers={"Authorization": "Bearer x"}, timeout=5
        ).status_code
        == 401
    )
    big = orjson.dumps([prediction(i=i) for i in range(200)])
    assert len(big) > 64 * 1024
    r = requests.post(post, data=big, headers=auth, timeout=5)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = requests.post(post, data=b"{not json", headers=auth, timeout=5)
    assert r.status_code == 400 and r.json()["rejected"][0]["code"] == "invalid_json"
    r = requests.post(post, data=b"[{]", headers=auth, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    bad_time = prediction()
    bad_time["event_time"] = "2026-13-01T00:00:00Z"
    no_pred = prediction()
    del no_pred["prediction"]
    r = requests.post(post, data=orjson.dumps([bad_time, no_pred]), headers=auth, timeout=5)
    assert r.status_code == 400
    assert [(x["index"], x["code"], x["path"]) for x in r.json()["rejected"]] == [
        (0, "invalid_timestamp", "$.event_time"),
        (1, "missing_field", "$.prediction"),
    ]
    assert all(x["hint"] for x in r.json()["rejected"])

    marker = prediction(i=999)
    assert requests.post(post, data=orjson.dumps(marker), headers=auth, timeout=5).status_code == 202
    assert ids(bus.pull(want=1, quiet=1.0)) == [marker["event_id"]]  # only the marker was published
    assert metric(sc, "predaudit_sidecar_rejected_total") == 4
    assert metric(sc, 'predaudit_sidecar_requests_total{route="/v1/predictions",status="401"}') == 2


def test_a_mixed_batch_is_refused_whole_and_its_valid_events_go_on_a_resend(bus: Bus, start_sidecar) -> None:
    sc = start_sidecar(bus)
    good = [prediction(i=i) for i in range(3)]
    bad = prediction(i=9)
    bad["latency_ms"] = -1
    r = requests.post(url(sc, "/v1/predictions"), data=orjson.dumps([good[0], bad, *good[1:]]), timeout=5)
    assert r.status_code == 400
    assert r.json()["accepted"] == 0 and [x["index"] for x in r.json()["rejected"]] == [1]
    r = requests.post(url(sc, "/v1/predictions"), data=orjson.dumps(good), timeout=5)  # without index 1
    assert r.status_code == 202
    assert ids(bus.pull(want=3, quiet=1.0)) == [e["event_id"] for e in good]  # each once
    assert sc.checked == 1  # the 202 was checked: its events were spooled before it was sent


# -- KServe ---------------------------------------------------------------------------------
MAPPING = """
ttl_s: 1.0
services:
  - inferenceservice: fraud-detector
    namespace: prod
    model: fraud
    version_from: endpoint
    features: [amount, merchant_category, hour]
    output: {field: score}
  - inferenceservice: churn
    model: churn
    version: "7"
    output: {field: scores, classes: [stay, leave], name: probabilities}
"""


def kserve_post(
    sc: Sidecar, ce_type: str, ce_id: str, service: str, body: dict, **ext: str
) -> requests.Response:
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    attrs = {
        "type": f"org.kubeflow.serving.inference.{ce_type}",
        "source": "http://localhost:9081/",
        "id": ce_id,
        "inferenceservicename": service,
        "namespace": ext.get("namespace", "prod"),
        "component": "predictor",
        "endpoint": ext.get("endpoint", "default"),
        "time": ext.get("time", now_iso()),
    }
    headers, data = to_binary(CloudEvent(attrs, body))
    return requests.post(
        url(sc, "/"), data=data, headers={**headers, "Content-Type": "application/json"}, timeout=5
    )


def test_kserve_request_and_response_become_one_event(bus: Bus, start_sidecar, tmp_path) -> None:
    mapping = tmp_path / "kserve.yaml"
    mapping.write_text(MAPPING)
    sc = start_sidecar(bus, kserve_mapping=str(mapping))
    t0 = dt.datetime.now(dt.timezone.utc)
    t1 = t0 + dt.timedelta(milliseconds=42)
    iso = lambda t: t.isoformat().replace("+00:00", "Z")  # noqa: E731
    r1 = kserve_post(
        sc, "request", "req-1", "fraud-detector", {"instances": [[120.5, "grocery", 13]]}, time=iso(t0)
    )
    assert r1.status_code == 202 and r1.json() == {"accepted": 0, "pending": 1}
    r2 = kserve_post(sc, "response", "req-1", "fraud-detector", {"predictions": [0.91]}, time=iso(t1))
    assert r2.status_code == 202 and r2.json()["accepted"] == 1

    v2_req = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    v2_resp = {
        "outputs": [
            {"name": "probabilities", "shape": [2, 2], "datatype": "FP32", "data": [0.9, 0.1, 0.2, 0.8]}
        ]
    }
    # churn's mapping names no positional features, so a [N, F] tensor cannot be named: 400 on pairing
    assert kserve_post(sc, "response", "req-2", "churn", v2_resp).status_code == 202
    bad = kserve_post(sc, "request", "req-2", "churn", v2_req)
    assert bad.status_code == 400 and bad.json()["rejected"][0]["code"] == "kserve_shape_mismatch"
    named = {
        "inputs": [
            {"name": "tenure", "shape": [2], "datatype": "FP32", "data": [3, 40]},
            {"name": "plan", "shape": [2], "datatype": "BYTES", "data": ["basic", "pro"]},
        ]
    }
    assert kserve_post(sc, "request", "req-3", "churn", named).status_code == 202
    assert kserve_post(sc, "response", "req-3", "churn", v2_resp).status_code == 202
    # an unmapped service and a non-KServe CloudEvent are refused with their codes
    r = kserve_post(sc, "request", "req-4", "unknown-isvc", {"instances": [[1]]})
    assert r.status_code == 400 and r.json()["rejected"][0]["code"] == "kserve_unmapped_service"
    r = requests.post(url(sc, "/"), data=b"{}", headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400 and r.json()["rejected"][0]["code"] == "kserve_bad_cloudevent"
    # a request whose response never comes is published after the TTL, flagged
    assert (
        kserve_post(sc, "request", "req-5", "fraud-detector", {"instances": [[9.0, "travel", 2]]}).status_code
        == 202
    )

    got = [orjson.loads(m.data) for m in bus.pull(want=5, timeout=30)]
    by_source = {}
    for ev in got:
        by_source.setdefault(ev["metadata"]["ce_id"], []).append(ev)
    (fraud,) = by_source["req-1"]
    assert fraud["model"] == {"name": "fraud", "version": "default"}
    assert fraud["features"] == {"amount": 120.5, "merchant_category": "grocery", "hour": 13}
    assert fraud["prediction"] == {"score": 0.91}
    assert fraud["latency_ms"] == pytest.approx(42.0)
    assert fraud["event_time"].startswith(iso(t0)[:19])
    assert [e["features"] for e in by_source["req-3"]] == [
        {"tenure": 3, "plan": "basic"},
        {"tenure": 40, "plan": "pro"},
    ]
    assert [e["prediction"]["label"] for e in by_source["req-3"]] == ["stay", "leave"]
    assert {e["model"]["version"] for e in by_source["req-3"]} == {"7"}
    (lone,) = by_source["req-5"]
    assert lone["status"] == "error" and lone["metadata"]["predaudit_unpaired"] == "request"
    # req-2's response half is published alone after the TTL (its request was refused)
    assert [e["metadata"]["predaudit_unpaired"] for e in by_source["req-2"]] == ["response", "response"]
    assert [e["features"] for e in by_source["req-2"]] == [{}, {}]
    assert len(got) == 6
    assert metric(sc, "predaudit_sidecar_kserve_unpaired_total") == 2


# -- failures -------------------------------------------------------------------------------
class Poster:
    """Posts events for two models in small batches from a thread; records what got 202."""

    def __init__(self, base: str, batch: int = 5, pause: float = 0.01) -> None:
        self.base, self.batch, self.pause = base, batch, pause
        self.acked: list[dict] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._i = 0

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            evs = [
                prediction("fraud" if (self._i + k) % 2 else "churn", self._i + k) for k in range(self.batch)
            ]
            try:
                r = session.post(f"{self.base}/v1/predictions", data=orjson.dumps(evs), timeout=5)
                self.statuses.append(r.status_code)
                if r.status_code == 202:
                    self.acked += evs
                    self._i += self.batch
                elif r.status_code == 503:
                    time.sleep(0.05)
            except requests.RequestException:
                self.statuses.append(0)
                time.sleep(0.05)
            time.sleep(self.pause)

    def start(self) -> Poster:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def assert_all_delivered_in_order(acked: list[dict], got: list) -> None:
    received = ids(got)
    assert set(received) >= {e["event_id"] for e in acked}, "an acknowledged event was lost"
    for model in ("fraud", "churn"):
        sent = [e["event_id"] for e in acked if e["model"]["name"] == model]
        seen: list[str] = []
        for m in got:
            if m.attributes["model"] == model and m.attributes["event_id"] not in seen:
                seen.append(m.attributes["event_id"])
        assert [x for x in seen if x in set(sent)] == sent, f"order of {model} events changed"


def wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_pubsub_outage_with_emulator_restart_loses_nothing_and_keeps_order(
    start_sidecar, tmp_path, monkeypatch
) -> None:
    emu = localstack.start_pubsub_emulator(tmp_path / "emu-logs")
    port = int(emu.endpoint.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    proxy.open()
    try:
        bus = Bus(emu.endpoint)
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", proxy.address)  # the sidecar reaches Pub/Sub via the proxy
        sc = start_sidecar(bus, publish_timeout_s=2.0)
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emu.endpoint)
        poster = Poster(url(sc, "")).start()
        got = bus.pull(want=100)
        proxy.close()  # Pub/Sub unreachable: publishes fail, the spool grows
        time.sleep(0.5)
        confirmed = metric(sc, "predaudit_sidecar_published_total")
        # take everything the emulator confirmed before the cut (the rest is retried later)
        while len(set(ids(got))) < confirmed:
            more = bus.pull(want=1, timeout=5)
            assert more, f"the emulator confirmed {confirmed} messages but delivered {len(set(ids(got)))}"
            got += more
        emu.stop()  # ... and the emulator really goes away (its in-memory state with it)
        wait_for(lambda: metric(sc, "predaudit_sidecar_publish_errors_total") > 0, what="publish errors")
        assert metric(sc, "predaudit_sidecar_spool_depth") > 0
        emu = localstack.start_pubsub_emulator(tmp_path / "emu-logs-2", port=port)
        bus.create()  # a fresh emulator: recreate the topics and subscriptions
        proxy.open()
        time.sleep(1.0)
        poster.stop()
        assert 0 not in poster.statuses and 503 not in poster.statuses  # accepted all along
        got += bus.pull(want=len(poster.acked) - len(got), timeout=60, quiet=1.0)
        assert_all_delivered_in_order(poster.acked, got)
        wait_for(lambda: metric(sc, "predaudit_sidecar_spool_depth") == 0, what="an empty spool")
    finally:
        proxy.close()
        emu.stop()


def sidecar_process(
    bus: Bus, spool: pathlib.Path, port: int, emulator: str, log: pathlib.Path
) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "pipelines.cli", "sidecar", "--port", str(port), "--project", PROJECT,
        "--predictions-topic", bus.topics["predictions"], "--labels-topic", bus.topics["labels"],
        "--spool-dir", str(spool), "--fsync", "always", "--publish-timeout-s", "2",
    ]  # fmt: skip
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": emulator}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    localstack.wait_until(lambda: localstack._http_up(f"http://127.0.0.1:{port}/readyz"), 60, "sidecar", proc)
    return proc


def test_sigkill_loses_no_acknowledged_event(bus: Bus, pubsub_emulator, tmp_path) -> None:
    proxy = TcpProxy(int(pubsub_emulator.endpoint.rsplit(":", 1)[1]))
    proxy.open()
    port = localstack.free_port()
    spool = tmp_path / "spool"
    proc = sidecar_process(bus, spool, port, proxy.address, tmp_path / "sidecar.log")
    try:
        poster = Poster(f"http://127.0.0.1:{port}").start()
        wait_for(lambda: len(poster.acked) >= 200, what="200 accepted events")
        proxy.close()  # build a backlog in the spool
        wait_for(lambda: len(poster.acked) >= 600, what="600 accepted events")
        poster.stop()  # before `last`, so the order of 202s is the order of `acked`
        last = prediction(i=10**6)
        r = requests.post(f"http://127.0.0.1:{port}/v1/predictions", data=orjson.dumps(last), timeout=5)
        proc.send_signal(signal.SIGKILL)  # right after the 202: it promised the event is on disk
        proc.wait(10)
        assert r.status_code == 202
        acked = [*poster.acked, last]
        spool_view = Spool(spool, fsync="never")  # the dead sidecar's spool, as the next start sees it
        try:
            batches = iter(lambda: spool_view.read(1000), [])
            in_spool = {rec.attributes["event_id"] for batch in batches for rec in batch}
        finally:
            spool_view.close()
        assert last["event_id"] in in_spool, "a 202 came before the event was written"
        proxy.open()
        proc = sidecar_process(bus, spool, port, proxy.address, tmp_path / "sidecar.log")
        got = bus.pull(want=len(acked), timeout=60, quiet=1.0)
        assert_all_delivered_in_order(acked, got)
        # a malformed request is rejected with its code; neither it nor any payload is logged
        bad = requests.post(
            f"http://127.0.0.1:{port}/v1/predictions", data=b'{"email": "' + PII_MARKER.encode(), timeout=5
        )
        assert bad.status_code == 400
        log_text = (tmp_path / "sidecar.log").read_text()
        assert "listening on" in log_text and PII_MARKER not in log_text
    finally:
        proc.kill()
        proc.wait(10)
        proxy.close()


def test_full_spool_answers_503_then_recovers(start_sidecar, pubsub_emulator, tmp_path, monkeypatch) -> None:
    bus = Bus(pubsub_emulator.endpoint)
    proxy = TcpProxy(int(pubsub_emulator.endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", proxy.address)  # closed: Pub/Sub is down from the start
    sc = start_sidecar(bus, spool_max_bytes=64 * 1024, publish_timeout_s=1.0)
    acked: list[dict] = []
    post = url(sc, "/v1/predictions")
    while True:
        evs = [prediction(i=len(acked) + k) for k in range(10)]
        r = requests.post(post, data=orjson.dumps(evs), timeout=5)
        if r.status_code == 503:
            break
        assert r.status_code == 202
        acked += evs
        assert len(acked) < 10_000, "the spool cap was never reached"
    assert r.headers["Retry-After"] == "5" and r.json()["error"]["code"] == "spool_full"
    assert metric(sc, "predaudit_sidecar_spool_bytes") <= 64 * 1024
    proxy.open()
    wait_for(lambda: metric(sc, "predaudit_sidecar_spool_depth") == 0, 60, "the backlog to drain")
    late = prediction(i=99999)
    assert requests.post(post, data=orjson.dumps(late), timeout=5).status_code == 202
    got = bus.pull(want=len(acked) + 1, timeout=60, quiet=0.5)
    assert set(ids(got)) == {e["event_id"] for e in acked} | {late["event_id"]}
    proxy.close()


# -- client library -------------------------------------------------------------------------
def test_client_library_through_the_sidecar_and_directly(bus: Bus, start_sidecar) -> None:
    from sidecar.client import PredictionLogger

    sc = start_sidecar(bus)
    events = [prediction(i=i) for i in range(50)]
    logger = PredictionLogger(url(sc, ""), batch_size=20)
    t0 = time.perf_counter()
    assert all(logger.log(e) for e in events[:40])
    assert time.perf_counter() - t0 < 0.5  # 40 calls that only enqueue
    bad = prediction(i=77)
    bad["latency_ms"] = "slow"
    logger.log(bad)
    label = {"schema_version": "1", "event_id": events[0]["event_id"], "label_time": now_iso(), "label": 1}
    logger.log_label(label)
    assert logger.close(10)
    s = logger.stats()
    assert (s["sent"], s["rejected"], s["dropped"], s["failed"]) == (41, 1, 0, 0)
    assert s["rejected_by_code"] == {"wrong_type": 1}

    direct = PredictionLogger(topic=f"projects/{PROJECT}/topics/{bus.topics['predictions']}")
    for e in events[40:]:
        direct.log(orjson.dumps(e))
    assert direct.close(30)
    assert direct.stats()["sent"] == 10
    got = bus.pull(want=50)
    assert sorted(ids(got)) == sorted(e["event_id"] for e in events)
    assert {m.attributes["model"] for m in got} == {"fraud"}
    assert ids(bus.pull("labels", want=1)) == [events[0]["event_id"]]
