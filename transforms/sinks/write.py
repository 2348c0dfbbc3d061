"""WriteAudit: rows to every sink, then every dead letter (decode + sink refusals) to every sink."""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam

from transforms.sinks.base import SinkFn, WriteToSink


class WriteAudit(beam.PTransform):
    """Input: ``{"predictions": rows, "labels": rows, "dead_letters": dead}``; output: all dead letters."""

    def __init__(self, fns: Sequence[SinkFn], max_batch_size: int = 5000) -> None:
        super().__init__()
        if not fns:
            raise ValueError("WriteAudit needs at least one sink")
        self.fns, self.max_batch_size = list(fns), max_batch_size

    def expand(self, pcolls: dict) -> beam.PCollection:
        tagged = [
            pcolls[table] | f"Tag_{table}" >> beam.Map(lambda r, t: (t, r), table)
            for table in ("predictions", "labels")
            if table in pcolls
        ]
        rows = tagged | "AllRows" >> beam.Flatten()
        refused = [rows | f"Write_{fn.name}" >> WriteToSink(fn, self.max_batch_size) for fn in self.fns]
        dead = [pcolls["dead_letters"], *refused] | "AllDeadLetters" >> beam.Flatten()
        keyed = dead | "Tag_dead_letters" >> beam.Map(lambda r: ("dead_letters", r))
        for fn in self.fns:
            _ = keyed | f"WriteDeadLetters_{fn.name}" >> WriteToSink(fn, self.max_batch_size)
        return dead
