"""``predaudit verify``: recompute the audit rows' hashes from a table and compare them with
the integrity records (``transforms.integrity``).

For every (model, version, hour of event time) in the range it reports, each with the
identity (model name, event_id):

- altered: a row whose content no longer gives its ``row_sha256``, or whose hash is not the
  one its integrity record lists (the row was changed after it was written);
- missing: an identity an integrity record lists that the table no longer has;
- added: a row no integrity record covers (a forged row, or a second copy of an identity
  with other content), or an hour whose row count exceeds its record's;
- record: an integrity record that is inconsistent in itself (its leaf list does not give
  its count and root).

Exit 0 = no difference, 1 = differences (each printed), 2 = usage error or the tables cannot
be read (one line).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from transforms.integrity import (
    HOUR_US,
    check_record,
    first_copies,
    hour_start,
    merkle_root,
    read_exported,
    record_leaves,
)
from transforms.rows import from_micros, row_hash_columns, row_sha256, to_micros

PROG = "predaudit verify"
_TS_PRED = ("event_time",)
_EXTRA = ("row_sha256", "ingest_time", "payload_sha256")


class VerifyUsageError(Exception):
    """A bad command line or a table that cannot be read: one line, exit 2."""


@dataclasses.dataclass(frozen=True, order=True)
class Finding:
    """One difference between the table and the integrity records."""

    model_name: str
    model_version: str
    hour: int
    kind: str  # altered | missing | added | record
    event_id: str
    detail: str

    def line(self) -> str:
        hour = from_micros(self.hour).strftime("%Y-%m-%dT%H:00Z")
        who = f"({self.model_name}, {self.event_id})" if self.event_id else f"model {self.model_name}"
        return f"{self.kind:<8} {who} version {self.model_version} hour {hour}: {self.detail}"


def parse_time(text: str, flag: str) -> int:
    """An RFC 3339 time or a date (UTC when no offset) as epoch micros.

    >>> from_micros(parse_time("2026-03-01T12:30:00Z", "--from")).isoformat()
    '2026-03-01T12:30:00+00:00'
    >>> parse_time("2026-03-01", "--to") == parse_time("2026-03-01T00:00:00+00:00", "--to")
    True
    """
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise VerifyUsageError(
            f"{flag}={text!r}: use an RFC 3339 time (2026-03-01T12:00:00Z) or a date"
        ) from None
    return to_micros(t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc))


def hour_range(lo_us: int, hi_us: int) -> tuple[int, int]:
    """The whole hours ``--from``/``--to`` select: from the hour of ``from`` up to the end of
    the hour of ``to`` (exclusive when ``to`` is on the hour).

    >>> hour_range(5 * HOUR_US + 7, 7 * HOUR_US) == (5 * HOUR_US, 7 * HOUR_US)
    True
    >>> hour_range(5 * HOUR_US, 7 * HOUR_US + 1) == (5 * HOUR_US, 8 * HOUR_US)
    True
    """
    return hour_start(lo_us), -(-hi_us // HOUR_US) * HOUR_US


# -- reading the tables ------------------------------------------------------------------------
def _prediction_columns() -> list[str]:
    return [c for c, _ in row_hash_columns("predictions")] + list(_EXTRA)


def _ch_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouseSource:
    """Reads predictions and integrity records through clickhouse-connect (chdb:// or http(s))."""

    def __init__(self, dsn: str, database: str) -> None:
        import clickhouse_connect

        tls = {"interface": "https"} if dsn.startswith("https://") else {}
        self.client = clickhouse_connect.get_client(dsn=dsn, **tls)
        self.database = database
        self.where = f"clickhouse {database}"

    def _query(self, table: str, cols: Iterable[str], ts: Iterable[str], time_col: str, lo, hi, model):
        ts = set(ts)
        # timestamps as epoch micros, under another name: an alias named like the column would
        # shadow it in WHERE (ClickHouse resolves aliases there)
        select = ", ".join(
            f"toUnixTimestamp64Micro(`{c}`) AS `_us_{c}`" if c in ts else f"`{c}`" for c in cols
        )
        sql = (
            f"SELECT {select} FROM `{self.database}`.`{table}` WHERE `{time_col}` >= "
            f"fromUnixTimestamp64Micro(toInt64({lo}), 'UTC') AND `{time_col}` < "
            f"fromUnixTimestamp64Micro(toInt64({hi}), 'UTC')"
        )
        if model:
            sql += f" AND model_name = {_ch_str(model)}"
        return [
            {k.removeprefix("_us_"): v for k, v in row.items()}
            for row in self.client.query(sql).named_results()
        ]

    def rows(self, lo: int, hi: int, model: str) -> list[dict[str, Any]]:
        ts = [c for c, k in row_hash_columns("predictions") if k == "timestamp"] + ["ingest_time"]
        return self._query("predictions", _prediction_columns(), ts, "event_time", lo, hi, model)

    def records(self, lo: int, hi: int, model: str) -> list[dict[str, Any]]:
        from schemas.tables import INTEGRITY

        return self._query("integrity", INTEGRITY.column_names, ["hour_start"], "hour_start", lo, hi, model)


class BigQuerySource:
    """Reads predictions and integrity records through the BigQuery API (or the emulator)."""

    def __init__(self, project: str, dataset: str, endpoint: str = "") -> None:
        from transforms.sinks.bigquery import bigquery_client

        self.client = bigquery_client(project, endpoint)
        self.ref = f"{project}.{dataset}"
        self.where = f"bigquery {self.ref}"

    def _query(self, table: str, cols: Iterable[str], ts: Iterable[str], time_col: str, lo, hi, model):
        from google.cloud import bigquery

        ts = set(ts)
        select = ", ".join(f"UNIX_MICROS({c}) AS {c}" if c in ts else c for c in cols)
        sql = (
            f"SELECT {select} FROM `{self.ref}.{table}` WHERE {time_col} >= TIMESTAMP_MICROS(@lo) "
            f"AND {time_col} < TIMESTAMP_MICROS(@hi)"
        )
        params = [
            bigquery.ScalarQueryParameter("lo", "INT64", lo),
            bigquery.ScalarQueryParameter("hi", "INT64", hi),
        ]
        if model:
            sql += " AND model_name = @model"
            params.append(bigquery.ScalarQueryParameter("model", "STRING", model))
        job = self.client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params))
        return [dict(r.items()) for r in job.result()]

    def rows(self, lo: int, hi: int, model: str) -> list[dict[str, Any]]:
        ts = [c for c, k in row_hash_columns("predictions") if k == "timestamp"] + ["ingest_time"]
        return self._query("predictions", _prediction_columns(), ts, "event_time", lo, hi, model)

    def records(self, lo: int, hi: int, model: str) -> list[dict[str, Any]]:
        from schemas.tables import INTEGRITY

        return self._query("integrity", INTEGRITY.column_names, ["hour_start"], "hour_start", lo, hi, model)


# -- the comparison ----------------------------------------------------------------------------
Group = tuple[str, str, int]


def compare(rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]) -> list[Finding]:
    """Every difference between stored prediction rows and integrity records (pure).

    ``rows``: every stored copy (timestamps as micros or datetimes); ``records``: integrity rows.
    """
    found: dict[tuple[Group, str, str], Finding] = {}

    def add(g: Group, kind: str, event_id: str, detail: str) -> None:
        found.setdefault((g, kind, event_id), Finding(g[0], g[1], g[2], kind, event_id, detail))

    by_group: dict[Group, dict[str, list[tuple[Any, Any, str, str]]]] = {}
    for row in rows:
        t = row["event_time"]
        t = (
            to_micros(t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc))
            if isinstance(t, dt.datetime)
            else t
        )
        g = (row["model_name"], row["model_version"], hour_start(int(t)))
        recomputed = row_sha256(row)
        if recomputed != row["row_sha256"]:
            add(
                g,
                "altered",
                row["event_id"],
                f"content gives {recomputed}, stored row_sha256 {row['row_sha256']}",
            )
        by_group.setdefault(g, {}).setdefault(row["event_id"], []).append(
            (row["ingest_time"], row["payload_sha256"], recomputed, row["row_sha256"])
        )
    recs: dict[Group, list[dict[str, Any]]] = {}
    for rec in records:
        h = rec["hour_start"]
        h = to_micros(h) if isinstance(h, dt.datetime) else int(h)
        recs.setdefault((rec["model_name"], rec["model_version"], h), []).append(rec)
    for g in sorted(set(by_group) | set(recs)):
        copies = by_group.get(g, {})
        group_recs = recs.get(g, [])
        for rec in group_recs:
            for problem in check_record(rec):
                add(g, "record", "", f"integrity record {rec['integrity_id'][:16]}: {problem}")
        if not group_recs:
            for eid in copies:
                add(g, "added", eid, "not covered by any integrity record")
            continue
        leaf_lists = [record_leaves(r) for r in group_recs]
        if all(leaves is not None for leaves in leaf_lists):
            _compare_leaves(g, copies, leaf_lists, add)
        else:
            _compare_roots(g, copies, group_recs, add)
    return sorted(found.values())


def _compare_leaves(g: Group, copies: dict, leaf_lists: list, add) -> None:
    """Per identity: the union of the group's records (each pane or run lists a subset of the
    rows it saw; an identity listed with two hashes accepts either)."""
    expected: dict[str, set[str]] = {}
    for leaves in leaf_lists:
        for eid, h in leaves:
            expected.setdefault(eid, set()).add(h)
    for eid, cps in sorted(copies.items()):
        if eid not in expected:
            add(g, "added", eid, "not covered by any integrity record")
            continue
        first = min(cps, key=lambda c: (c[0], c[1]))
        want = ", ".join(sorted(expected[eid]))
        if first[2] not in expected[eid]:
            add(g, "altered", eid, f"content gives {first[2]}, integrity record lists {want}")
        for cp in cps:
            if cp is not first and cp[2] not in expected[eid]:
                add(g, "added", eid, f"a later copy with other content ({cp[2]}); recorded {want}")
    for eid in sorted(set(expected) - set(copies)):
        add(g, "missing", eid, "listed in the integrity record, not in the table")


def _compare_roots(g: Group, copies: dict, group_recs: list, add) -> None:
    """An hour too large for a leaf list: count and root against the latest record of each
    writer (one writer: exact; several: the count must cover the largest)."""
    latest: dict[str, dict[str, Any]] = {}
    for rec in group_recs:
        cur = latest.get(rec["writer"])
        if cur is None or (int(rec["sequence"]), int(rec["row_count"])) > (
            int(cur["sequence"]),
            int(cur["row_count"]),
        ):
            latest[rec["writer"]] = rec
    leaves = first_copies((eid, c[2], c[0], c[1]) for eid, cps in copies.items() for c in cps)
    n, root = len(leaves), merkle_root([h for _, h in leaves])
    if len(latest) == 1:
        rec = next(iter(latest.values()))
        want = int(rec["row_count"])
        if n == want and root == rec["merkle_root"]:
            return
        kind = "missing" if n < want else "added" if n > want else "altered"
        add(
            g,
            kind,
            "",
            f"{n} rows with root {root[:16]}, integrity record: {want} rows, root {rec['merkle_root'][:16]} (no leaf list: hour over the cap)",
        )
        return
    most = max(int(r["row_count"]) for r in latest.values())
    if n < most:
        add(g, "missing", "", f"{n} rows, the largest of {len(latest)} integrity records covers {most}")


# -- the command -------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise VerifyUsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Recompute row hashes and Merkle roots from the audit table and compare them with "
        "the integrity records. Exit 0 = no difference, 1 = rows altered, missing or added (each "
        "printed with its identity), 2 = usage error or tables that cannot be read.",
    )
    p.add_argument("--sink", required=True, choices=["clickhouse", "bigquery"], help="the engine to verify")
    p.add_argument("--model", metavar="M", default="", help="only this model (default: every model)")
    p.add_argument(
        "--from",
        dest="from_",
        metavar="T",
        required=True,
        help="start (RFC 3339 or date, UTC); its hour is included",
    )
    p.add_argument(
        "--to", metavar="T", required=True, help="end (RFC 3339 or date); the hour it falls in is included"
    )
    p.add_argument(
        "--clickhouse_dsn",
        default="chdb:///tmp/predaudit-chdb",
        help="http(s)://user:pw@host:port or chdb:///path",
    )
    p.add_argument("--clickhouse_database", default="audit", help="ClickHouse database")
    p.add_argument("--bq_project", default="", help="BigQuery project of the audit dataset")
    p.add_argument("--bq_dataset", default="audit", help="BigQuery dataset")
    p.add_argument("--bq_endpoint", default="", help="BigQuery API endpoint (emulator); empty = Google")
    p.add_argument(
        "--records",
        default="",
        help="compare against the integrity records exported with --integrity_export under this path "
        "(local or gs://) instead of the integrity table",
    )
    return p


def render(findings: Sequence[Finding], header: str, empty: bool = False) -> str:
    """The report: the header, one line per difference, the verdict."""
    out = [header]
    out += [f.line() for f in findings]
    if findings:
        kinds: dict[str, int] = {}
        for f in findings:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        out.append(
            f"{len(findings)} difference(s): " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        )
    elif empty:
        out.append(
            "nothing to verify: no rows and no integrity records in the range (check the range and --model)"
        )
    else:
        out.append("clean: every row matches its integrity record and every record's rows are there")
    return "\n".join(out) + "\n"


def run(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """``predaudit verify``: exit 0 clean, 1 differences, 2 usage error / unreadable tables."""
    out = out or sys.stdout
    try:
        try:
            args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        lo, hi = hour_range(parse_time(args.from_, "--from"), parse_time(args.to, "--to"))
        if lo >= hi:
            raise VerifyUsageError("--from must be before --to")
        if args.sink == "bigquery" and not args.bq_project:
            raise VerifyUsageError("--bq_project is required with --sink bigquery")
        try:
            if args.sink == "clickhouse":
                source: Any = ClickHouseSource(args.clickhouse_dsn, args.clickhouse_database)
            else:
                source = BigQuerySource(args.bq_project, args.bq_dataset, args.bq_endpoint)
            rows = source.rows(lo, hi, args.model)
            if args.records:
                records = [
                    r
                    for r in read_exported(args.records)
                    if lo <= int(r["hour_start"]) < hi and (not args.model or r["model_name"] == args.model)
                ]
            else:
                records = source.records(lo, hi, args.model)
        except VerifyUsageError:
            raise
        except Exception as exc:  # noqa: BLE001 -- any read failure is reported as one line, exit 2
            raise VerifyUsageError(f"cannot read the audit tables: {type(exc).__name__}: {exc}") from None
    except VerifyUsageError as exc:
        line = " ".join(str(exc).split())
        sys.stderr.write(f"{PROG}: error: {line}\n")
        return 2
    where = getattr(source, "where", args.sink)
    span = f"{from_micros(lo).strftime('%Y-%m-%dT%H:00Z')} .. {from_micros(hi).strftime('%Y-%m-%dT%H:00Z')}"
    model = f" model {args.model}" if args.model else ""
    via = f" (records from {args.records})" if args.records else ""
    header = f"verify {where}{model} {span}: {len(rows)} rows, {len(records)} integrity records{via}"
    findings = compare(rows, records)
    out.write(render(findings, header, empty=not rows and not records))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(run())
