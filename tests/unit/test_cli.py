"""The predaudit CLI: validate exit codes and JSON output, simulate, schema ddl, usage errors."""

from __future__ import annotations

import gzip
import io
import json
import pathlib
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
