"""Detection quality: simulated streams with known change points through the replay pipeline.

Every scenario is one model version of ``fraud`` in a single stream (monitors are keyed by
(model, version), so scenarios do not see each other): a stationary prefix, then a change at a
window boundary. The real pipeline (validate -> rows -> MonitorDrift / MonitorAdwin) runs
with the default spec settings; detections and false alarms are read back from the
``anomalies`` table in chDB. ``make bench`` prints the table; a test asserts the targets on a
smaller stream.

The second table runs the issue #11 scenarios (``tests/bench/detection_scenarios.py``: wide
stationary, daily cycle, ramp, 0.25 sd shift, low traffic, optional nulls, two models, a model
without a spec) through the same replay pipeline, each model with its own spec and a reference
built from the stretch before its stream, and judges each against its target (detected, delay
in events / windows / hours, false alarms per 100k events, MET or MISSED). The same events are
replayed again with ``--monitors=off`` for the throughput ratio.
``python -m tests.bench.detection --quick`` runs both at a quarter of the size.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import orjson

SPECS = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "models"
START = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
CONFIRM_EVENTS = 200  # the spec default (monitors.adwin.confirm_events)


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # SimConfig.drift_kind
    feature: str | None
    shift: float
    #: (signal, detector) pairs expected to fire after the onset
    targets: tuple[tuple[str, str], ...]
    label_fraction: float = 0.0


SCENARIOS = (
    Scenario("mean +0.5 sd (amount)", "mean", "amount", 0.5, (("amount", "psi"), ("amount", "adwin"))),
    Scenario("mean +1 sd (amount)", "mean", "amount", 1.0, (("amount", "psi"), ("amount", "adwin"))),
    Scenario("variance x2 (distance_km)", "variance", "distance_km", 2.0, (("distance_km", "psi"), ("distance_km", "adwin"))),
    Scenario("category mix (merchant_category)", "mean", "merchant_category", 1.0, (("merchant_category", "psi"),)),
    Scenario("score shift (+1 logit)", "score", None, 1.0, (("prediction.score", "psi"), ("prediction.score", "adwin"))),
    Scenario("latency regression x8", "latency", None, 8.0, (("latency_over_slo", "latency"), ("latency_ms", "adwin"), ("latency_ms", "psi"))),
    Scenario("traffic drop to 1/20", "traffic", None, 20.0, (("events", "traffic"),)),
    Scenario("concept drift (labels flip)", "concept", None, 1.0,
             (("accuracy", "accuracy"), ("prediction.error", "adwin")), label_fraction=0.5),
)  # fmt: skip


@dataclasses.dataclass
class Result:
    scenario: Scenario
    signal: str
    detector: str
    detected: bool
    delay_events: int | None
    delay_windows: int | None


def write_stream(
    path: pathlib.Path, labels: pathlib.Path, prefix: int, post: int, rate: float, scenarios=SCENARIOS
) -> None:
    from schemas.simulate import SimConfig, Simulator
    from schemas.specs import load_specs

    spec = load_specs(SPECS)["fraud"]
    with path.open("wb") as fh, labels.open("wb") as lh:
        for i, sc in enumerate(scenarios):
            cfg = SimConfig(
                version=f"s{i}",
                events=prefix + post,
                seed=100 + i,
                start=START,
                rate_per_s=rate,
                drift_at=prefix,
                drift_feature=sc.feature,
                drift_shift=sc.shift,
                drift_kind=sc.kind,
                label_fraction=sc.label_fraction,
            )
            for line in Simulator(spec, cfg).lines():
                fh.write(line.raw + b"\n")
                if line.label is not None:
                    lh.write(line.label + b"\n")


def write_reference(refs: pathlib.Path, events: int = 20000) -> None:
    """The reference every version is compared with: a clean sample of the same simulator."""
    from schemas import Decoders
    from schemas.simulate import SimConfig, Simulator
    from schemas.specs import load_specs
    from transforms.monitors.reference import build_reference

    spec = load_specs(SPECS)["fraud"]
    dec = Decoders()
    sample = (dec.prediction(ln.raw)[0] for ln in Simulator(spec, SimConfig(events=events, seed=1)).lines())
    refs.mkdir(exist_ok=True)
    (refs / "fraud.json").write_bytes(orjson.dumps(build_reference(sample, spec, "*")))


def run_replay(
    stream: pathlib.Path,
    labels: pathlib.Path | None,
    refs: pathlib.Path,
    dsn: str,
    database: str,
    window_s: int,
    specs: pathlib.Path = SPECS,
    monitors: str = "on",
) -> None:
    """The replay pipeline over ``stream`` (and ``labels``) into chDB, default monitor settings."""
    import apache_beam as beam

    from pipelines.options import AuditOptions
    from pipelines.replay import build

    opts = AuditOptions(
        [
            f"--input={stream}",
            *([f"--labels_input={labels}"] if labels is not None else []),
            f"--clickhouse_dsn={dsn}",
            f"--clickhouse_database={database}",
            f"--model_specs={specs}",
            f"--references={refs}",
            f"--monitor_window_s={window_s}",
            f"--monitors={monitors}",
        ]
    )
    with beam.Pipeline(options=opts) as p:
        build(p, opts)


def evaluate(
    client, database: str, prefix: int, rate: float, window_s: int, scenarios=SCENARIOS
) -> tuple[list[Result], dict[str, int]]:
    """Detections per target and false alarms (any signal, any detector) before the onset."""
    onset = START + dt.timedelta(seconds=prefix / rate)
    onset_us = int(onset.timestamp() * 1e6)
    rows = client.query(
        f"SELECT model_version, signal, detector, severity, toUnixTimestamp64Micro(window_start),"
        f" toUnixTimestamp64Micro(window_end), current FROM `{database}`.anomalies"
    ).result_rows
    results, false_alarms = [], {}
    details: list[tuple] = []
    for i, sc in enumerate(scenarios):
        mine = [r for r in rows if r[0] == f"s{i}" and r[3] in ("warning", "critical")]
        # a window alert is before the onset when its window ends by then; ADWIN by its detection time
        early = [r for r in mine if r[5] <= onset_us]
        false_alarms[sc.name] = len(early)
        details.extend((sc.name, r[1], r[2], r[3], r[6][:120]) for r in early)
        for signal, detector in sc.targets:
            hits = sorted(
                (r for r in mine if r[1] == signal and r[2] == detector and r[5] > onset_us),
                key=lambda r: r[5],
            )
            if not hits:
                results.append(Result(sc, signal, detector, False, None, None))
                continue
            first = hits[0]
            if detector == "adwin":
                # detection time -> events since the onset; the alert comes once the change is
                # measured on CONFIRM_EVENTS more values of the series (labelled ones for errors)
                per_value = 1.0 / sc.label_fraction if signal == "prediction.error" else 1.0
                delay_events = (
                    int(round((first[5] - onset_us) / 1e6 * rate)) + 1 + int(CONFIRM_EVENTS * per_value)
                )
                delay_windows = None
            else:
                end = first[5]
                delay_windows = int(round((end - onset_us) / (window_s * 1e6)))
                rate_after = rate / sc.shift if sc.kind == "traffic" else rate
                delay_events = int((end - onset_us) / 1e6 * rate_after)
            results.append(Result(sc, signal, detector, True, delay_events, delay_windows))
    evaluate.details = details  # type: ignore[attr-defined]
    return results, false_alarms


def table(results: list[Result], false_alarms: dict[str, int], prefix: int) -> str:
    lines = [
        f"{'scenario':<34}{'signal':<19}{'detector':<10}{'detected':<10}{'delay events':>13}{'delay windows':>15}"
        f"{'false alarms':>14}",
    ]
    seen = set()
    for r in results:
        fa = "" if r.scenario.name in seen else str(false_alarms[r.scenario.name])
        seen.add(r.scenario.name)
        lines.append(
            f"{r.scenario.name:<34}{r.signal:<19}{r.detector:<10}{'yes' if r.detected else 'NO':<10}"
            f"{'' if r.delay_events is None else r.delay_events:>13}"
            f"{'' if r.delay_windows is None else r.delay_windows:>15}{fa:>14}"
        )
    lines.append(
        f"(false alarms: anomalies on any signal/detector within the {prefix:,}-event stationary prefix)"
    )
    return "\n".join(lines)


# --- issue #11 scenarios (tests/bench/detection_scenarios.py): one model per stream, own specs ---


@dataclasses.dataclass
class ScenarioResult:
    """One scenario's outcome. ``first``: the earliest alert naming the changed feature after
    the onset (signal, detector); delays are measured from the onset to that alert."""

    scenario: Any
    detected: bool | None  # None: a quiet scenario (nothing should be detected)
    first: tuple[str, str] | None
    delay_events: int | None
    delay_windows: int | None
    delay_s: float | None
    false_alarms: int
    false_alarm_details: list[tuple]
    met: bool
    why: str

    @property
    def false_alarms_per_100k(self) -> float:
        return self.false_alarms * 100_000 / max(self.scenario.events_total, 1)


def names_feature(signal: str, feature: str) -> bool:
    """An alert's signal names a feature (``f03``, ``f03.null_rate``, ``null_rate:f03``).

    >>> names_feature("f03", "f03"), names_feature("missing:opt", "opt"), names_feature("f030", "f03")
    (True, True, False)
    """
    return feature in re.split(r"[^A-Za-z0-9_]+", signal)


def write_scenarios(
    root: pathlib.Path, scenarios: Sequence[Any]
) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """Stream, spec folder and reference folder for ``scenarios`` (models without a spec get
    neither a spec nor a reference; a model with an empty reference part gets no reference)."""
    from tests.bench.detection_scenarios import reference_doc

    specs, refs, stream = root / "specs", root / "refs", root / "scenarios.jsonl"
    specs.mkdir(parents=True, exist_ok=True)
    refs.mkdir(parents=True, exist_ok=True)
    for sc in scenarios:
        for plan in sc.plans:
            if plan.has_spec:
                (specs / f"{plan.model}.yaml").write_text(plan.spec_yaml())
                if plan.reference_events:
                    (refs / f"{plan.model}.json").write_bytes(orjson.dumps(reference_doc(plan)))
    with stream.open("wb") as fh:
        for sc in scenarios:
            for ev in sc.events():
                fh.write(orjson.dumps(ev) + b"\n")
    return stream, specs, refs


def alerts(client, database: str) -> list[tuple]:
    """(model, version, signal, detector, severity, window_start us, window_end us) of every
    warning/critical anomaly."""
    return client.query(
        f"SELECT model_name, model_version, signal, detector, severity,"
        f" toUnixTimestamp64Micro(window_start), toUnixTimestamp64Micro(window_end)"
        f" FROM `{database}`.anomalies WHERE severity IN ('warning', 'critical')"
    ).result_rows


def evaluate_scenario(sc: Any, rows: Sequence[tuple], confirm_events: int = CONFIRM_EVENTS) -> ScenarioResult:
    """Judge one scenario on the alerts of its models.

    A false alarm is an alert of a model that does not change, an alert that ends by the
    onset, or one after it that names no changed feature. The alert time of a window detector
    is its window end; ADWIN's is its detection time plus the ``confirm_events`` values it
    measures the effect on before alerting.
    """
    plans = {p.model: p for p in sc.plans}
    truths = {t.model: t for t in sc.truths}
    mine = [r for r in rows if r[0] in plans]
    false, hits = [], []
    for r in mine:
        model, signal, detector, end_us = r[0], r[2], r[3], r[6]
        t = truths.get(model)
        onset_us = int(t.onset_time.timestamp() * 1e6) if t else None
        if t is None or end_us <= onset_us or not names_feature(signal, t.feature):
            false.append((model, signal, detector, r[4], r[5], end_us))
            continue
        delay_s = (end_us - onset_us) / 1e6 + (
            confirm_events / plans[model].rate_per_s if detector == "adwin" else 0
        )
        hits.append((delay_s, model, signal, detector))
    fa = len(false)
    if sc.expect == "quiet":
        met = fa == 0
        return ScenarioResult(sc, None, None, None, None, None, fa, false, met, "" if met else "false alarms")
    by_model: dict[str, tuple] = {}
    for h in sorted(hits):
        by_model.setdefault(h[1], h)
    missing = [m for m in truths if m not in by_model]
    if missing:
        return ScenarioResult(
            sc, False, None, None, None, None, fa, false, False, f"not detected: {', '.join(missing)}"
        )
    worst = max(by_model.values())  # every changed model must be caught: the slowest one counts
    delay_s, model, signal, detector = worst
    rate = plans[model].rate_per_s
    delay_events = int(round(delay_s * rate))
    delay_windows = math.ceil(delay_s / sc.window_s - 1e-9)
    why = []
    if sc.max_windows is not None and delay_windows > sc.max_windows:
        why.append(f"{delay_windows} windows > {sc.max_windows}")
    if sc.max_events is not None and delay_events > sc.max_events:
        why.append(f"{delay_events:,} events > {sc.max_events:,}")
    if sc.max_seconds is not None and delay_s > sc.max_seconds:
        why.append(f"{delay_s / 3600:.1f} h > {sc.max_seconds / 3600:g} h")
    if fa:
        why.append("false alarms")
    return ScenarioResult(
        sc, True, (signal, detector), delay_events, delay_windows, delay_s, fa, false, not why, "; ".join(why)
    )


def scenario_table(results: Sequence[ScenarioResult]) -> str:
    lines = [
        f"{'scenario':<46}{'detected':<9}{'by (signal/detector)':<26}{'delay ev':>10}{'win':>5}{'hours':>7}"
        f"{'FA':>5}{'FA/100k':>9}  {'target':<30}{'result'}"
    ]
    for r in results:
        det = "-" if r.detected is None else ("yes" if r.detected else "NO")
        by = f"{r.first[0]}/{r.first[1]}" if r.first else ""
        lines.append(
            f"{r.scenario.name:<46}{det:<9}{by:<26}"
            f"{'' if r.delay_events is None else f'{r.delay_events:,}':>10}"
            f"{'' if r.delay_windows is None else r.delay_windows:>5}"
            f"{'' if r.delay_s is None else f'{r.delay_s / 3600:.2f}':>7}"
            f"{r.false_alarms:>5}{r.false_alarms_per_100k:>9.1f}  {r.scenario.target:<30}"
            f"{'MET' if r.met else 'MISSED'}{f' ({r.why})' if r.why else ''}"
        )
    lines.append(
        "(delay: onset -> first alert naming the changed feature; ADWIN alerts count their confirmation"
        " events; FA: alerts on unchanged models, before the onset, or on other signals)"
    )
    return "\n".join(lines)


def run_scenarios(
    root: pathlib.Path,
    client,
    dsn: str,
    scenarios: Sequence[Any],
    database: str = "scenarios",
    baseline: bool = False,
) -> tuple[list[ScenarioResult], float, float | None]:
    """Write, replay (one pipeline per window size) and judge ``scenarios``. Returns the
    results, the replay seconds with monitors and, with ``baseline``, the seconds of the same
    replay with ``--monitors=off`` (same files, same run, another database)."""
    import time

    from schemas.tables import create_clickhouse_tables

    results: list[ScenarioResult] = []
    seconds, off = 0.0, 0.0
    for window_s in sorted({sc.window_s for sc in scenarios}):
        group = [sc for sc in scenarios if sc.window_s == window_s]
        db = f"{database}_{window_s}"
        stream, specs, refs = write_scenarios(root / db, group)
        for mode in ("on", "off") if baseline else ("on",):
            client.command(f"CREATE DATABASE IF NOT EXISTS `{db}_{mode}`")
            create_clickhouse_tables(client, f"{db}_{mode}")
            t0 = time.perf_counter()
            run_replay(stream, None, refs, dsn, f"{db}_{mode}", window_s, specs, mode)
            if mode == "on":
                seconds += time.perf_counter() - t0
            else:
                off += time.perf_counter() - t0
        rows = alerts(client, f"{db}_on")
        results.extend(evaluate_scenario(sc, rows) for sc in group)
    return results, seconds, (off if baseline else None)


def scenarios_main(scale: float = 1.0) -> list[ScenarioResult]:
    """The issue #11 scenario table and monitors-on vs -off throughput over the same events."""
    import os
    import tempfile

    import clickhouse_connect

    from tests.bench.detection_scenarios import all_scenarios

    os.environ.setdefault("PREDAUDIT_PII_KEY", "bench-key-0123456789abcdef")
    scenarios = all_scenarios(scale)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        dsn = f"chdb://{root / 'chdb'}"
        client = clickhouse_connect.get_client(dsn=dsn)
        results, seconds, off = run_scenarios(root, client, dsn, scenarios, baseline=True)
    n = sum(sc.events_total for sc in scenarios)
    print(
        f"\ndetection scenarios (issue #11), scale {scale:g}: {len(scenarios)} scenarios, {n:,} events,"
        f" default spec settings, references from each stream's preceding stretch; replay took {seconds:.0f} s"
    )
    print(scenario_table(results))
    for r in results:
        for d in r.false_alarm_details[:5]:
            print(f"  false alarm [{r.scenario.name}]:", *d[:4])
        if len(r.false_alarm_details) > 5:
            print(f"  ... {len(r.false_alarm_details) - 5} more false alarms [{r.scenario.name}]")
    print(
        f"throughput over these {n:,} events: monitors off {n / off:,.0f} events/s ({off:.0f} s),"
        f" on {n / seconds:,.0f} events/s ({seconds:.0f} s); ratio on/off = {off / seconds:.2f}  (target >= 0.5)"
    )
    return results


def legacy_main(prefix: int = 105_000, post: int = 45_000, rate: float = 50.0, window_s: int = 300) -> None:
    import os
    import tempfile
    import time

    import clickhouse_connect

    from schemas.tables import create_clickhouse_tables

    os.environ.setdefault("PREDAUDIT_PII_KEY", "bench-key-0123456789abcdef")
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        stream, labels, refs = root / "stream.jsonl", root / "labels.jsonl", root / "refs"
        write_stream(stream, labels, prefix, post, rate)
        write_reference(refs)
        dsn = f"chdb://{root / 'chdb'}"
        client = clickhouse_connect.get_client(dsn=dsn)
        client.command("CREATE DATABASE detection")
        create_clickhouse_tables(client, "detection")
        t0 = time.perf_counter()
        run_replay(stream, labels, refs, dsn, "detection", window_s)
        seconds = time.perf_counter() - t0
        results, fa = evaluate(client, "detection", prefix, rate, window_s)
    n = (prefix + post) * len(SCENARIOS)
    print(
        f"\ndetection quality: {len(SCENARIOS)} scenarios x ({prefix:,} stationary + {post:,} changed) events,"
        f" {window_s} s windows ({int(window_s * rate):,} events each), default spec settings;"
        f" replay of {n:,} events took {seconds:.0f} s"
    )
    print(table(results, fa, prefix))
    for d in evaluate.details:  # type: ignore[attr-defined]
        print("  false alarm:", *d)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.bench.detection [--quick] [--scale S] [--only scenarios|legacy]``: the
    per-kind table (existing targets) and the issue #11 scenario table. ``make bench`` calls it
    without arguments; $BENCH_DETECTION_SCALE sets the scenario scale there (default 1)."""
    import argparse
    import os

    ap = argparse.ArgumentParser(prog="tests.bench.detection")
    ap.add_argument("--quick", action="store_true", help="scenario scale 0.25, legacy table 30k+15k events")
    ap.add_argument("--scale", type=float, default=None, help="scenario scale (default 1; --quick 0.25)")
    ap.add_argument("--only", choices=["scenarios", "legacy"], default=None)
    args = ap.parse_args([] if argv is None else argv)
    scale = float(os.environ.get("BENCH_DETECTION_SCALE", "1")) if args.scale is None else args.scale
    if args.quick and args.scale is None:
        scale = 0.25
    if args.only != "scenarios":
        legacy_main(*((30_000, 15_000) if args.quick else ()))
    if args.only != "legacy":
        scenarios_main(scale)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
