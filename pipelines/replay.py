"""Replay / backfill: the same validate -> dedup -> sinks chain over JSONL files, in batch.

Idempotent: replaying a file twice leaves one logical row per event_id (insertId /
dedup token on write, ``*_dedup`` views over what still lands twice).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence

import apache_beam as beam
import msgspec
from apache_beam.coders import BytesCoder
from apache_beam.io.textio import ReadFromTextWithFilename

from pipelines.common import sink_fns, specs_from
from pipelines.options import AuditOptions, OptionsError, validate
from transforms.deadletters import RawMessage
from transforms.dedup import DropLaterCopies, DuplicateKeys
from transforms.metrics import counter
from transforms.sinks.write import WriteAudit
from transforms.validate import DEAD_LETTERS, ValidateEvents


def _to_messages(batch: list[tuple[str, bytes]]) -> list[RawMessage]:
    msgs = [RawMessage(line.rstrip(b"\r"), {"source_file": name}) for name, line in batch if line.strip()]
    if len(msgs) < len(batch):
        counter("blank_lines_skipped").inc(len(batch) - len(msgs))
    return msgs


def _read(p: beam.Pipeline, label: str, glob: str) -> beam.PCollection:
    """Batches of RawMessage (Beam's per-element cost is paid per batch from here on)."""
    return (
        p
        | f"Read{label}" >> ReadFromTextWithFilename(glob, coder=BytesCoder())
        | f"Batch{label}" >> beam.BatchElements(min_batch_size=256, max_batch_size=2048)
        | f"{label}ToMessages" >> beam.Map(_to_messages)
    )


class _EventId(msgspec.Struct):
    event_id: str


_EVENT_ID = msgspec.json.Decoder(_EventId)


def event_id_of(raw: bytes) -> str | None:
    """The event_id of a raw PredictionEvent, or None (it will be a dead letter).

    >>> event_id_of(b'{"event_id": "evt-00000001", "x": [1]}'), event_id_of(b"{")
    ('evt-00000001', None)
    """
    try:
        return _EVENT_ID.decode(raw).event_id
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def payload_sha256_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _keys_pass(p: beam.Pipeline, label: str, glob: str, extract) -> beam.PCollection:
    """First pass over the same files: which keys occur more than once."""
    return (
        p
        | f"Read{label}Keys" >> beam.io.ReadFromText(glob, coder=BytesCoder())
        | f"Batch{label}Keys" >> beam.BatchElements(min_batch_size=1024, max_batch_size=8192)
        | f"Duplicate{label}Keys" >> DuplicateKeys(extract)
    )


def build(p: beam.Pipeline, opts: AuditOptions) -> dict[str, beam.PCollection]:
    """Replay graph. Returns row-batch PCollections per table ("predictions" and the resolved
    "predictions/duplicates", likewise labels) and the dead letters, for tests."""
    sinks = validate(opts, "replay")
    specs = specs_from(opts)
    preds = _read(p, "Predictions", opts.input) | "ValidatePredictions" >> ValidateEvents(
        "prediction", specs=specs, check_time_bounds=False, batched=True
    )
    pred_dups = _keys_pass(p, "Predictions", opts.input, event_id_of)
    out = dict(
        zip(
            ("predictions", "predictions/duplicates"),
            preds.rows | "DedupPredictions" >> DropLaterCopies(pred_dups, "predictions"),
            strict=True,
        )
    )
    dead = [preds[DEAD_LETTERS]]
    if opts.labels_input:
        labels = _read(p, "Labels", opts.labels_input) | "ValidateLabels" >> ValidateEvents(
            "label", check_time_bounds=False, batched=True
        )
        label_dups = _keys_pass(p, "Labels", opts.labels_input, payload_sha256_of)
        out["labels"], out["labels/duplicates"] = labels.rows | "DedupLabels" >> DropLaterCopies(
            label_dups, "labels", "payload_sha256", "label_time"
        )
        dead.append(labels[DEAD_LETTERS])
    out["dead_letters"] = dead | "DecodeDeadLetters" >> beam.Flatten()
    out["all_dead_letters"] = dict(out) | "Write" >> WriteAudit(sink_fns(opts, sinks), opts.sink_batch_size)
    return out


def run(argv: Sequence[str] | None = None) -> int:
    opts = AuditOptions(list(argv) if argv is not None else sys.argv[1:])
    try:
        validate(opts, "replay")
    except OptionsError as exc:
        sys.stderr.write(f"predaudit replay: error: {exc}\n")
        return 2
    with beam.Pipeline(options=opts) as p:
        build(p, opts)
    return 0


if __name__ == "__main__":
    sys.exit(run())
