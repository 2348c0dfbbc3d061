"""Tamper evidence: integrity records over the audit rows' ``row_sha256``.

Per (model name, model version, hour of event time) one record: the number of audit rows
(first copies, after dedup) and the RFC 6962 Merkle tree hash over their ``row_sha256`` in
identity order ((model_name, event_id); within one record the model is fixed, so event_id
order, byte-wise). Up to ``LEAF_LIST_MAX`` rows the record also lists its leaves
(``[[event_id, row_sha256], ...]``) so ``predaudit verify`` can name a missing or altered
row; a larger hour is checked by count and root only.

Replay (bounded): one record per group (``sequence`` 0, ``final``). Streaming: hourly
event-time windows with allowed lateness, early panes every ``early_s`` of processing time
and one pane per late row, in accumulating mode: each pane re-emits the whole record with
``sequence`` = the pane index, so the record with the highest sequence per (writer, model,
version, hour) is the authoritative one (earlier panes cover subsets of its rows). A row later
than the allowed lateness is in the table but in no record: verify reports it as not covered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.transforms import trigger, window

from transforms.metrics import counter
from transforms.rows import from_micros

HOUR_US = 3_600_000_000
#: the hash scheme every record names (row hash version / tree)
SCHEME = "row-sha256-v1/rfc6962-sha256"
#: records of hours with more rows than this keep only count and root (no leaf list)
LEAF_LIST_MAX = 10_000
#: streaming: how late (event time behind the watermark) a row may be and still re-fire its hour
DEFAULT_LATENESS_S = 24 * 3600
#: streaming: an early pane at most this often (processing time) while an hour is open
DEFAULT_EARLY_S = 60


def hour_start(event_time_us: int) -> int:
    """The start (epoch micros) of the event-time hour of ``event_time_us``.

    >>> from_micros(hour_start(1772366400123456 + 59 * 60 * 10**6)).isoformat()
    '2026-03-01T12:00:00+00:00'
    """
    return event_time_us - event_time_us % HOUR_US


def _leaf(row_hash_hex: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(row_hash_hex)).digest()


def merkle_root(row_hashes: Sequence[str]) -> str:
    """RFC 6962 Merkle tree hash (hex) over hex sha256 row hashes, in the given order.

    Leaf = sha256(0x00 || row hash bytes), node = sha256(0x01 || left || right), the tree
    split at the largest power of two below n (computed bottom-up: an odd last node is
    carried up unchanged, which gives the same tree); no rows = sha256 of the empty string.

    >>> h = hashlib.sha256(b"a").hexdigest()
    >>> merkle_root([]) == hashlib.sha256(b"").hexdigest()
    True
    >>> merkle_root([h]) == hashlib.sha256(b"\\x00" + bytes.fromhex(h)).hexdigest()
    True
    >>> merkle_root([h, h]) != merkle_root([h])
    True
    """
    if not row_hashes:
        return hashlib.sha256(b"").hexdigest()
    level = [_leaf(h) for h in row_hashes]
    while len(level) > 1:
        nxt = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def group_of(row: dict[str, Any]) -> tuple[str, str, int]:
    """(model_name, model_version, hour start in micros) of an audit row."""
    return (row["model_name"], row["model_version"], hour_start(int(row["event_time"])))


def first_copies(entries: Iterable[tuple[str, str, Any, Any]]) -> list[tuple[str, str]]:
    """(event_id, row_sha256) of the first copy per event_id, in event_id order.

    ``entries``: (event_id, row_sha256, ingest_time, payload_sha256); the first copy is the
    earliest ingest time, then the smallest payload hash (as the analyst views choose).

    >>> first_copies([("b", "h2", 5, "p"), ("a", "h1", 9, "p"), ("b", "h3", 1, "p")])
    [('a', 'h1'), ('b', 'h3')]
    """
    first: dict[str, tuple[Any, Any, str]] = {}
    for event_id, row_hash, ingest, payload in entries:
        cur = first.get(event_id)
        if cur is None or (ingest, payload) < cur[:2]:
            first[event_id] = (ingest, payload, row_hash)
    return [(eid, first[eid][2]) for eid in sorted(first)]


def integrity_record(
    writer: str,
    group: tuple[str, str, int],
    leaves: Sequence[tuple[str, str]],
    sequence: int = 0,
    final: bool = True,
) -> dict[str, Any]:
    """The ``integrity`` row for one group's leaves ((event_id, row_sha256) in event_id order).

    >>> r = integrity_record("replay:x", ("fraud", "1", 0), [("e1", "00" * 32)])
    >>> r["row_count"], r["leaves"], check_record(r)
    (1, '[["e1","0000000000000000000000000000000000000000000000000000000000000000"]]', [])
    """
    model, version, hour = group
    root = merkle_root([h for _, h in leaves])
    ident = orjson.dumps([writer, model, version, hour, sequence, root, len(leaves)])
    return {
        "integrity_id": hashlib.sha256(ident).hexdigest(),
        "model_name": model,
        "model_version": version,
        "hour_start": hour,
        "row_count": len(leaves),
        "merkle_root": root,
        "leaves": orjson.dumps([list(x) for x in leaves]).decode() if len(leaves) <= LEAF_LIST_MAX else None,
        "sequence": sequence,
        "final": final,
        "writer": writer,
        "scheme": SCHEME,
    }


def record_leaves(record: dict[str, Any]) -> list[tuple[str, str]] | None:
    """A record's leaf list (text or already-parsed JSON), or None when it has none."""
    leaves = record.get("leaves")
    if leaves is None:
        return None
    if isinstance(leaves, str | bytes):
        leaves = orjson.loads(leaves)
    return [(str(e), str(h)) for e, h in leaves]


def check_record(record: dict[str, Any]) -> list[str]:
    """What is wrong with a record in itself: a leaf list that does not give its count and
    root (the record was edited), or an unknown scheme. Empty when consistent."""
    problems = []
    if record.get("scheme") != SCHEME:
        problems.append(f"unknown scheme {record.get('scheme')!r} (this verify knows {SCHEME})")
    leaves = record_leaves(record)
    if leaves is not None:
        if len(leaves) != int(record["row_count"]):
            problems.append(f"leaf list has {len(leaves)} rows, row_count says {record['row_count']}")
        if [e for e, _ in leaves] != sorted(e for e, _ in leaves):
            problems.append("leaf list is not in identity order")
        if merkle_root([h for _, h in leaves]) != record["merkle_root"]:
            problems.append("leaf list does not give the merkle_root")
    return problems


def _entries(element: dict[str, Any] | list[dict[str, Any]], arrival: bool) -> Iterator[tuple[tuple, tuple]]:
    """(group, leaf entry) per row; with ``arrival`` the entry carries what decides the first
    copy (streaming: a redelivery after the dedup horizon reaches the records too). Replay's
    dedup is exact over the run, so its entries are just (event_id, row_sha256)."""
    for row in element if isinstance(element, list) else (element,):
        if arrival:
            yield (
                group_of(row),
                (row["event_id"], row["row_sha256"], row["ingest_time"], row["payload_sha256"]),
            )
        else:
            yield group_of(row), (row["event_id"], row["row_sha256"], 0, "")


class _RecordFn(beam.DoFn):
    def __init__(self, writer: str, bounded: bool) -> None:
        self.writer, self.bounded = writer, bounded

    def process(self, element: tuple[tuple, Iterable[tuple]], pane=beam.DoFn.PaneInfoParam) -> Iterator[dict]:
        group, entries = element
        leaves = first_copies(entries)
        sequence, final = (0, True) if self.bounded else (pane.index, pane.is_last)
        counter("integrity_records").inc()
        counter("integrity_rows_covered").inc(len(leaves))
        yield integrity_record(self.writer, tuple(group), leaves, sequence, final)


class IntegrityRecords(beam.PTransform):
    """Audit rows (dicts or lists of dicts; a PCollection or a tuple of them) -> integrity rows.

    Give it only the audit rows (the first copies that passed dedup): the records then cover
    exactly what the analyst views return.
    """

    def __init__(
        self,
        writer: str,
        bounded: bool,
        lateness_s: int = DEFAULT_LATENESS_S,
        early_s: int = DEFAULT_EARLY_S,
    ) -> None:
        super().__init__()
        self.writer, self.bounded, self.lateness_s, self.early_s = writer, bounded, lateness_s, early_s

    def expand(self, rows: beam.PCollection | tuple) -> beam.PCollection:
        parts = rows if isinstance(rows, tuple | list) else (rows,)
        entries = [
            part | f"Leaves{i}" >> beam.FlatMap(_entries, not self.bounded) for i, part in enumerate(parts)
        ]
        merged = entries[0] if len(entries) == 1 else entries | "AllLeaves" >> beam.Flatten()
        if self.bounded:
            windowed = merged | "Global" >> beam.WindowInto(window.GlobalWindows())
        else:
            windowed = merged | "Hourly" >> beam.WindowInto(
                window.FixedWindows(HOUR_US // 1_000_000),
                trigger=trigger.AfterWatermark(
                    early=trigger.AfterProcessingTime(self.early_s), late=trigger.AfterCount(1)
                ),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=self.lateness_s,
            )
        return (
            windowed
            | "GroupByHour" >> beam.GroupByKey()
            | "Record" >> beam.ParDo(_RecordFn(self.writer, self.bounded))
        )


def export_name(prefix: str, record: dict[str, Any]) -> str:
    """Where ``ExportIntegrity`` puts a record: one JSON-lines object per record, its name
    fixed by the record (a retried write finds it there and leaves it).

    >>> export_name("gs://b/audit/", {"hour_start": 1772366400000000, "integrity_id": "ab" * 32})[:59]
    'gs://b/audit/integrity-20260301T12-abababababababababababab'
    """
    hour = from_micros(int(record["hour_start"])).strftime("%Y%m%dT%H")
    return f"{prefix.rstrip('/')}/integrity-{hour}-{record['integrity_id']}.jsonl"


class ExportIntegrity(beam.DoFn):
    """Writes each integrity record to ``prefix`` (local or gs://, Beam FileSystems) as a
    one-line JSON file. An existing file (a retry, or a bucket under a retention policy that
    refuses overwrites) is left as it is: its name is the record's content hash."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def process(self, record: dict[str, Any]) -> Iterator[None]:
        from apache_beam.io.filesystems import FileSystems

        name = export_name(self.prefix, record)
        if FileSystems.exists(name):
            counter("integrity_export_existing").inc()
            return iter(())
        with FileSystems.create(name) as fh:
            fh.write(orjson.dumps(record) + b"\n")
        counter("integrity_exported").inc()
        return iter(())


def read_exported(prefix: str) -> list[dict[str, Any]]:
    """Every record ``ExportIntegrity`` wrote under ``prefix``."""
    from apache_beam.io.filesystems import FileSystems

    records = []
    for result in FileSystems.match([f"{prefix.rstrip('/')}/integrity-*.jsonl"]):
        for meta in result.metadata_list:
            with FileSystems.open(meta.path) as fh:
                records += [orjson.loads(line) for line in fh.read().splitlines() if line.strip()]
    return records
