"""One replay-benchmark run in its own process (so peak RSS is its own); prints one JSON line."""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import AuditOptions
from pipelines.replay import build


def trivial(path: str) -> int:
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        (
            p
            | beam.io.ReadFromText(path, coder=beam.coders.BytesCoder())
            | beam.Map(orjson.loads)
            | beam.combiners.Count.Globally()
        )
    return 0


def replay(path: str, specs: str, references: str = "") -> int:
    chdb = tempfile.mkdtemp(prefix="bench-chdb-")
    import clickhouse_connect

    from schemas.tables import create_clickhouse_tables

    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb}")
    create_clickhouse_tables(client, "audit")
    args = [f"--input={path}", f"--clickhouse_dsn=chdb://{chdb}", f"--model_specs={specs}"]
    opts = AuditOptions(args + ([f"--references={references}"] if references else ["--monitors=off"]))
    with beam.Pipeline(options=opts) as p:
        build(p, opts)
    return int(client.command("SELECT count() FROM audit.predictions"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["trivial", "replay", "monitors"])
    ap.add_argument("--references", default="")
    ap.add_argument("--input", required=True)
    ap.add_argument("--specs", default="")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.mode == "trivial":
        rows = trivial(args.input)
    else:
        rows = replay(args.input, args.specs, args.references if args.mode == "monitors" else "")
    secs = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(orjson.dumps({"mode": args.mode, "seconds": secs, "rows": rows, "peak_rss_mb": peak_mb}).decode())


if __name__ == "__main__":
    main()
