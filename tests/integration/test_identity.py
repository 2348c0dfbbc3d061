"""Identity (model name, event_id) through the replay pipeline into real chDB.

Two models reusing event ids keep all their rows, in one file and across runs; a conflicting
duplicate (same identity, other content) is a ``conflicting_duplicate`` dead letter and the
first line is the audit row; PII in the evidence is hashed like on the row.
"""

from __future__ import annotations

import hashlib
import pathlib

import apache_beam as beam
import orjson

from pipelines.options import AuditOptions
from pipelines.replay import build
from schemas.tables import create_clickhouse_tables
from tests.helpers import event

SPECS = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "models"
IDS = [f"evt-{i:08d}" for i in range(10)]


def line(model: str, event_id: str, score: float, **changes) -> bytes:
    ev = event(
        event_id=event_id,
        model={"name": model, "version": "1"},
        prediction={"label": "yes" if score > 0.5 else "no", "score": score},
        **changes,
    )
    return orjson.dumps(ev)


def write(path: pathlib.Path, lines: list[bytes]) -> pathlib.Path:
    path.write_bytes(b"".join(ln + b"\n" for ln in lines))
    return path


def replay(path: pathlib.Path, chdb_path: pathlib.Path, db: str, *extra: str) -> None:
    opts = AuditOptions(
        [
            f"--input={path}",
            "--sinks=clickhouse",
            f"--clickhouse_dsn=chdb://{chdb_path}",
            f"--clickhouse_database={db}",
            "--monitors=off",
            *extra,
        ]
    )
    with beam.Pipeline(options=opts) as p:
        build(p, opts)


def rows(client, db: str, sql: str) -> list[tuple]:
    return [tuple(r) for r in client.query(sql.format(db=f"`{db}`")).result_rows]


def test_two_models_sharing_ids_in_one_file_keep_all_rows(
    tmp_path, chdb_path, chdb_client, ch_database
) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    lines = [line("fraud", i, 0.9) for i in IDS] + [line("churn", i, 0.2) for i in IDS]
    replay(write(tmp_path / "both.jsonl", lines), chdb_path, ch_database)
    got = rows(
        chdb_client, ch_database, "SELECT model_name, count() FROM {db}.predictions GROUP BY 1 ORDER BY 1"
    )
    assert got == [("churn", 10), ("fraud", 10)]
    assert rows(chdb_client, ch_database, "SELECT count() FROM {db}.dead_letters") == [(0,)]


def test_replaying_churn_then_fraud_keeps_both_models(tmp_path, chdb_path, chdb_client, ch_database) -> None:
    """Two runs, same ids: the second model's rows are not taken for the first's (insert tokens
    and dedup by identity); a third run of the same file adds nothing."""
    create_clickhouse_tables(chdb_client, ch_database)
    churn = write(tmp_path / "churn.jsonl", [line("churn", i, 0.2) for i in IDS])
    fraud = write(tmp_path / "fraud.jsonl", [line("fraud", i, 0.9) for i in IDS])
    replay(churn, chdb_path, ch_database)
    replay(fraud, chdb_path, ch_database)
    sql = "SELECT model_name, count(), uniqExact(event_id) FROM {db}.predictions GROUP BY 1 ORDER BY 1"
    assert rows(chdb_client, ch_database, sql) == [("churn", 10, 10), ("fraud", 10, 10)]
    replay(fraud, chdb_path, ch_database)  # the same file again: the retried batch is written once
    assert rows(chdb_client, ch_database, sql) == [("churn", 10, 10), ("fraud", 10, 10)]


def test_conflicting_duplicate_is_a_dead_letter_and_the_first_line_is_the_row(
    tmp_path, chdb_path, chdb_client, ch_database
) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    pii = {"email": "someone@secret.example", "country": "DE", "channel": "web"}
    conflict_id = "evt-c0nfl1ct"
    # a second conflict whose LATER line has the smaller payload hash: the first line must win
    # by ingest order (lines in a file are ingested in order), not by the hash tiebreak
    late_id = "evt-c0nfl1ct-2"
    later_score = next(
        x / 100
        for x in range(1, 50)
        if hashlib.sha256(line("fraud", late_id, x / 100)).hexdigest()
        < hashlib.sha256(line("fraud", late_id, 0.95)).hexdigest()
    )
    lines = [
        line("fraud", IDS[0], 0.9),
        line("fraud", conflict_id, 0.91, features=pii),  # the first copy: the audit row
        line("fraud", late_id, 0.95),
        line("fraud", IDS[1], 0.9),
        line("fraud", IDS[0], 0.9),  # identical content: a plain duplicate
        line("fraud", conflict_id, 0.12, features=pii),  # same identity, other score: conflict
        line("churn", conflict_id, 0.12, features=pii),  # another model: its own row
        line("fraud", late_id, later_score),
    ]
    path = write(tmp_path / "conflict.jsonl", lines)
    replay(path, chdb_path, ch_database, f"--model_specs={SPECS}")
    got = rows(
        chdb_client,
        ch_database,
        "SELECT model_name, event_id, prediction_score FROM {db}.predictions ORDER BY model_name, event_id",
    )
    assert sorted(got) == sorted(
        [
            ("churn", conflict_id, 0.12),
            ("fraud", conflict_id, 0.91),
            ("fraud", late_id, 0.95),
            ("fraud", IDS[0], 0.9),
            ("fraud", IDS[1], 0.9),
        ]
    )
    dead = rows(
        chdb_client,
        ch_database,
        "SELECT error_code, stage, kind, model_name, event_id, payload_text, error_message, dead_letter_id "
        "FROM {db}.dead_letters ORDER BY event_id",
    )
    assert [(d[0], d[4]) for d in dead] == [
        ("conflicting_duplicate", conflict_id),
        ("conflicting_duplicate", late_id),
    ]
    assert orjson.loads(dead[1][5])["prediction_score"] == later_score
    code, stage, kind, model, eid, payload, message, _ = dead[0]
    assert (code, stage, kind, model, eid) == (
        "conflicting_duplicate",
        "dedup",
        "prediction",
        "fraud",
        conflict_id,
    )
    evidence = orjson.loads(payload)
    assert evidence["prediction_score"] == 0.12  # the later copy is the evidence
    first_sha = rows(
        chdb_client,
        ch_database,
        f"SELECT payload_sha256 FROM {{db}}.predictions WHERE model_name = 'fraud' AND event_id = '{conflict_id}'",
    )[0][0]
    assert first_sha in message
    # PII rules apply to the evidence as to the row: the fraud spec hashes email
    assert "someone@secret.example" not in payload
    assert orjson.loads(evidence["features"])["email"].startswith("hmac-sha256:")
    # a second replay of the same file finds the same conflict: the same dead letter id
    replay(path, chdb_path, ch_database, f"--model_specs={SPECS}")
    ids = rows(chdb_client, ch_database, "SELECT uniqExact(dead_letter_id) FROM {db}.dead_letters")
    assert ids == [(2,)]


def test_replay_hashes_pii_with_the_key_from_pii_key_secret(
    tmp_path, chdb_path, chdb_client, ch_database, monkeypatch
) -> None:
    """``--pii_key_secret`` (a file reference here) is the only key: the replay's workers
    resolve it and the row's email is the HMAC under that key."""
    from schemas.specs import PiiKey

    for name in ("PREDAUDIT_PII_KEY", "PREDAUDIT_PII_KEY_FILE", "PREDAUDIT_PII_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    key_file = tmp_path / "pii.key"
    key_file.write_bytes(b"secret-file-key-0123456789\n")
    features = {**event()["features"], "email": "someone@secret.example"}
    path = write(tmp_path / "p.jsonl", [line("fraud", IDS[0], 0.9, features=features)])
    create_clickhouse_tables(chdb_client, ch_database)
    replay(path, chdb_path, ch_database, f"--model_specs={SPECS}", f"--pii_key_secret=file://{key_file}")
    ((stored,),) = rows(chdb_client, ch_database, "SELECT features FROM {db}.predictions")
    assert orjson.loads(stored)["email"] == PiiKey(b"secret-file-key-0123456789").hash(
        "someone@secret.example"
    )
