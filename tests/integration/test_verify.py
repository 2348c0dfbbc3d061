"""``predaudit verify`` against real engines: replay a small file into chDB / bqemulator,
verify clean, then tamper the way an admin could (``ALTER TABLE ... UPDATE/DELETE``, a DML
``UPDATE``, a forged insert) and check each difference is reported with its identity."""

from __future__ import annotations

import datetime as dt
import io
import pathlib

import apache_beam as beam
import orjson
import pytest

from pipelines import verify
from pipelines.options import AuditOptions
from pipelines.replay import build
from schemas.tables import PREDICTIONS, create_clickhouse_tables
from tests.helpers import event
from transforms.integrity import merkle_root
from transforms.rows import row_sha256

SPECS = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "models"
MODEL, VERSION = "fraud", "2026-02-15"
RANGE = ["--from", "2026-03-01T12:00:00Z", "--to", "2026-03-01T14:00:00Z"]


def lines() -> list[bytes]:
    """12 predictions over two event-time hours (12:xx, 13:xx), plus a redelivered copy."""
    out = []
    for i in range(12):
        hour, minute = 12 + i % 2, 5 * i
        ev = event(
            event_id=f"evt-{i:08d}",
            event_time=f"2026-03-01T{hour}:{minute:02d}:00.{i:06d}Z",
            prediction={"label": "fraud" if i % 3 == 0 else "legit", "score": 0.1 + i / 20},
            latency_ms=12 if i == 4 else 10.5 + i,
        )
        out.append(orjson.dumps(ev))
    return out + [out[3]]


def replay(tmp_path: pathlib.Path, *flags: str) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(ln + b"\n" for ln in lines()))
    opts = AuditOptions([f"--input={path}", "--monitors=off", f"--model_specs={SPECS}", *flags])
    with beam.Pipeline(options=opts) as p:
        build(p, opts)


def run_verify(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = verify.run([*args, *RANGE], out)
    return code, out.getvalue()


@pytest.fixture()
def replayed(tmp_path, chdb_path, chdb_client, ch_database) -> list[str]:
    create_clickhouse_tables(chdb_client, ch_database)
    export = tmp_path / "export"
    replay(
        tmp_path,
        "--sinks=clickhouse",
        f"--clickhouse_dsn=chdb://{chdb_path}",
        f"--clickhouse_database={ch_database}",
        f"--integrity_export={export}",
    )
    return [
        "--sink",
        "clickhouse",
        f"--clickhouse_dsn=chdb://{chdb_path}",
        f"--clickhouse_database={ch_database}",
    ]


def ch(client, sql: str) -> None:
    client.command(sql, settings={"mutations_sync": 2})


def test_clean_replay_verifies_and_records_respect_dedup(replayed, chdb_client, ch_database) -> None:
    code, out = run_verify(*replayed)
    assert code == 0, out
    assert "clean" in out and "12 rows, 2 integrity records" in out
    recs = chdb_client.query(
        f"SELECT toHour(hour_start), row_count, merkle_root, leaves FROM `{ch_database}`.integrity ORDER BY 1"
    ).result_rows
    assert [(h, n) for h, n, _, _ in recs] == [(12, 6), (13, 6)]  # the redelivered copy is not a leaf
    stored = chdb_client.query(
        f"SELECT toHour(event_time), event_id, row_sha256 FROM `{ch_database}`.predictions ORDER BY event_id"
    ).result_rows
    for hour, _, root, leaves in recs:
        hashes = [h for hh, _, h in stored if hh == hour]
        assert root == merkle_root(hashes)
        assert [e for e, _ in orjson.loads(leaves)] == [e for hh, e, _ in stored if hh == hour]


def test_row_hash_recomputes_from_the_stored_row(replayed, chdb_client, ch_database) -> None:
    """The README recipe over the stored columns (event_time selected as micros), and
    ``row_sha256`` over the row as ``SELECT *`` returns it (datetimes)."""
    from tests.unit.test_integrity import readme_row_sha256

    cols = [c.name for c in PREDICTIONS.columns]
    q = f"SELECT *, toUnixTimestamp64Micro(event_time) AS us FROM `{ch_database}`.predictions"
    for values in chdb_client.query(q).result_rows:
        row = dict(zip([*cols, "us"], values, strict=True))
        assert row_sha256(row) == row["row_sha256"], row["event_id"]
        assert readme_row_sha256({**row, "event_time": row["us"]}) == row["row_sha256"], row["event_id"]


def test_admin_update_is_reported_as_altered(replayed, chdb_client, ch_database) -> None:
    ch(
        chdb_client,
        f"ALTER TABLE `{ch_database}`.predictions UPDATE prediction_label = 'legit' WHERE event_id = 'evt-00000003'",
    )
    code, out = run_verify(*replayed)
    assert code == 1
    assert f"altered  ({MODEL}, evt-00000003) version {VERSION} hour 2026-03-01T13:00Z" in out, out
    assert [ln.split()[0] for ln in out.splitlines()[1:-1]] == ["altered"]
    assert out.splitlines()[-1] == "1 difference(s): altered 1"


def test_update_with_a_recomputed_row_hash_is_still_altered(replayed, chdb_client, ch_database) -> None:
    """Rewriting the content AND its row_sha256 does not hide it: the record lists the old hash."""
    cols = [c.name for c in PREDICTIONS.columns]
    values = chdb_client.query(
        f"SELECT * FROM `{ch_database}`.predictions WHERE event_id = 'evt-00000006'"
    ).result_rows[0]
    forged = {**dict(zip(cols, values, strict=True)), "prediction_score": 0.01}
    ch(
        chdb_client,
        f"ALTER TABLE `{ch_database}`.predictions UPDATE prediction_score = 0.01, "
        f"row_sha256 = '{row_sha256(forged)}' WHERE event_id = 'evt-00000006'",
    )
    code, out = run_verify(*replayed)
    assert code == 1
    assert f"altered  ({MODEL}, evt-00000006)" in out and "integrity record lists" in out, out


def test_admin_delete_is_reported_as_missing(replayed, chdb_client, ch_database) -> None:
    ch(chdb_client, f"ALTER TABLE `{ch_database}`.predictions DELETE WHERE event_id = 'evt-00000005'")
    code, out = run_verify(*replayed)
    assert code == 1
    assert f"missing  ({MODEL}, evt-00000005) version {VERSION} hour 2026-03-01T13:00Z" in out, out
    assert "1 difference(s): missing 1" in out


def test_forged_rows_are_reported_as_added(replayed, chdb_client, ch_database) -> None:
    """A new identity with a correct row hash, and an earlier copy of an existing identity with
    other content (which the analyst view would return first)."""
    cols = [c.name for c in PREDICTIONS.columns]
    values = chdb_client.query(
        f"SELECT * FROM `{ch_database}`.predictions WHERE event_id = 'evt-00000002'"
    ).result_rows[0]
    base = dict(zip(cols, values, strict=True))
    new = {**base, "event_id": "evt-99999999", "payload_sha256": "0" * 64}
    new["row_sha256"] = row_sha256(new)
    early = {**base, "prediction_score": 0.777, "ingest_time": values[cols.index("event_time")]}
    early["row_sha256"] = row_sha256(early)
    later = base["ingest_time"] + dt.timedelta(days=1)
    late = {**base, "event_id": "evt-00000004", "payload_sha256": "f" * 64, "ingest_time": later}
    late["row_sha256"] = row_sha256(late)  # evt-00000004 with evt-00000002's content, ingested later
    forged = [list(r.values()) for r in (new, early, late)]
    chdb_client.insert(f"`{ch_database}`.predictions", forged, column_names=cols)
    code, out = run_verify(*replayed)
    assert code == 1
    assert f"added    ({MODEL}, evt-99999999) version {VERSION} hour 2026-03-01T12:00Z: not covered" in out, (
        out
    )
    assert f"altered  ({MODEL}, evt-00000002)" in out, out  # the forged copy is now the first copy
    assert f"added    ({MODEL}, evt-00000004) version {VERSION} hour 2026-03-01T12:00Z: a later copy" in out
    assert out.splitlines()[-1] == "3 difference(s): added 2, altered 1", out


def test_edited_integrity_record_is_reported(replayed, chdb_client, ch_database) -> None:
    ch(
        chdb_client,
        f"ALTER TABLE `{ch_database}`.integrity UPDATE row_count = 5 WHERE toHour(hour_start) = 12",
    )
    code, out = run_verify(*replayed)
    assert code == 1
    assert "record   model fraud" in out and "leaf list has 6 rows, row_count says 5" in out, out


def test_exported_records_catch_a_rewrite_of_rows_and_records(
    replayed, tmp_path, chdb_client, ch_database
) -> None:
    """Whoever can rewrite both the row and the integrity table passes the table check; the
    records exported to a location the auditor controls still name the row."""
    cols = [c.name for c in PREDICTIONS.columns]
    values = chdb_client.query(
        f"SELECT * FROM `{ch_database}`.predictions WHERE event_id = 'evt-00000008'"
    ).result_rows[0]
    forged = {**dict(zip(cols, values, strict=True)), "prediction_label": "fraud"}
    h = row_sha256(forged)
    ch(
        chdb_client,
        f"ALTER TABLE `{ch_database}`.predictions UPDATE prediction_label = 'fraud', row_sha256 = '{h}' "
        "WHERE event_id = 'evt-00000008'",
    )
    leaves = [
        [e, r]
        for e, r in chdb_client.query(
            f"SELECT event_id, row_sha256 FROM `{ch_database}`.predictions "
            "WHERE toHour(event_time) = 12 ORDER BY event_id"
        ).result_rows
    ]
    ch(
        chdb_client,
        f"ALTER TABLE `{ch_database}`.integrity UPDATE leaves = '{orjson.dumps(leaves).decode()}', "
        f"merkle_root = '{merkle_root([r for _, r in leaves])}' WHERE toHour(hour_start) = 12",
    )
    code, out = run_verify(*replayed)
    assert code == 0, out  # what verification cannot prove from the tables alone
    code, out = run_verify(*replayed, "--records", str(tmp_path / "export"))
    assert code == 1, out
    assert f"altered  ({MODEL}, evt-00000008)" in out and "records from" in out, out


def test_model_filter_and_range(replayed, chdb_client, ch_database) -> None:
    ch(chdb_client, f"ALTER TABLE `{ch_database}`.predictions DELETE WHERE event_id = 'evt-00000005'")
    out = io.StringIO()
    # the 12:00 hour alone (--to on the hour is exclusive): the deleted 13:xx row is outside
    assert verify.run([*replayed, "--from", "2026-03-01T12:10:00Z", "--to", "2026-03-01T13:00:00Z"], out) == 0
    assert "6 rows, 1 integrity records" in out.getvalue()
    out = io.StringIO()
    assert verify.run([*replayed, "--model", "churn", *RANGE], out) == 0
    assert "nothing to verify: no rows and no integrity records" in out.getvalue()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--sink", "clickhouse", "--from", "yesterday", "--to", "2026-03-01"], "--from='yesterday'"),
        (["--sink", "clickhouse", "--from", "2026-03-02", "--to", "2026-03-01"], "before --to"),
        (["--sink", "bigquery", "--from", "2026-03-01", "--to", "2026-03-02"], "--bq_project is required"),
        (["--sink", "clickhouse", "--mod", "x", "--from", "2026-03-01", "--to", "2026-03-02"], "--mod"),
        (["--sink", "mysql", "--from", "2026-03-01", "--to", "2026-03-02"], "invalid choice"),
        (["--sink", "clickhouse", "--to", "2026-03-02"], "--from"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, fragment, capsys) -> None:
    assert verify.run(args, io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("predaudit verify: error:") and fragment in err, err


def test_unreadable_table_is_one_line_exit_2(chdb_path, ch_database, capsys) -> None:
    args = [
        "--sink",
        "clickhouse",
        f"--clickhouse_dsn=chdb://{chdb_path}",
        f"--clickhouse_database={ch_database}",
    ]
    assert verify.run([*args, *RANGE], io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the audit tables" in err, err


def test_bigquery_dml_update_is_reported_as_altered(tmp_path, bq_emulator, bq_client, bq_dataset) -> None:
    from tests.conftest import BQ_PROJECT

    bq = [f"--bq_project={BQ_PROJECT}", f"--bq_dataset={bq_dataset}", f"--bq_endpoint={bq_emulator.endpoint}"]
    from pipelines.provision import prepare_sinks

    opts = AuditOptions(["--sinks=bigquery", "--input=x", *bq])
    assert prepare_sinks(opts, ["bigquery"], create=True) == []
    # the sink's default path: the Storage Write API (the emulator's gRPC port)
    replay(tmp_path, "--sinks=bigquery", *bq, f"--bq_write_endpoint={bq_emulator.grpc_endpoint}")
    args = ["--sink", "bigquery", *bq]
    code, out = run_verify(*args)
    assert code == 0, out
    assert "12 rows, 2 integrity records" in out
    bq_client.query(
        f"UPDATE `{BQ_PROJECT}.{bq_dataset}.predictions` SET prediction_score = 0.5 WHERE event_id = 'evt-00000007'"
    ).result()
    code, out = run_verify(*args)
    assert code == 1
    assert f"altered  ({MODEL}, evt-00000007) version {VERSION} hour 2026-03-01T13:00Z" in out, out
