"""ValidateEvents: raw messages -> audit rows (main output) + dead letters (tagged output).

Nothing one bad element does can fail a bundle: contract violations become dead letters
with their code, and an unexpected failure on one element becomes an ``internal_error``
dead letter (counted) instead of an exception.

PII on every path: audit rows get their model's PII rules; dead letters get the rules of
every spec (``transforms.deadletters.PayloadRedactor``), parseable or not. A model name that
differs from a spec's name only by case or surrounding space (``"Fraud"``, ``"fraud "``) is
rejected as ``model_name_mismatch`` (its payload redacted), never audited as an unknown,
unredacted model: identities stay exact, and the producer learns the name to send.
"""

from __future__ import annotations

import datetime as dt
import logging
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import TimestampedValue

from schemas import Decoders, EventValidationError, Limits
from schemas.specs import ModelSpec, PiiKey, QualityChecker, name_key, redactors
from transforms.deadletters import PAYLOAD_MODES, PayloadRedactor, RawMessage, dead_letter
from transforms.metrics import counter
from transforms.rows import label_row, prediction_row
from transforms.secrets import check_ref

DEAD_LETTERS = "dead_letters"
_US = dt.timedelta(microseconds=1)
_log = logging.getLogger(__name__)
#: codes this stage adds to the decoder's (``schemas.ERROR_CODES``), with the producer's fix
PIPELINE_ERROR_CODES = {
    "model_name_mismatch": "Send model.name exactly as its spec names it (case and spaces matter).",
    "internal_error": "A bug in predaudit: report it with the dead letter's id; replay after the fix.",
}


def spelling_of(name: str, specs: Mapping[str, ModelSpec]) -> str | None:
    """The spec name that ``name`` misspells by case or surrounding space, else None.

    >>> from schemas.specs import parse_spec
    >>> specs = {"fraud": parse_spec("name: fraud\\nfeatures: []")}
    >>> spelling_of("Fraud ", specs), spelling_of("fraud", specs), spelling_of("churn", specs)
    ('fraud', None, None)
    """
    if name in specs:
        return None
    key = name_key(name)
    return next((n for n in specs if name_key(n) == key), None)


class _ValidateFn(beam.DoFn):
    def __init__(
        self,
        kind: str,
        limits: Limits,
        specs: Mapping[str, ModelSpec],
        check_time_bounds: bool,
        payload_mode: str = "redacted",
        pii_key_secret: str = "",
    ) -> None:
        self.kind, self.limits, self.specs, self.check_time_bounds = (
            kind,
            limits,
            dict(specs),
            check_time_bounds,
        )
        self.payload_mode = payload_mode
        self.pii_key_secret = pii_key_secret  # a reference (pickles as text), never the key

    def setup(self) -> None:
        self.decoders = Decoders(self.limits)  # msgspec decoders are not picklable
        self.checkers = {name: QualityChecker(spec) for name, spec in self.specs.items()}
        # the PII key is resolved here, on the worker, from --pii_key_secret (Secret Manager or
        # a file) or the worker's environment: never carried in the pickled graph
        key = PiiKey.from_env(secret=self.pii_key_secret)
        self.redactors = redactors(self.specs, key)
        self.payload_redactor = PayloadRedactor(self.specs, key)
        self._spelling = {name_key(n): n for n in self.specs}
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
                name = ev.model.name
                if name not in self.specs and name_key(name) in self._spelling:
                    counter(f"{self.kind}_invalid").inc()
                    counter(f"{self.kind}_invalid_model_name_mismatch").inc()
                    spec_name = self._spelling[name_key(name)]
                    return None, self._dead(
                        msg,
                        "model_name_mismatch",
                        "$.model.name",
                        f"model.name {name!r} is the spec {spec_name!r} spelt differently (case or "
                        f"surrounding space); send {spec_name!r}",
                        ingest_time,
                    )
                checker = self.checkers.get(name)
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
            # the exception's text may quote a feature value: log and store its type and frames only
            frames = "".join(traceback.format_tb(exc.__traceback__))
            _log.error(
                "internal error (%s) validating message %s:\n%s", type(exc).__name__, msg.message_id, frames
            )
            return None, self._dead(
                msg, "internal_error", "$", f"{type(exc).__name__} (details in the worker log)", ingest_time
            )
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
            redactor=self.payload_redactor,
            payload_mode=self.payload_mode,
        )


class _ValidateBatchFn(_ValidateFn):
    """Batch form for bounded input: a list of messages -> one list of rows (+ dead letters).

    Beam's per-element overhead is paid once per batch; the replay pipeline uses it.
    """

    def setup(self) -> None:
        super().setup()
        self._next = dt.datetime.min.replace(tzinfo=dt.timezone.utc)

    def process(self, batch: list[RawMessage]) -> Iterator[Any]:
        # ingest_time stamp (processing time by definition, never used as event time): one per
        # batch; message i is stamped i microseconds after it (and never before the previous
        # batch), so in a file the earlier line is the earlier ingest: the first copy of an
        # identity, for dedup, is the first line
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


#: stands in for a key that the workers resolve from a secret: checks the specs, hashes nothing
_WORKER_KEY = PiiKey(b"resolved-on-the-workers")


def check_pii_key(specs: Mapping[str, ModelSpec], pii_key_secret: str = "") -> None:
    """Fail where the pipeline is built when the specs need a PII key that no one will have.

    With ``pii_key_secret`` (``--pii_key_secret``) only the reference's form is checked: the
    launcher need not be able to read the secret (the workers' service account can); else the
    key must be in this process's environment (``PiiKey.from_env``). ``SpecError`` for a spec
    that hashes without a key, ``transforms.secrets.SecretError`` for a malformed reference.

    >>> from schemas.specs import parse_spec
    >>> specs = {"m": parse_spec("name: m\\nfeatures: [{name: email, type: text, pii: hash}]")}
    >>> check_pii_key(specs, "projects/p/secrets/pii/versions/1")  # resolved later, on the workers
    """
    if pii_key_secret:
        check_ref(pii_key_secret)
        redactors(specs, _WORKER_KEY)
    else:
        redactors(specs, PiiKey.from_env())


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
        dead_letter_payload: str = "redacted",
        pii_key_secret: str = "",
    ) -> None:
        super().__init__()
        if kind not in ("prediction", "label"):
            raise ValueError(f"kind must be prediction or label, not {kind!r}")
        if dead_letter_payload not in PAYLOAD_MODES:
            raise ValueError(
                f"dead_letter_payload must be one of {PAYLOAD_MODES}, not {dead_letter_payload!r}"
            )
        specs = dict(specs or {})
        check_pii_key(specs, pii_key_secret)  # fail at graph construction when a PII key is missing
        cls = _ValidateBatchFn if batched else _ValidateFn
        self._fn = cls(
            kind, limits or Limits(), specs, check_time_bounds, dead_letter_payload, pii_key_secret
        )

    def expand(self, messages: beam.PCollection) -> pvalue.DoOutputsTuple:
        return messages | beam.ParDo(self._fn).with_outputs(DEAD_LETTERS, main="rows")
