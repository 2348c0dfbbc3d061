"""AuditOptions: every pipeline option, declared once (templates/metadata.json mirrors them)."""

from __future__ import annotations

import pathlib
import re

from apache_beam.options.pipeline_options import PipelineOptions

SINKS = ("bigquery", "clickhouse")


class AuditOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        a = parser.add_argument
        a("--predictions_subscription", default="", help="projects/P/subscriptions/S with PredictionEvents")
        a("--labels_subscription", default="", help="projects/P/subscriptions/S with LabelEvents (optional)")
        a("--anomaly_topic", default="", help="projects/P/topics/T for anomaly events (optional)")
        a(
            "--dead_letter_topic",
            default="",
            help="projects/P/topics/T that also receives dead letters (optional)",
        )
        a("--input", default="", help="replay: JSONL file glob of PredictionEvents (local or gs://, .gz ok)")
        a("--labels_input", default="", help="replay: JSONL file glob of LabelEvents (optional)")
        a("--sinks", default="clickhouse", help="comma list of: bigquery, clickhouse")
        a("--bq_project", default="", help="BigQuery project of the audit dataset")
        a("--bq_dataset", default="audit", help="BigQuery dataset")
        a("--bq_endpoint", default="", help="BigQuery API endpoint (emulator); empty = Google")
        a(
            "--clickhouse_dsn",
            default="chdb:///tmp/predaudit-chdb",
            help="http(s)://user:pw@host:port or chdb:///path",
        )
        a("--clickhouse_database", default="audit", help="ClickHouse database")
        a("--model_specs", default="", help="model spec YAML file or folder")
        a(
            "--dedup_horizon_s",
            type=float,
            default=3600.0,
            help="how long an event_id is remembered for dedup",
        )
        a("--sink_batch_size", type=int, default=5000, help="max rows per sink write")
        a("--sink_max_attempts", type=int, default=6, help="tries per batch on transient sink errors")
        a(
            "--references",
            default="",
            help="folder of <model>.json drift references (predaudit reference build)",
        )
        a(
            "--monitors",
            default="on",
            choices=["on", "off"],
            help="drift/performance monitors: on (against references, else warm-up baselines) or off",
        )
        a(
            "--monitor_window_s",
            type=int,
            default=300,
            help="event-time window of the drift monitors (seconds)",
        )
        a(
            "--monitor_window_period_s",
            type=int,
            default=0,
            help="sliding monitor windows starting every N seconds (0 = fixed windows)",
        )
        a(
            "--monitor_allowed_lateness_s",
            type=int,
            default=600,
            help="late rows within this re-fire a window",
        )
        a(
            "--timestamp_attribute",
            default="event_time",
            help="Pub/Sub attribute with the event time (RFC 3339 or epoch ms); empty = publish time",
        )


class OptionsError(ValueError):
    """A bad option value, found before the graph is built; the message says how to fix it."""


_PATH = {
    "subscription": r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/subscriptions/[A-Za-z][-\w.~+%]{2,254}$",
    "topic": r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/topics/[A-Za-z][-\w.~+%]{2,254}$",
}


def validate(opts: AuditOptions, mode: str) -> list[str]:
    """Check option values; returns the sink list. ``mode`` is ``streaming`` or ``replay``."""
    sinks = [s.strip() for s in opts.sinks.split(",") if s.strip()]
    bad = [s for s in sinks if s not in SINKS]
    if not sinks or bad:
        raise OptionsError(f"--sinks={opts.sinks!r}: use a comma list of {', '.join(SINKS)}")
    if "bigquery" in sinks and not opts.bq_project:
        raise OptionsError("--bq_project is required with --sinks=bigquery")
    if "clickhouse" in sinks and not re.match(r"^(https?|chdb)://", opts.clickhouse_dsn):
        raise OptionsError(
            f"--clickhouse_dsn={opts.clickhouse_dsn!r}: use http(s)://host:port or chdb:///path"
        )
    if opts.bq_endpoint and not re.match(r"^https?://", opts.bq_endpoint):
        raise OptionsError(f"--bq_endpoint={opts.bq_endpoint!r}: use http://host:port (empty = Google)")
    if (
        opts.model_specs
        and not pathlib.Path(opts.model_specs).exists()
        and not opts.model_specs.startswith("gs://")
    ):
        raise OptionsError(f"--model_specs={opts.model_specs!r}: no such file or folder")
    if (
        opts.references
        and not pathlib.Path(opts.references).is_dir()
        and not opts.references.startswith("gs://")
    ):
        raise OptionsError(f"--references={opts.references!r}: no such folder")
    if opts.monitors not in ("on", "off"):
        raise OptionsError(f"--monitors={opts.monitors!r}: use on or off")
    if opts.monitor_window_s <= 0 or opts.monitor_allowed_lateness_s < 0:
        raise OptionsError("--monitor_window_s must be > 0 and --monitor_allowed_lateness_s >= 0")
    period = opts.monitor_window_period_s
    if period < 0 or (period and (period >= opts.monitor_window_s or opts.monitor_window_s % period)):
        raise OptionsError(
            f"--monitor_window_period_s={period}: 0 (fixed windows) or a divisor of --monitor_window_s below it"
        )
    if opts.dedup_horizon_s <= 0 or opts.sink_batch_size <= 0 or opts.sink_max_attempts <= 0:
        raise OptionsError("--dedup_horizon_s, --sink_batch_size and --sink_max_attempts must be > 0")
    if mode == "streaming":
        if not re.match(_PATH["subscription"], opts.predictions_subscription):
            raise OptionsError(
                "--predictions_subscription must look like projects/PROJECT/subscriptions/NAME"
            )
        if opts.labels_subscription and not re.match(_PATH["subscription"], opts.labels_subscription):
            raise OptionsError("--labels_subscription must look like projects/PROJECT/subscriptions/NAME")
        for name in ("anomaly_topic", "dead_letter_topic"):
            value = getattr(opts, name)
            if value and not re.match(_PATH["topic"], value):
                raise OptionsError(f"--{name} must look like projects/PROJECT/topics/NAME")
    elif not opts.input:
        raise OptionsError("--input is required for replay (a JSONL file glob)")
    return sinks
