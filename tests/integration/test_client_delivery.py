"""What producers' events become on the real Pub/Sub emulator, through the real sidecar.

The client library (``PredictionLogger``): a malformed event does not take its batch-mates
down, the sidecar's own rejections are neither lost nor resent, a sidecar that starts late
still gets everything. The KServe expiry sweeper: a lone half that breaks the contract is a
counted rejection and later lone halves are still published.
"""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import requests

from schemas import Limits
from sidecar.client import PredictionLogger
from sidecar.server import Sidecar, SidecarConfig
from tests.helpers import event

PROJECT = "predaudit-test"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def valid(i: int, prefix: str = "ev") -> dict[str, Any]:
    return event(event_id=f"{prefix}-{i:05d}-{uuid.uuid4().hex[:6]}", event_time=now_iso())


class Bus:
    """A fresh predictions topic and subscription on the emulator for one test."""

    def __init__(self) -> None:
        from google.cloud import pubsub_v1

        self.sub = pubsub_v1.SubscriberClient()
        suffix = uuid.uuid4().hex[:8]
        self.topic = f"predictions-{suffix}"
        self.subscription = f"projects/{PROJECT}/subscriptions/predictions-{suffix}"
        name = pubsub_v1.PublisherClient().create_topic(name=f"projects/{PROJECT}/topics/{self.topic}").name
        self.sub.create_subscription(request={"name": self.subscription, "topic": name})

    def pull(self, want: int, timeout: float = 30.0, quiet: float = 1.0) -> list[dict]:
        """Pull (and ack) until ``want`` messages arrived and then ``quiet`` s passed with none."""
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        quiet_until = None
        while time.monotonic() < deadline:
            msgs = self.sub.pull(
                subscription=self.subscription, max_messages=1000, timeout=2
            ).received_messages
            if msgs:
                self.sub.acknowledge(subscription=self.subscription, ack_ids=[m.ack_id for m in msgs])
                got += [orjson.loads(m.message.data) for m in msgs]
                quiet_until = None
            if len(got) >= want:
                quiet_until = quiet_until or time.monotonic() + quiet
                if time.monotonic() >= quiet_until:
                    break
        return got


@pytest.fixture()
def bus(pubsub_emulator, monkeypatch) -> Bus:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.endpoint)
    assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_emulator.endpoint
    return Bus()


@pytest.fixture()
def start_sidecar(tmp_path: pathlib.Path) -> Iterator[Callable[..., Sidecar]]:
    started: list[Sidecar] = []

    def start(bus: Bus, **kw: Any) -> Sidecar:
        cfg = SidecarConfig(
            project=PROJECT,
            predictions_topic=bus.topic,
            spool_dir=str(tmp_path / f"spool-{len(started)}"),
            **{"port": 0, **kw},
        )
        started.append(Sidecar(cfg).start())
        return started[-1]

    yield start
    for sc in started:
        sc.stop(0)


def base(sc: Sidecar) -> str:
    return f"http://127.0.0.1:{sc.port}"


def metric(sc: Sidecar, name: str, **labels: str) -> float:
    """Sum of the sidecar's ``name`` samples whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(base(sc) + "/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def ids(events: list[dict]) -> list[str]:
    return sorted(e["event_id"] for e in events)


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- the client library ----------------------------------------------------------------------
def test_a_malformed_event_does_not_take_its_batch_mates_down(bus: Bus, start_sidecar) -> None:
    sc = start_sidecar(bus)
    logger = PredictionLogger(base(sc), linger_s=0.2)
    good = [valid(i) for i in range(3)]
    no_prediction = valid(7)
    del no_prediction["prediction"]
    for item in [good[0], b"{not json", good[1], no_prediction, good[2]]:
        assert logger.log(item)
    assert logger.close(10)
    assert ids(bus.pull(want=3)) == ids(good)
    s = logger.stats()
    assert (s["sent"], s["failed"], s["pending"]) == (3, 0, 0)
    assert s["rejected_by_code"] == {"invalid_json": 1, "missing_field": 1}


def test_the_sidecars_own_rejections_are_not_resent_and_the_rest_is_published_once(
    bus: Bus, start_sidecar
) -> None:
    # The sidecar enforces a stricter limit than the client's default contract check.
    sc = start_sidecar(bus, limits=Limits(max_string_length=40))
    logger = PredictionLogger(base(sc), linger_s=0.2)
    events = [valid(i) for i in range(10)]
    for i in (2, 6):
        events[i]["features"]["merchant_category"] = "x" * 100
    for e in events:
        logger.log(e)
    assert logger.close(10)
    wanted = [e for i, e in enumerate(events) if i not in (2, 6)]
    got = bus.pull(want=8, quiet=1.5)
    assert ids(got) == ids(wanted)  # each once: nothing lost, nothing published twice
    s = logger.stats()
    assert (s["sent"], s["rejected_by_code"], s["failed"]) == (8, {"string_too_long": 2}, 0)
    assert metric(sc, "predaudit_sidecar_accepted_total", kind="prediction") == 8


def test_a_sidecar_that_starts_late_still_gets_every_event(bus: Bus, start_sidecar) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    logger = PredictionLogger(f"http://127.0.0.1:{port}", max_backoff_s=0.2)
    events = [valid(i) for i in range(20)]
    for e in events:
        logger.log(e)
    wait_for(lambda: logger.stats()["errors"] >= 2, what="connection errors while the sidecar is down")
    start_sidecar(bus, port=port)
    assert logger.flush(30)
    assert ids(bus.pull(want=20)) == ids(events)
    s = logger.stats()
    assert (s["sent"], s["failed"], s["rejected"]) == (20, 0, 0)
    logger.close(1)


# -- the KServe expiry sweeper -----------------------------------------------------------------
MAPPING = """
ttl_s: 1.0
services:
  - inferenceservice: fraud-detector
    model: fraud
    version: "3"
    features: [amount, merchant_category]
    output: {field: score}
"""


def lone_request(sc: Sidecar, ce_id: str, body: dict, half: str = "request") -> requests.Response:
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    attrs = {
        "type": f"org.kubeflow.serving.inference.{half}",
        "source": "http://localhost:9081/",
        "id": ce_id,
        "inferenceservicename": "fraud-detector",
        "namespace": "prod",
        "time": now_iso(),
    }
    headers, data = to_binary(CloudEvent(attrs, body))
    return requests.post(base(sc) + "/", data=data, headers={**headers, "Content-Type": "application/json"})


def test_a_lone_half_that_breaks_the_contract_does_not_stop_the_sweeper(
    bus: Bus, start_sidecar, tmp_path: pathlib.Path
) -> None:
    mapping = tmp_path / "kserve.yaml"
    mapping.write_text(MAPPING)
    sc = start_sidecar(bus, kserve_mapping=str(mapping))
    # an instance given as an object passes the join, but a nested object is no feature value
    bad = lone_request(sc, "bad-0001", {"instances": [{"amount": {"value": 3, "currency": "EUR"}}]})
    good = lone_request(sc, "good-0001", {"instances": [[12.5, "grocery"]]})
    assert (bad.status_code, good.status_code) == (202, 202)
    odd = lone_request(sc, "odd-0001", {"inputs": [{"name": "x", "shape": [1, "2"], "data": [1, 2]}]})
    assert odd.status_code == 202  # kept until the TTL: a lone request is mapped then
    # the same body as the pair of a response is mapped at once: a 400 with its code, not a 500
    assert lone_request(sc, "odd-0002", {"predictions": [0.4]}, half="response").status_code == 202
    r = lone_request(sc, "odd-0002", {"inputs": [{"name": "x", "shape": [1, "2"], "data": [1, 2]}]})
    assert (r.status_code, r.json()["rejected"][0]["code"]) == (400, "kserve_bad_body")
    got = {e["metadata"]["ce_id"]: e for e in bus.pull(want=2, quiet=1.5)}  # after the TTL
    assert sorted(got) == ["good-0001", "odd-0002"]  # the bad halves are not published
    first = got["good-0001"]
    assert first["metadata"]["predaudit_unpaired"] == "request"
    assert first["features"] == {"amount": 12.5, "merchant_category": "grocery"}
    assert metric(sc, "predaudit_sidecar_rejected_total", code="wrong_type") == 1
    assert metric(sc, "predaudit_sidecar_rejected_total", code="kserve_bad_body") == 2

    # the sweeper is still alive: a later lone half is published too
    assert lone_request(sc, "later-0002", {"instances": [[3.0, "travel"]]}).status_code == 202
    (later,) = bus.pull(want=1)
    assert later["metadata"]["ce_id"] == "later-0002"
    assert metric(sc, "predaudit_sidecar_kserve_unpaired_total") == 5
    assert sc.joiner is not None and sc.joiner.pending == 0
