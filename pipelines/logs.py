"""Log output of the long-running commands: human text (default) or one JSON object per line.

Why: on GKE / Cloud Run / a VM with the Ops Agent, a JSON line with Cloud Logging's ``severity``
and ``message`` fields becomes a structured entry (filterable by severity, model, event_id)
instead of one text blob. Dataflow workers log through the Beam worker harness, which already
writes structured entries; this only shapes what the launcher / DirectRunner process prints.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import IO, Any

import orjson

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Record attributes passed with ``logger.info(..., extra={...})`` that become top-level fields.
CONTEXT_FIELDS = ("model", "model_version", "event_id", "request_id", "sink", "table", "code", "path")
# Python level name -> Cloud Logging LogSeverity.
_SEVERITY = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARNING", "ERROR": "ERROR", "CRITICAL": "CRITICAL"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: severity, message, time, logger and the context fields.

    >>> rec = logging.LogRecord("predaudit.sinks", logging.WARNING, "f.py", 1, "retrying %s", ("ch",), None)
    >>> rec.created = 0.0
    >>> rec.model = "fraud"
    >>> JsonFormatter().format(rec)
    '{"severity":"WARNING","message":"retrying ch","time":"1970-01-01T00:00:00.000000Z","logger":"predaudit.sinks","model":"fraud"}'
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelname, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            ),
            "logger": record.name,
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                doc[field] = value
        if record.exc_info:
            # Error Reporting reads the stack trace from the message of an ERROR entry
            doc["message"] += "\n" + self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(fmt: str = "text", level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Route the root logger to ``stream`` (stderr) in ``fmt``.

    Replaces the handler an earlier call installed (and, for json, the plain stream handlers
    that would print every record a second time as text); handlers others attached — a test
    runner's capture, a Cloud Logging handler — stay.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"--log_format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler._predaudit = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        plain = type(old) is logging.StreamHandler and old.stream in (sys.stderr, sys.stdout)
        if getattr(old, "_predaudit", False) or (fmt == "json" and plain):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
