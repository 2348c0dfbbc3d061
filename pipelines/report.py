"""``predaudit report``: one self-contained HTML page from the audit tables (ClickHouse / chDB or BigQuery).

Per model: traffic, latency p50/p95/p99, error and data-quality rates, accuracy / MAE from the
label join, each signal's drift statistic (PSI) per monitor window with the threshold it was
judged against, the anomalies on a timeline, dead letters by error code, and reference
vs current histograms of the most drifted signals. The charts are inline SVG drawn here (no
script, no stylesheet or font from the network), so the file opens offline and can be
attached to a ticket.

The period is the last ``--since`` (default 24h) of event time ending at ``--until``, or at
the newest prediction when ``--until`` is not given (a replay of old events still has a
report); it starts at the oldest prediction in it (to the minute) when that is later, so a
short run's charts are not squeezed into the corner of a day. Drift rows are read as the
fullest pane per ``metric_id`` (``drift_metrics`` is append-only: a window re-fired by late
rows has a row per pane). Dead letters carry no event time (most cannot be decoded), so they
are counted over the ingest times of the period's predictions; those without a model are
shown as unattributed.

A ``chdb://`` directory is locked by the process that opened it: run the report after the
pipeline has exited, or inside its process.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import html
import json
import math
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from schemas.cliargs import StrictParser

PROG = "predaudit report"
DEFAULT_SPECS = pathlib.Path(__file__).resolve().parent.parent / "schemas" / "models"
TOP_DRIFTED = 3  # histograms for this many signals (highest PSI in the period)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
IS_ERROR = "status = 'error'"
SEVERITY_COLORS = {"warning": "#f0a000", "critical": "#d62728", "resolved": "#2ca02c"}


class ReportError(Exception):
    """A usage or read problem: printed as one line, exit 2."""


# ---------------------------------------------------------------- periods and buckets


def parse_since(text: str) -> dt.timedelta:
    """``90m``, ``24h``, ``7d``, ``3600s`` (a bare number is hours).

    >>> parse_since("24h"), parse_since("90m"), parse_since("2")
    (datetime.timedelta(days=1), datetime.timedelta(seconds=5400), datetime.timedelta(seconds=7200))
    >>> parse_since("soon")
    Traceback (most recent call last):
    ...
    pipelines.report.ReportError: --since 'soon': use a duration such as 90m, 24h or 7d
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text) * 3600
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ReportError(f"--since {text!r}: use a duration such as 90m, 24h or 7d")
    return dt.timedelta(seconds=seconds)


def parse_until(text: str) -> dt.datetime:
    """An RFC 3339 time or a date (UTC).

    >>> parse_until("2026-03-01").isoformat(), parse_until("2026-03-01T02:00:00+01:00").isoformat()
    ('2026-03-01T00:00:00+00:00', '2026-03-01T01:00:00+00:00')
    """
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"--until {text!r}: use an RFC 3339 time or a date (UTC)") from None
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)


_BUCKETS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


def bucket_seconds(span: dt.timedelta, max_buckets: int = 60) -> int:
    """The smallest round bucket that cuts ``span`` into at most ``max_buckets`` points.

    >>> bucket_seconds(dt.timedelta(hours=24)), bucket_seconds(dt.timedelta(minutes=10))
    (1800, 60)
    """
    return next((b for b in _BUCKETS if span.total_seconds() / b <= max_buckets), _BUCKETS[-1])


# ---------------------------------------------------------------- SVG charts


@dataclasses.dataclass
class Series:
    name: str
    points: list[tuple[float, float]]  # (unix seconds, value)
    color: str
    dashed: bool = False
    hollow: frozenset[int] = frozenset()  # indexes of points drawn hollow (e.g. insufficient windows)


@dataclasses.dataclass(frozen=True)
class HLine:
    y: float
    label: str
    color: str


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi].

    >>> nice_ticks(0, 1)
    [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    >>> nice_ticks(0, 0.29)
    [0.0, 0.1, 0.2, 0.3]
    >>> nice_ticks(3, 3)
    [2.4, 2.6, 2.8, 3.0, 3.2, 3.4, 3.6]
    """
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = [first]
    while ticks[-1] < hi - step * 1e-9:  # the last tick is at or above hi
        ticks.append(first + step * len(ticks))
    return [float(round(t, 12)) if abs(t) > 1e-12 else 0.0 for t in ticks]


def fmt_num(v: float) -> str:
    """
    >>> fmt_num(0.123456), fmt_num(1234.5), fmt_num(2.0), fmt_num(1.5e-5)
    ('0.1235', '1234', '2', '1.5e-05')
    """
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"


def fmt_time(t: float, span: float) -> str:
    """Axis label for unix time ``t``: the date when the chart spans days, else HH:MM.

    >>> fmt_time(1772323200, 3600), fmt_time(1772323200, 5 * 86400)
    ('00:00', '03-01 00h')
    """
    d = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return d.strftime("%m-%d %Hh") if span > 2 * 86400 else d.strftime("%H:%M")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_W, _H, _L, _R, _T, _B = 640, 220, 56, 120, 24, 28  # size and margins (legend on the right)


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    x_range: tuple[float, float],
    hlines: Sequence[HLine] = (),
    y_min: float | None = None,
    y_label: str = "",
) -> str:
    """An SVG line chart: one polyline and a circle per point (with a tooltip) per series.

    >>> svg = line_chart("c", "t", [Series("a", [(0, 1.0), (60, 2.0)], "#000")], (0, 60), [HLine(1.5, "warn", "#f00")])
    >>> svg.count('class="pt"'), 'data-points="2"' in svg, 'class="threshold"' in svg
    (2, True, True)
    """
    ys = [y for s in series for _, y in s.points] + [h.y for h in hlines]
    lo = min(ys + ([y_min] if y_min is not None else [])) if ys else 0.0
    hi = max(ys) if ys else 1.0
    ticks = nice_ticks(lo, hi)
    y0, y1 = ticks[0], ticks[-1]
    x0, x1 = x_range
    if x1 <= x0:
        x1 = x0 + 1
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(x: float) -> float:
        return _L + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return _T + ph - (y - y0) / ((y1 - y0) or 1) * ph

    n_points = sum(len(s.points) for s in series)
    parts = [
        f'<svg class="chart" id="{_e(chart_id)}" data-points="{n_points}" viewBox="0 0 {_W} {_H}" '
        f'width="{_W}" height="{_H}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{_e(title)}</title>",
        f'<text class="ttl" x="{_L}" y="14">{_e(title)}</text>',
    ]
    for t in ticks:  # y grid
        parts.append(
            f'<line class="grid" x1="{_L}" x2="{_L + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
            f'<text class="ax" x="{_L - 4}" y="{py(t) + 3:.1f}" text-anchor="end">{_e(fmt_num(t))}</text>'
        )
    for i in range(5):  # x ticks
        t = x0 + (x1 - x0) * i / 4
        parts.append(
            f'<text class="ax" x="{px(t):.1f}" y="{_H - 8}" text-anchor="middle">{_e(fmt_time(t, x1 - x0))}</text>'
        )
    if y_label:
        parts.append(f'<text class="ax" x="{_L}" y="{_T - 2}">{_e(y_label)}</text>')
    for h in hlines:
        parts.append(
            f'<line class="threshold" stroke="{h.color}" x1="{_L}" x2="{_L + pw}" y1="{py(h.y):.1f}" '
            f'y2="{py(h.y):.1f}"><title>{_e(h.label)} {_e(fmt_num(h.y))}</title></line>'
            f'<text class="ax" fill="{h.color}" x="{_L + pw + 4}" y="{py(h.y) + 3:.1f}">{_e(h.label)}</text>'
        )
    legend_y = _T + ph - 12 * len(series)
    for k, s in enumerate(series):
        pts = sorted(s.points)
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        parts.append(
            f'<g class="series" data-series="{_e(s.name)}">'
            f'<polyline fill="none" stroke="{s.color}" stroke-width="1.5"{dash} points="{path}"/>'
        )
        for i, (x, y) in enumerate(pts):
            fill = "#fff" if i in s.hollow else s.color
            tip = f"{s.name} {fmt_time(x, 0)} UTC: {fmt_num(y)}"
            parts.append(
                f'<circle class="pt" cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{fill}" '
                f'stroke="{s.color}"><title>{_e(tip)}</title></circle>'
            )
        parts.append("</g>")
        ly = legend_y + 12 * k
        parts.append(
            f'<rect x="{_L + pw + 4}" y="{ly - 7}" width="10" height="3" fill="{s.color}"/>'
            f'<text class="ax" x="{_L + pw + 18}" y="{ly - 3}">{_e(s.name[:18])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def timeline_chart(
    chart_id: str, title: str, events: Sequence[Mapping[str, Any]], x_range: tuple[float, float]
) -> str:
    """Anomalies on a time axis, one row per (signal, detector), coloured by severity.

    >>> svg = timeline_chart("a", "t", [{"t": 30, "row": "amount psi", "severity": "critical", "tip": "x"}], (0, 60))
    >>> svg.count('class="anomaly"'), SEVERITY_COLORS["critical"] in svg
    (1, True)
    """
    rows = sorted({e["row"] for e in events})
    height = _T + _B + 18 * max(len(rows), 1)
    x0, x1 = x_range
    if x1 <= x0:
        x1 = x0 + 1
    pw = _W - _L - _R - 60

    def px(x: float) -> float:
        return _L + 60 + (x - x0) / (x1 - x0) * pw

    parts = [
        f'<svg class="chart" id="{_e(chart_id)}" data-points="{len(events)}" viewBox="0 0 {_W} {height}" '
        f'width="{_W}" height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{_e(title)}</title>",
        f'<text class="ttl" x="{_L}" y="14">{_e(title)}</text>',
    ]
    for i, row in enumerate(rows):
        y = _T + 18 * i + 9
        parts.append(
            f'<line class="grid" x1="{px(x0):.1f}" x2="{px(x1):.1f}" y1="{y}" y2="{y}"/>'
            f'<text class="ax" x="{px(x0) - 4:.1f}" y="{y + 3}" text-anchor="end">{_e(row[:28])}</text>'
        )
    for e in events:  # an anomaly's time is its window's end: it may fall just after the period
        y = _T + 18 * rows.index(e["row"]) + 9
        x = min(max(e["t"], x0), x1)
        color = SEVERITY_COLORS.get(e["severity"], "#000")
        parts.append(
            f'<circle class="anomaly" data-severity="{_e(e["severity"])}" cx="{px(x):.1f}" cy="{y}" r="5" '
            f'fill="{color}"><title>{_e(e["tip"])}</title></circle>'
        )
    if not events:
        parts.append(f'<text class="ax" x="{_L + 60}" y="{_T + 12}">no anomalies in the period</text>')
    base = height - 8
    for i in range(5):
        t = x0 + (x1 - x0) * i / 4
        parts.append(
            f'<text class="ax" x="{px(t):.1f}" y="{base}" text-anchor="middle">{_e(fmt_time(t, x1 - x0))}</text>'
        )
    for k, (sev, color) in enumerate(SEVERITY_COLORS.items()):  # legend on the title line
        lx = _W - _R - 150 + 64 * k
        parts.append(
            f'<circle cx="{lx}" cy="10" r="4" fill="{color}"/>'
            f'<text class="ax" x="{lx + 8}" y="13">{sev}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    groups: Sequence[tuple[str, Sequence[float], str]],
    y_label: str = "",
) -> str:
    """Grouped vertical bars: one bar per (label, group); e.g. reference vs current share per bin.

    >>> svg = bar_chart("h", "t", ["a", "b"], [("reference", [0.5, 0.5], "#999"), ("current", [0.2, 0.8], "#00f")])
    >>> svg.count('class="bar"'), 'data-points="4"' in svg
    (4, True)
    """
    top = max([v for _, vals, _ in groups for v in vals] + [0.0])
    ticks = nice_ticks(0.0, top if top > 0 else 1.0)
    y1 = ticks[-1]
    height = _H + 30  # room for the slanted bin labels
    pw, ph = _W - _L - _R, height - _T - 64
    n = max(len(labels), 1)
    slot = pw / n
    bw = max(slot * 0.8 / max(len(groups), 1), 1.0)

    def py(y: float) -> float:
        return _T + ph - y / (y1 or 1) * ph

    count = sum(len(vals) for _, vals, _ in groups)
    parts = [
        f'<svg class="chart" id="{_e(chart_id)}" data-points="{count}" viewBox="0 0 {_W} {height}" '
        f'width="{_W}" height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{_e(title)}</title>",
        f'<text class="ttl" x="{_L}" y="14">{_e(title)}</text>',
    ]
    for t in ticks:
        parts.append(
            f'<line class="grid" x1="{_L}" x2="{_L + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
            f'<text class="ax" x="{_L - 4}" y="{py(t) + 3:.1f}" text-anchor="end">{_e(fmt_num(t))}</text>'
        )
    if y_label:
        parts.append(f'<text class="ax" x="{_L}" y="{_T - 2}">{_e(y_label)}</text>')
    for i, label in enumerate(labels):
        cx = _L + slot * i + slot * 0.1
        for g, (name, vals, color) in enumerate(groups):
            v = vals[i] if i < len(vals) else 0.0
            x = cx + bw * g
            parts.append(
                f'<rect class="bar" data-group="{_e(name)}" x="{x:.1f}" y="{py(v):.1f}" width="{bw:.1f}" '
                f'height="{max(py(0) - py(v), 0):.1f}" fill="{color}"><title>{_e(name)} {_e(label)}: '
                f"{_e(fmt_num(v))}</title></rect>"
            )
        if n <= 24:
            parts.append(
                f'<text class="ax" x="{_L + slot * (i + 0.5):.1f}" y="{_T + ph + 10}" text-anchor="end" '
                f'transform="rotate(-25 {_L + slot * (i + 0.5):.1f} {_T + ph + 10})">{_e(label[:14])}</text>'
            )
    for k, (name, _, color) in enumerate(groups):
        ly = _T + 12 * k
        parts.append(
            f'<rect x="{_L + pw + 4}" y="{ly}" width="10" height="8" fill="{color}"/>'
            f'<text class="ax" x="{_L + pw + 18}" y="{ly + 8}">{_e(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- reading the tables


def _q(text: str) -> str:
    """A string literal (the same escaping in ClickHouse and GoogleSQL).

    >>> _q("it's")
    "'it\\\\'s'"
    """
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _json(v: Any) -> dict:
    if isinstance(v, dict):
        return v
    try:
        got = json.loads(v) if v else {}
    except (TypeError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def _json_path(name: str) -> str:
    """A JSONPath literal for a top-level feature.

    >>> print(_json_path("amount"), _json_path("a.b"))
    '$.amount' '$."a.b"'
    """
    return _q(f"$.{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f'$."{name}"')


_COLUMNS = {
    "prediction.score": "prediction_score",
    "prediction.value": "prediction_value",
    "prediction.label": "prediction_label",
    "latency_ms": "latency_ms",
}


class ClickHouseSQL:
    """The SQL pieces of the report in ClickHouse (26.x, also chDB)."""

    name = "clickhouse"

    def ts(self, t: dt.datetime) -> str:
        return f"toDateTime64({_q(t.strftime('%Y-%m-%d %H:%M:%S.%f'))}, 6, 'UTC')"

    def bucket(self, col: str, seconds: int) -> str:
        return f"toUnixTimestamp(toStartOfInterval({col}, INTERVAL {seconds} SECOND))"

    def count(self) -> str:
        return "count()"

    def count_if(self, cond: str) -> str:
        return f"countIf({cond})"

    def avg_if(self, expr: str, cond: str) -> str:
        return f"avgIf({expr}, {cond})"

    def ratio(self, a: str, b: str) -> str:
        return f"{a} / nullIf({b}, 0)"

    def quantile(self, q: float, col: str) -> str:
        return f"quantile({q})({col})"

    def has_issues(self) -> str:
        return "notEmpty(quality_issues)"

    def seconds(self, col: str) -> str:
        return f"toUnixTimestamp64Micro({col}) / 1e6"

    def latest(self, col: str, by: str) -> str:
        return f"argMax({col}, {by})"

    def first_per(self, table: str, where: str, key: str, order: str) -> str:
        return f"(SELECT * FROM {table} WHERE {where} ORDER BY {order} LIMIT 1 BY {key})"

    def signal(self, signal: str, kind: str) -> str:
        """A monitor signal on a ``predictions`` row.

        >>> ClickHouseSQL().signal("amount", "numeric"), ClickHouseSQL().signal("prediction.score", "numeric")
        ("JSONExtract(features, 'amount', 'Nullable(Float64)')", 'prediction_score')
        """
        if signal in _COLUMNS:
            return _COLUMNS[signal] if kind == "numeric" else f"toString({_COLUMNS[signal]})"
        if kind == "numeric":
            return f"JSONExtract(features, {_q(signal)}, 'Nullable(Float64)')"
        return f"JSONExtractRaw(features, {_q(signal)})"

    def category(self, value: Any, signal: str) -> str | None:
        """A categorical value as the reference names it (``str`` of the JSON value).

        >>> c = ClickHouseSQL(); c.category('"DE"', "country"), c.category("true", "x"), c.category("", "x")
        ('DE', 'True', None)
        """
        if signal in _COLUMNS:
            return value if value not in (None, "") else None
        if value is None or value == "":
            return None
        try:
            v = json.loads(value)
        except ValueError:
            return str(value)
        return None if v is None else (v if isinstance(v, str) else str(v))


class BigQuerySQL(ClickHouseSQL):
    """The same pieces in GoogleSQL (``features`` a JSON column, as ``predaudit provision`` makes it)."""

    name = "bigquery"

    def ts(self, t: dt.datetime) -> str:
        return f"TIMESTAMP({_q(t.strftime('%Y-%m-%d %H:%M:%S.%f+00'))})"

    def bucket(self, col: str, seconds: int) -> str:
        return f"DIV(UNIX_SECONDS({col}), {seconds}) * {seconds}"

    def count(self) -> str:
        return "COUNT(*)"

    def count_if(self, cond: str) -> str:
        return f"COUNTIF({cond})"

    def avg_if(self, expr: str, cond: str) -> str:
        return f"AVG(IF({cond}, {expr}, NULL))"

    def ratio(self, a: str, b: str) -> str:
        return f"SAFE_DIVIDE({a}, {b})"

    def quantile(self, q: float, col: str) -> str:
        return f"APPROX_QUANTILES({col}, 100)[OFFSET({round(q * 100)})]"

    def has_issues(self) -> str:
        return "ARRAY_LENGTH(quality_issues) > 0"

    def seconds(self, col: str) -> str:
        return f"UNIX_MICROS({col}) / 1e6"

    def latest(self, col: str, by: str) -> str:
        return f"MAX_BY({col}, {by})"

    def first_per(self, table: str, where: str, key: str, order: str) -> str:
        return (
            f"(SELECT * EXCEPT(_rn) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY {order}) AS _rn "
            f"FROM {table} WHERE {where}) WHERE _rn = 1)"
        )

    def signal(self, signal: str, kind: str) -> str:
        """
        >>> BigQuerySQL().signal("amount", "numeric")
        "SAFE_CAST(JSON_VALUE(features, '$.amount') AS FLOAT64)"
        """
        if signal in _COLUMNS:
            return _COLUMNS[signal]
        if kind == "numeric":
            return f"SAFE_CAST(JSON_VALUE(features, {_json_path(signal)}) AS FLOAT64)"
        return f"JSON_VALUE(features, {_json_path(signal)})"

    def category(self, value: Any, signal: str) -> str | None:
        """``JSON_VALUE`` gives scalars as text; the reference names booleans as Python does.

        >>> BigQuerySQL().category("true", "x"), BigQuerySQL().category("DE", "x")
        ('True', 'DE')
        """
        if value is None:
            return None
        return {"true": "True", "false": "False"}.get(value, value) if signal not in _COLUMNS else value


class ClickHouseSource:
    """The audit tables of one ClickHouse database (``chdb://`` or ``http(s)://``)."""

    sql = ClickHouseSQL()

    def __init__(self, dsn: str, database: str) -> None:
        from transforms.sinks.clickhouse import clickhouse_client

        self.database = database
        self.where = f"clickhouse {database}"
        self.client = clickhouse_client(dsn)

    def table(self, name: str) -> str:
        return f"`{self.database}`.`{name}`"

    def rows(self, sql: str) -> list[tuple]:
        return [tuple(r) for r in self.client.query(_tables(sql, self.table)).result_rows]

    def columns(self, table: str) -> set[str]:
        got = self.rows(
            f"SELECT name FROM system.columns WHERE database = {_q(self.database)} AND table = {_q(table)}"
        )
        return {r[0] for r in got}


class BigQuerySource:
    """The audit dataset in BigQuery (``--bq_endpoint``: an emulator, anonymous credentials)."""

    sql = BigQuerySQL()

    def __init__(self, project: str, dataset: str, endpoint: str = "") -> None:
        from transforms.sinks.bigquery import bigquery_client

        self.project, self.dataset = project, dataset
        self.where = f"bigquery {project}.{dataset}"
        self.client = bigquery_client(project, endpoint)

    def table(self, name: str) -> str:
        return f"`{self.project}.{self.dataset}.{name}`"

    def rows(self, sql: str) -> list[tuple]:
        return [tuple(r.values()) for r in self.client.query(_tables(sql, self.table)).result()]

    def columns(self, table: str) -> set[str]:
        return {f.name for f in self.client.get_table(f"{self.project}.{self.dataset}.{table}").schema}


def _tables(sql: str, table: Any) -> str:
    """``{db}.name`` placeholders as the engine's table references.

    >>> _tables("SELECT 1 FROM {db}.predictions", lambda n: f"`x`.`{n}`")
    'SELECT 1 FROM `x`.`predictions`'
    """
    return re.sub(r"\{db\}\.(\w+)", lambda m: table(m.group(1)), sql)


@dataclasses.dataclass
class ModelReport:
    """Everything one model's section shows (pure data; ``render_model`` draws it)."""

    model: str
    versions: list[str]
    x_range: tuple[float, float]
    bucket_s: int
    traffic: dict[str, list[tuple[float, float]]]
    latency: dict[str, list[tuple[float, float]]]
    rates: dict[str, list[tuple[float, float]]]
    accuracy: dict[str, list[tuple[float, float]]]
    drift: dict[str, list[tuple[float, float, str]]]  # signal -> (window start, psi, status)
    #: signal -> (window start, the threshold the monitor compared PSI with): from drift_metrics'
    #: ``threshold`` column when the table has one, else from the PSI anomalies (calibrated
    #: decisions have a threshold per window, not the spec's fixed lines)
    drift_thresholds: dict[str, list[tuple[float, float]]]
    psi_fixed: bool
    anomalies: list[dict[str, Any]]
    dead_letters: dict[str, int]
    unattributed_dead_letters: int
    histograms: list[dict[str, Any]]
    totals: dict[str, float]
    thresholds: dict[str, float]


def _spec_thresholds(specs: Mapping[str, Any], model: str) -> dict[str, float]:
    """psi warning/critical, accuracy floor, latency SLO and rate warnings from the model's spec
    (the monitors' defaults for a model without one).

    >>> _spec_thresholds({}, "m")
    {'psi_warning': 0.1, 'psi_critical': 0.25, 'quality_warning': 0.05, 'error_warning': 0.05}
    """
    from schemas.specs import MonitorSettings

    spec = specs.get(model)
    m = spec.monitors if spec is not None else MonitorSettings()
    out = {
        "psi_warning": m.psi.warning,
        "psi_critical": m.psi.critical,
        "quality_warning": m.quality_issue_rate.warning,
        "error_warning": m.error_rate.warning,
    }
    if m.latency_slo_ms:
        out["latency_slo_ms"] = float(m.latency_slo_ms)
    if m.accuracy_min:
        out["accuracy_min"] = float(m.accuracy_min)
    return out


def _psi_mode(specs: Mapping[str, Any], model: str) -> str:
    """``fixed`` (the spec's warning / critical lines) or ``calibrated`` (a threshold per window).

    >>> _psi_mode({}, "m")
    'calibrated'
    """
    from schemas.specs import MonitorSettings

    spec = specs.get(model)
    m = spec.monitors if spec is not None else MonitorSettings()
    return getattr(m.psi, "mode", "calibrated")


def _references(references_dir: str, model: str) -> dict[str, Any]:
    """The model's reference signals from ``<dir>/<model>.json`` ({} without one)."""
    if not references_dir:
        return {}
    path = pathlib.Path(references_dir) / f"{model}.json"
    if not path.is_file():
        return {}
    from transforms.monitors.reference import load_reference

    try:
        return load_reference(json.loads(path.read_bytes()))
    except (ValueError, KeyError) as exc:
        raise ReportError(f"{path}: not a reference file ({exc})") from None


def collect(
    src: Any,
    model: str,
    lo: dt.datetime,
    hi: dt.datetime,
    specs: Mapping[str, Any],
    references_dir: str = "",
) -> ModelReport:
    """Query one model's panels for event times in [lo, hi) (``src``: a ClickHouse or BigQuery source)."""
    d = src.sql
    b = bucket_seconds(hi - lo)
    m = _q(model)
    in_period = f"model_name = {m} AND event_time >= {d.ts(lo)} AND event_time < {d.ts(hi)}"
    bucket = d.bucket("event_time", b)
    traffic: dict[str, list] = {}
    latency: dict[str, list] = {"p50": [], "p95": [], "p99": []}
    rates: dict[str, list] = {"error rate": [], "data-quality issue rate": []}
    versions: set[str] = set()
    by_bucket: dict[float, list[float]] = {}
    for t, version, n, errors, quality in src.rows(
        f"SELECT {bucket} AS t, model_version, {d.count()}, {d.count_if(IS_ERROR)}, "
        f"{d.count_if(d.has_issues())} FROM {{db}}.predictions_dedup WHERE {in_period} "
        "GROUP BY t, model_version ORDER BY t"
    ):
        versions.add(version)
        traffic.setdefault(f"v{version}", []).append((float(t), float(n)))
        acc = by_bucket.setdefault(float(t), [0, 0, 0])
        acc[0] += n
        acc[1] += errors
        acc[2] += quality
    for t, (n, errors, quality) in sorted(by_bucket.items()):
        rates["error rate"].append((t, errors / n))
        rates["data-quality issue rate"].append((t, quality / n))
    qs = ", ".join(d.quantile(q, "latency_ms") for q in (0.5, 0.95, 0.99))
    for t, *values in src.rows(
        f"SELECT {bucket} AS t, {qs} FROM {{db}}.predictions_dedup "
        f"WHERE {in_period} AND latency_ms IS NOT NULL GROUP BY t ORDER BY t"
    ):
        for name, v in zip(("p50", "p95", "p99"), values, strict=True):
            if v is not None and math.isfinite(v):
                latency[name].append((float(t), float(v)))
    accuracy: dict[str, list] = {"accuracy": [], "MAE": []}
    correct = d.count_if("l.label = p.prediction_label")
    labelled = d.count_if("p.prediction_label IS NOT NULL")
    mae = d.avg_if(
        "ABS(l.label_numeric - p.prediction_value)",
        "l.label_numeric IS NOT NULL AND p.prediction_value IS NOT NULL",
    )
    for t, acc, err in src.rows(
        f"SELECT {d.bucket('p.event_time', b)} AS t, {d.ratio(correct, labelled)}, {mae} "
        f"FROM (SELECT * FROM {{db}}.predictions_dedup WHERE {in_period}) AS p INNER JOIN ("
        f"SELECT model_name AS label_model, event_id, {d.latest('label', 'label_time')} AS label, "
        f"{d.latest('label_numeric', 'label_time')} AS label_numeric FROM {{db}}.labels_dedup "
        f"WHERE model_name = {m} OR model_name IS NULL GROUP BY label_model, event_id) AS l "
        "ON l.event_id = p.event_id WHERE l.label_model IS NULL OR l.label_model = p.model_name "
        "GROUP BY t ORDER BY t"
    ):
        if acc is not None and math.isfinite(acc):
            accuracy["accuracy"].append((float(t), float(acc)))
        if err is not None and math.isfinite(err):
            accuracy["MAE"].append((float(t), float(err)))
    drift: dict[str, list] = {}
    windows: dict[tuple[str, float], tuple[float, float]] = {}
    panes = d.first_per(
        "{db}.drift_metrics",
        f"model_name = {m} AND metric = 'psi' AND window_start >= {d.ts(lo)} AND window_start < {d.ts(hi)}",
        "metric_id",
        "sample_size DESC",
    )
    drift_thresholds: dict[str, list[tuple[float, float]]] = {}
    threshold = "threshold" if "threshold" in src.columns("drift_metrics") else "NULL"
    for signal, start, end, value, status, limit in src.rows(
        f"SELECT signal, {d.seconds('window_start')} AS ws, {d.seconds('window_end')}, value, status, "
        f"{threshold} FROM {panes} AS x ORDER BY signal, ws"
    ):
        if value is None or not math.isfinite(value):
            continue
        drift.setdefault(signal, []).append((float(start), float(value), status))
        windows[(signal, float(start))] = (float(start), float(end))
        if limit is not None and math.isfinite(limit):
            drift_thresholds.setdefault(signal, []).append((float(start), float(limit)))
    anomalies = []
    events = d.first_per(
        "{db}.anomalies",
        f"model_name = {m} AND window_start >= {d.ts(lo)} AND window_start < {d.ts(hi)}",
        "anomaly_id",
        "time",
    )
    for t, version, signal, detector, sev, stat, thr, ws, we, ref, cur in src.rows(
        f"SELECT {d.seconds('time')} AS anomaly_at, model_version, signal, detector, severity, statistic, threshold, "
        f"{d.seconds('window_start')}, {d.seconds('window_end')}, `reference`, `current` FROM {events} AS x ORDER BY anomaly_at"
    ):
        anomalies.append(
            {
                "t": float(t),
                "version": version,
                "row": f"{signal} {detector}",
                "signal": signal,
                "detector": detector,
                "severity": sev,
                "statistic": stat,
                "threshold": thr,
                "window": (float(ws), float(we)),
                "reference": _json(ref),
                "current": _json(cur),
                "tip": f"{fmt_time(float(t), 0)} UTC v{version} {signal} {detector} {sev}: "
                f"{fmt_num(stat)} (threshold {fmt_num(thr)})",
            }
        )
    for a in anomalies:  # no threshold column: the thresholds the alerts were raised against
        if a["detector"] == "psi" and a["severity"] != "resolved" and a["signal"] in drift:
            if threshold == "NULL" or a["signal"] not in drift_thresholds:
                drift_thresholds.setdefault(a["signal"], []).append((a["window"][0], float(a["threshold"])))
    ((ingest_lo, ingest_hi, total),) = src.rows(
        f"SELECT MIN(ingest_time), MAX(ingest_time), {d.count()} FROM {{db}}.predictions_dedup WHERE {in_period}"
    )
    dead: dict[str, int] = {}
    unattributed = 0
    if total:
        for code, model_name, n in src.rows(
            f"SELECT error_code, model_name, {d.count()} FROM {{db}}.dead_letters "
            f"WHERE (model_name = {m} OR model_name IS NULL) AND ingest_time >= {d.ts(_aware(ingest_lo))} "
            f"AND ingest_time <= {d.ts(_aware(ingest_hi))} GROUP BY error_code, model_name ORDER BY error_code"
        ):
            dead[code] = dead.get(code, 0) + int(n)
            if model_name is None:
                unattributed += int(n)
    n_dead = sum(dead.values())
    all_errors = sum(r[1] for r in by_bucket.values())
    all_quality = sum(r[2] for r in by_bucket.values())
    totals = {
        "predictions": float(total),
        "error_rate": all_errors / total if total else 0.0,
        "quality_rate": all_quality / total if total else 0.0,
        "dead_letters": float(n_dead),
        "dead_letter_rate": n_dead / (total + n_dead) if total + n_dead else 0.0,
        "anomalies": float(sum(1 for a in anomalies if a["severity"] != "resolved")),
    }
    refs = _references(references_dir, model)
    histograms = _histograms(src, m, drift, windows, anomalies, refs)
    return ModelReport(
        model=model,
        versions=sorted(versions),
        x_range=(lo.timestamp(), hi.timestamp()),
        bucket_s=b,
        traffic=traffic,
        latency=latency,
        rates=rates,
        accuracy=accuracy,
        drift=drift,
        drift_thresholds=drift_thresholds,
        psi_fixed=_psi_mode(specs, model) == "fixed",
        anomalies=anomalies,
        dead_letters=dead,
        unattributed_dead_letters=unattributed,
        histograms=histograms,
        totals=totals,
        thresholds=_spec_thresholds(specs, model),
    )


def _aware(v: Any) -> dt.datetime:
    return v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc)


def _histograms(
    src: Any,
    m: str,
    drift: Mapping[str, list[tuple[float, float, str]]],
    windows: Mapping[tuple[str, float], tuple[float, float]],
    anomalies: Sequence[Mapping[str, Any]],
    refs: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Reference vs current shares for the most drifted signals, in their most drifted window.

    Bins come from the reference file when given (current shares are then counted from the
    audit rows of that window), else from the PSI anomaly of that window (its payload holds
    both): a signal with neither is listed without a chart.
    """
    peak = {s: max(pts, key=lambda p: p[1]) for s, pts in drift.items() if pts}
    out = []
    for signal in sorted(peak, key=lambda s: -peak[s][1])[:TOP_DRIFTED]:
        start, value, _ = peak[signal]
        w0, w1 = windows[(signal, start)]
        entry: dict[str, Any] = {"signal": signal, "psi": value, "window": (w0, w1)}
        ref = refs.get(signal)
        if ref is not None:
            entry.update(_current_from_rows(src, m, signal, ref, w0, w1))
        else:
            match = [
                a
                for a in anomalies
                if a["signal"] == signal and a["detector"] == "psi" and abs(a["window"][0] - w0) < 1e-3
            ]
            if match and match[-1]["reference"].get("expected") and match[-1]["current"].get("proportions"):
                expected = [float(x) for x in match[-1]["reference"]["expected"]]
                current = [float(x) for x in match[-1]["current"]["proportions"]]
                entry.update(
                    labels=[f"bin {i + 1}" for i in range(len(expected))], reference=expected, current=current
                )
        out.append(entry)
    return out


def _current_from_rows(src: Any, m: str, signal: str, ref: Any, w0: float, w1: float) -> dict[str, Any]:
    """Bin labels, reference shares and the window's current shares for one signal."""
    d = src.sql
    lo, hi = dt.datetime.fromtimestamp(w0, dt.timezone.utc), dt.datetime.fromtimestamp(w1, dt.timezone.utc)
    where = f"model_name = {m} AND event_time >= {d.ts(lo)} AND event_time < {d.ts(hi)}"
    if ref.kind == "numeric":
        edges = list(ref.edges)
        counts = [0] * (len(edges) + 1)
        # a value equal to an edge falls in the lower bin, as the monitors count it
        case = " ".join(f"WHEN v <= {float(e)!r} THEN {k}" for k, e in enumerate(edges))
        for idx, n in src.rows(
            f"SELECT CASE {case} ELSE {len(edges)} END AS b, {d.count()} FROM (SELECT "
            f"{d.signal(signal, 'numeric')} AS v FROM {{db}}.predictions_dedup WHERE {where}) AS x "
            "WHERE v IS NOT NULL GROUP BY b"
        ):
            counts[int(idx)] += int(n)
        bounds = [-math.inf, *edges, math.inf]
        labels = [
            f"<={fmt_num(bounds[i + 1])}" if i < len(edges) else f">{fmt_num(bounds[i])}"
            for i in range(len(counts))
        ]
    else:
        cats = list(ref.categories)
        index = {c: i for i, c in enumerate(cats)}
        counts = [0] * (len(cats) + 1)
        for raw, n in src.rows(
            f"SELECT {d.signal(signal, 'categorical')} AS v, {d.count()} FROM {{db}}.predictions_dedup "
            f"WHERE {where} GROUP BY v"
        ):
            cat = d.category(raw, signal)
            if cat is None:
                continue
            counts[index.get(cat, len(cats))] += int(n)
        labels = [*cats, "OTHER"]
    total = sum(counts)
    return {
        "labels": labels,
        "reference": [float(x) for x in ref.expected],
        "current": [c / total if total else 0.0 for c in counts],
        "current_n": total,
    }


# ---------------------------------------------------------------- the page


_CSS = """
body{font:14px system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:16px 0 4px} .muted{color:#666} .grid2{display:flex;flex-wrap:wrap;gap:12px}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:6px 10px;min-width:110px}
.card b{display:block;font-size:18px} .bad{color:#d62728}
svg.chart{border:1px solid #eee;background:#fff} svg .grid{stroke:#eee} svg .ax{font-size:10px;fill:#555}
svg .ttl{font-size:12px;font-weight:600} svg .threshold{stroke-dasharray:6 3;stroke-width:1.2}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
"""


def _card(label: str, value: str, bad: bool = False) -> str:
    return f'<div class="card"><span class="muted">{_e(label)}</span><b class="{"bad" if bad else ""}">{_e(value)}</b></div>'


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def render_model(r: ModelReport, index: int) -> str:
    """One model's section: cards and charts."""
    th = r.thresholds
    mid = f"m{index}"
    parts = [
        f'<section class="model" data-model="{_e(r.model)}"><h2>{_e(r.model)} '
        f'<span class="muted">versions {_e(", ".join(r.versions) or "-")}; buckets of {r.bucket_s // 60} min</span></h2>'
    ]
    t = r.totals
    p95 = max((v for _, v in r.latency["p95"]), default=None)
    acc = [v for _, v in r.accuracy["accuracy"]]
    parts.append('<div class="cards">')
    parts.append(_card("predictions", f"{int(t['predictions']):,}"))
    parts.append(_card("anomalies", str(int(t["anomalies"])), t["anomalies"] > 0))
    parts.append(_card("error rate", _pct(t["error_rate"]), t["error_rate"] > th.get("error_warning", 1)))
    parts.append(
        _card(
            "data-quality issues", _pct(t["quality_rate"]), t["quality_rate"] > th.get("quality_warning", 1)
        )
    )
    parts.append(
        _card(
            "dead letters",
            f"{int(t['dead_letters']):,} ({_pct(t['dead_letter_rate'])})",
            t["dead_letters"] > 0,
        )
    )
    if acc:
        parts.append(_card("accuracy (min bucket)", f"{min(acc):.3f}", min(acc) < th.get("accuracy_min", 0)))
    if p95 is not None:
        parts.append(
            _card("latency p95 (max bucket)", f"{fmt_num(p95)} ms", p95 > th.get("latency_slo_ms", math.inf))
        )
    parts.append("</div>")

    charts = []
    xr = r.x_range
    charts.append(
        line_chart(
            f"{mid}-traffic",
            "traffic (predictions per bucket)",
            [Series(k, v, COLORS[i % len(COLORS)]) for i, (k, v) in enumerate(sorted(r.traffic.items()))],
            xr,
            y_min=0,
        )
    )
    slo = [HLine(th["latency_slo_ms"], "SLO", "#d62728")] if "latency_slo_ms" in th else []
    charts.append(
        line_chart(
            f"{mid}-latency",
            "latency p50 / p95 / p99 (ms)",
            [
                Series(k, r.latency[k], c)
                for k, c in zip(("p50", "p95", "p99"), COLORS, strict=False)
                if r.latency[k]
            ],
            xr,
            slo,
            y_min=0,
        )
    )
    if r.accuracy["accuracy"] or r.accuracy["MAE"]:
        floor = (
            [HLine(th["accuracy_min"], "min", "#d62728")]
            if "accuracy_min" in th and r.accuracy["accuracy"]
            else []
        )
        series = [Series(k, v, c) for (k, v), c in zip(r.accuracy.items(), COLORS, strict=False) if v]
        charts.append(
            line_chart(f"{mid}-accuracy", "accuracy / MAE (labelled predictions)", series, xr, floor)
        )
    else:
        charts.append('<p class="muted">No labelled predictions in the period: no accuracy chart.</p>')
    qline = (
        [HLine(th["quality_warning"], "quality warn", SEVERITY_COLORS["warning"])]
        if "quality_warning" in th
        else []
    )
    charts.append(
        line_chart(
            f"{mid}-rates",
            "error and data-quality issue rates",
            [Series(k, v, c) for (k, v), c in zip(r.rates.items(), (COLORS[3], COLORS[1]), strict=True)],
            xr,
            qline,
            y_min=0,
        )
    )
    parts.append('<div class="grid2">' + "".join(charts) + "</div>")

    parts.append(
        "<h3>Drift (PSI per monitor window; hollow = below the minimum sample size; "
        + (
            "the spec's fixed warning and critical lines)"
            if r.psi_fixed
            else "dashed: the window's alert threshold)"
        )
        + "</h3>"
    )
    if r.drift:
        hl = (
            [
                HLine(th["psi_warning"], "warning", SEVERITY_COLORS["warning"]),
                HLine(th["psi_critical"], "critical", SEVERITY_COLORS["critical"]),
            ]
            if r.psi_fixed
            else []
        )
        ranked = sorted(r.drift, key=lambda s: -max(v for _, v, _ in r.drift[s]))
        drift_charts = []
        for i, signal in enumerate(ranked):
            pts = r.drift[signal]
            hollow = frozenset(k for k, p in enumerate(sorted(pts)) if p[2] == "insufficient")
            series = [Series(signal, [(x, v) for x, v, _ in pts], COLORS[i % len(COLORS)], hollow=hollow)]
            if r.drift_thresholds.get(signal):
                limit = Series(
                    "alert threshold", r.drift_thresholds[signal], SEVERITY_COLORS["critical"], dashed=True
                )
                series.append(limit)
            drift_charts.append(line_chart(f"{mid}-drift-{i}", f"{signal}: PSI", series, xr, hl, y_min=0))
        parts.append('<div class="grid2">' + "".join(drift_charts) + "</div>")
    else:
        parts.append(
            '<p class="muted">No drift statistics in the period (monitors off, or no windows closed).</p>'
        )

    parts.append("<h3>Anomalies</h3>")
    parts.append(timeline_chart(f"{mid}-anomalies", "anomalies by signal and detector", r.anomalies, xr))
    if r.anomalies:
        parts.append(
            "<table><tr><th>time (UTC)</th><th>version</th><th>signal</th><th>detector</th>"
            "<th>severity</th><th>statistic</th><th>threshold</th></tr>"
        )
        for a in r.anomalies[-50:]:
            when = dt.datetime.fromtimestamp(a["t"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            parts.append(
                f"<tr><td>{when}</td><td>{_e(a['version'])}</td><td>{_e(a['signal'])}</td><td>{_e(a['detector'])}</td>"
                f'<td style="color:{SEVERITY_COLORS.get(a["severity"], "#000")}">{_e(a["severity"])}</td>'
                f"<td>{_e(fmt_num(a['statistic']))}</td><td>{_e(fmt_num(a['threshold']))}</td></tr>"
            )
        parts.append("</table>")

    parts.append("<h3>Reference vs current (most drifted signals, in their most drifted window)</h3>")
    hist = []
    for i, h in enumerate(r.histograms):
        w0 = dt.datetime.fromtimestamp(h["window"][0], dt.timezone.utc).strftime("%m-%d %H:%M")
        title = f"{h['signal']}: PSI {fmt_num(h['psi'])}, window {w0} UTC"
        if "labels" not in h:
            hist.append(
                f'<p class="muted">{_e(title)}: no bins (pass --references, or no PSI anomaly carries them)</p>'
            )
            continue
        groups = [("reference", h["reference"], "#9aa5b1"), ("current", h["current"], COLORS[0])]
        hist.append(bar_chart(f"{mid}-hist-{i}", title, h["labels"], groups, "share"))
    parts.append(
        '<div class="grid2">' + ("".join(hist) or '<p class="muted">No drift statistics.</p>') + "</div>"
    )

    parts.append("<h3>Dead letters</h3>")
    if r.dead_letters:
        codes = sorted(r.dead_letters, key=lambda c: -r.dead_letters[c])
        parts.append(
            bar_chart(
                f"{mid}-dead",
                f"dead letters by error code ({_pct(t['dead_letter_rate'])} of inputs; "
                f"{r.unattributed_dead_letters} without a model)",
                codes,
                [("dead letters", [float(r.dead_letters[c]) for c in codes], SEVERITY_COLORS["critical"])],
                "count",
            )
        )
    else:
        parts.append('<p class="muted">No dead letters while the period\'s predictions were ingested.</p>')
    parts.append("</section>")
    return "".join(parts)


def render_page(
    reports: Sequence[ModelReport], where: str, lo: dt.datetime, hi: dt.datetime, generated: dt.datetime
) -> str:
    """The whole HTML document (self-contained: inline CSS and SVG only)."""
    span = f"{lo:%Y-%m-%d %H:%M} .. {hi:%Y-%m-%d %H:%M} UTC"
    body = "".join(render_model(r, i) for i, r in enumerate(reports))
    if not reports:
        body = '<p class="muted">No predictions in the period. Check --model, --since and --until.</p>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>predaudit report {_e(span)}</title><style>{_CSS}</style></head><body>"
        f'<h1>predaudit report</h1><p class="muted">{_e(where)}; event time {_e(span)}; '
        f"generated {generated:%Y-%m-%d %H:%M:%S} UTC</p>{body}</body></html>\n"
    )


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = StrictParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write")
    p.add_argument(
        "--model", default="", metavar="M", help="only this model (default: every model in the period)"
    )
    p.add_argument("--since", default="24h", metavar="D", help="length of the period (default 24h)")
    p.add_argument(
        "--until", default="", metavar="T", help="end of the period (default: the newest prediction)"
    )
    p.add_argument(
        "--sink",
        default="clickhouse",
        choices=["clickhouse", "bigquery"],
        help="the engine to read (default clickhouse)",
    )
    p.add_argument(
        "--bq_project", default="", help="BigQuery project of the audit dataset (with --sink bigquery)"
    )
    p.add_argument("--bq_dataset", default="audit", help="BigQuery dataset")
    p.add_argument("--bq_endpoint", default="", help="BigQuery API endpoint (emulator); empty = Google")
    p.add_argument(
        "--clickhouse_dsn",
        default="chdb:///tmp/predaudit-chdb",
        help="http(s)://user:pw@host:port or chdb:///path",
    )
    p.add_argument("--clickhouse_database", default="audit", help="ClickHouse database")
    p.add_argument(
        "--model_specs", default=str(DEFAULT_SPECS), help="model specs (thresholds drawn on the charts)"
    )
    p.add_argument("--references", default="", help="folder of <model>.json references (histogram bins)")
    return p


def write_report(
    src: Any,
    out: pathlib.Path,
    model: str = "",
    since: dt.timedelta = dt.timedelta(hours=24),
    until: dt.datetime | None = None,
    specs: Mapping[str, Any] | None = None,
    references_dir: str = "",
) -> list[ModelReport]:
    """Collect every model's panels and write the page; returns what it drew."""
    d = src.sql
    mfilter = f"WHERE model_name = {_q(model)}" if model else ""
    if until is None:
        ((newest,),) = src.rows(f"SELECT MAX(event_time) FROM {{db}}.predictions {mfilter}")
        newest = _aware(newest) if isinstance(newest, dt.datetime) else None
        if newest is None or newest.timestamp() <= 0:  # an empty table's max() is the epoch in ClickHouse
            newest = dt.datetime.now(dt.timezone.utc)  # no rows at all: the period ends now (empty page)
        until = newest + dt.timedelta(microseconds=1)  # the newest row is inside [lo, hi)
    lo = until - since
    models = [
        r[0]
        for r in src.rows(
            f"SELECT DISTINCT model_name FROM {{db}}.predictions WHERE event_time >= {d.ts(lo)} "
            f"AND event_time < {d.ts(until)}"
            + (f" AND model_name = {_q(model)}" if model else "")
            + " ORDER BY 1"
        )
    ]
    if models:  # a period longer than the data starts where the data does (readable charts)
        ((first,),) = src.rows(
            f"SELECT MIN(event_time) FROM {{db}}.predictions WHERE event_time >= {d.ts(lo)} "
            f"AND event_time < {d.ts(until)}" + (f" AND model_name = {_q(model)}" if model else "")
        )
        if isinstance(first, dt.datetime):
            lo = max(lo, _aware(first).replace(second=0, microsecond=0))
    reports = [collect(src, m, lo, until, specs or {}, references_dir) for m in models]
    # the page's "generated at" stamp (when the report was written); every chart uses event time
    page = render_page(reports, src.where, lo, until, dt.datetime.now(dt.timezone.utc))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return reports


def main(argv: Sequence[str], out: IO[str]) -> int:
    """``predaudit report``: exit 0 written, 2 usage error or unreadable tables (one line)."""
    try:
        try:
            args = build_parser().parse_args(list(argv))
        except SystemExit as exc:
            return int(exc.code or 0)
        since = parse_since(args.since)
        until = parse_until(args.until) if args.until else None
        if args.references and not pathlib.Path(args.references).is_dir():
            raise ReportError(f"--references {args.references!r}: no such folder")
        from schemas.specs import SpecError, load_specs

        try:
            specs = load_specs(args.model_specs) if args.model_specs else {}
        except SpecError as exc:
            raise ReportError(f"--model_specs: {exc}") from None
        if args.sink == "clickhouse" and not args.clickhouse_dsn.startswith(
            ("chdb://", "http://", "https://")
        ):
            raise ReportError(
                f"--clickhouse_dsn {args.clickhouse_dsn!r}: use http(s)://host:port or chdb:///path"
            )
        if args.sink == "bigquery" and not args.bq_project:
            raise ReportError("--bq_project is required with --sink bigquery")
        target = pathlib.Path(args.out)
        try:
            src: Any = (
                ClickHouseSource(args.clickhouse_dsn, args.clickhouse_database)
                if args.sink == "clickhouse"
                else BigQuerySource(args.bq_project, args.bq_dataset, args.bq_endpoint)
            )
            reports = write_report(src, target, args.model, since, until, specs, args.references)
        except ReportError:
            raise
        except OSError as exc:
            raise ReportError(f"cannot write {target}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a read failure is one line, exit 2
            text = " ".join(str(exc).split())[:300]
            raise ReportError(
                f"cannot read the audit tables ({type(exc).__name__}: {text}); "
                + (
                    "check --clickhouse_dsn and --clickhouse_database (a chdb:// directory is locked while "
                    "another process has it open)"
                    if args.sink == "clickhouse"
                    else "check --bq_project, --bq_dataset, --bq_endpoint and the credentials"
                )
            ) from None
    except ReportError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    n = sum(int(r.totals["predictions"]) for r in reports)
    anomalies = sum(int(r.totals["anomalies"]) for r in reports)
    out.write(f"wrote {target}: {len(reports)} model(s), {n:,} predictions, {anomalies} anomalies\n")
    return 0


def write_local_report(dsn: str, database: str, path: pathlib.Path, references_dir: str = "") -> str:
    """``make demo``'s last step: the report of every model's last 24 h of data, from the store
    this process already has open (a chDB directory is locked by its process); the line to print."""
    from schemas.specs import load_specs

    reports = write_report(
        ClickHouseSource(dsn, database),
        path,
        specs=load_specs(str(DEFAULT_SPECS)),
        references_dir=references_dir,
    )
    n = sum(int(r.totals["predictions"]) for r in reports)
    return f"report: {path} ({len(reports)} model(s), {n:,} predictions; open it in a browser)\n"
