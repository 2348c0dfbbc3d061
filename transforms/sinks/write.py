"""WriteAudit: rows to every sink, then every dead letter (decode + sink refusals) to every sink."""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam

from transforms.sinks.base import SinkFn


class WriteAudit(beam.PTransform):
    """Input: ``{table or "table/part": rows, "dead_letters": dead}``; output: all dead letters.

    Every table other than ``dead_letters`` is written first; what a sink refuses joins
    the decode dead letters, and those are written to every sink last.
    """

    def __init__(self, fns: Sequence[SinkFn], max_batch_size: int = 5000) -> None:
        super().__init__()
        if not fns:
            raise ValueError("WriteAudit needs at least one sink")
        self.fns, self.max_batch_size = list(fns), max_batch_size

    def expand(self, pcolls: dict) -> beam.PCollection:
        # a table may come as several PCollections ("table/part"): each is written by its own
        # DoFn, not through a Flatten, which would make the runner materialize every row
        refused = [
            pcolls[name]
            | f"Write_{name.replace('/', '_')}_{fn.name}"
            >> beam.ParDo(fn.for_table(name.split("/")[0], self.max_batch_size))
            for name in sorted(pcolls)
            if name != "dead_letters"
            for fn in self.fns
        ]
        dead = [pcolls["dead_letters"], *refused] | "AllDeadLetters" >> beam.Flatten()
        for fn in self.fns:
            _ = dead | f"Write_dead_letters_{fn.name}" >> beam.ParDo(
                fn.for_table("dead_letters", self.max_batch_size)
            )
        return dead
