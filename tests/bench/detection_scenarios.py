"""Seeded detection scenarios (issue #11 item 9): prediction event streams with a known truth.

Each ``Scenario`` is one or more ``ModelPlan`` streams (one model each, its own name, so
scenarios run side by side in one pipeline without seeing each other) plus what must happen:
where the change starts (event index and event time), which model and feature change, and the
target. A plan yields contract-valid event dicts (``schemas.simulate.prediction_event``) for the
monitored part and, separately, for its reference part (the stretch just before the stream,
same generator, no change), and renders the YAML spec to use. ``scale`` shrinks a scenario for
tests: it scales durations (or, for the daily cycle, the event rate) and never the per-window
sample size the target is about.

Same name, scale and seed -> same events, byte for byte.

>>> sc = build("shift_0.25sd", scale=0.05)
>>> sc.truths[0].feature, sc.truths[0].onset_index, sc.window_s
('f03', 15000, 300)
>>> evs = list(sc.events())
>>> len(evs), evs[0]["model"]["name"], evs[15000]["event_time"]
(30000, 'sc_shift', '2026-03-01T00:05:00.000Z')
>>> [e["event_id"] for e in evs[:1]] == [e["event_id"] for e in build("shift_0.25sd", scale=0.05).events()][:1]
True
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import math
from collections.abc import Iterator
from typing import Literal

import numpy as np

from schemas.simulate import prediction_event
from schemas.specs import ModelSpec, parse_spec

START = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
DAY_S = 86_400
CHUNK = 4096
CLASSES = ("negative", "positive")

GenKind = Literal["gauss", "lognormal", "poisson", "categorical", "boolean"]


@dataclasses.dataclass(frozen=True)
class FeatureGen:
    """One feature's generator. ``a``/``b``: gauss mean/sd, lognormal mu/sigma of the log,
    poisson lambda (``b`` unused), boolean P(true); categorical uses ``categories`` with
    weights 1/(rank+1). ``cycle_sd``: a daily sine of that many sd added to the value
    (hour of day of the event time). ``null_rate``: share of events where it is missing."""

    name: str
    kind: GenKind
    a: float = 0.0
    b: float = 1.0
    categories: tuple[str, ...] = ()
    optional: bool = False
    null_rate: float = 0.0
    cycle_sd: float = 0.0

    @property
    def sd(self) -> float:
        """The feature's standard deviation (what a shift of "1 sd" moves).

        >>> round(FeatureGen("x", "lognormal", 0.0, 0.5).sd, 4), FeatureGen("c", "poisson", 4.0).sd
        (0.6039, 2.0)
        """
        if self.kind == "gauss":
            return self.b
        if self.kind == "lognormal":
            s2 = self.b**2
            return math.sqrt((math.exp(s2) - 1) * math.exp(2 * self.a + s2))
        if self.kind == "poisson":
            return math.sqrt(self.a)
        return 1.0

    def spec_entry(self) -> str:
        req = ", required: false" if self.optional else ""
        if self.kind == "gauss":
            lo, hi = self.a - 12 * self.b, self.a + 12 * self.b
            return f"{{name: {self.name}, type: numeric, range: [{lo:g}, {hi:g}]{req}}}"
        if self.kind in ("lognormal", "poisson"):
            return f"{{name: {self.name}, type: numeric, range: [0, 1000000000]{req}}}"
        if self.kind == "categorical":
            return (
                f"{{name: {self.name}, type: categorical, categories: [{', '.join(self.categories)}]{req}}}"
            )
        return f"{{name: {self.name}, type: boolean{req}}}"


@dataclasses.dataclass(frozen=True)
class Drift:
    """What changes from event ``onset`` (index in the model's monitored stream) on.

    ``step``: the feature's mean moves by ``size`` sd at once; ``ramp``: linearly from 0 to
    ``size`` sd over ``length`` events, then stays; ``nulls``: the feature is missing in a
    ``size`` share of events (instead of its usual ``null_rate``)."""

    kind: Literal["step", "ramp", "nulls"]
    feature: str
    onset: int
    size: float
    length: int = 0

    def shift_sd(self, idx: np.ndarray) -> np.ndarray:
        """Mean shift in sd per event index.

        >>> Drift("ramp", "x", 10, 1.0, 20).shift_sd(np.array([0, 10, 20, 30, 40])).tolist()
        [0.0, 0.0, 0.5, 1.0, 1.0]
        """
        after = idx >= self.onset
        if self.kind == "step":
            return np.where(after, self.size, 0.0)
        if self.kind == "ramp":
            return np.clip((idx - self.onset) / max(self.length, 1), 0.0, 1.0) * self.size
        return np.zeros(len(idx))


@dataclasses.dataclass(frozen=True)
class Truth:
    """The ground truth of one changing model: detectors should name ``feature`` after ``onset_time``."""

    model: str
    version: str
    feature: str
    kind: str
    onset_index: int
    onset_time: dt.datetime


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """One model's stream: features, rate, length, reference length, the change (if any)."""

    model: str
    features: tuple[FeatureGen, ...]
    events: int
    rate_per_s: float
    seed: int
    reference_events: int
    drift: Drift | None = None
    has_spec: bool = True
    version: str = "v1"
    start: dt.datetime = START
    #: the reference's profile (``predaudit reference build --seasonality``): none | daily | weekly
    seasonality: str = "none"

    def spec_yaml(self) -> str:
        """The model spec (defaults for every monitor setting)."""
        lines = [
            f"name: {self.model}",
            f"description: detection scenario model (seed {self.seed})",
            f'versions: ["{self.version}"]',
            "task: classification",
            f"prediction: {{classes: [{', '.join(CLASSES)}]}}",
            "features:",
            *(f"  - {f.spec_entry()}" for f in self.features),
        ]
        return "\n".join(lines) + "\n"

    def spec(self) -> ModelSpec:
        return parse_spec(self.spec_yaml(), f"{self.model}.yaml")

    def time_of(self, index: int) -> dt.datetime:
        """Event time of monitored event ``index`` (negative: the reference part before it)."""
        return self.start + dt.timedelta(seconds=index / self.rate_per_s)

    @property
    def truth(self) -> Truth | None:
        d = self.drift
        if d is None:
            return None
        return Truth(self.model, self.version, d.feature, d.kind, d.onset, self.time_of(d.onset))

    def stream(self) -> Iterator[dict]:
        """The monitored events, in event-time order."""
        return self._generate(0, self.events, self.seed, self.drift, "")

    def reference(self) -> Iterator[dict]:
        """The reference part: the ``reference_events`` just before the stream, no change."""
        n = self.reference_events
        return self._generate(-n, 0, self.seed + 7919, None, "ref-")

    def _generate(self, first: int, stop: int, seed: int, drift: Drift | None, prefix: str) -> Iterator[dict]:
        rng = np.random.default_rng(seed)
        for a in range(first, stop, CHUNK):
            idx = np.arange(a, min(a + CHUNK, stop))
            secs = idx / self.rate_per_s
            cols = {f.name: self._column(f, rng, idx, secs, drift) for f in self.features}
            score = 1.0 / (1.0 + np.exp(-rng.normal(-1.5, 1.0, len(idx))))
            latency = rng.lognormal(3.0, 0.4, len(idx))
            error = rng.random(len(idx)) < 0.002
            names = [f.name for f in self.features]
            for j, i in enumerate(idx.tolist()):
                feats = {}
                for name in names:
                    v = cols[name][j]
                    if v is not _ABSENT:
                        feats[name] = v
                s = round(float(score[j]), 6)
                pred = {
                    "label": CLASSES[1] if s >= 0.5 else CLASSES[0],
                    "score": s,
                    "scores": {CLASSES[0]: round(1 - s, 6), CLASSES[1]: s},
                }
                yield prediction_event(
                    self.model,
                    self.version,
                    f"{prefix}{self.model}-{seed}-{i - first:09d}",
                    self.start + dt.timedelta(seconds=float(secs[j])),
                    feats,
                    pred,
                    float(latency[j]),
                    status="error" if error[j] else "ok",
                    host=f"{self.model}-pod-{i % 4}",
                )

    @staticmethod
    def _column(f: FeatureGen, rng: np.random.Generator, idx: np.ndarray, secs: np.ndarray, drift) -> list:
        n = len(idx)
        mine = drift is not None and drift.feature == f.name
        shift = drift.shift_sd(idx) * f.sd if mine else np.zeros(n)
        if f.kind == "gauss":
            vals: list = np.round(rng.normal(f.a, f.b, n) + shift, 4).tolist()
        elif f.kind == "lognormal":
            vals = np.round(rng.lognormal(f.a, f.b, n) + shift, 4).tolist()
        elif f.kind == "poisson":
            vals = (rng.poisson(f.a, n) + np.round(shift).astype(np.int64)).tolist()
        elif f.kind == "categorical":
            w = np.array([1.0 / (k + 1) for k in range(len(f.categories))])
            picks = rng.choice(len(f.categories), n, p=w / w.sum())
            vals = [f.categories[k] for k in picks.tolist()]
        else:
            vals = (rng.random(n) < f.a).tolist()
        if f.cycle_sd:
            phase = np.sin(2 * math.pi * np.mod(secs, DAY_S) / DAY_S) * f.cycle_sd * f.sd
            vals = np.round(np.asarray(vals, dtype=float) + phase, 4).tolist()
        null_rate = np.full(n, f.null_rate)
        if mine and drift.kind == "nulls":
            null_rate = np.where(idx >= drift.onset, drift.size, f.null_rate)
        draw = rng.random(n)  # always drawn: a scenario's other columns do not depend on null rates
        if f.null_rate or (mine and drift.kind == "nulls"):
            for j in np.nonzero(draw < null_rate)[0].tolist():
                vals[j] = None if j % 2 else _ABSENT  # half explicit null, half a missing key
        return vals


_ABSENT = object()  # marks a feature key left out of the event (vs an explicit null)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A named detection scenario: its model streams, truth and target.

    ``expect``: "quiet" (no alert is right: any alert is a false alarm) or "detect" (each
    truth's feature must be named by an alert after its onset). The limits are what the
    issue's target allows: windows after the onset, events after the onset, or event-time
    seconds after the onset (None: no limit of that kind).
    """

    name: str
    plans: tuple[ModelPlan, ...]
    target: str
    expect: Literal["quiet", "detect"]
    window_s: int = 300
    max_windows: int | None = None
    max_events: int | None = None
    max_seconds: float | None = None

    @property
    def truths(self) -> tuple[Truth, ...]:
        return tuple(t for p in self.plans if (t := p.truth) is not None)

    @property
    def events_total(self) -> int:
        return sum(p.events for p in self.plans)

    def events(self) -> Iterator[dict]:
        """All models' monitored events merged by event time (ties: plan order)."""
        if len(self.plans) == 1:
            return self.plans[0].stream()
        keyed = [((e["event_time"], k, e) for e in p.stream()) for k, p in enumerate(self.plans)]
        return (e for _, _, e in heapq.merge(*keyed, key=lambda x: (x[0], x[1])))

    def specs(self) -> dict[str, str]:
        """model -> spec YAML, for the models that have a spec."""
        return {p.model: p.spec_yaml() for p in self.plans if p.has_spec}


def _gauss(n: int, prefix: str = "f", start: int = 0) -> tuple[FeatureGen, ...]:
    return tuple(
        FeatureGen(f"{prefix}{i:02d}", "gauss", 10.0 * (i + 1), 1.0 + i % 3) for i in range(start, start + n)
    )


def _ref(scale: float) -> int:
    """Reference size: 30,000 events at scale 1, never below 5,000."""
    return max(int(30_000 * scale), 5_000)


def _w(x: float, scale: float, rate: float = 50.0, window_s: int = 300) -> int:
    """``x * scale`` events rounded to whole windows (at least one): changes start, and
    streams end, on a window boundary (a partial last window would look like a traffic drop).

    >>> _w(90_000, 0.05), _w(90_000, 1.0), _w(14_400, 0.5, 20 / 60)
    (15000, 90000, 7200)
    """
    per = int(round(rate * window_s))
    return max(int(round(x * scale / per)), 1) * per


def _n(x: float, scale: float, least: int = 1) -> int:
    return max(int(round(x * scale)), least)


def stationary_wide(scale: float = 1.0, seed: int = 11) -> Scenario:
    """34 features: 12 gaussian, 8 lognormal (heavy tails), 6 Poisson counts (lambda 0.5..40),
    4 categorical, 2 boolean, 2 optional with 5 % nulls; 50/s, nothing changes."""
    feats = _gauss(12, "g")
    feats += tuple(FeatureGen(f"ln{i}", "lognormal", float(i % 3), 0.5 + 0.25 * (i % 4)) for i in range(8))
    feats += tuple(
        FeatureGen(f"cnt{i}", "poisson", lam) for i, lam in enumerate((0.5, 1.0, 3.0, 8.0, 15.0, 40.0))
    )
    feats += tuple(
        FeatureGen(f"cat{i}", "categorical", categories=tuple(f"c{k}" for k in range(3 + 3 * i)))
        for i in range(4)
    )
    feats += (FeatureGen("flag_a", "boolean", 0.3), FeatureGen("flag_b", "boolean", 0.05))
    feats += (
        FeatureGen("opt_g", "gauss", 5.0, 2.0, optional=True, null_rate=0.05),
        FeatureGen("opt_ln", "lognormal", 1.0, 1.0, optional=True, null_rate=0.05),
    )
    plan = ModelPlan("sc_wide", feats, _w(150_000, scale), 50.0, seed, _ref(scale))
    return Scenario("stationary, 34 features (lognormal, Poisson)", (plan,), "0 false alarms", "quiet")


def daily_cycle(scale: float = 1.0, seed: int = 12) -> Scenario:
    """A feature with a daily sine (amplitude 1 sd), reference = the full day before (built with
    ``--seasonality daily``, as the README tells a user with daily traffic), then two days with
    nothing else changing. 2 events/s (600 per 300 s window); ``scale`` lowers the
    rate and widens the window by the same factor (600 events per window stay)."""
    rate, window = 2.0 * scale, int(round(300 / scale))
    feats = (FeatureGen("load", "gauss", 50.0, 5.0, cycle_sd=1.0), *_gauss(4, "f"))
    plan = ModelPlan("sc_daily", feats, _n(2 * DAY_S * rate, 1), rate, seed, _n(DAY_S * rate, 1),
                     seasonality="daily")  # fmt: skip
    return Scenario("daily cycle (1 sd), ref = 1 day", (plan,), "0 false alarms", "quiet", window_s=window)


def ramp(scale: float = 1.0, seed: int = 13) -> Scenario:
    """+1 sd linear ramp over 60,000 events on one of 6 features (50/s), after 45,000 stationary."""
    onset, length = _w(45_000, scale), _w(60_000, scale)
    feats = _gauss(6, "f")
    plan = ModelPlan("sc_ramp", feats, onset + length + _w(15_000, scale), 50.0, seed, _ref(scale),
                     Drift("ramp", "f02", onset, 1.0, length))  # fmt: skip
    return Scenario(
        "ramp +1 sd over 60k events",
        (plan,),
        "<= 20,000 events after onset",
        "detect",
        max_events=length // 3,  # 20,000 of the 60,000 ramp events
    )


def shift_quarter_sd(scale: float = 1.0, seed: int = 14) -> Scenario:
    """A 0.25 sd step on one of 10 features at 15,000 events per 300 s window (50/s):
    6 stationary windows, then 4 changed ones (``scale`` scales the counts, not the rate)."""
    onset = _w(90_000, scale)
    plan = ModelPlan("sc_shift", _gauss(10, "f"), onset + _w(60_000, scale), 50.0, seed, _ref(scale),
                     Drift("step", "f03", onset, 0.25))  # fmt: skip
    return Scenario("shift 0.25 sd, 15k events/window", (plan,), "<= 2 windows", "detect", max_windows=2)


def low_traffic(scale: float = 1.0, seed: int = 15) -> Scenario:
    """20 events per minute, a 1 sd step on one of 5 features after 12 h (then 12 h more)."""
    rate = 20 / 60
    onset = _w(12 * 3600 * rate, scale, rate)
    plan = ModelPlan("sc_lowtraffic", _gauss(5, "f"), onset + _w(12 * 3600 * rate, scale, rate), rate, seed, _ref(scale),
                     Drift("step", "f01", onset, 1.0))  # fmt: skip
    return Scenario(
        "20 events/min, 1 sd step", (plan,), "<= 6 h of event time", "detect", max_seconds=6 * 3600
    )


def optional_nulls(scale: float = 1.0, seed: int = 16) -> Scenario:
    """An optional feature (2 % null in the reference) turning null in 30 % of events (50/s)."""
    onset = _w(45_000, scale)
    feats = (*_gauss(5, "f"), FeatureGen("opt", "gauss", 3.0, 1.0, optional=True, null_rate=0.02))
    plan = ModelPlan("sc_nulls", feats, onset + _w(30_000, scale), 50.0, seed, _ref(scale),
                     Drift("nulls", "opt", onset, 0.30))  # fmt: skip
    return Scenario("optional feature 30 % null", (plan,), "<= 1 window", "detect", max_windows=1)


def two_models(scale: float = 1.0, seed: int = 17) -> Scenario:
    """Two models interleaved at 25/s each; only ``sc_pair_b`` shifts (0.5 sd on f01).
    ``sc_pair_a`` must stay quiet: its alerts count as false alarms."""
    onset = _w(45_000, scale, 25.0)
    total = onset + _w(30_000, scale, 25.0)
    a = ModelPlan("sc_pair_a", _gauss(6, "f"), total, 25.0, seed, _ref(scale))
    b = ModelPlan(
        "sc_pair_b", _gauss(6, "f"), total, 25.0, seed + 1, _ref(scale), Drift("step", "f01", onset, 0.5)
    )
    return Scenario("two models, one drifts (0.5 sd)", (a, b), "b caught, a quiet", "detect", max_windows=2)


def no_spec(scale: float = 1.0, seed: int = 18) -> Scenario:
    """A model with no spec and no reference (numeric, categorical, boolean features); a 1 sd
    step on ``f02`` after 30,000 events (50/s)."""
    onset = _w(30_000, scale)
    feats = (*_gauss(4, "f"), FeatureGen("kind", "categorical", categories=("a", "b", "c")),
             FeatureGen("flag", "boolean", 0.4))  # fmt: skip
    plan = ModelPlan("sc_nospec", feats, onset + _w(30_000, scale), 50.0, seed, 0,
                     Drift("step", "f02", onset, 1.0), has_spec=False)  # fmt: skip
    return Scenario("model without a spec, 1 sd step", (plan,), "drift caught", "detect")


BUILDERS = {
    "stationary_wide": stationary_wide,
    "daily_cycle": daily_cycle,
    "ramp": ramp,
    "shift_0.25sd": shift_quarter_sd,
    "low_traffic": low_traffic,
    "optional_nulls": optional_nulls,
    "two_models": two_models,
    "no_spec": no_spec,
}


def build(name: str, scale: float = 1.0, seed: int | None = None) -> Scenario:
    """One scenario by its key in ``BUILDERS``."""
    fn = BUILDERS[name]
    return fn(scale) if seed is None else fn(scale, seed)


def all_scenarios(scale: float = 1.0) -> list[Scenario]:
    return [fn(scale) for fn in BUILDERS.values()]


def reference_doc(plan: ModelPlan) -> dict:
    """The reference file for a plan (``predaudit reference build [--seasonality S]`` over its
    reference part)."""
    import orjson

    from schemas import Decoders
    from transforms.monitors.reference import build_reference

    dec = Decoders()
    spec = plan.spec()
    events = (dec.prediction(orjson.dumps(e))[0] for e in plan.reference())
    if plan.seasonality != "none":
        return build_reference(events, spec, "*", seasonality=plan.seasonality)
    return build_reference(events, spec, "*")
