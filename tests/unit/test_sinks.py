"""Sink failure classes: classification of real library exceptions, bisection, retries, modes.

The classification tests use exception objects made by the client libraries themselves:
real chDB errors, clickhouse-connect's own HTTP error builder, real TLS and connection
failures on loopback, and google.api_core's own constructors (plus a real NotFound from
bqemulator in tests/integration/test_sink_failures.py).
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.identity import identity, identity_id
from transforms.rows import row_sha256
from transforms.sinks.base import LogLimiter, SinkFn
from transforms.sinks.bigquery import classify_bigquery, insert_id
from transforms.sinks.clickhouse import classify_clickhouse, dedup_token
from transforms.sinks.errors import (
    ROW_REFUSAL,
    SINK_FAILURE,
    TRANSIENT,
    SinkFailure,
    Verdict,
    find_sink_failure,
)
from transforms.sinks.retry import RetryPolicy
from transforms.sinks.write import WriteAudit


def pred_row(i: int, model: str = "fraud", **over: Any) -> dict[str, Any]:
    """A predictions row as the pipeline writes it (timestamps in epoch microseconds)."""
    row = {
        "event_id": f"evt-{i:06d}",
        "event_time": 1767225600000000 + i,
        "model_name": model,
        "model_version": "1",
        "schema_version": "1",
        "features": "{}",
        "status": "ok",
        "ingest_time": 1767225600000000 + i,
        "payload_sha256": "0" * 64,
        "pipeline_version": "test",
        "quality_issues": [],
    }
    row.update(over)
    row["row_sha256"] = row_sha256(row)
    return row


# -- a sink over an in-process store, to drive the mechanics exactly ----------------------------
STORE: dict[str, dict[str, list[dict[str, Any]]]] = {}
CALLS: dict[str, list[tuple[str, int]]] = {}


class RowError(Exception):
    """What the fake service raises for a batch holding a row it cannot store."""


class SinkDown(Exception):
    """What the fake service raises when no row can be stored (table missing)."""


class MemorySink(SinkFn):
    """Stores rows per table; refuses (by returned index) or raises for chosen event_ids; can fail
    the first ``fail_first`` inserts with ``fail_with``."""

    name = "memory"

    def __init__(
        self,
        key: str,
        refuse: Sequence[str] = (),
        raise_for: Sequence[str] = (),
        fail_first: int = 0,
        fail_with: type[Exception] = ConnectionError,
        mode: str = "replay",
        policy: RetryPolicy | None = None,
        refuse_tables: Sequence[str] = ("predictions",),
    ) -> None:
        super().__init__(policy or RetryPolicy(attempts=3, base_delay_s=0.0), mode=mode)  # type: ignore[arg-type]
        self.key, self.refuse, self.raise_for = key, set(refuse), set(raise_for)
        self.fail_first, self.fail_with, self.refuse_tables = fail_first, fail_with, set(refuse_tables)

    def client_key(self) -> tuple:
        return (self.key,)

    def make_client(self) -> object:
        return object()

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        calls = CALLS.setdefault(self.key, [])
        calls.append((table, len(rows)))
        if len(calls) <= self.fail_first:
            raise self.fail_with(f"failure {len(calls)}")
        if table in self.refuse_tables and any(r.get("event_id") in self.raise_for for r in rows):
            raise RowError("a row in this batch cannot be stored")
        refused = [
            (i, f"refused {r['event_id']}")
            for i, r in enumerate(rows)
            if table in self.refuse_tables and r.get("event_id") in self.refuse
        ]
        bad = {i for i, _ in refused}
        STORE.setdefault(self.key, {}).setdefault(table, []).extend(
            r for i, r in enumerate(rows) if i not in bad
        )
        return refused

    def classify(self, exc: BaseException) -> Verdict:
        if isinstance(exc, RowError):
            return Verdict(ROW_REFUSAL, "refused_by_server", str(exc))
        if isinstance(exc, ConnectionError):
            return Verdict(TRANSIENT, "unreachable", str(exc))
        return Verdict(SINK_FAILURE, "unknown_table", str(exc), "run `predaudit provision`")


def stored(key: str, table: str) -> list[str]:
    return sorted(r["event_id"] for r in STORE.get(key, {}).get(table, []))


def run_write(fn: MemorySink, rows: list[dict[str, Any]], batch: int = 16) -> None:
    """Rows -> WriteAudit([fn]) on the batch runner; asserts its dead-letter output is exactly
    one ``sink_rejected`` per refused row."""
    expected = sorted((e, "sink_rejected") for e in fn.refuse | fn.raise_for)
    with TestPipeline() as p:
        preds = p | "Rows" >> beam.Create(rows)
        none = p | "NoDecodeDeadLetters" >> beam.Create([])
        dead = {"predictions": preds, "dead_letters": none} | WriteAudit([fn], max_batch_size=batch)
        assert_that(dead | beam.Map(lambda d: (d["event_id"], d["error_code"])), equal_to(expected))


# -- issue 14 #2: refused rows become dead letters, exactly those, the rest are written --------
@pytest.mark.parametrize("how", ["refused_index", "raised_row_error"])
def test_refused_rows_become_dead_letters_and_the_rest_is_written(how: str) -> None:
    key = f"refuse-{how}-{uuid.uuid4().hex[:6]}"
    rows = [pred_row(i) for i in range(100)]
    bad = ["evt-000003", "evt-000004", "evt-000050", "evt-000099"]
    fn = MemorySink(key, refuse=bad) if how == "refused_index" else MemorySink(key, raise_for=bad)
    run_write(fn, rows)
    assert stored(key, "predictions") == sorted(r["event_id"] for r in rows if r["event_id"] not in bad)
    dead = STORE[key]["dead_letters"]
    assert sorted(d["event_id"] for d in dead) == bad
    assert {d["error_code"] for d in dead} == {"sink_rejected"}
    assert {d["stage"] for d in dead} == {"sink.memory"}


# -- issue 14 "weak retry test": count the attempts against a sink that fails N times ---------
@pytest.mark.parametrize("failures", [1, 3])
def test_transient_errors_are_retried_until_the_write_succeeds(failures: int) -> None:
    key = f"retry-{failures}-{uuid.uuid4().hex[:6]}"
    fn = MemorySink(key, fail_first=failures, policy=RetryPolicy(attempts=4, base_delay_s=0.0))
    sleeps: list[float] = []
    fn.sleep = sleeps.append  # type: ignore[method-assign]
    rows = [pred_row(i) for i in range(5)]
    assert drive(fn, rows) == []
    assert CALLS[key] == [("predictions", 5)] * (failures + 1)  # N failures + the one that worked
    assert len(sleeps) == failures
    assert stored(key, "predictions") == [r["event_id"] for r in rows]


def test_retries_run_out_after_exactly_the_policy_attempts_then_replay_stops() -> None:
    key = f"exhaust-{uuid.uuid4().hex[:6]}"
    fn = MemorySink(key, fail_first=99, policy=RetryPolicy(attempts=4, base_delay_s=0.0))
    fn.sleep = lambda s: None  # type: ignore[method-assign]
    with pytest.raises(Exception) as info:
        drive(fn, [pred_row(i) for i in range(3)])
    assert len(CALLS[key]) == 4
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.code == "unreachable"
    assert "gave up after 4 attempts" in failure.reason
    assert STORE.get(key) is None  # nothing written, nothing dead-lettered


def drive(fn: SinkFn, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run a DoFn by hand (setup, one bundle); returns what it emitted."""
    from apache_beam.utils.timestamp import Timestamp

    fn.setup()
    fn.start_bundle()
    out: list[Any] = []
    for row in rows:
        out.extend(fn.process(row, ts=Timestamp(0)))
    out.extend(wv.value for wv in fn.finish_bundle())
    return out


# -- sink failures: replay stops with no dead letters, streaming back-pressures ----------------
def test_replay_sink_failure_stops_the_run_through_the_runner_with_no_dead_letters() -> None:
    key = f"down-{uuid.uuid4().hex[:6]}"
    fn = MemorySink(key, fail_first=10**6, fail_with=SinkDown)
    with pytest.raises(Exception) as info:
        with TestPipeline() as p:
            preds = p | "Rows" >> beam.Create([pred_row(i) for i in range(40)])
            none = p | "None" >> beam.Create([])
            _ = {"predictions": preds, "dead_letters": none} | WriteAudit([fn], max_batch_size=16)
    failure = find_sink_failure(info.value)
    assert failure is not None, info.value
    assert (failure.sink, failure.code) == ("memory", "unknown_table")
    assert failure.table in ("predictions", "dead_letters") and failure.fix == "run `predaudit provision`"
    assert STORE.get(key) is None
    assert len(CALLS[key]) == 1  # no bisection: one failed insert stops the run


def test_streaming_sink_failure_backs_off_then_every_row_is_written(caplog) -> None:
    key = f"stream-{uuid.uuid4().hex[:6]}"
    fn = MemorySink(
        key,
        fail_first=12,
        fail_with=SinkDown,
        mode="streaming",
        policy=RetryPolicy(attempts=3, base_delay_s=0.0, failure_max_delay_s=60.0),
    )
    sleeps: list[float] = []
    fn.sleep = sleeps.append  # type: ignore[method-assign]
    fn.limiter = LogLimiter(60.0, clock=lambda: sum(sleeps))  # a fake monotonic clock
    rows = [pred_row(i) for i in range(7)]
    with caplog.at_level(logging.ERROR, logger="transforms.sinks.base"):
        assert drive(fn, rows) == []  # no dead letters
    assert stored(key, "predictions") == [r["event_id"] for r in rows]
    assert CALLS[key] == [("predictions", 7)] * 13  # the same batch each round, never bisected
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0, 60.0, 60.0]  # capped
    logged = [r for r in caplog.records if "memory: predictions" in r.getMessage()]
    # at most once a minute of (fake) time: failures at t=0, 63, 123, 183, 243, 303 and 363 s
    assert len(logged) == 7
    assert "run `predaudit provision`" in logged[0].getMessage()


def test_a_dead_letter_its_table_refuses_stops_replay() -> None:
    key = f"dlref-{uuid.uuid4().hex[:6]}"
    dead = drive(MemorySink(key + "-rows", refuse=["evt-000002"]), [pred_row(i) for i in range(4)])
    assert [d["event_id"] for d in dead] == ["evt-000002"]
    dl = MemorySink(key, refuse=["evt-000002"], refuse_tables=("dead_letters",)).for_table("dead_letters", 10)
    with pytest.raises(Exception) as info:
        drive(dl, dead)
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.code == "dead_letter_refused"
    assert dead[0]["dead_letter_id"] in failure.reason
    assert STORE.get(key) in (None, {"dead_letters": []})  # nothing "logged and dropped" either


def test_a_dead_letter_its_table_refuses_back_pressures_in_streaming() -> None:
    key = f"dlstream-{uuid.uuid4().hex[:6]}"
    dead = drive(MemorySink(key + "-rows", refuse=["evt-000001"]), [pred_row(i) for i in range(3)])
    assert len(dead) == 1
    fn = MemorySink(key, refuse=["evt-000001"], refuse_tables=("dead_letters",), mode="streaming")
    fn = fn.for_table("dead_letters", 10)  # type: ignore[assignment]
    sleeps: list[float] = []

    def sleep(s: float) -> None:  # the operator fixes the table after three rounds
        sleeps.append(s)
        if len(sleeps) == 3:
            fn.refuse_tables = set()

    fn.sleep = sleep  # type: ignore[method-assign]
    assert drive(fn, dead) == []
    assert [d["event_id"] for d in STORE[key]["dead_letters"]] == ["evt-000001"]
    assert sleeps == [1.0, 2.0, 4.0]


# -- identity in the sinks -------------------------------------------------------------------
def test_two_models_sharing_an_event_id_get_different_insert_keys() -> None:
    fraud, churn = pred_row(1, "fraud"), pred_row(1, "churn")
    assert insert_id("predictions", fraud) != insert_id("predictions", churn)
    assert insert_id("predictions", fraud) == identity_id(identity("fraud", "evt-000001"))
    assert dedup_token("predictions", [fraud]) != dedup_token("predictions", [churn])
    # other tables keep their keys
    assert insert_id("dead_letters", {"dead_letter_id": "d1"}) == "d1"
    assert dedup_token("labels", [{"event_id": "e", "model_name": "a"}]) == dedup_token(
        "labels", [{"event_id": "e", "model_name": "b"}]
    )


# -- classification of real exceptions: ClickHouse ---------------------------------------------
def chdb_error(client, sql_or_insert) -> BaseException:
    try:
        sql_or_insert(client)
    except Exception as exc:  # noqa: BLE001 -- the exception object is what the test inspects
        return exc
    raise AssertionError("expected the operation to fail")


def test_clickhouse_chdb_errors_are_classified_by_server_code(chdb_client, ch_database) -> None:
    from schemas.tables import create_clickhouse_tables

    create_clickhouse_tables(chdb_client, ch_database)
    db = ch_database
    missing_db = chdb_error(
        chdb_client, lambda c: c.insert("`nodb_x`.`predictions`", [["a"]], column_names=["event_id"])
    )
    missing_table = chdb_error(
        chdb_client, lambda c: c.insert(f"`{db}`.`nope`", [["a"]], column_names=["event_id"])
    )
    assert (missing_db.code, missing_table.code) == (81, 60)  # type: ignore[attr-defined]
    v = classify_clickhouse(missing_db, "nodb_x", "predictions", "chdb:///x")
    assert (v.kind, v.code) == (SINK_FAILURE, "unknown_database")
    assert "predaudit provision --sinks clickhouse" in v.fix and "--clickhouse_database nodb_x" in v.fix
    assert classify_clickhouse(missing_table, db, "nope", "chdb:///x").code == "unknown_table"

    chdb_client.command(f"ALTER TABLE `{db}`.predictions ADD CONSTRAINT lat CHECK latency_ms >= 0")
    cols = ["event_id", "event_time", "model_name", "model_version", "latency_ms"]
    refused = chdb_error(
        chdb_client,
        lambda c: c.insert(f"`{db}`.`predictions`", [["e", 1, "m", "1", -1.0]], column_names=cols),
    )
    assert refused.code == 469  # type: ignore[attr-defined]  # VIOLATED_CONSTRAINT
    assert classify_clickhouse(refused, db, "predictions", "chdb:///x").kind == ROW_REFUSAL
    # values the client cannot encode for the column type: refused rows, not a sink failure
    none_required = chdb_error(
        chdb_client, lambda c: c.insert(f"`{db}`.`predictions`", [[None]], column_names=["event_id"])
    )
    assert classify_clickhouse(none_required, db, "predictions", "x").kind == ROW_REFUSAL
    bad_float = chdb_error(
        chdb_client, lambda c: c.insert(f"`{db}`.`predictions`", [["x"]], column_names=["latency_ms"])
    )
    assert isinstance(bad_float, ValueError)
    assert classify_clickhouse(bad_float, db, "predictions", "x").kind == ROW_REFUSAL
    no_column = chdb_error(
        chdb_client, lambda c: c.insert(f"`{db}`.`predictions`", [["a"]], column_names=["zzz"])
    )
    assert classify_clickhouse(no_column, db, "predictions", "x").code == "missing_column"
    # a ValueError from our own code is not a row refusal
    assert classify_clickhouse(ValueError("bug"), db, "predictions", "x").kind == SINK_FAILURE


@pytest.mark.parametrize(
    ("status", "code", "retried", "kind", "ours"),
    [
        (404, "81", False, SINK_FAILURE, "unknown_database"),
        (404, "60", True, SINK_FAILURE, "unknown_table"),  # OperationalError after the client's retry
        (516, "516", False, SINK_FAILURE, "auth_failed"),
        (403, "497", False, SINK_FAILURE, "access_denied"),
        (500, "16", False, SINK_FAILURE, "missing_column"),
        (500, "252", False, TRANSIENT, "server_busy"),  # TOO_MANY_PARTS
        (503, "241", True, TRANSIENT, "server_busy"),  # MEMORY_LIMIT_EXCEEDED
        (500, "469", False, ROW_REFUSAL, "refused_by_server"),
        (500, "62", False, SINK_FAILURE, "server_error"),  # SYNTAX_ERROR: unknown to us, loud
        (502, None, True, TRANSIENT, "unreachable"),  # a proxy's 502, no ClickHouse code
    ],
)
def test_clickhouse_http_errors_are_classified_by_server_code(status, code, retried, kind, ours) -> None:
    from clickhouse_connect.driver._backend.httpcommon import build_http_error

    exc = build_http_error(
        status, code, f"Code: {code}. DB::Exception: x. (X)", True, "http://h:8123", retried
    )
    v = classify_clickhouse(exc, "audit", "predictions", "https://audit:secret@h:8443")
    assert (v.kind, v.code) == (kind, ours)
    assert "secret" not in v.fix + v.reason


@pytest.fixture()
def plain_http_port() -> Iterator[int]:
    """A plain HTTP server: a TLS client talking to it fails the handshake (a real SSLError)."""
    srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_clickhouse_tls_failure_is_a_sink_failure_and_refused_connection_is_transient(
    plain_http_port,
) -> None:
    import clickhouse_connect

    def connect(dsn: str, **kw) -> BaseException:
        try:
            clickhouse_connect.get_client(dsn=dsn, connect_timeout=5, **kw)
        except Exception as exc:  # noqa: BLE001 -- inspected below
            return exc
        raise AssertionError("connected")

    tls = connect(f"https://127.0.0.1:{plain_http_port}", interface="https")
    assert (classify_clickhouse(tls, "audit", "predictions", "https://x").code) == "tls"
    refused = connect(f"http://127.0.0.1:{closed_port()}")
    assert classify_clickhouse(refused, "audit", "predictions", "http://x").kind == TRANSIENT


# -- classification of real exceptions: BigQuery ------------------------------------------------
@pytest.mark.parametrize(
    ("status", "reason", "kind", "ours"),
    [
        (404, "notFound", SINK_FAILURE, "not_found"),
        (401, "unauthorized", SINK_FAILURE, "auth_failed"),
        (403, "accessDenied", SINK_FAILURE, "access_denied"),
        (403, "rateLimitExceeded", TRANSIENT, "rate_limited"),
        (400, "invalid", ROW_REFUSAL, "refused_by_server"),
        (413, "", ROW_REFUSAL, "refused_by_server"),
        (429, "", TRANSIENT, "server_busy"),
        (500, "internalError", TRANSIENT, "server_busy"),
        (503, "backendError", TRANSIENT, "server_busy"),
        (409, "duplicate", SINK_FAILURE, "server_error"),
    ],
)
def test_bigquery_api_errors_are_classified_by_class(status, reason, kind, ours) -> None:
    from google.api_core import exceptions as gexc

    exc = gexc.from_http_status(status, "message", errors=[{"reason": reason, "message": "m"}])
    v = classify_bigquery(exc, "p.audit.predictions", "p", "audit")
    assert (v.kind, v.code) == (kind, ours)
    if ours == "not_found":
        assert "predaudit provision --sinks bigquery --bq_project p --bq_dataset audit" in v.fix


def test_bigquery_auth_tls_and_connection_errors(plain_http_port) -> None:
    from google.auth import exceptions as gauth

    from transforms.sinks.bigquery import bigquery_client

    def insert(endpoint: str) -> BaseException:
        try:
            bigquery_client("predaudit-test", endpoint).insert_rows_json(
                "predaudit-test.a.b", [{"a": 1}], retry=None, timeout=10
            )
        except Exception as exc:  # noqa: BLE001 -- inspected below
            return exc
        raise AssertionError("inserted")

    assert classify_bigquery(insert(f"https://127.0.0.1:{plain_http_port}"), "t", "p", "d").code == "tls"
    assert classify_bigquery(insert(f"http://127.0.0.1:{closed_port()}"), "t", "p", "d").kind == TRANSIENT
    assert classify_bigquery(gauth.RefreshError("expired"), "t", "p", "d").code == "auth_failed"
    assert classify_bigquery(gauth.TransportError("dns"), "t", "p", "d").kind == TRANSIENT
    assert classify_bigquery(KeyError("bug"), "t", "p", "d").kind == SINK_FAILURE


def test_sink_failure_round_trip_keeps_sink_and_table() -> None:
    from transforms.sinks.errors import parse_marked, sink_stopped

    f = SinkFailure(
        "clickhouse",
        "audit.predictions",
        "UNKNOWN_DATABASE: x",
        "run `predaudit provision`",
        "unknown_database",
    )
    e = sink_stopped(f)
    beam_copy = type(e)(e.args[0] + " [while running 'Write/Write_predictions_clickhouse']")
    for found in (find_sink_failure(beam_copy), parse_marked(str(beam_copy))):
        assert found is not None
        assert (found.sink, found.table, found.code, found.fix) == (
            "clickhouse",
            "audit.predictions",
            "unknown_database",
            "run `predaudit provision`",
        )


def test_every_clickhouse_code_we_classify_has_that_name_in_the_engine_and_its_class(chdb_client) -> None:
    """The code tables are checked against the real engine (errorCodeToName), are disjoint, and
    each code lands in its class through clickhouse-connect's own HTTP error builder."""
    from clickhouse_connect.driver._backend.httpcommon import build_http_error

    from transforms.sinks.clickhouse import ROW_CODES, SINK_CODES, TRANSIENT_CODES

    tables = {
        SINK_FAILURE: {c: name for c, (name, _) in SINK_CODES.items()},
        TRANSIENT: TRANSIENT_CODES,
        ROW_REFUSAL: ROW_CODES,
    }
    every = [c for t in tables.values() for c in t]
    assert len(every) == len(set(every))  # no code in two classes
    names = dict(
        chdb_client.query(
            f"SELECT c, errorCodeToName(c) FROM system.one ARRAY JOIN {sorted(every)} AS c"
        ).result_rows
    )
    for kind, table in tables.items():
        for code, name in table.items():
            assert names[code] == name, code
            exc = build_http_error(
                500, str(code), f"Code: {code}. DB::Exception: x. ({name})", True, "u", False
            )
            v = classify_clickhouse(exc, "audit", "predictions", "http://h")
            assert v.kind == kind, (code, name)
            assert name in v.reason
            if kind == SINK_FAILURE:
                assert v.code == SINK_CODES[code][1] and v.fix


class InsertAllAnswers:
    """Answers ``insert_rows_json`` like BigQuery's insertAll (bqemulator never returns
    insertErrors: it answers a bad row with HTTP 500), one scripted answer per call."""

    def __init__(self, answers: list[dict[str, str]]) -> None:
        self.answers, self.calls = answers, []

    def insert_rows_json(self, ref, rows, row_ids, skip_invalid_rows, retry):
        assert skip_invalid_rows is True and retry is None
        self.calls.append(list(row_ids))
        by_id = self.answers.pop(0) if self.answers else {}
        return [
            {"index": i, "errors": [{"reason": by_id[rid], "message": "m"}]}
            for i, rid in enumerate(row_ids)
            if rid in by_id
        ]


def bq_fn(client: InsertAllAnswers, mode: str = "replay", batch: int = 100):
    from transforms.sinks.bigquery import BigQuerySinkFn

    fn = BigQuerySinkFn("p", "audit", "http://unused", RetryPolicy(attempts=2, base_delay_s=0.0), mode)  # type: ignore[arg-type]
    fn = fn.for_table("predictions", batch)
    fn.make_client = lambda: client  # type: ignore[method-assign]
    fn.client_key = lambda: (id(client),)  # type: ignore[method-assign]
    return fn


def test_bigquery_invalid_rows_are_refused_and_stopped_rows_resent() -> None:
    rows = [pred_row(i) for i in range(4)]
    ids = [insert_id("predictions", r) for r in rows]
    client = InsertAllAnswers([{ids[1]: "invalid", ids[2]: "stopped", ids[3]: "backendError"}, {}])
    dead = drive(bq_fn(client), rows)
    assert [(d["event_id"], d["error_code"]) for d in dead] == [("evt-000001", "sink_rejected")]
    assert "invalid" in dead[0]["error_message"]
    assert client.calls == [ids, [ids[2], ids[3]]]  # only the unwritten rows were re-sent


def test_bigquery_rows_that_stay_unwritten_are_a_sink_failure_not_dead_letters() -> None:
    rows = [pred_row(i) for i in range(2)]
    ids = [insert_id("predictions", r) for r in rows]
    client = InsertAllAnswers([{ids[0]: "stopped"}] * 20)
    with pytest.raises(Exception) as info:
        drive(bq_fn(client), rows)
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.code == "unreachable" and "not written" in failure.reason
    assert len(client.calls) == 2 * 3  # 2 policy attempts x (1 send + 2 re-sends)


def test_sink_failure_lines_name_the_fix_exactly() -> None:
    """The one line a user sees is a contract: the provision command to run, no password."""
    from clickhouse_connect.driver._backend.httpcommon import build_http_error
    from google.api_core import exceptions as gexc

    from transforms.sinks.bigquery import BigQuerySinkFn
    from transforms.sinks.clickhouse import ClickHouseSinkFn
    from transforms.sinks.retry import RetriesExhausted

    dsn, shown = "https://audit:s3cret@ch.example:8443", "https://audit@ch.example:8443"
    provision = (
        f"run `predaudit provision --sinks clickhouse --clickhouse_dsn {shown} --clickhouse_database audit"
        " --pubsub off` (or replay without --no_create_tables)"
    )

    def ch(code: str) -> tuple[str, str, str]:
        body = f"Code: {code}. DB::Exception: boom. (X)"
        v = classify_clickhouse(
            build_http_error(500, code, body, "scrub", "u", False), "audit", "predictions", dsn
        )
        return v.code, v.reason, v.fix

    assert ch("81") == (
        "unknown_database",
        "code 81: Received ClickHouse exception, code: 81, server response: Code: 81. DB::Exception: boom. (X)",
        provision,
    )
    assert ch("60")[2] == provision
    assert ch("16")[2] == f"the table audit.predictions lacks expected columns: {provision}"
    assert ch("516")[2] == f"check the user and password of --clickhouse_dsn {shown}"
    assert ch("497")[2] == f"grant INSERT on audit.* to the user of --clickhouse_dsn {shown}"
    assert ch("62")[2] == "see the ClickHouse server log (error code 62)"
    exhausted = RetriesExhausted(3, ConnectionError("refused"))
    fn = ClickHouseSinkFn(dsn, "audit")
    assert str(SinkFailure("clickhouse", fn.where("labels"), **_rf(fn.exhausted(exhausted)))) == (
        "clickhouse: audit.labels: gave up after 3 attempts: ConnectionError: refused"
        f" -- fix: check that ClickHouse at {shown} is up and reachable"
    )
    assert fn.connect_fix() == (
        f"check --clickhouse_dsn {shown} (an embedded chdb:// directory is locked while another process has it open)"
    )

    def bq(status: int, reason: str, endpoint: str = "") -> tuple[str, str, str]:
        exc = gexc.from_http_status(status, "boom", errors=[{"reason": reason}])
        v = classify_bigquery(exc, "p.audit.predictions", "p", "audit", endpoint)
        return v.code, v.reason, v.fix

    assert bq(404, "notFound") == (
        "not_found",
        "NotFound: 404 boom",
        "run `predaudit provision --sinks bigquery --bq_project p --bq_dataset audit --pubsub off`"
        " (or replay without --no_create_tables)",
    )
    assert "--bq_dataset audit --bq_endpoint http://e:1 --pubsub off`" in bq(404, "notFound", "http://e:1")[2]
    assert bq(401, "x")[2] == (
        "check the credentials (`gcloud auth application-default login` or the worker service account)"
    )
    assert (
        bq(403, "accessDenied")[2]
        == "grant roles/bigquery.dataEditor on p:audit to the pipeline's service account"
    )
    assert bq(409, "duplicate")[2] == "unexpected BigQuery answer writing p.audit.predictions"
    bfn = BigQuerySinkFn("p", "audit")
    assert bfn.exhausted(exhausted).fix == "check that BigQuery (bigquery.googleapis.com) is reachable"
    assert (
        BigQuerySinkFn("p", "audit", "http://e:1").exhausted(exhausted).fix
        == "check that BigQuery (http://e:1) is reachable"
    )


def _rf(v: Verdict) -> dict[str, str]:
    return {"reason": v.reason, "fix": v.fix, "code": v.code}


def test_clickhouse_sink_writes_each_identity_and_a_retried_batch_once(
    chdb_path, chdb_client, ch_database
) -> None:
    from schemas.tables import create_clickhouse_tables
    from transforms.sinks.clickhouse import ClickHouseSinkFn

    create_clickhouse_tables(chdb_client, ch_database)
    fn = ClickHouseSinkFn(f"chdb://{chdb_path}", ch_database).for_table("predictions", 100)
    fraud = [pred_row(i, "fraud", latency_ms=1.5) for i in range(3)]
    churn = [pred_row(i, "churn") for i in range(3)]
    assert drive(fn, fraud) == [] and drive(fn, churn) == [] and drive(fn, fraud) == []
    got = chdb_client.query(
        f"SELECT model_name, event_id, latency_ms FROM `{ch_database}`.predictions ORDER BY model_name, event_id"
    ).result_rows
    assert got == [("churn", f"evt-{i:06d}", None) for i in range(3)] + [
        ("fraud", f"evt-{i:06d}", 1.5) for i in range(3)
    ]
    assert fn.where("predictions") == f"{ch_database}.predictions"


def test_bigquery_refusals_in_a_later_request_chunk_name_the_right_row() -> None:
    rows = [pred_row(i) for i in range(1100)]  # three insertAll requests of <= 500 rows
    ids = [insert_id("predictions", r) for r in rows]
    client = InsertAllAnswers([{}, {ids[777]: "invalid"}, {ids[1099]: "invalid"}])
    dead = drive(bq_fn(client, batch=5000), rows)
    assert [d["event_id"] for d in dead] == ["evt-000777", "evt-001099"]
    assert [len(c) for c in client.calls] == [500, 500, 100] and sum(client.calls, []) == ids


class FlakyConnect(MemorySink):
    """A sink whose client cannot be made the first ``connect_failures`` times."""

    def __init__(self, key: str, connect_failures: int, error: type[Exception]) -> None:
        super().__init__(key, policy=RetryPolicy(attempts=3, base_delay_s=0.0))
        self.connect_failures, self.error = connect_failures, error

    def make_client(self) -> object:
        made = CALLS.setdefault(self.key + "/connect", [])
        made.append(("connect", 0))
        if len(made) <= self.connect_failures:
            raise self.error("cannot open the store")
        return object()


def test_a_client_that_cannot_be_made_is_retried_then_a_connect_failure() -> None:
    key = f"connect-{uuid.uuid4().hex[:6]}"
    fn = FlakyConnect(key, 2, ConnectionError)  # refused twice, then up
    fn.sleep = lambda s: None  # type: ignore[method-assign]
    assert drive(fn, [pred_row(1)]) == []
    assert len(CALLS[key + "/connect"]) == 3 and stored(key, "predictions") == ["evt-000001"]

    key = f"connect-{uuid.uuid4().hex[:6]}"
    fn = FlakyConnect(key, 99, RowError)  # what would read as a row refusal: not before a row is sent
    with pytest.raises(Exception) as info:
        drive(fn, [pred_row(i) for i in range(4)])
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.code == "connect_failed"
    assert failure.fix == "check the memory connection settings" and "cannot open the store" in failure.reason
    assert len(CALLS[key + "/connect"]) == 1 and key not in CALLS  # no bisection, no insert

    key = f"connect-{uuid.uuid4().hex[:6]}"
    fn = FlakyConnect(key, 99, SinkDown)  # a typed sink failure at connect keeps its own fix
    with pytest.raises(Exception) as info:
        drive(fn, [pred_row(1)])
    failure = find_sink_failure(info.value)
    assert failure is not None and (failure.code, failure.fix) == (
        "unknown_table",
        "run `predaudit provision`",
    )
