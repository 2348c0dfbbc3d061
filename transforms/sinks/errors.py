"""Sink failure classes: a row refusal (-> dead letter) vs a sink failure (-> stop or back-pressure).

A *row refusal* is the service rejecting particular rows (a value it cannot store, a row too
large): those rows become ``sink_rejected`` dead letters. A *sink failure* means the sink can
take no row at all (database or table missing, auth/permission, TLS, unreachable after
retries): rows never become dead letters; replay stops non-zero with one line naming the
sink, the table and the fix, and streaming retries with capped backoff.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

MARKER = "PREDAUDIT_SINK_FAILURE"

# the three classes a sink error falls into (see the module docstring)
TRANSIENT = "transient"  # retry with backoff (overload, timeout, connection reset)
ROW_REFUSAL = "row_refusal"  # these rows cannot be stored: bisect, dead-letter exactly them
SINK_FAILURE = "sink_failure"  # no row can be stored: never dead letters

Kind = Literal["transient", "row_refusal", "sink_failure"]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How a sink classified one exception: its class, a stable code, a reason and the fix.

    >>> Verdict(SINK_FAILURE, "unknown_table", "table audit.labels does not exist", "run provision").kind
    'sink_failure'
    """

    kind: Kind
    code: str
    reason: str
    fix: str = ""


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


class SinkStopped(RuntimeError):
    """What a replay-mode sink raises: its message is :func:`marked` text, its cause the SinkFailure.

    Beam re-raises a DoFn's exception as ``type(exc)(args[0] + " [while running ...]")``:
    a plain SinkFailure would come back with the step name glued to its ``sink``. This
    one-argument wrapper survives that (the marker line ends before the annotation), and
    runners that keep only text (a worker's traceback string) keep the marker line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)


def sink_stopped(failure: SinkFailure) -> SinkStopped:
    """The exception to raise for ``failure`` (``raise sink_stopped(f) from f``).

    >>> e = sink_stopped(SinkFailure("clickhouse", "a.b", "gone", "provision", "unknown_table"))
    >>> rebuilt = type(e)(e.args[0] + " [while running 'Write']")  # what Beam does
    >>> f = find_sink_failure(rebuilt)
    >>> (f.sink, f.table, f.code, str(f))
    ('clickhouse', 'a.b', 'unknown_table', 'clickhouse: a.b: gone -- fix: provision')
    """
    return SinkStopped(marked(failure) + "\n")


def find_sink_failure(exc: BaseException | None) -> SinkFailure | None:
    """The SinkFailure inside an exception chain (Beam wraps what a DoFn raised), or None.

    Walks ``__cause__``/``__context__`` and returns the innermost SinkFailure (Beam may have
    re-built an outer copy with the step name appended to its first argument); runners that
    re-raise only the text keep the marker line written by :func:`marked`, which is parsed
    back from the first message in the chain that carries it.
    """
    seen: set[int] = set()
    found: SinkFailure | None = None
    text: SinkFailure | None = None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, SinkFailure):
            found = exc
        elif text is None:
            text = parse_marked(str(exc))
        exc = exc.__cause__ or exc.__context__
    return found or text


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
