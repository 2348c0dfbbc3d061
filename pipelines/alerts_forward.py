"""``predaudit alerts forward``: anomaly CloudEvents from a Pub/Sub subscription to Alertmanager.

Each pulled message becomes Alertmanager v2 alerts (``POST /api/v2/alerts``) and, with
``--webhook-url``, is also POSTed as a structured CloudEvent to that URL. A message is acked
only after every post for it succeeded; a failed post is retried with capped exponential
backoff while the messages' ack deadlines are extended, so an Alertmanager outage delays
alerts but loses none (and a crash redelivers them: re-posting an alert is idempotent in
Alertmanager, which merges alerts by label set).

Identity and resolution. Labels are alertname, model, version, signal, detector and
severity (warning | critical). An event for a series fires the alert of its severity and
resolves the series' alert of the other severity (an escalation closes the warning); a
``resolved`` event resolves both (``endsAt`` = the event time). A firing alert's ``endsAt``
is ``--firing-for`` after the later of the event time and now: the monitors re-alert a
persistent breach once per cooldown, so keep ``--firing-for`` above the spec's cooldown.

Malformed messages (not JSON, not an anomaly CloudEvent) are never silently acked: each is
forwarded as a ``predaudit_malformed_anomaly`` alert carrying the message id, the reason and
the payload's start, then acked. An alert Alertmanager itself refuses (HTTP 400) is sent the
same way with Alertmanager's answer. Exit codes: 0 done or stopped by SIGTERM/SIGINT, 2 usage or a
subscription that cannot be read (missing, permission denied).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import IO, Any

from schemas.cliargs import StrictParser

log = logging.getLogger("predaudit.alerts")

SEVERITIES = ("warning", "critical")
MALFORMED_ALERTNAME = "predaudit_malformed_anomaly"
_REQUIRED_DATA = ("model", "version", "signal", "detector", "statistic", "threshold", "severity")
_PAYLOAD_PREFIX = 512  # characters of a malformed payload quoted in the alert


class MalformedEvent(ValueError):
    """The message is not an anomaly CloudEvent (the text says why, with the path)."""


def _parse_time(text: Any, path: str) -> dt.datetime:
    """An RFC 3339 timestamp with offset, as an aware UTC datetime.

    >>> _parse_time("2026-03-01T00:05:00.000000Z", "time").isoformat()
    '2026-03-01T00:05:00+00:00'
    >>> _parse_time("2026-03-01 00:05", "time")
    Traceback (most recent call last):
    ...
    pipelines.alerts_forward.MalformedEvent: time: not an RFC 3339 timestamp with offset: '2026-03-01 00:05'
    """
    try:
        if not isinstance(text, str) or "T" not in text:
            raise ValueError
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if t.tzinfo is None:
            raise ValueError
    except ValueError:
        raise MalformedEvent(f"{path}: not an RFC 3339 timestamp with offset: {text!r}") from None
    return t.astimezone(dt.timezone.utc)


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_event(payload: bytes) -> dict[str, Any]:
    """The anomaly CloudEvent in a message, checked for what the mapping needs.

    >>> parse_event(b'{"specversion": "1.0"}')
    Traceback (most recent call last):
    ...
    pipelines.alerts_forward.MalformedEvent: $.type: missing
    >>> parse_event(b"not json")
    Traceback (most recent call last):
    ...
    pipelines.alerts_forward.MalformedEvent: $: not JSON (Expecting value at char 0)
    """
    try:
        event = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = f"{exc.msg} at char {exc.pos}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise MalformedEvent(f"$: not JSON ({reason})") from None
    if not isinstance(event, dict):
        raise MalformedEvent("$: not a JSON object")
    for key in ("type", "time", "data"):
        if key not in event:
            raise MalformedEvent(f"$.{key}: missing")
    if not (isinstance(event["type"], str) and event["type"].startswith("predaudit.anomaly.")):
        raise MalformedEvent(f"$.type: not a predaudit.anomaly.* type: {event['type']!r}")
    data = event["data"]
    if not isinstance(data, dict):
        raise MalformedEvent("$.data: not a JSON object")
    for key in _REQUIRED_DATA:
        if key not in data:
            raise MalformedEvent(f"$.data.{key}: missing")
    for key in ("model", "version", "signal", "detector"):
        if not isinstance(data[key], str) or not data[key]:
            raise MalformedEvent(f"$.data.{key}: not a non-empty string")
    if data["severity"] not in (*SEVERITIES, "resolved"):
        raise MalformedEvent(f"$.data.severity: not warning | critical | resolved: {data['severity']!r}")
    for key in ("statistic", "threshold"):
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise MalformedEvent(f"$.data.{key}: not a finite number")
    _parse_time(event["time"], "$.time")
    return event


def _fmt(v: float) -> str:
    """
    >>> _fmt(0.123456789), _fmt(12), _fmt(1e-9)
    ('0.1235', '12', '1e-09')
    """
    return f"{v:.4g}"


def event_to_alerts(
    event: dict[str, Any], now: dt.datetime, firing_for: dt.timedelta, generator_url: str = ""
) -> list[dict[str, Any]]:
    """Alertmanager v2 alerts for one (checked) anomaly CloudEvent.

    The event's severity fires (``endsAt`` = ``firing_for`` after the later of the event
    time and ``now``); the other severity of the series resolves at the event time, so an
    escalation closes the warning. A ``resolved`` event resolves both.

    >>> ev = {"id": "e1", "type": "predaudit.anomaly.feature_drift", "time": "2026-03-01T00:20:00Z",
    ...       "data": {"model": "fraud", "version": "v1", "signal": "amount", "detector": "psi",
    ...                "statistic": 0.31, "threshold": 0.25, "severity": "critical", "sample_size": 900,
    ...                "window_start": "2026-03-01T00:15:00Z", "window_end": "2026-03-01T00:20:00Z"}}
    >>> now = dt.datetime(2026, 3, 1, 0, 21, tzinfo=dt.timezone.utc)
    >>> crit, warn = event_to_alerts(ev, now, dt.timedelta(hours=2))
    >>> crit["labels"]
    {'alertname': 'predaudit_feature_drift', 'model': 'fraud', 'version': 'v1', 'signal': 'amount', 'detector': 'psi', 'severity': 'critical'}
    >>> crit["startsAt"], crit["endsAt"]
    ('2026-03-01T00:20:00.000000Z', '2026-03-01T02:21:00.000000Z')
    >>> crit["annotations"]["summary"]
    'fraud v1: amount psi 0.31 >= 0.25 (critical)'
    >>> warn["labels"]["severity"], warn["endsAt"]
    ('warning', '2026-03-01T00:20:00.000000Z')
    >>> ev["data"]["severity"] = "resolved"
    >>> [(a["labels"]["severity"], a["endsAt"]) for a in event_to_alerts(ev, now, dt.timedelta(hours=2))]
    [('warning', '2026-03-01T00:20:00.000000Z'), ('critical', '2026-03-01T00:20:00.000000Z')]
    """
    d = event["data"]
    at = _parse_time(event["time"], "$.time")
    kind = event["type"].removeprefix("predaudit.anomaly.")
    base = {
        "alertname": f"predaudit_{kind}",
        "model": d["model"],
        "version": d["version"],
        "signal": d["signal"],
        "detector": d["detector"],
    }
    lower_is_worse = d["detector"] == "accuracy"
    op = "<=" if lower_is_worse else ">="
    window = f"{d.get('window_start', '?')} .. {d.get('window_end', '?')}"
    annotations = {
        "summary": (
            f"{d['model']} {d['version']}: {d['signal']} {d['detector']} {_fmt(d['statistic'])} "
            + (
                f"{op} {_fmt(d['threshold'])} ({d['severity']})"
                if d["severity"] != "resolved"
                else f"back within {_fmt(d['threshold'])} (resolved)"
            )
        ),
        "statistic": _fmt(d["statistic"]),
        "threshold": _fmt(d["threshold"]),
        "window": window,
        "sample_size": str(d.get("sample_size", "")),
        "event_id": str(event.get("id", "")),
        "event_type": event["type"],
    }
    fire = d["severity"] if d["severity"] in SEVERITIES else None
    alerts = []
    for sev in ([fire] if fire else []) + [s for s in SEVERITIES if s != fire]:
        ends = max(at, now) + firing_for if sev == fire else at
        alert = {
            "labels": {**base, "severity": sev},
            "annotations": annotations,
            "startsAt": _rfc3339(at),
            "endsAt": _rfc3339(ends),
        }
        if generator_url:
            alert["generatorURL"] = generator_url
        alerts.append(alert)
    return alerts


def malformed_alert(
    message_id: str, reason: str, payload: bytes, now: dt.datetime, firing_for: dt.timedelta
) -> dict[str, Any]:
    """The alert that stands for a message that is not an anomaly event (never silently acked).

    >>> now = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    >>> a = malformed_alert("42", "$: not JSON", b"\\xff{", now, dt.timedelta(hours=1))
    >>> a["labels"], a["annotations"]["payload"]
    ({'alertname': 'predaudit_malformed_anomaly', 'severity': 'warning', 'message_id': '42'}, '\\\\xff{')
    """
    text = payload[:_PAYLOAD_PREFIX].decode("utf-8", errors="backslashreplace")
    return {
        "labels": {"alertname": MALFORMED_ALERTNAME, "severity": "warning", "message_id": message_id},
        "annotations": {
            "summary": f"anomaly message {message_id} is not an anomaly CloudEvent: {reason}",
            "reason": reason,
            "payload": text,
            "payload_size": str(len(payload)),
            "fix": "publish CloudEvents per schemas/json/anomaly_event.schema.json",
        },
        "startsAt": _rfc3339(now),
        "endsAt": _rfc3339(now + firing_for),
    }


class ForwardError(Exception):
    """The subscription cannot be read (missing, denied): one line, exit 2."""


class PostError(Exception):
    """A post failed. ``permanent``: the receiver refused the content (4xx but 408/429)."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def post_json(url: str, body: Any, timeout: float, content_type: str = "application/json") -> None:
    """POST ``body`` as JSON; raise PostError on a non-2xx answer or a transport failure."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", errors="replace").strip()
        permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise PostError(f"{url}: HTTP {exc.code}: {detail}", permanent) from None
    except (OSError, ValueError) as exc:  # refused, reset, timeout, DNS
        raise PostError(f"{url}: {exc}", False) from None


def backoff_delays(initial: float, cap: float) -> Callable[[int], float]:
    """Delay before retry ``n`` (0-based): doubling from ``initial``, capped at ``cap``.

    >>> d = backoff_delays(0.5, 4.0); [d(n) for n in range(6)]
    [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    """
    return lambda n: min(cap, initial * (2 ** min(n, 30)))


@dataclasses.dataclass
class Stats:
    """What a run forwarded (printed at exit)."""

    messages: int = 0
    alerts: int = 0
    malformed: int = 0
    refused: int = 0
    retries: int = 0
    webhook_posts: int = 0


@dataclasses.dataclass
class Forwarder:
    """Pull, map, post, ack. ``stop`` (set by SIGTERM) ends the loop between steps."""

    subscriber: Any
    subscription: str
    alertmanager_url: str
    webhook_url: str | None = None
    firing_for: dt.timedelta = dt.timedelta(hours=2)
    batch_size: int = 100
    http_timeout: float = 10.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    ack_extension_s: int = 60
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    stats: Stats = dataclasses.field(default_factory=Stats)
    # Wall-clock time on purpose: Alertmanager expires a firing alert at its endsAt against its own
    # clock, so "firing for --firing-for from now" must be now; startsAt/endsAt of real events still
    # come from the event's time. Not a Beam transform (this is the alert router process).
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)

    @property
    def _alerts_endpoint(self) -> str:
        return self.alertmanager_url.rstrip("/") + "/api/v2/alerts"

    def _extend(self, ack_ids: list[str]) -> None:
        try:
            self.subscriber.modify_ack_deadline(
                request={
                    "subscription": self.subscription,
                    "ack_ids": ack_ids,
                    "ack_deadline_seconds": self.ack_extension_s,
                }
            )
        except Exception as exc:  # noqa: BLE001 - the message is redelivered; posting again is idempotent
            log.warning("could not extend ack deadlines (%s); messages may be redelivered", exc)

    def _post_retrying(self, url: str, body: Any, ack_ids: list[str], content_type: str) -> bool:
        """True once posted; False if stopped first. A permanent refusal raises PostError."""
        delay = backoff_delays(self.initial_backoff, self.max_backoff)
        attempt, extended = 0, time.monotonic()
        while not self.stop.is_set():
            try:
                post_json(url, body, self.http_timeout, content_type)
                return True
            except PostError as exc:
                if exc.permanent:
                    raise
                wait = delay(attempt)
                log.warning("post failed (%s); retry %d in %.1fs", exc, attempt + 1, wait)
                attempt += 1
                self.stats.retries += 1
                if time.monotonic() - extended > self.ack_extension_s / 3:
                    self._extend(ack_ids)
                    extended = time.monotonic()
                self.stop.wait(wait)
        return False

    def _post_alerts(self, alerts: list[dict], ack_ids: list[str]) -> bool:
        """Post a batch; if Alertmanager refuses it, post one by one and replace refusals."""
        try:
            return self._post_retrying(self._alerts_endpoint, alerts, ack_ids, "application/json")
        except PostError:
            pass
        now = self.clock()
        for alert in alerts:
            try:
                ok = self._post_retrying(self._alerts_endpoint, [alert], ack_ids, "application/json")
            except PostError as exc:
                self.stats.refused += 1
                stand_in = malformed_alert(
                    alert["annotations"].get("event_id", "?"),
                    f"Alertmanager refused the alert: {exc}",
                    json.dumps(alert).encode(),
                    now,
                    self.firing_for,
                )
                ok = self._post_retrying(self._alerts_endpoint, [stand_in], ack_ids, "application/json")
            if not ok:
                return False
        return True

    def handle(self, received: Sequence[Any]) -> bool:
        """Forward pulled messages and ack them; False (nothing acked) if stopped first."""
        now = self.clock()
        alerts: list[dict] = []
        events: list[dict] = []
        for rm in received:
            msg = rm.message
            try:
                event = parse_event(msg.data)
            except MalformedEvent as exc:
                self.stats.malformed += 1
                log.warning("message %s is not an anomaly event: %s", msg.message_id, exc)
                alerts.append(malformed_alert(msg.message_id, str(exc), msg.data, now, self.firing_for))
                continue
            events.append(event)
            alerts += event_to_alerts(event, now, self.firing_for)
        ack_ids = [rm.ack_id for rm in received]
        # oldest first: a series' resolution is applied after its firing
        alerts.sort(key=lambda a: a["startsAt"])  # stable: an event's own alerts keep their order
        if alerts and not self._post_alerts(alerts, ack_ids):
            return False
        if self.webhook_url:
            for event in events:
                if not self._post_webhook(event, ack_ids):
                    return False
        self.subscriber.acknowledge(request={"subscription": self.subscription, "ack_ids": ack_ids})
        self.stats.messages += len(received)
        self.stats.alerts += len(alerts)
        return True

    def _post_webhook(self, event: dict, ack_ids: list[str]) -> bool:
        try:
            ok = self._post_retrying(self.webhook_url, event, ack_ids, "application/cloudevents+json")
        except PostError as exc:  # the webhook refuses this event for good: say so in Alertmanager
            self.stats.refused += 1
            stand_in = malformed_alert(
                str(event.get("id", "?")),
                f"webhook refused the event: {exc}",
                json.dumps(event).encode(),
                self.clock(),
                self.firing_for,
            )
            return self._post_retrying(self._alerts_endpoint, [stand_in], ack_ids, "application/json")
        self.stats.webhook_posts += int(ok)
        return ok

    def pull(self, timeout: float) -> list[Any] | None:
        """Up to ``batch_size`` messages; [] when none came within ``timeout`` s; None when
        Pub/Sub could not be reached (retried by the caller). A missing subscription or a
        permission problem raises ForwardError (it will not fix itself)."""
        from google.api_core import exceptions as gexc

        try:
            resp = self.subscriber.pull(
                request={"subscription": self.subscription, "max_messages": self.batch_size},
                timeout=timeout,
            )
        except gexc.DeadlineExceeded:
            return []
        except (gexc.NotFound, gexc.PermissionDenied, gexc.Unauthenticated, gexc.InvalidArgument) as exc:
            raise ForwardError(f"cannot pull from {self.subscription}: {exc.message}") from None
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            log.warning("pull from %s failed (%s); retrying", self.subscription, exc)
            return None
        return list(resp.received_messages)

    def run(
        self, once: bool = False, max_messages: int | None = None, pull_timeout: float | None = None
    ) -> None:
        """Forward until stopped; ``once``: until a pull returns nothing; ``max_messages``: that many.

        A pull waits up to ``pull_timeout`` s for messages (default 3 s with ``once``, else 30 s).
        """
        pull_timeout = pull_timeout or (3.0 if once else 30.0)
        while not self.stop.is_set():
            if max_messages is not None and self.stats.messages >= max_messages:
                return
            received = self.pull(pull_timeout)
            if received is None:  # Pub/Sub unreachable: not drained, try again shortly
                self.stop.wait(min(self.max_backoff, 5.0))
                continue
            if max_messages is not None:
                # forward (and ack) no more than asked: the rest go back for another run
                extra = received[max(0, max_messages - self.stats.messages) :]
                received = received[: len(received) - len(extra)]
                if extra:
                    self._nack([rm.ack_id for rm in extra])
            if not received:
                if once:  # a pull that waited pull_timeout for nothing: drained
                    return
                continue
            if not self.handle(received):
                self._nack([rm.ack_id for rm in received])
                return

    def _nack(self, ack_ids: list[str]) -> None:
        """Give messages back now (deadline 0) so another forwarder takes them."""
        try:
            self.subscriber.modify_ack_deadline(
                request={"subscription": self.subscription, "ack_ids": ack_ids, "ack_deadline_seconds": 0}
            )
        except Exception as exc:  # noqa: BLE001 - they come back when their deadline passes anyway
            log.info("nack: %s", exc)


def _duration(text: str) -> dt.timedelta:
    """``90s``, ``30m``, ``2h``, ``1d`` (a bare number is seconds).

    >>> _duration("2h"), _duration("45")
    (datetime.timedelta(seconds=7200), datetime.timedelta(seconds=45))
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (e.g. 90s, 30m, 2h, 1d): {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return dt.timedelta(seconds=value)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = StrictParser(prog="predaudit alerts", description="Route anomaly events to alerting.")
    sub = p.add_subparsers(dest="action", required=True)
    f = sub.add_parser(
        "forward",
        prog="predaudit alerts forward",
        allow_abbrev=False,
        help="pull anomaly CloudEvents and post them to Alertmanager (and a webhook)",
        description=__doc__.split("\n\n")[1],
    )
    f.error = p.error  # type: ignore[method-assign]
    f.add_argument(
        "--subscription", required=True, metavar="S", help="projects/P/subscriptions/S on the anomaly topic"
    )
    f.add_argument("--alertmanager-url", required=True, metavar="URL", help="e.g. http://alertmanager:9093")
    f.add_argument("--webhook-url", metavar="URL", help="also POST each CloudEvent (structured JSON) here")
    f.add_argument(
        "--pubsub-endpoint", metavar="HOST:PORT", help="the Pub/Sub emulator (sets PUBSUB_EMULATOR_HOST)"
    )
    f.add_argument(
        "--firing-for",
        type=_duration,
        default=dt.timedelta(hours=2),
        metavar="D",
        help="a firing alert's endsAt after the event (default 2h; keep above the monitors' cooldown)",
    )
    f.add_argument("--batch-size", type=_positive_int, default=100, metavar="N", help="messages per pull")
    f.add_argument(
        "--max-backoff", type=_duration, default=dt.timedelta(seconds=30), metavar="D", help="retry cap"
    )
    f.add_argument("--once", action="store_true", help="stop when the subscription is drained")
    f.add_argument("--max-messages", type=_positive_int, metavar="N", help="stop after forwarding N")
    return p


def main(argv: Sequence[str], out: IO[str]) -> int:
    """``predaudit alerts forward ...``; see the module docstring."""
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    if not args.subscription.startswith("projects/") or "/subscriptions/" not in args.subscription:
        print(
            f"predaudit alerts forward: error: --subscription {args.subscription!r}: "
            "use projects/P/subscriptions/S",
            file=sys.stderr,
        )
        return 2
    for name in ("alertmanager_url", "webhook_url"):
        url = getattr(args, name)
        if url and not url.startswith(("http://", "https://")):
            flag = "--" + name.replace("_", "-")
            print(
                f"predaudit alerts forward: error: {flag} {url!r}: use http(s)://host:port",
                file=sys.stderr,
            )
            return 2
    if args.pubsub_endpoint:
        os.environ["PUBSUB_EMULATOR_HOST"] = args.pubsub_endpoint
    from google.cloud import pubsub_v1

    fwd = Forwarder(
        subscriber=pubsub_v1.SubscriberClient(),
        subscription=args.subscription,
        alertmanager_url=args.alertmanager_url,
        webhook_url=args.webhook_url,
        firing_for=args.firing_for,
        batch_size=args.batch_size,
        max_backoff=args.max_backoff.total_seconds(),
    )
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: fwd.stop.set())
    try:
        fwd.run(once=args.once, max_messages=args.max_messages)
    except ForwardError as exc:
        print(f"predaudit alerts forward: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        fwd.subscriber.close()
    s = fwd.stats
    stopped = " (stopped; unacked messages will be redelivered)" if fwd.stop.is_set() else ""
    out.write(
        f"forwarded {s.messages} message(s) as {s.alerts} alert(s): {s.malformed} malformed, "
        f"{s.refused} refused, {s.webhook_posts} webhook post(s), {s.retries} retried post(s){stopped}\n"
    )
    return 0
