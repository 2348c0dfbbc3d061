"""The serving sidecar: accept prediction/label events on loopback, spool them, publish them.

Routes: ``POST /v1/predictions`` and ``POST /v1/labels`` (one JSON event, a JSON array or
NDJSON). A request is all or nothing, so a client that retries any non-2xx answer can cause
neither duplicates nor loss: 202 once every event of it is in the spool (and fsynced with
``--fsync always``); 400 when any event breaks the contract, with nothing spooled and the first
``MAX_LISTED`` rejected events listed by index with their code, plus counts by code; 413 above
``max_request_bytes``; 401 without the bearer token when one is configured; 408 when the body
does not arrive within ``body_timeout_s``; 503 with ``Retry-After`` when the spool is full or
the disk refused the write (nothing of the request stays). ``POST /`` takes KServe's
binary-mode CloudEvents (see ``sidecar.kserve``); it is never token-checked, because KServe's
logger cannot send a token: keep the sidecar on loopback. ``GET /healthz``, ``/readyz``
(spool writable, drainer passes succeeding) and ``/metrics`` (Prometheus). Payloads are never
logged. No client input gives a 500: undecodable text and nesting too deep for the parser are
400s with a code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import errno
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
from sidecar.kserve import Joiner, KServeError, half_from_cloudevent, load_mapping, run_sweeper
from sidecar.metrics import SidecarMetrics
from sidecar.publisher import Drainer, make_api
from sidecar.spool import Spool, SpoolFull, SpoolWriteFailed

log = logging.getLogger("predaudit.sidecar")
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
#: rejected events listed in a 400 body (the rest are counted by code): bounds the body size
MAX_LISTED = 100
#: room the spool volume needs beyond --spool-max-bytes (cursor, lock, KServe journal, fs overhead)
SPOOL_HEADROOM = 1 << 20


def volume_bytes(path: str | os.PathLike) -> int | None:
    """Size of the filesystem holding ``path`` (None if it cannot be asked).

    >>> volume_bytes("/") > 0
    True
    """
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize


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
    #: SIGTERM: stop accepting, publish for at most this long in all, exit (the rest stays spooled)
    shutdown_grace_s: float = 5.0
    #: a connection without a complete request for this long is closed (slowloris, idle keep-alive)
    idle_timeout_s: float = 15.0
    #: a request body must arrive within this long (408 otherwise)
    body_timeout_s: float = 10.0
    limits: Limits = dataclasses.field(default_factory=Limits)

    def topic_path(self, topic: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{self.project}/topics/{topic}"


class BodyError(ValueError):
    """A request body that is not one JSON value, a JSON array or NDJSON (``code`` says why)."""

    def __init__(self, message: str, code: str = "invalid_json") -> None:
        super().__init__(message)
        self.code = code


def split_body(body: bytes, content_type: str = "application/json") -> list[bytes]:
    """The events of a request body: one JSON object, a JSON array, or NDJSON lines.

    >>> split_body(b'[{"a": 1}, {"b": 2}]')
    [b'{"a": 1}', b'{"b": 2}']
    >>> split_body(b'{"a": 1}\\n{"b": 2}\\n', "application/x-ndjson")
    [b'{"a": 1}', b'{"b": 2}']
    >>> split_body(b'{"a": 1}\\n{"b": 2}')
    [b'{"a": 1}', b'{"b": 2}']
    >>> split_body(b"[" * 100_000 + b"]" * 100_000)
    Traceback (most recent call last):
    ...
    sidecar.server.BodyError: the JSON array nests deeper than the parser allows
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
        except RecursionError:
            raise BodyError(
                "the JSON array nests deeper than the parser allows", "nesting_too_deep"
            ) from None
    stripped = body.strip()
    if b"\n" in stripped:
        try:
            msgspec.json.decode(stripped)
            return [stripped]  # one pretty-printed object
        except RecursionError:
            return [stripped]  # one object, too deep: the event decoder names the error
        except msgspec.DecodeError:
            return [line.strip() for line in stripped.splitlines() if line.strip()]
    return [stripped]


class Sidecar:
    """One sidecar: spool + drainer + HTTP app. ``start()`` serves from a background thread."""

    def __init__(self, cfg: SidecarConfig, api_factory: Callable[[], Any] | None = None) -> None:
        self.cfg = cfg
        self.metrics = SidecarMetrics()
        self.decoders = Decoders(cfg.limits)
        self.spool = Spool(
            cfg.spool_dir, cfg.spool_max_bytes, cfg.fsync, cfg.fsync_interval_s, on_error=self._spool_error
        )
        volume = volume_bytes(cfg.spool_dir)
        if volume is not None and cfg.spool_max_bytes + SPOOL_HEADROOM > volume:
            log.warning(
                "--spool-max-bytes %d does not fit the spool volume (%d bytes): the disk fills before"
                " the cap (requests then get 503 spool_write_failed); set it to at most %d",
                cfg.spool_max_bytes,
                volume,
                volume - SPOOL_HEADROOM,
            )
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
        self._last_spool_log: dict[str, float] = {}
        self._stopped = False

    def _spool_error(self, op: str, exc: OSError) -> None:
        """A disk error the spool survived: counted, logged at most once a minute per operation."""
        name = errno.errorcode.get(exc.errno or 0, "EIO")
        self.metrics.spool_errors.labels(op, name).inc()
        now = time.monotonic()
        if now - self._last_spool_log.get(op, -120.0) >= 60:
            self._last_spool_log[op] = now
            then = "answering 503 until it succeeds" if op == "append" else "retrying"
            log.error("spool %s failed in %s: %s (%s); %s", op, self.cfg.spool_dir, name, exc.strerror, then)

    # -- app --------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_request_bytes, middlewares=[_client_errors])
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
        # header bytes that are not UTF-8 arrive as surrogates: compare the client's bytes
        sent = got[7:].strip().encode("utf-8", "surrogateescape")
        return got.startswith("Bearer ") and hmac.compare_digest(sent, self._token)

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

    async def _read_body(self, request: web.Request, route: str, auth: bool = True) -> bytes | web.Response:
        if auth and not self._authorized(request):
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
            async with asyncio.timeout(self.cfg.body_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(route)
        except TimeoutError:
            resp = self._error(
                route,
                408,
                "request_timeout",
                f"the request body did not arrive within {self.cfg.body_timeout_s:g} s",
                "Send the whole body at once; the connection is closed.",
            )
            resp.force_close()
            return resp

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
            self.metrics.rejected.labels(kind, exc.code).inc()
            return self._error(route, 400, exc.code, str(exc), "Send a JSON object, a JSON array or NDJSON.")
        now = _dt.datetime.now(_dt.timezone.utc)  # ingest time for the contract's clock-skew bound
        accepted_at = time.time()
        decode = self.decoders.prediction if kind == "prediction" else self.decoders.label
        records: list = []
        listed: list[dict[str, Any]] = []
        by_code: dict[str, int] = {}
        for i, raw in enumerate(items):
            try:
                ev, ts = decode(raw, now)
            except EventValidationError as exc:
                by_code[exc.code] = by_code.get(exc.code, 0) + 1
                if len(listed) < MAX_LISTED:
                    listed.append({"index": i, **exc.to_dict()})
                continue
            if not by_code:  # once one event is rejected, the request is: stop building records
                attrs = attributes_of(ev, ts)
                records.append((kind, attrs.get("model", ""), raw, attrs, accepted_at))
        if by_code:
            return self._rejected(route, kind, len(items), listed, by_code)
        full = await self._append(records)
        if full is not None:
            return self._unavailable(route, full)
        self.metrics.accepted.labels(kind).inc(len(records))
        self.metrics.requests.labels(route, "202").inc()
        self.metrics.request_latency.labels(route).observe(time.perf_counter() - t0)
        return self._json(202, {"accepted": len(records)})

    def _rejected(
        self, route: str, kind: str, n: int, listed: list[dict[str, Any]], by_code: dict[str, int]
    ) -> web.Response:
        """400 for a request with invalid events: none of its events is spooled."""
        for code, count in by_code.items():
            self.metrics.rejected.labels(kind, code).inc(count)
        bad = sum(by_code.values())
        return self._error(
            route,
            400,
            "invalid_events",
            f"{bad} of {n} events break the contract; nothing of this request was accepted",
            "Fix or drop the rejected events and send the request again (all or nothing).",
            accepted=0,
            rejected=listed,
            rejected_count=bad,
            rejected_by_code=by_code,
        )

    def _unavailable(self, route: str, exc: SpoolFull) -> web.Response:
        """503 + Retry-After: the spool is full or the disk refused the write (nothing stored)."""
        self.metrics.requests.labels(route, "503").inc()
        if isinstance(exc, SpoolWriteFailed):
            code, hint = (
                "spool_write_failed",
                "Retry after the Retry-After delay; the sidecar's disk is full or failing.",
            )
        else:
            code, hint = "spool_full", "Retry after the Retry-After delay."
        return self._json(
            503,
            {"accepted": 0, "error": {"code": code, "message": str(exc), "hint": hint}},
            headers={"Retry-After": str(self.cfg.retry_after_s)},
        )

    async def _append(self, records: list) -> SpoolFull | None:
        """Spool records (and wait for fsync in ``always`` mode); the SpoolFull error or None."""
        try:
            ticket = self.spool.append(records)
        except SpoolFull as exc:
            return exc
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
        body = await self._read_body(request, route, auth=False)  # KServe's logger sends no token
        if isinstance(body, web.Response):
            return body
        if self.joiner is None:
            err = KServeError("kserve_not_configured", "this sidecar has no KServe mapping")
            self.metrics.rejected.labels("prediction", err.code).inc()
            return self._json(400, {"rejected": [err.to_dict()]})
        if self.spool.used_bytes + 2 * len(body) > self.spool.max_bytes:
            return self._unavailable(route, SpoolFull(f"spool holds {self.spool.used_bytes} bytes"))
        try:
            half = half_from_cloudevent(request.headers, body, time.time())
            emitted = self.joiner.add(half)
        except (KServeError, EventValidationError) as exc:
            self.metrics.rejected.labels("prediction", exc.code).inc()
            self.metrics.requests.labels(route, "400").inc()
            return self._json(400, {"rejected": [exc.to_dict()]})
        except SpoolFull as exc:
            return self._unavailable(route, exc)
        if self.cfg.fsync == "always":
            await self._append([])
        self.metrics.requests.labels(route, "202").inc()
        return self._json(202, {"accepted": emitted, "pending": self.joiner.pending})

    def _report_unpaired(self, half: str, err: Any) -> None:
        """The sweeper's report for one lone half done: published flagged, or a counted rejection."""
        self.metrics.kserve_unpaired.labels(half).inc()
        if err is not None:
            self.metrics.rejected.labels("prediction", getattr(err, "code", "kserve_bad_body")).inc()
            log.warning("unpaired KServe %s could not be mapped: %s", half, getattr(err, "code", "?"))

    # -- probes -----------------------------------------------------------------------------
    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self.spool.writable() and self.drainer.alive()  # alive: its passes succeed
        return web.Response(status=200 if ready else 503, text="ready\n" if ready else "not ready\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        m = self.metrics
        m.spool_bytes.set(self.spool.unpublished_bytes)
        m.spool_disk_bytes.set(self.spool.used_bytes)
        m.spool_depth.set(self.spool.depth)
        m.oldest_age.set(self.drainer.oldest_unpublished_age_s)
        return web.Response(body=m.render(), content_type="text/plain", charset="utf-8")

    # -- lifecycle --------------------------------------------------------------------------
    async def _start_async(self) -> None:
        self._runner = web.AppRunner(
            self.app(),
            access_log=None,
            keepalive_timeout=self.cfg.idle_timeout_s,
            # an answer sent before its body was read (408, 413): drain it for at most 1 s, close
            lingering_time=min(1.0, self.cfg.body_timeout_s),
            # in-flight requests get at most a fifth of the grace to finish at shutdown
            shutdown_timeout=max(0.1, self.cfg.shutdown_grace_s / 5),
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, backlog=2048, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        if self.joiner is not None:
            # run_sweeper survives a failing pass (a dead sweeper would strand every lone half)
            self._sweeper = asyncio.get_running_loop().create_task(
                run_sweeper(self.joiner, self._report_unpaired)
            )

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

    def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting, publish what is pending, close the spool: all within the grace.

        ``drain_timeout_s`` defaults to ``shutdown_grace_s``; what is not published by then
        stays in the spool for the next start.
        """
        if self._stopped:
            return
        self._stopped = True
        grace = self.cfg.shutdown_grace_s if drain_timeout_s is None else drain_timeout_s
        deadline = time.monotonic() + grace
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(max(0.5, grace / 4))
        self.drainer.stop(max(0.0, deadline - time.monotonic() - 0.25))
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
        t0 = time.monotonic()
        self.stop()
        log.info(
            "predaudit sidecar stopped in %.1f s; %d unpublished events stay in %s for the next start",
            time.monotonic() - t0,
            self.spool.depth,
            self.cfg.spool_dir,
        )


@web.middleware
async def _client_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Text a client sent that cannot be decoded, or nests past the parser: a 400 with a code."""
    try:
        return await handler(request)
    except UnicodeError:
        code, message = "invalid_encoding", "a header or the body is not valid UTF-8"
    except RecursionError:
        code, message = "nesting_too_deep", "the body nests deeper than the parser allows"
    hint = "Send UTF-8 text and JSON nested at most a few levels deep."
    return web.Response(
        status=400,
        body=orjson.dumps({"error": {"code": code, "message": message, "hint": hint}}),
        content_type="application/json",
    )


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
        shutdown_grace_s=getattr(args, "shutdown_grace_s", 5.0),
        idle_timeout_s=getattr(args, "idle_timeout_s", 15.0),
        body_timeout_s=getattr(args, "body_timeout_s", 10.0),
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
    if not 0 < cfg.shutdown_grace_s <= 600:
        problems.append(f"--shutdown-grace-s {cfg.shutdown_grace_s}: must be in (0, 600]")
    for name, value in (("--idle-timeout-s", cfg.idle_timeout_s), ("--body-timeout-s", cfg.body_timeout_s)):
        if not value > 0:
            problems.append(f"{name} {value}: must be above 0")
    if cfg.auth_token_file and not os.path.isfile(cfg.auth_token_file):
        problems.append(f"--auth-token-file {cfg.auth_token_file}: no such file")
    if cfg.kserve_mapping and not os.path.isfile(cfg.kserve_mapping):
        problems.append(f"--kserve-mapping {cfg.kserve_mapping}: no such file")
    if problems:
        raise ValueError("; ".join(problems))
    return cfg
