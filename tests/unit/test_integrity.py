"""Row hashes, Merkle roots, integrity records (bounded and streaming panes) and the pure
comparison behind ``predaudit verify``."""

from __future__ import annotations

import datetime as dt
import hashlib
import io

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from hypothesis import given
from hypothesis import strategies as st

from pipelines import cli, verify
from schemas import REFERENCE_EVENT, Decoders
from transforms import integrity
from transforms.integrity import (
    ExportIntegrity,
    IntegrityRecords,
    check_record,
    export_name,
    integrity_record,
    merkle_root,
)
from transforms.rows import from_micros, prediction_row, row_hash_columns, row_sha256

H12 = 1772366400000000  # 2026-03-01T12:00Z


def rfc6962(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, as written: recursive, split at the largest power of two < n."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc6962(leaves[:k]) + rfc6962(leaves[k:])).digest()


def hashes(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


@pytest.mark.parametrize("n", [*range(0, 18), 31, 32, 33, 100])
def test_merkle_root_is_rfc6962(n) -> None:
    hs = hashes(n)
    assert merkle_root(hs) == rfc6962([bytes.fromhex(h) for h in hs]).hex()


@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=40, unique=True), st.data())
def test_merkle_root_changes_with_any_leaf_or_order(ids, data) -> None:
    hs = [hashlib.sha256(str(i).encode()).hexdigest() for i in ids]
    root = merkle_root(hs)
    i = data.draw(st.integers(0, len(hs) - 1))
    assert merkle_root([*hs[:i], hashlib.sha256(b"x").hexdigest(), *hs[i + 1 :]]) != root
    assert merkle_root(hs[:i] + hs[i + 1 :]) != root  # a row removed
    assert merkle_root([hs[1], hs[0], *hs[2:]]) != root  # order matters


def reference_row() -> dict:
    ev, ts = Decoders().prediction(REFERENCE_EVENT)
    return prediction_row(ev, ts, REFERENCE_EVENT, ingest_time=ts)


#: the README recipe ("Audit integrity"), verbatim: it must keep matching the code
README_COLUMNS = ["event_id", "event_time", "model_name", "model_version", "schema_version",
                  "request_id", "features", "prediction_label", "prediction_score", "prediction_scores",
                  "prediction_value", "latency_ms", "status", "metadata", "extensions"]  # fmt: skip
README_JSON = {"features", "prediction_scores", "metadata", "extensions"}
README_FLOAT = {"prediction_score", "prediction_value", "latency_ms"}


def readme_row_sha256(row: dict) -> str:
    doc = {}
    for k in README_COLUMNS:
        v = row.get(k)
        if v is not None and k in README_JSON and isinstance(v, str):
            v = orjson.loads(v)
        if v is not None and k in README_FLOAT:
            v = float(v)
        doc[k] = v
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def test_row_hash_recipe_in_a_few_lines_of_plain_python() -> None:
    """The documented field order, kinds and encoding are the code's."""
    assert [c for c, _ in row_hash_columns()] == README_COLUMNS
    kinds = dict(row_hash_columns())
    assert {c for c, k in kinds.items() if k == "json"} == README_JSON
    assert {c for c, k in kinds.items() if k == "float"} == README_FLOAT
    row = reference_row()
    assert row["row_sha256"] == readme_row_sha256(row)
    assert readme_row_sha256({**row, "latency_ms": 3}) == row_sha256({**row, "latency_ms": 3})


def test_row_hash_is_the_same_however_an_engine_returns_the_row() -> None:
    row = reference_row()
    as_read = {
        **row,
        "event_time": from_micros(row["event_time"]).replace(tzinfo=None),  # clickhouse-connect
        "features": orjson.loads(row["features"]),  # a JSON column parsed by the client
        "metadata": orjson.dumps(orjson.loads(row["metadata"]), option=orjson.OPT_INDENT_2).decode(),
        "latency_ms": row["latency_ms"],
        "ingest_time": 1,
        "message_id": "m-9",
    }
    assert row_sha256(as_read) == row["row_sha256"]
    assert row_sha256({**row, "latency_ms": 13}) == row_sha256({**row, "latency_ms": 13.0})
    for col, value in [
        ("prediction_label", "fraud"),
        ("event_time", row["event_time"] + 1),
        ("request_id", None),
    ]:
        assert row_sha256({**row, col: value}) != row["row_sha256"], col


def test_record_is_consistent_and_detects_edits() -> None:
    leaves = [(f"e{i}", h) for i, h in enumerate(hashes(5))]
    rec = integrity_record("replay:x", ("fraud", "1", H12), leaves)
    assert check_record(rec) == []
    assert rec["row_count"] == 5 and rec["merkle_root"] == merkle_root([h for _, h in leaves])
    assert check_record({**rec, "row_count": 4}) == ["leaf list has 5 rows, row_count says 4"]
    assert check_record({**rec, "merkle_root": "0" * 64}) == ["leaf list does not give the merkle_root"]
    tampered = orjson.dumps([list(x) for x in leaves[:4]] + [["e4", "0" * 64]]).decode()
    assert "leaf list does not give the merkle_root" in check_record({**rec, "leaves": tampered})


def test_large_hour_keeps_count_and_root_only(monkeypatch) -> None:
    monkeypatch.setattr(integrity, "LEAF_LIST_MAX", 3)
    rec = integrity_record("replay:x", ("fraud", "1", H12), [(f"e{i}", h) for i, h in enumerate(hashes(4))])
    assert rec["leaves"] is None and rec["row_count"] == 4 and check_record(rec) == []


def audit_row(event_id: str, minute: int, *, score: float = 0.5, ingest: int = 1, payload: str = "p") -> dict:
    row = {
        "event_id": event_id,
        "event_time": H12 + minute * 60_000_000,
        "model_name": "fraud",
        "model_version": "1",
        "schema_version": "1",
        "features": '{"x": 1}',
        "prediction_score": score,
        "status": "ok",
        "ingest_time": ingest,
        "payload_sha256": payload,
    }
    row["row_sha256"] = row_sha256(row)
    return row


def test_bounded_records_one_per_hour() -> None:
    """Replay: one record per (model, version, hour), leaves in identity order (replay's own
    dedup is exact, so only first copies arrive here)."""
    rows = [audit_row("b", 1), audit_row("a", 2), audit_row("c", 70)]
    with beam.Pipeline() as p:
        recs = (
            p | beam.Create([rows[:2], [rows[2]]]) | IntegrityRecords("replay:t", bounded=True)
        ) | beam.Map(lambda r: (r["hour_start"], r["row_count"], r["leaves"], r["sequence"], r["final"]))
        leaves12 = orjson.dumps([["a", rows[1]["row_sha256"]], ["b", rows[0]["row_sha256"]]]).decode()
        leaves13 = orjson.dumps([["c", rows[2]["row_sha256"]]]).decode()
        assert_that(
            recs, equal_to([(H12, 2, leaves12, 0, True), (H12 + 3_600_000_000, 1, leaves13, 0, True)])
        )


def test_streaming_panes_accumulate_with_a_sequence() -> None:
    """On-time pane, then a late row within the allowed lateness: the second pane re-emits the
    whole hour (2 rows) with sequence 1; a row later than the lateness is in no record; a
    redelivery that passed dedup (after its horizon) is not a second leaf: the first copy is."""
    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    t12 = H12 / 1e6
    first, late, too_late = audit_row("a", 1, ingest=5), audit_row("b", 2), audit_row("z", 3)
    redelivered = {**audit_row("a", 1, score=0.9, ingest=9, payload="q")}
    stream = (
        TestStream()
        .advance_watermark_to(t12)
        .add_elements([TimestampedValue(redelivered, t12 + 60), TimestampedValue(first, t12 + 60)])
        .advance_watermark_to(t12 + 3600 + 1)
        .add_elements([TimestampedValue(late, t12 + 120)])
        .advance_watermark_to(t12 + 3600 + 600)
        .add_elements([TimestampedValue(too_late, t12 + 180)])
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=opts) as p:
        recs = (
            p
            | stream
            | IntegrityRecords("streaming:s", bounded=False, lateness_s=300, early_s=3600)
            | beam.Map(lambda r: (r["sequence"], r["row_count"], r["merkle_root"]))
        )
        assert_that(
            recs,
            equal_to(
                [
                    (0, 1, merkle_root([first["row_sha256"]])),
                    (1, 2, merkle_root([first["row_sha256"], late["row_sha256"]])),
                ]
            ),
        )


def test_export_writes_once_and_leaves_an_existing_file(tmp_path) -> None:
    rec = integrity_record("replay:x", ("fraud", "1", H12), [("e1", hashes(1)[0])])
    name = export_name(str(tmp_path), rec)
    fn = ExportIntegrity(str(tmp_path))
    list(fn.process(rec))
    assert orjson.loads((tmp_path / name.rsplit("/", 1)[1]).read_bytes()) == rec
    (tmp_path / name.rsplit("/", 1)[1]).write_bytes(b"kept\n")  # e.g. a retention-locked object
    list(fn.process(rec))
    assert (tmp_path / name.rsplit("/", 1)[1]).read_bytes() == b"kept\n"
    assert integrity.read_exported(str(tmp_path / "nothing-here")) == []


def record_for(rows: list[dict], **changes) -> dict:
    leaves = sorted((r["event_id"], r["row_sha256"]) for r in rows)
    return {**integrity_record("replay:x", ("fraud", "1", H12), leaves), **changes}


def kinds(findings) -> list[tuple[str, str]]:
    return [(f.kind, f.event_id) for f in findings]


def test_compare_names_each_difference() -> None:
    rows = [audit_row(f"e{i}", i) for i in range(4)]
    rec = record_for(rows)
    assert verify.compare(rows, [rec]) == []
    altered = {**rows[1], "prediction_score": 0.9}  # stored row_sha256 left as it was
    rehashed = {**altered, "row_sha256": row_sha256(altered)}  # and one whose hash was rewritten too
    forged = audit_row("e9", 9)
    assert kinds(verify.compare([rows[0], altered, rows[2], rows[3]], [rec])) == [("altered", "e1")]
    assert kinds(verify.compare([rows[0], rehashed, rows[2], rows[3]], [rec])) == [("altered", "e1")]
    assert kinds(verify.compare(rows[:2] + rows[3:], [rec])) == [("missing", "e2")]
    assert kinds(verify.compare([*rows, forged], [rec])) == [("added", "e9")]
    assert kinds(verify.compare(rows, [])) == [("added", f"e{i}") for i in range(4)]
    assert kinds(verify.compare([], [rec])) == [("missing", f"e{i}") for i in range(4)]
    assert kinds(verify.compare(rows, [{**rec, "row_count": 3}])) == [("record", "")]


def test_compare_union_of_panes_and_runs() -> None:
    """Accumulating panes (subsets) and two replay runs of the same hour check as their union."""
    rows = [audit_row(f"e{i}", i) for i in range(4)]
    pane0 = record_for(rows[:2], sequence=0)
    run2 = record_for(rows[2:], writer="replay:y")
    assert verify.compare(rows, [pane0, record_for(rows, sequence=1), run2]) == []
    assert kinds(verify.compare(rows, [pane0])) == [("added", "e2"), ("added", "e3")]


def test_compare_large_hour_by_count_and_root(monkeypatch) -> None:
    monkeypatch.setattr(integrity, "LEAF_LIST_MAX", 2)
    rows = [audit_row(f"e{i}", i) for i in range(4)]
    rec = record_for(rows)
    assert rec["leaves"] is None and verify.compare(rows, [rec]) == []
    assert kinds(verify.compare(rows[:3], [rec])) == [("missing", "")]
    assert kinds(verify.compare([*rows, audit_row("e9", 9)], [rec])) == [("added", "")]
    rehashed = {**rows[1], "prediction_score": 0.9}
    rehashed["row_sha256"] = row_sha256(rehashed)
    assert kinds(verify.compare([rows[0], rehashed, *rows[2:]], [rec])) == [("altered", "")]


def test_compare_first_copy_decides_like_the_views() -> None:
    row = audit_row("e1", 1, ingest=10)
    rec = record_for([row])
    redelivered = {**row, "ingest_time": 20, "payload_sha256": "q"}
    assert verify.compare([row, redelivered], [rec]) == []
    earlier_forgery = audit_row("e1", 1, score=0.1, ingest=5)
    assert kinds(verify.compare([row, earlier_forgery], [rec])) == [("altered", "e1")]


def test_time_arguments_and_hours() -> None:
    lo, hi = verify.hour_range(
        verify.parse_time("2026-03-01T12:30:00+02:00", "--from"), verify.parse_time("2026-03-01", "--to")
    )
    assert from_micros(lo) == dt.datetime(2026, 3, 1, 10, tzinfo=dt.timezone.utc)
    with pytest.raises(verify.VerifyUsageError, match="--to='soon'"):
        verify.parse_time("soon", "--to")


def test_cli_help_and_no_abbreviations(capsys) -> None:
    assert cli.main(["verify", "--help"], io.StringIO()) == 0
    assert "--clickhouse_database" in capsys.readouterr().out
    assert cli.main(["verify", "--sin", "clickhouse", "--from", "2026-03-01", "--to", "2026-03-02"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("predaudit verify: error:") and err.count("\n") == 1 and "--sin" in err


def test_streaming_leaves_keep_the_first_copy_of_a_redelivery() -> None:
    """A redelivery after the dedup horizon reaches the records: the first copy by ingest
    time is the leaf, whatever order the group hands them over in."""
    first = audit_row("a", 1, ingest=5)
    again = audit_row("a", 1, score=0.9, ingest=9, payload="q")
    entries = [e for r in (again, first) for _, e in integrity._entries(r, True)]
    assert integrity.first_copies(entries) == [("a", first["row_sha256"])]
