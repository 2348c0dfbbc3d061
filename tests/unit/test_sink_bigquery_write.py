"""The BigQuery sink's Storage Write API path against an in-memory Write service, fast.

``WriteService`` keeps streams and tables the way the service does (PENDING streams visible
only after finalize + commit, COMMITTED streams visible per append, an append at an offset
already written answered ALREADY_EXISTS, one past the end OUT_OF_RANGE, an unknown stream
NOT_FOUND) and can be scripted to answer what bqemulator never does: row errors, a lost
response, a permission error, an empty answer. Rows are decoded from the serialized proto
bytes, so what lands is what BigQuery would store. The same paths run against bqemulator's
gRPC port in tests/integration/test_bq_write_api.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud.bigquery_storage_v1 import types
from google.protobuf import empty_pb2
from google.protobuf.unknown_fields import UnknownFieldSet
from google.rpc import status_pb2

from schemas.tables import TABLES
from tests.unit.test_sinks import drive
from tests.unit.test_sinks import pred_row as base_row
from tests.unit.test_sinks_contract import counted
from transforms.deadletters import row_dead_letter
from transforms.rows import from_micros
from transforms.sinks import bigquery
from transforms.sinks.bigquery import (
    AppendFailed,
    BigQuerySinkFn,
    RowsNotWritten,
    StreamLost,
    batch_id,
    encode_row,
    row_class,
    status_exception,
)
from transforms.sinks.errors import SINK_FAILURE, TRANSIENT, Verdict, find_sink_failure
from transforms.sinks.retry import RetriesExhausted, RetryPolicy

FAST = RetryPolicy(attempts=3, base_delay_s=0.0)


def pred_row(i: int, model: str = "fraud", **over: Any) -> dict[str, Any]:
    """A predictions row with every REQUIRED column (the Write API path checks them first)."""
    row = base_row(i, model, **over)
    for c in TABLES["predictions"].columns:
        if c.required and row.get(c.name) is None:
            row[c.name] = "0" * 64
    return row


def decode(table: str, data: bytes) -> dict[str, Any]:
    msg = row_class(table).FromString(data)
    return {fd.name: (list(v) if fd.label == fd.LABEL_REPEATED else v) for fd, v in msg.ListFields()}


def status(code: int, message: str = "") -> types.AppendRowsResponse:
    return types.AppendRowsResponse(error=status_pb2.Status(code=code, message=message or f"status {code}"))


LOST = "lost"  # the append lands, but its answer never arrives (UNAVAILABLE)
EMPTY = "empty"  # the call returns no answer at all


class WriteService:
    """An in-memory BigQuery Storage Write service (see the module docstring)."""

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.streams: dict[str, dict[str, Any]] = {}
        self.appends: list[tuple[str, int, int]] = []  # (stream, offset, rows)
        self.script: list[Any] = []  # answers for the next appends (None: answer normally)
        self.commit_errors: list[str] = []
        self.finalized: list[str] = []

    def create_write_stream(self, parent: str, write_stream: types.WriteStream, retry: Any) -> Any:
        assert retry is None
        name = f"{parent}/streams/s{len(self.streams)}"
        pending = write_stream.type_ == types.WriteStream.Type.PENDING
        self.streams[name] = {"table": parent.rsplit("/", 1)[1], "pending": pending, "rows": []}
        return types.WriteStream(name=name, type_=write_stream.type_)

    def _apply(self, req: types.AppendRowsRequest) -> types.AppendRowsResponse:
        st = self.streams.get(req.write_stream)
        if st is None:
            return status(5, f"stream {req.write_stream} not found")
        if req.offset < len(st["rows"]):
            return status(6, f"offset {req.offset} already exists")
        if req.offset > len(st["rows"]):
            return status(11, f"offset {req.offset} beyond the end")
        desc = req.proto_rows.writer_schema.proto_descriptor
        assert [f.name for f in desc.field] == TABLES[st["table"]].column_names
        rows = [decode(st["table"], r) for r in req.proto_rows.rows.serialized_rows]
        st["rows"].extend(rows)
        if not st["pending"]:
            self.tables.setdefault(st["table"], []).extend(rows)
        return types.AppendRowsResponse(
            append_result=types.AppendRowsResponse.AppendResult(offset=req.offset)
        )

    def append_rows(self, requests: Iterator[types.AppendRowsRequest], retry: Any) -> Iterator[Any]:
        assert retry is None
        out = []
        for req in requests:
            self.appends.append((req.write_stream, req.offset, len(req.proto_rows.rows.serialized_rows)))
            answer = self.script.pop(0) if self.script else None
            if answer == EMPTY:
                return iter([])
            if answer == LOST:
                self._apply(req)
                raise gexc.ServiceUnavailable("connection reset before the answer")
            out.append(self._apply(req) if answer is None else answer)
        return iter(out)

    def finalize_write_stream(self, name: str, retry: Any) -> None:
        assert retry is None and self.streams[name]["pending"]
        self.finalized.append(name)

    def batch_commit_write_streams(self, request: Any, retry: Any) -> Any:
        assert retry is None
        if self.commit_errors:
            err = types.StorageError(error_message=self.commit_errors.pop(0))
            return types.BatchCommitWriteStreamsResponse(stream_errors=[err])
        for name in request.write_streams:
            assert name in self.finalized and name.startswith(request.parent + "/")
            st = self.streams[name]
            self.tables.setdefault(st["table"], []).extend(st["rows"])
        return types.BatchCommitWriteStreamsResponse()


class Rest:
    """The REST client's ``query`` for the presence check, answered from the service's tables."""

    def __init__(self, service: WriteService) -> None:
        self.service = service
        self.queries: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, job_config: Any, retry: Any) -> Any:
        assert retry is None
        params = {p.name: p for p in job_config.query_parameters}
        self.queries.append((sql, params))
        table = re.search(r"FROM `p\.audit\.(\w+)`", sql).group(1)  # type: ignore[union-attr]
        t = TABLES[table]
        hits = []
        for row in self.service.tables.get(table, []):
            if not all(str(row.get(c)) in params[f"k{n}"].values for n, c in enumerate(t.identity)):
                continue
            if "lo" in params and not (
                params["lo"].value <= from_micros(row[t.time_column]) <= params["hi"].value
            ):
                continue
            hits.append({c: row.get(c) for c in t.identity})

        class Job:
            def result(self) -> list[dict[str, Any]]:
                return hits

        return Job()


@pytest.fixture()
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[WriteService, Rest, list[tuple]]]:
    """The fakes behind the sink's own ``make_client`` (it calls these two factories)."""
    svc = WriteService()
    rest = Rest(svc)
    made: list[tuple] = []

    def bq_client(project: str, endpoint: str = "") -> Rest:
        made.append(("rest", project, endpoint))
        return rest

    def w_client(endpoint: str = "") -> WriteService:
        made.append(("write", endpoint))
        return svc

    monkeypatch.setattr(bigquery, "bigquery_client", bq_client)
    monkeypatch.setattr(bigquery, "write_client", w_client)
    yield svc, rest, made


def sink(mode: str = "replay", table: str = "predictions", batch: int = 100, **kw: Any) -> BigQuerySinkFn:
    # a fresh endpoint per sink: clients are cached per thread and connection settings
    fn = BigQuerySinkFn("p", "audit", "", kw.pop("policy", FAST), mode, f"w-{uuid.uuid4().hex[:8]}:1")  # type: ignore[arg-type]
    return fn.for_table(table, batch)  # type: ignore[return-value]


def ids(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((r["model_name"], r["event_id"]) for r in rows)


# -- replay: PENDING stream + commit, presence check -------------------------------------------
def test_replay_commits_each_batch_and_a_rerun_skips_what_is_there(service) -> None:
    svc, rest, made = service
    rows = [pred_row(i, quality_issues=["range:amount"] if i == 1 else []) for i in range(5)]
    fn = sink(batch=3)
    assert drive(fn, rows) == []
    assert made[:2] == [("rest", "p", ""), ("write", fn.write_endpoint)]
    assert ids(svc.tables["predictions"]) == ids(rows)
    one = next(r for r in svc.tables["predictions"] if r["event_id"] == "evt-000001")
    assert one["quality_issues"] == ["range:amount"] and one["event_time"] == rows[1]["event_time"]
    assert [(o, n) for _, o, n in svc.appends] == [(0, 3), (0, 2)]  # a new PENDING stream per batch
    assert len(svc.finalized) == 2 and all(s["pending"] for s in svc.streams.values())
    again = [*rows, pred_row(7), pred_row(1, "churn")]
    with counted() as c:
        assert drive(sink(), again) == []
        assert c("bigquery_rows_already_present_predictions") == 5
        assert c("bigquery_rows_written_predictions") == 7
    assert ids(svc.tables["predictions"]) == ids([*rows, pred_row(7), pred_row(1, "churn")])
    assert svc.appends[-1][1:] == (0, 2)
    sql, params = rest.queries[-1]
    assert sql == (
        "SELECT DISTINCT model_name, event_id FROM `p.audit.predictions` WHERE "
        "CAST(model_name AS STRING) IN UNNEST(@k0) AND CAST(event_id AS STRING) IN UNNEST(@k1) "
        "AND event_time BETWEEN @lo AND @hi"
    )
    assert params["k0"].values == ["churn", "fraud"] and params["k0"].array_type == "STRING"
    times = [r["event_time"] for r in again]
    assert (params["lo"].value, params["hi"].value) == (from_micros(min(times)), from_micros(max(times)))
    assert params["lo"].type_ == params["hi"].type_ == "TIMESTAMP"
    # a batch that is all there already: no stream at all
    streams = len(svc.streams)
    assert drive(sink(), rows) == [] and len(svc.streams) == streams


def test_the_presence_check_prunes_by_time_only_where_the_time_is_the_datas(service) -> None:
    svc, rest, _ = service
    dead = [
        row_dead_letter("predictions", pred_row(i), stage="sink.x", code="sink_rejected", message="m")
        for i in range(2)
    ]
    assert drive(sink(table="dead_letters"), dead) == []
    assert drive(sink(table="dead_letters"), dead) == []
    assert sorted(r["dead_letter_id"] for r in svc.tables["dead_letters"]) == sorted(
        d["dead_letter_id"] for d in dead
    )
    sql, params = rest.queries[-1]
    assert "BETWEEN" not in sql and set(params) == {"k0"}
    # predictions without a time on every row: no range either
    assert drive(sink(), [pred_row(1)]) == []
    row = pred_row(1)
    row["event_time"] = None
    dead_rows = drive(sink(), [row])
    assert [d["error_message"] for d in dead_rows] == ["not_encodable: event_time: REQUIRED column is null"]


def test_a_batch_spanning_time_finds_rows_at_both_ends(service) -> None:
    svc, _, _ = service
    rows = [
        pred_row(0, event_time=1767225600000000),
        pred_row(1, event_time=1767225600000000 + 86_400_000_000),
    ]
    assert drive(sink(), rows) == [] and drive(sink(), rows) == []
    assert len(svc.tables["predictions"]) == 2


def test_unencodable_rows_and_row_errors_are_dead_letters_the_rest_land(service) -> None:
    svc, _, _ = service
    assert drive(sink(), [pred_row(0)]) == []  # already present in the next batch
    rows = [
        pred_row(0),
        {**pred_row(1), "latency_ms": "fast"},
        pred_row(2),
        pred_row(3),
        {**pred_row(4), "nope": 1},
    ]
    svc.script = [
        types.AppendRowsResponse(
            row_errors=[
                types.RowError(index=1, code=types.RowError.RowErrorCode.FIELDS_ERROR, message="too big")
            ]
        )
    ]
    dead = drive(sink(), rows)
    assert [(d["event_id"], d["error_code"]) for d in dead] == [
        ("evt-000001", "sink_rejected"),
        ("evt-000003", "sink_rejected"),
        ("evt-000004", "sink_rejected"),
    ]
    assert dead[0]["error_message"].startswith("not_encodable: latency_ms: ")
    assert dead[1]["error_message"] == "row_error 1: too big"
    assert dead[2]["error_message"].startswith("not_encodable: nope: ")
    assert ids(svc.tables["predictions"]) == ids([pred_row(0), pred_row(2)])
    # the refused row's request wrote nothing; the others were re-sent at the same offset
    assert [(o, n) for _, o, n in svc.appends[-2:]] == [(0, 2), (0, 1)]
    assert len(drive(sink(), [{**pred_row(9), "latency_ms": "x"}])) == 1  # nothing encodable: no stream
    assert len(svc.streams) == 2


def test_a_permission_error_stops_replay_with_the_grant_to_give(service) -> None:
    svc, _, _ = service
    svc.script = [status(7, "permission denied on table")]
    with pytest.raises(Exception) as info:
        drive(sink(), [pred_row(1)])
    failure = find_sink_failure(info.value)
    assert failure is not None and (failure.code, failure.table) == ("access_denied", "p.audit.predictions")
    assert failure.fix == "grant roles/bigquery.dataEditor on p:audit to the pipeline's service account"
    assert svc.tables.get("predictions") is None


def test_commit_refusals_and_empty_answers_are_not_written(service) -> None:
    svc, _, _ = service
    svc.script = [EMPTY]
    with counted() as c:
        assert drive(sink(), [pred_row(1)]) == []  # no answer: retried (transient), then written
        assert c("bigquery_retries") == 1
    assert ids(svc.tables["predictions"]) == ids([pred_row(1)])
    # a commit the service refuses is about the stream, not its rows: never dead letters;
    # retried on a new stream, and replay stops when it keeps being refused
    svc.commit_errors = ["stream has schema errors"]
    assert drive(sink(), [pred_row(2), pred_row(3)]) == []
    assert ids(svc.tables["predictions"]) == ids([pred_row(i) for i in (1, 2, 3)])
    svc.commit_errors = ["stream has schema errors"] * 3
    with pytest.raises(Exception) as info:
        drive(sink(), [pred_row(4), pred_row(5)])
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.code == "unreachable"
    assert "refused: stream has schema errors" in failure.reason
    assert ids(svc.tables["predictions"]) == ids([pred_row(i) for i in (1, 2, 3)])


# -- streaming: one COMMITTED stream, explicit offsets ----------------------------------------
def test_streaming_appends_at_the_next_offset_of_one_committed_stream(service) -> None:
    svc, _, _ = service
    fn = sink("streaming", batch=3)
    assert drive(fn, [pred_row(i) for i in range(5)]) == []
    assert drive(fn, [pred_row(i) for i in range(5, 7)]) == []
    assert len(svc.streams) == 1 and not next(iter(svc.streams.values()))["pending"]
    assert [(o, n) for _, o, n in svc.appends] == [(0, 3), (3, 2), (5, 2)]
    assert ids(svc.tables["predictions"]) == ids([pred_row(i) for i in range(7)])
    # another table of the same sink: its own stream
    assert drive(sink("streaming", table="labels"), []) == []


def test_a_lost_answer_is_retried_at_the_same_offset_and_written_once(service) -> None:
    svc, _, _ = service
    fn = sink("streaming")
    svc.script = [None, LOST]
    with counted() as c:
        assert drive(fn, [pred_row(0)]) == []
        assert drive(fn, [pred_row(1), pred_row(2)]) == []
        assert c("bigquery_appends_already_written") == 1 and c("bigquery_retries") == 1
    assert [(o, n) for _, o, n in svc.appends] == [(0, 1), (1, 2), (1, 2)]
    assert ids(svc.tables["predictions"]) == ids([pred_row(i) for i in range(3)])
    assert drive(fn, [pred_row(3)]) == [] and svc.appends[-1][1:] == (3, 1)


def test_a_lost_stream_is_replaced_and_only_the_rows_not_landed_are_resent(service, monkeypatch) -> None:
    svc, _, _ = service
    size = len(encode_row("predictions", pred_row(0))) + 8
    monkeypatch.setattr(bigquery, "MAX_APPEND_BYTES", 2 * size)  # two rows per request
    fn = sink("streaming")
    svc.script = [None, status(5, "stream gone")]
    with counted() as c:
        assert drive(fn, [pred_row(i) for i in range(4)]) == []
        assert c("bigquery_retries") == 1
    first, second = list(svc.streams)
    assert [(s, o, n) for s, o, n in svc.appends] == [(first, 0, 2), (first, 2, 2), (second, 0, 2)]
    assert ids(svc.tables["predictions"]) == ids([pred_row(i) for i in range(4)])
    # the same rows again in a later batch (a re-sent half batch): already landed, skipped
    assert drive(fn, [pred_row(2), pred_row(5)]) == []
    assert svc.appends[-1] == (second, 2, 1)


def test_a_stream_out_of_step_is_replaced(service) -> None:
    svc, _, _ = service
    fn = sink("streaming")
    assert drive(fn, [pred_row(0)]) == []
    svc.streams[next(iter(svc.streams))]["rows"].clear()  # the stream forgot: OUT_OF_RANGE
    assert drive(fn, [pred_row(1)]) == []
    assert len(svc.streams) == 2 and svc.appends[-1][1:] == (0, 1)


def test_row_errors_in_streaming_dead_letter_the_row_and_land_the_rest(service) -> None:
    svc, _, _ = service
    svc.script = [types.AppendRowsResponse(row_errors=[types.RowError(index=0, code=1, message="bad")])]
    dead = drive(sink("streaming"), [pred_row(0), pred_row(1)])
    assert [(d["event_id"], d["error_message"]) for d in dead] == [("evt-000000", "row_error 1: bad")]
    assert [(o, n) for _, o, n in svc.appends] == [(0, 2), (0, 1)]
    assert ids(svc.tables["predictions"]) == ids([pred_row(1)])


def test_a_failed_append_status_is_classified_by_its_code(service) -> None:
    svc, _, _ = service
    svc.script = [status(14, "backend unavailable")]
    assert drive(sink("streaming"), [pred_row(0)]) == []  # UNAVAILABLE: retried
    assert len(svc.tables["predictions"]) == 1
    fn = sink("streaming")
    fn.client = object()
    verdict = fn.classify(AppendFailed("x").with_traceback(None))
    assert verdict == Verdict(TRANSIENT, "append_failed", "AppendFailed: x")
    assert fn.classify(StreamLost("gone (status 5)")) == Verdict(
        TRANSIENT, "stream_lost", "StreamLost: gone (status 5)"
    )
    try:
        raise AppendFailed("denied") from status_exception(7, "denied")
    except AppendFailed as exc:
        v = fn.classify(exc)
    assert (v.kind, v.code) == (SINK_FAILURE, "access_denied")
    rnw = fn.classify(RowsNotWritten(2, ["stopped", "timeout"]))
    assert rnw == Verdict(
        TRANSIENT,
        "rows_not_written",
        "RowsNotWritten: 2 row(s) not written after 2 re-sends: stopped, timeout",
    )


# -- encoding and small pieces ---------------------------------------------------------------
def test_rows_are_encoded_by_column_position_and_kind() -> None:
    """The wire form BigQuery decodes with the writer schema: field n is the n-th column of
    schemas/tables.py, varint for ints/timestamps/bools, 64-bit for floats, bytes for text."""
    row = pred_row(3, latency_ms=2.5, quality_issues=["a", "b"], prediction_label=None)
    msg = empty_pb2.Empty()
    msg.ParseFromString(encode_row("predictions", row))
    got = [(f.field_number, f.wire_type) for f in UnknownFieldSet(msg)]
    cols = TABLES["predictions"].columns
    wire = {
        "string": 2,
        "lowcard": 2,
        "json": 2,
        "strings": 2,
        "int": 0,
        "timestamp": 0,
        "float": 1,
        "bool": 0,
    }
    expected = []
    for n, c in enumerate(cols, start=1):
        value = row.get(c.name)
        if value is None:
            continue
        expected += [(n, wire[c.kind])] * (len(value) if isinstance(value, list) else 1)
    assert got == expected
    assert decode("predictions", encode_row("predictions", row))["quality_issues"] == ["a", "b"]
    for bad, why in [
        ({"event_time": 2**70}, "event_time: "),
        ({"extra": "x"}, "extra: "),
        ({"status": 3}, "status: "),
    ]:
        with pytest.raises(TypeError, match=f"^{why}"):
            encode_row("predictions", {**row, **bad})
    assert encode_row("predictions", {**row, "model_version": "1"}) == encode_row("predictions", row)
    assert row_class("labels") is row_class("labels")


def test_status_codes_map_to_api_core_exceptions() -> None:
    got = {c: type(status_exception(c, "m")).__name__ for c in (5, 7, 9, 14, 3, 999)}
    assert got == {
        5: "NotFound",
        7: "PermissionDenied",
        9: "FailedPrecondition",
        14: "ServiceUnavailable",
        3: "InvalidArgument",
        999: "Unknown",
    }
    assert status_exception(5, "Table p.d.t not found").message == "Table p.d.t not found"


def test_append_requests_split_at_the_byte_cap(monkeypatch) -> None:
    monkeypatch.setattr(bigquery, "MAX_APPEND_BYTES", 100)
    parts = [(i, len(c)) for i, c in bigquery._byte_chunks([b"x" * 42] * 5)]
    assert parts == [(0, 2), (2, 2), (4, 1)]  # 2 x (42 + 8) = 100 fits exactly
    assert [(i, len(c)) for i, c in bigquery._byte_chunks([b"x" * 43] * 3)] == [(0, 1), (1, 1), (2, 1)]
    assert [(i, len(c)) for i, c in bigquery._byte_chunks([b"x" * 200, b"y"])] == [(0, 1), (1, 1)]
    assert list(bigquery._byte_chunks([])) == []


def test_insert_all_requests_split_at_the_row_and_byte_caps(monkeypatch) -> None:
    monkeypatch.setattr(bigquery, "MAX_BYTES", 2 * (len(b'{"a":1}') + 64))
    got = [(i, len(c)) for i, c in bigquery.chunks([{"a": 1}] * 5)]
    assert got == [(0, 2), (2, 2), (4, 1)]
    monkeypatch.setattr(bigquery, "MAX_ROWS", 3)
    monkeypatch.setattr(bigquery, "MAX_BYTES", 10**6)
    assert [(i, len(c)) for i, c in bigquery.chunks([{"a": 1}] * 7)] == [(0, 3), (3, 3), (6, 1)]


def test_batch_ids_are_short_and_tell_batches_apart() -> None:
    a, b = {"payload_sha256": "a"}, {"payload_sha256": "b"}
    got = {
        batch_id("labels", [a, b]),
        batch_id("labels", [b, a]),
        batch_id("dead_letters", [{"dead_letter_id": "a"}]),
    }
    assert len(got) == 3 and all(re.fullmatch(r"[0-9a-f]{16}", x) for x in got)


def test_the_unreachable_line_names_the_endpoint_in_use() -> None:
    exc = RetriesExhausted(3, ConnectionError("refused"))
    for fn, where in [
        (BigQuerySinkFn("p", "d", "http://rest:1", write_endpoint="grpc:2"), "grpc:2"),
        (BigQuerySinkFn("p", "d", "http://rest:1"), "http://rest:1"),
        (BigQuerySinkFn("p", "d"), "bigquery.googleapis.com"),
    ]:
        assert fn.exhausted(exc) == Verdict(
            SINK_FAILURE,
            "unreachable",
            "gave up after 3 attempts: ConnectionError: refused",
            f"check that BigQuery ({where}) is reachable",
        )
    assert BigQuerySinkFn("p", "d", "http://rest:1").uses_write_api is False
    assert (
        BigQuerySinkFn("p", "d").uses_write_api
        and BigQuerySinkFn("p", "d", "h", write_endpoint="g").uses_write_api
    )
    assert BigQuerySinkFn("p", "d", "e", write_endpoint="g").client_key() == ("p", "e", "g")
    assert BigQuerySinkFn("p", "d").parent("labels") == "projects/p/datasets/d/tables/labels"


def test_the_sink_classifies_with_its_own_table_project_dataset_and_endpoint() -> None:
    fn = BigQuerySinkFn("proj", "ds", "http://e:1").for_table("labels", 10)
    nf = fn.classify(gexc.NotFound("no table"))
    assert (nf.code, nf.fix) == (
        "not_found",
        "run `predaudit provision --sinks bigquery --bq_project proj --bq_dataset ds --bq_endpoint http://e:1"
        " --pubsub off` (or replay without --no_create_tables)",
    )
    assert fn.classify(KeyError("k")).fix == "unexpected error writing proj.ds.labels; see the log"
    try:
        raise AppendFailed("gone") from status_exception(5, "Table proj:ds.labels not found")
    except AppendFailed as exc:
        assert fn.classify(exc).code == "not_found"
    forbidden = gexc.Forbidden("quota", errors=[{"message": "no reason key"}])
    assert fn.classify(forbidden).code == "access_denied"
    limited = gexc.Forbidden("quota", errors=[{"reason": "quotaExceeded"}, "not a dict"])
    assert fn.classify(limited).kind == TRANSIENT


def test_emulator_clients_go_to_the_given_endpoints_without_credentials() -> None:
    import socket

    from google.auth.credentials import AnonymousCredentials

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rest = bigquery.bigquery_client("proj", f"http://127.0.0.1:{port}")
    assert rest.project == "proj" and rest._connection.API_BASE_URL == f"http://127.0.0.1:{port}"
    assert isinstance(rest._credentials, AnonymousCredentials)
    write = bigquery.write_client(f"http://127.0.0.1:{port}")  # the scheme is dropped: a gRPC target
    with pytest.raises(gexc.ServiceUnavailable, match=f"127.0.0.1:{port}"):
        write.create_write_stream(parent="projects/p/datasets/d/tables/t", retry=None, timeout=20)
    bare = bigquery.write_client(f"127.0.0.1:{port}")  # host:port as given
    with pytest.raises(gexc.ServiceUnavailable, match=f"127.0.0.1:{port}"):
        bare.create_write_stream(parent="projects/p/datasets/d/tables/t", retry=None, timeout=20)


# -- legacy insertAll (an emulator endpoint without a gRPC port) ------------------------------
class InsertAll:
    """``insert_rows_json`` answering per row id, recording what was sent."""

    def __init__(self, answers: list[dict[str, list[dict[str, str]] | None]]) -> None:
        self.answers, self.sent = answers, []

    def insert_rows_json(self, ref, rows, row_ids, skip_invalid_rows, retry):
        assert skip_invalid_rows is True and retry is None and ref == "p.audit.predictions"
        self.sent.append((list(rows), list(row_ids)))
        by_id = self.answers.pop(0) if self.answers else {}
        return [{"index": i, "errors": by_id[rid]} for i, rid in enumerate(row_ids) if rid in by_id]


def legacy(client: InsertAll) -> BigQuerySinkFn:
    fn = BigQuerySinkFn("p", "audit", "http://rest:1", FAST).for_table("predictions", 100)
    fn.make_client = lambda: client  # type: ignore[method-assign]
    fn.client_key = lambda: (id(client),)  # type: ignore[method-assign]
    return fn  # type: ignore[return-value]


def test_legacy_rows_go_as_json_with_rfc3339_times_and_reasons_decide_resend_or_refusal() -> None:
    rows = [pred_row(i, latency_ms=None) for i in range(4)]
    ids_ = [bigquery.insert_id("predictions", r) for r in rows]
    client = InsertAll(
        [
            {
                ids_[0]: None,  # an error without reasons: refused, never re-sent blindly
                ids_[1]: [{"reason": "invalid", "message": "bad"}, {"reason": "stopped"}],
                ids_[2]: [{"reason": "timeout"}, {"reason": "stopped"}],
            },
            {},
        ]
    )
    dead = drive(legacy(client), rows)
    assert [(d["event_id"], d["error_message"]) for d in dead] == [
        ("evt-000000", "null"),
        ("evt-000001", '[{"reason":"invalid","message":"bad"},{"reason":"stopped"}]'),
    ]
    first_rows, first_ids = client.sent[0]
    assert first_ids == ids_ and client.sent[1][1] == [ids_[2]]
    assert first_rows[0]["event_time"] == "2026-01-01T00:00:00+00:00" and "latency_ms" not in first_rows[0]
    assert first_rows[3]["ingest_time"] == "2026-01-01T00:00:00.000003+00:00"
    assert first_rows[3]["quality_issues"] == []


def test_stream_errors_that_persist_name_their_cause_when_retries_run_out(service) -> None:
    svc, _, _ = service
    svc.script = [status(9, "stream finalized")]  # FAILED_PRECONDITION: a new stream, then written
    assert drive(sink("streaming"), [pred_row(0)]) == []
    assert len(svc.streams) == 2 and ids(svc.tables["predictions"]) == ids([pred_row(0)])
    for answers, reason in [
        ([status(5, "stream gone")] * 3, "gave up after 3 attempts: StreamLost: stream gone (status 5)"),
        ([EMPTY] * 3, "gave up after 3 attempts: AppendFailed: AppendRows returned no answer"),
    ]:
        svc.script = list(answers)
        with pytest.raises(Exception) as info:  # replay: a sink failure stops the run
            drive(sink(), [pred_row(1)])
        failure = find_sink_failure(info.value)
        assert failure is not None and failure.reason == reason


def test_legacy_rows_with_every_transient_reason_are_resent_and_the_reasons_named() -> None:
    rows = [pred_row(i) for i in range(2)]
    ids_ = [bigquery.insert_id("predictions", r) for r in rows]
    every = [{"reason": r} for r in sorted(bigquery.ROW_RETRY_REASONS)]
    client = InsertAll([{ids_[0]: every}, {}])
    assert drive(legacy(client), rows) == [] and client.sent[1][1] == [ids_[0]]
    stuck = {ids_[0]: [{"reason": "stopped"}], ids_[1]: [{"reason": "timeout"}]}
    client = InsertAll([dict(stuck) for _ in range(9)])
    with pytest.raises(Exception) as info:
        drive(legacy(client), rows)
    failure = find_sink_failure(info.value)
    assert failure is not None
    assert failure.reason.endswith("RowsNotWritten: 2 row(s) not written after 2 re-sends: stopped, timeout")


def test_classify_bigquery_gives_the_whole_verdict() -> None:
    """Kind, code, reason and fix exactly (the reason is the first line, at most 300 chars)."""
    import ssl

    import requests
    from google.auth import exceptions as gauth

    from transforms.sinks.bigquery import classify_bigquery

    def v(exc: BaseException) -> tuple[str, str, str, str]:
        got = classify_bigquery(exc, "p.d.t", "p", "d")
        return got.kind, got.code, got.reason, got.fix

    tls = requests.exceptions.SSLError("handshake")
    tls.__cause__ = ssl.SSLError("handshake")  # how requests chains the ssl error
    assert v(tls)[:2] == (SINK_FAILURE, "tls") and v(tls)[3] == "check the endpoint's certificate / CA"
    assert v(tls)[2].startswith("TLS failure: SSLError: ")
    limited = gexc.Forbidden("slow down", errors=[{"reason": "rateLimitExceeded"}])
    assert v(limited) == (TRANSIENT, "rate_limited", "Forbidden: 403 slow down", "")
    assert v(gexc.Unauthorized("no"))[2] == "Unauthorized: 401 no"
    assert v(gexc.ServiceUnavailable("busy")) == (
        TRANSIENT,
        "server_busy",
        "ServiceUnavailable: 503 busy",
        "",
    )
    assert v(gauth.TransportError("dns")) == (TRANSIENT, "unreachable", "TransportError: dns", "")
    assert v(gauth.RefreshError("expired")) == (
        SINK_FAILURE,
        "auth_failed",
        "RefreshError: expired",
        "check the credentials (`gcloud auth application-default login`)",
    )
    assert v(requests.ConnectionError("refused")) == (
        TRANSIENT,
        "unreachable",
        "ConnectionError: refused",
        "",
    )
    assert v(KeyError()) == (
        SINK_FAILURE,
        "unexpected_error",
        "KeyError: ",
        "unexpected error writing p.d.t; see the log",
    )
    long = gexc.BadRequest("x" * 400 + "\nsecond")
    assert v(long)[2] == "BadRequest: " + ("400 " + "x" * 400)[:300]
    assert "--bq_endpoint" not in classify_bigquery(gexc.NotFound("t"), "p.d.t", "p", "d").fix
