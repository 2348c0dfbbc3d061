"""Infer a starting model spec from prediction events (``predaudit spec infer``).

Each feature's type comes from the JSON types of its values over the events: numbers ->
``numeric`` (with the observed range, padded), strings -> ``categorical`` (the vocabulary when it
has at most ``max_categories`` values, else categorical without a fixed vocabulary, so every
string is accepted), booleans -> ``boolean``, lists of numbers -> ``vector``. A feature missing or
null in some events is ``required: false``. Strings that look like e-mail addresses (or features
named like them) become ``text`` with ``pii: hash``. The prediction shape gives the task
(``label``/``score``/``scores`` -> classification, only ``value`` -> regression) and the classes.

The result is a plain dict in the format ``schemas.specs.load_specs`` accepts; ``spec_yaml``
renders it. The inferred spec accepts the events it was inferred from without quality issues
(unless one feature mixes JSON types: the majority type wins and the feature's description
says so). Monitor settings are the defaults.

>>> evs = [{"model": {"name": "m", "version": "v1"}, "features": {"a": 1.5, "c": "x", "b": True},
...         "prediction": {"label": "yes", "score": 0.8}},
...        {"model": {"name": "m", "version": "v1"}, "features": {"a": 3, "c": "y", "b": None},
...         "prediction": {"label": "no", "score": 0.1}}]
>>> spec = infer_spec(evs, "m")
>>> [(f["name"], f["type"], f.get("required", True)) for f in spec["features"]]
[('a', 'numeric', True), ('b', 'boolean', False), ('c', 'categorical', True)]
>>> spec["features"][2]["categories"], spec["prediction"], spec["versions"]
(['x', 'y'], {'classes': ['yes', 'no']}, ['v1'])
>>> from schemas.specs import parse_spec
>>> parse_spec(spec_yaml(spec)).feature("a").range
(1.35, 3.15)
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import pathlib
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from schemas.cliargs import StrictParser

#: strings a feature may take before it is treated as open-vocabulary (no ``categories`` list)
MAX_CATEGORIES = 50
DEFAULT_SAMPLE = 100_000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_PII_NAMES = ("email", "e_mail", "e-mail", "phone", "ssn", "iban", "passport")
_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = frozenset("y n yes no on off true false null ~".split())


class InferError(ValueError):
    """A usage problem with ``spec infer`` (one line, exit 2)."""


def _parts(ev: Any) -> tuple[str | None, str | None, Mapping[str, Any], Mapping[str, Any]]:
    """(model name, version, features, prediction) of an event dict or a decoded event."""
    if isinstance(ev, Mapping):
        model = ev.get("model") or {}
        pred = ev.get("prediction") or {}
        return model.get("name"), model.get("version"), ev.get("features") or {}, pred
    model = getattr(ev, "model", None)
    p = ev.prediction
    pred = {
        k: getattr(p, k) for k in ("label", "score", "scores", "value") if getattr(p, k, None) is not None
    }
    return getattr(model, "name", None), getattr(model, "version", None), ev.features or {}, pred


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "numeric"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "vector"
    return "other"


class _FeatureStats:
    __slots__ = ("kinds", "lo", "hi", "strings", "emails", "open")

    def __init__(self) -> None:
        self.kinds: collections.Counter[str] = collections.Counter()
        self.lo, self.hi = math.inf, -math.inf
        self.strings: collections.Counter[str] = collections.Counter()
        self.emails = 0
        self.open = False  # more distinct strings than the cap: stop counting them

    def add(self, v: Any, cap: int) -> None:
        k = _kind(v)
        self.kinds[k] += 1
        if k == "numeric":
            if v < self.lo:
                self.lo = float(v)
            if v > self.hi:
                self.hi = float(v)
        elif k == "string":
            if _EMAIL.match(v):
                self.emails += 1
            if not self.open:
                self.strings[v] += 1
                if len(self.strings) > cap:
                    self.open = True


def _padded_range(lo: float, hi: float) -> list[float]:
    """The observed [lo, hi] widened by 10 % of the span (not below 0 for a non-negative feature).

    >>> _padded_range(0.0, 10.0), _padded_range(-1.0, 1.0), _padded_range(5.0, 5.0)
    ([0.0, 11.0], [-1.2, 1.2], [4.5, 5.5])
    """
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    new_lo = lo - pad
    if lo >= 0 > new_lo:
        new_lo = 0.0
    return [_round(new_lo), _round(hi + pad)]


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def infer_spec(
    events: Iterable[Any],
    model: str,
    *,
    max_categories: int = MAX_CATEGORIES,
    sample: int | None = None,
) -> dict:
    """A spec dict for ``model`` from ``events`` (dicts as in the contract, or decoded events).

    Events of other models are skipped (events without a model name are counted as ``model``'s);
    at most ``sample`` events of the model are read. Raises ``InferError`` when there is none.
    """
    stats: dict[str, _FeatureStats] = {}
    order: list[str] = []
    versions: dict[str, None] = {}
    classes: dict[str, None] = {}
    pred_keys: collections.Counter[str] = collections.Counter()
    n = 0
    for ev in events:
        name, version, features, pred = _parts(ev)
        if name is not None and name != model:
            continue
        n += 1
        if version is not None:
            versions.setdefault(version)
        for k, v in features.items():
            st = stats.get(k)
            if st is None:
                st = stats[k] = _FeatureStats()
                order.append(k)
            st.add(v, max_categories)
        for key in ("label", "score", "scores", "value"):
            if pred.get(key) is not None:
                pred_keys[key] += 1
        if isinstance(pred.get("scores"), Mapping) and len(classes) <= max_categories:
            for c in pred["scores"]:
                classes.setdefault(str(c))
        label = pred.get("label")
        if isinstance(label, str) and len(classes) <= max_categories:
            classes.setdefault(label)
        if sample is not None and n >= sample:
            break
    if n == 0:
        raise InferError(f"no events of model {model!r}")
    features = [_feature(name, stats[name], n, max_categories) for name in sorted(order)]
    spec: dict[str, Any] = {
        "name": model,
        "description": f"Inferred by predaudit spec infer from {n} events; review types, ranges and PII rules.",
        "versions": list(versions),
    }
    if pred_keys["value"] and not (pred_keys["label"] or pred_keys["score"] or pred_keys["scores"]):
        spec["task"] = "regression"
    else:
        spec["task"] = "classification"
        if classes and len(classes) <= max_categories:
            spec["prediction"] = {"classes": list(classes)}
    spec["features"] = features
    return spec


def _feature(name: str, st: _FeatureStats, n: int, cap: int) -> dict:
    present = {k: c for k, c in st.kinds.items() if k != "null"}
    seen = sum(present.values())
    out: dict[str, Any] = {"name": name}
    notes = []
    if not present:
        kind = "numeric"
        notes.append("always null or missing in the sample: type unknown")
    else:
        kind = max(present, key=lambda k: (present[k], k))
        if len(present) > 1:
            mixed = ", ".join(f"{k} {c}" for k, c in sorted(present.items()))
            notes.append(f"mixed JSON types ({mixed}): {kind} chosen")
    if kind == "numeric":
        out["type"] = "numeric"
        if st.lo <= st.hi:
            out["range"] = _padded_range(st.lo, st.hi)
    elif kind == "boolean":
        out["type"] = "boolean"
    elif kind == "vector":
        out["type"] = "vector"
    elif kind == "string":
        pii_name = any(p in name.strip().casefold() for p in _PII_NAMES)
        if pii_name or st.emails * 2 > present.get("string", 0):
            out["type"] = "text"
            out["pii"] = "hash"
            notes.append("looks like personal data: values are stored as keyed hashes")
        else:
            out["type"] = "categorical"
            if st.open:
                notes.append(f"more than {cap} distinct values: open vocabulary")
            else:
                out["categories"] = [c for c, _ in sorted(st.strings.items(), key=lambda kv: (-kv[1], kv[0]))]
    else:
        out["type"] = "text"
    if seen < n:
        out["required"] = False
    if notes:
        out["description"] = "; ".join(notes)
    return out


def _scalar(v: Any) -> str:
    """A YAML flow scalar that reads back as the same value (YAML 1.1 and 1.2).

    >>> [_scalar(x) for x in ("amount", "yes", "a b", "1.5", 3.0, 1e-05, 2.5e20, True, None)]
    ['amount', '"yes"', '"a b"', '"1.5"', '3', '1.0e-05', '2.5e+20', 'true', 'null']
    """
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        f = float(v)
        if f.is_integer() and abs(f) < 1e15:
            return str(int(f))
        r = repr(f)
        if "e" in r:
            mant, exp = r.split("e")
            if "." not in mant:
                mant += ".0"
            if exp[0] not in "+-":
                exp = "+" + exp
            r = f"{mant}e{exp}"
        return r
    s = str(v)
    if _BARE.match(s) and s.casefold() not in _YAML_WORDS:
        return s
    return json.dumps(s, ensure_ascii=False)


def _flow(v: Any) -> str:
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_scalar(k)}: {_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return _scalar(v)


def spec_yaml(spec: Mapping[str, Any]) -> str:
    """The spec dict as YAML in the style of ``schemas/models/*.yaml`` (one feature a line)."""
    lines = [
        f"# Model spec inferred by `predaudit spec infer` for {spec['name']!r}: a starting point to review."
    ]
    for key, value in spec.items():
        if key == "features":
            lines.append("features:")
            lines.extend(f"  - {_flow(f)}" for f in value)
        else:
            lines.append(f"{key}: {_flow(value)}")
    return "\n".join(lines) + "\n"


# --- the command line -------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = StrictParser(prog="predaudit spec", description="model spec tools")
    sub = p.add_subparsers(dest="command", required=True, parser_class=StrictParser)
    inf = sub.add_parser(
        "infer",
        help="infer a starting spec from JSONL prediction events",
        description="Infer a starting model spec (YAML) from JSONL prediction events. Exit 0: spec written"
        " (invalid lines are skipped and counted on stderr); 2: usage error.",
    )
    inf.add_argument("--input", required=True, metavar="GLOB", help="JSONL files (.gz too), a glob pattern")
    inf.add_argument("--model", required=True, metavar="M", help="the model name, as in the events")
    inf.add_argument("--out", default="-", metavar="PATH", help="where to write the YAML (default: stdout)")
    inf.add_argument(
        "--sample",
        type=int,
        default=DEFAULT_SAMPLE,
        metavar="N",
        help=f"read at most N events (default {DEFAULT_SAMPLE})",
    )
    inf.add_argument(
        "--max-categories",
        type=int,
        default=MAX_CATEGORIES,
        metavar="K",
        help=f"strings a categorical feature may take before its vocabulary is left open (default {MAX_CATEGORIES})",
    )
    return p


class _ReadError(InferError):
    """An input file that cannot be read to its end."""


class _Reader:
    """Valid events of all models from the files, with per-code counts of the invalid lines."""

    def __init__(self, paths: Sequence[pathlib.Path]) -> None:
        self.paths = paths
        self.lines = self.invalid = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.models: collections.Counter[str] = collections.Counter()

    def __iter__(self) -> Iterator[Any]:
        from schemas import Decoders, EventValidationError

        dec = Decoders()
        for path in self.paths:
            try:
                with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as fh:
                    for raw in fh:
                        raw = raw.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n")
                        if not raw.strip():
                            continue
                        self.lines += 1
                        try:
                            ev, _ = dec.prediction(raw)
                        except EventValidationError as exc:
                            self.invalid += 1
                            self.errors[exc.code] += 1
                            continue
                        self.models[ev.model.name] += 1
                        yield ev
            except (OSError, EOFError) as exc:
                raise _ReadError(f"{path}: cannot read: {exc}") from None


def main(argv: Sequence[str], out: IO[str]) -> int:
    """``predaudit spec infer --input GLOB --model M [--out PATH] [--sample N]``; returns the exit code."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    prog = "predaudit spec infer"
    try:
        if args.sample <= 0 or args.max_categories <= 0:
            raise InferError("--sample and --max-categories must be > 0")
        paths = sorted(
            pathlib.Path(p) for p in glob.glob(args.input, recursive=True) if pathlib.Path(p).is_file()
        )
        if not paths:
            raise InferError(f"--input {args.input!r}: no such file")
        if args.out != "-" and not pathlib.Path(args.out).parent.is_dir():
            raise InferError(f"--out {args.out!r}: no such folder {str(pathlib.Path(args.out).parent)!r}")
        reader = _Reader(paths)
        try:
            spec = infer_spec(reader, args.model, max_categories=args.max_categories, sample=args.sample)
        except _ReadError:
            raise
        except InferError:
            seen = ", ".join(repr(m) for m, _ in reader.models.most_common(10)) or "none"
            raise InferError(
                f"model {args.model!r} is not in {reader.lines - reader.invalid} valid event(s) of"
                f" {len(paths)} file(s) (models seen: {seen}; {reader.invalid} invalid line(s))"
            ) from None
        text = spec_yaml(spec)
        from schemas.specs import parse_spec

        parse_spec(text, f"<inferred spec for {args.model}>")  # what we write must load
        if args.out == "-":
            out.write(text)
        else:
            pathlib.Path(args.out).write_text(text)
    except InferError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
    n = reader.models[args.model]
    bad = ", ".join(f"{code} {c}" for code, c in reader.errors.most_common())
    sys.stderr.write(
        f"{prog}: {len(spec['features'])} features from {n} event(s) of model {args.model!r}"
        f" ({reader.lines} line(s) read from {len(paths)} file(s)"
        + (f"; {reader.invalid} invalid line(s) skipped: {bad}" if reader.invalid else "")
        + ")"
        + ("" if args.out == "-" else f" -> {args.out}")
        + "\n"
    )
    return 0
