"""`predaudit spec infer` / schemas.infer: the inferred spec loads, matches the events' JSON types
and accepts the events it came from; usage errors are one line with exit 2."""

from __future__ import annotations

import gzip
import io
import itertools
import pathlib

import orjson
import pytest

from schemas import Decoders
from schemas.infer import InferError, infer_spec, main, spec_yaml
from schemas.simulate import SimConfig, Simulator
from schemas.specs import QualityChecker, load_specs, parse_spec
from tests.helpers import event

SPECS = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "models"


def _fraud_events(n: int = 1500, **cfg) -> list:
    spec = load_specs(SPECS)["fraud"]
    dec = Decoders()
    return [dec.prediction(ln.raw)[0] for ln in Simulator(spec, SimConfig(events=n, seed=5, **cfg)).lines()]


def _load(spec: dict, tmp_path: pathlib.Path):
    path = tmp_path / "inferred.yaml"
    path.write_text(spec_yaml(spec))
    return load_specs(path)[spec["name"]]


def test_fraud_events_give_the_hand_written_types_and_accept_their_events(tmp_path) -> None:
    events = _fraud_events()
    inferred = _load(infer_spec(events, "fraud"), tmp_path)
    truth = load_specs(SPECS)["fraud"]
    for f in truth.features:
        got = inferred.feature(f.name)
        assert got is not None, f.name
        if f.pii:  # PII text is recognised as such (hashed: the safe default)
            assert (got.type, got.pii) == ("text", "hash")
        else:
            assert got.type == f.type, f.name
        assert got.required == f.required, f.name
        if f.type == "categorical":
            assert set(got.categories) == set(f.categories)
    assert inferred.prediction.classes == truth.prediction.classes
    assert inferred.versions == truth.versions and inferred.task == "classification"
    checker = QualityChecker(inferred)
    assert [i for ev in events if (i := checker.check(ev.features))] == []


def test_event_dicts_of_several_models_only_the_asked_one_counts() -> None:
    a = event(model={"name": "a", "version": "1"}, features={"x": 1.0, "s": "p"})
    b = event(model={"name": "b", "version": "1"}, features={"y": True})
    spec = infer_spec([a, b, a], "a")
    assert [f["name"] for f in spec["features"]] == ["s", "x"]
    assert "from 2 events" in spec["description"]
    with pytest.raises(InferError, match="no events of model 'c'"):
        infer_spec([a, b], "c")


def test_optional_when_missing_or_null_and_all_null_is_still_loadable(tmp_path) -> None:
    evs = [
        {"features": {"a": 1.0, "b": 2.0, "n": None}, "prediction": {"value": 1.0}},
        {"features": {"a": None, "b": 3.0}, "prediction": {"value": 2.0}},
        {"features": {"b": 4.0, "n": None}, "prediction": {"value": 3.0}},
    ]
    spec = infer_spec(evs, "reg")
    by = {f["name"]: f for f in spec["features"]}
    assert by["a"]["required"] is False and "required" not in by["b"] and by["n"]["required"] is False
    assert "type unknown" in by["n"]["description"]
    assert spec["task"] == "regression" and "prediction" not in spec
    loaded = _load(spec, tmp_path)
    assert loaded.task == "regression"
    assert all(QualityChecker(loaded).check(e["features"]) == [] for e in evs)


def test_vocabulary_cap_leaves_high_cardinality_open(tmp_path) -> None:
    evs = [{"features": {"id": f"u{i}", "c": "xy"[i % 2]}, "prediction": {"label": "k"}} for i in range(40)]
    spec = infer_spec(evs, "m", max_categories=10)
    by = {f["name"]: f for f in spec["features"]}
    assert by["id"]["type"] == "categorical" and "categories" not in by["id"]
    assert "more than 10 distinct values" in by["id"]["description"]
    assert by["c"]["categories"] == ["x", "y"]
    checker = QualityChecker(_load(spec, tmp_path))
    assert checker.check({"id": "never-seen", "c": "x"}) == []
    assert checker.check({"id": "u1", "c": "z"}) == ["unseen_category:c"]


def test_mixed_types_take_the_majority_and_say_so() -> None:
    evs = [{"features": {"m": v}, "prediction": {"score": 0.5}} for v in (1.0, 2.0, 3.0, "three")]
    (f,) = infer_spec(evs, "m")["features"]
    assert f["type"] == "numeric" and "mixed JSON types (numeric 3, string 1)" in f["description"]


def test_names_and_values_that_need_quoting_survive_the_yaml(tmp_path) -> None:
    names = ["yes", "a b", "1.5", "on", "größe", "x:y", "null", "#tag"]
    evs = [
        {"features": {n: "No" if i % 2 else "off" for n in names}, "prediction": {"label": "true"}}
        for i in range(4)
    ]
    spec = infer_spec(evs, "weird name: v2")
    loaded = parse_spec(spec_yaml(spec))
    assert loaded.name == "weird name: v2"
    assert sorted(f.name for f in loaded.features) == sorted(names)
    assert {tuple(f.categories) for f in loaded.features} == {("No", "off")}
    assert loaded.prediction.classes == ["true"]


def test_tiny_and_huge_numbers_round_trip(tmp_path) -> None:
    evs = [{"features": {"t": v, "h": v * 1e30}, "prediction": {"score": 0.1}} for v in (1e-7, 3e-7)]
    loaded = _load(infer_spec(evs, "m"), tmp_path)
    lo, hi = loaded.feature("t").range
    assert 0 <= lo <= 1e-7 and 3e-7 <= hi < 1e-6
    assert QualityChecker(loaded).check(evs[1]["features"]) == []


def test_sample_limits_the_events_read() -> None:
    evs = [{"features": {"a": float(i)}, "prediction": {"score": 0.2}} for i in range(100)]
    spec = infer_spec(evs, "m", sample=10)
    assert spec["features"][0]["range"] == [0.0, 9.9] and "from 10 events" in spec["description"]


def test_scenario_model_without_a_spec(tmp_path) -> None:
    """What the monitors use for a spec-less model: the scenario generator's kinds come back."""
    from tests.bench.detection_scenarios import build

    (plan,) = build("no_spec", 0.05).plans
    evs = list(itertools.islice(plan.stream(), 3000))
    loaded = _load(infer_spec(evs, plan.model), tmp_path)
    kinds = {"gauss": "numeric", "categorical": "categorical", "boolean": "boolean"}
    assert {f.name: f.type for f in loaded.features} == {f.name: kinds[f.kind] for f in plan.features}
    checker = QualityChecker(loaded)
    assert all(checker.check(e["features"]) == [] for e in evs)


# --- the command line -----------------------------------------------------------------------


def _write(path: pathlib.Path, n: int, **cfg) -> pathlib.Path:
    spec = load_specs(SPECS)["fraud"]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        for ln in Simulator(spec, SimConfig(events=n, seed=3, **cfg)).lines():
            fh.write(ln.raw + b"\n")
    return path


def test_cli_writes_yaml_to_stdout_and_counts_bad_lines(tmp_path, capsys) -> None:
    _write(tmp_path / "a.jsonl", 400, bad_fraction=0.1)
    _write(tmp_path / "b.jsonl.gz", 200)
    out = io.StringIO()
    assert main(["infer", "--input", str(tmp_path / "*.jsonl*"), "--model", "fraud"], out) == 0
    spec = parse_spec(out.getvalue())
    assert spec.name == "fraud" and spec.feature("amount").type == "numeric"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "from 2 file(s)" in err[0] and "invalid line(s) skipped: " in err[0]
    assert "invalid_json" in err[0]


def test_cli_out_file_and_sample_and_delegation(tmp_path, capsys) -> None:
    from pipelines.cli import main as predaudit

    src = _write(tmp_path / "e.jsonl", 300)
    dest = tmp_path / "fraud.yaml"
    argv = ["spec", "infer", "--input", str(src), "--model", "fraud", "--out", str(dest), "--sample", "50"]
    out = io.StringIO()
    assert predaudit(argv, out) == 0
    assert out.getvalue() == "" and load_specs(dest)["fraud"].versions == ["2026-02-15"]
    assert "from 50 event(s)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["infer", "--input", "/nonexistent/*.jsonl", "--model", "fraud"], "no such file"),
        (["infer", "--input", "{src}", "--model", "nope"], "model 'nope' is not in 120 valid event(s)"),
        (["infer", "--input", "{src}", "--model", "fraud", "--out", "/nonexistent/x.yaml"], "no such folder"),
        (["infer", "--input", "{src}", "--model", "fraud", "--sample", "0"], "must be > 0"),
        (["infer", "--input", "{src}"], "required: --model"),
        (["guess"], "invalid choice"),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(tmp_path, capsys, argv, message) -> None:
    src = _write(tmp_path / "e.jsonl", 120)
    argv = [a.replace("{src}", str(src)) for a in argv]
    assert main(argv, io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    if "nope" in argv:
        assert "models seen: 'fraud'" in err


def test_cli_help_is_exit_0(capsys) -> None:
    assert main(["infer", "--help"], io.StringIO()) == 0
    assert "--max-categories" in capsys.readouterr().out


def test_unreadable_gzip_is_a_usage_error(tmp_path, capsys) -> None:
    bad = tmp_path / "broken.jsonl.gz"
    bad.write_bytes(gzip.compress(orjson.dumps(event()) + b"\n")[:-12])
    assert main(["infer", "--input", str(bad), "--model", "fraud"], io.StringIO()) == 2
    assert "cannot read" in capsys.readouterr().err
