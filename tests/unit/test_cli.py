"""The predaudit CLI: validate exit codes and JSON output, simulate, schema ddl, usage errors."""

from __future__ import annotations

import gzip
import io
import json
import pathlib
import re
import subprocess
import sys

import pytest

from pipelines.cli import main
from schemas import REFERENCE_EVENT
from schemas.simulate import BAD_KINDS

SPECS = str(pathlib.Path(__file__).resolve().parents[2] / "schemas" / "models")


def run(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    return main(args, out), out.getvalue()


def test_validate_all_valid_json_summary(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "ok.jsonl"
    p.write_bytes(REFERENCE_EVENT + b"\n\n" + REFERENCE_EVENT + b"\n")
    code, out = run(["validate", str(p), "--json"])
    assert code == 0
    assert json.loads(out) == {"valid": 2, "invalid": 0, "errors": {}, "quality_issues": {}}


def test_simulated_bad_lines_are_counted_by_code(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "sim.jsonl.gz"
    code, out = run(["simulate", "--events", "2000", "--bad-fraction", "0.2", "--out", str(p), "--seed", "3"])
    assert code == 0
    kinds: dict[str, int] = {}
    from schemas.simulate import SimConfig, Simulator
    from schemas.specs import load_specs

    for line in Simulator(
        load_specs(SPECS)["fraud"], SimConfig(events=2000, bad_fraction=0.2, seed=3)
    ).lines():
        if line.kind != "ok":
            kinds[BAD_KINDS[line.kind]] = kinds.get(BAD_KINDS[line.kind], 0) + 1
    code, out = run(["validate", str(p), "--json", "--spec", SPECS])
    doc = json.loads(out)
    assert code == 1
    assert doc["errors"] == kinds  # every malformed kind maps to its documented code
    assert doc["valid"] + doc["invalid"] == 2000


def test_validate_text_report_has_line_numbers(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(REFERENCE_EVENT + b"\n{broken\n")
    code, out = run(["validate", str(p)])
    assert code == 1
    assert "1 valid, 1 invalid" in out and "line 2: invalid_json" in out and "fix:" in out


def test_validate_labels_and_stdin() -> None:
    label = (
        b'{"schema_version":"1","event_id":"evt-00000001","label_time":"2026-01-01T00:00:00Z","label":"x"}\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "validate", "-", "--kind", "label", "--json"],
        input=label,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["valid"] == 1


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "/no/such/file"],
        ["validate", "x", "--spec", "/no/such/spec"],
        ["simulate", "--events", "5", "--model", "nope", "--out", "/tmp/x"],
        ["simulate", "--events", "5", "--drift-at", "2", "--out", "/tmp/x"],
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_gzip_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "x.jsonl.gz"
    p.write_bytes(b"not gzip")
    assert main(["validate", str(p)]) == 2


def test_simulate_is_deterministic_and_injects_drift(tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for p in (a, b):
        run(
            [
                "simulate",
                "--events",
                "400",
                "--drift-at",
                "200",
                "--drift-feature",
                "amount",
                "--drift-shift",
                "2",
                "--out",
                str(p),
            ]
        )
    assert a.read_bytes() == b.read_bytes()
    amounts = [json.loads(x)["features"]["amount"] for x in a.read_bytes().splitlines()]
    before, after = sum(amounts[:200]) / 200, sum(amounts[200:]) / 200
    assert after - before > 1.5 * 0.08 * 50000  # ~2 sd of the spec-derived distribution


def test_schema_ddl_both_targets() -> None:
    code, out = run(["schema", "ddl", "--target", "clickhouse"])
    assert code == 0 and "ENGINE = MergeTree\n" in out and "Replacing" not in out
    code, out = run(["schema", "ddl", "--target", "bigquery", "--project", "p1"])
    assert code == 0 and json.loads(out)["tables"][0]["timePartitioning"]["field"] == "event_time"


def test_gzip_input(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "e.jsonl.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(REFERENCE_EVENT + b"\n")
    assert run(["validate", str(p), "--json"])[0] == 0


def test_run_and_replay_help_show_their_own_options(capsys) -> None:
    assert main(["replay", "--help"]) == 0
    replay_help = capsys.readouterr().out
    assert main(["run", "--help"]) == 0
    run_help = capsys.readouterr().out
    assert replay_help.startswith("usage: predaudit replay ")
    assert run_help.startswith("usage: predaudit run ")
    for flag in ("--input", "--labels_input", "--summary_json", "--no_create_tables", "--sinks"):
        assert re.search(rf"{flag}\b", replay_help), flag
    for flag in ("--predictions_subscription", "--dead_letter_topic", "--timestamp_attribute", "--sinks"):
        assert flag in run_help, flag
    assert "--predictions_subscription" not in replay_help and "--summary_json" not in run_help
    assert not re.search(r"[^_]--input\b", run_help)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["replay", "--input=x", "--sink=bigquery"],
            "unrecognized argument --sink=bigquery; did you mean --sinks?",
        ),
        (["replay", "--input", "x", "--sink", "bigquery"], "did you mean --sinks?"),
        (["replay", "--inpu=x"], "did you mean --input?"),
        (["run", "--predictions_sub=projects/p/subscriptions/s"], "unrecognized argument --predictions_sub"),
        (["run", "--input=x"], "--input is not an option of this command"),
        (["replay", "--input=x", "--direct_num_workers=two"], "invalid int value"),
        (["simulate", "--events", "5", "--ou", "x"], "required: --out"),
        (["validate", "x", "--sho", "3"], "unrecognized arguments: --sho"),
    ],
)
def test_no_prefix_matching_one_line_usage_error(argv: list[str], fragment: str, capsys) -> None:
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and fragment in err[0], err


def test_beam_options_are_still_accepted() -> None:
    from pipelines.options import parse_command_line

    launch, flags = parse_command_line(
        ["--input=x", "--runner", "DirectRunner", "--direct_num_workers=1", "--summary_json", "s.json"],
        "replay",
        "predaudit replay",
    )
    assert launch.summary_json == "s.json" and launch.input == "x"
    assert flags == ["--input=x", "--runner", "DirectRunner", "--direct_num_workers=1"]


def test_summary_exit_1_when_a_line_or_dead_letter_is_unwritten() -> None:
    from pipelines.replay import summarize

    counters = {
        "replay_lines_read:prediction:/in/a.jsonl": 10,
        "replay_lines_read:label:/in/l.jsonl": 4,
        "predictions_duplicates": 1,
        "replay_dead_letter:decode:invalid_json:prediction": 2,
        "replay_dead_letter:dedup:conflicting_duplicate:prediction": 1,
        "replay_dead_letter:sink.bigquery:sink_rejected:predictions": 1,
        "clickhouse_rows_written_predictions": 6,
        "clickhouse_rows_written_labels": 4,
        "clickhouse_rows_written_dead_letters": 4,
        "bigquery_rows_written_predictions": 5,
        "bigquery_rows_written_labels": 4,
        "bigquery_rows_written_dead_letters": 4,
    }
    ok = summarize(counters, ["clickhouse", "bigquery"])
    assert ok["exit_code"] == 0 and ok["accounted"], ok["problems"]
    assert ok["conflicting_duplicates"] == 1 and ok["sink_refused"] == {"bigquery": {"sink_rejected": 1}}
    lost_row = summarize({**counters, "bigquery_rows_written_labels": 3}, ["clickhouse", "bigquery"])
    assert lost_row["exit_code"] == 1
    assert lost_row["problems"] == [
        "bigquery: 1 of 14 input lines are in no table (rows 8, refused 1, dead letters 3, duplicates 1)"
    ]
    lost_dead = summarize({**counters, "clickhouse_rows_written_dead_letters": 3}, ["clickhouse", "bigquery"])
    assert lost_dead["problems"] == ["clickhouse: 1 of 4 dead letters were not written"]


def test_sink_failure_found_through_beams_wrapping() -> None:
    """Beam re-raises a DoFn's exception as ``type(e)(e.args[0] + " [while running ...]", *rest)``."""
    from pipelines.replay import InputFailure, _run_failure
    from transforms.sinks.errors import SinkFailure

    f = SinkFailure(
        "clickhouse", "audit.predictions", "database audit does not exist", "run `predaudit provision`"
    )
    wrapped = type(f)(f.args[0] + " [while running 'Write']", *f.args[1:])
    assert _run_failure(wrapped) == (
        "sink failure: clickhouse: audit.predictions: database audit does not exist -- fix: run `predaudit provision`"
    )
    cut = InputFailure("/in/x.gz: truncated or corrupt after 7 lines read", "/in/x.gz", 7)
    assert _run_failure(type(cut)(cut.args[0] + " [while running 'Read']", *cut.args[1:])) == (
        "/in/x.gz: truncated or corrupt after 7 lines read"
    )
    assert _run_failure(ValueError("a bug")) is None


def test_validate_strips_a_utf8_bom(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + REFERENCE_EVENT + b"\n")
    code, out = run(["validate", str(p), "--json"])
    assert (code, json.loads(out)["valid"]) == (0, 1)
