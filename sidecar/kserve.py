"""KServe payload logging: join request/response CloudEvents by ``ce-id`` into PredictionEvents.

KServe's logger POSTs each inference request and response as a binary-mode CloudEvent
(``ce-type`` ``org.kubeflow.serving.inference.request`` / ``…response``, same ``ce-id``,
extensions ``inferenceservicename``, ``namespace``, ``component``, ``endpoint``). The two
halves are joined here; a mapping file says which model/version an InferenceService is, what
its positional inputs are called and what its output means. Bodies may be V1
(``instances``/``predictions``) or V2 open inference (``inputs``/``outputs``). One event is
built per instance (``event_id`` = UUIDv5 of ``ce-id`` and the instance index, so a re-sent
half yields the same ids). A half whose pair did not arrive within the TTL is still published,
flagged in ``metadata.predaudit_unpaired`` (``request``: ``status`` ``error`` and the sentinel
label ``"<no response>"``; ``response``: no features).

The expiry sweep never stops on one bad half: a lone half whose body cannot be mapped, or
whose event breaks the contract, is reported once as a rejection (with its code) and
forgotten; a half the spool cannot take right now (full, disk error) stays pending and is
retried on the next pass; other halves are swept either way (``Joiner.expire``,
``run_sweeper``).

Mapping file (YAML)::

    ttl_s: 30
    services:
      - inferenceservice: fraud-detector     # ce-inferenceservicename
        namespace: prod                      # optional
        model: fraud
        version: "2026-02-15"                # or version_from: endpoint | component
        features: [amount, merchant_category, hour]   # names of positional inputs
        output: {field: score}               # score | value | label | scores
        # output: {field: scores, classes: [legit, fraud], name: probabilities}
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import logging
import os
import pathlib
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import orjson
import yaml

from schemas import EventValidationError
from sidecar.spool import SpoolWriteFailed

log = logging.getLogger("predaudit.sidecar")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
_NS = uuid.UUID("6f1d2a8e-3c55-4b8e-9a51-0d2d1b7f7a10")
NO_RESPONSE_LABEL = "<no response>"


class KServeError(ValueError):
    """A KServe payload that cannot be mapped: a stable ``code``, a message and the fix."""

    HINTS = {
        "kserve_bad_cloudevent": "Send a binary-mode CloudEvent (ce-specversion, ce-id, ce-type, ce-source headers).",
        "kserve_unknown_type": f"ce-type must be {REQUEST_TYPE} or {RESPONSE_TYPE}.",
        "kserve_unmapped_service": "Add the InferenceService (and namespace) to the --kserve-mapping file.",
        "kserve_bad_body": "Send a V1 (instances/predictions) or V2 (inputs/outputs) JSON body.",
        "kserve_shape_mismatch": "Make the mapping's `features` list match the model's input width.",
        "kserve_not_configured": "Start the sidecar with --kserve-mapping FILE to accept KServe CloudEvents.",
        "kserve_internal_error": "A predaudit bug mapping this body: report it with the sidecar's log line.",
    }

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "path": "$", "message": self.message, "hint": self.HINTS[self.code]}


class OutputMap(msgspec.Struct, forbid_unknown_fields=True):
    field: Literal["score", "value", "label", "scores"] = "score"
    classes: list[str] = []
    name: str | None = None


class ServiceMap(msgspec.Struct, forbid_unknown_fields=True):
    inferenceservice: str
    model: str
    namespace: str | None = None
    version: str | None = None
    version_from: Literal["endpoint", "component"] | None = None
    features: list[str] = []
    output: OutputMap = msgspec.field(default_factory=OutputMap)


class Mapping(msgspec.Struct, forbid_unknown_fields=True):
    services: list[ServiceMap]
    ttl_s: float = 30.0

    def find(self, service: str | None, namespace: str | None) -> ServiceMap:
        for s in self.services:
            if s.inferenceservice == service and (s.namespace is None or s.namespace == namespace):
                return s
        raise KServeError(
            "kserve_unmapped_service", f"no mapping for InferenceService {service!r} in {namespace!r}"
        )


def load_mapping(path: str | os.PathLike) -> Mapping:
    """Read and check a mapping file; errors name the file and the offending key."""
    try:
        doc = yaml.safe_load(pathlib.Path(path).read_text())
        mapping = msgspec.convert(doc, Mapping)
    except (OSError, yaml.YAMLError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path}: invalid KServe mapping: {exc}") from None
    for s in mapping.services:
        if not (s.version or s.version_from):
            raise ValueError(f"{path}: service {s.inferenceservice!r} needs `version` or `version_from`")
        if s.output.field == "scores" and not s.output.classes:
            raise ValueError(f"{path}: service {s.inferenceservice!r}: output field `scores` needs `classes`")
    return mapping


# -- body mapping (pure) ---------------------------------------------------------------------
def _rows(data: list, shape: list[int]) -> list:
    """V2 tensor data (flat row-major or nested) as one entry per instance."""
    if data and isinstance(data[0], list):
        return data
    if len(shape) <= 1:
        return data
    width = 1
    for d in shape[1:]:
        width *= d
    return [data[i : i + width] for i in range(0, len(data), width)]


def request_features(body: dict, svc: ServiceMap) -> list[dict[str, Any]]:
    """Features per instance from a V1 or V2 request body.

    >>> svc = ServiceMap("isvc", "fraud", version="1", features=["a", "b"])
    >>> request_features({"instances": [[1.0, 2.0], {"a": 3, "b": 4}]}, svc)
    [{'a': 1.0, 'b': 2.0}, {'a': 3, 'b': 4}]
    >>> request_features({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, svc)
    [{'a': 1, 'b': 2}, {'a': 3, 'b': 4}]
    """
    if isinstance(body.get("instances"), list):
        return [_instance_features(x, svc) for x in body["instances"]]
    if isinstance(body.get("inputs"), list) and _v1_inputs(body):
        return [_instance_features(x, svc) for x in body["inputs"]]
    inputs = body.get("inputs")
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(t, dict) and "data" in t for t in inputs)
    ):
        raise KServeError("kserve_bad_body", "request has neither `instances` (V1) nor `inputs` tensors (V2)")
    if len(inputs) == 1 and len(inputs[0].get("shape") or []) >= 2:
        return [_instance_features(row, svc) for row in _rows(inputs[0]["data"], inputs[0]["shape"])]
    columns = {t["name"]: _rows(t["data"], t.get("shape") or []) for t in inputs}
    n = {len(c) for c in columns.values()}
    if len(n) != 1:
        raise KServeError("kserve_shape_mismatch", f"V2 inputs have different batch sizes {sorted(n)}")
    size = n.pop()
    return [{name: _scalar(col[i]) for name, col in columns.items()} for i in range(size)]


def _v1_inputs(body: dict) -> bool:
    """V1 also allows ``inputs`` as a list of instances (not tensors with name/data)."""
    inputs = body["inputs"]
    return bool(inputs) and not all(isinstance(t, dict) and "data" in t and "name" in t for t in inputs)


def _scalar(v: Any) -> Any:
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def _instance_features(x: Any, svc: ServiceMap) -> dict[str, Any]:
    if isinstance(x, dict):
        return x
    values = x if isinstance(x, list) else [x]
    if len(values) != len(svc.features):
        raise KServeError(
            "kserve_shape_mismatch",
            f"instance has {len(values)} values but the mapping names {len(svc.features)} features",
        )
    return dict(zip(svc.features, values, strict=True))


def response_predictions(body: dict, svc: ServiceMap) -> list[dict[str, Any]]:
    """The ``prediction`` object per instance from a V1 or V2 response body.

    >>> svc = ServiceMap("isvc", "m", version="1", output=OutputMap("scores", ["no", "yes"]))
    >>> response_predictions({"predictions": [[0.2, 0.8]]}, svc)
    [{'scores': {'no': 0.2, 'yes': 0.8}, 'label': 'yes'}]
    >>> response_predictions({"outputs": [{"name": "p", "shape": [2], "datatype": "FP32", "data": [0.1, 0.9]}]},
    ...                      ServiceMap("isvc", "m", version="1"))
    [{'score': 0.1}, {'score': 0.9}]
    """
    if isinstance(body.get("predictions"), list):
        items = body["predictions"]
    else:
        outputs = body.get("outputs")
        if not isinstance(outputs, list) or not outputs:
            raise KServeError("kserve_bad_body", "response has neither `predictions` (V1) nor `outputs` (V2)")
        chosen = outputs[0]
        if svc.output.name is not None:
            named = [o for o in outputs if isinstance(o, dict) and o.get("name") == svc.output.name]
            if not named:
                raise KServeError("kserve_bad_body", f"response has no output named {svc.output.name!r}")
            chosen = named[0]
        if not isinstance(chosen, dict) or not isinstance(chosen.get("data"), list):
            raise KServeError("kserve_bad_body", "V2 output tensor without `data`")
        items = _rows(chosen["data"], chosen.get("shape") or [])
    return [_prediction(_scalar(x) if svc.output.field != "scores" else x, svc.output) for x in items]


def _prediction(x: Any, out: OutputMap) -> dict[str, Any]:
    if isinstance(x, dict):
        return {k: x[k] for k in ("label", "score", "scores", "value") if k in x}
    if out.field == "scores":
        if not isinstance(x, list) or len(x) != len(out.classes):
            raise KServeError(
                "kserve_shape_mismatch", f"expected {len(out.classes)} class scores, got {x!r:.80}"
            )
        best = max(range(len(x)), key=x.__getitem__)
        return {"scores": dict(zip(out.classes, x, strict=True)), "label": out.classes[best]}
    if out.field == "label" or isinstance(x, str):
        return {"label": x}
    return {out.field: x}


Rejection = KServeError | EventValidationError


# -- joining ---------------------------------------------------------------------------------
class Half(msgspec.Struct):
    """One logged CloudEvent, as kept until its pair arrives (and journaled for restarts)."""

    ce_id: str
    half: str  # "request" | "response"
    service: str | None
    namespace: str | None
    component: str | None
    endpoint: str | None
    time: str | None
    body: bytes
    arrived_at: float  # wall clock, so the TTL survives a restart


def half_from_cloudevent(headers: Any, body: bytes, arrived_at: float) -> Half:
    """Parse a binary-mode CloudEvent with the cloudevents SDK."""
    from cloudevents.exceptions import GenericException
    from cloudevents.http import from_http

    try:
        ev = from_http(dict(headers), body, data_unmarshaller=lambda b: b)
    except GenericException as exc:
        raise KServeError("kserve_bad_cloudevent", str(exc)[:200]) from None
    ce_type = ev["type"]
    if ce_type not in (REQUEST_TYPE, RESPONSE_TYPE):
        raise KServeError("kserve_unknown_type", f"ce-type {ce_type!r}")
    data = ev.data if isinstance(ev.data, bytes) else json.dumps(ev.data).encode()
    return Half(
        ce_id=ev["id"],
        half="request" if ce_type == REQUEST_TYPE else "response",
        service=ev.get("inferenceservicename"),
        namespace=ev.get("namespace"),
        component=ev.get("component"),
        endpoint=ev.get("endpoint"),
        time=ev.get("time"),
        body=data,
        arrived_at=arrived_at,
    )


def _parse_time(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _body(half: Half) -> dict:
    try:
        doc = orjson.loads(half.body)
    except orjson.JSONDecodeError:
        raise KServeError("kserve_bad_body", f"{half.half} body is not JSON") from None
    if not isinstance(doc, dict):
        raise KServeError("kserve_bad_body", f"{half.half} body is not a JSON object")
    return doc


def build_events(mapping: Mapping, request: Half | None, response: Half | None) -> list[bytes]:
    """PredictionEvents (JSON bytes) for a joined pair, or for a lone half after the TTL.

    A body of a shape the mapping cannot read is a ``kserve_bad_body`` error (a 400 for the
    sender), never an exception from deep inside the mapping (which would be a 500):

    >>> svc = ServiceMap("isvc", "m", version="1", features=["a", "b"])
    >>> bad = {"inputs": [{"name": "x", "shape": [1, "2"], "datatype": "FP32", "data": [1, 2]}]}
    >>> half = Half("id-1", "request", "isvc", None, None, None, None, orjson.dumps(bad), 0.0)
    >>> build_events(Mapping([svc]), half, None)
    Traceback (most recent call last):
    ...
    sidecar.kserve.KServeError: kserve_bad_body: request body: unexpected tensor or instance shape (TypeError)
    """
    try:
        return _build_events(mapping, request, response)
    except KServeError:
        raise
    except (TypeError, KeyError, IndexError, AttributeError, ValueError) as exc:
        which = "request or response" if request and response else (request or response).half
        raise KServeError(
            "kserve_bad_body", f"{which} body: unexpected tensor or instance shape ({type(exc).__name__})"
        ) from None


def _build_events(mapping: Mapping, request: Half | None, response: Half | None) -> list[bytes]:
    first = request or response
    assert first is not None
    svc = mapping.find(first.service, first.namespace)
    version = svc.version or getattr(first, svc.version_from or "endpoint") or "unknown"
    features = request_features(_body(request), svc) if request else None
    preds = response_predictions(_body(response), svc) if response else None
    n = len(features if features is not None else preds)
    if features is not None and preds is not None and len(preds) != n:
        raise KServeError("kserve_shape_mismatch", f"{n} instances in the request, {len(preds)} predictions")
    t_req = _parse_time(request.time) if request else None
    t_resp = _parse_time(response.time) if response else None
    when = t_req or t_resp or _dt.datetime.fromtimestamp(first.arrived_at, _dt.timezone.utc)
    meta = {"source": "kserve", "ce_id": first.ce_id[:256], "inferenceservice": str(first.service)}
    for k in ("namespace", "component", "endpoint"):
        if getattr(first, k):
            meta[k] = str(getattr(first, k))[:256]
    if request is None or response is None:
        meta["predaudit_unpaired"] = first.half
    out = []
    for i in range(n):
        ev: dict[str, Any] = {
            "schema_version": "1",
            "event_id": str(uuid.uuid5(_NS, f"{first.ce_id}/{i}")),
            "event_time": when.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z"),
            "model": {"name": svc.model, "version": version},
            "features": features[i] if features is not None else {},
            "prediction": preds[i] if preds is not None else {"label": NO_RESPONSE_LABEL},
            "metadata": meta,
        }
        if preds is None:
            ev["status"] = "error"
        if t_req and t_resp:
            ev["latency_ms"] = max(0.0, (t_resp - t_req).total_seconds() * 1000.0)
        out.append(orjson.dumps(ev))
    return out


class Joiner:
    """Pairs halves by ce-id; a journal keeps unpaired halves across restarts.

    ``emit(events, half_or_none)`` receives the built events (it spools them); the journal
    marks the id done only after ``emit`` returned, so a crash in between re-emits (same ids).
    A journal line is written whole or not at all: a half the disk cannot journal is refused
    (``SpoolWriteFailed``: the sidecar answers 503, KServe's logger retries), never kept
    half-written where it would garble the next line. A "done" mark the disk refused is healed
    by rewriting the journal from memory once space is back.
    """

    def __init__(
        self, mapping: Mapping, journal_dir: str | os.PathLike, emit: Callable[[list[bytes]], None]
    ) -> None:
        self.mapping, self.emit = mapping, emit
        self._pending: dict[str, Half] = {}
        self._path = pathlib.Path(journal_dir) / "kserve-pending.journal"
        self._done_lines = 0
        self._last_warning = -60.0
        #: halves ``emit`` could not take in a sweep (each is retried on the next pass)
        self.retry_errors = 0
        self._stale = False  # a "done" mark could not be written: rewrite the journal when possible
        self._load()
        self._journal = open(self._path, "ab", buffering=0)

    def _load(self) -> None:
        if not self._path.exists():
            return
        dec = msgspec.msgpack.Decoder(Half)
        for line in self._path.read_bytes().splitlines():
            if not line:
                continue
            try:
                raw = bytes.fromhex(line.decode())
                if raw[:1] == b"D":
                    self._pending.pop(raw[1:].decode(), None)
                else:
                    half = dec.decode(raw[1:])
                    self._pending[f"{half.ce_id}\0{half.half}"] = half
            except (ValueError, msgspec.DecodeError):  # torn last line: never answered 202
                continue
        try:
            self._compact()
        except OSError as exc:  # the journal read is still right; compact another time
            self._warn(f"KServe journal not compacted ({exc})")

    def _write(self, kind: bytes, payload: bytes) -> None:
        """Append one journal line whole, or cut a partial write back off and raise OSError."""
        if self._stale:
            self._rewrite()
        line = memoryview((kind + payload).hex().encode() + b"\n")
        fd = self._journal.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while line:
                line = line[os.write(fd, line) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise

    def _compact(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                for half in self._pending.values():
                    f.write((b"H" + msgspec.msgpack.encode(half)).hex().encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self._done_lines = 0

    def _rewrite(self) -> None:
        """Compact into a fresh journal; on a disk error keep the old one (still appendable)."""
        self._journal.close()
        try:
            self._compact()
            self._stale = False
        except OSError as exc:
            self._warn(f"KServe journal not rewritten ({exc}); retrying later")
        finally:
            self._journal = open(self._path, "ab", buffering=0)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, half: Half) -> int:
        """Take one half; returns the number of events emitted (0 while waiting for its pair)."""
        other = "response" if half.half == "request" else "request"
        pair = self._pending.get(f"{half.ce_id}\0{other}")
        if pair is None:
            self.mapping.find(half.service, half.namespace)  # unmapped: reject now, not at TTL
            try:
                self._write(b"H", msgspec.msgpack.encode(half))
            except OSError as exc:  # not journaled, so not accepted: 503, KServe's logger retries
                raise SpoolWriteFailed(self._path.parent, exc) from None
            self._pending[f"{half.ce_id}\0{half.half}"] = half
            return 0
        req, resp = (half, pair) if half.half == "request" else (pair, half)
        events = build_events(self.mapping, req, resp)
        self.emit(events)
        del self._pending[f"{pair.ce_id}\0{other}"]
        self._mark_done(f"{pair.ce_id}\0{other}")
        return len(events)

    def _mark_done(self, key: str) -> None:
        """Journal that ``key`` is done; never raises (the in-memory state is already right)."""
        try:
            self._write(b"D", key.encode())
        except OSError as exc:  # healed by a rewrite from memory once the disk takes it
            self._stale = True
            self._warn(f"KServe journal not writable ({exc}); it is rewritten once space is back")
            return
        self._done_lines += 1
        if self._done_lines > 10000 and self._done_lines > 4 * len(self._pending):
            self._rewrite()

    def expire(self, now: float | None = None) -> list[tuple[str, Rejection | None]]:
        """Emit halves older than the TTL, flagged as unpaired; returns (half, error) per half done.

        Never raises, so one bad half cannot stop the sweeper. A half whose events cannot be
        built or break the contract is done with its error (a ``KServeError`` or
        ``EventValidationError``, both with a ``code``): it was acknowledged, so it is reported
        as a rejection, not retried. A half ``emit`` cannot take now (spool full, disk error)
        stays pending for the next pass, logged at most once a minute; the others go on.
        """
        now = time.time() if now is None else now
        out: list[tuple[str, Rejection | None]] = []
        if self._stale:
            self._rewrite()
        for key, half in list(self._pending.items()):
            if now - half.arrived_at < self.mapping.ttl_s:
                continue
            err: Rejection | None = None
            try:
                req, resp = (half, None) if half.half == "request" else (None, half)
                events = build_events(self.mapping, req, resp)
            except KServeError as exc:  # body unmappable: it was accepted, so it is reported, not retried
                err = exc
            except Exception as exc:  # noqa: BLE001 (a mapping bug must not stop the sweeper: reported)
                err = KServeError("kserve_internal_error", f"{type(exc).__name__} mapping the {half.half}")
            if err is None:
                try:
                    self.emit(events)
                except (KServeError, EventValidationError) as exc:  # breaks the contract: a rejection
                    err = exc
                except Exception as exc:  # noqa: BLE001 (kept pending and retried: nothing dropped)
                    self.retry_errors += 1
                    self._warn(
                        f"unpaired KServe {half.half} not spooled yet ({type(exc).__name__}: {exc}); retrying"
                    )
                    continue
            del self._pending[key]
            self._mark_done(key)
            out.append((half.half, err))
        return out

    def _warn(self, message: str) -> None:
        mono = time.monotonic()
        if mono - self._last_warning >= 60.0:
            self._last_warning = mono
            log.warning("%s", message)

    def close(self) -> None:
        self._journal.close()


async def run_sweeper(
    joiner: Joiner,
    report: Callable[[str, Rejection | None], None],
    interval_s: float | None = None,
) -> None:
    """Expire lone halves forever (until cancelled); ``report(half, error)`` per half done.

    A pass that raises (in ``report`` too) is logged at most once a minute and the loop goes
    on: a dead sweeper would silently stop every later lone half from being published.
    """
    interval = interval_s if interval_s is not None else min(1.0, joiner.mapping.ttl_s / 4)
    last_warning = -60.0
    while True:
        await asyncio.sleep(interval)
        try:
            for half, err in joiner.expire():
                report(half, err)
        except Exception as exc:  # logged (with the traceback); the next pass retries
            mono = time.monotonic()
            if mono - last_warning >= 60.0:
                last_warning = mono
                log.exception("KServe sweep pass failed (%s); the sweeper goes on", type(exc).__name__)
