"""Replay / backfill: the same validate -> dedup -> sinks chain over JSONL files, in batch.

Idempotent: replaying a file twice leaves one logical row per identity (model name, event_id):
insert tokens / Write API streams on write, the first-copy views over what still lands twice.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import pathlib
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import apache_beam as beam
import msgspec
import orjson
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from pipelines import logs
from pipelines.common import monitors, publish_anomalies, sink_fns, specs_from
from pipelines.options import AuditOptions, OptionsError, parse_command_line, validate
from pipelines.provision import ProvisionError, prepare_sinks, provision_command
from schemas.specs import SpecError
from transforms.deadletters import RawMessage
from transforms.dedup import DropLaterCopies, DuplicateKeys
from transforms.identity import identity
from transforms.integrity import ExportIntegrity, IntegrityRecords
from transforms.metrics import counter
from transforms.monitors.drift import anomaly_row
from transforms.sinks.errors import find_sink_failure, parse_marked
from transforms.sinks.write import WriteAudit
from transforms.validate import DEAD_LETTERS, ValidateEvents, check_pii_key

BATCH_LINES = 2048
LINES_READ = "replay_lines_read:"  # + kind:path
BLANK_LINES = "replay_blank_lines:"  # + kind:path
DEAD_LETTER = "replay_dead_letter:"  # + stage:code:kind-or-table


BOM = b"\xef\xbb\xbf"


class InputFailure(Exception):
    """An input file that cannot be read to its end (truncated or corrupt compression).

    Three plain arguments, so Beam can re-raise it with its step annotation appended.
    """

    def __init__(self, message: str, path: str = "", lines: int = 0) -> None:
        super().__init__(message, path, lines)
        self.path, self.lines = path, lines

    def __str__(self) -> str:
        return str(self.args[0]).split(" [while running")[0]


class _Progress:
    """Lines read so far in this process, for the launcher's progress line (DirectRunner)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lines = self.files_done = 0

    def add(self, lines: int = 0, files_done: int = 0) -> None:
        with self._lock:
            self.lines += lines
            self.files_done += files_done

    def reset(self) -> None:
        with self._lock:
            self.lines = self.files_done = 0


PROGRESS = _Progress()


def _lines(fh) -> Iterator[bytes]:
    """Lines of a plain or compressed Beam file handle (CompressedFile is not iterable)."""
    if hasattr(fh, "__iter__"):
        yield from fh
        return
    while line := fh.readline():
        yield line


def _file_lines(readable_file) -> Iterator[bytes]:
    """Raw lines of one file. ``.gz`` is decompressed here so that a truncated or corrupt
    file is an error (Beam's reader stops silently at a cut-off member); a UTF-8 BOM at
    the start of the file is dropped."""
    path = readable_file.metadata.path
    n = 0
    try:
        if path.endswith(".gz"):
            raw = readable_file.open(compression_type=CompressionTypes.UNCOMPRESSED)
            fh = gzip.GzipFile(fileobj=raw, mode="rb")
        else:
            fh = readable_file.open()
        with fh:
            for line in _lines(fh):
                if n == 0 and line.startswith(BOM):
                    line = line[len(BOM) :]
                n += 1
                yield line
    except (EOFError, OSError, zlib.error) as exc:
        raise InputFailure(
            f"{path}: truncated or corrupt after {n} lines read ({type(exc).__name__}: {exc}); "
            "re-copy the file and replay it again",
            path,
            n,
        ) from None


def _line_batches(readable_file, counted: str = "") -> Iterator[list[bytes]]:
    """The non-blank lines of one file in lists of BATCH_LINES; with ``counted`` (the kind),
    lines read and blank lines are counted per file (one pass counts, not the keys pass)."""
    batch: list[bytes] = []
    blank = read = 0
    for line in _file_lines(readable_file):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            blank += 1
            continue
        batch.append(line)
        if len(batch) >= BATCH_LINES:
            read += len(batch)
            if counted:
                PROGRESS.add(len(batch))
            yield batch
            batch = []
    if batch:
        read += len(batch)
        if counted:
            PROGRESS.add(len(batch))
        yield batch
    if counted:
        path = readable_file.metadata.path
        counter(f"{LINES_READ}{counted}:{path}").inc(read)
        if blank:
            counter("blank_lines_skipped").inc(blank)
            counter(f"{BLANK_LINES}{counted}:{path}").inc(blank)
        PROGRESS.add(files_done=1)


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
    """Batches of RawMessage tagged with their source file; lines read are counted per file."""
    kind = "prediction" if label == "Predictions" else "label"

    def to_messages(readable_file) -> Iterator[list[RawMessage]]:
        attrs = {"source_file": readable_file.metadata.path}
        for batch in _line_batches(readable_file, kind):
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


class _ModelName(msgspec.Struct):
    name: str


class _Identity(msgspec.Struct):
    event_id: str
    model: _ModelName


_EVENT_ID = msgspec.json.Decoder(_EventId)
_IDENTITY = msgspec.json.Decoder(_Identity)


def event_id_of(raw: bytes) -> str | None:
    """The event_id of a raw PredictionEvent, or None (it will be a dead letter).

    >>> event_id_of(b'{"event_id": "evt-00000001", "x": [1]}'), event_id_of(b"{")
    ('evt-00000001', None)
    """
    try:
        return _EVENT_ID.decode(raw).event_id
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def identity_of(raw: bytes) -> str | None:
    """The identity (model name, event_id) of a raw PredictionEvent, or None (a dead letter).

    The same key as ``transforms.identity.row_identity`` of the row it becomes.

    >>> from transforms.identity import identity
    >>> identity_of(b'{"event_id": "evt-00000001", "model": {"name": "fraud"}}') == identity(
    ...     "fraud", "evt-00000001")
    True
    >>> identity_of(b'{"event_id": "evt-00000001"}'), identity_of(b"{")
    (None, None)
    """
    try:
        ev = _IDENTITY.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return identity(ev.model.name, ev.event_id)


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
        "prediction",
        specs=specs,
        check_time_bounds=False,
        batched=True,
        dead_letter_payload=opts.dead_letter_payload,
        pii_key_secret=opts.pii_key_secret,
    )
    pred_dups = _keys_pass(p, "Predictions", opts.input, identity_of)
    out: dict[str, beam.PCollection] = {}
    # dedup by identity (model name, event_id); conflicting later copies become dead letters
    out["predictions"], out["predictions/duplicates"], pred_conflicts = (
        preds.rows | "DedupPredictions" >> DropLaterCopies(pred_dups, "predictions")
    )
    dead = [preds[DEAD_LETTERS], pred_conflicts]
    if opts.labels_input:
        labels = _read(p, "Labels", opts.labels_input) | "ValidateLabels" >> ValidateEvents(
            "label",
            specs=specs,
            check_time_bounds=False,
            batched=True,
            dead_letter_payload=opts.dead_letter_payload,
            pii_key_secret=opts.pii_key_secret,
        )
        label_dups = _keys_pass(p, "Labels", opts.labels_input, payload_sha256_of)
        out["labels"], out["labels/duplicates"], label_conflicts = (
            labels.rows
            | "DedupLabels" >> DropLaterCopies(label_dups, "labels", "payload_sha256", "label_time")
        )
        dead += [labels[DEAD_LETTERS], label_conflicts]
    out["dead_letters"] = dead | "DecodeDeadLetters" >> beam.Flatten()
    # tamper evidence: one integrity record per (model, version, hour) over the audit rows
    out["integrity"] = (out["predictions"], out["predictions/duplicates"]) | "Integrity" >> IntegrityRecords(
        f"replay:{opts.input}", bounded=True
    )
    if opts.integrity_export:
        _ = out["integrity"] | "ExportIntegrity" >> beam.ParDo(ExportIntegrity(opts.integrity_export))
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
    out["all_dead_letters"] = dict(out) | "Write" >> WriteAudit(
        sink_fns(opts, sinks, "replay"), opts.sink_batch_size
    )
    _ = out["all_dead_letters"] | "CountDeadLetters" >> beam.ParDo(_CountDeadLetters())
    return out


def dead_letter_counter(dead: dict) -> str:
    """The summary's counter for one dead letter: stage, code and its kind (or, for a row a
    sink refused, the table it was meant for).

    >>> dead_letter_counter({"stage": "decode", "error_code": "invalid_json", "kind": "prediction"})
    'replay_dead_letter:decode:invalid_json:prediction'
    >>> dead_letter_counter({"stage": "sink.bigquery", "error_code": "sink_rejected", "kind": "row",
    ...                      "error_path": "$.labels"})
    'replay_dead_letter:sink.bigquery:sink_rejected:labels'
    """
    kind = dead.get("kind") or ""
    if kind == "row":
        kind = str(dead.get("error_path") or "").removeprefix("$.")
    return f"{DEAD_LETTER}{dead.get('stage')}:{dead.get('error_code')}:{kind}"


class _CountDeadLetters(beam.DoFn):
    """Counts every dead letter (input and sink-refused) by stage and code, for the summary."""

    def process(self, dead: dict) -> Iterator[None]:
        counter(dead_letter_counter(dead)).inc()
        return iter(())


# -- the launcher: checks, the run, the summary ------------------------------------------------
PROG = "predaudit replay"
AUDITED = ("predictions", "labels")


def summarize(counters: Mapping[str, int], sinks: Sequence[str]) -> dict[str, Any]:
    """The replay summary from the run's counters, with the conservation check per sink:
    input lines = rows written + rows the sink refused (dead letters) + input dead letters
    + duplicates collapsed, and every dead letter written. ``exit_code`` 0 when it holds.

    >>> c = {"replay_lines_read:prediction:/f": 5, "clickhouse_rows_written_predictions": 3,
    ...      "predictions_duplicates": 1, "replay_dead_letter:decode:invalid_json:prediction": 1,
    ...      "clickhouse_rows_written_dead_letters": 1}
    >>> s = summarize(c, ["clickhouse"])
    >>> s["accounted"], s["exit_code"], s["dead_letters"]
    (True, 0, {'invalid_json': 1})
    >>> s = summarize({**c, "clickhouse_rows_written_predictions": 2}, ["clickhouse"])
    >>> s["exit_code"], s["problems"][0]
    (1, 'clickhouse: 1 of 5 input lines are in no table (rows 2, refused 0, dead letters 1, duplicates 1)')
    """
    files: list[dict[str, Any]] = []
    written: dict[str, dict[str, int]] = {s: {} for s in sinks}
    dead: dict[tuple[str, str, str], int] = {}
    for name, n in sorted(counters.items()):
        if name.startswith(LINES_READ):
            kind, path = name[len(LINES_READ) :].split(":", 1)
            blank = counters.get(f"{BLANK_LINES}{kind}:{path}", 0)
            files.append({"path": path, "kind": kind, "lines": n, "blank": blank})
        elif name.startswith(DEAD_LETTER):
            stage, code, what = name[len(DEAD_LETTER) :].split(":", 2)
            dead[(stage, code, what)] = dead.get((stage, code, what), 0) + n
        else:
            for sink in sinks:
                prefix = f"{sink}_rows_written_"
                if name.startswith(prefix):
                    written[sink][name[len(prefix) :]] = n
    lines = sum(f["lines"] for f in files)
    dups = {t: counters.get(f"{t}_duplicates", 0) for t in AUDITED}
    input_dead: dict[str, int] = {}
    refused: dict[str, dict[str, int]] = {s: {} for s in sinks}
    for (stage, code, what), n in dead.items():
        if stage.startswith("sink."):
            by_code = refused.setdefault(stage[len("sink.") :], {})
            by_code[code] = by_code.get(code, 0) + n
        elif what in ("prediction", "label"):  # an input line (decode, dedup conflict)
            input_dead[code] = input_dead.get(code, 0) + n
    total_dead = sum(dead.values())
    problems = []
    for sink in sinks:
        rows = sum(written[sink].get(t, 0) for t in AUDITED)
        ref = sum(n for (stage, _, what), n in dead.items() if stage == f"sink.{sink}" and what in AUDITED)
        accounted = rows + ref + sum(input_dead.values()) + sum(dups.values())
        if accounted != lines:
            missing = lines - accounted
            what = "are in no table" if missing > 0 else "more rows than input lines: counted twice"
            problems.append(
                f"{sink}: {abs(missing)} of {lines} input lines {what} (rows {rows}, refused {ref}, "
                f"dead letters {sum(input_dead.values())}, duplicates {sum(dups.values())})"
            )
        dl = written[sink].get("dead_letters", 0)
        if dl != total_dead:
            problems.append(f"{sink}: {total_dead - dl} of {total_dead} dead letters were not written")
    return {
        "files": files,
        "lines": lines,
        "rows_written": written,
        "duplicates": dups,
        "conflicting_duplicates": input_dead.get("conflicting_duplicate", 0),
        "dead_letters": dict(sorted(input_dead.items(), key=lambda kv: (-kv[1], kv[0]))),
        "sink_refused": {s: by for s, by in refused.items() if by},
        "accounted": not problems,
        "problems": problems,
        "exit_code": 0 if not problems else 1,
    }


def render_summary(summary: Mapping[str, Any]) -> str:
    """The summary as text for stdout."""
    out = ["replay summary"]
    for f in summary["files"]:
        blank = f", {f['blank']} blank skipped" if f["blank"] else ""
        out.append(f"  read      {f['path']} ({f['kind']}s): {f['lines']} lines{blank}")
    for sink, tables in summary["rows_written"].items():
        per = ", ".join(f"{t} {n}" for t, n in sorted(tables.items())) or "nothing"
        out.append(f"  written   {sink}: {per}")
    dups = summary["duplicates"]
    out.append(
        f"  duplicates collapsed: {sum(dups.values())} ({', '.join(f'{t} {n}' for t, n in dups.items())})"
    )
    out.append(f"  conflicting duplicates: {summary['conflicting_duplicates']} (kept as dead letters)")
    codes = ", ".join(f"{c} {n}" for c, n in summary["dead_letters"].items()) or "none"
    out.append(f"  dead letters by code: {codes}")
    for sink, by in summary["sink_refused"].items():
        out.append(f"  refused by {sink}: {', '.join(f'{c} {n}' for c, n in sorted(by.items()))}")
    if summary["accounted"]:
        out.append(
            f"  accounted: all {summary['lines']} input lines are rows, dead letters or counted "
            f"duplicates in {', '.join(summary['rows_written'])}"
        )
    else:
        out += [f"  NOT ACCOUNTED: {p}" for p in summary["problems"]]
    return "\n".join(out) + "\n"


class _Reporter(threading.Thread):
    """Writes a progress line to stderr every ``interval_s`` while the pipeline runs."""

    def __init__(self, interval_s: float, files: int, stream: IO[str]) -> None:
        super().__init__(name="replay-progress", daemon=True)
        self.interval_s, self.files, self.stream = interval_s, files, stream
        self.done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.wait(self.interval_s):
            elapsed = time.monotonic() - start
            lines, done = PROGRESS.lines, PROGRESS.files_done
            self.stream.write(
                f"{PROG}: {lines:,} lines read, {done} of {self.files} files, "
                f"{lines / max(elapsed, 1e-9):,.0f} lines/s, {elapsed:.0f} s\n"
            )
            self.stream.flush()


def _match(glob: str, flag: str) -> list[str]:
    """The files a glob names, or OptionsError (a glob matching nothing is a usage error)."""
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    try:
        found = [m.path for r in FileSystems.match([glob]) for m in r.metadata_list]
    except BeamIOError as exc:
        raise OptionsError(f"{flag}={glob!r}: cannot list files: {exc}") from None
    if not found:
        raise OptionsError(f"{flag}={glob!r} matches no file")
    return sorted(found)


def _counters(result) -> dict[str, int]:
    """Every predaudit counter of a finished run, summed over steps."""
    from apache_beam.metrics.metric import MetricsFilter

    from transforms.metrics import NAMESPACE

    totals: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(value or 0)
    return totals


def _run_failure(exc: BaseException) -> str | None:
    """The one line for a failure that ends a replay with exit 1 (sink failure, unreadable
    input), found through Beam's wrapping; None for anything else (a bug: re-raised)."""
    failure = find_sink_failure(exc) or parse_marked(str(exc))
    if failure is not None:
        failure.sink = failure.sink.split(" [while running")[0]
        return f"sink failure: {failure}"
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, InputFailure):
            return str(cur)
        cur = cur.__cause__ or cur.__context__
    return None


def run(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """``predaudit replay``: exit 0 = every input line is in a table, 1 = something could not be
    written (the summary or the error line says what), 2 = usage or configuration error."""
    out = out or sys.stdout
    err = sys.stderr

    def fail(code: int, message: object, summary_json: str = "") -> int:
        line = " ".join(str(message).split())  # one line, whatever the source
        err.write(f"{PROG}: error: {line}\n")
        if summary_json and code == 1:
            pathlib.Path(summary_json).write_bytes(orjson.dumps({"exit_code": code, "error": line}))
        return code

    try:
        launch, flags = parse_command_line(sys.argv[1:] if argv is None else argv, "replay", PROG)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except OptionsError as exc:
        return fail(2, exc)
    opts = AuditOptions(flags)
    if opts.log_format == "json":
        logs.configure("json")
    try:
        sinks = validate(opts, "replay")
        check_pii_key(specs_from(opts), opts.pii_key_secret)  # a malformed spec or a missing PII key
        files = _match(opts.input, "--input")
        if opts.labels_input:
            files += _match(opts.labels_input, "--labels_input")
        problems = prepare_sinks(opts, sinks, create=not launch.no_create_tables)
    except (OptionsError, SpecError, ProvisionError) as exc:
        return fail(2, exc)
    except (ValueError, OSError) as exc:  # an unusable PII key or key file
        return fail(2, f"PII key: {exc}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return fail(
            1,
            f"sink failure: {problems[0]}{more} -- fix: run `{provision_command(opts, sinks)}` "
            "(or replay without --no_create_tables)",
            launch.summary_json,
        )
    PROGRESS.reset()
    reporter = _Reporter(launch.progress_interval_s, len(files), err)
    if launch.progress_interval_s > 0:
        reporter.start()
    # Beam's graph-construction warnings are not the user's to act on, and its runner logs each
    # DoFn failure with a traceback: the summary or one error line says what happened instead
    beam_log, failure_log = logging.getLogger("apache_beam"), logging.getLogger("apache_beam.runners.common")
    levels = beam_log.level, failure_log.level
    beam_log.setLevel(max(levels[0], logging.ERROR))
    failure_log.setLevel(logging.CRITICAL)
    try:
        p = beam.Pipeline(options=opts)
        build(p, opts)
        result = p.run()
        result.wait_until_finish()
    except Exception as exc:
        line = _run_failure(exc)
        if line is None:
            raise
        return fail(1, line, launch.summary_json)
    finally:
        reporter.done.set()
        beam_log.setLevel(levels[0])
        failure_log.setLevel(levels[1])
    summary = summarize(_counters(result), sinks)
    out.write(render_summary(summary))
    if launch.summary_json:
        pathlib.Path(launch.summary_json).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary["exit_code"]


if __name__ == "__main__":
    sys.exit(run())
