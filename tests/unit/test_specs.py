"""Model specs: loading errors name file and key; quality issues never reject; PII never leaks."""

from __future__ import annotations

import logging
import pathlib

import orjson
import pytest

from pipelines.cli import main
from schemas import Decoders
from schemas.specs import PiiKey, PiiRedactor, QualityChecker, SpecError, load_specs, parse_spec, redactors
from tests.helpers import event, raw
from transforms.rows import prediction_row

SPECS_DIR = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "models"
KEY = PiiKey(b"unit-test-key-0123456789abcdef")
SECRET_EMAIL = "alice.secret@example.com"
SECRET_PHONE = "+4915112345678"


def test_bundled_specs_load() -> None:
    specs = load_specs(SPECS_DIR)
    fraud = specs["fraud"]
    assert fraud.monitors.psi.warning == 0.1 and fraud.monitors.adwin.delta == 0.002
    assert fraud.feature("email").pii == "hash" and fraud.has_pii


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("name: m\nfeatures: [{name: a, type: number}]", "$.features[0].type", "Invalid enum value"),
        (
            "name: m\nfeatures: [{name: a, type: numeric, rnage: [0, 1]}]",
            "$.features[0]",
            "unknown field `rnage`",
        ),
        ("name: m\nfeatures: [{name: a, type: numeric, range: [2, 1]}]", "features[0].range", "low <= high"),
        ("name: m\nfeatures: [{name: a, type: text, range: [0, 1]}]", "features[0].range", "numeric"),
        (
            "name: m\nfeatures: [{name: a, type: numeric, categories: [x]}]",
            "features[0].categories",
            "categorical",
        ),
        (
            "name: m\nfeatures: [{name: a, type: numeric}, {name: a, type: numeric}]",
            "features[1].name",
            "duplicate",
        ),
        ("name: m\nfeatures: []\nmonitors: {adwin: {delta: 2}}", "monitors.adwin.delta", "(0, 1)"),
        (
            "name: m\nfeatures: []\nmonitors: {psi: {warning: 0.3, critical: 0.2}}",
            "monitors.psi",
            "warning <= critical",
        ),
        ("name: m\nfeatures: []\nmonitors: {window_seconds: 0}", "monitors.window_seconds", "> 0"),
        ("features: []", "$", "missing required field `name`"),
        ("name: [unclosed", "$", "not valid YAML"),
    ],
)
def test_spec_errors_name_file_and_key(text: str, key: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "models/m.yaml")
    assert info.value.file == "models/m.yaml"
    assert info.value.key == key
    assert fragment in str(info.value)


def test_load_specs_rejects_missing_and_duplicate(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_specs(tmp_path / "nope")
    with pytest.raises(SpecError, match="no \\*.yaml"):
        load_specs(tmp_path)
    (tmp_path / "a.yaml").write_text("name: m\nfeatures: []\n")
    (tmp_path / "b.yaml").write_text("name: m\nfeatures: []\n")
    with pytest.raises(SpecError, match="defined twice"):
        load_specs(tmp_path)


def test_quality_issues_are_reported_not_rejected() -> None:
    spec = load_specs(SPECS_DIR)["fraud"]
    checker = QualityChecker(spec)
    ev = event(
        model={"name": "fraud", "version": "2026-02-15"},
        features={"amount": 99999.0, "country": "XX", "channel": 7, "surprise": 1, "is_international": True},
    )
    decoded, _ = Decoders().prediction(raw(ev))  # still a valid event
    issues = checker.check(decoded.features)
    assert "feature_out_of_range:amount" in issues
    assert "unseen_category:country" in issues
    assert "type_mismatch:channel" in issues
    assert "unexpected_feature:surprise" in issues
    assert "missing_feature:account_age_days" in issues
    assert not any(i.endswith(":email") for i in issues)  # optional feature
    assert checker.check({"amount": True})[0] == "type_mismatch:amount"  # bool is not numeric


def test_pii_hash_requires_a_key_and_hides_it() -> None:
    spec = load_specs(SPECS_DIR)["fraud"]
    with pytest.raises(SpecError, match="PREDAUDIT_PII_KEY"):
        PiiRedactor(spec, None)
    assert "unit-test-key" not in repr(KEY)
    assert PiiKey.from_env({"PREDAUDIT_PII_KEY": "k" * 20}) is not None
    assert PiiKey.from_env({}) is None
    with pytest.raises(ValueError, match="16 bytes"):
        PiiKey(b"short")


def test_pii_hash_is_keyed_and_deterministic() -> None:
    other = PiiKey(b"another-key-0123456789abcdefgh")
    assert KEY.hash(SECRET_EMAIL) == KEY.hash(SECRET_EMAIL)  # joinable across rows
    assert KEY.hash(SECRET_EMAIL) != other.hash(SECRET_EMAIL)  # not a plain (dictionary-attackable) hash


def pii_event() -> bytes:
    features = {"amount": 12.5, "country": "DE", "email": SECRET_EMAIL, "phone_number": SECRET_PHONE}
    return raw(event(model={"name": "fraud", "version": "2026-02-15"}, features=features))


def test_raw_pii_reaches_no_sink_and_no_log(chdb_client, ch_database, caplog, capsys, tmp_path) -> None:
    from schemas.tables import PREDICTIONS, create_clickhouse_tables

    specs = load_specs(SPECS_DIR)
    red = redactors(specs, KEY)["fraud"]
    payload = pii_event()
    caplog.set_level(logging.DEBUG)
    ev, ts = Decoders().prediction(payload)
    row = prediction_row(
        ev,
        ts,
        payload,
        ingest_time=ts,
        redactor=red,
        quality_issues=QualityChecker(specs["fraud"]).check(ev.features),
    )
    features = orjson.loads(row["features"])
    assert features["email"] == KEY.hash(SECRET_EMAIL) and "phone_number" not in features
    # the real ClickHouse engine: write the row, read every column back
    create_clickhouse_tables(chdb_client, ch_database)
    chdb_client.insert(
        f"{ch_database}.predictions",
        [[row[c] for c in PREDICTIONS.column_names]],
        column_names=PREDICTIONS.column_names,
    )
    stored = chdb_client.query(f"SELECT * FROM `{ch_database}`.predictions").result_rows
    assert len(stored) == 1
    dump = repr(stored) + repr(row)
    assert SECRET_EMAIL not in dump and SECRET_PHONE not in dump
    # the CLI's output and every log line stay clean too
    path = tmp_path / "events.jsonl"
    path.write_bytes(payload + b"\n" + payload.replace(b'"status":"ok"', b'"status":"??"') + b"\n")
    main(["validate", str(path), "--spec", str(SPECS_DIR)])
    out = capsys.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for text in (out.out, out.err, logs):
        assert SECRET_EMAIL not in text and SECRET_PHONE not in text
