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


def main() -> None:
    print(f"predaudit bench ({pathlib.Path.cwd().name}), best of {REPEAT} runs per figure")
    bench_decode()


if __name__ == "__main__":
    main()
