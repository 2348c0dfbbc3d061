"""`make bench`: throughput figures printed next to a baseline measured in the same run.

Not a test: nothing here asserts a speed. Figures go into closing notes.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import orjson

from schemas import REFERENCE_EVENT, Decoders
from schemas.specs import PiiKey, PiiRedactor, QualityChecker, parse_spec
from transforms.rows import prediction_row

REPEAT = 5


def rate(fn: Callable[[], object], n: int) -> float:
    """Best-of-REPEAT events/s for ``n`` calls of ``fn``."""
    best = float("inf")
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def reference_spec():
    feats = [f"  - {{name: num_{i:02d}, type: numeric, range: [-5, 5]}}" for i in range(20)]
    feats += [
        "  - {name: country, type: categorical, categories: [DE, FR, US]}",
        "  - {name: channel, type: categorical, categories: [web, mobile_app]}",
        "  - {name: merchant_category, type: categorical, categories: [electronics, grocery]}",
        "  - {name: email, type: text, pii: hash, required: false}",
    ]
    return parse_spec("name: fraud\nfeatures:\n" + "\n".join(feats))


def bench_decode(n: int = 100_000) -> None:
    raw = REFERENCE_EVENT
    dec = Decoders()
    ev, ts = dec.prediction(raw)
    spec = reference_spec()
    checker = QualityChecker(spec)
    redactor = PiiRedactor(spec, PiiKey(b"bench-key-0123456789abcdef"))
    pii_features = {**ev.features, "email": "someone@example.com"}

    base = rate(lambda: orjson.loads(raw), n)
    decode = rate(lambda: dec.prediction(raw), n)
    checks = rate(lambda: checker.check(ev.features), n)
    pii = rate(lambda: redactor.apply(pii_features), n)
    row = rate(lambda: prediction_row(ev, ts, raw, ingest_time=ts, quality_issues=[], redactor=redactor), n)
    print(f"reference event: {len(raw)} bytes, {len(ev.features)} features (20 numeric + 3 categorical)")
    print(f"{'step':<42}{'events/s':>14}{'us/event':>10}")
    for name, r in [
        ("baseline: orjson.loads (same bytes)", base),
        ("decode_prediction (msgspec, validated)", decode),
        ("spec quality checks (23 features)", checks),
        ("PII redaction (1 hashed feature)", pii),
        ("audit row encoding (+PII)", row),
    ]:
        print(f"{name:<42}{r:>14,.0f}{1e6 / r:>10.2f}")
    print(f"ratio decode_prediction / orjson.loads = {decode / base:.2f}  (target >= 0.5)")


def bench_replay(n: int) -> None:
    """Replay into chDB (monitors off and on) vs a trivial Beam pipeline over the same file."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    import orjson

    from schemas.simulate import SimConfig, Simulator
    from schemas.specs import load_specs
    from transforms.monitors.reference import build_reference

    specs_dir = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "models"
    spec = load_specs(specs_dir)["fraud"]
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        path, refs = pathlib.Path(tmp) / "events.jsonl", pathlib.Path(tmp) / "refs"
        with path.open("wb") as fh:
            for line in Simulator(spec, SimConfig(events=n, seed=1)).lines():
                fh.write(line.raw + b"\n")
        size = path.stat().st_size
        refs.mkdir()
        dec = Decoders()
        sample = (dec.prediction(ln.raw)[0] for ln in Simulator(spec, SimConfig(events=5000, seed=2)).lines())
        (refs / "fraud.json").write_bytes(orjson.dumps(build_reference(sample, spec, spec.versions[0])))
        env = {**os.environ, "PREDAUDIT_PII_KEY": "bench-key-0123456789abcdef"}
        for mode in ("trivial", "replay", "monitors"):
            cmd = [
                sys.executable,
                "-m",
                "tests.bench.replay_bench",
                mode,
                f"--input={path}",
                f"--specs={specs_dir}",
                f"--references={refs}",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            res[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nreplay, {n:,} simulated events ({size / 1e6:.0f} MB), DirectRunner, 1 process")
    print(f"{'pipeline':<56}{'events/s':>12}{'seconds':>10}{'peak MB':>10}")
    for mode, label in (
        ("trivial", "baseline: read + orjson.loads + count"),
        ("replay", "replay: validate+dedup+rows -> chDB (+dead letters)"),
        ("monitors", "replay + drift monitors (PSI/JS/Linf per 300 s window)"),
    ):
        r = res[mode]
        print(f"{label:<56}{n / r['seconds']:>12,.0f}{r['seconds']:>10.1f}{r['peak_rss_mb']:>10.0f}")
    for mode in ("replay", "monitors"):
        assert res[mode]["rows"] == n, res  # a benchmark that loses rows measures nothing
    print(
        f"ratio replay / baseline = {res['trivial']['seconds'] / res['replay']['seconds']:.2f}  (target >= 0.3, goal >= 0.5)"
    )
    print(
        f"ratio monitors on / off = {res['replay']['seconds'] / res['monitors']['seconds']:.2f}  (target >= 0.5)"
    )


def main() -> None:
    import os

    print(f"predaudit bench ({pathlib.Path.cwd().name}), best of {REPEAT} runs per figure")
    bench_decode()
    bench_replay(int(os.environ.get("BENCH_EVENTS", "200000")))
    from tests.bench.detection import main as detection

    detection()
    from tests.bench.views_bench import main as views

    views()  # alone: python -m tests.bench.views_bench


if __name__ == "__main__":
    main()
