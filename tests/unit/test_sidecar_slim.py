"""The sidecar and the client library run without the pipeline's packages (``predaudit[sidecar]``).

A subprocess whose import system refuses apache_beam, river, chdb, clickhouse_connect, numpy,
duckdb and google.cloud.bigquery (what the ``pipeline`` extra and the dev tools bring) starts the
sidecar, logs events through ``PredictionLogger`` and checks they reach the real Pub/Sub emulator;
``predaudit sidecar --help`` works there too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

from tests.helpers import event

PROJECT = "predaudit-test"
BLOCKED = ("apache_beam", "river", "chdb", "clickhouse_connect", "numpy", "duckdb", "google.cloud.bigquery")

BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys
    BLOCKED = {BLOCKED!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"blocked in the slim sidecar test: {{name}}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)

SIDECAR = textwrap.dedent(
    """
    import json, sys, tempfile
    from sidecar.client import PredictionLogger
    from sidecar.server import Sidecar, SidecarConfig

    events = json.loads(sys.argv[1])
    with tempfile.TemporaryDirectory() as spool:
        cfg = SidecarConfig(port=0, project=sys.argv[2], predictions_topic=sys.argv[3],
                            labels_topic=sys.argv[4], spool_dir=spool)
        sc = Sidecar(cfg).start()
        try:
            logger = PredictionLogger(f"http://127.0.0.1:{sc.port}")
            assert all(logger.log(ev) for ev in events)
            assert logger.close(60), logger.stats()
            stats = logger.stats()
        finally:
            sc.stop(30)
    loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
    print(json.dumps({"sent": stats["sent"], "loaded": loaded, "stats": stats}))
    """
)


def run_blocked(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def test_the_blocker_blocks() -> None:
    """Planted: the pipeline's module imports apache_beam, so it must fail in this environment."""
    r = run_blocked("import pipelines.audit_pipeline")
    assert r.returncode != 0 and "blocked in the slim sidecar test: apache_beam" in r.stderr


def test_sidecar_cli_help_without_beam() -> None:
    r = run_blocked("import runpy, sys; sys.argv = ['predaudit', 'sidecar', '--help']; "
                    "runpy.run_module('pipelines.cli', run_name='__main__')")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "--predictions-topic" in r.stdout


def test_sidecar_and_client_deliver_without_beam(pubsub_emulator) -> None:
    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub_emulator.endpoint
    from google.cloud import pubsub_v1

    suffix = uuid.uuid4().hex[:8]
    pub, sub = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topics = {k: f"{k}-slim-{suffix}" for k in ("predictions", "labels")}
    subscription = f"projects/{PROJECT}/subscriptions/predictions-slim-{suffix}"
    for t in topics.values():
        pub.create_topic(name=f"projects/{PROJECT}/topics/{t}")
    sub.create_subscription(name=subscription, topic=f"projects/{PROJECT}/topics/{topics['predictions']}")
    now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    events = [event(event_id=f"slim-{suffix}-{i}", event_time=now) for i in range(5)]
    r = run_blocked(
        SIDECAR,
        json.dumps(events),
        PROJECT,
        topics["predictions"],
        topics["labels"],
        env={"PUBSUB_EMULATOR_HOST": pubsub_emulator.endpoint},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["sent"], out["loaded"]) == (5, []), out["stats"]
    got: set[str] = set()
    deadline = time.monotonic() + 60
    while len(got) < 5 and time.monotonic() < deadline:
        resp = sub.pull(subscription=subscription, max_messages=100, timeout=5)
        if resp.received_messages:
            sub.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in resp.received_messages])
        got |= {m.message.attributes["event_id"] for m in resp.received_messages}
    assert got == {ev["event_id"] for ev in events}
