"""``predaudit alerts forward`` against a real Alertmanager (Debian prometheus-alertmanager) and
the Pub/Sub emulator: alerts appear with their labels, resolve (endsAt, a resolved
notification), malformed messages become alerts, an Alertmanager outage mid-stream loses
nothing, and SIGTERM while retrying exits cleanly without acking."""

from __future__ import annotations

import datetime as dt
import http.server
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from typing import Any

import pytest

from pipelines import localstack
from pipelines.alerts_forward import Forwarder
from pipelines.cli import main
from transforms.monitors.alerts import anomaly_event, pubsub_attributes

PROJECT = "predaudit-test"
ROOT = pathlib.Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)


class Hook(http.server.ThreadingHTTPServer):
    """Loopback receiver: Alertmanager's webhook notifications and the forwarder's CloudEvents."""

    def __init__(self) -> None:
        self.posts: dict[str, list[Any]] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.posts.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def got(self, path: str) -> list[Any]:
        with self.lock:
            return list(self.posts.get(path, []))


class Alertmanager:
    """One Alertmanager on loopback (temp config and storage); ``stop``/``start`` for outages."""

    def __init__(self, workdir: pathlib.Path, hook_url: str) -> None:
        self.exe = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if self.exe is None:
            raise RuntimeError("prometheus-alertmanager not installed: run tools/system_deps.sh")
        self.workdir, self.port = workdir, localstack.free_port()
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(
            "route:\n"
            "  receiver: hook\n"
            "  group_by: [alertname, model, version, signal, severity]\n"
            "  group_wait: 100ms\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: hook\n"
            "    webhook_configs:\n"
            f"      - url: {hook_url}/alertmanager\n"
            "        send_resolved: true\n"
        )
        self.svc: localstack.Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            self.exe,
            f"--config.file={self.config}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no gossip port
            "--log.level=warn",
        ]
        proc, log = localstack._spawn("alertmanager", cmd, self.workdir)
        self.svc = localstack.Service("alertmanager", proc, self.url, log)
        try:
            localstack.wait_until(
                lambda: localstack._http_up(self.url + "/-/ready"), 30, "alertmanager", proc
            )
        except (RuntimeError, TimeoutError):
            self.svc.stop()
            raise localstack.ServiceStartError(
                f"alertmanager did not start:\n{self.svc.log_tail()}"
            ) from None

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.stop()
            self.svc = None

    def alerts(self, **labels: str) -> list[dict]:
        """Active alerts whose labels include ``labels`` (GET /api/v2/alerts)."""
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as resp:
            got = json.loads(resp.read())
        return [a for a in got if all(a["labels"].get(k) == v for k, v in labels.items())]


@pytest.fixture(scope="session")
def hook() -> Hook:
    srv = Hook()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory, hook: Hook):
    am = Alertmanager(tmp_path_factory.mktemp("alertmanager"), hook.url)
    am.start()
    yield am
    am.stop()


@pytest.fixture()
def anomaly_topic(pubsub_emulator, monkeypatch):
    """A fresh anomaly topic and subscription: (publish(event or bytes), subscription, subscriber)."""
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.endpoint)
    tag = uuid.uuid4().hex[:8]
    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic, subscription = (
        f"projects/{PROJECT}/topics/anom-{tag}",
        f"projects/{PROJECT}/subscriptions/anom-{tag}",
    )
    pub.create_topic(name=topic)
    sub.create_subscription(request={"name": subscription, "topic": topic, "ack_deadline_seconds": 10})

    def publish(ev: dict | bytes) -> None:
        if isinstance(ev, bytes):
            pub.publish(topic, ev).result(timeout=30)
        else:
            pub.publish(topic, json.dumps(ev).encode(), **pubsub_attributes(ev)).result(timeout=30)

    yield publish, subscription, sub
    sub.delete_subscription(subscription=subscription)
    pub.delete_topic(topic=topic)
    sub.close()


def drift(model: str, severity: str, minute: int, signal: str = "amount", value: float = 0.31) -> dict:
    """An anomaly event as the drift monitor emits it, for window [minute-5, minute)."""
    return anomaly_event(
        model=model,
        version="v1",
        signal=signal,
        detector="psi",
        statistic=value,
        threshold=0.25 if severity == "critical" else 0.1,
        severity=severity,
        window_start=T0 + dt.timedelta(minutes=minute - 5),
        window_end=T0 + dt.timedelta(minutes=minute),
        sample_size=900,
        reference={"expected": [0.5, 0.5]},
        current={"proportions": [0.2, 0.8]},
    )


def await_true(check, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {timeout:.0f}s")


def forward(subscription: str, am: Alertmanager, *extra: str) -> str:
    out = io.StringIO()
    rc = main(
        ["alerts", "forward", "--subscription", subscription, "--alertmanager-url", am.url, "--once", *extra],
        out,
    )
    assert rc == 0, out.getvalue()
    return out.getvalue()


def test_alerts_appear_with_labels_and_annotations_then_resolve(alertmanager, hook, anomaly_topic) -> None:
    publish, subscription, subscriber = anomaly_topic
    model = f"m{uuid.uuid4().hex[:8]}"
    publish(drift(model, "warning", 10, value=0.12))
    publish(drift(model, "critical", 15))
    summary = forward(subscription, alertmanager, "--webhook-url", hook.url + f"/events/{model}")
    assert "forwarded 2 message(s) as 4 alert(s): 0 malformed" in summary, summary

    firing = await_true(lambda: alertmanager.alerts(model=model), 10, "alerts listed")
    # the escalation resolved the warning: only the critical alert is active
    assert [a["labels"] for a in firing] == [
        {
            "alertname": "predaudit_feature_drift",
            "model": model,
            "version": "v1",
            "signal": "amount",
            "detector": "psi",
            "severity": "critical",
        }
    ]
    (crit,) = firing
    assert crit["annotations"]["statistic"] == "0.31" and crit["annotations"]["threshold"] == "0.25"
    assert crit["annotations"]["window"] == "2026-03-01T00:10:00.000000Z .. 2026-03-01T00:15:00.000000Z"
    assert crit["startsAt"].startswith("2026-03-01T00:15:00")
    assert crit["status"]["state"] == "active"
    assert dt.datetime.fromisoformat(crit["endsAt"].replace("Z", "+00:00")) > dt.datetime.now(dt.timezone.utc)
    # the webhook got the CloudEvents as published
    events = hook.got(f"/events/{model}")
    assert [e["data"]["severity"] for e in events] == ["warning", "critical"]

    publish(drift(model, "resolved", 20, value=0.04))
    forward(subscription, alertmanager)
    await_true(lambda: not alertmanager.alerts(model=model), 10, "alert resolved")

    def resolved_notice() -> list[dict]:
        return [
            a
            for n in hook.got("/alertmanager")
            for a in n["alerts"]
            if a["labels"].get("model") == model
            and a["labels"]["severity"] == "critical"
            and a["status"] == "resolved"
        ]

    # Alertmanager itself routed the resolution to its receiver, with the event time as endsAt
    (notice,) = await_true(resolved_notice, 15, "resolved notification")[:1]
    assert notice["endsAt"].startswith("2026-03-01T00:20:00")
    # nothing left on the subscription: everything forwarded was acked
    assert not subscriber.pull(subscription=subscription, max_messages=10, timeout=2).received_messages


def test_malformed_messages_become_alerts_not_silent_acks(alertmanager, anomaly_topic) -> None:
    publish, subscription, _ = anomaly_topic
    tag = uuid.uuid4().hex[:6]
    publish(f"not json {tag}".encode())
    bad = drift("x", "warning", 10)
    del bad["data"]["signal"]
    bad["id"] = tag
    publish(json.dumps(bad).encode())
    summary = forward(subscription, alertmanager)
    assert "2 malformed" in summary, summary

    def mine() -> list[dict]:
        return [
            a
            for a in alertmanager.alerts(alertname="predaudit_malformed_anomaly")
            if tag in a["annotations"]["payload"]
        ]

    got = await_true(lambda: len(mine()) == 2 and mine(), 10, "malformed alerts")
    reasons = sorted(a["annotations"]["reason"] for a in got)
    assert reasons == ["$.data.signal: missing", "$: not JSON (Expecting value at char 0)"]


def test_alertmanager_outage_mid_stream_loses_nothing(alertmanager, anomaly_topic) -> None:
    publish, subscription, subscriber = anomaly_topic
    model = f"m{uuid.uuid4().hex[:8]}"
    signals = [f"f{i}" for i in range(6)]
    publish(drift(model, "warning", 10, signal=signals[0]))
    fwd = Forwarder(
        subscriber=subscriber,
        subscription=subscription,
        alertmanager_url=alertmanager.url,
        initial_backoff=0.2,
        max_backoff=1.0,
        ack_extension_s=10,
    )
    worker = threading.Thread(target=fwd.run, kwargs={"max_messages": len(signals), "pull_timeout": 2})
    worker.start()
    try:
        await_true(lambda: alertmanager.alerts(model=model), 20, "first alert before the outage")
        alertmanager.stop()
        for s in signals[1:]:
            publish(drift(model, "warning", 10, signal=s))
        await_true(lambda: fwd.stats.retries >= 2, 30, "the forwarder retrying during the outage")
        assert fwd.stats.messages == 1  # nothing acked while Alertmanager is down
    finally:
        if alertmanager.svc is None:
            alertmanager.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert fwd.stats.messages == len(signals)
    # Alertmanager keeps alerts in memory: the restart forgot the first one; every alert from
    # the outage arrived once it was back
    got = await_true(
        lambda: len(alertmanager.alerts(model=model)) >= 5 and alertmanager.alerts(model=model), 10, ""
    )
    assert sorted(a["labels"]["signal"] for a in got) == signals[1:]
    assert not subscriber.pull(subscription=subscription, max_messages=10, timeout=2).received_messages


def test_sigterm_while_retrying_exits_cleanly_and_acks_nothing(
    anomaly_topic, pubsub_emulator, tmp_path
) -> None:
    publish, subscription, subscriber = anomaly_topic
    dead = f"http://127.0.0.1:{localstack.free_port()}"  # nothing listens there
    publish(drift("sig", "critical", 10))
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_emulator.endpoint}
    log = tmp_path / "forward.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "alerts", "forward", "--subscription", subscription]
            + ["--alertmanager-url", dead, "--max-backoff", "1s"],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        await_true(lambda: "retry 2" in log.read_text(errors="replace"), 60, "retries logged")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "forwarded 0 message(s)" in text and "stopped" in text, text
    assert "Traceback" not in text, text
    # the message was given back (nack), not acked: it is delivered again
    msgs = await_true(
        lambda: subscriber.pull(subscription=subscription, max_messages=10, timeout=2).received_messages,
        20,
        "redelivery",
    )
    assert json.loads(msgs[0].message.data)["data"]["model"] == "sig"


def test_usage_errors_are_one_line(capsys) -> None:
    for argv, fix in [
        (["--subscription", "anomalies", "--alertmanager-url", "http://x:1"], "projects/P/subscriptions/S"),
        (["--subscription", "projects/p/subscriptions/s", "--alertmanager-url", "x:1"], "http(s)://"),
        (["--subscription", "projects/p/subscriptions/s"], "--alertmanager-url"),
    ]:
        assert main(["alerts", "forward", *argv], io.StringIO()) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fix in err, err


def test_a_missing_subscription_is_one_line_exit_2(pubsub_emulator, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.endpoint)  # main sets it from the flag
    sub = f"projects/{PROJECT}/subscriptions/none-{uuid.uuid4().hex[:6]}"
    argv = ["alerts", "forward", "--subscription", sub, "--alertmanager-url", "http://127.0.0.1:1", "--once"]
    assert main([*argv, "--pubsub-endpoint", pubsub_emulator.endpoint], io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot pull from {sub}" in err, err
