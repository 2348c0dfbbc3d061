"""Replay pipeline end to end on the DirectRunner into real chDB and bqemulator."""

from __future__ import annotations

import pathlib

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.options import AuditOptions, OptionsError
from pipelines.replay import build
from schemas.simulate import BAD_KINDS, SimConfig, Simulator
from schemas.specs import load_specs
from schemas.tables import create_bigquery_tables, create_clickhouse_tables
from tests.conftest import BQ_PROJECT

SPECS = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "models"


def simulate(path: pathlib.Path, labels: pathlib.Path | None = None, **cfg) -> list:
    lines = list(Simulator(load_specs(SPECS)["fraud"], SimConfig(**cfg)).lines())
    path.write_bytes(b"".join(ln.raw + b"\n" for ln in lines))
    if labels is not None:
        labels.write_bytes(b"".join(ln.label + b"\n" for ln in lines if ln.label))
    return lines


def replay(args: list[str]) -> dict:
    opts = AuditOptions(args)
    with beam.Pipeline(options=opts) as p:
        out = build(p, opts)
        counts = {  # monitor outputs are event-time windowed; the audit outputs are counted
            k: out[k] | f"Count_{k}" >> beam.combiners.Count.Globally()
            for k in out
            if k not in ("drift_metrics", "anomalies")
        }
    return counts


def ch_count(client, db: str, sql: str) -> int:
    return int(client.command(sql.format(db=f"`{db}`")))


def test_replay_conserves_every_event_in_both_sinks(
    tmp_path, chdb_path, chdb_client, ch_database, bq_emulator, bq_client, bq_dataset
) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    create_bigquery_tables(bq_client, BQ_PROJECT, bq_dataset)
    events, labels = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    lines = simulate(
        events, labels, events=600, bad_fraction=0.1, duplicate_fraction=0.05, label_fraction=0.5, seed=11
    )
    ok = {ln.event_id for ln in lines if ln.kind == "ok"}
    bad = [ln for ln in lines if ln.kind in BAD_KINDS]
    dups = [ln for ln in lines if ln.kind == "duplicate"]
    assert bad and dups
    args = [
        f"--input={events}",
        f"--labels_input={labels}",
        "--sinks=clickhouse,bigquery",
        f"--clickhouse_dsn=chdb://{chdb_path}",
        f"--clickhouse_database={ch_database}",
        f"--bq_project={BQ_PROJECT}",
        f"--bq_dataset={bq_dataset}",
        f"--bq_endpoint={bq_client._connection.API_BASE_URL}",
        # the sink's default path: the Storage Write API (the emulator's gRPC port)
        f"--bq_write_endpoint={bq_emulator.grpc_endpoint}",
        f"--model_specs={SPECS}",
    ]
    replay(args)
    # conservation: events in = audit rows + dead letters (+ duplicates collapsed)
    assert len(lines) == len(ok) + len(bad) + len(dups)
    assert ch_count(chdb_client, ch_database, "SELECT count() FROM {db}.predictions") == len(ok)
    assert ch_count(chdb_client, ch_database, "SELECT count() FROM {db}.dead_letters") == len(bad)
    codes = dict(
        chdb_client.query(
            f"SELECT error_code, count() FROM `{ch_database}`.dead_letters GROUP BY error_code"
        ).result_rows
    )
    expected: dict[str, int] = {}
    for ln in bad:
        expected[BAD_KINDS[ln.kind]] = expected.get(BAD_KINDS[ln.kind], 0) + 1
    assert codes == expected
    assert ch_count(chdb_client, ch_database, "SELECT count() FROM {db}.labels") == sum(
        1 for ln in lines if ln.label
    )
    q = f"SELECT count(*) AS n FROM `{BQ_PROJECT}.{bq_dataset}.predictions`"
    assert next(iter(bq_client.query(q).result())).n == len(ok)
    q = f"SELECT count(*) AS n FROM `{BQ_PROJECT}.{bq_dataset}.dead_letters`"
    assert next(iter(bq_client.query(q).result())).n == len(bad)
    # the raw payload of a bad line is kept, byte for byte when UTF-8
    some = next(ln for ln in bad if ln.kind == "truncated_json")
    stored = chdb_client.query(
        f"SELECT payload_text FROM `{ch_database}`.dead_letters WHERE error_code = 'invalid_json' AND payload_size = {len(some.raw)}"
    ).result_rows
    assert (some.raw.decode(),) in stored

    # the analyst view joins every label to its prediction in SQL, in both sinks
    labelled = [
        (orjson.loads(ln.raw), orjson.loads(ln.label)) for ln in lines if ln.kind == "ok" and ln.label
    ]
    correct = sum(ev["prediction"]["label"] == lb["label"] for ev, lb in labelled)
    ch = chdb_client.query(
        f"SELECT sum(labeled), sum(accuracy * labeled) FROM `{ch_database}`.accuracy_full_join"
    ).result_rows[0]
    assert (ch[0], round(ch[1])) == (len(labelled), correct)
    q = f"SELECT SUM(labeled) AS n, SUM(accuracy * labeled) AS c FROM `{BQ_PROJECT}.{bq_dataset}.accuracy_full_join`"
    bq = next(iter(bq_client.query(q).result()))
    assert (bq.n, round(bq.c)) == (len(labelled), correct)

    # replaying the same files again leaves one logical row per event_id
    replay(args)
    assert ch_count(chdb_client, ch_database, "SELECT count() FROM {db}.predictions_dedup") == len(ok)
    assert ch_count(chdb_client, ch_database, "SELECT uniqExact(event_id) FROM {db}.predictions") == len(ok)
    q = f"SELECT count(*) AS n FROM `{BQ_PROJECT}.{bq_dataset}.predictions_dedup`"
    assert next(iter(bq_client.query(q).result())).n == len(ok)


def test_replay_counts_and_dedup_in_pipeline(tmp_path, chdb_path, chdb_client, ch_database) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    events = tmp_path / "events.jsonl.gz"
    import gzip

    lines = list(
        Simulator(load_specs(SPECS)["fraud"], SimConfig(events=300, duplicate_fraction=0.1, seed=5)).lines()
    )
    with gzip.open(events, "wb") as fh:
        fh.write(b"".join(ln.raw + b"\n" for ln in lines) + b"\n\n")
    opts = AuditOptions(
        [f"--input={events}", f"--clickhouse_dsn=chdb://{chdb_path}", f"--clickhouse_database={ch_database}"]
    )
    with beam.Pipeline(options=opts) as p:
        out = build(p, opts)
        rows = (out["predictions"], out["predictions/duplicates"]) | beam.Flatten()
        ids = rows | beam.FlatMap(lambda batch: [r["event_id"] for r in batch])
        assert_that(ids, equal_to(sorted({ln.event_id for ln in lines})))
    assert ch_count(chdb_client, ch_database, "SELECT count() FROM {db}.predictions") == 300


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--input=x", "--sinks=bq"], "--sinks"),
        (["--input=x", "--monitor_window_s=60", "--monitor_window_period_s=45"], "--monitor_window_period_s"),
        (["--input=x", "--sinks=bigquery"], "--bq_project"),
        (["--input=x", "--clickhouse_dsn=tcp://x"], "--clickhouse_dsn"),
        (["--input=x", "--model_specs=/nope"], "--model_specs"),
        ([], "--input"),
    ],
)
def test_bad_options_fail_before_the_graph(args: list[str], fragment: str) -> None:
    opts = AuditOptions(args)
    with pytest.raises(OptionsError, match=fragment):
        with beam.Pipeline(options=opts) as p:
            build(p, opts)


def test_sink_outage_stops_the_replay_without_dead_letters(
    tmp_path, chdb_path, chdb_client, ch_database, monkeypatch, capsys
) -> None:
    """BigQuery becomes unreachable after the start-up check (connection refused): a sink
    failure, not refused rows. The replay stops with exit 1 and one line naming the sink and
    the fix; no row becomes a ``sink.bigquery`` dead letter."""
    import io

    import pipelines.replay as replay_mod
    from pipelines.localstack import free_port

    create_clickhouse_tables(chdb_client, ch_database)
    events = tmp_path / "events.jsonl"
    simulate(events, events=200, bad_fraction=0.05, seed=21)
    monkeypatch.setattr(replay_mod, "prepare_sinks", lambda opts, sinks, create: [])  # it goes down later
    port = free_port()
    out = io.StringIO()
    code = replay_mod.run(
        [
            f"--input={events}",
            "--sinks=clickhouse,bigquery",
            f"--clickhouse_dsn=chdb://{chdb_path}",
            f"--clickhouse_database={ch_database}",
            f"--bq_project={BQ_PROJECT}",
            "--bq_dataset=down",
            f"--bq_endpoint=http://127.0.0.1:{port}",
            "--sink_max_attempts=2",
            "--progress_interval_s=0",
        ],
        out,
    )
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 1 and out.getvalue() == ""
    assert len(err) == 1 and err[0].startswith("predaudit replay: error: sink failure: bigquery: "), err
    assert f"127.0.0.1:{port}" in err[0] and "-- fix: " in err[0]
    assert (
        ch_count(
            chdb_client, ch_database, "SELECT count() FROM {db}.dead_letters WHERE stage = 'sink.bigquery'"
        )
        == 0
    )


def test_replay_cli_usage_error_exit_2() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "replay", "--sinks=nope", "--input=x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "--sinks" in proc.stderr and "Traceback" not in proc.stderr
