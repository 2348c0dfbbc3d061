"""``make loadtest``: the sidecar at 5,000 events/s for 60 s into the real Pub/Sub emulator.

The sidecar runs as its own process (as in a pod); this process is the load generator: an
open-loop schedule every 10 ms of batched requests (20 events) and single-event requests.
Printed: accepted/s, p50/p99 accept latency (request sent -> 202 received), publish lag,
the count check (published = accepted, spool empty), the same generator against a do-nothing
HTTP server (baseline: the floor of this machine's HTTP stack) and a step test for the
maximum sustainable rate.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import uuid

import aiohttp
import orjson
from aiohttp import web

from pipelines import localstack

PROJECT = "predaudit-loadtest"
TICK_S = 0.01


def make_events(n: int) -> list[bytes]:
    now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    out = []
    for i in range(n):
        ev = {
            "schema_version": "1",
            "event_id": f"{uuid.uuid4()}",
            "event_time": now,
            "model": {"name": "fraud" if i % 3 else "churn", "version": "1"},
            "features": {
                "amount": 10.0 + i % 977,
                "merchant_category": "grocery",
                "hour": i % 24,
                "tx_last_24h": i % 9,
            },
            "prediction": {"score": (i % 100) / 100.0, "label": "fraud" if i % 7 == 0 else "legit"},
            "latency_ms": 3.5,
            "metadata": {"host": "pod-1"},
        }
        out.append(orjson.dumps(ev))
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def drive(
    base: str, rate: int, seconds: float, events: list[bytes], batch: int = 20, single_share: float = 0.2
) -> dict:
    """Open-loop load: each 10 ms tick sends its share as batches and single-event requests."""
    per_tick = rate * TICK_S
    singles_per_tick = per_tick * single_share
    batches_per_tick = (per_tick - singles_per_tick) / batch
    lat: list[float] = []
    accepted = 0
    errors: dict[int, int] = {}
    pending: set[asyncio.Task] = set()
    conn = aiohttp.TCPConnector(limit=256, force_close=False)
    idx = 0

    async with aiohttp.ClientSession(connector=conn) as session:

        async def send(body: bytes, n: int) -> None:
            nonlocal accepted
            t0 = time.perf_counter()
            try:
                async with session.post(
                    base + "/v1/predictions", data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = 0
            lat.append(time.perf_counter() - t0)
            if status == 202:
                accepted += n
            else:
                errors[status] = errors.get(status, 0) + 1

        start = time.perf_counter()
        ticks = int(seconds / TICK_S)
        carry_s = carry_b = 0.0
        for k in range(ticks):
            carry_s += singles_per_tick
            carry_b += batches_per_tick
            while carry_b >= 1:
                body = b"[" + b",".join(events[(idx + j) % len(events)] for j in range(batch)) + b"]"
                idx += batch
                t = asyncio.create_task(send(body, batch))
                pending.add(t)
                t.add_done_callback(pending.discard)
                carry_b -= 1
            while carry_s >= 1:
                t = asyncio.create_task(send(events[idx % len(events)], 1))
                idx += 1
                pending.add(t)
                t.add_done_callback(pending.discard)
                carry_s -= 1
            delay = start + (k + 1) * TICK_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if pending:
            await asyncio.wait(pending, timeout=30)
        elapsed = time.perf_counter() - start
    return {
        "sent": idx,
        "accepted": accepted,
        "accepted_per_s": accepted / elapsed,
        "p50_ms": percentile(lat, 0.50) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "errors": errors,
        "requests": len(lat),
    }


async def baseline_server() -> tuple[web.AppRunner, int]:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, body=b'{"accepted":1}', content_type="application/json")

    app = web.Application(client_max_size=8 << 20)
    app.router.add_post("/v1/predictions", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def run_baseline_process(port_file: pathlib.Path) -> None:
    """The do-nothing server, in its own process like the sidecar (same event loop choice)."""
    from sidecar.server import _new_loop

    loop = _new_loop()
    runner, port = loop.run_until_complete(baseline_server())
    port_file.write_text(str(port))
    loop.run_forever()


def metrics(base: str) -> dict[str, float]:
    import requests

    out: dict[str, float] = {}
    for line in requests.get(base + "/metrics", timeout=5).text.splitlines():
        if line.startswith("predaudit_sidecar") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def hist_quantile(m: dict[str, float], name: str, q: float) -> float:
    buckets = sorted(
        (float(re.search(r'le="([^"]+)"', k).group(1)), v)
        for k, v in m.items()
        if k.startswith(name + "_bucket")
    )
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if count >= q * total:
            return le
    return float("inf")


def drain_subscription(sub, subscription: str, quiet_s: float = 3.0) -> int:
    """Pull (and ack) until the subscription stays empty for ``quiet_s``; the message count."""
    n, idle_since = 0, time.monotonic()
    while time.monotonic() - idle_since < quiet_s:
        resp = sub.pull(subscription=subscription, max_messages=1000, timeout=5)
        if resp.received_messages:
            sub.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in resp.received_messages])
            n += len(resp.received_messages)
            idle_since = time.monotonic()
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--baseline-seconds", type=float, default=15.0)
    ap.add_argument("--step-seconds", type=float, default=8.0)
    ap.add_argument("--fsync", default="interval")
    args = ap.parse_args()

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="predaudit-loadtest-"))
    events = make_events(20000)
    with localstack.services(lambda: localstack.start_pubsub_emulator(tmp / "logs")) as (emu,):
        os.environ["PUBSUB_EMULATOR_HOST"] = emu.endpoint
        from google.cloud import pubsub_v1

        pub = pubsub_v1.PublisherClient()
        topic = pub.create_topic(name=f"projects/{PROJECT}/topics/predictions").name
        pub.create_topic(name=f"projects/{PROJECT}/topics/labels")
        sub = pubsub_v1.SubscriberClient()
        sub.create_subscription(request={"name": f"projects/{PROJECT}/subscriptions/audit", "topic": topic})

        # baseline: the same generator against a do-nothing server in another process
        port_file = tmp / "baseline.port"
        base_proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from tests.bench.loadtest import run_baseline_process as r; import pathlib; r(pathlib.Path({str(port_file)!r}))",
            ]
        )
        localstack.wait_until(
            lambda: port_file.exists() and port_file.read_text(), 30, "baseline server", base_proc
        )
        baseline = asyncio.run(
            drive(f"http://127.0.0.1:{port_file.read_text()}", args.rate, args.baseline_seconds, events)
        )
        base_proc.terminate()
        base_proc.wait(10)

        port = localstack.free_port()
        cmd = [
            sys.executable, "-m", "pipelines.cli", "sidecar", "--port", str(port), "--project", PROJECT,
            "--spool-dir", str(tmp / "spool"), "--fsync", args.fsync,
        ]  # fmt: skip
        log = (tmp / "sidecar.log").open("ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            localstack.wait_until(lambda: localstack._http_up(base + "/readyz"), 60, "sidecar", proc)
            main_run = asyncio.run(drive(base, args.rate, args.seconds, events))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                m = metrics(base)
                if m.get("predaudit_sidecar_spool_depth", 1) == 0:
                    break
                time.sleep(0.2)
            drain_s = 120 - (deadline - time.monotonic())
            m = metrics(base)
            accepted = m.get('predaudit_sidecar_accepted_total{kind="prediction"}', 0)
            published = m.get('predaudit_sidecar_published_total{kind="prediction"}', 0)
            lag50 = hist_quantile(m, "predaudit_sidecar_publish_lag_seconds", 0.5)
            lag99 = hist_quantile(m, "predaudit_sidecar_publish_lag_seconds", 0.99)
            handling = {k: v for k, v in m.items() if 'route="/v1/predictions"' in k}
            serve50 = hist_quantile(handling, "predaudit_sidecar_request_seconds", 0.5)
            serve99 = hist_quantile(handling, "predaudit_sidecar_request_seconds", 0.99)

            steps = []
            for rate in (5000, 10000, 15000, 20000, 30000):
                r = asyncio.run(drive(base, rate, args.step_seconds, events))
                steps.append((rate, r))
                if r["accepted_per_s"] < 0.95 * rate or r["p99_ms"] > 50 or r["errors"]:
                    break
            sustainable = max(
                [
                    rate
                    for rate, r in steps
                    if r["accepted_per_s"] >= 0.95 * rate and not r["errors"] and r["p99_ms"] <= 50
                ]
                or [0]
            )
            time.sleep(1)
            m2 = metrics(base)
            received = drain_subscription(sub, f"projects/{PROJECT}/subscriptions/audit")
        finally:
            proc.terminate()
            proc.wait(30)

    print(
        f"\npredaudit sidecar load test (target {args.rate} ev/s for {args.seconds:.0f} s; 80% of events in batches of 20, 20% single-event requests; fsync={args.fsync})"
    )
    print(f"{'':34}{'sidecar':>14}{'baseline (no-op server)':>26}")
    print(f"{'accepted events/s':34}{main_run['accepted_per_s']:>14,.0f}{baseline['accepted_per_s']:>26,.0f}")
    print(f"{'requests':34}{main_run['requests']:>14,}{baseline['requests']:>26,}")
    print(f"{'accept latency p50 (ms)':34}{main_run['p50_ms']:>14.2f}{baseline['p50_ms']:>26.2f}")
    print(f"{'accept latency p99 (ms)':34}{main_run['p99_ms']:>14.2f}{baseline['p99_ms']:>26.2f}")
    print(f"{'in-handler time p50 / p99 (ms, <=)':34}{serve50 * 1000:>8.1f} /{serve99 * 1000:>4.1f}")
    print(
        f"{'non-202 responses':34}{sum(main_run['errors'].values()):>14}{sum(baseline['errors'].values()):>26}"
    )
    print(
        f"publish lag (accept -> Pub/Sub confirmed): p50 <= {lag50 * 1000:.0f} ms, p99 <= {lag99 * 1000:.0f} ms (histogram buckets); backlog drained {drain_s:.1f} s after the load stopped"
    )
    ok = accepted == published == main_run["accepted"] and m.get("predaudit_sidecar_spool_depth", 1) == 0
    print(
        f"count check: client saw {main_run['accepted']:,} accepted, sidecar accepted {accepted:,.0f}, published {published:,.0f}, spool depth {m.get('predaudit_sidecar_spool_depth'):.0f} -> {'OK' if ok else 'MISMATCH'}"
    )
    print("step test (8 s per rate):")
    for rate, r in steps:
        print(
            f"  target {rate:>6,}/s: accepted {r['accepted_per_s']:>8,.0f}/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  non-202 {sum(r['errors'].values())}"
        )
    print(f"maximum sustainable rate (>=95% accepted, p99 <= 50 ms, no errors): {sustainable:,} ev/s")
    total_acc = m2.get('predaudit_sidecar_accepted_total{kind="prediction"}', 0)
    total_pub = m2.get('predaudit_sidecar_published_total{kind="prediction"}', 0)
    print(
        f"after the step test: accepted {total_acc:,.0f}, published {total_pub:,.0f},"
        f" pulled from the emulator's subscription {received:,}"
        f" -> {'OK' if received >= total_pub == total_acc else 'MISMATCH'}"
    )
    print(
        f"targets: p99 < 5 ms at {args.rate}/s -> {'MET' if main_run['p99_ms'] < 5 else 'MISSED'}; zero loss -> {'MET' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
