"""Drift monitors in the replay pipeline: a stationary stream stays quiet, an injected
shift on one feature is caught in event-time windows and emitted as CloudEvents."""

from __future__ import annotations

import datetime as dt
import io
import json
import pathlib

import apache_beam as beam

from pipelines.cli import main
from pipelines.options import AuditOptions
from pipelines.replay import build
from schemas.tables import create_clickhouse_tables

SPECS = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "models"


def latest(database: str) -> str:
    """drift_metrics with one row per metric_id: a re-fired (late) window's fullest pane.

    The table is append-only (plain MergeTree), so a window re-fired by late rows has a row per pane.
    """
    return f"(SELECT * FROM `{database}`.drift_metrics ORDER BY sample_size DESC LIMIT 1 BY metric_id)"


def reference_dir(tmp_path: pathlib.Path, events: int) -> pathlib.Path:
    """A references folder with fraud.json built (by the CLI) from a clean simulated sample."""
    refs, base = tmp_path / "refs", tmp_path / "base.jsonl"
    refs.mkdir()
    out = io.StringIO()
    assert main(["simulate", "--events", str(events), "--seed", "1", "--out", str(base)], out) == 0
    cmd = ["reference", "build", "--input", str(base), "--model", "fraud", "--out", str(refs / "fraud.json")]
    assert main(cmd, out) == 0
    return refs


def replay(stream: pathlib.Path, refs: pathlib.Path | None, chdb_path, database: str, *extra: str) -> None:
    """The replay pipeline with monitors (300 s windows unless ``extra`` says otherwise) into
    the test's ClickHouse database; ``refs=None``: warm-up baselines."""
    opts = AuditOptions(
        [
            f"--input={stream}",
            f"--clickhouse_dsn=chdb://{chdb_path}",
            f"--clickhouse_database={database}",
            f"--model_specs={SPECS}",
            *([f"--references={refs}"] if refs else []),
            "--monitor_window_s=300",
            *extra,
        ]
    )
    with beam.Pipeline(options=opts) as p:
        build(p, opts)


def test_injected_drift_is_caught_and_the_clean_part_is_silent(
    tmp_path, chdb_path, chdb_client, ch_database
) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    refs = reference_dir(tmp_path, events=5000)
    stream = tmp_path / "stream.jsonl"
    # 50 events/s of event time: a 300 s window holds 15,000 events; the shift starts in window 4
    args = ["--events", "60000", "--seed", "9", "--drift-at", "45000", "--drift-feature", "amount"]
    assert main(["simulate", *args, "--drift-shift", "0.5", "--out", str(stream)], io.StringIO()) == 0
    replay(stream, refs, chdb_path, ch_database)
    metrics = chdb_client.query(
        f"SELECT signal, toUnixTimestamp(window_start), value, status FROM {latest(ch_database)} WHERE metric = 'psi'"
    ).result_rows
    start = int(dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc).timestamp())
    windows = sorted({w for _, w, _, _ in metrics})
    assert windows == [start + 300 * i for i in range(4)]
    by = {(s, w): (v, st) for s, w, v, st in metrics}
    for w in windows[:3]:  # clean: every signal ok
        assert all(st == "ok" for (s, ww), (_, st) in by.items() if ww == w), [
            (s, v) for (s, ww), (v, _) in by.items() if ww == w and v > 0.1
        ]
    assert by[("amount", windows[3])][1] in (
        "warning",
        "critical",
    )  # 0.5 sd shift caught in the first drifted window
    assert all(
        st == "ok"
        for (s, w), (_, st) in by.items()
        if w == windows[3] and s not in ("amount", "prediction.score", "prediction.label")
    )
    anomalies = chdb_client.query(
        f"SELECT signal, severity, type, cloudevent FROM `{ch_database}`.anomalies"
    ).result_rows
    assert {(s, t) for s, _, t, _ in anomalies} >= {("amount", "predaudit.anomaly.feature_drift")}
    assert all(json.loads(ce)["specversion"] == "1.0" for *_, ce in anomalies)
    assert not any(s in ("hour_of_day", "country", "latency_ms") for s, *_ in anomalies)
    # ADWIN on the same stream: "amount" changes within 500 events (10 s at 50 events/s) of the onset
    adwin = chdb_client.query(
        f"SELECT signal, toUnixTimestamp64Micro(window_end) FROM `{ch_database}`.anomalies WHERE detector = 'adwin'"
    ).result_rows
    onset_us = (start + 900) * 1_000_000
    amount = [t for s, t in adwin if s == "amount"]
    assert amount and 0 <= min(t for t in amount if t >= onset_us) - onset_us <= 10_000_000
    assert not [s for s, t in adwin if t < onset_us]  # silent on the 45,000 clean events


def test_latency_regression_flagged_in_the_first_full_window(
    tmp_path, chdb_path, chdb_client, ch_database
) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    refs = reference_dir(tmp_path, events=3000)
    stream = tmp_path / "stream.jsonl"
    # from 600 s of event time (window 3) the model is 20x slower
    args = [
        "--events",
        "45000",
        "--seed",
        "4",
        "--drift-at",
        "30000",
        "--drift-kind",
        "latency",
        "--drift-shift",
        "20",
    ]
    assert main(["simulate", *args, "--out", str(stream)], io.StringIO()) == 0
    replay(stream, refs, chdb_path, ch_database)
    rates = chdb_client.query(
        f"SELECT metric, toUnixTimestamp(window_start) % 3600, value, status FROM {latest(ch_database)} "
        "WHERE metric IN ('latency_over_slo', 'error_rate', 'quality_issue_rate', 'count') ORDER BY 2, 1"
    ).result_rows
    by = {(m, w): (v, st) for m, w, v, st in rates}
    assert by[("count", 0)][0] == 15000  # traffic volume per window is recorded
    assert by[("latency_over_slo", 0)][1] == by[("latency_over_slo", 300)][1] == "ok"
    assert by[("latency_over_slo", 600)][1] == "critical"  # the first full window after onset
    assert all(st == "ok" for (m, _), (_, st) in by.items() if m in ("error_rate", "quality_issue_rate"))
    alerts = chdb_client.query(
        f"SELECT signal, detector, severity, type FROM `{ch_database}`.anomalies WHERE detector != 'adwin'"
    ).result_rows
    assert ("latency_over_slo", "latency", "critical", "predaudit.anomaly.latency_regression") in alerts
    assert not [a for a in alerts if a[1] in ("threshold", "quality")]


def test_a_model_without_reference_is_monitored_after_its_warmup(
    tmp_path, chdb_path, chdb_client, ch_database
) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    stream = tmp_path / "stream.jsonl"
    args = ["--events", "20000", "--seed", "4", "--drift-at", "15000", "--drift-feature", "amount"]
    assert main(["simulate", *args, "--out", str(stream)], io.StringIO()) == 0
    replay(stream, None, chdb_path, ch_database, "--monitor_window_s=60")
    rows = chdb_client.query(
        f"SELECT toUnixTimestamp(window_start), sample_size, status, reference_id FROM {latest(ch_database)}"
        " WHERE signal = 'amount' AND metric = 'psi' ORDER BY window_start"
    ).result_rows
    start = int(dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc).timestamp())
    # the first 2,000 events (40 s) are the baseline: the first window holds only the 1,000 after them
    assert rows[0][:2] == (start, 1000)
    assert {r[3] for r in rows} == {"fraud@2026-02-15"}
    onset = start + 15000 // 50
    assert all(r[2] in ("ok", "insufficient") for r in rows if r[0] + 60 <= onset)
    assert [r[2] for r in rows if r[0] >= onset][0] in ("warning", "critical")
    anomalies = chdb_client.query(
        f"SELECT toUnixTimestamp(window_end), signal, detector, statistic FROM `{ch_database}`.anomalies WHERE severity != 'resolved'"
    ).result_rows
    assert anomalies and all(a[0] >= onset for a in anomalies), anomalies  # whole seconds


def test_sliding_windows_start_every_period(tmp_path, chdb_path, chdb_client, ch_database) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    refs = reference_dir(tmp_path, events=3000)
    stream = tmp_path / "stream.jsonl"
    assert main(["simulate", "--events", "9000", "--seed", "5", "--out", str(stream)], io.StringIO()) == 0
    replay(stream, refs, chdb_path, ch_database, "--monitor_window_s=60", "--monitor_window_period_s=30")
    rows = chdb_client.query(
        f"SELECT toUnixTimestamp(window_start), toUnixTimestamp(window_end), value FROM {latest(ch_database)}"
        " WHERE signal = 'events' ORDER BY window_start"
    ).result_rows
    start = int(dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc).timestamp())
    # 9,000 events at 50/s = 180 s: windows of 60 s every 30 s, from -30 s to 150 s
    assert [r[0] - start for r in rows] == [-30, 0, 30, 60, 90, 120, 150]
    assert all(r[1] - r[0] == 60 for r in rows)
    assert [r[2] for r in rows] == [1500.0, 3000.0, 3000.0, 3000.0, 3000.0, 3000.0, 1500.0]
