"""The serving sidecar: accept prediction/label events on loopback, spool them, publish them.

Routes: ``POST /v1/predictions`` and ``POST /v1/labels`` (one JSON event, a JSON array or
NDJSON) reply 202 once every valid event is in the spool; 400 lists each rejected event by
index with its contract error code (valid events of the same request are accepted, and the
body says how many); 413 above ``max_request_bytes``; 401 without the bearer token when one is
configured; 503 with ``Retry-After`` only when the spool is full. ``POST /`` takes KServe's
binary-mode CloudEvents (see ``sidecar.kserve``). ``GET /healthz``, ``/readyz`` (spool
writable, drainer alive) and ``/metrics`` (Prometheus). Payloads are never logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import gc
import hmac
import logging
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
from aiohttp import web

from schemas import Decoders, EventValidationError, Limits
from sidecar.attributes import attributes_of
from sidecar.kserve import Joiner, KServeError, half_from_cloudevent, load_mapping
from sidecar.metrics import SidecarMetrics
from sidecar.publisher import Drainer, make_api
from sidecar.spool import Spool, SpoolFull

log = logging.getLogger("predaudit.sidecar")
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])


@dataclasses.dataclass
class SidecarConfig:
    """Every option of ``predaudit sidecar`` (defaults = the documented ones)."""

    host: str = "127.0.0.1"
    port: int = 8089
    project: str = "predaudit-local"
    predictions_topic: str = "predictions"
    labels_topic: str = "labels"
    spool_dir: str = "./predaudit-spool"
    spool_max_bytes: int = 1 << 30
    fsync: str = "interval"
    fsync_interval_s: float = 1.0
    auth_token_file: str | None = None
    kserve_mapping: str | None = None
    max_request_bytes: int = 8 << 20
    ordering: bool = True
    batch_max_messages: int = 1000
    batch_max_bytes: int = 1 << 20
    batch_max_latency_ms: float = 10.0
    publish_timeout_s: float = 60.0
    retry_after_s: int = 5
    limits: Limits = dataclasses.field(default_factory=Limits)

    def topic_path(self, topic: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{self.project}/topics/{topic}"


class BodyError(ValueError):
    pass


def split_body(body: bytes, content_type: str = "application/json") -> list[bytes]:
    """The events of a request body: one JSON object, a JSON array, or NDJSON lines.

    >>> split_body(b'[{"a": 1}, {"b": 2}]')
    [b'{"a": 1}', b'{"b": 2}']
    >>> split_body(b'{"a": 1}\\n{"b": 2}\\n', "application/x-ndjson")
    [b'{"a": 1}', b'{"b": 2}']
    >>> split_body(b'{"a": 1}\\n{"b": 2}')
    [b'{"a": 1}', b'{"b": 2}']
    """
    head = body.lstrip()[:1]
    if not head:
        raise BodyError("the request body is empty")
    if "ndjson" in content_type or "jsonl" in content_type or "json-seq" in content_type:
        return [line.strip() for line in body.splitlines() if line.strip()]
    if head == b"[":
        try:
            return [bytes(r) for r in _RAW_LIST.decode(body)]
        except msgspec.DecodeError as exc:
            raise BodyError(f"the JSON array does not parse: {exc}") from None
    stripped = body.strip()
    if b"\n" in stripped:
        try:
            msgspec.json.decode(stripped)
            return [stripped]  # one pretty-printed object
        except msgspec.DecodeError:
            return [line.strip() for line in stripped.splitlines() if line.strip()]
    return [stripped]


class Sidecar:
    """One sidecar: spool + drainer + HTTP app. ``start()`` serves from a background thread."""

    def __init__(self, cfg: SidecarConfig, api_factory: Callable[[], Any] | None = None) -> None:
        self.cfg = cfg
        self.metrics = SidecarMetrics()
        self.decoders = Decoders(cfg.limits)
        self.spool = Spool(cfg.spool_dir, cfg.spool_max_bytes, cfg.fsync, cfg.fsync_interval_s)
        topics = {
            "prediction": cfg.topic_path(cfg.predictions_topic),
            "label": cfg.topic_path(cfg.labels_topic),
        }
        self.drainer = Drainer(
            self.spool,
            topics,
            self.metrics,
            api_factory or make_api,
            ordering=cfg.ordering,
            max_messages=cfg.batch_max_messages,
            max_bytes=cfg.batch_max_bytes,
            max_latency_s=cfg.batch_max_latency_ms / 1000.0,
            publish_timeout_s=cfg.publish_timeout_s,
        )
        self._token = None
        if cfg.auth_token_file:
            self._token = pathlib.Path(cfg.auth_token_file).read_text().strip().encode()
            if not self._token:
                raise ValueError(f"{cfg.auth_token_file}: the auth token file is empty")
        self.joiner = None
        if cfg.kserve_mapping:
            self.joiner = Joiner(load_mapping(cfg.kserve_mapping), cfg.spool_dir, self._emit_kserve)
        self.port = cfg.port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._sweeper: asyncio.Task | None = None

    # -- app --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_request_bytes)
        app.router.add_post("/v1/predictions", self._predictions)
        app.router.add_post("/v1/labels", self._labels)
        app.router.add_post("/", self._kserve)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        got = request.headers.get("Authorization", "")
        return got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip().encode(), self._token)

    @staticmethod
    def _json(status: int, doc: dict, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=status, body=orjson.dumps(doc), content_type="application/json", headers=headers
        )

    def _error(
        self, route: str, status: int, code: str, message: str, hint: str, **extra: Any
    ) -> web.Response:
        self.metrics.requests.labels(route, str(status)).inc()
        return self._json(status, {"error": {"code": code, "message": message, "hint": hint}, **extra})

    async def _read_body(self, request: web.Request, route: str) -> bytes | web.Response:
        if not self._authorized(request):
            return self._error(
                route,
                401,
                "unauthorized",
                "missing or wrong bearer token",
                "Send Authorization: Bearer <token>.",
            )
        if request.content_length is not None and request.content_length > self.cfg.max_request_bytes:
            return self._too_large(route)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(route)

    def _too_large(self, route: str) -> web.Response:
        return self._error(
            route,
            413,
            "request_too_large",
            f"request body above max_request_bytes={self.cfg.max_request_bytes}",
            "Send smaller batches (events are at most max_payload_bytes each).",
        )

    async def _predictions(self, request: web.Request) -> web.Response:
        return await self._ingest(request, "prediction", "/v1/predictions")

    async def _labels(self, request: web.Request) -> web.Response:
        return await self._ingest(request, "label", "/v1/labels")

    async def _ingest(self, request: web.Request, kind: str, route: str) -> web.Response:
        t0 = time.perf_counter()
        body = await self._read_body(request, route)
        if isinstance(body, web.Response):
            return body
        try:
            items = split_body(body, request.content_type)
        except BodyError as exc:
            self.metrics.rejected.labels(kind, "invalid_json").inc()
            return self._error(
                route, 400, "invalid_json", str(exc), "Send a JSON object, a JSON array or NDJSON."
            )
        now = _dt.datetime.now(_dt.timezone.utc)  # ingest time for the contract's clock-skew bound
        accepted_at = time.time()
        decode = self.decoders.prediction if kind == "prediction" else self.decoders.label
        records, rejected = [], []
        for i, raw in enumerate(items):
            try:
                ev, ts = decode(raw, now)
            except EventValidationError as exc:
                self.metrics.rejected.labels(kind, exc.code).inc()
                rejected.append({"index": i, **exc.to_dict()})
                continue
            attrs = attributes_of(ev, ts)
            records.append((kind, attrs.get("model", ""), raw, attrs, accepted_at))
        if records:
            full = await self._append(records)
            if full is not None:
                self.metrics.requests.labels(route, "503").inc()
                return self._json(
                    503,
                    {
                        "error": {
                            "code": "spool_full",
                            "message": full,
                            "hint": "Retry after the Retry-After delay.",
                        }
                    },
                    headers={"Retry-After": str(self.cfg.retry_after_s)},
                )
            self.metrics.accepted.labels(kind).inc(len(records))
        status = 400 if rejected else 202
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.request_latency.labels(route).observe(time.perf_counter() - t0)
        doc: dict[str, Any] = {"accepted": len(records)}
        if rejected:
            doc["rejected"] = rejected
        return self._json(status, doc)

    async def _append(self, records: list) -> str | None:
        """Spool records (and wait for fsync in ``always`` mode); the SpoolFull message or None."""
        try:
            ticket = self.spool.append(records)
        except SpoolFull as exc:
            return str(exc)
        if self.cfg.fsync == "always":
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            self.spool.on_durable(ticket, lambda: loop.call_soon_threadsafe(_resolve, done))
            await done
        return None

    # -- KServe -----------------------------------------------------------------------------
    def _emit_kserve(self, events: list[bytes]) -> None:
        now = _dt.datetime.now(_dt.timezone.utc)
        records = []
        for raw in events:
            ev, ts = self.decoders.prediction(raw, now)  # mapped events obey the contract too
            attrs = attributes_of(ev, ts)
            records.append(("prediction", ev.model.name, raw, attrs, time.time()))
        self.spool.append(records)
        self.metrics.accepted.labels("prediction").inc(len(records))

    async def _kserve(self, request: web.Request) -> web.Response:
        route = "/"
        body = await self._read_body(request, route)
        if isinstance(body, web.Response):
            return body
        if self.joiner is None:
            err = KServeError("kserve_not_configured", "this sidecar has no KServe mapping")
            self.metrics.rejected.labels("prediction", err.code).inc()
            return self._json(400, {"rejected": [err.to_dict()]})
        if self.spool.unpublished_bytes + 2 * len(body) > self.spool.max_bytes:
            self.metrics.requests.labels(route, "503").inc()
            return self._json(
                503, {"error": {"code": "spool_full"}}, headers={"Retry-After": str(self.cfg.retry_after_s)}
            )
        try:
            half = half_from_cloudevent(request.headers, body, time.time())
            emitted = self.joiner.add(half)
        except (KServeError, EventValidationError) as exc:
            self.metrics.rejected.labels("prediction", exc.code).inc()
            self.metrics.requests.labels(route, "400").inc()
            return self._json(400, {"rejected": [exc.to_dict()]})
        except SpoolFull as exc:
            self.metrics.requests.labels(route, "503").inc()
            return self._json(
                503,
                {"error": {"code": "spool_full", "message": str(exc)}},
                headers={"Retry-After": str(self.cfg.retry_after_s)},
            )
        if self.cfg.fsync == "always":
            await self._append([])
        self.metrics.requests.labels(route, "202").inc()
        return self._json(202, {"accepted": emitted, "pending": self.joiner.pending})

    async def _sweep(self) -> None:
        assert self.joiner is not None
        while True:
            await asyncio.sleep(min(1.0, self.joiner.mapping.ttl_s / 4))
            for half, err in self.joiner.expire():
                self.metrics.kserve_unpaired.labels(half).inc()
                if err is not None:
                    self.metrics.rejected.labels("prediction", getattr(err, "code", "kserve_bad_body")).inc()
                    log.warning("unpaired KServe %s could not be mapped: %s", half, err.code)

    # -- probes -----------------------------------------------------------------------------
    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self.spool.writable() and self.drainer.alive()
        return web.Response(status=200 if ready else 503, text="ready\n" if ready else "not ready\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        m = self.metrics
        m.spool_bytes.set(self.spool.unpublished_bytes)
        m.spool_depth.set(self.spool.depth)
        m.oldest_age.set(self.drainer.oldest_unpublished_age_s)
        return web.Response(body=m.render(), content_type="text/plain", charset="utf-8")

    # -- lifecycle --------------------------------------------------------------------------
    async def _start_async(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, backlog=2048, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        if self.joiner is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _stop_async(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        if self._runner:
            await self._runner.cleanup()

    def start(self) -> Sidecar:
        """Serve from a background thread; returns once listening (``self.port`` is set)."""
        self.drainer.start()
        errors: list[BaseException] = []

        def run() -> None:
            self._loop = _new_loop()
            try:
                self._loop.run_until_complete(self._start_async())
            except BaseException as exc:  # noqa: BLE001 (re-raised in the caller thread)
                errors.append(exc)
                self._started.set()
                return
            self._started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._stop_async())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="sidecar-http", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if errors:
            self.drainer.stop(0)
            raise errors[0]
        return self

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Stop accepting, publish what is pending for a while, close the spool."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self.drainer.stop(drain_timeout_s)
        if self.joiner is not None:
            self.joiner.close()
        self.spool.close()

    def serve_forever(self) -> None:
        """Foreground mode for the CLI: until SIGTERM/SIGINT, then a graceful stop."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        # The HTTP thread shares the interpreter with the publisher: a shorter GIL switch
        # interval bounds how long a request waits behind a batch being encoded (default 5 ms),
        # and freezing start-up objects keeps full GC passes short.
        sys.setswitchinterval(0.0005)
        self.start()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)  # requests allocate much and keep little: fewer gen-0 passes
        log.info(
            "predaudit sidecar listening on %s:%d (spool %s)", self.cfg.host, self.port, self.cfg.spool_dir
        )
        print(f"predaudit sidecar listening on http://{self.cfg.host}:{self.port}", flush=True)
        stop.wait()
        self.stop()


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def config_from_args(args: Any) -> SidecarConfig:
    """A SidecarConfig from parsed CLI args, with values checked before anything starts."""
    cfg = SidecarConfig(
        host=args.host,
        port=args.port,
        project=args.project,
        predictions_topic=args.predictions_topic,
        labels_topic=args.labels_topic,
        spool_dir=args.spool_dir,
        spool_max_bytes=args.spool_max_bytes,
        fsync=args.fsync,
        auth_token_file=args.auth_token_file,
        kserve_mapping=args.kserve_mapping,
        max_request_bytes=args.max_request_bytes,
        ordering=args.ordering == "model",
        batch_max_messages=args.batch_max_messages,
        batch_max_bytes=args.batch_max_bytes,
        batch_max_latency_ms=args.batch_max_latency_ms,
        publish_timeout_s=args.publish_timeout_s,
    )
    problems = []
    if not 0 <= cfg.port < 65536:
        problems.append(f"--port {cfg.port}: must be 0-65535")
    if cfg.spool_max_bytes < 1 << 20:
        problems.append(f"--spool-max-bytes {cfg.spool_max_bytes}: must be at least 1 MiB")
    if not 1 <= cfg.batch_max_messages <= 1000:
        problems.append(f"--batch-max-messages {cfg.batch_max_messages}: Pub/Sub allows 1-1000")
    if not 1024 <= cfg.batch_max_bytes <= 10 << 20:
        problems.append(f"--batch-max-bytes {cfg.batch_max_bytes}: Pub/Sub allows up to 10 MB per request")
    if cfg.auth_token_file and not os.path.isfile(cfg.auth_token_file):
        problems.append(f"--auth-token-file {cfg.auth_token_file}: no such file")
    if cfg.kserve_mapping and not os.path.isfile(cfg.kserve_mapping):
        problems.append(f"--kserve-mapping {cfg.kserve_mapping}: no such file")
    if problems:
        raise ValueError("; ".join(problems))
    return cfg
