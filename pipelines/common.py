"""Helpers both pipelines share: sink construction and spec loading from options."""

from __future__ import annotations

from schemas.specs import ModelSpec, load_specs
from transforms.sinks.base import Mode, SinkFn
from transforms.sinks.bigquery import BigQuerySinkFn
from transforms.sinks.clickhouse import ClickHouseSinkFn
from transforms.sinks.retry import RetryPolicy


def sink_fns(opts, sinks: list[str], mode: Mode) -> list[SinkFn]:
    """The sinks to write, in ``mode``: "replay" stops on a sink failure (raises SinkStopped),
    "streaming" retries it with capped backoff (``--sink_failure_max_delay_s``, default 60 s)."""
    policy = RetryPolicy(
        attempts=opts.sink_max_attempts,
        failure_max_delay_s=float(getattr(opts, "sink_failure_max_delay_s", None) or 60.0),
    )
    fns: list[SinkFn] = []
    if "bigquery" in sinks:
        write_endpoint = getattr(opts, "bq_write_endpoint", "") or ""
        fns.append(
            BigQuerySinkFn(opts.bq_project, opts.bq_dataset, opts.bq_endpoint, policy, mode, write_endpoint)
        )
    if "clickhouse" in sinks:
        secret = getattr(opts, "clickhouse_password_secret", "") or ""
        fns.append(ClickHouseSinkFn(opts.clickhouse_dsn, opts.clickhouse_database, policy, mode, secret))
    return fns


def specs_from(opts) -> dict[str, ModelSpec]:
    return load_specs(opts.model_specs) if opts.model_specs else {}


def monitors(rows, opts, specs: dict[str, ModelSpec], bounded: bool, labels=None) -> dict:
    """Monitor outputs for WriteAudit: drift metrics and anomalies (windowed PSI/JS/L-inf,
    rates, traffic, ADWIN, and with ``labels`` accuracy / MAE and concept drift) for every
    model with a spec: against its reference file, else against a warm-up baseline of its first
    ``monitors.warmup_events`` rows per version; {} with ``--monitors=off``.

    ``rows``: a PCollection of rows or row batches, or several of them.
    """
    import apache_beam as beam

    from transforms.monitors.adwin import AdwinDetect, MonitorAdwin
    from transforms.monitors.drift import AlertFn, MonitorDrift
    from transforms.monitors.labels import JoinLabels, MonitorPerformance, performance_limits
    from transforms.monitors.reference import model_references

    if opts.monitors == "off":
        return {}
    refs = model_references(specs, opts.references)
    warmup = {n: s for n, s in specs.items() if n not in refs}
    drift_monitor = MonitorDrift(
        refs,
        opts.monitor_window_s,
        opts.monitor_allowed_lateness_s,
        bounded,
        warmup,
        opts.monitor_window_period_s,
        infer_unknown=True,  # a model without a spec: inferred spec + warm-up baseline
    )
    drift = rows | "MonitorDrift" >> drift_monitor
    monitored = dict(specs)
    # with the references, ADWIN/CUSUM run on the rank scale and measure changes against them
    adwin = rows | "MonitorAdwin" >> MonitorAdwin(monitored, bounded, refs)
    metrics, anomalies = [drift["drift_metrics"]], [drift["anomalies"], adwin]
    if labels is not None:
        preds = rows | "AllPredictionRows" >> beam.Flatten() if isinstance(rows, tuple | list) else rows
        outcomes = (preds, labels) | "JoinLabels" >> JoinLabels(
            {n: s.task for n, s in monitored.items()},
            {n: s.monitors.label_join_horizon_seconds for n, s in monitored.items()},
            bounded,
        )
        perf = outcomes | "MonitorPerformance" >> MonitorPerformance(
            {n: s.task for n, s in monitored.items()},
            {
                n: performance_limits(s.monitors.accuracy_min, s.monitors.mae_max)
                for n, s in monitored.items()
            },
            {n: s.monitors.min_labeled for n, s in monitored.items()},
            opts.monitor_window_s,
            opts.monitor_allowed_lateness_s,
            opts.monitor_window_period_s,
        )
        metrics.append(perf["drift_metrics"])
        anomalies.append(
            perf["breaches"]
            | "PerformanceGlobal" >> beam.WindowInto(beam.transforms.window.GlobalWindows())
            | "AlertPerformance" >> beam.ParDo(AlertFn(drift_monitor.settings))
        )
        settings = MonitorAdwin(monitored, bounded).settings
        anomalies.append(
            outcomes
            | "ErrorSeries" >> beam.Map(lambda o: (f"{o[0]}\x00{o[1]}\x00prediction.error", [(o[2], o[3])]))
            | "ConceptDrift" >> AdwinDetect(settings, bounded)
        )
    return {
        "drift_metrics": metrics | "AllDriftMetrics" >> beam.Flatten(),
        "anomalies": anomalies | "AllAnomalies" >> beam.Flatten(),
    }


def publish_anomalies(anomalies, topic: str) -> None:
    """CloudEvents to the anomaly topic, with model/version/severity/type attributes for filters."""
    import apache_beam as beam
    import orjson
    from apache_beam.io.gcp.pubsub import PubsubMessage, WriteToPubSub

    from transforms.monitors.alerts import pubsub_attributes

    _ = (
        anomalies
        | "AnomaliesToMessages" >> beam.Map(lambda ev: PubsubMessage(orjson.dumps(ev), pubsub_attributes(ev)))
        | "PublishAnomalies" >> WriteToPubSub(topic, with_attributes=True)
    )


DIRECT_RUNNER_PULL_MAX = 500
"""Messages per pull (= per bundle) for the local streaming DirectRunner's Pub/Sub read.

Beam's evaluator asks for 10: with this project's monitors that is ~10 rows/s on a slow
box (``make demo`` timed out); 500 made the same demo ~4-6x faster (ARCHITECTURE.md)."""


class _ShortPollSubscriber:
    """Proxy over a SubscriberClient whose ``pull`` returns at once and pulls bigger batches.

    ``pull`` returns immediately (sleeping briefly when empty) and asks for at least
    ``pull_max`` messages. Acks are untouched: the evaluator still acknowledges exactly the
    ack ids this pull returned, right after the pull, as it does for its own 10.
    """

    def __init__(self, client, pull_max: int = DIRECT_RUNNER_PULL_MAX) -> None:
        self._client = client
        self._pull_max = pull_max

    def pull(self, subscription: str, max_messages: int, timeout: float | None = None, **kwargs):
        import time

        response = self._client.pull(
            subscription=subscription,
            max_messages=max(max_messages, self._pull_max),
            return_immediately=True,
            timeout=10,
        )
        if not response.received_messages:
            time.sleep(0.05)  # idle source: let the single executor thread serve the others
        return response

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def patch_direct_runner_pubsub(opts) -> None:
    """Make the streaming DirectRunner's Pub/Sub read return at once and pull bigger batches.

    Beam's streaming DirectRunner runs everything on ONE executor thread (more workers stall
    it) and its Pub/Sub read long-polls ``pull(max_messages=10, timeout=30)``: with
    predictions and labels as two sources, a drained subscription froze the whole pipeline
    for up to 30 s per poll (about 2 rows/s in the demo), and 10-message bundles cap it at
    ~10 rows/s on a slow box. The read now returns at once and pulls up to
    ``DIRECT_RUNNER_PULL_MAX`` messages per bundle (acked right after the pull, as Beam's
    evaluator does). This wraps the local evaluator's client only; Dataflow uses its own
    Pub/Sub source and is unaffected.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    if opts.view_as(StandardOptions).runner not in (None, "DirectRunner", "BundleBasedDirectRunner"):
        return
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator

    original = _PubSubReadEvaluator.__dict__["_get_subscriber_client"].__func__
    if getattr(original, "_predaudit_patched", False):
        return

    def get_client(cls, transform):
        return _ShortPollSubscriber(original(cls, transform))

    get_client._predaudit_patched = True  # type: ignore[attr-defined]
    _PubSubReadEvaluator._get_subscriber_client = classmethod(get_client)
    _patch_direct_runner_metrics()


def _patch_direct_runner_metrics() -> None:
    """Make the streaming DirectRunner commit every bundle's counters, not only the first's.

    Its executor makes a new MetricsContainer per bundle, but each worker thread's state
    sampler caches the scoped state (and so the container) of a step's FIRST bundle: later
    bundles count into that already-committed container and are never committed (measured:
    ``prediction_received`` = 10 of 305 with 10-message pulls, 100 with 500). Handing each
    (thread, step) its one container back, reset, makes every bundle's delta committed once.
    """
    import threading

    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.runners.direct import executor

    if getattr(executor.MetricsContainer, "_predaudit_patched", False):
        return
    local = threading.local()

    def container(step_name: str) -> MetricsContainer:
        mine: dict[str, MetricsContainer] = local.__dict__.setdefault("containers", {})
        c = mine.get(step_name)
        if c is None:
            c = mine[step_name] = MetricsContainer(step_name)
        else:
            c.reset()  # its previous bundle's values were committed when that bundle finished
        return c

    container._predaudit_patched = True  # type: ignore[attr-defined]
    executor.MetricsContainer = container  # type: ignore[assignment]
