"""``predaudit report`` on known rows in chDB, opened in headless Chromium (Debian ``chromium``):
the charts carry the known values (fullest drift pane per metric_id, thresholds, anomalies,
histograms counted from the audit rows), the page needs no network, renders with no console
errors, and the screenshot shows the series colours."""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import pathlib
import re
import shutil
import subprocess
import uuid

import pytest

from pipelines.cli import main
from pipelines.report import COLORS, SEVERITY_COLORS
from schemas.tables import create_clickhouse_tables
from tests.conftest import BQ_PROJECT
from transforms.monitors.reference import FORMAT
from transforms.monitors.stats import CategoricalReference, NumericReference

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
N = 1200  # one prediction every 6 s for 2 h
DRIFT_FROM = T0 + dt.timedelta(hours=1)  # amount moves above every reference edge from here


def known_predictions() -> tuple[list[str], list[list]]:
    cols = [
        "event_id",
        "event_time",
        "model_name",
        "model_version",
        "schema_version",
        "request_id",
        "features",
        "prediction_label",
        "prediction_score",
        "latency_ms",
        "status",
        "quality_issues",
        "ingest_time",
        "payload_sha256",
        "pipeline_version",
        "row_sha256",
    ]
    rows = []
    for i in range(N):
        t = T0 + dt.timedelta(seconds=6 * i)
        amount = 25.0 if t >= DRIFT_FROM else (5.0, 15.0, 15.0, 25.0)[i % 4]
        features = {"amount": amount, "country": ("DE", "US", "FR")[i % 3]}
        rows.append(
            [
                f"e{i:05d}",
                t,
                "rpt",
                "1",
                "1",
                f"req-{i:05d}",
                json.dumps(features),
                "fraud" if i % 2 else "legit",
                0.95 if t >= DRIFT_FROM else (i % 10) / 10 + 0.05,  # uniform over 10 bins, then the top one
                float(i % 100),  # 0..99 ms: p95 of a bucket is ~95 ms
                "error" if i % 20 == 0 else "ok",  # 5 %
                ["out_of_range:amount"] if i % 10 == 1 else [],  # 10 %
                t + dt.timedelta(seconds=1),
                f"{i:064x}",
                "test",
                f"{i:064x}",
            ]
        )
    return cols, rows


def known_labels() -> tuple[list[str], list[list]]:
    cols = [
        "event_id",
        "label_time",
        "label",
        "model_name",
        "schema_version",
        "ingest_time",
        "payload_sha256",
        "pipeline_version",
    ]
    rows = []
    for i in range(N):
        predicted = "fraud" if i % 2 else "legit"
        wrong = "legit" if predicted == "fraud" else "fraud"
        label = wrong if i % 5 == 0 else predicted  # 80 % correct
        t = T0 + dt.timedelta(seconds=6 * i + 30)
        rows.append([f"e{i:05d}", t, label, "rpt", "1", t, f"l{i:063x}", "test"])
    return cols, rows


def known_drift() -> tuple[list[str], list[list]]:
    cols = ["metric_id", "model_name", "model_version", "signal", "metric", "value"]
    cols += ["window_start", "window_end", "sample_size", "status"]
    rows = []
    for w in range(24):
        start = T0 + dt.timedelta(minutes=5 * w)
        end = start + dt.timedelta(minutes=5)
        for signal, value in (("amount", 0.31 if start >= DRIFT_FROM else 0.01), ("country", 0.02)):
            mid = f"{signal}-{w}"
            rows.append(
                [mid, "rpt", "1", signal, "psi", value, start, end, 50, "critical" if value > 0.25 else "ok"]
            )
            # an earlier, smaller pane of the same window: the report must not draw it
            rows.append([mid, "rpt", "1", signal, "psi", 9.9, start, end, 10, "insufficient"])
        rows.append([f"acc-{w}", "rpt", "1", "accuracy", "accuracy", 0.8, start, end, 50, "ok"])
    return cols, rows


def known_anomalies() -> tuple[list[str], list[list]]:
    cols = ["anomaly_id", "time", "type", "source", "subject", "model_name", "model_version", "signal"]
    cols += ["detector", "statistic", "threshold", "severity", "window_start", "window_end", "sample_size"]
    cols += ["reference", "current", "cloudevent"]
    rows = []
    for k, (minute, sev, value) in enumerate(((65, "critical", 0.31), (110, "resolved", 0.05))):
        end = T0 + dt.timedelta(minutes=minute)
        start = end - dt.timedelta(minutes=5)
        copies = 2 if sev == "critical" else 1  # a re-published event: one anomaly, drawn once
        for _ in range(copies):
            rows.append(
                [
                    f"a{k}",
                    end,
                    "predaudit.anomaly.feature_drift",
                    "test",
                    "rpt/1/amount",
                    "rpt",
                    "1",
                    "amount",
                    "psi",
                    value,
                    0.25,
                    sev,
                    start,
                    end,
                    50,
                    "{}",
                    "{}",
                    "{}",
                ]
            )
    return cols, rows


def known_dead_letters() -> tuple[list[str], list[list]]:
    cols = ["dead_letter_id", "stage", "kind", "error_code", "error_path", "error_message"]
    cols += ["payload_sha256", "payload_size", "payload_truncated", "ingest_time", "model_name"]
    rows = []
    for i in range(30):
        code, model = ("invalid_json", None) if i < 20 else ("missing_field", "rpt")
        t = T0 + dt.timedelta(minutes=2 * i, seconds=10)
        rows.append([f"d{i}", "decode", "prediction", code, "$", "bad", f"{i:064x}", 10, False, t, model])
    rows.append(["other", "decode", "prediction", "wrong_type", "$", "x", "0" * 64, 1, False, T0, "another"])
    return cols, rows


KNOWN = {
    "predictions": known_predictions,
    "labels": known_labels,
    "drift_metrics": known_drift,
    "anomalies": known_anomalies,
    "dead_letters": known_dead_letters,
}


def insert_known_rows(client, database: str) -> None:
    """The audit tables of ``database`` (created) with the known rows above."""
    create_clickhouse_tables(client, database)
    for table, build in KNOWN.items():
        cols, rows = build()
        client.insert(f"`{database}`.`{table}`", rows, column_names=cols)


def insert_known_rows_bq(client, project: str, dataset: str) -> None:
    """The same rows in a BigQuery dataset (created with the views), through insertAll."""
    from schemas.tables import create_bigquery_tables

    create_bigquery_tables(client, project, dataset)
    for table, build in KNOWN.items():
        cols, rows = build()
        docs = [
            {c: (v.isoformat() if isinstance(v, dt.datetime) else v) for c, v in zip(cols, row, strict=True)}
            for row in rows
        ]
        docs = [{c: v for c, v in doc.items() if v is not None} for doc in docs]
        for k in range(0, len(docs), 500):
            chunk = docs[k : k + 500]
            assert (
                client.insert_rows_json(f"{project}.{dataset}.{table}", chunk, row_ids=[None] * len(chunk))
                == []
            )


def _references(tmp: pathlib.Path) -> pathlib.Path:
    refs = tmp / "refs"
    refs.mkdir()
    doc = {
        "format": FORMAT,
        "model": "rpt",
        "version": "1",
        "signals": {
            "amount": NumericReference((10.0, 20.0), (0.25, 0.5, 0.25), 1000).to_json(),
            "country": CategoricalReference(("DE", "US"), (0.4, 0.4, 0.2), 1000).to_json(),
        },
    }
    (refs / "rpt.json").write_text(json.dumps(doc))
    return refs


def _write(tmp: pathlib.Path, *source: str) -> tuple[pathlib.Path, str]:
    out, buf = tmp / "report.html", io.StringIO()
    argv = ["report", "--out", str(out), "--references", str(_references(tmp)), "--since", "2h", *source]
    assert main(argv, buf) == 0, buf.getvalue()
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, chdb_path, chdb_client) -> tuple[pathlib.Path, str]:
    """Known rows in a fresh database, a reference file, and the report written once: (path, summary)."""
    database = f"t_report_{uuid.uuid4().hex[:8]}"
    insert_known_rows(chdb_client, database)
    source = ["--clickhouse_dsn", f"chdb://{chdb_path}", "--clickhouse_database", database]
    return _write(tmp_path_factory.mktemp("report"), *source)


@pytest.fixture(scope="module")
def written_bq(tmp_path_factory: pytest.TempPathFactory, bq_emulator, bq_client) -> tuple[pathlib.Path, str]:
    """The same report from the same rows in bqemulator."""
    dataset = f"t_report_{uuid.uuid4().hex[:8]}"
    insert_known_rows_bq(bq_client, BQ_PROJECT, dataset)
    source = ["--sink", "bigquery", "--bq_project", BQ_PROJECT, "--bq_dataset", dataset]
    return _write(tmp_path_factory.mktemp("report-bq"), *source, "--bq_endpoint", bq_emulator.endpoint)


def _chart(page: str, chart_id: str) -> str:
    m = re.search(rf'<svg class="chart" id="{re.escape(chart_id)}".*?</svg>', page, re.S)
    assert m, f"chart {chart_id} missing"
    return m.group(0)


def _tips(svg: str, cls: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(rf'class="{cls}"[^>]*><title>([^<]*)</title>', svg)]


@pytest.mark.parametrize("engine", ["written", "written_bq"])
def test_report_charts_carry_the_known_values(engine, request) -> None:
    out, summary = request.getfixturevalue(engine)
    assert summary.strip() == f"wrote {out}: 1 model(s), 1,200 predictions, 1 anomalies"
    page = out.read_text()

    # self-contained: nothing is fetched (the only URL is the SVG namespace)
    assert not re.search(r"\b(src|href)=|url\(|@import", page)
    assert set(re.findall(r"https?://[^\"' )]+", page)) == {"http://www.w3.org/2000/svg"}

    # 2 h in 5-minute buckets; traffic is 50 per bucket
    traffic = _chart(page, "m0-traffic")
    assert 'data-points="24"' in traffic
    assert {t.rsplit(": ", 1)[1] for t in _tips(traffic, "pt")} == {"50"}
    # p95 of 0..99 ms in each bucket (50 values per bucket, i % 100)
    latency = _chart(page, "m0-latency")
    assert len(_tips(latency, "pt")) == 3 * 24
    # accuracy from the label join: 80 % correct in every bucket
    acc = _tips(_chart(page, "m0-accuracy"), "pt")
    assert len(acc) == 24 and {t.rsplit(": ", 1)[1] for t in acc} == {"0.8"}
    rates = _chart(page, "m0-rates")
    assert len(_tips(rates, "pt")) == 48

    # drift: the fullest pane per metric_id (never the 9.9 of the smaller pane), thresholds drawn
    amount = _chart(page, "m0-drift-0")  # the most drifted signal first
    values = [t.rsplit(": ", 1)[1] for t in _tips(amount, "pt")]
    # the PSI points, then the threshold the critical alert was raised against (calibrated
    # decisions: a threshold per window, no fixed lines; the table has no threshold column)
    assert values == ["0.01"] * 12 + ["0.31"] * 12 + ["0.25"]
    assert "alert threshold 01:00 UTC: 0.25" in _tips(amount, "pt")
    assert "9.9" not in page
    assert 'class="threshold"' not in amount

    # anomalies: the re-published critical once, and its resolution
    timeline = _chart(page, "m0-anomalies")
    assert re.findall(r'class="anomaly" data-severity="(\w+)"', timeline) == ["critical", "resolved"]

    # histograms from the reference file and the audit rows of the most drifted window
    hist = _chart(page, "m0-hist-0")
    bars = dict(t.split(": ") for t in _tips(hist, "bar"))
    assert bars == {
        "reference <=10": "0.25",
        "reference <=20": "0.5",
        "reference >20": "0.25",
        "current <=10": "0",
        "current <=20": "0",
        "current >20": "1",
    }
    country = dict(t.split(": ") for t in _tips(_chart(page, "m0-hist-1"), "bar"))
    assert {k: v for k, v in country.items() if k.startswith("current")} == {
        "current DE": "0.34",
        "current US": "0.34",
        "current OTHER": "0.32",
    }

    # dead letters: every one ingested in the period, of this model or of none (not "another")
    dead = dict(t.split(": ") for t in _tips(_chart(page, "m0-dead"), "bar"))
    assert dead == {"dead letters invalid_json": "20", "dead letters missing_field": "10"}
    assert "20 without a model" in page


def test_report_opens_in_headless_chromium_without_console_errors(tmp_path, written) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium not installed: run tools/system_deps.sh"
    out, _ = written
    shot = tmp_path / "report.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += ["--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    # offline: a request for any resource would fail, and be a console error
    cmd += ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
    cmd += [f"--screenshot={shot}", "--dump-dom", "--window-size=1400,2600", out.as_uri()]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    # console messages and uncaught errors are logged as CONSOLE lines (checked by planting some)
    console = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln or "ERR_" in ln]
    assert console == [], console
    # the browser built every chart with its data points
    charts = dict(re.findall(r'<svg class="chart" id="([^"]+)" data-points="(\d+)"', run.stdout))
    assert charts["m0-traffic"] == "24" and charts["m0-drift-0"] == "25", charts
    assert len(charts) == 10 and all(int(n) > 0 for n in charts.values()), charts
    assert run.stdout.count('class="pt"') >= 24 * 4

    from PIL import Image

    img = Image.open(shot).convert("RGB")
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}

    def rgb(hex_colour: str) -> tuple[int, int, int]:
        return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))

    # series, the critical threshold / anomaly and the resolved marker were painted
    for c in (COLORS[0], SEVERITY_COLORS["critical"], SEVERITY_COLORS["resolved"]):
        assert rgb(c) in colours, c


def test_report_usage_and_read_errors_are_one_line(tmp_path, chdb_path, capsys) -> None:
    out = tmp_path / "r.html"
    cases = [
        (["--since", "soon"], "--since 'soon'"),
        (["--until", "yesterday"], "--until 'yesterday'"),
        (["--clickhouse_dsn", "localhost:9000"], "use http(s)://host:port or chdb:///path"),
        (["--clickhouse_dsn", f"chdb://{chdb_path}", "--clickhouse_database", "no_such_db"], "no_such_db"),
    ]
    for extra, text in cases:
        assert main(["report", "--out", str(out), *extra], io.StringIO()) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err and "Traceback" not in err, err
    assert not out.exists()


def test_the_demo_report_line_names_the_file(tmp_path, chdb_path, written) -> None:
    from pipelines.report import write_local_report

    out, _ = written
    database = re.search(r"clickhouse (t_report_\w+);", out.read_text()).group(1)
    path = tmp_path / "demo" / "report.html"
    line = write_local_report(f"chdb://{chdb_path}", database, path)
    assert line == f"report: {path} (1 model(s), 1,200 predictions; open it in a browser)\n"
    assert 'id="m0-drift-0"' in path.read_text()


def test_a_period_longer_than_the_data_starts_with_the_data(tmp_path, chdb_path, written) -> None:
    out, _ = written
    database = re.search(r"clickhouse (t_report_\w+);", out.read_text()).group(1)
    longer = tmp_path / "week.html"
    argv = ["report", "--out", str(longer), "--since", "7d", "--clickhouse_dsn", f"chdb://{chdb_path}"]
    assert main([*argv, "--clickhouse_database", database], io.StringIO()) == 0
    page = longer.read_text()
    assert "event time 2026-03-01 00:00 .. 2026-03-01 01:59 UTC" in page
    assert 'id="m0-traffic" data-points="24"' in page  # 5-minute buckets, as for the 2 h period
