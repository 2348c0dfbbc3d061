"""Prometheus metrics of one sidecar (own registry, so tests can run several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)


class SidecarMetrics:
    """Counters and gauges named ``predaudit_sidecar_*``.

    >>> m = SidecarMetrics()
    >>> m.accepted.labels("prediction").inc(3)
    >>> b"predaudit_sidecar_accepted_total{kind=\\"prediction\\"} 3.0" in m.render()
    True
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "predaudit_sidecar_"
        self.accepted = Counter(p + "accepted", "Events accepted into the spool", ["kind"], registry=r)
        self.rejected = Counter(
            p + "rejected", "Events rejected, by error code", ["kind", "code"], registry=r
        )
        self.requests = Counter(
            p + "requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.published = Counter(p + "published", "Events confirmed by Pub/Sub", ["kind"], registry=r)
        self.publish_errors = Counter(
            p + "publish_errors", "Failed publish attempts (all are retried)", ["error"], registry=r
        )
        self.kserve_unpaired = Counter(
            p + "kserve_unpaired",
            "KServe halves published without their pair after the TTL",
            ["half"],
            registry=r,
        )
        self.drainer_errors = Counter(
            p + "drainer_errors", "Failed drainer passes (each is retried)", ["error"], registry=r
        )
        self.spool_errors = Counter(
            p + "spool_errors",
            "Disk errors the spool survived, by operation (append, fsync, cursor, rotate, unlink)",
            ["op", "errno"],
            registry=r,
        )
        self.spool_bytes = Gauge(p + "spool_bytes", "Bytes of unpublished events in the spool", registry=r)
        self.spool_disk_bytes = Gauge(
            p + "spool_disk_bytes",
            "Bytes of spool segment files on disk (capped by --spool-max-bytes)",
            registry=r,
        )
        self.spool_depth = Gauge(p + "spool_depth", "Unpublished events in the spool", registry=r)
        self.oldest_age = Gauge(
            p + "oldest_unpublished_age_seconds", "Age of the oldest unpublished event", registry=r
        )
        self.request_latency = Histogram(
            p + "request_seconds", "Request handling time", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.publish_lag = Histogram(
            p + "publish_lag_seconds", "Accept to Pub/Sub confirmation", buckets=_LAG_BUCKETS, registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
