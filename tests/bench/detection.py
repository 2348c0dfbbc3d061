"""Detection quality: simulated streams with known change points through the replay pipeline.

Every scenario is one model version of ``fraud`` in a single stream (monitors are keyed by
(model, version), so scenarios do not see each other): a stationary prefix, then a change at a
window boundary. The real pipeline (validate -> rows -> MonitorDrift / MonitorAdwin) runs
with the default spec settings; detections and false alarms are read back from the
``anomalies`` table in chDB. ``make bench`` prints the table; a test asserts the targets on a
smaller stream.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib

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
    stream: pathlib.Path, labels: pathlib.Path, refs: pathlib.Path, dsn: str, database: str, window_s: int
) -> None:
    import apache_beam as beam

    from pipelines.options import AuditOptions
    from pipelines.replay import build

    opts = AuditOptions(
        [
            f"--input={stream}",
            f"--labels_input={labels}",
            f"--clickhouse_dsn={dsn}",
            f"--clickhouse_database={database}",
            f"--model_specs={SPECS}",
            f"--references={refs}",
            f"--monitor_window_s={window_s}",
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


def main(prefix: int = 105_000, post: int = 45_000, rate: float = 50.0, window_s: int = 300) -> None:
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


if __name__ == "__main__":
    main()
