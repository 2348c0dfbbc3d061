"""The detection scenarios are what they claim: valid events, deterministic, the change is where
the truth says and of the stated size, nothing changes where it must not."""

from __future__ import annotations

import statistics

import orjson
import pytest

from schemas import Decoders
from schemas.specs import QualityChecker
from tests.bench.detection_scenarios import BUILDERS, build, reference_doc

SCALE = 0.05


@pytest.mark.parametrize("name", list(BUILDERS))
def test_events_are_valid_and_deterministic(name: str) -> None:
    sc, again = build(name, SCALE), build(name, SCALE)
    dec = Decoders()
    events = list(sc.events())
    assert [orjson.dumps(e) for e in events[:300]] == [orjson.dumps(e) for e in list(again.events())[:300]]
    assert len(events) == sc.events_total
    checkers = {p.model: QualityChecker(p.spec()) for p in sc.plans}
    last: dict[str, str] = {}
    for e in events[:: max(len(events) // 2000, 1)]:
        ev, _ = dec.prediction(orjson.dumps(e))
        assert checkers[ev.model.name].check(ev.features) == [], e
    for e in events:
        name_ = e["model"]["name"]
        assert last.get(name_, "") <= e["event_time"]
        last[name_] = e["event_time"]
    assert sorted(sc.specs()) == sorted(p.model for p in sc.plans if p.has_spec)


def test_other_seed_other_events() -> None:
    a = next(build("ramp", SCALE).events())
    b = next(build("ramp", SCALE, seed=99).events())
    assert a["features"] != b["features"]


def _values(events, feature: str) -> list[float]:
    return [e["features"][feature] for e in events if e["features"].get(feature) is not None]


@pytest.mark.parametrize(("name", "size"), [("shift_0.25sd", 0.25), ("low_traffic", 1.0), ("no_spec", 1.0)])
def test_step_is_where_and_as_big_as_the_truth_says(name: str, size: float) -> None:
    sc = build(name, 0.3)
    (truth,) = sc.truths
    plan = next(p for p in sc.plans if p.model == truth.model)
    events = list(plan.stream())
    assert events[truth.onset_index]["event_time"] == plan.time_of(truth.onset_index).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")
    sd = next(f.sd for f in plan.features if f.name == truth.feature)
    before = _values(events[: truth.onset_index], truth.feature)
    after = _values(events[truth.onset_index :], truth.feature)
    effect = (statistics.fmean(after) - statistics.fmean(before)) / sd
    assert abs(effect - size) < 0.08, effect
    other = next(f.name for f in plan.features if f.name != truth.feature and f.kind == "gauss")
    osd = next(f.sd for f in plan.features if f.name == other)
    quiet = (statistics.fmean(_values(events[truth.onset_index :], other)) - statistics.fmean(_values(events[: truth.onset_index], other))) / osd  # fmt: skip
    assert abs(quiet) < 0.08, quiet


def test_ramp_grows_linearly_then_stays() -> None:
    sc = build("ramp", 0.25)
    (truth,) = sc.truths
    plan = sc.plans[0]
    ev = list(plan.stream())
    length = plan.drift.length
    sd = next(f.sd for f in plan.features if f.name == truth.feature)
    base = statistics.fmean(_values(ev[: truth.onset_index], truth.feature))

    def effect(a: int, b: int) -> float:
        return (statistics.fmean(_values(ev[a:b], truth.feature)) - base) / sd

    o = truth.onset_index
    assert abs(effect(o, o + length // 10)) < 0.12  # the start of the ramp: ~0.05 sd
    assert abs(effect(o + length // 2 - 1000, o + length // 2 + 1000) - 0.5) < 0.1
    assert abs(effect(o + length, len(ev)) - 1.0) < 0.08


def test_optional_feature_turns_null() -> None:
    sc = build("optional_nulls", 0.5)
    (truth,) = sc.truths
    ev = list(sc.events())

    def null_share(part) -> float:
        return sum(e["features"].get(truth.feature) is None for e in part) / len(part)

    assert null_share(ev[: truth.onset_index]) == pytest.approx(0.02, abs=0.01)
    assert null_share(ev[truth.onset_index :]) == pytest.approx(0.30, abs=0.02)
    # both ways of being missing occur: an explicit null and a left-out key
    after = ev[truth.onset_index :]
    assert any(truth.feature not in e["features"] for e in after)
    assert any(truth.feature in e["features"] and e["features"][truth.feature] is None for e in after)


def test_daily_cycle_has_the_stated_amplitude_and_reference_is_the_day_before() -> None:
    sc = build("daily_cycle", 0.1)
    plan = sc.plans[0]
    assert sc.truths == () and sc.expect == "quiet" and plan.seasonality == "daily"
    ref = list(plan.reference())
    assert ref[0]["event_time"] == "2026-02-28T00:00:00.000Z" and ref[-1]["event_time"] < "2026-03-01"
    ev = list(plan.stream())
    assert ev[-1]["event_time"].startswith("2026-03-02T23:")
    load = next(f for f in plan.features if f.name == "load")

    def hour_mean(h: int) -> float:
        return statistics.fmean(e["features"]["load"] for e in ev if int(e["event_time"][11:13]) == h)

    # sin peaks at 06:00 and troughs at 18:00 (UTC): peak - trough = 2 amplitudes = 2 sd
    assert (hour_mean(6) - hour_mean(18)) / load.sd == pytest.approx(2.0, abs=0.15)
    assert sc.window_s == 3000 and len(ev) / (2 * 86400 / sc.window_s) == pytest.approx(600, rel=0.01)


def test_two_models_only_one_drifts_and_no_spec_has_no_spec() -> None:
    sc = build("two_models", SCALE)
    assert [t.model for t in sc.truths] == ["sc_pair_b"]
    names = [e["model"]["name"] for e in list(sc.events())[:100]]
    assert names.count("sc_pair_a") == names.count("sc_pair_b") == 50
    ns = build("no_spec", SCALE)
    assert ns.specs() == {} and ns.plans[0].reference_events == 0


def test_wide_stationary_has_heavy_tails_and_counts() -> None:
    (plan,) = build("stationary_wide", SCALE).plans
    assert len(plan.features) >= 30
    kinds = {f.kind for f in plan.features}
    assert {"lognormal", "poisson", "gauss", "categorical", "boolean"} <= kinds
    ev = list(plan.stream())
    counts = _values(ev, "cnt3")
    assert all(isinstance(v, int) for v in counts)
    heavy = sorted(_values(ev, "ln3"))
    assert heavy[-1] > 5 * heavy[len(heavy) // 2]  # a long right tail


def test_reference_doc_builds_from_the_reference_part() -> None:
    for sc in (build("stationary_wide", SCALE), build("two_models", SCALE)):
        for plan in sc.plans:
            if plan.has_spec:
                doc = reference_doc(plan)
                assert doc["model"] == plan.model and doc["events"] == plan.reference_events
                assert {f.name for f in plan.features if f.kind != "boolean"} <= set(doc["signals"])


# --- the bench's judge (tests/bench/detection.py evaluate_scenario) on known alert rows ---------


def _us(plan, index: int) -> int:
    return int(plan.time_of(index).timestamp() * 1e6)


def _row(plan, signal: str, detector: str, end_index: int, severity: str = "warning") -> tuple:
    return (
        plan.model,
        plan.version,
        signal,
        detector,
        severity,
        _us(plan, end_index - 15_000),
        _us(plan, end_index),
    )


def test_judge_delay_false_alarms_and_targets() -> None:
    from tests.bench.detection import evaluate_scenario

    sc = build("shift_0.25sd", 1.0)  # onset 90,000; 15,000 events per window; target 2 windows
    (plan,) = sc.plans
    onset = sc.truths[0].onset_index
    rows = [
        _row(plan, "f03", "psi", onset),  # ends at the onset: before the change -> false alarm
        _row(plan, "f03", "psi", onset + 30_000),  # the 2nd window after the onset
        _row(plan, "f07", "psi", onset + 15_000),  # another feature -> false alarm
        ("other_model", "v1", "f03", "psi", "warning", 0, 10**18),  # not this scenario's
    ]
    r = evaluate_scenario(sc, rows)
    assert (r.detected, r.first, r.delay_events, r.delay_windows) == (True, ("f03", "psi"), 30_000, 2)
    assert r.false_alarms == 2 and not r.met and r.why == "false alarms"
    assert r.false_alarms_per_100k == pytest.approx(2 * 100_000 / 150_000)
    ok = evaluate_scenario(sc, rows[1:2])
    assert ok.met and ok.false_alarms == 0
    late = evaluate_scenario(sc, [_row(plan, "f03", "psi", onset + 45_000)])
    assert not late.met and late.why == "3 windows > 2"
    # ADWIN: its detection time plus the confirmation values it measures before alerting
    adwin = evaluate_scenario(sc, [_row(plan, "f03", "adwin", onset + 100)], confirm_events=200)
    assert (adwin.delay_events, adwin.delay_windows, adwin.met) == (300, 1, True)
    missed = evaluate_scenario(sc, [])
    assert (missed.detected, missed.met, missed.why) == (False, False, "not detected: sc_shift")


def test_judge_quiet_and_two_model_scenarios() -> None:
    from tests.bench.detection import evaluate_scenario

    quiet = build("stationary_wide", SCALE)
    (plan,) = quiet.plans
    assert evaluate_scenario(quiet, []).met
    r = evaluate_scenario(quiet, [_row(plan, "ln3", "adwin", 20_000)])
    assert (r.detected, r.false_alarms, r.met) == (None, 1, False)
    pair = build("two_models", 1.0)
    a, b = pair.plans
    onset = pair.truths[0].onset_index
    caught = [_row(b, "f01", "psi", onset + 7_500)]
    assert evaluate_scenario(pair, caught).met
    # the unchanged model alerting on the very feature that changed in the other: a false alarm
    r = evaluate_scenario(pair, [*caught, _row(a, "f01", "psi", onset + 7_500)])
    assert r.false_alarms == 1 and not r.met


def test_judge_matches_signals_that_name_the_feature() -> None:
    from tests.bench.detection import evaluate_scenario

    sc = build("optional_nulls", 1.0)
    (plan,) = sc.plans
    onset = sc.truths[0].onset_index
    for signal in ("opt", "opt.null_rate", "null_rate:opt"):
        assert evaluate_scenario(sc, [_row(plan, signal, "missing", onset + 15_000)]).met, signal
    assert not evaluate_scenario(sc, [_row(plan, "options", "missing", onset + 15_000)]).detected
    low = build("low_traffic", 1.0)  # target: 6 h of event time at 20 events / min
    (lp,) = low.plans
    lo = low.truths[0].onset_index
    assert evaluate_scenario(low, [_row(lp, "f01", "psi", lo + 7_200)]).met  # 6 h = 7,200 events
    r = evaluate_scenario(low, [_row(lp, "f01", "psi", lo + 7_300)])
    assert not r.met and r.why.startswith("6.1 h > 6 h")
