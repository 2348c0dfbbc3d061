"""``predaudit replay`` / ``run`` as a user runs them: real chDB directories, real processes.

One replay run on an empty chDB directory is shared by the summary assertions; the error
cases each check exit code and a single stderr line without traceback.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import orjson
import pytest

from pipelines.cli import main
from schemas.simulate import BAD_KINDS, SimConfig, Simulator
from schemas.specs import load_specs

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPECS = ROOT / "schemas" / "models"
PII = {"PREDAUDIT_PII_KEY": "integration-test-key-0123456789"}


def predaudit(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **PII, **(env or {})},
        timeout=timeout,
        check=False,
    )


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def ch_query(path: pathlib.Path, sql: str) -> list:
    """Read a chDB directory from another process (this one may hold a different path)."""
    code = (
        "import clickhouse_connect, json, sys\n"
        f"c = clickhouse_connect.get_client(dsn='chdb://{path}')\n"
        "print(json.dumps(c.query(sys.argv[1]).result_rows))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, sql], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> dict:
    """One replay on an EMPTY chDB directory: a file starting with a UTF-8 BOM, bad lines,
    identical duplicates, one conflicting duplicate, blank lines; labels in a .gz."""
    tmp = tmp_path_factory.mktemp("replay-cli")
    sim = list(
        Simulator(
            load_specs(SPECS)["fraud"],
            SimConfig(events=300, bad_fraction=0.1, duplicate_fraction=0.05, label_fraction=1.0, seed=19),
        ).lines()
    )
    first_ok = next(ln for ln in sim if ln.kind == "ok")
    sim.remove(first_ok)
    sim.insert(0, first_ok)  # the BOM sits in front of a valid event
    conflict = orjson.loads(first_ok.raw)
    conflict["latency_ms"] = 987.0  # same identity, other content
    events, labels = tmp / "events.jsonl", tmp / "labels.jsonl.gz"
    events.write_bytes(
        b"\xef\xbb\xbf" + b"".join(ln.raw + b"\n" for ln in sim) + b"\n" + orjson.dumps(conflict) + b"\n"
    )
    with gzip.open(labels, "wb") as fh:
        fh.write(b"".join(ln.label + b"\n" for ln in sim if ln.label))
    chdb = tmp / "chdb"  # does not exist yet
    summary = tmp / "summary.json"
    proc = predaudit(
        "replay",
        "--input",
        str(events),
        "--labels_input",
        str(labels),
        "--sinks",
        "clickhouse",
        "--clickhouse_dsn",
        f"chdb://{chdb}",
        "--model_specs",
        str(SPECS),
        "--summary_json",
        str(summary),
        "--progress_interval_s",
        "0.05",
    )
    return {
        "proc": proc,
        "summary": json.loads(summary.read_text()) if summary.exists() else None,
        "sim": sim,
        "events": str(events),
        "labels": str(labels),
        "chdb": chdb,
    }


def test_replay_on_empty_chdb_dir_just_works(replayed) -> None:
    proc = replayed["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr
    ok = sum(1 for ln in replayed["sim"] if ln.kind == "ok")
    got = ch_query(
        replayed["chdb"],
        "SELECT (SELECT count() FROM audit.predictions), (SELECT count() FROM audit.predictions_dedup), "
        "(SELECT count() FROM audit.labels)",
    )
    assert got == [[ok, ok, ok]]


def test_summary_accounts_for_every_line(replayed) -> None:
    s, sim = replayed["summary"], replayed["sim"]
    ok = sum(1 for ln in sim if ln.kind == "ok")
    bad = [ln for ln in sim if ln.kind in BAD_KINDS]
    dups = sum(1 for ln in sim if ln.kind == "duplicate")
    codes: dict[str, int] = {}
    for ln in bad:
        codes[BAD_KINDS[ln.kind]] = codes.get(BAD_KINDS[ln.kind], 0) + 1
    codes["conflicting_duplicate"] = 1
    assert {(f["path"], f["kind"]): (f["lines"], f["blank"]) for f in s["files"]} == {
        (replayed["events"], "prediction"): (len(sim) + 1, 1),
        (replayed["labels"], "label"): (ok, 0),
    }
    # the BOM was stripped: no invalid_encoding / invalid_json for the first event
    assert s["dead_letters"] == codes
    assert s["conflicting_duplicates"] == 1
    assert s["duplicates"] == {"predictions": dups, "labels": 0}
    written = s["rows_written"]["clickhouse"]
    assert (written["predictions"], written["labels"], written["dead_letters"]) == (ok, ok, len(bad) + 1)
    assert s["lines"] == len(sim) + 1 + ok == ok + len(bad) + 1 + dups + ok
    assert s["accounted"] is True and s["exit_code"] == 0 and s["problems"] == []


def test_summary_text_and_progress_line(replayed) -> None:
    out, err = replayed["proc"].stdout, replayed["proc"].stderr
    assert out.startswith("replay summary\n")
    assert f"read      {replayed['events']} (predictions): " in out
    assert "conflicting duplicates: 1" in out and "dead letters by code: " in out
    assert "accounted: all" in out
    assert re.search(r"^predaudit replay: [\d,]+ lines read, \d+ of 2 files, ", err, re.M), err


def test_no_create_tables_on_empty_dir_is_a_sink_failure(tmp_path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_bytes(next(Simulator(load_specs(SPECS)["fraud"], SimConfig(events=1)).lines()).raw + b"\n")
    proc = predaudit(
        "replay",
        "--input",
        str(events),
        "--clickhouse_dsn",
        f"chdb://{tmp_path / 'ch'}",
        "--no_create_tables",
    )
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert "audit.predictions: table does not exist" in line
    assert f"predaudit provision --sinks clickhouse --clickhouse_dsn chdb://{tmp_path / 'ch'}" in line


def test_truncated_gzip_is_an_error_naming_file_and_lines(tmp_path) -> None:
    lines = list(Simulator(load_specs(SPECS)["fraud"], SimConfig(events=2000, seed=4)).lines())
    full = gzip.compress(b"".join(ln.raw + b"\n" for ln in lines))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(full[: len(full) // 2])
    proc = predaudit(
        "replay",
        "--input",
        str(cut),
        "--clickhouse_dsn",
        f"chdb://{tmp_path / 'ch'}",
        "--model_specs",
        str(SPECS),
        "--progress_interval_s",
        "0",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    line = one_error_line(proc.stderr)
    m = re.search(rf"{re.escape(str(cut))}: truncated or corrupt after (\d+) lines read", line)
    assert m and 0 < int(m.group(1)) < len(lines), line


def test_chdb_dir_locked_by_another_process(tmp_path) -> None:
    chdb = tmp_path / "ch"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import clickhouse_connect, sys\n"
            f"c = clickhouse_connect.get_client(dsn='chdb://{chdb}')\n"
            "print('ready', flush=True)\nsys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        events = tmp_path / "e.jsonl"
        events.write_bytes(b"{}\n")
        proc = predaudit("replay", "--input", str(events), "--clickhouse_dsn", f"chdb://{chdb}")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "in use by another process" in line and f"{chdb}/status" in line


def test_run_fails_fast_when_tables_are_missing(tmp_path) -> None:
    proc = predaudit(
        "run",
        "--predictions_subscription",
        "projects/predaudit-test/subscriptions/predictions-audit",
        "--clickhouse_dsn",
        f"chdb://{tmp_path / 'ch'}",
        timeout=120,
    )
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert line.startswith("predaudit run: error: clickhouse: audit.")
    assert "table does not exist" in line and "fix: run `predaudit provision --sinks clickhouse" in line


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--input", "/no/such/dir/*.jsonl"], {}, "matches no file"),
        (["--input", "x", "--model_specs", "BADSPEC"], {}, "not valid YAML"),
        (["--input", "x", "--model_specs", str(SPECS)], {"PREDAUDIT_PII_KEY": None}, "need a PII key"),
        (["--input", "x", "--clickhouse_dsn", "tcp://host:9000"], {}, "--clickhouse_dsn"),
        (["--input", "INPUT", "--clickhouse_dsn", "http://127.0.0.1:PORT"], {}, "cannot connect"),
        (["--input", "x", "--sink", "clickhouse"], {}, "unrecognized argument --sink; did you mean --sinks?"),
        (["--input", "x", "--predictions_subscription", "p"], {}, "not an option of this command"),
        (["--input", "x", "--monitors", "maybe"], {}, "invalid choice"),
    ],
)
def test_replay_user_errors_are_one_line_exit_2(args, env, fragment, tmp_path, monkeypatch, capsys) -> None:
    from pipelines.localstack import free_port

    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text("name: [unclosed\n")
    (tmp_path / "e.jsonl").write_bytes(b"{}\n")
    subst = {"BADSPEC": str(bad_spec), "INPUT": str(tmp_path / "e.jsonl")}
    args = [subst.get(a, a).replace("PORT", str(free_port())) for a in args]
    for k, v in env.items():
        monkeypatch.delenv(k) if v is None else monkeypatch.setenv(k, v)
    out = io.StringIO()
    assert main(["replay", *args], out) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("predaudit replay: error: ") and fragment in line, line
    assert out.getvalue() == ""


def test_write_failure_after_the_check_exits_1(
    tmp_path, chdb_path, chdb_client, ch_database, monkeypatch, capsys
):
    """The database disappears between the start-up check and the writes (simulated by
    skipping the check): the run must not exit 0; it says which sink could not write."""
    import pipelines.replay as replay

    chdb_client.command(f"DROP DATABASE `{ch_database}`")
    monkeypatch.setattr(replay, "prepare_sinks", lambda opts, sinks, create: [])
    events = tmp_path / "e.jsonl"
    events.write_bytes(
        b"".join(ln.raw + b"\n" for ln in Simulator(load_specs(SPECS)["fraud"], SimConfig(events=20)).lines())
    )
    out = io.StringIO()
    code = replay.run(
        [
            f"--input={events}",
            f"--clickhouse_dsn=chdb://{chdb_path}",
            f"--clickhouse_database={ch_database}",
            "--progress_interval_s=0",
            "--sink_max_attempts=1",
        ],
        out,
    )
    err = capsys.readouterr().err
    assert code == 1, out.getvalue() + err
    assert "Traceback" not in err
    # the sink failure line, or (if the sinks turn the failure into dead letters) the summary
    assert f"{ch_database}" in err or "NOT ACCOUNTED: clickhouse" in out.getvalue(), out.getvalue() + err


def test_replay_creates_missing_bigquery_tables(tmp_path, bq_emulator, bq_client, bq_dataset, capsys) -> None:
    """BigQuery: --no_create_tables on a fresh dataset is a one-line sink failure; by default
    the dataset, tables and views are created and every line is accounted for."""
    import pipelines.replay as replay
    from tests.conftest import BQ_PROJECT

    events = tmp_path / "e.jsonl"
    lines = list(
        Simulator(load_specs(SPECS)["fraud"], SimConfig(events=40, bad_fraction=0.1, seed=8)).lines()
    )
    events.write_bytes(b"".join(ln.raw + b"\n" for ln in lines))
    args = [
        f"--input={events}",
        "--sinks=bigquery",
        f"--bq_project={BQ_PROJECT}",
        f"--bq_dataset={bq_dataset}",
        f"--bq_endpoint={bq_emulator.endpoint}",
        "--monitors=off",
        "--progress_interval_s=0",
    ]
    out = io.StringIO()
    assert replay.run([*args, "--no_create_tables"], out) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"bigquery: {BQ_PROJECT}.{bq_dataset}." in line and "table does not exist" in line
    assert f"predaudit provision --sinks bigquery --bq_project {BQ_PROJECT} --bq_dataset {bq_dataset}" in line
    assert replay.run(args, out) == 0, capsys.readouterr().err
    assert "accounted: all 40 input lines" in out.getvalue()
    q = f"SELECT count(*) AS n FROM `{BQ_PROJECT}.{bq_dataset}.predictions_dedup`"
    assert next(iter(bq_client.query(q).result())).n == sum(1 for ln in lines if ln.kind == "ok")
