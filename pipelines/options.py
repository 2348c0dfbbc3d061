"""AuditOptions: every pipeline option, declared once (templates/metadata.json mirrors them)."""

from __future__ import annotations

import argparse
import difflib
import pathlib
import re
from collections.abc import Sequence
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from schemas.fsio import is_remote
from transforms.secrets import is_secret_manager

SINKS = ("bigquery", "clickhouse")


# Every pipeline option once: (flag, argparse keywords, where it applies). AuditOptions declares
# them all (Beam and the Flex Template see one set); ``predaudit run`` / ``replay`` accept and
# list only the options of their mode. "both" = streaming and replay.
_OPTIONS: tuple[tuple[str, dict[str, Any], str], ...] = (
    (
        "--predictions_subscription",
        {"default": "", "help": "projects/P/subscriptions/S with PredictionEvents"},
        "streaming",
    ),
    (
        "--labels_subscription",
        {"default": "", "help": "projects/P/subscriptions/S with LabelEvents (optional)"},
        "streaming",
    ),
    ("--anomaly_topic", {"default": "", "help": "projects/P/topics/T for anomaly events (optional)"}, "both"),
    (
        "--dead_letter_topic",
        {"default": "", "help": "projects/P/topics/T that also receives dead letters (optional)"},
        "streaming",
    ),
    (
        "--dead_letter_payload",
        {
            "default": "redacted",
            "choices": ["redacted", "hash", "full"],
            "help": "what a decode dead letter keeps of the payload: redacted (default: the values "
            "of every feature any spec marks as PII removed, parseable or not), hash (only sha256 + "
            "size) or full (WARNING: the raw payload, PII INCLUDED, in dead_letters and the dead "
            "letter topic)",
        },
        "both",
    ),
    (
        "--log_format",
        {
            "default": "text",
            "choices": ["text", "json"],
            "help": "log lines on stderr: text, or json (one object per line with Cloud Logging's "
            "severity and message, plus model / event_id where they apply)",
        },
        "both",
    ),
    (
        "--input",
        {"default": "", "help": "replay: JSONL file glob of PredictionEvents (local or gs://, .gz ok)"},
        "replay",
    ),
    (
        "--labels_input",
        {"default": "", "help": "replay: JSONL file glob of LabelEvents (optional)"},
        "replay",
    ),
    ("--sinks", {"default": "clickhouse", "help": "comma list of: bigquery, clickhouse"}, "both"),
    ("--bq_project", {"default": "", "help": "BigQuery project of the audit dataset"}, "both"),
    ("--bq_dataset", {"default": "audit", "help": "BigQuery dataset"}, "both"),
    ("--bq_endpoint", {"default": "", "help": "BigQuery API endpoint (emulator); empty = Google"}, "both"),
    (
        "--bq_write_endpoint",
        {
            "default": "",
            "help": "BigQuery Storage Write API gRPC host:port (the emulator's --grpc-port); empty = "
            "Google, or with --bq_endpoint alone the legacy insertAll path",
        },
        "both",
    ),
    (
        "--clickhouse_dsn",
        {"default": "chdb:///tmp/predaudit-chdb", "help": "http(s)://user:pw@host:port or chdb:///path"},
        "both",
    ),
    ("--clickhouse_database", {"default": "audit", "help": "ClickHouse database"}, "both"),
    (
        "--clickhouse_password_secret",
        {
            "default": "",
            "help": "the ClickHouse password, read on the workers: "
            "projects/P/secrets/S/versions/V (Secret Manager) or a file path; overrides the "
            "password in --clickhouse_dsn",
        },
        "both",
    ),
    (
        "--pii_key_secret",
        {
            "default": "",
            "help": "the PII hashing key, read on the workers: projects/P/secrets/S/versions/V "
            "(Secret Manager) or a file path; empty = the PREDAUDIT_PII_KEY environment variable",
        },
        "both",
    ),
    ("--model_specs", {"default": "", "help": "model spec YAML file or folder"}, "both"),
    (
        "--dedup_horizon_s",
        {"type": float, "default": 3600.0, "help": "how long an event_id is remembered for dedup"},
        "streaming",
    ),
    ("--sink_batch_size", {"type": int, "default": 5000, "help": "max rows per sink write"}, "both"),
    (
        "--sink_max_attempts",
        {"type": int, "default": 6, "help": "tries per batch on transient sink errors"},
        "both",
    ),
    (
        "--sink_failure_max_delay_s",
        {
            "type": float,
            "default": 60.0,
            "help": "streaming: cap of the backoff while a sink cannot take rows (backpressure)",
        },
        "streaming",
    ),
    (
        "--references",
        {"default": "", "help": "folder of <model>.json drift references (predaudit reference build)"},
        "both",
    ),
    (
        "--monitors",
        {
            "default": "on",
            "choices": ["on", "off"],
            "help": "drift/performance monitors: on (against references, else warm-up baselines) or off",
        },
        "both",
    ),
    (
        "--monitor_window_s",
        {"type": int, "default": 300, "help": "event-time window of the drift monitors (seconds)"},
        "both",
    ),
    (
        "--monitor_window_period_s",
        {
            "type": int,
            "default": 0,
            "help": "sliding monitor windows starting every N seconds (0 = fixed windows)",
        },
        "both",
    ),
    (
        "--monitor_allowed_lateness_s",
        {"type": int, "default": 600, "help": "late rows within this re-fire a window"},
        "both",
    ),
    (
        "--timestamp_attribute",
        {
            "default": "event_time",
            "help": "Pub/Sub attribute with the event time (RFC 3339 or epoch ms); empty = publish time",
        },
        "streaming",
    ),
    (
        "--integrity_export",
        {
            "default": "",
            "help": "also write each integrity record as JSON lines under this path (local or gs://, "
            "e.g. a bucket with a retention policy the auditor controls); empty = tables only",
        },
        "both",
    ),
)


class AuditOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        for flag, kwargs, _ in _OPTIONS:
            parser.add_argument(flag, **kwargs)


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
    runner = str(opts.view_as(StandardOptions).runner or "")
    if "clickhouse" in sinks and "Dataflow" in runner and opts.clickhouse_dsn.startswith("chdb://"):
        raise OptionsError(
            f"--clickhouse_dsn={opts.clickhouse_dsn!r}: an embedded chDB on a Dataflow worker's disk is lost "
            "with the worker; give the ClickHouse server: --clickhouse_dsn https://USER@HOST:8443"
        )
    if opts.bq_endpoint and not re.match(r"^https?://", opts.bq_endpoint):
        raise OptionsError(f"--bq_endpoint={opts.bq_endpoint!r}: use http://host:port (empty = Google)")
    write_ep = getattr(opts, "bq_write_endpoint", "") or ""
    if write_ep and not re.match(r"^[\w.\-\[\]:]+:\d+$", write_ep):
        raise OptionsError(f"--bq_write_endpoint={write_ep!r}: use host:port (the emulator's gRPC port)")
    for name in ("pii_key_secret", "clickhouse_password_secret"):
        ref = getattr(opts, name, "") or ""
        if ref and ref.startswith("projects/") and not is_secret_manager(ref):
            raise OptionsError(f"--{name}={ref!r}: use projects/P/secrets/S/versions/V (a number or latest)")
    if opts.model_specs and not pathlib.Path(opts.model_specs).exists() and not is_remote(opts.model_specs):
        raise OptionsError(f"--model_specs={opts.model_specs!r}: no such file or folder")
    if opts.references and not pathlib.Path(opts.references).is_dir() and not is_remote(opts.references):
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
    if (getattr(opts, "sink_failure_max_delay_s", None) or 60.0) <= 0:
        raise OptionsError("--sink_failure_max_delay_s must be > 0")
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


# -- the command line of ``predaudit run`` / ``predaudit replay`` ---------------------------------

# launcher-only options of ``predaudit replay`` (not pipeline options: they never reach Beam)
_REPLAY_LAUNCHER: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "--no_create_tables",
        {
            "action": "store_true",
            "help": "do not create missing databases/tables (least-privilege runs: a missing table "
            "is then a sink failure, exit 1)",
        },
    ),
    ("--summary_json", {"default": "", "help": "also write the final summary as JSON to this path"}),
    (
        "--progress_interval_s",
        {"type": float, "default": 10.0, "help": "a progress line on stderr at most this often (0 = none)"},
    ),
)

_DESCRIPTION = {
    "replay": "Batch replay / backfill of JSONL files: validate -> dedup -> audit rows -> sinks. "
    "Prints a summary; exit 0 = every input line is in a table, 1 = something could not be "
    "written, 2 = usage or configuration error.",
    "streaming": "The streaming audit pipeline: Pub/Sub -> validate -> dedup -> sinks + monitors. "
    "Checks at start that every table it writes exists (exit 1 naming `predaudit provision` "
    "otherwise); exit 2 = usage or configuration error.",
}
_EPILOG = (
    "Beam pipeline options are accepted too (e.g. --runner, --direct_num_workers, --project, "
    "--region, --temp_location, --setup_file); option names are never abbreviated."
)


class _StrictParser(argparse.ArgumentParser):
    """argparse without prefix matching, whose errors are values (OptionsError), not exits."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise OptionsError(message)


def command_parser(mode: str, prog: str) -> argparse.ArgumentParser:
    """The ``--help`` and option parser of one command: its own pipeline options (+ launcher ones)."""
    parser = _StrictParser(prog=prog, description=_DESCRIPTION[mode], epilog=_EPILOG)
    group = parser.add_argument_group("pipeline options")
    for flag, kwargs, modes in _OPTIONS:
        if modes in ("both", mode):
            group.add_argument(flag, **kwargs)
    if mode == "replay":
        launcher = parser.add_argument_group("replay options")
        for flag, kwargs in _REPLAY_LAUNCHER:
            launcher.add_argument(flag, **kwargs)
    return parser


def _beam_parser() -> argparse.ArgumentParser:
    """Every option Beam itself declares (runner, Dataflow, workers, ...), none of ours."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    class _Strict(_BeamArgumentParser):
        def error(self, message: str):  # type: ignore[override]
            raise OptionsError(message)

    parser = _Strict(allow_abbrev=False, add_help=False)
    seen: set[str] = set()
    for cls in PipelineOptions.__subclasses__():
        if cls is AuditOptions or cls.__name__ in seen or "_add_argparse_args" not in cls.__dict__:
            continue
        seen.add(cls.__name__)
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            continue  # a class declared twice under another name (Beam re-imports)
    return parser


def _strip_launcher(argv: Sequence[str]) -> list[str]:
    """``argv`` without the replay launcher options, which are not pipeline options.

    >>> _strip_launcher(["--input=x", "--summary_json", "s.json", "--no_create_tables", "--sinks=clickhouse"])
    ['--input=x', '--sinks=clickhouse']
    """
    takes_value = {f for f, kw in _REPLAY_LAUNCHER if kw.get("action") != "store_true"}
    flags = {f for f, _ in _REPLAY_LAUNCHER}
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        name = tok.split("=", 1)[0]
        if tok == "--":
            out.extend(argv[i:])
            break
        if name in flags:
            i += 2 if (name in takes_value and "=" not in tok) else 1
            continue
        out.append(tok)
        i += 1
    return out


def parse_command_line(argv: Sequence[str], mode: str, prog: str) -> tuple[argparse.Namespace, list[str]]:
    """Parse a run/replay command line strictly: (launcher options, the flags for AuditOptions).

    Raises OptionsError for an unknown, abbreviated or other-mode option (with a suggestion);
    ``--help`` prints the command's own options and raises SystemExit(0).
    """
    argv = list(argv)
    parser = command_parser(mode, prog)
    ns, rest = parser.parse_known_args(argv)
    _, unknown = _beam_parser().parse_known_args(rest)
    unknown = [u for u in unknown if u.startswith("-")] or unknown
    if unknown:
        name = unknown[0].split("=", 1)[0]
        ours = [f for f, _, _ in _OPTIONS] + [f for f, _ in _REPLAY_LAUNCHER]
        other = [f for f, _, modes in _OPTIONS if modes not in ("both", mode)]
        if name in other:
            raise OptionsError(f"{name} is not an option of this command (see {prog} --help)")
        close = difflib.get_close_matches(name, ours, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise OptionsError(f"unrecognized argument {unknown[0]}{hint} (see {prog} --help)")
    return ns, _strip_launcher(argv) if mode == "replay" else argv
