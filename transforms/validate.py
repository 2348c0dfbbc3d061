"""ValidateEvents: raw messages -> audit rows (main output) + dead letters (tagged output).

Nothing one bad element does can fail a bundle: contract violations become dead letters
with their code, and an unexpected failure on one element becomes an ``internal_error``
dead letter (counted) instead of an exception.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import TimestampedValue

from schemas import Decoders, EventValidationError, Limits
from schemas.specs import ModelSpec, PiiKey, QualityChecker, redactors
from transforms.deadletters import RawMessage, dead_letter
from transforms.metrics import counter
from transforms.rows import label_row, prediction_row

DEAD_LETTERS = "dead_letters"
_US = dt.timedelta(microseconds=1)
_log = logging.getLogger(__name__)


class _ValidateFn(beam.DoFn):
    def __init__(
        self, kind: str, limits: Limits, specs: Mapping[str, ModelSpec], check_time_bounds: bool
    ) -> None:
        self.kind, self.limits, self.specs, self.check_time_bounds = (
            kind,
            limits,
            dict(specs),
            check_time_bounds,
        )

    def setup(self) -> None:
        self.decoders = Decoders(self.limits)  # msgspec decoders are not picklable
        self.checkers = {name: QualityChecker(spec) for name, spec in self.specs.items()}
        # the PII key comes from the worker's environment, never from the pickled graph
        self.redactors = redactors(self.specs, PiiKey.from_env())
        self.decode = self.decoders.prediction if self.kind == "prediction" else self.decoders.label
        self.time_field = "event_time" if self.kind == "prediction" else "label_time"
        self.received, self.valid = f"{self.kind}_received", f"{self.kind}_valid"

    def process(self, msg: RawMessage) -> Iterator[Any]:
        counter(self.received).inc()
        # ingest_time is a processing-time stamp by definition (recorded, never used in logic)
        row, dead = self.validate(msg, dt.datetime.now(dt.timezone.utc))
        if dead is not None:
            yield pvalue.TaggedOutput(DEAD_LETTERS, dead)
        else:
            counter(self.valid).inc()
            yield TimestampedValue(row, row[self.time_field] / 1e6)

    def validate(self, msg: RawMessage, ingest_time: dt.datetime) -> tuple[dict | None, dict | None]:
        """(audit row, None) or (None, dead letter); counts invalid codes and quality issues
        (the caller counts received and valid, per element or per batch)."""
        now = msg.publish_time if self.check_time_bounds else None
        try:
            ev, ts = self.decode(msg.data, now)
            if self.kind == "prediction":
                checker = self.checkers.get(ev.model.name)
                issues = checker.check(ev.features) if checker is not None else []
                for issue in issues:
                    counter("quality_" + issue.split(":", 1)[0]).inc()
                row = prediction_row(
                    ev,
                    ts,
                    msg.data,
                    ingest_time=ingest_time,
                    quality_issues=issues,
                    redactor=self.redactors.get(ev.model.name),
                    message_id=msg.message_id,
                    publish_time=msg.publish_time,
                )
            else:
                row = label_row(
                    ev,
                    ts,
                    msg.data,
                    ingest_time=ingest_time,
                    message_id=msg.message_id,
                    publish_time=msg.publish_time,
                )
        except EventValidationError as exc:
            counter(f"{self.kind}_invalid").inc()
            counter(f"{self.kind}_invalid_{exc.code}").inc()
            return None, self._dead(msg, exc.code, exc.path, exc.message, ingest_time)
        except Exception as exc:  # noqa: BLE001 -- a bug must not fail the bundle: dead-letter it, counted
            counter(f"{self.kind}_internal_error").inc()
            _log.exception("internal error validating message %s", msg.message_id)
            return None, self._dead(msg, "internal_error", "$", f"{type(exc).__name__}: {exc}", ingest_time)
        return row, None

    def _dead(self, msg: RawMessage, code: str, path: str, message: str, ingest_time: dt.datetime) -> dict:
        return dead_letter(
            msg,
            stage="decode",
            kind=self.kind,
            code=code,
            path=path,
            message=message,
            ingest_time=ingest_time,
            prefix_bytes=self.limits.dead_letter_prefix_bytes,
            max_bytes=self.limits.max_payload_bytes,
            redactors=self.redactors,
        )


class _ValidateBatchFn(_ValidateFn):
    """Batch form for bounded input: a list of messages -> one list of rows (+ dead letters).

    Beam's per-element overhead is paid once per batch; the replay pipeline uses it.
    """

    def setup(self) -> None:
        super().setup()
        self._next = dt.datetime.min.replace(tzinfo=dt.timezone.utc)

    def process(self, batch: list[RawMessage]) -> Iterator[Any]:
        # one processing-time stamp per batch; message i is stamped i microseconds after it (and
        # never before the previous batch), so in a file the earlier line is the earlier ingest:
        # the first copy of an identity, for dedup, is the first line
        start = max(dt.datetime.now(dt.timezone.utc), self._next)
        self._next = start + len(batch) * _US
        rows = []
        for i, msg in enumerate(batch):
            row, dead = self.validate(msg, start + i * _US)
            if dead is not None:
                yield pvalue.TaggedOutput(DEAD_LETTERS, dead)
            else:
                rows.append(row)
        counter(self.received).inc(len(batch))
        counter(self.valid).inc(len(rows))
        if rows:
            yield rows


class ValidateEvents(beam.PTransform):
    """RawMessage -> audit rows; ``result[DEAD_LETTERS]`` holds the dead letters.

    Rows carry the event time as their element timestamp. With ``batched=True`` the input
    is lists of messages and the main output lists of rows (the replay pipeline's form).
    """

    def __init__(
        self,
        kind: str = "prediction",
        limits: Limits | None = None,
        specs: Mapping[str, ModelSpec] | None = None,
        check_time_bounds: bool = True,
        batched: bool = False,
    ) -> None:
        super().__init__()
        if kind not in ("prediction", "label"):
            raise ValueError(f"kind must be prediction or label, not {kind!r}")
        specs = dict(specs or {})
        redactors(specs, PiiKey.from_env())  # fail at graph construction when a PII key is missing
        cls = _ValidateBatchFn if batched else _ValidateFn
        self._fn = cls(kind, limits or Limits(), specs, check_time_bounds)

    def expand(self, messages: beam.PCollection) -> pvalue.DoOutputsTuple:
        return messages | beam.ParDo(self._fn).with_outputs(DEAD_LETTERS, main="rows")
