"""``predaudit demo`` on one core, and the DirectRunner patches it relies on.

The demo runs in a subprocess pinned to one CPU (as ``taskset -c 0 make demo``), with its own
Pub/Sub emulator and bqemulator (they inherit the pinning), and must pass its conservation
check per sink; the query its summary suggests must work once it has exited. The DirectRunner
patches are checked on their own: 500-message pulls through Beam's real Pub/Sub evaluator,
and counters committed for every bundle (the demo counts duplicates from them). A sink that
silently loses rows must make the demo fail (no progress), not pass.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream

from pipelines.common import DIRECT_RUNNER_PULL_MAX, patch_direct_runner_pubsub
from pipelines.demo import DemoStalled, stream_end_to_end
from tests.conftest import BQ_PROJECT
from transforms.metrics import counter

DEMO_EVENTS = 600


def _pin_to_one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def test_demo_passes_pinned_to_one_core(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("PUBSUB_EMULATOR_HOST", None)  # the demo starts its own emulators
    exe = pathlib.Path(sys.executable).with_name("predaudit")
    t0 = time.monotonic()
    # its own session, so a timeout also stops the emulators it started (no orphans)
    demo = subprocess.Popen(
        [str(exe), "demo", "--events", str(DEMO_EVENTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_pin_to_one_cpu,
        start_new_session=True,
    )
    try:
        # a safety net only: the demo fails by itself after 60 s without progress
        stdout, stderr = demo.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        stdout, stderr = demo.communicate()
        pytest.fail(f"the demo ran over 600 s\n{stdout[-3000:]}\n{stderr[-3000:]}")
    proc = subprocess.CompletedProcess(demo.args, demo.returncode, stdout, stderr)
    took = time.monotonic() - t0
    out = proc.stdout
    assert proc.returncode == 0, (
        f"exit {proc.returncode} after {took:.0f}s\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    )
    assert "Traceback" not in proc.stderr
    published = int(re.search(r"published (\d+) predictions", out).group(1))
    assert published > DEMO_EVENTS  # re-sent duplicates and malformed lines on top
    for sink in ("clickhouse", "bigquery"):
        line = re.search(
            rf"conservation in {sink}: (\d+) events in = (\d+) audit rows \+ (\d+) dead letters \+ (\d+) duplicates: OK",
            out,
        )
        assert line, out
        events_in, rows, dead, dups = map(int, line.groups())
        assert events_in == published == rows + dead + dups and dead > 0 and dups > 0
    assert "conservation: events in = audit rows + dead letters + duplicates: OK" in out
    assert "MISMATCH" not in out
    assert re.search(r"\d+\.\d rows/s", out)  # the progress line shows the rate
    report = re.search(r"^report: (\S+\.html) \(1 model\(s\), ([\d,]+) predictions", out, re.M)
    assert report and pathlib.Path(report.group(1)).is_file(), "make demo ends by writing the report"

    # the summary ends with where the data is and a query that works now that the demo exited
    tail = out[out.index("where the data is") :]
    chdb_dir = re.search(r"ClickHouse \(embedded chDB\): (\S+),", tail).group(1)
    assert pathlib.Path(chdb_dir).is_dir()
    assert re.search(r"dataset predaudit-demo\.audit; the demo stopped it", tail)
    bq_dir = re.search(r"its data is kept in (\S+);", tail).group(1)
    assert any(pathlib.Path(bq_dir).iterdir())
    lines = tail.splitlines()
    query = lines[next(i for i, ln in enumerate(lines) if ln.startswith("try")) + 1].strip()
    assert chdb_dir in query
    answer = subprocess.run(query, shell=True, capture_output=True, text=True, timeout=60, env=env)
    assert answer.returncode == 0, answer.stderr
    assert re.search(rf"│\s+{rows}\s+│", answer.stdout), answer.stdout  # the audit rows the summary counted


class _Applied:
    """Stands in for the AppliedPTransform: the evaluator only uses it as a (weak) cache key."""


def _read_evaluator(subscription: str):
    """Beam's real streaming Pub/Sub read evaluator, without the executor around it."""
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator

    ev = object.__new__(_PubSubReadEvaluator)
    ev._applied_ptransform = _Applied()
    ev._sub_name = subscription
    return ev


def test_direct_runner_pulls_up_to_500_per_bundle(pubsub_emulator, monkeypatch) -> None:
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.endpoint)
    tag = uuid.uuid4().hex[:8]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(BQ_PROJECT, f"pull-{tag}")
    sub = subscriber.subscription_path(BQ_PROJECT, f"pull-{tag}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    sent = 700
    for f in [publisher.publish(topic, f"m{i}".encode()) for i in range(sent)]:
        f.result(timeout=60)

    patch_direct_runner_pubsub(PipelineOptions(["--runner=DirectRunner"]))
    ev = _read_evaluator(sub)
    sizes, seen = [], []
    deadline = time.monotonic() + 60
    while len(seen) < sent and time.monotonic() < deadline:
        got = ev._read_from_pubsub(None)
        if got:
            sizes.append(len(got))
            seen += [m.data for _, m in got]
    # every message exactly once (Beam's evaluator acks each pull's ack ids right after it)
    assert sorted(seen) == sorted(f"m{i}".encode() for i in range(sent))
    assert 10 < max(sizes) <= DIRECT_RUNNER_PULL_MAX, sizes
    assert len(sizes) < sent / 10, sizes  # Beam's own 10-message read needs >= 70 bundles
    subscriber.delete_subscription(subscription=sub)
    publisher.delete_topic(topic=topic)


def test_direct_runner_commits_every_bundles_counters() -> None:
    """Streaming DirectRunner: 5 bundles of 10 count 50, not the first bundle's 10."""
    patch_direct_runner_pubsub(PipelineOptions(["--runner=DirectRunner"]))
    opts = PipelineOptions(["--runner=DirectRunner"])
    opts.view_as(StandardOptions).streaming = True
    stream = test_stream.TestStream()
    for b in range(5):
        stream = stream.add_elements(list(range(b * 10, b * 10 + 10)))
    name = f"test_seen_{uuid.uuid4().hex[:6]}"

    def seen(x: int) -> int:
        counter(name).inc()
        return x

    p = beam.Pipeline(options=opts)
    _ = p | stream | beam.Map(seen)
    result = p.run()
    result.wait_until_finish()
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    assert sum(c.committed for c in found) == 50


def test_a_sink_that_loses_rows_fails_the_demo(pubsub_emulator, bq_emulator, chdb_client, chdb_path) -> None:
    """ClickHouse ``predictions`` as ENGINE = Null accepts every insert and keeps nothing: the
    demo must not report success; it stops when nothing moved for ``stall_s`` and says what is
    missing."""
    from schemas.tables import TABLES, clickhouse_column_type

    db = f"lossy_{uuid.uuid4().hex[:8]}"
    chdb_client.command(f"CREATE DATABASE `{db}`")
    cols = ", ".join(f"`{c.name}` {clickhouse_column_type(c)}" for c in TABLES["predictions"].columns)
    chdb_client.command(f"CREATE TABLE `{db}`.predictions ({cols}) ENGINE = Null")
    t0 = time.monotonic()
    with pytest.raises(DemoStalled, match=r"nothing moved for 8s .*\(0 rows,"):
        stream_end_to_end(
            pubsub_emulator.endpoint,
            bq_emulator.endpoint,
            f"chdb://{chdb_path}",
            events=200,
            out=None,
            timeout=240,
            project=BQ_PROJECT,
            dataset=db,
            seed=11,
            stall_s=8,
        )
    assert time.monotonic() - t0 < 200
