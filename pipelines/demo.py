"""``make demo``: the streaming pipeline end to end on the real local components.

Starts the Pub/Sub emulator and bqemulator on free loopback ports (ClickHouse is embedded
through chDB), provisions topics, subscriptions and tables, runs the streaming pipeline on
the DirectRunner in this process, publishes simulated predictions (with malformed events,
duplicates and labels), waits until every one is accounted for, prints a summary and stops
everything it started -- also on Ctrl-C and on failure.

The wait has no fixed total: it fails only when nothing moved for ``stall_s`` seconds, so a
slow machine is slow, not failed. The verdict is the conservation law, counted from what the
tables hold and the pipeline's duplicate counters: events in = audit rows + dead letters +
duplicates collapsed, in each sink. Exit 0 when it holds, 1 when it does not or the pipeline
stalled.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import os
import pathlib
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
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
from transforms.metrics import NAMESPACE
from transforms.sinks.bigquery import bigquery_client

PROJECT = "predaudit-demo"
SPECS = pathlib.Path(__file__).resolve().parent.parent / "schemas" / "models"
STALL_S = 60.0
"""The demo fails when nothing moved (rows, dead letters, labels, duplicates) for this long."""
SINKS = ("bigquery", "clickhouse")


class DemoStalled(RuntimeError):
    """Nothing moved for the stall timeout (or the optional total timeout passed)."""


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
    """Poll ``check() -> (done, progress text)`` for at most ``timeout`` s; a progress line while waiting."""
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


@dataclasses.dataclass(frozen=True)
class Progress:
    """One poll of the pipeline: finished?, a count that grows while anything moves, rows so far."""

    done: bool
    moved: int
    rows: int
    text: str


class RateMeter:
    """Rows per second over the last ``window_s`` seconds of samples.

    >>> m = RateMeter(window_s=10)
    >>> m.add(0.0, 0); m.add(5.0, 100); round(m.rate(), 1)
    20.0
    >>> m.add(20.0, 100); m.rate()  # nothing in the last 10 s
    0.0
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, t: float, rows: int) -> None:
        self._samples.append((t, rows))
        # keep one sample at or before the window start, so the rate spans the whole window
        while len(self._samples) > 2 and self._samples[1][0] <= t - self.window_s:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, r0), (t1, r1) = self._samples[0], self._samples[-1]
        return (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0


def wait_for_progress(
    check: Callable[[], Progress],
    stall_s: float,
    out: IO[str] | None,
    what: str,
    total_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = 1.0,
) -> float:
    """Poll ``check`` until done; fail only when ``moved`` stayed the same for ``stall_s`` s.

    A slow machine makes slow progress, which is not a failure; nothing moving is. ``total_s``
    optionally caps the whole wait (tests). The progress line shows rows/s; on a terminal it is
    rewritten in place, elsewhere (CI logs) printed every 10 s. Returns the seconds waited.

    >>> t = [0.0]
    >>> tick = dict(clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
    >>> slow = iter(Progress(n == 200, n, n, f"{n} rows") for n in range(201))  # 1 row/s, 200 s
    >>> wait_for_progress(lambda: next(slow), 3, None, "x", **tick)
    200.0
    >>> stuck = iter([Progress(False, 5, 5, "5 rows")] * 99)
    >>> wait_for_progress(lambda: next(stuck), 3, None, "x", **tick)
    Traceback (most recent call last):
    ...
    pipelines.demo.DemoStalled: x: nothing moved for 3s (last: 5 rows, 0.0 rows/s)
    """
    start = clock()
    last_move, last_moved, meter = start, None, RateMeter()
    tty = out is not None and out.isatty()
    last_text, last_print = "", start - 10.0
    while True:
        now = clock()
        p = check()
        meter.add(now, p.rows)
        if p.moved != last_moved:
            last_moved, last_move = p.moved, now
        text = f"{p.text}, {meter.rate():.1f} rows/s"
        if out is not None and (p.done or (tty and text != last_text) or now - last_print >= 10.0):
            out.write(f"\r  waiting for {what}: {text}   " if tty else f"  {what}: {text}\n")
            out.flush()
            last_text, last_print = text, now
        if p.done:
            if tty:
                out.write("\n")
            return now - start
        if now - last_move >= stall_s:
            raise DemoStalled(f"{what}: nothing moved for {stall_s:.0f}s (last: {text})")
        if total_s is not None and now - start >= total_s:
            raise DemoStalled(f"{what}: not finished after {total_s:.0f}s (last: {text})")
        sleep(poll_s)


def conservation(events_in: int, rows: int, dead_letters: int, duplicates: int) -> bool:
    """The audit's conservation law: every event in is a row, a dead letter or a counted duplicate.

    >>> conservation(100, 90, 7, 3), conservation(100, 89, 7, 3), conservation(100, 91, 7, 3)
    (True, False, False)
    """
    return events_in == rows + dead_letters + duplicates


def run_demo(
    events: int = 3000,
    out: IO[str] = sys.stdout,
    stall_s: float = STALL_S,
    err: IO[str] = sys.stderr,
) -> int:
    """The whole demo: start the emulators, stream, summarise, stop them; 0 when conserved."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="predaudit-demo-"))
    os.environ.setdefault("PREDAUDIT_PII_KEY", secrets.token_hex(16))  # a throwaway key for the demo only
    chdb_dir, bq_dir = work / "chdb", work / "bigquery"
    out.write(f"predaudit demo: starting Pub/Sub emulator and bqemulator (logs in {work})\n")
    out.flush()
    try:
        with localstack.services(
            lambda: localstack.start_pubsub_emulator(work),
            lambda: localstack.start_bqemulator(PROJECT, work, data_dir=bq_dir),
        ) as (pubsub, bq):
            summary = stream_end_to_end(
                pubsub.endpoint,
                bq.endpoint,
                f"chdb://{chdb_dir}",
                events,
                out,
                stall_s=stall_s,
                bq_write_endpoint=bq.grpc_endpoint,
            )
            bq_endpoint = bq.endpoint
        # the report reads chDB from this process, which holds the directory's lock
        from pipelines.report import write_local_report

        report_line = write_local_report(f"chdb://{chdb_dir}", "audit", work / "report.html")
    except (DemoStalled, localstack.ServiceStartError) as exc:
        err.write(f"predaudit demo: error: {exc}; logs in {work}\n")
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the emulators were stopped by the context manager
        err.write(f"predaudit demo: interrupted; logs in {work}\n")
        return 130
    out.write(where_the_data_is(chdb_dir, bq_dir, bq_endpoint, PROJECT, "audit"))
    out.write(report_line)
    return 0 if summary["conserved"] else 1


def chdb_query_command(chdb_dir: pathlib.Path, sql: str) -> str:
    """A shell one-liner that queries the demo's chDB store (after the demo has exited).

    >>> chdb_query_command(pathlib.Path("/tmp/d/chdb"), "SELECT 1")  # doctest: +ELLIPSIS
    '.../python -c \\'import chdb; print(chdb.query("SELECT 1", "PrettyCompact", path="/tmp/d/chdb"))\\''
    """
    code = f"import chdb; print(chdb.query({_dq(sql)}, {_dq('PrettyCompact')}, path={_dq(str(chdb_dir))}))"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def _dq(text: str) -> str:
    """A Python string literal in double quotes (the one-liner sits in single shell quotes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


TRY_SQL = (
    "SELECT model_version, count() AS audit_rows, countIf(notEmpty(quality_issues)) AS with_quality_issues, "
    "min(event_time) AS first, max(event_time) AS last FROM audit.predictions GROUP BY model_version"
)


def where_the_data_is(
    chdb_dir: pathlib.Path, bq_dir: pathlib.Path, bq_endpoint: str, project: str, dataset: str
) -> str:
    """The summary's last lines: where each sink's data is, and one query that works now."""
    exe = shlex.quote(str(pathlib.Path(sys.executable).with_name("bqemulator")))
    return (
        "\nwhere the data is\n"
        f"  ClickHouse (embedded chDB): {chdb_dir}, database {dataset} "
        "(tables predictions, labels, dead_letters, anomalies, drift_metrics)\n"
        f"  BigQuery (bqemulator): ran at {bq_endpoint}, dataset {project}.{dataset}; the demo stopped it,\n"
        f"    its data is kept in {bq_dir}; to query it again:\n"
        f"    {exe} start --persistent --data-dir {shlex.quote(str(bq_dir))} --project {project} --rest-port 9050\n"
        "try it once the demo has exited (until then this process holds the chDB directory's lock):\n"
        f"  {chdb_query_command(chdb_dir, TRY_SQL)}\n"
    )


def stream_end_to_end(
    pubsub_host: str,
    bq_endpoint: str,
    clickhouse_dsn: str,
    events: int,
    out: IO[str] | None,
    timeout: float | None = None,
    project: str = PROJECT,
    dataset: str = "audit",
    seed: int = 42,
    window_s: int = 60,
    stall_s: float = STALL_S,
    bq_write_endpoint: str = "",
) -> dict:
    """Provision, run the streaming pipeline in this process, publish, wait, report.

    ``bq_write_endpoint`` (bqemulator's gRPC port) makes the BigQuery sink write through the
    Storage Write API, its default path; empty = the emulator's legacy insertAll.

    Waits until every event is accounted for; fails (DemoStalled) when nothing moved for
    ``stall_s`` seconds, or after ``timeout`` seconds in all when one is given. The
    ClickHouse store is read from this process, which runs the pipeline (a chDB path is
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
            f"--sinks={','.join(SINKS)}",
            f"--bq_project={project}",
            f"--bq_dataset={dataset}",
            f"--bq_endpoint={bq_endpoint}",
            *([f"--bq_write_endpoint={bq_write_endpoint}"] if bq_write_endpoint else []),
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
        return _drive(
            events, names, ch, project, dataset, bq_endpoint, out, timeout, stall_s, seed, window_s, result
        )
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


def _counter(result, name: str) -> int:
    """A pipeline counter's committed value (the DirectRunner commits them per finished bundle)."""
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    return int(sum(r.committed or 0 for r in found))


class _Tables:
    """Counts in one sink's tables: the side of the conservation law the sink actually holds."""

    def __init__(self, sink: str, ch, bq, project: str, dataset: str) -> None:
        self.sink, self._ch, self._bq, self._where = (
            sink,
            ch,
            bq,
            f"`{project}.{dataset}`" if bq else f"`{dataset}`",
        )

    def _rows(self, sql: str) -> list[tuple]:
        if self._bq is not None:
            return [tuple(r.values()) for r in self._bq.query(sql).result()]
        return [tuple(r) for r in self._ch.query(sql).result_rows]

    def count(self, table: str) -> int:
        return int(self._rows(f"SELECT count(*) FROM {self._where}.{table}")[0][0])

    def dead_letters(self) -> dict[tuple[str, str, str], int]:
        """Dead letters by (kind, stage, code)."""
        rows = self._rows(
            f"SELECT kind, stage, error_code, count(*) FROM {self._where}.dead_letters "
            "GROUP BY kind, stage, error_code"
        )
        return {(k, s, c): int(n) for k, s, c, n in rows}

    def accounted(self, duplicates: int, label_duplicates: int) -> dict:
        """Rows, dead letters and duplicates of predictions and labels, as this sink holds them."""
        dl = self.dead_letters()
        own_stage = f"sink.{self.sink}"
        pred_dl = sum(
            n for (k, s, _), n in dl.items() if k == "prediction" or (k == "row" and s == own_stage)
        )
        label_dl = sum(n for (k, _, _), n in dl.items() if k == "label")
        rows, labels = self.count("predictions"), self.count("labels")
        return {
            "rows": rows,
            "labels": labels,
            "dead_letters": dl,
            "predictions_accounted": rows + pred_dl + duplicates,
            "prediction_dead_letters": pred_dl,
            "labels_accounted": labels + label_dl + label_duplicates,
            "label_dead_letters": label_dl,
        }


def _drive(
    events, names, ch, project, dataset, bq_endpoint, out, timeout, stall_s, seed, window_s, result
) -> dict:
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
    if out is not None:
        out.flush()

    bq = bigquery_client(project, bq_endpoint)
    sinks = {"clickhouse": _Tables("clickhouse", ch, None, project, dataset)}
    sinks["bigquery"] = _Tables("bigquery", None, bq, project, dataset)

    def duplicates() -> tuple[int, int]:
        return _counter(result, "predictions_duplicates"), _counter(result, "labels_duplicates")

    def anomalies() -> int:
        return int(ch.command(f"SELECT count() FROM `{dataset}`.anomalies"))

    def progress(sink: str) -> Callable[[], Progress]:
        def check() -> Progress:
            dups, label_dups = duplicates()
            a = sinks[sink].accounted(dups, label_dups)
            n_anom = anomalies()
            done = a["predictions_accounted"] >= sent and a["labels_accounted"] >= sent_labels
            text = (
                f"{a['predictions_accounted']}/{sent} predictions accounted ({a['rows']} rows, "
                f"{a['prediction_dead_letters']} dead letters, {dups} duplicates), "
                f"{a['labels_accounted']}/{sent_labels} labels, {n_anom} anomalies"
            )
            moved = a["predictions_accounted"] + a["labels_accounted"] + n_anom
            return Progress(done, moved, a["rows"], text)

        return check

    def left(total: float | None) -> float | None:
        return None if total is None else max(0.0, total - (time.monotonic() - t0))

    wait_for_progress(progress("clickhouse"), stall_s, out, "the pipeline", total_s=timeout)
    # the BigQuery sink runs beside the ClickHouse one: usually already there
    wait_for_progress(progress("bigquery"), stall_s, out, "BigQuery", total_s=left(timeout))
    elapsed = time.monotonic() - t0
    if events >= 2000 and anomalies() == 0:  # enough events per window: give the drift alert its time
        try:
            wait_for_progress(
                lambda: Progress(anomalies() > 0, anomalies(), 0, "drift alert"),
                stall_s,
                out,
                "the drift alert",
            )
        except DemoStalled:
            say(f"  no anomaly raised within {stall_s:.0f}s after the last event was accounted for\n")

    dups, label_dups = duplicates()
    held = {name: t.accounted(dups, label_dups) for name, t in sinks.items()}
    received = _counter(result, "prediction_received")
    chs = held["clickhouse"]
    summary = {
        "published": sent,
        "distinct": unique,
        "malformed": bad,
        "labels_published": sent_labels,
        "received": received,
        "bigquery_rows": held["bigquery"]["rows"],
        "clickhouse_rows": chs["rows"],
        "labels": chs["labels"],
        "quality_rows": int(
            ch.command(f"SELECT countIf(notEmpty(quality_issues)) FROM `{dataset}`.predictions")
        ),
        # the predictions' dead letters by code (decode and dedup stages), as ClickHouse holds them
        "dead_letters": _by_code(chs["dead_letters"], "prediction"),
        "other_dead_letters": {
            f"{k}/{s}/{c}": n for (k, s, c), n in chs["dead_letters"].items() if k != "prediction"
        },
        "duplicates_collapsed": dups,
        "label_duplicates": label_dups,
        "seconds": elapsed,
    }
    rows = ch.query(
        f"SELECT signal, detector, severity, round(statistic, 3), window_start, window_end "
        f"FROM `{dataset}`.anomalies ORDER BY window_end, signal, anomaly_id LIMIT 1 BY anomaly_id"
    ).result_rows
    summary["windows"] = int(ch.command(f"SELECT uniqExact(window_start) FROM `{dataset}`.drift_metrics"))
    drift_from = start + dt.timedelta(seconds=(events // 2) / cfg.rate_per_s)

    def utc(t: dt.datetime) -> dt.datetime:
        return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)  # chDB returns naive UTC

    summary["anomalies"] = [(sig, det, sev, stat, utc(ws), utc(we)) for sig, det, sev, stat, ws, we in rows]
    # an alert is on clean data when all the evidence it used ends before the drift starts
    summary["clean_window_alerts"] = sum(1 for a in summary["anomalies"] if a[5] <= drift_from)
    # the law, per sink, from what each sink holds and the pipeline's duplicate counters
    summary["conserved_by_sink"] = {
        name: conservation(sent, h["rows"], h["prediction_dead_letters"], dups)
        and conservation(sent_labels, h["labels"], h["label_dead_letters"], label_dups)
        for name, h in held.items()
    }
    # and against what was published: the simulator knows each line's fate
    summary["as_simulated"] = (
        chs["rows"] == unique
        and sum(summary["dead_letters"].values()) == bad
        and dups == kinds["duplicate"]
        and received == sent
    )
    summary["conserved"] = all(summary["conserved_by_sink"].values()) and summary["as_simulated"]
    _print_summary(summary, say, window_s, drift_from, elapsed, sent, held)
    return summary


def _by_code(dead_letters: dict[tuple[str, str, str], int], kind: str) -> dict[str, int]:
    """Dead letters of one kind by error code.

    >>> _by_code({("prediction", "decode", "invalid_json"): 2, ("label", "decode", "invalid_json"): 1,
    ...           ("prediction", "dedup", "conflicting_duplicate"): 1}, "prediction")
    {'invalid_json': 2, 'conflicting_duplicate': 1}
    """
    out: dict[str, int] = {}
    for (k, _, code), n in dead_letters.items():
        if k == kind:
            out[code] = out.get(code, 0) + n
    return out


def _print_summary(summary, say, window_s, drift_from, elapsed, sent, held) -> None:
    say("\nsummary\n")
    for label, key in (
        ("events published", "published"),
        ("events received", "received"),
        ("audit rows in BigQuery", "bigquery_rows"),
        ("audit rows in ClickHouse", "clickhouse_rows"),
        ("duplicates collapsed", "duplicates_collapsed"),
        ("rows with quality issues", "quality_rows"),
        ("labels", "labels"),
    ):
        say(f"  {label:<26}{summary[key]}\n")
    say(f"  {'dead letters':<26}{sum(summary['dead_letters'].values())}\n")
    for code, n in sorted(summary["dead_letters"].items(), key=lambda kv: (-kv[1], kv[0])):
        say(f"    {code:<24}{n}\n")
    for key, n in sorted(summary["other_dead_letters"].items()):
        say(f"    {key:<24}{n}\n")
    say(
        f"  drift windows computed      {summary['windows']} (window {window_s}s; 'amount' shifted by 1 sd from {drift_from:%H:%M:%S})\n"
    )
    for signal, det, sev, stat, _, wend in summary["anomalies"]:
        say(f"    anomaly: {signal:<18} {det:<9} {sev:<9} statistic {stat:<10} at {wend:%H:%M:%S}\n")
    say(f"  alerts on clean data        {summary['clean_window_alerts']}\n")
    say(f"  processed in {elapsed:.1f}s ({sent / elapsed:.0f} events/s on the DirectRunner)\n")
    for name, h in held.items():
        ok = summary["conserved_by_sink"][name]
        say(
            f"conservation in {name}: {sent} events in = {h['rows']} audit rows + "
            f"{h['prediction_dead_letters']} dead letters + {summary['duplicates_collapsed']} duplicates: "
            + ("OK\n" if ok else f"MISMATCH ({h['predictions_accounted']} accounted)\n")
        )
        say(
            f"  labels in {name}: {summary['labels_published']} in = {h['labels']} rows + "
            f"{h['label_dead_letters']} dead letters + {summary['label_duplicates']} duplicates\n"
        )
    if not summary["as_simulated"]:
        say(
            "MISMATCH with the simulated stream: expected "
            f"{summary['distinct']} rows, {summary['malformed']} dead letters, "
            f"{summary['published'] - summary['malformed'] - summary['distinct']} duplicates, "
            f"{summary['published']} received\n"
        )
    say(
        "conservation: events in = audit rows + dead letters + duplicates: "
        + ("OK\n" if summary["conserved"] else "MISMATCH\n")
    )
