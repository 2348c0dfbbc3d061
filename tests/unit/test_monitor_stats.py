"""Drift statistics, references, alert state and anomaly events (pure logic, seeded)."""

from __future__ import annotations

import datetime as dt
import io
import json
import pathlib

import jsonschema
import numpy as np
import pytest

from pipelines.cli import main
from schemas import Decoders
from transforms.monitors.alerts import AlertState, anomaly_event, pubsub_attributes, severity
from transforms.monitors.reference import load_reference
from transforms.monitors.stats import (
    categorical_reference,
    expected_psi_noise,
    js_distance,
    linf_distance,
    numeric_reference,
    psi,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_psi_noise_matches_theory_on_a_stationary_stream() -> None:
    rng = np.random.default_rng(1)
    ref = numeric_reference(rng.normal(size=2000), bins=10)
    values = [psi(ref.expected, ref.bins(rng.normal(size=2000))) for _ in range(200)]
    noise = expected_psi_noise(10, 2000, 2000)
    assert 0.5 * noise < np.mean(values) < 2 * noise
    assert max(values) < 0.1  # never a warning on stationary windows of 2000


@pytest.mark.parametrize(("shift", "floor"), [(0.5, 0.1), (1.0, 0.25)])
def test_psi_flags_mean_shifts(shift: float, floor: float) -> None:
    rng = np.random.default_rng(2)
    ref = numeric_reference(rng.normal(size=5000), bins=10)
    stats = [psi(ref.expected, ref.bins(rng.normal(loc=shift, size=1000))) for _ in range(50)]
    assert min(stats) > floor  # 0.5 sd -> warning, 1 sd -> critical, in every window


def test_js_and_linf_properties() -> None:
    rng = np.random.default_rng(3)
    ref = categorical_reference(rng.choice(list("abcde"), p=[0.4, 0.3, 0.15, 0.1, 0.05], size=5000), top_k=5)
    same = ref.bins(rng.choice(list("abcde"), p=[0.4, 0.3, 0.15, 0.1, 0.05], size=5000))
    moved = ref.bins(rng.choice(list("abcde"), p=[0.1, 0.3, 0.15, 0.1, 0.35], size=5000))
    assert js_distance(ref.expected, same) < 0.05 < 0.2 < js_distance(ref.expected, moved) <= 1
    assert linf_distance(ref.expected, same) < 0.03 and abs(linf_distance(ref.expected, moved) - 0.3) < 0.03
    assert ref.bins(["zzz"]).tolist()[-1] == 1  # unseen categories land in __other__


def test_alert_state_cooldown_escalation_resolution() -> None:
    t0, cd = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), dt.timedelta(minutes=30)
    s = AlertState()
    at = [t0 + dt.timedelta(minutes=5 * i) for i in range(12)]
    levels = ["warning"] * 7 + ["critical", "critical", None, "warning", None]
    got = [s.update(lvl, t, cd) for lvl, t in zip(levels, at, strict=True)]
    # warning at 0; silent within the 30 min cooldown; re-alert at 30 min; escalation; resolved; new incident
    assert got == [
        "warning",
        None,
        None,
        None,
        None,
        None,
        "warning",
        "critical",
        None,
        "resolved",
        "warning",
        "resolved",
    ]
    assert severity(0.7, 0.85, 0.75, higher_is_worse=False) == "critical"


def test_anomaly_event_matches_the_published_schema() -> None:
    schema = json.loads((ROOT / "schemas" / "json" / "anomaly_event.schema.json").read_text())
    t = dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc)
    ev = anomaly_event(
        model="fraud",
        version="v1",
        signal="amount",
        detector="psi",
        statistic=0.31,
        threshold=0.25,
        severity="critical",
        window_start=t,
        window_end=t + dt.timedelta(minutes=5),
        sample_size=1500,
    )
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(ev)
    assert ev["type"] == "predaudit.anomaly.feature_drift"
    assert pubsub_attributes(ev) == {
        "model": "fraud",
        "version": "v1",
        "severity": "critical",
        "type": ev["type"],
    }
    again = anomaly_event(
        model="fraud",
        version="v1",
        signal="amount",
        detector="psi",
        statistic=0.4,
        threshold=0.25,
        severity="critical",
        window_start=t,
        window_end=t + dt.timedelta(minutes=5),
        sample_size=1500,
    )
    assert again["id"] == ev["id"]  # a retried window publishes the same id


def test_reference_build_cli_and_drift_on_the_shifted_feature_only(tmp_path: pathlib.Path) -> None:
    base, drift = tmp_path / "base.jsonl", tmp_path / "drift.jsonl.gz"
    out = io.StringIO()
    assert main(["simulate", "--events", "3000", "--seed", "1", "--out", str(base)], out) == 0
    assert (
        main(
            [
                "simulate",
                "--events",
                "3000",
                "--seed",
                "2",
                "--drift-at",
                "0",
                "--drift-feature",
                "amount",
                "--drift-shift",
                "1",
                "--out",
                str(drift),
            ],
            out,
        )
        == 0
    )
    ref_path = tmp_path / "ref.json"
    assert (
        main(["reference", "build", "--input", str(base), "--model", "fraud", "--out", str(ref_path)], out)
        == 0
    )
    doc = json.loads(ref_path.read_text())
    assert doc["version"] == "2026-02-15" and doc["events"] == 3000
    refs = load_reference(doc)
    assert {"amount", "country", "prediction.score", "prediction.label", "latency_ms"} <= set(refs)
    import gzip

    dec = Decoders()
    events = [dec.prediction(line)[0] for line in gzip.open(drift).read().splitlines()]
    amount = psi(refs["amount"].expected, refs["amount"].bins([e.features["amount"] for e in events]))
    hour = psi(
        refs["hour_of_day"].expected, refs["hour_of_day"].bins([e.features["hour_of_day"] for e in events])
    )
    assert amount > 0.25 and hour < 0.1
    assert (
        main(
            [
                "reference",
                "build",
                "--input",
                str(base),
                "--model",
                "fraud",
                "--version",
                "nope",
                "--out",
                str(tmp_path / "x.json"),
            ],
            out,
        )
        == 2
    )
