"""Model specs: per-model feature rules, PII rules and monitor settings (YAML).

A spec never rejects an event: a valid event whose data looks wrong still happened,
so it is audited with ``quality_issues`` (see ARCHITECTURE.md, "two kinds of bad input").
PII rules are applied before any row is written: ``hash`` replaces the value with a keyed
HMAC-SHA256 (the key never appears in logs or reprs), ``drop`` removes the feature.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

FeatureType = Literal["numeric", "categorical", "boolean", "text", "vector"]
QUALITY_ISSUES = (
    "feature_out_of_range",
    "unseen_category",
    "missing_feature",
    "unexpected_feature",
    "type_mismatch",
)
PII_KEY_ENV = "PREDAUDIT_PII_KEY"
PII_KEY_FILE_ENV = "PREDAUDIT_PII_KEY_FILE"
PII_KEY_SECRET_ENV = "PREDAUDIT_PII_KEY_SECRET"  # a reference: projects/P/secrets/S/versions/V or a file


class SpecError(ValueError):
    """A model spec that cannot be used: names the file, the key and what is wrong."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}")
        self.file, self.key, self.message = file, key, message


class Feature(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    type: FeatureType
    range: tuple[float, float] | None = None
    categories: list[str] | None = None
    required: bool = True
    pii: Literal["hash", "drop"] | None = None
    description: str = ""


class PsiSettings(msgspec.Struct, forbid_unknown_fields=True):
    bins: int = 10
    epsilon: float = 1e-4
    warning: float = 0.1
    critical: float = 0.25
    top_k: int = 20
    #: calibrated: judged by PSI's null distribution at the window's n (+ min_effect);
    #: fixed: by warning / critical above
    mode: Literal["calibrated", "fixed"] = "calibrated"
    #: family-wise false-alarm probability per model and window (Bonferroni over its tests)
    alpha: float = 1e-4
    #: smallest PSI that alerts in calibrated mode (~0.14 sd of a normal mean)
    min_effect: float = 0.02


class AdwinSettings(msgspec.Struct, forbid_unknown_fields=True):
    delta: float = 0.002
    clock: int = 32
    #: a detection alerts only when the means differ by at least this many standard deviations
    min_effect_sd: float = 0.2
    #: values after a detection over which its effect is measured before it may alert
    confirm_events: int = 200
    #: CUSUM on reference-standardized values: allowance k and decision interval h (in sd)
    cusum_k: float = 0.1
    cusum_h: float = 100.0


class RateThresholds(msgspec.Struct, forbid_unknown_fields=True):
    """A share of a window's events (0..1) that raises a warning / critical anomaly."""

    warning: float
    critical: float


class MonitorSettings(msgspec.Struct, forbid_unknown_fields=True):
    window_seconds: int = 300
    allowed_lateness_seconds: int = 600
    min_sample_size: int = 500
    warmup_events: int = 2000
    psi: PsiSettings = msgspec.field(default_factory=PsiSettings)
    adwin: AdwinSettings = msgspec.field(default_factory=AdwinSettings)
    latency_slo_ms: float | None = None
    #: share of a window's events slower than latency_slo_ms
    latency_over_slo: RateThresholds = msgspec.field(default_factory=lambda: RateThresholds(0.1, 0.3))
    #: share of a window's events with status "error"
    error_rate: RateThresholds = msgspec.field(default_factory=lambda: RateThresholds(0.05, 0.2))
    #: share of a window's events with at least one quality issue
    quality_issue_rate: RateThresholds = msgspec.field(default_factory=lambda: RateThresholds(0.05, 0.2))
    #: window count / median of recent windows at or below which traffic "dropped"
    traffic_drop: RateThresholds = msgspec.field(default_factory=lambda: RateThresholds(0.3, 0.1))
    accuracy_min: float | None = None
    #: regression: per-window mean absolute error above which to alert (critical at 1.5x)
    mae_max: float | None = None
    #: labelled predictions a window needs before its accuracy is judged
    min_labeled: int = 100
    label_join_horizon_seconds: int = 3600
    cooldown_seconds: int = 3600
    reference: str | None = None
    #: smallest change of a feature's missing-value rate that alerts
    missing_min_effect: float = 0.02
    #: a window under min_sample_size events is merged with the following ones
    merge_small_windows: bool = True


class PredictionSpec(msgspec.Struct, forbid_unknown_fields=True):
    classes: list[str] | None = None


class ModelSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    features: list[Feature]
    versions: list[str] = []
    task: Literal["classification", "regression"] = "classification"
    prediction: PredictionSpec = msgspec.field(default_factory=PredictionSpec)
    monitors: MonitorSettings = msgspec.field(default_factory=MonitorSettings)
    description: str = ""

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)

    @property
    def has_pii(self) -> bool:
        return any(f.pii for f in self.features)


def _semantic_checks(spec: ModelSpec, file: str) -> None:
    seen: set[str] = set()
    for i, f in enumerate(spec.features):
        key = f"features[{i}]"
        if f.name in seen:
            raise SpecError(file, f"{key}.name", f"duplicate feature name {f.name!r}")
        seen.add(f.name)
        if f.range is not None:
            if f.type != "numeric":
                raise SpecError(file, f"{key}.range", f"range applies to numeric features, not {f.type}")
            lo, hi = f.range
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise SpecError(
                    file, f"{key}.range", f"need finite [low, high] with low <= high, got {[lo, hi]}"
                )
        if f.categories is not None and f.type != "categorical":
            raise SpecError(
                file, f"{key}.categories", f"categories apply to categorical features, not {f.type}"
            )
    m = spec.monitors
    positive = {
        "monitors.window_seconds": m.window_seconds,
        "monitors.min_sample_size": m.min_sample_size,
        "monitors.warmup_events": m.warmup_events,
        "monitors.psi.bins": m.psi.bins,
        "monitors.adwin.clock": m.adwin.clock,
        "monitors.label_join_horizon_seconds": m.label_join_horizon_seconds,
    }
    for key, value in positive.items():
        if value <= 0:
            raise SpecError(file, key, f"must be > 0, got {value}")
    if not 0 < m.adwin.delta < 1:
        raise SpecError(file, "monitors.adwin.delta", f"must be in (0, 1), got {m.adwin.delta}")
    if not 0 < m.psi.warning <= m.psi.critical:
        raise SpecError(file, "monitors.psi", "need 0 < warning <= critical")
    for key in ("latency_over_slo", "error_rate", "quality_issue_rate"):
        r = getattr(m, key)
        if not 0 < r.warning <= r.critical <= 1:
            raise SpecError(file, f"monitors.{key}", "need 0 < warning <= critical <= 1")
    if not 0 < m.psi.alpha < 1:
        raise SpecError(file, "monitors.psi.alpha", f"must be in (0, 1), got {m.psi.alpha}")
    if m.psi.min_effect < 0 or not 0 <= m.missing_min_effect < 1:
        raise SpecError(
            file, "monitors.psi.min_effect", "need min_effect >= 0 and 0 <= missing_min_effect < 1"
        )
    if m.adwin.cusum_k < 0 or m.adwin.cusum_h <= 0:
        raise SpecError(file, "monitors.adwin", "need cusum_k >= 0 and cusum_h > 0")
    if not 0 < m.psi.epsilon < 0.01:
        raise SpecError(file, "monitors.psi.epsilon", f"must be in (0, 0.01), got {m.psi.epsilon}")


def parse_spec(text: str | bytes, file: str = "<spec>") -> ModelSpec:
    """Parse and validate one YAML model spec.

    >>> parse_spec("name: m\\nfeatures: [{name: a, type: numeric, range: [0, 1]}]").features[0].range
    (0.0, 1.0)
    >>> parse_spec("name: m\\nfeatures: [{name: a, type: number}]", "m.yaml")
    Traceback (most recent call last):
    ...
    schemas.specs.SpecError: m.yaml: $.features[0].type: Invalid enum value 'number'
    """
    try:
        spec = msgspec.yaml.decode(text, type=ModelSpec)
    except msgspec.ValidationError as exc:
        msg, _, path = str(exc).partition(" - at `")
        raise SpecError(file, path.rstrip("`") or "$", msg) from None
    except msgspec.DecodeError as exc:
        raise SpecError(file, "$", f"not valid YAML: {exc}") from None
    _semantic_checks(spec, file)
    return spec


def load_specs(path: str | os.PathLike) -> dict[str, ModelSpec]:
    """Load a spec file or every ``*.yaml``/``*.yml`` in a folder, keyed by model name."""
    from schemas import fsio  # local paths or any Beam filesystem (gs://...)

    files = fsio.folder_files(path, ("*.yaml", "*.yml"))
    if files is None:
        raise SpecError(str(path), "$", "no such file or folder")
    if not files:
        raise SpecError(str(path), "$", "folder holds no *.yaml model spec")
    specs: dict[str, ModelSpec] = {}
    for f in files:
        spec = parse_spec(fsio.read_bytes(f), f)
        if spec.name in specs:
            raise SpecError(str(f), "name", f"model {spec.name!r} is defined twice")
        specs[spec.name] = spec
    return specs


class QualityChecker:
    """Spec checks on a valid event's features; returns issue strings ``code:feature``.

    >>> spec = parse_spec("name: m\\nfeatures: [{name: a, type: numeric, range: [0, 1]},"
    ...                   " {name: c, type: categorical, categories: [x, y]}]")
    >>> QualityChecker(spec).check({"a": 2.0, "c": "z", "b": 1})
    ['feature_out_of_range:a', 'unseen_category:c', 'unexpected_feature:b']
    >>> QualityChecker(spec).check({"a": "oops"})
    ['type_mismatch:a', 'missing_feature:c']
    """

    def __init__(self, spec: ModelSpec) -> None:
        inf = float("inf")
        # one list per type: the decoder yields exactly float / str / bool / list / None values
        self._numeric = [
            (f.name, *(f.range or (-inf, inf)), f.required) for f in spec.features if f.type == "numeric"
        ]
        self._categorical = [
            (f.name, frozenset(f.categories) if f.categories is not None else None, f.required)
            for f in spec.features
            if f.type == "categorical"
        ]
        kinds = {"boolean": (bool,), "text": (str,), "vector": (list,)}
        self._other = [(f.name, kinds[f.type], f.required) for f in spec.features if f.type in kinds]
        self._names = frozenset(f.name for f in spec.features)

    def check(self, features: Mapping[str, Any]) -> list[str]:
        issues: list[str] = []
        get = features.get
        for name, lo, hi, required in self._numeric:
            v = get(name)
            if v.__class__ is float or (v.__class__ is int):
                if not lo <= v <= hi:
                    issues.append("feature_out_of_range:" + name)
            elif v is None:
                if required:
                    issues.append("missing_feature:" + name)
            else:
                issues.append("type_mismatch:" + name)
        for name, cats, required in self._categorical:
            v = get(name)
            if v.__class__ is str:
                if cats is not None and v not in cats:
                    issues.append("unseen_category:" + name)
            elif v is None:
                if required:
                    issues.append("missing_feature:" + name)
            else:
                issues.append("type_mismatch:" + name)
        for name, types, required in self._other:
            v = get(name)
            if v is None:
                if required:
                    issues.append("missing_feature:" + name)
            elif not isinstance(v, types):
                issues.append("type_mismatch:" + name)
        if len(features) > len(self._names) or not self._names.issuperset(features):
            issues.extend("unexpected_feature:" + n for n in features if n not in self._names)
        return issues


class PiiKey:
    """The HMAC key for ``pii: hash`` features. Its repr never shows the secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("PII key must be at least 16 bytes")
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)  # keyed once; copied per value

    def __repr__(self) -> str:
        return "PiiKey(<redacted>)"

    def hash(self, value: Any) -> str:
        data = value.encode() if isinstance(value, str) else msgspec.json.encode(value)
        mac = self._mac.copy()
        mac.update(data)
        return "hmac-sha256:" + mac.hexdigest()

    @classmethod
    def from_secret(cls, ref: str) -> PiiKey:
        """The key from a secret reference (``--pii_key_secret``: Secret Manager or a file),
        resolved where this runs (a worker's ``setup``); ``transforms.secrets.SecretError``
        (one line, no value) when it cannot be read."""
        from transforms.secrets import SecretError, resolve

        data = resolve(ref)
        if len(data) < 16:
            raise SecretError("pii_key_too_short", ref, "store a PII key of at least 16 bytes")
        return cls(data)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, secret: str = "") -> PiiKey | None:
        """The key from ``secret`` (a ``--pii_key_secret`` reference) if given, else from
        $PREDAUDIT_PII_KEY, the file named by $PREDAUDIT_PII_KEY_FILE, or the reference in
        $PREDAUDIT_PII_KEY_SECRET."""
        env = os.environ if environ is None else environ
        if secret:
            return cls.from_secret(secret)
        if env.get(PII_KEY_ENV):
            return cls(env[PII_KEY_ENV].encode())
        if env.get(PII_KEY_FILE_ENV):
            return cls(pathlib.Path(env[PII_KEY_FILE_ENV]).read_bytes().strip())
        if env.get(PII_KEY_SECRET_ENV):
            return cls.from_secret(env[PII_KEY_SECRET_ENV])
        return None


def name_key(name: str) -> str:
    """The spelling-insensitive form of a model or feature name: no surrounding space, case-folded.

    Two names with the same key are one name written differently (``"Fraud "`` and ``"fraud"``):
    PII rules and spec lookups must not be escaped by such a spelling.

    >>> name_key(" Fraud\t"), name_key("E-Mail")
    ('fraud', 'e-mail')
    """
    return name.strip().casefold()


class PiiRedactor:
    """Applies a spec's PII rules to a features mapping (returns a new dict when needed).

    A feature whose name differs from a PII feature's only by case or surrounding space
    (``"Email"``, ``"email "``) gets that feature's rule too: a misspelt key must not carry
    the raw value into a table.

    >>> spec = parse_spec("name: m\\nfeatures: [{name: email, type: text, pii: hash},"
    ...                   " {name: ssn, type: text, pii: drop}, {name: a, type: numeric}]")
    >>> out = PiiRedactor(spec, PiiKey(b"k" * 32)).apply({"email": "a@b.c", "ssn": "1", "a": 1.0})
    >>> sorted(out), out["email"].startswith("hmac-sha256:")
    (['a', 'email'], True)
    >>> out = PiiRedactor(spec, PiiKey(b"k" * 32)).apply({"Email ": "a@b.c", "SSN": "1", "a": 1.0})
    >>> sorted(out), out["Email "].startswith("hmac-sha256:")
    (['Email ', 'a'], True)
    """

    def __init__(self, spec: ModelSpec, key: PiiKey | None) -> None:
        self._hash = tuple(f.name for f in spec.features if f.pii == "hash")
        self._drop = tuple(f.name for f in spec.features if f.pii == "drop")
        if self._hash and key is None:
            raise SpecError(
                spec.name,
                "features[].pii",
                f"features {list(self._hash)} need a PII key: set ${PII_KEY_ENV} or ${PII_KEY_FILE_ENV}",
            )
        self._key = key
        self.active = bool(self._hash or self._drop)
        self._names = frozenset(f.name for f in spec.features)
        #: name_key(feature) -> rule, for keys spelt differently from the spec
        self._variants = {name_key(n): "drop" for n in self._drop}
        self._variants.update({name_key(n): "hash" for n in self._hash})
        self._memo: dict[str, str | None] = {}  # unexpected key -> its rule (None: not PII)

    def apply(self, features: dict[str, Any]) -> dict[str, Any]:
        if not self.active:
            return features
        out = dict(features)
        for name in self._drop:
            out.pop(name, None)
        for name in self._hash:
            if out.get(name) is not None:
                out[name] = self._key.hash(out[name])  # type: ignore[union-attr]
        if not self._names.issuperset(out):  # keys the spec does not name: misspelt PII?
            memo = self._memo
            for name in out.keys() - self._names:
                rule = memo.get(name, "")
                if rule == "":
                    rule = self._variants.get(name_key(name))
                    if len(memo) < 4096:  # bounded: producers may send any key
                        memo[name] = rule
                if rule == "drop":
                    del out[name]
                elif rule == "hash" and out[name] is not None:
                    out[name] = self._key.hash(out[name])  # type: ignore[union-attr]
        return out


def redactors(specs: Mapping[str, ModelSpec], key: PiiKey | None) -> dict[str, PiiRedactor]:
    """One redactor per model with PII rules (fails early when a needed key is missing)."""
    return {name: r for name, spec in specs.items() if (r := PiiRedactor(spec, key)).active}


def pii_rules(specs: Mapping[str, ModelSpec]) -> dict[str, Literal["hash", "drop"]]:
    """``name_key(feature) -> rule`` for every feature that ANY spec marks as PII.

    Used where the model (or the document) cannot be trusted: payloads that do not decode.
    When two specs disagree, ``drop`` wins (the stricter rule).

    >>> a = parse_spec("name: a\\nfeatures: [{name: Email, type: text, pii: hash}]")
    >>> b = parse_spec("name: b\\nfeatures: [{name: email, type: text, pii: drop},"
    ...                " {name: card, type: text, pii: hash}]")
    >>> sorted(pii_rules({"a": a, "b": b}).items())
    [('card', 'hash'), ('email', 'drop')]
    """
    rules: dict[str, Literal["hash", "drop"]] = {}
    for spec in specs.values():
        for f in spec.features:
            if f.pii is not None and rules.get(name_key(f.name)) != "drop":
                rules[name_key(f.name)] = f.pii
    return rules
