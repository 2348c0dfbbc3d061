"""Replay / backfill: the same validate -> dedup -> sinks chain over JSONL files, in batch.

Idempotent: replaying a file twice leaves one logical row per event_id (insertId /
dedup token on write, ``*_dedup`` views over what still lands twice).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator, Sequence

import apache_beam as beam
import msgspec
from apache_beam.io import fileio

from pipelines.common import monitors, publish_anomalies, sink_fns, specs_from
from pipelines.options import AuditOptions, OptionsError, validate
from transforms.deadletters import RawMessage
from transforms.dedup import DropLaterCopies, DuplicateKeys
from transforms.metrics import counter
from transforms.monitors.drift import anomaly_row
from transforms.sinks.write import WriteAudit
from transforms.validate import DEAD_LETTERS, ValidateEvents

BATCH_LINES = 2048


def _lines(fh) -> Iterator[bytes]:
    """Lines of a plain or compressed Beam file handle (CompressedFile is not iterable)."""
    if hasattr(fh, "__iter__"):
        yield from fh
        return
    while line := fh.readline():
        yield line


def _line_batches(readable_file) -> Iterator[list[bytes]]:
    """The lines of one file (compression by extension) in lists of BATCH_LINES."""
    batch: list[bytes] = []
    blank = 0
    with readable_file.open() as fh:
        for line in _lines(fh):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                blank += 1
                continue
            batch.append(line)
            if len(batch) >= BATCH_LINES:
                yield batch
                batch = []
    if batch:
        yield batch
    if blank:
        counter("blank_lines_skipped").inc(blank)


def _read_batches(p: beam.Pipeline, label: str, glob: str) -> beam.PCollection:
    """Batches of raw lines, read per file: Beam's per-element cost is paid per batch."""
    return (
        p
        | f"Match{label}"
        >> fileio.MatchFiles(glob, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
        | f"Open{label}" >> fileio.ReadMatches()
        | f"Read{label}" >> beam.FlatMap(_line_batches)
    )


def _read(p: beam.Pipeline, label: str, glob: str) -> beam.PCollection:
    """Batches of RawMessage tagged with their source file."""

    def to_messages(readable_file) -> Iterator[list[RawMessage]]:
        attrs = {"source_file": readable_file.metadata.path}
        for batch in _line_batches(readable_file):
            yield [RawMessage(line, attrs) for line in batch]

    return (
        p
        | f"Match{label}"
        >> fileio.MatchFiles(glob, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
        | f"Open{label}" >> fileio.ReadMatches()
        | f"Read{label}" >> beam.FlatMap(to_messages)
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
    return _read_batches(p, f"{label}Keys", glob) | f"Duplicate{label}Keys" >> DuplicateKeys(extract)


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
    # per row at event time, for the event-time windows (only when a model has a reference)
    # row batches go to the monitors as they are: each batch is binned per event-time window
    mon = monitors(
        (out["predictions"], out["predictions/duplicates"]),
        opts,
        specs,
        bounded=True,
        labels=(out["labels"], out["labels/duplicates"]) | "AllLabelRows" >> beam.Flatten()
        if opts.labels_input
        else None,
    )
    if mon:
        out["drift_metrics"] = mon["drift_metrics"]
        out["anomalies"] = mon["anomalies"] | "AnomalyRows" >> beam.Map(anomaly_row)
        if opts.anomaly_topic:
            publish_anomalies(mon["anomalies"], opts.anomaly_topic)
    out["all_dead_letters"] = dict(out) | "Write" >> WriteAudit(sink_fns(opts, sinks, "replay"), opts.sink_batch_size)
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
