"""BigQuery sink: the Storage Write API (AppendRows, proto rows) by default.

- replay (``mode="replay"``): each batch first asks the table which of its identities are
  already there (a re-run or a retried batch skips them), then appends the rest to a PENDING
  stream, finalizes it and commits it with ``BatchCommitWriteStreams``: a batch becomes
  visible whole or not at all (a crash before the commit leaves nothing behind).
- streaming: one COMMITTED stream per DoFn instance and table, every append at an explicit
  offset: a retried append answered ``ALREADY_EXISTS`` was written already (success).
- legacy ``insert_rows_json`` (insertId = row key) only for an emulator ``endpoint`` given
  without a gRPC ``write_endpoint``.

Row refusals: a row the proto encoding refuses (a value of the wrong type) and the
``row_errors`` of an AppendRowsResponse. Stream/table errors (missing table, permission,
unreachable) are sink failures. Errors are classified by google.api_core exception classes
(and the structured ``errors[].reason`` BigQuery attaches), never by message text.
Predictions use their identity (model name, event_id): two models may share an event_id.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from schemas.tables import TABLES
from transforms.identity import identity_id, row_identity
from transforms.metrics import counter
from transforms.rows import from_micros
from transforms.sinks.base import Mode, SinkFn
from transforms.sinks.clickhouse import is_tls_error
from transforms.sinks.errors import ROW_REFUSAL, SINK_FAILURE, TRANSIENT, Verdict
from transforms.sinks.retry import RetriesExhausted, RetryPolicy

MAX_ROWS = 500
MAX_BYTES = 9_000_000


_TS_COLUMNS = {
    name: frozenset(c.name for c in t.columns if c.kind == "timestamp") for name, t in TABLES.items()
}


def to_json_row(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """Epoch-microsecond timestamps as RFC 3339 strings; nulls left out; the rest is JSON-ready.

    >>> to_json_row("labels", {"label_time": 1767225600000001, "label": "x", "model_name": None})
    {'label_time': '2026-01-01T00:00:00.000001+00:00', 'label': 'x'}
    """
    ts = _TS_COLUMNS[table]
    return {k: (from_micros(v).isoformat() if k in ts else v) for k, v in row.items() if v is not None}


def chunks(rows: Sequence[dict[str, Any]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Split into request-sized chunks; yields (offset, chunk)."""
    start, size, cur = 0, 0, []
    for i, row in enumerate(rows):
        n = len(orjson.dumps(row)) + 64
        if cur and (len(cur) >= MAX_ROWS or size + n > MAX_BYTES):
            yield start, cur
            start, size, cur = i, 0, []
        cur.append(row)
        size += n
    if cur:
        yield start, cur


def insert_id(table: str, row: dict[str, Any]) -> str:
    """The insertId of a row: predictions by identity (model, event_id), other tables by key.

    >>> insert_id("predictions", {"model_name": "fraud", "event_id": "e-1"}) != insert_id(
    ...     "predictions", {"model_name": "churn", "event_id": "e-1"})
    True
    >>> insert_id("labels", {"event_id": "e-1"})
    'e-1'
    """
    if table == "predictions":
        return identity_id(row_identity(row))
    return str(row[TABLES[table].key])


# BigQuery ``errors[].reason`` values meaning "try again later" (rate limits, backend trouble)
_TRANSIENT_REASONS = frozenset({"rateLimitExceeded", "quotaExceeded", "backendError", "internalError"})


# per-row ``insertErrors`` reasons meaning "not written, not refused": re-send those rows
ROW_RETRY_REASONS = frozenset({"stopped", "timeout", "backendError", "internalError"})
ROW_RESENDS = 2


class RowsNotWritten(Exception):
    """Rows BigQuery left unwritten for a transient per-row reason after the re-sends."""

    def __init__(self, n: int, reasons: list[str]) -> None:
        super().__init__(f"{n} row(s) not written after {ROW_RESENDS} re-sends: {', '.join(reasons)}")


def _reasons(exc: BaseException) -> set[str]:
    return {e.get("reason", "") for e in getattr(exc, "errors", None) or [] if isinstance(e, dict)}


def classify_bigquery(
    exc: BaseException, table_ref: str, project: str, dataset: str, endpoint: str = ""
) -> Verdict:
    """The failure class of an exception raised by ``insert_rows_json`` (google.api_core types)."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as gauth

    at = f" --bq_endpoint {endpoint}" if endpoint else ""
    provision = (
        f"run `predaudit provision --sinks bigquery --bq_project {project} --bq_dataset {dataset}{at} "
        "--pubsub off` (or replay without --no_create_tables)"
    )
    text = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    if isinstance(exc, RowsNotWritten):
        return Verdict(TRANSIENT, "rows_not_written", text)
    if is_tls_error(exc):
        return Verdict(SINK_FAILURE, "tls", f"TLS failure: {text}", "check the endpoint's certificate / CA")
    if isinstance(exc, gexc.GoogleAPICallError):
        reasons = _reasons(exc)
        if isinstance(exc, gexc.NotFound):
            return Verdict(SINK_FAILURE, "not_found", text, provision)
        if isinstance(exc, gexc.Unauthorized):
            return Verdict(
                SINK_FAILURE,
                "auth_failed",
                text,
                "check the credentials (`gcloud auth application-default login` or the worker service account)",
            )
        if isinstance(exc, gexc.Forbidden):
            if reasons & _TRANSIENT_REASONS:  # BigQuery answers rate limits with 403
                return Verdict(TRANSIENT, "rate_limited", text)
            return Verdict(
                SINK_FAILURE,
                "access_denied",
                text,
                f"grant roles/bigquery.dataEditor on {project}:{dataset} to the pipeline's service account",
            )
        if isinstance(exc, gexc.ServerError | gexc.TooManyRequests) or exc.code in (408, 429):
            return Verdict(TRANSIENT, "server_busy", text)
        if isinstance(exc, gexc.BadRequest) or exc.code == 413:  # the request's rows: bisect
            return Verdict(ROW_REFUSAL, "refused_by_server", text)
        return Verdict(SINK_FAILURE, "server_error", text, f"unexpected BigQuery answer writing {table_ref}")
    if isinstance(exc, gauth.TransportError):  # token refresh could not reach the auth server
        return Verdict(TRANSIENT, "unreachable", text)
    if isinstance(exc, gauth.GoogleAuthError):  # RefreshError, DefaultCredentialsError, ...
        return Verdict(
            SINK_FAILURE,
            "auth_failed",
            text,
            "check the credentials (`gcloud auth application-default login`)",
        )
    if isinstance(exc, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
        return Verdict(TRANSIENT, "unreachable", text)
    return Verdict(
        SINK_FAILURE, "unexpected_error", text, f"unexpected error writing {table_ref}; see the log"
    )


def bigquery_client(project: str, endpoint: str = ""):
    """A BigQuery client; with ``endpoint`` (the emulator) anonymous credentials are used."""
    from google.cloud import bigquery

    if not endpoint:
        return bigquery.Client(project=project)
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(
        project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )


# -- Storage Write API ---------------------------------------------------------------------------

# one AppendRows request stays under the service's 10 MB cap
MAX_APPEND_BYTES = 8_000_000

_PROTO_TYPES = {  # FieldDescriptorProto.Type per column kind; timestamps are epoch microseconds
    "string": 9,  # TYPE_STRING
    "lowcard": 9,
    "json": 9,  # JSON text: BigQuery takes a JSON column's value as a string
    "strings": 9,
    "int": 3,  # TYPE_INT64
    "timestamp": 3,
    "float": 1,  # TYPE_DOUBLE
    "bool": 8,  # TYPE_BOOL
}


def proto_descriptor(table: str):
    """The proto2 ``DescriptorProto`` of a table's rows, derived from ``schemas/tables.py``.

    Every column is ``optional`` (a null is an absent field), ``strings`` columns ``repeated``.

    >>> d = proto_descriptor("labels")
    >>> [(f.name, f.type, f.label) for f in d.field][:2]
    [('event_id', 9, 1), ('label_time', 3, 1)]
    """
    from google.protobuf import descriptor_pb2

    fd = descriptor_pb2.FieldDescriptorProto
    msg = descriptor_pb2.DescriptorProto(name=f"{table}_row")
    for number, col in enumerate(TABLES[table].columns, start=1):
        label = fd.LABEL_REPEATED if col.kind == "strings" else fd.LABEL_OPTIONAL
        msg.field.add(name=col.name, number=number, type=_PROTO_TYPES[col.kind], label=label)
    return msg


_row_classes: dict[str, Any] = {}
_REQUIRED = {name: tuple(c.name for c in t.columns if c.required) for name, t in TABLES.items()}


def row_class(table: str):
    """The generated message class of a table's rows (built once per process: not picklable)."""
    if table not in _row_classes:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        desc = proto_descriptor(table)
        pool = descriptor_pool.DescriptorPool()
        fdp = descriptor_pb2.FileDescriptorProto(name=f"predaudit_{table}.proto", syntax="proto2")
        fdp.message_type.add().CopyFrom(desc)
        pool.Add(fdp)
        _row_classes[table] = message_factory.GetMessageClass(pool.FindMessageTypeByName(desc.name))
    return _row_classes[table]


def encode_row(table: str, row: dict[str, Any]) -> bytes:
    """One row as serialized proto bytes. A value of the wrong type, or a REQUIRED column left
    null, raises TypeError (a row refusal, decided before anything is sent).

    >>> row = {"event_id": "e-1", "label_time": 1, "label": "x", "schema_version": "1",
    ...        "ingest_time": 2, "payload_sha256": "ab", "pipeline_version": "0"}
    >>> len(encode_row("labels", {**row, "model_name": None})) > 0
    True
    >>> encode_row("labels", {**row, "label_numeric": "high"})
    Traceback (most recent call last):
    ...
    TypeError: label_numeric: ...
    >>> encode_row("labels", {**row, "label": None})
    Traceback (most recent call last):
    ...
    TypeError: label: REQUIRED column is null
    """
    for col in _REQUIRED[table]:
        if row.get(col) is None:
            raise TypeError(f"{col}: REQUIRED column is null")
    cls = row_class(table)
    msg = cls()
    for k, v in row.items():
        if v is None:
            continue
        try:
            if isinstance(v, list | tuple):
                getattr(msg, k).extend(v)
            else:
                setattr(msg, k, v)
        except (TypeError, ValueError, AttributeError) as exc:
            raise TypeError(f"{k}: {exc}") from None
    return msg.SerializeToString()


def batch_id(table: str, rows: Sequence[dict[str, Any]]) -> str:
    """A deterministic id of a batch (its row keys in order), for logs and the in-flight check.

    >>> batch_id("labels", [{"event_id": "a"}]) == batch_id("labels", [{"event_id": "a"}])
    True
    """
    h = hashlib.sha256(table.encode())
    for r in rows:
        h.update(b"\\0" + present_key(table, r).encode())
    return h.hexdigest()[:16]


def present_key(table: str, row: dict[str, Any]) -> str:
    """What "this row is already in the table" compares: the table's identity columns.

    >>> present_key("predictions", {"model_name": "m", "event_id": "e"}) == present_key(
    ...     "predictions", {"model_name": "n", "event_id": "e"})
    False
    """
    return "\\x1f".join(str(row.get(c)) for c in TABLES[table].identity)


class AppendFailed(Exception):
    """A stream-level error status in an AppendRows/commit answer (its ``__cause__``: api_core)."""


class StreamLost(Exception):
    """The write stream is gone or out of step (not found, finalized, offset gap): a new stream
    is made and the rows are re-sent (transient)."""


def status_exception(code: int, message: str) -> BaseException:
    """A google.api_core exception for a ``google.rpc.Status`` code (the gRPC numbering).

    >>> type(status_exception(5, "Table p.d.t not found")).__name__
    'NotFound'
    """
    import grpc
    from google.api_core import exceptions as gexc

    status = next((s for s in grpc.StatusCode if s.value[0] == code), grpc.StatusCode.UNKNOWN)
    return gexc.from_grpc_status(status, message)


def write_client(endpoint: str = ""):
    """A BigQuery Storage Write client; with ``endpoint`` (``host:port``, the emulator's gRPC
    port) an insecure loopback channel and no credentials."""
    from google.cloud.bigquery_storage_v1 import BigQueryWriteClient

    if not endpoint:
        return BigQueryWriteClient()
    import grpc
    from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
        BigQueryWriteGrpcTransport,
    )

    target = endpoint.split("://", 1)[-1]
    return BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=grpc.insecure_channel(target)))


class WriteApi:
    """AppendRows mechanics on one write client: streams, offsets, row errors, commits.

    ``append`` sends encoded rows at explicit offsets, one request per chunk, and returns the
    (index, reason) of the rows BigQuery refused; the other rows of a chunk with refusals are
    re-sent at the same offset (a request with row errors writes nothing). ``ALREADY_EXISTS``
    for an offset means that append was written before: it counts as written.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def create(self, parent: str, pending: bool) -> str:
        from google.cloud.bigquery_storage_v1 import types

        kind = types.WriteStream.Type.PENDING if pending else types.WriteStream.Type.COMMITTED
        return self.client.create_write_stream(
            parent=parent, write_stream=types.WriteStream(type_=kind), retry=None
        ).name

    def _request(self, stream: str, table: str, rows: list[bytes], offset: int):
        from google.cloud.bigquery_storage_v1 import types

        data = types.AppendRowsRequest.ProtoData(
            rows=types.ProtoRows(serialized_rows=rows),
            writer_schema=types.ProtoSchema(proto_descriptor=proto_descriptor(table)),
        )
        return types.AppendRowsRequest(write_stream=stream, offset=offset, proto_rows=data)

    def append_chunk(self, stream: str, table: str, rows: list[bytes], offset: int) -> list[tuple[int, str]]:
        """Append one chunk at ``offset``: [] when written, else the refused rows (nothing written)."""
        responses = list(
            self.client.append_rows(iter([self._request(stream, table, rows, offset)]), retry=None)
        )
        if not responses:
            raise AppendFailed("AppendRows returned no answer")
        resp = responses[-1]
        if resp.row_errors:
            return [(int(e.index), f"row_error {int(e.code)}: {e.message}") for e in resp.row_errors]
        code = int(resp.error.code) if resp.error else 0
        if code == 0:
            return []
        if code == 6:  # ALREADY_EXISTS: this offset was appended before (a retried append)
            counter("bigquery_appends_already_written").inc()
            return []
        if code in (5, 9, 11):  # NOT_FOUND stream, FAILED_PRECONDITION (finalized), OUT_OF_RANGE
            raise StreamLost(f"{resp.error.message} (status {code})")
        raise AppendFailed(resp.error.message) from status_exception(code, resp.error.message)

    def append(
        self,
        stream: str,
        table: str,
        encoded: list[bytes],
        start: int,
        written: Callable[[list[int], int], None] | None = None,
    ) -> tuple[list[tuple[int, str]], int]:
        """Append ``encoded`` from offset ``start``; returns (refused rows by index, next offset).

        ``written(indexes, next_offset)`` is called after each chunk that landed, so a caller
        keeps its offset right even when a later chunk fails.
        """
        refused: list[tuple[int, str]] = []
        offset = start
        for first, chunk in _byte_chunks(encoded):
            idx = list(range(first, first + len(chunk)))
            while idx:
                errs = self.append_chunk(stream, table, [encoded[i] for i in idx], offset)
                if not errs:
                    offset += len(idx)
                    if written is not None:
                        written(idx, offset)
                    break
                bad = {i for i, _ in errs}
                refused += [(idx[i], why) for i, why in errs]
                idx = [j for k, j in enumerate(idx) if k not in bad]
        return refused, offset

    def commit(self, parent: str, stream: str) -> None:
        """Finalize and commit a PENDING stream: its rows become visible at once."""
        from google.cloud.bigquery_storage_v1 import types

        self.client.finalize_write_stream(name=stream, retry=None)
        resp = self.client.batch_commit_write_streams(
            request=types.BatchCommitWriteStreamsRequest(parent=parent, write_streams=[stream]), retry=None
        )
        if resp.stream_errors:  # a stream-level refusal, never the rows': retried on a new stream
            err = resp.stream_errors[0]  # (FAILED_PRECONDITION would read as a row refusal: bisected)
            raise StreamLost(f"commit of {stream} refused: {err.error_message}")


def _byte_chunks(encoded: list[bytes]) -> Iterator[tuple[int, list[bytes]]]:
    """Split encoded rows into request-sized chunks; yields (first index, chunk).

    >>> [(i, len(c)) for i, c in _byte_chunks([b"x" * 10] * 3)]
    [(0, 3)]
    """
    start, size, cur = 0, 0, []
    for i, row in enumerate(encoded):
        if cur and size + len(row) + 8 > MAX_APPEND_BYTES:
            yield start, cur
            start, size, cur = i, 0, []
        cur.append(row)
        size += len(row) + 8
    if cur:
        yield start, cur


# tables whose time column is fixed by the data (not processing time): a re-run has the same
# values, so the presence query may prune partitions by the batch's time range
_STABLE_TIME = frozenset({"predictions", "labels", "drift_metrics"})


class _StreamState:
    """A streaming sink's COMMITTED stream: its name, next offset, and the row keys it wrote."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.next_offset = 0
        self.landed: dict[str, None] = {}  # insertion-ordered, bounded: see ``LANDED_KEYS``


_streams = threading.local()
LANDED_KEYS = 100_000  # the keys a stream remembers writing (a re-sent half batch skips them)


class _Clients:
    """The REST client (presence queries) and the Storage Write client of one sink."""

    def __init__(self, rest: Any, write: WriteApi) -> None:
        self.rest, self.write = rest, write


class BigQuerySinkFn(SinkFn):
    """Writes one BigQuery table; see the module docstring for the write path per mode."""

    name = "bigquery"

    def __init__(
        self,
        project: str,
        dataset: str,
        endpoint: str = "",
        policy: RetryPolicy | None = None,
        mode: Mode = "replay",
        write_endpoint: str = "",
    ) -> None:
        super().__init__(policy or RetryPolicy(), mode=mode)
        self.project, self.dataset, self.endpoint = project, dataset, endpoint
        self.write_endpoint = write_endpoint

    @property
    def uses_write_api(self) -> bool:
        """Google itself, or an emulator whose gRPC port is known; else legacy insertAll."""
        return bool(self.write_endpoint) or not self.endpoint

    def client_key(self) -> tuple:
        return (self.project, self.endpoint, self.write_endpoint)

    def make_client(self):
        rest = bigquery_client(self.project, self.endpoint)
        if not self.uses_write_api:
            return rest
        return _Clients(rest, WriteApi(write_client(self.write_endpoint)))

    def where(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def parent(self, table: str) -> str:
        return f"projects/{self.project}/datasets/{self.dataset}/tables/{table}"

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        """Write ``rows``; returns the rows refused (encoding or ``row_errors``) with the reason."""
        if not self.uses_write_api:
            return self.insert_all(table, rows)
        refused: list[tuple[int, str]] = []
        encoded: list[bytes] = []
        index: list[int] = []  # encoded[k] is rows[index[k]]
        for i, row in enumerate(rows):
            try:
                encoded.append(encode_row(table, row))
                index.append(i)
            except TypeError as exc:
                refused.append((i, f"not_encodable: {exc}"))
        if not index:
            return refused
        api: WriteApi = self.client.write
        parent = self.parent(table)
        if self.mode == "replay":
            present = self.present(table, [rows[i] for i in index])
            keep = [k for k, i in enumerate(index) if present_key(table, rows[i]) not in present]
            counter(f"bigquery_rows_already_present_{table}").inc(len(index) - len(keep))
            if keep:
                stream = api.create(parent, pending=True)
                errs, _ = api.append(stream, table, [encoded[k] for k in keep], 0)
                api.commit(parent, stream)
                refused += [(index[keep[j]], why) for j, why in errs]
            return sorted(refused)
        st = self._stream(table)
        keys = [present_key(table, rows[i]) for i in index]
        todo = [k for k, key in enumerate(keys) if key not in st.landed]
        if st.name is None:
            st.name, st.next_offset = api.create(parent, pending=False), 0

        def written(ks: list[int], next_offset: int) -> None:
            st.next_offset = next_offset
            for k in ks:
                st.landed[keys[todo[k]]] = None
            while len(st.landed) > LANDED_KEYS:
                del st.landed[next(iter(st.landed))]

        try:
            errs, _ = api.append(st.name, table, [encoded[k] for k in todo], st.next_offset, written)
        except StreamLost:
            st.name = None  # the next attempt makes a new stream and re-sends what is not landed
            raise
        refused += [(index[todo[j]], why) for j, why in errs]
        return sorted(refused)

    def _stream(self, table: str) -> _StreamState:
        cache = getattr(_streams, "cache", None)
        if cache is None:
            cache = _streams.cache = {}
        return cache.setdefault((id(self.client), self.dataset, table), _StreamState())

    def present(self, table: str, rows: Sequence[dict[str, Any]]) -> set[str]:
        """The identities of ``rows`` already in the table (a re-run or an earlier attempt)."""
        from google.cloud import bigquery

        t = TABLES[table]
        params, where = [], []
        for n, col in enumerate(t.identity):
            values = sorted({str(r.get(col)) for r in rows})
            params.append(bigquery.ArrayQueryParameter(f"k{n}", "STRING", values))
            where.append(f"CAST({col} AS STRING) IN UNNEST(@k{n})")
        if table in _STABLE_TIME:  # partition pruning: the batch's time range
            times = [r[t.time_column] for r in rows if r.get(t.time_column) is not None]
            if len(times) == len(rows):
                params += [
                    bigquery.ScalarQueryParameter("lo", "TIMESTAMP", from_micros(min(times))),
                    bigquery.ScalarQueryParameter("hi", "TIMESTAMP", from_micros(max(times))),
                ]
                where.append(f"{t.time_column} BETWEEN @lo AND @hi")
        cols = ", ".join(t.identity)
        sql = f"SELECT DISTINCT {cols} FROM `{self.where(table)}` WHERE {' AND '.join(where)}"
        job = self.client.rest.query(
            sql, job_config=bigquery.QueryJobConfig(query_parameters=params), retry=None
        )
        return {present_key(table, dict(r.items())) for r in job.result()}

    def insert_all(self, table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        """Legacy ``insert_rows_json`` in request-sized chunks; returns the refused rows.

        Rows answered with a transient per-row reason (``stopped``, ``timeout``,
        ``backendError``) were not written: they are re-sent (same insertIds) up to
        ``ROW_RESENDS`` times, then :class:`RowsNotWritten` (transient) hands the batch to the
        retry policy. They are never taken for refused rows.
        """
        ref = self.where(table)
        refused: list[tuple[int, str]] = []
        ids = [insert_id(table, r) for r in rows]
        json_rows = [to_json_row(table, r) for r in rows]
        for offset, chunk in chunks(json_rows):
            pending = list(range(len(chunk)))
            for resend in range(ROW_RESENDS + 1):
                # skip_invalid_rows: the valid rows of a request are written and only the invalid
                # ones come back (without it BigQuery answers the others "stopped", not written)
                errors = self.client.insert_rows_json(
                    ref,
                    [chunk[i] for i in pending],
                    row_ids=[ids[offset + i] for i in pending],
                    skip_invalid_rows=True,
                    retry=None,
                )
                again: list[int] = []
                retry_reasons: set[str] = set()
                for err in errors:
                    i = pending[err["index"]]
                    reasons = {e.get("reason", "") for e in err.get("errors") or []}
                    if reasons and reasons <= ROW_RETRY_REASONS:
                        again.append(i)
                        retry_reasons |= reasons
                    else:
                        refused.append((offset + i, orjson.dumps(err.get("errors")).decode()))
                if not again:
                    break
                if resend == ROW_RESENDS:
                    raise RowsNotWritten(len(again), sorted(retry_reasons))
                pending = again
        return refused

    def classify(self, exc: BaseException) -> Verdict:
        if isinstance(exc, StreamLost):
            return Verdict(TRANSIENT, "stream_lost", f"{type(exc).__name__}: {exc}")
        if isinstance(exc, AppendFailed):
            if exc.__cause__ is None:
                return Verdict(TRANSIENT, "append_failed", f"AppendFailed: {exc}")
            exc = exc.__cause__
        return classify_bigquery(exc, self.where(self.table), self.project, self.dataset, self.endpoint)

    def exhausted(self, exc: RetriesExhausted) -> Verdict:
        where = (self.write_endpoint if self.uses_write_api else self.endpoint) or "bigquery.googleapis.com"
        return Verdict(SINK_FAILURE, "unreachable", str(exc), f"check that BigQuery ({where}) is reachable")
