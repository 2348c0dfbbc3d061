"""BigQuery sink: ``insert_rows_json`` in batches (<= 500 rows, < 9 MB) with insertId = row key.

Predictions use their identity (model name, event_id) as insertId: two models may share an
event_id. Errors are classified by google.api_core exception classes (and the structured
``errors[].reason`` BigQuery attaches), never by message text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from schemas.tables import TABLES
from transforms.identity import identity_id, row_identity
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


class BigQuerySinkFn(SinkFn):
    name = "bigquery"

    def __init__(
        self,
        project: str,
        dataset: str,
        endpoint: str = "",
        policy: RetryPolicy | None = None,
        mode: Mode = "replay",
    ) -> None:
        super().__init__(policy or RetryPolicy(), mode=mode)
        self.project, self.dataset, self.endpoint = project, dataset, endpoint

    def client_key(self) -> tuple:
        return (self.project, self.endpoint)

    def make_client(self):
        return bigquery_client(self.project, self.endpoint)

    def where(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        """Insert in request-sized chunks; returns the rows BigQuery refused as invalid.

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
        return classify_bigquery(exc, self.where(self.table), self.project, self.dataset, self.endpoint)

    def exhausted(self, exc: RetriesExhausted) -> Verdict:
        where = self.endpoint or "bigquery.googleapis.com"
        return Verdict(SINK_FAILURE, "unreachable", str(exc), f"check that BigQuery ({where}) is reachable")
