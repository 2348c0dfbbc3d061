"""Replay / backfill: the same validate -> dedup -> sinks chain over JSONL files, in batch.

Idempotent: replaying a file twice leaves one logical row per event_id (insertId /
dedup token on write, ``*_dedup`` views over what still lands twice).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.io.textio import ReadFromTextWithFilename

from pipelines.common import sink_fns, specs_from
from pipelines.options import AuditOptions, OptionsError, validate
from transforms.deadletters import RawMessage
from transforms.dedup import DedupByEventId
from transforms.metrics import counter
from transforms.sinks.write import WriteAudit
from transforms.validate import DEAD_LETTERS, ValidateEvents


def _to_message(file_and_line: tuple[str, bytes]):
    name, line = file_and_line
    if not line.strip():
        counter("blank_lines_skipped").inc()
        return
    yield RawMessage(line.rstrip(b"\r"), {"source_file": name})


def _read(p: beam.Pipeline, label: str, glob: str) -> beam.PCollection:
    return (
        p
        | f"Read{label}" >> ReadFromTextWithFilename(glob, coder=BytesCoder())
        | f"{label}ToMessages" >> beam.FlatMap(_to_message)
    )


def build(p: beam.Pipeline, opts: AuditOptions) -> dict[str, beam.PCollection]:
    sinks = validate(opts, "replay")
    specs = specs_from(opts)
    preds = _read(p, "Predictions", opts.input) | "ValidatePredictions" >> ValidateEvents(
        "prediction", specs=specs, check_time_bounds=False
    )
    rows = preds.rows | "DedupPredictions" >> DedupByEventId(opts.dedup_horizon_s, "predictions")
    out = {"predictions": rows}
    dead = [preds[DEAD_LETTERS]]
    if opts.labels_input:
        labels = _read(p, "Labels", opts.labels_input) | "ValidateLabels" >> ValidateEvents(
            "label", check_time_bounds=False
        )
        out["labels"] = labels.rows | "DedupLabels" >> DedupByEventId(
            opts.dedup_horizon_s, "labels", "payload_sha256"
        )
        dead.append(labels[DEAD_LETTERS])
    out["dead_letters"] = dead | "DecodeDeadLetters" >> beam.Flatten()
    out["all_dead_letters"] = out | "Write" >> WriteAudit(sink_fns(opts, sinks), opts.sink_batch_size)
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
