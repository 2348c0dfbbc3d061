"""Pipeline-side dedup: the first half of "one logical row per event".

Streams: ``DedupByEventId`` remembers each key for a horizon (Beam state + an event-time
timer); on bounded per-row input, a GroupByKey. Replay: ``DuplicateKeys`` + ``DropLaterCopies``,
exact over the whole input with only keys shuffled. Idempotent sink
writes and the ``*_dedup`` views catch what the bounded state cannot (a re-send after the
horizon).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import BooleanCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration

from transforms.metrics import counter


class _DedupFn(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, horizon_s: float, name: str) -> None:
        self.horizon = Duration.of(horizon_s)
        self.name = name

    def process(
        self,
        element: tuple[str, Any],
        ts=beam.DoFn.TimestampParam,
        seen=beam.DoFn.StateParam(SEEN),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterator[Any]:
        if seen.read():
            counter(f"{self.name}_duplicates").inc()
            return
        seen.write(True)
        expiry.set(ts + self.horizon)
        yield element[1]

    @on_timer(EXPIRY)
    def expire(self, seen=beam.DoFn.StateParam(SEEN)) -> None:
        seen.clear()


class _FirstOfGroup(beam.DoFn):
    """Bounded input: keep one row per key, re-stamped with its own event time; count the rest."""

    def __init__(self, name: str, time_field: str) -> None:
        self.name, self.time_field = name, time_field

    def process(self, element: tuple[str, Any]) -> Iterator[Any]:
        rows = list(element[1])
        if len(rows) > 1:
            counter(f"{self.name}_duplicates").inc(len(rows) - 1)
        first = min(rows, key=lambda r: (r["ingest_time"], r["payload_sha256"]))
        yield TimestampedValue(first, first[self.time_field] / 1e6)


class DedupByEventId(beam.PTransform):
    """Rows -> rows with later copies of a key (``event_id``; labels use the payload hash) removed, counted."""

    def __init__(self, horizon_s: float = 3600.0, name: str = "predictions", key: str = "event_id") -> None:
        super().__init__()
        if horizon_s <= 0:
            raise ValueError("dedup horizon must be > 0 seconds")
        self.horizon_s, self.name, self.key = horizon_s, name, key

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        keyed = rows | "KeyBy" >> beam.Map(lambda r, k: (r[k], r), self.key)
        if rows.is_bounded:
            # replay: the whole input is known, so a GroupByKey is exact (and ~25x faster than
            # per-element state on the DirectRunner); the horizon only matters for streams
            time_field = "label_time" if self.name == "labels" else "event_time"
            return (
                keyed
                | "Group" >> beam.GroupByKey()
                | "FirstPerKey" >> beam.ParDo(_FirstOfGroup(self.name, time_field))
            )
        return keyed | "FirstPerKey" >> beam.ParDo(_DedupFn(self.horizon_s, self.name))


def _shard_keys(
    batch: list[bytes], extract: Callable[[bytes], str | None], shards: int
) -> Iterator[tuple[int, list[str]]]:
    by_shard: dict[int, list[str]] = {}
    for raw in batch:
        k = extract(raw)
        if k is not None:
            by_shard.setdefault(zlib.crc32(k.encode()) % shards, []).append(k)
    yield from by_shard.items()


def _duplicated(shard_and_lists: tuple[int, Iterable[list[str]]]) -> Iterator[str]:
    seen: set[str] = set()
    dups: set[str] = set()
    for keys in shard_and_lists[1]:
        for k in keys:
            (dups if k in seen else seen).add(k)
    yield from dups


class DuplicateKeys(beam.PTransform):
    """Batches of raw payloads -> the keys that occur more than once (a cheap first pass).

    Only keys are shuffled, as per-batch lists sharded by crc32; ``extract`` pulls the key
    from the raw bytes (None when it cannot: such a payload becomes a dead letter anyway).
    """

    def __init__(self, extract: Callable[[bytes], str | None], shards: int = 64) -> None:
        super().__init__()
        self.extract, self.shards = extract, shards

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "ShardKeys" >> beam.FlatMap(_shard_keys, self.extract, self.shards)
            | "GroupShards" >> beam.GroupByKey()
            | "DuplicatedKeys" >> beam.FlatMap(_duplicated)
        )


class _SplitDuplicates(beam.DoFn):
    """Rows whose key occurs once pass as a batch; the rest go to a per-row GroupByKey."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._src: object = None
        self._set: frozenset[str] = frozenset()

    def process(self, batch: list[dict], dups: list[str]) -> Iterator[Any]:
        if dups is not self._src:
            self._src, self._set = dups, frozenset(dups)
        if not self._set:
            yield batch
            return
        unique = []
        for row in batch:
            if row[self.key] in self._set:
                yield pvalue.TaggedOutput("dupes", (row[self.key], row))
            else:
                unique.append(row)
        if unique:
            yield unique


class DropLaterCopies(beam.PTransform):
    """Bounded row *lists* -> row lists with one row per key, given the duplicated keys.

    Exact over the whole input: with the keys known up front (``DuplicateKeys`` over the same
    files) the rows stream straight to the sinks; only the rare rows whose key repeats take
    a per-row GroupByKey.
    """

    def __init__(
        self,
        dup_keys: beam.PCollection,
        name: str = "predictions",
        key: str = "event_id",
        time_field: str = "event_time",
    ) -> None:
        super().__init__()
        self.dup_keys, self.name, self.key, self.time_field = dup_keys, name, key, time_field

    def expand(self, batches: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        """Returns (unique-row batches, resolved duplicates as one-row batches): two PCollections,
        not a Flatten, so the unique rows stay fused with the read and stream to the sinks."""
        split = batches | "Split" >> beam.ParDo(
            _SplitDuplicates(self.key), pvalue.AsList(self.dup_keys)
        ).with_outputs("dupes", main="unique")
        firsts = (
            split.dupes
            | "GroupDuplicates" >> beam.GroupByKey()
            | "FirstPerKey" >> beam.ParDo(_FirstOfGroup(self.name, self.time_field))
            | "AsBatches" >> beam.Map(lambda row: [row])
        )
        return split.unique, firsts
