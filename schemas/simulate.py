"""Seeded synthetic prediction streams for demos, tests and benchmarks.

Features follow the model spec (numeric within range, categorical from the allowed set,
booleans, PII text); drift can be injected at a known event index; a fraction of lines
can be malformed in the ways real producers break the contract.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
from collections.abc import Iterator

import orjson

from schemas.specs import ModelSpec

#: the malformed-line kinds and the error code each one must produce
BAD_KINDS: dict[str, str] = {
    "truncated_json": "invalid_json",
    "not_json": "invalid_json",
    "wrong_type": "wrong_type",
    "missing_field": "missing_field",
    "nan_literal": "non_finite_number",
    "bad_timestamp": "invalid_timestamp",
    "bad_event_id": "invalid_event_id",
    "unknown_field": "unknown_field",
    "invalid_utf8": "invalid_encoding",
    "not_an_object": "not_an_object",
    "unknown_version": "unknown_schema_version",
}


@dataclasses.dataclass
class SimConfig:
    model: str = "fraud"
    version: str | None = None
    events: int = 1000
    seed: int = 7
    start: dt.datetime = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    rate_per_s: float = 50.0
    drift_at: int | None = None
    drift_feature: str | None = None
    drift_shift: float = 1.0  # in standard deviations (numeric) / mass moved to a rare category
    #: what changes at drift_at: "mean" (drift_feature += shift sd; categorical: mass to the rarest
    #: category), "variance" (drift_feature sd *= shift), "score" (model logit += shift),
    #: "latency" (latency *= shift), "traffic" (event rate /= shift), "concept" (labels flip)
    drift_kind: str = "mean"
    bad_fraction: float = 0.0
    duplicate_fraction: float = 0.0
    label_fraction: float = 0.0
    quality_fraction: float = 0.0  # valid events with one out-of-spec feature value


DRIFT_KINDS = ("mean", "variance", "score", "latency", "traffic", "concept")


@dataclasses.dataclass
class SimLine:
    raw: bytes
    kind: str  # "ok", "duplicate" or a BAD_KINDS key
    event_id: str | None
    label: bytes | None = None


def rfc3339(t: dt.datetime) -> str:
    """An aware datetime as the contract's event time text (UTC, milliseconds, ``Z``).

    >>> rfc3339(dt.datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=dt.timezone.utc))
    '2026-03-01T12:00:00.250Z'
    """
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def prediction_event(
    model: str,
    version: str,
    event_id: str,
    t: dt.datetime,
    features: dict,
    prediction: dict,
    latency_ms: float | None,
    *,
    request_id: str | None = None,
    status: str = "ok",
    host: str | None = None,
) -> dict:
    """A PredictionEvent (contract v1) as a dict; one place that knows the envelope.

    >>> ev = prediction_event("m", "v1", "m-000000001", dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc),
    ...                       {"a": 1.0}, {"score": 0.5}, 12.345)
    >>> ev["event_time"], ev["latency_ms"], ev["model"]
    ('2026-03-01T00:00:00.000Z', 12.35, {'name': 'm', 'version': 'v1'})
    >>> from schemas import Decoders
    >>> Decoders().prediction(orjson.dumps(ev))[0].model.name
    'm'
    """
    ev: dict = {
        "schema_version": "1",
        "event_id": event_id,
        "event_time": rfc3339(t),
        "model": {"name": model, "version": version},
    }
    if request_id is not None:
        ev["request_id"] = request_id
    ev["features"] = features
    ev["prediction"] = prediction
    if latency_ms is not None:
        ev["latency_ms"] = round(latency_ms, 2)
    ev["status"] = status
    ev["metadata"] = {"host": host or f"{model}-pod-0", "region": "europe-west1"}
    return ev


def _numeric_params(lo: float, hi: float) -> tuple[float, float]:
    return lo + (hi - lo) * 0.3, (hi - lo) * 0.08


class Simulator:
    """Generates ``SimLine`` objects; same config and seed -> same bytes.

    >>> from schemas.specs import load_specs
    >>> import schemas.simulate as s, pathlib
    >>> spec = load_specs(pathlib.Path(s.__file__).parent / "models")["fraud"]
    >>> lines = list(Simulator(spec, SimConfig(events=3)).lines())
    >>> [ln.kind for ln in lines]
    ['ok', 'ok', 'ok']
    """

    def __init__(self, spec: ModelSpec, cfg: SimConfig) -> None:
        self.spec, self.cfg = spec, cfg
        self.rng = random.Random(cfg.seed)
        self.version = cfg.version or (spec.versions[0] if spec.versions else "v1")
        if cfg.drift_kind not in DRIFT_KINDS:
            raise ValueError(f"drift kind {cfg.drift_kind!r}: use one of {', '.join(DRIFT_KINDS)}")
        if cfg.drift_feature is not None and spec.feature(cfg.drift_feature) is None:
            raise ValueError(f"--drift-feature {cfg.drift_feature!r} is not a feature of model {spec.name!r}")

    def _features(self, drifted: bool) -> dict:
        rng, out = self.rng, {}
        for f in self.spec.features:
            shift = drifted and f.name == self.cfg.drift_feature
            if f.type == "numeric":
                lo, hi = f.range if f.range else (0.0, 100.0)
                mu, sd = _numeric_params(lo, hi)
                if shift and self.cfg.drift_kind == "variance":
                    sd *= self.cfg.drift_shift
                elif shift:
                    mu += self.cfg.drift_shift * sd
                out[f.name] = round(min(max(rng.gauss(mu, sd), lo), hi), 4)
            elif f.type == "categorical":
                cats = f.categories or ["a", "b", "c"]
                weights = [1.0 / (i + 1) for i in range(len(cats))]
                if shift:  # move mass to the rarest category
                    weights[-1] += sum(weights) * min(self.cfg.drift_shift, 5.0) * 0.2
                out[f.name] = rng.choices(cats, weights)[0]
            elif f.type == "boolean":
                out[f.name] = rng.random() < 0.3
            elif f.type == "text":
                if f.pii and rng.random() < 0.8:
                    out[f.name] = (
                        f"user{rng.randrange(10**6)}@example.com"
                        if "mail" in f.name
                        else (f"+49{rng.randrange(10**9, 10**10)}")
                    )
            elif f.type == "vector" and rng.random() < 0.2:
                out[f.name] = [round(rng.gauss(0, 1), 3) for _ in range(8)]
        return out

    def _prediction(self, features: dict, drifted: bool = False) -> tuple[dict, str]:
        z = -2.0 + (self.cfg.drift_shift if drifted and self.cfg.drift_kind == "score" else 0.0)
        for f in self.spec.features:
            v = features.get(f.name)
            if f.type == "numeric" and f.range and isinstance(v, float | int):
                mu, sd = _numeric_params(*f.range)
                z += 0.4 * (v - mu) / (sd or 1.0)
        score = 1.0 / (1.0 + math.exp(-z))
        classes = self.spec.prediction.classes or ["negative", "positive"]
        label = classes[1] if score >= 0.5 else classes[0]
        pred = {
            "label": label,
            "score": round(score, 6),
            "scores": {classes[0]: round(1 - score, 6), classes[1]: round(score, 6)},
        }
        truth = classes[1] if self.rng.random() < score else classes[0]
        if drifted and self.cfg.drift_kind == "concept":  # the world changed: the rule flips
            truth = classes[0] if truth == classes[1] else classes[1]
        return pred, truth

    def _event(self, i: int) -> tuple[dict, str]:
        cfg, rng = self.cfg, self.rng
        drifted = cfg.drift_at is not None and i >= cfg.drift_at
        features = self._features(drifted)
        if cfg.quality_fraction and rng.random() < cfg.quality_fraction:
            self._spoil(features)
        pred, truth = self._prediction(features, drifted)
        latency = rng.lognormvariate(3.0, 0.4) * (
            cfg.drift_shift if drifted and cfg.drift_kind == "latency" else 1.0
        )
        if drifted and cfg.drift_kind == "traffic":  # the rate falls to 1/shift at drift_at
            t = cfg.start + dt.timedelta(
                seconds=(cfg.drift_at + (i - cfg.drift_at) * cfg.drift_shift) / cfg.rate_per_s
            )
        else:
            t = cfg.start + dt.timedelta(seconds=i / cfg.rate_per_s)
        ev = prediction_event(
            self.spec.name,
            self.version,
            f"{self.spec.name}-{cfg.seed}-{i:09d}",
            t,
            features,
            pred,
            latency,
            request_id=f"req-{rng.getrandbits(48):012x}",
            status="ok" if rng.random() > 0.002 else "error",
            host=f"{self.spec.name}-pod-{i % 4}",
        )
        return ev, truth

    def _spoil(self, features: dict) -> None:
        """Make one feature break the spec (still a valid event): out of range or unseen."""
        f = self.rng.choice([f for f in self.spec.features if f.type in ("numeric", "categorical")])
        if f.type == "numeric":
            features[f.name] = (f.range[1] if f.range else 100.0) * 10 + 1
        else:
            features[f.name] = "UNSEEN"

    def _bad(self, ev: dict, kind: str) -> bytes:
        raw = orjson.dumps(ev)
        if kind == "truncated_json":
            return raw[: len(raw) // 2]
        if kind == "not_json":
            return b"prediction=" + ev["event_id"].encode() + b" " + raw[:40]
        if kind == "wrong_type":
            ev["latency_ms"] = "fast"
        elif kind == "missing_field":
            del ev["model"]
        elif kind == "nan_literal":
            return raw.replace(b'"latency_ms":', b'"latency_ms":NaN,"x":', 1)
        elif kind == "bad_timestamp":
            ev["event_time"] = ev["event_time"].replace("T", " ").rstrip("Z")
        elif kind == "bad_event_id":
            ev["event_id"] = "short"
        elif kind == "unknown_field":
            ev["debug"] = True
        elif kind == "invalid_utf8":
            return raw.replace(b'"region":"', b'"region":"\xff\xfe', 1)
        elif kind == "not_an_object":
            return b"[" + raw + b"]"
        elif kind == "unknown_version":
            ev["schema_version"] = "2"
        return orjson.dumps(ev)

    def lines(self) -> Iterator[SimLine]:
        cfg, rng = self.cfg, self.rng
        kinds = list(BAD_KINDS)
        recent: list[SimLine] = []
        for i in range(cfg.events):
            ev, truth = self._event(i)
            if cfg.bad_fraction and rng.random() < cfg.bad_fraction:
                kind = kinds[i % len(kinds)]
                yield SimLine(self._bad(ev, kind), kind, None)
                continue
            label = None
            if cfg.label_fraction and rng.random() < cfg.label_fraction:
                label_time = dt.datetime.fromisoformat(ev["event_time"]) + dt.timedelta(minutes=5)
                label = orjson.dumps(
                    {
                        "schema_version": "1",
                        "event_id": ev["event_id"],
                        "label_time": label_time.isoformat().replace("+00:00", "Z"),
                        "label": truth,
                        "model": ev["model"],
                    }
                )
            line = SimLine(orjson.dumps(ev), "ok", ev["event_id"], label)
            yield line
            recent.append(line)
            if len(recent) > 50:
                recent.pop(0)
            if cfg.duplicate_fraction and rng.random() < cfg.duplicate_fraction:
                dup = rng.choice(recent)
                yield SimLine(dup.raw, "duplicate", dup.event_id)
