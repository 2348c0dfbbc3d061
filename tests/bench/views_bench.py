"""Analyst views vs the raw table in chDB at 1M rows: `python -m tests.bench.views_bench`.

``BENCH_VIEW_ROWS`` (default 1,000,000), ``BENCH_VIEW_REPEAT`` (15), ``BENCH_VIEW_BEFORE=1``
also times the ``LIMIT 1 BY`` view this design replaced (seconds per query at 1M rows).

The same query runs against ``audit.predictions`` (raw, every copy) and through
``predictions_dedup`` (first copy by ingest time per (model_name, event_id)); median of
REPEAT runs each, printed side by side with the ratio and the 2x target. The ``plain view``
column is a bare ``SELECT * FROM predictions`` view, run in the same interleaving: what any
view costs ClickHouse to plan, the floor under the dedup view's ratio. Not a test: nothing
here asserts a speed, but the view's answers are checked against the raw table's.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

N_ROWS = int(os.environ.get("BENCH_VIEW_ROWS", "1000000"))
DUPLICATES = 1000  # later copies (cross-run re-sends): other ingest time and content
REPEAT = int(os.environ.get("BENCH_VIEW_REPEAT", "15"))
BEFORE = os.environ.get("BENCH_VIEW_BEFORE") == "1"  # also time the old LIMIT 1 BY view (slow)
BEFORE_REPEAT = 3
DB = "bench_views"
_MODELS = "['fraud', 'churn', 'credit']"
_T0 = "toDateTime64('2026-03-01 00:00:00', 6, 'UTC')"
_SPAN_US = 30 * 86_400 * 1_000_000  # 30 days of event time


def _fill(client, n: int, dups: int) -> None:
    """``n`` distinct predictions over 30 days, then ``dups`` later copies of some of them.

    Generated in SQL from ``numbers()`` (seconds, not minutes); deterministic.
    """
    cols = (
        "event_id, event_time, model_name, model_version, schema_version, request_id, features, "
        "prediction_label, prediction_score, latency_ms, status, quality_issues, ingest_time, "
        "payload_sha256, pipeline_version, row_sha256"
    )

    def select(keys: str, copy: str) -> str:
        # copy = '' for the first copy; a later copy has ingest +1 h, another label and request id
        return (
            f"SELECT concat('evt-', leftPad(toString(k), 10, '0')), "
            f"{_T0} + toIntervalMicrosecond(intDiv(k * {_SPAN_US}, {n})), "
            f"{_MODELS}[k % 3 + 1], 'v1', '1', concat('req-{copy}', hex(sipHash64(k))), "
            "'{\"amount\": 1.0}', "
            f"if(k % 2 = {1 if copy else 0}, 'yes', 'no'), (k % 1000) / 1000, "
            "(sipHash64(k, 7) % 2000) / 10.0, 'ok', [], "
            f"{_T0} + toIntervalMicrosecond(intDiv(k * {_SPAN_US}, {n}) + {3_600_000_000 if copy else 1_000_000}), "
            f"hex(SHA256(concat('{copy}', toString(k)))), 'bench', hex(SHA256(concat('row{copy}', toString(k)))) "
            f"FROM (SELECT {keys} AS k FROM numbers({dups if copy else n}))"
        )

    client.command(
        f"INSERT INTO {DB}.predictions ({cols}) {select('number', '')}",
        settings={"max_insert_block_size": 1_000_000, "insert_deduplication_token": "bench-first"},
    )
    if dups:
        stride = n // dups
        client.command(
            f"INSERT INTO {DB}.predictions ({cols}) {select(f'number * {stride} + 7', 'resend-')}",
            settings={"insert_deduplication_token": "bench-resend"},
        )


def _medians(client, sqls: list[str], repeat: int) -> list[tuple[float, float, list]]:
    """(median wall ms, median CPU ms, rows) per query, the queries interleaved run by run.

    chDB runs in this process, so process CPU time is the query's work even when other
    processes share the cores (wall time then mostly measures them); interleaving keeps a
    load change from favouring one side.
    """
    wall: list[list[float]] = [[] for _ in sqls]
    cpu: list[list[float]] = [[] for _ in sqls]
    rows: list[list] = [[] for _ in sqls]
    for _ in range(repeat):
        for i, sql in enumerate(sqls):
            t0, c0 = time.perf_counter(), time.process_time()
            rows[i] = client.query(sql).result_rows
            cpu[i].append(time.process_time() - c0)
            wall[i].append(time.perf_counter() - t0)
    return [
        (statistics.median(w) * 1000, statistics.median(c) * 1000, r)
        for w, c, r in zip(wall, cpu, rows, strict=True)
    ]


def main() -> None:
    import clickhouse_connect

    from schemas.tables import PREDICTIONS, create_clickhouse_tables

    with tempfile.TemporaryDirectory() as tmp:
        client = clickhouse_connect.get_client(dsn=f"chdb://{tmp}")
        create_clickhouse_tables(client, DB)
        client.command(f"CREATE VIEW {DB}.predictions_plain AS SELECT * FROM {DB}.predictions")
        t0 = time.perf_counter()
        _fill(client, N_ROWS, DUPLICATES)
        load_s = time.perf_counter() - t0
        raw_n = client.command(f"SELECT count() FROM {DB}.predictions")
        view_n = client.command(f"SELECT count() FROM {DB}.predictions_dedup")
        repeats = client.command(f"SELECT count() FROM {DB}.predictions_repeats")
        assert (raw_n, view_n, repeats) == (N_ROWS + DUPLICATES, N_ROWS, 2 * DUPLICATES), (raw_n, view_n)
        k = (N_ROWS // DUPLICATES) * 17 + 7  # an identity that has a later copy
        event_id = f"evt-{k:010d}"
        model = ("fraud", "churn", "credit")[k % 3]
        request_id = client.command(
            f"SELECT request_id FROM {DB}.predictions WHERE event_id = '{event_id}' ORDER BY ingest_time LIMIT 1"
        )
        ingest = PREDICTIONS.column_names.index("ingest_time")
        queries = [
            ("point lookup by event_id", f"SELECT * FROM {{t}} WHERE event_id = '{event_id}'"),
            (
                "point lookup by model_name + event_id",
                f"SELECT * FROM {{t}} WHERE model_name = '{model}' AND event_id = '{event_id}'",
            ),
            ("point lookup by request_id", f"SELECT * FROM {{t}} WHERE request_id = '{request_id}'"),
            (
                "p95 latency_ms, one model, one day",
                "SELECT quantile(0.95)(latency_ms), count() FROM {t} WHERE model_name = 'fraud' "
                "AND event_time >= '2026-03-10 00:00:00' AND event_time < '2026-03-11 00:00:00'",
            ),
        ]
        print(
            f"\nanalyst views, chDB, {raw_n:,} rows ({DUPLICATES} identities with a later copy), "
            f"loaded in {load_s:.1f} s; median of {REPEAT} interleaved runs; ms wall / ms CPU"
        )
        print(f"{'query':<40}{'raw':>13}{'view':>13}{'ratio':>12}  target <= 2.0 (CPU)  plain view (CPU)")
        for name, sql in queries:
            (raw_w, raw_c, raw_rows), (view_w, view_c, view_rows), (_, plain_c, _) = _medians(
                client,
                [
                    sql.format(t=f"{DB}.predictions"),
                    sql.format(t=f"{DB}.predictions_dedup"),
                    sql.format(t=f"{DB}.predictions_plain"),
                ],
                REPEAT,
            )
            if name.startswith("point"):  # the raw table has both copies; the view the first
                assert len(raw_rows) == (1 if "request" in name else 2) and len(view_rows) == 1, name
                assert view_rows[0] == min(raw_rows, key=lambda r: r[ingest]), name
            ratio = view_c / raw_c
            verdict = "ok" if ratio <= 2.0 else "OVER"
            print(
                f"{name:<40}{raw_w:>6.1f} /{raw_c:>5.1f}{view_w:>6.1f} /{view_c:>5.1f}"
                f"{view_w / raw_w:>5.2f} /{ratio:>5.2f}  {verdict:<4}{plain_c:>15.1f} ({plain_c / raw_c:.2f})"
            )
        if BEFORE:  # the LIMIT 1 BY view this design replaced, for the before/after figures
            old = (
                f"CREATE VIEW {DB}.predictions_limit_by AS SELECT * FROM {DB}.predictions "
                "ORDER BY ingest_time, payload_sha256 LIMIT 1 BY model_name, event_id"
            )
            client.command(old)
            print(f"before: the LIMIT 1 BY view, median of {BEFORE_REPEAT} runs (ms wall / ms CPU)")
            for name, sql in queries:
                ((w, c, _),) = _medians(client, [sql.format(t=f"{DB}.predictions_limit_by")], BEFORE_REPEAT)
                print(f"{name:<40}{'':>13}{w:>6.0f} /{c:>5.0f}")


if __name__ == "__main__":
    main()
