"""``make demo``: the streaming pipeline end to end on the real local components.

Starts the Pub/Sub emulator and bqemulator on free loopback ports (ClickHouse is embedded
through chDB), provisions topics, subscriptions and tables, runs the streaming pipeline on
the DirectRunner in this process, publishes simulated predictions (with malformed events,
duplicates and labels), waits until every one is accounted for, prints a summary and stops
everything it started -- also on Ctrl-C and on failure.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import pathlib
import secrets
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import IO

import apache_beam as beam

from pipelines import localstack
from pipelines.audit_pipeline import build, streaming_options
from pipelines.common import patch_direct_runner_pubsub
from pipelines.provision import PubSubNames, provision_bigquery, provision_clickhouse, provision_pubsub
from schemas import Decoders
from schemas.simulate import BAD_KINDS, SimConfig, Simulator
from schemas.specs import load_specs
from sidecar.attributes import pubsub_attributes
from transforms.sinks.bigquery import bigquery_client

PROJECT = "predaudit-demo"
SPECS = pathlib.Path(__file__).resolve().parent.parent / "schemas" / "models"


def publish(topic: str, payloads: Iterable[bytes], kind: str = "prediction") -> int:
    """Publish payloads with attributes from validated events; returns how many were published."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    dec = Decoders()
    futures = [publisher.publish(topic, raw, **pubsub_attributes(raw, kind, dec)) for raw in payloads]
    for f in futures:
        f.result(timeout=60)
    return len(futures)


def wait_for(check, timeout: float, out: IO[str] | None, what: str) -> None:
    """Poll ``check() -> (done, progress text)``; a progress line while waiting."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        done, text = check()
        if out is not None and text != last:
            out.write(f"\r  waiting for {what}: {text}   ")
            out.flush()
            last = text
        if done:
            if out is not None:
                out.write("\n")
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not reached after {timeout:.0f}s (last: {last})")


def run_demo(events: int = 3000, out: IO[str] = sys.stdout, timeout: float = 240.0) -> int:
    work = pathlib.Path(tempfile.mkdtemp(prefix="predaudit-demo-"))
    os.environ.setdefault("PREDAUDIT_PII_KEY", secrets.token_hex(16))  # a throwaway key for the demo only
    out.write(f"predaudit demo: starting Pub/Sub emulator and bqemulator (logs in {work})\n")
    with localstack.services(
        lambda: localstack.start_pubsub_emulator(work),
        lambda: localstack.start_bqemulator(PROJECT, work),
    ) as (pubsub, bq):
        summary = stream_end_to_end(
            pubsub.endpoint, bq.endpoint, f"chdb://{work / 'chdb'}", events, out, timeout
        )
    return 0 if summary["conserved"] else 1


def stream_end_to_end(
    pubsub_host: str,
    bq_endpoint: str,
    clickhouse_dsn: str,
    events: int,
    out: IO[str] | None,
    timeout: float,
    project: str = PROJECT,
    dataset: str = "audit",
    seed: int = 42,
    window_s: int = 60,
) -> dict:
    """Provision, run the streaming pipeline in this process, publish, wait, report.

    The ClickHouse store is read from this process, which runs the pipeline (a chDB path is
    locked by the process that opened it).
    """
    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub_host
    names = PubSubNames(
        project,
        predictions_topic=f"predictions-{seed}",
        labels_topic=f"labels-{seed}",
        dead_letters_topic=f"dead-letters-{seed}",
        predictions_subscription=f"predictions-audit-{seed}",
        labels_subscription=f"labels-audit-{seed}",
    )
    provision_pubsub(names)
    provision_bigquery(project, dataset, bq_endpoint)
    ch = provision_clickhouse(clickhouse_dsn, dataset)
    refs = pathlib.Path(tempfile.mkdtemp(prefix="predaudit-refs-"))
    _write_reference(refs / "fraud.json")
    opts = streaming_options(
        [
            f"--references={refs}",
            f"--monitor_window_s={window_s}",
            f"--anomaly_topic={names.topic(names.anomalies_topic)}",
            f"--predictions_subscription={names.subscription(names.predictions_subscription)}",
            f"--labels_subscription={names.subscription(names.labels_subscription)}",
            f"--dead_letter_topic={names.topic(names.dead_letters_topic)}",
            "--sinks=bigquery,clickhouse",
            f"--bq_project={project}",
            f"--bq_dataset={dataset}",
            f"--bq_endpoint={bq_endpoint}",
            f"--clickhouse_dsn={clickhouse_dsn}",
            f"--clickhouse_database={dataset}",
            f"--model_specs={SPECS}",
        ]
    )
    patch_direct_runner_pubsub(opts)
    p = beam.Pipeline(options=opts)
    build(p, opts)
    result = p.run()
    try:
        return _drive(events, names, ch, project, dataset, bq_endpoint, out, timeout, seed, window_s)
    finally:
        result.cancel()


def _write_reference(path: pathlib.Path) -> None:
    """The demo model's reference: 5,000 clean simulated events (``predaudit reference build``)."""
    import orjson

    from transforms.monitors.reference import build_reference

    spec = load_specs(SPECS)["fraud"]
    dec = Decoders()
    events = (dec.prediction(ln.raw)[0] for ln in Simulator(spec, SimConfig(events=5000, seed=1)).lines())
    path.write_bytes(orjson.dumps(build_reference(events, spec, spec.versions[0])))


def _drive(events, names, ch, project, dataset, bq_endpoint, out, timeout, seed, window_s) -> dict:
    # a live stream: event times are "now" (a demo driver may read the clock; transforms never do)
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    cfg = SimConfig(
        events=events,
        seed=seed,
        start=start,
        rate_per_s=events / 240,
        bad_fraction=0.03,
        duplicate_fraction=0.03,
        label_fraction=0.3,
        quality_fraction=0.02,
        # the second half drifts: "amount" shifts by one standard deviation
        drift_at=events // 2,
        drift_feature="amount",
        drift_shift=1.0,
    )
    lines = list(Simulator(load_specs(SPECS)["fraud"], cfg).lines())
    kinds = collections.Counter(ln.kind for ln in lines)
    unique = len({ln.event_id for ln in lines if ln.kind == "ok"})
    bad = sum(n for k, n in kinds.items() if k in BAD_KINDS)
    labels = [ln.label for ln in lines if ln.label]
    t0 = time.monotonic()
    sent = publish(names.topic(names.predictions_topic), (ln.raw for ln in lines))
    sent_labels = publish(names.topic(names.labels_topic), labels, "label")
    say = out.write if out is not None else (lambda text: None)
    say(
        f"published {sent} predictions ({unique} distinct, {kinds['duplicate']} re-sent duplicates, "
        f"{bad} malformed) and {sent_labels} labels\n"
    )

    def count(table: str) -> int:
        return int(ch.command(f"SELECT count() FROM `{dataset}`.{table}"))

    drift_from = start + dt.timedelta(seconds=(events // 2) / cfg.rate_per_s)

    def progress() -> tuple[bool, str]:
        got = {t: count(t) for t in ("predictions", "dead_letters", "labels", "anomalies")}
        done = got["predictions"] >= unique and got["dead_letters"] >= bad and got["labels"] >= len(labels)
        if events >= 2000:  # enough events per window for the monitors: wait for the drift alert too
            done = done and got["anomalies"] > 0
        text = (
            f"{got['predictions']}/{unique} rows, {got['dead_letters']}/{bad} dead letters, "
            f"{got['labels']}/{len(labels)} labels, {got['anomalies']} anomalies"
        )
        return done, text

    wait_for(progress, timeout, out, "the pipeline")
    elapsed = time.monotonic() - t0
    bq = bigquery_client(project, bq_endpoint)
    summary = {
        "published": sent,
        "distinct": unique,
        "malformed": bad,
        "bigquery_rows": next(
            iter(bq.query(f"SELECT count(*) AS n FROM `{project}.{dataset}.predictions`").result())
        ).n,
        "clickhouse_rows": count("predictions"),
        "labels": count("labels"),
        "quality_rows": int(
            ch.command(f"SELECT countIf(notEmpty(quality_issues)) FROM `{dataset}`.predictions")
        ),
        "dead_letters": dict(
            ch.query(
                f"SELECT error_code, count() FROM `{dataset}`.dead_letters GROUP BY error_code"
            ).result_rows
        ),
        "seconds": elapsed,
    }
    summary["duplicates_collapsed"] = sent - bad - summary["clickhouse_rows"]
    rows = ch.query(
        f"SELECT signal, detector, severity, round(statistic, 3), window_start, window_end "
        f"FROM `{dataset}`.anomalies FINAL ORDER BY window_end, signal"
    ).result_rows
    summary["windows"] = int(ch.command(f"SELECT uniqExact(window_start) FROM `{dataset}`.drift_metrics"))

    def utc(t: dt.datetime) -> dt.datetime:
        return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)  # chDB returns naive UTC

    summary["anomalies"] = [(sig, det, sev, stat, utc(ws), utc(we)) for sig, det, sev, stat, ws, we in rows]
    # an alert is on clean data when all the evidence it used ends before the drift starts
    summary["clean_window_alerts"] = sum(1 for a in summary["anomalies"] if a[5] <= drift_from)
    summary["conserved"] = (
        summary["bigquery_rows"] == summary["clickhouse_rows"] == unique
        and sum(summary["dead_letters"].values()) == bad
    )
    say("\nsummary\n")
    for label, key in (
        ("events published", "published"),
        ("audit rows in BigQuery", "bigquery_rows"),
        ("audit rows in ClickHouse", "clickhouse_rows"),
        ("duplicates collapsed", "duplicates_collapsed"),
        ("rows with quality issues", "quality_rows"),
        ("labels", "labels"),
    ):
        say(f"  {label:<26}{summary[key]}\n")
    say(f"  {'dead letters':<26}{sum(summary['dead_letters'].values())}\n")
    for code, n in sorted(summary["dead_letters"].items(), key=lambda kv: -kv[1]):
        say(f"    {code:<24}{n}\n")
    say(
        f"  drift windows computed      {summary['windows']} (window {window_s}s; 'amount' shifted by 1 sd from {drift_from:%H:%M:%S})\n"
    )
    for signal, det, sev, stat, _, wend in summary["anomalies"]:
        say(f"    anomaly: {signal:<18}{det:<6}{sev:<10}statistic {stat:<10}at {wend:%H:%M:%S}\n")
    say(f"  alerts on clean data        {summary['clean_window_alerts']}\n")
    say(f"  processed in {elapsed:.1f}s ({sent / elapsed:.0f} events/s on the DirectRunner)\n")
    say(
        "conservation: events in = audit rows + dead letters + duplicates: "
        + ("OK\n" if summary["conserved"] else "MISMATCH\n")
    )
    return summary
