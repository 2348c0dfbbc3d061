"""Sink failure classes: a row refusal (-> dead letter) vs a sink failure (-> stop or back-pressure).

A *row refusal* is the service rejecting particular rows (a value it cannot store, a row too
large): those rows become ``sink_rejected`` dead letters. A *sink failure* means the sink can
take no row at all (database or table missing, auth/permission, TLS, unreachable after
retries): rows never become dead letters; replay stops non-zero with one line naming the
sink, the table and the fix, and streaming retries with capped backoff.
"""

from __future__ import annotations

MARKER = "PREDAUDIT_SINK_FAILURE"


class SinkFailure(Exception):
    """The sink cannot take any row. ``str()`` is the one line a user sees.

    >>> str(SinkFailure("clickhouse", "audit.predictions", "database audit does not exist",
    ...                 "run `predaudit provision`"))
    'clickhouse: audit.predictions: database audit does not exist -- fix: run `predaudit provision`'
    """

    def __init__(self, sink: str, table: str, reason: str, fix: str, code: str = "sink_failure") -> None:
        super().__init__(sink, table, reason, fix, code)
        self.sink, self.table, self.reason, self.fix, self.code = sink, table, reason, fix, code

    def __str__(self) -> str:
        return f"{self.sink}: {self.table}: {self.reason} -- fix: {self.fix}"

    def __reduce__(self):  # survives pickling across Beam's worker boundary
        return (SinkFailure, (self.sink, self.table, self.reason, self.fix, self.code))


def find_sink_failure(exc: BaseException | None) -> SinkFailure | None:
    """The SinkFailure inside an exception chain (Beam wraps what a DoFn raised), or None.

    Walks ``__cause__``/``__context__``; runners that re-raise only the text keep the marker
    line written by :func:`marked`, which is parsed back.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, SinkFailure):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def marked(failure: SinkFailure) -> str:
    """A one-line text form with a marker, for runners that keep only the message."""
    return f"{MARKER}[{failure.sink}|{failure.table}|{failure.code}] {failure}"


def parse_marked(text: str) -> SinkFailure | None:
    """Recover a SinkFailure from text containing :func:`marked` output.

    >>> f = SinkFailure("bigquery", "p.audit.labels", "table not found", "run `predaudit provision`")
    >>> str(parse_marked("Traceback ...\\n" + marked(f) + "\\n[while running 'Write']"))
    'bigquery: p.audit.labels: table not found -- fix: run `predaudit provision`'
    """
    start = text.find(MARKER + "[")
    if start < 0:
        return None
    head, _, rest = text[start + len(MARKER) + 1 :].partition("] ")
    sink, table, code = (head.split("|") + ["", "", ""])[:3]
    line = rest.splitlines()[0] if rest else ""
    body = line[len(f"{sink}: {table}: ") :] if line.startswith(f"{sink}: {table}: ") else line
    reason, _, fix = body.partition(" -- fix: ")
    return SinkFailure(sink, table, reason, fix, code or "sink_failure")
