"""Detection targets on seeded simulated streams (the same harness as `make bench`, smaller)."""

from __future__ import annotations

from schemas.tables import create_clickhouse_tables
from tests.bench.detection import SCENARIOS, evaluate, run_replay, write_reference, write_stream

PREFIX, POST, RATE, WINDOW_S = 15_000, 6_000, 50.0, 60  # 3,000 events per window


def test_detection_targets(tmp_path, chdb_path, chdb_client, ch_database) -> None:
    create_clickhouse_tables(chdb_client, ch_database)
    stream, labels, refs = tmp_path / "s.jsonl", tmp_path / "l.jsonl", tmp_path / "refs"
    write_stream(stream, labels, PREFIX, POST, RATE)
    write_reference(refs)
    run_replay(stream, labels, refs, f"chdb://{chdb_path}", ch_database, WINDOW_S)
    results, false_alarms = evaluate(chdb_client, ch_database, PREFIX, RATE, WINDOW_S)
    by = {(r.scenario.name, r.signal, r.detector): r for r in results}

    assert false_alarms == {sc.name: 0 for sc in SCENARIOS}, "alerts on the stationary prefix"
    half_sd = "mean +0.5 sd (amount)"
    assert by[(half_sd, "amount", "psi")].detected and by[(half_sd, "amount", "psi")].delay_windows <= 2
    assert by[(half_sd, "amount", "adwin")].detected and by[(half_sd, "amount", "adwin")].delay_events <= 500
    for key in (
        ("traffic drop to 1/20", "events", "traffic"),
        ("latency regression x8", "latency_over_slo", "latency"),
        ("concept drift (labels flip)", "accuracy", "accuracy"),
    ):
        assert by[key].detected and by[key].delay_windows == 1, by[key]  # the first full window
    for key in (
        ("mean +1 sd (amount)", "amount", "adwin"),
        ("score shift (+1 logit)", "prediction.score", "psi"),
        ("category mix (merchant_category)", "merchant_category", "psi"),
        ("variance x2 (distance_km)", "distance_km", "psi"),
        ("concept drift (labels flip)", "prediction.error", "adwin"),
    ):
        assert by[key].detected, key
