"""The ``predaudit`` command: validate, simulate, schema, replay, verify, run, provision, demo, sidecar,
alerts, report, spec.

Exit codes: 0 success (all valid / all accounted), 1 invalid input found or something could not
be written, 2 usage or configuration error (one line, no traceback). Option names are never
abbreviated (``--sink`` is an error, not ``--sinks``).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import pathlib
import sys
from collections.abc import Iterator, Sequence
from typing import IO

import orjson

from schemas import Decoders, EventValidationError, Limits
from schemas.cliargs import StrictParser
from schemas.specs import QualityChecker, SpecError, load_specs

DEFAULT_SPECS = pathlib.Path(__file__).resolve().parent.parent / "schemas" / "models"


class UsageError(Exception):
    """A problem with the command line or its inputs; printed without traceback, exit 2."""


def _open_lines(path: str) -> Iterator[bytes]:
    if path == "-":
        stream: IO[bytes] = sys.stdin.buffer
    else:
        p = pathlib.Path(path)
        if not p.is_file():
            raise UsageError(f"{path}: no such file")
        stream = gzip.open(p, "rb") if p.suffix == ".gz" else p.open("rb")
    with stream:
        for n, line in enumerate(stream):
            if n == 0 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM is not part of the event
                line = line[3:]
            yield line.rstrip(b"\r\n")


def _load_specs(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        return load_specs(path)
    except SpecError as exc:
        raise UsageError(f"invalid model spec: {exc}") from None


def cmd_validate(args: argparse.Namespace, out: IO[str]) -> int:
    dec = Decoders(Limits())
    checkers = {name: QualityChecker(spec) for name, spec in _load_specs(args.spec).items()}
    decode = dec.prediction if args.kind == "prediction" else dec.label
    valid = invalid = 0
    errors: collections.Counter[str] = collections.Counter()
    quality: collections.Counter[str] = collections.Counter()
    first: list[tuple[int, EventValidationError]] = []
    try:
        for lineno, raw in enumerate(_open_lines(args.path), 1):
            if not raw.strip():
                continue
            try:
                ev, _ = decode(raw)
            except EventValidationError as exc:
                invalid += 1
                errors[exc.code] += 1
                if len(first) < args.show:
                    first.append((lineno, exc))
                continue
            valid += 1
            checker = checkers.get(ev.model.name) if args.kind == "prediction" else None
            if checker is not None:
                for issue in checker.check(ev.features):
                    quality[issue.split(":", 1)[0]] += 1
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UsageError(f"{args.path}: cannot read: {exc}") from None
    if args.json:
        doc = {"valid": valid, "invalid": invalid, "errors": dict(errors), "quality_issues": dict(quality)}
        out.write(orjson.dumps(doc).decode() + "\n")
    else:
        out.write(f"{args.path}: {valid} valid, {invalid} invalid {args.kind} event(s)\n")
        for code, n in errors.most_common():
            out.write(f"  {code:<24} {n}\n")
        for lineno, exc in first:
            out.write(f"  line {lineno}: {exc.code} at {exc.path}: {exc.message[:160]} -- fix: {exc.hint}\n")
        if quality:
            out.write("quality issues (events are valid and audited):\n")
            for code, n in quality.most_common():
                out.write(f"  {code:<24} {n}\n")
    return 0 if invalid == 0 else 1


def cmd_simulate(args: argparse.Namespace, out: IO[str]) -> int:
    from schemas.simulate import SimConfig, Simulator

    specs = _load_specs(args.spec or str(DEFAULT_SPECS))
    if args.model not in specs:
        raise UsageError(f"no model spec named {args.model!r} (known: {sorted(specs)}); pass --spec")
    if args.events < 0 or not 0 <= args.bad_fraction <= 1 or not 0 <= args.duplicate_fraction <= 1:
        raise UsageError("--events must be >= 0 and fractions within [0, 1]")
    if args.drift_kind in ("mean", "variance") and (args.drift_at is None) != (args.drift_feature is None):
        raise UsageError(f"--drift-kind {args.drift_kind}: --drift-at and --drift-feature go together")
    if args.drift_kind in ("score", "latency", "traffic", "concept") and (
        args.drift_at is None or args.drift_feature
    ):
        raise UsageError(f"--drift-kind {args.drift_kind} takes --drift-at and no --drift-feature")
    cfg = SimConfig(
        model=args.model,
        events=args.events,
        seed=args.seed,
        drift_at=args.drift_at,
        drift_feature=args.drift_feature,
        drift_shift=args.drift_shift,
        drift_kind=args.drift_kind,
        bad_fraction=args.bad_fraction,
        duplicate_fraction=args.duplicate_fraction,
        label_fraction=1.0 if args.labels_out else 0.0,
    )
    try:
        sim = Simulator(specs[args.model], cfg)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    opener = gzip.open if args.out.endswith(".gz") else open
    counts: collections.Counter[str] = collections.Counter()
    labels_fh = open(args.labels_out, "wb") if args.labels_out else None
    try:
        with opener(args.out, "wb") as fh:
            for line in sim.lines():
                fh.write(line.raw + b"\n")
                counts[line.kind] += 1
                if labels_fh is not None and line.label is not None:
                    labels_fh.write(line.label + b"\n")
    finally:
        if labels_fh is not None:
            labels_fh.close()
    out.write(f"wrote {sum(counts.values())} lines to {args.out}: {dict(counts)}\n")
    return 0


def cmd_reference_build(args: argparse.Namespace, out: IO[str]) -> int:
    import glob as globlib

    from transforms.monitors.reference import build_reference

    specs = _load_specs(args.spec or str(DEFAULT_SPECS))
    if args.model not in specs:
        raise UsageError(f"no model spec named {args.model!r} (known: {sorted(specs)}); pass --spec")
    spec = specs[args.model]
    paths = sorted(globlib.glob(args.input)) if args.input != "-" else ["-"]
    if not paths:
        raise UsageError(f"--input {args.input!r} matches no file")
    dec = Decoders(Limits())
    versions: collections.Counter[str] = collections.Counter()
    skipped = 0

    def events():
        nonlocal skipped
        for path in paths:
            for raw in _open_lines(path):
                if not raw.strip():
                    continue
                try:
                    ev, _ = dec.prediction(raw)
                except EventValidationError:
                    skipped += 1
                    continue
                if ev.model.name != args.model:
                    continue
                versions[ev.model.version] += 1
                if args.version is None or ev.model.version == args.version:
                    yield ev

    version = args.version or "*"
    try:
        doc = build_reference(
            events(), spec, version, bins=args.bins, top_k=args.top_k, seasonality=args.seasonality
        )
    except ValueError as exc:
        raise UsageError(f"{exc} (versions seen: {dict(versions)})") from None
    if args.version is None and len(versions) == 1:
        doc["version"] = next(iter(versions))
    pathlib.Path(args.out).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    out.write(
        f"wrote {args.out}: {doc['events']} events, {len(doc['signals'])} signals; skipped {skipped} invalid lines\n"
    )
    return 0


def cmd_schema(args: argparse.Namespace, out: IO[str]) -> int:
    from schemas.tables import render_ddl

    out.write(render_ddl(args.target, database=args.database, project=args.project, ttl_days=args.ttl_days))
    return 0


def cmd_replay(args: argparse.Namespace, out: IO[str]) -> int:
    from pipelines.replay import run

    return run(args.beam_args, out)


def cmd_verify(args: argparse.Namespace, out: IO[str]) -> int:
    from pipelines.verify import run

    return run(args.beam_args, out)


def cmd_provision(args: argparse.Namespace, out: IO[str]) -> int:
    """Pub/Sub topics + subscriptions (dead-letter policy), BigQuery and ClickHouse tables and
    views; idempotent; ``--dry-run`` prints the plan and touches nothing."""
    from pipelines.options import SINKS
    from pipelines.provision import (
        ProvisionError,
        PubSubNames,
        bigquery_plan,
        clickhouse_plan,
        provision_bigquery,
        provision_clickhouse,
        provision_pubsub,
        pubsub_plan,
    )

    sinks = [s.strip() for s in args.sinks.split(",") if s.strip()]
    if any(s not in SINKS for s in sinks):
        raise UsageError(f"--sinks={args.sinks!r}: use a comma list of {', '.join(SINKS)} (or empty)")
    project = args.project or args.bq_project
    bq_project = args.bq_project or args.project
    if args.pubsub == "on" and not project:
        raise UsageError("--project is required for Pub/Sub (or --pubsub off)")
    if "bigquery" in sinks and not bq_project:
        raise UsageError("--bq_project (or --project) is required with --sinks bigquery")
    if args.max_delivery_attempts < 5 or args.max_delivery_attempts > 100:
        raise UsageError("--max_delivery_attempts must be within [5, 100] (a Pub/Sub limit)")
    names = PubSubNames(project) if project else None

    def report(step, state: str) -> None:
        out.write(step.line(state) + "\n")

    if args.dry_run:
        plan = []
        if args.pubsub == "on":
            plan += pubsub_plan(names, args.max_delivery_attempts)
        if "bigquery" in sinks:
            plan += bigquery_plan(bq_project, args.bq_dataset)
        if "clickhouse" in sinks:
            plan += clickhouse_plan(args.clickhouse_database)
        for step in plan:
            report(step, "would-make")
        out.write(f"dry run: {len(plan)} resources planned, nothing changed\n")
        return 0
    try:
        if args.pubsub == "on":
            try:
                provision_pubsub(names, args.max_delivery_attempts, report)
            except Exception as exc:  # noqa: BLE001 -- unreachable/denied: one line, exit 2
                raise ProvisionError(f"pubsub: project {project}: {str(exc).splitlines()[0][:300]}") from None
        if "bigquery" in sinks:
            try:
                provision_bigquery(bq_project, args.bq_dataset, args.bq_endpoint, report=report)
            except Exception as exc:  # noqa: BLE001
                raise ProvisionError(
                    f"bigquery: {bq_project}.{args.bq_dataset}: {str(exc).splitlines()[0][:300]}"
                ) from None
        if "clickhouse" in sinks:
            provision_clickhouse(args.clickhouse_dsn, args.clickhouse_database, args.ttl_days, report=report)
    except ProvisionError as exc:
        raise UsageError(str(exc)) from None
    out.write("provisioned: every resource exists\n")
    return 0


def cmd_demo(args: argparse.Namespace, out: IO[str]) -> int:
    """The end-to-end demo on the real local components (see pipelines/demo.py)."""
    from pipelines.demo import run_demo

    return run_demo(events=args.events, out=out)


def cmd_run(args: argparse.Namespace, out: IO[str]) -> int:
    """The streaming pipeline; its command line is checked strictly first (own options only)."""
    from pipelines.audit_pipeline import run
    from pipelines.options import OptionsError, parse_command_line

    try:
        _, flags = parse_command_line(args.beam_args, "streaming", "predaudit run")
    except OptionsError as exc:
        raise UsageError(str(exc)) from None
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    return run(flags)


def cmd_sidecar(args: argparse.Namespace, out: IO[str]) -> int:
    """The serving sidecar (see sidecar/server.py); runs until SIGTERM/SIGINT."""
    import logging

    from pipelines import logs
    from sidecar.server import Sidecar, config_from_args

    logs.configure(args.log_format, logging.INFO)
    try:
        cfg = config_from_args(args)
        sidecar = Sidecar(cfg)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    sidecar.serve_forever()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = StrictParser(prog="predaudit", description="Streaming prediction audit for ML platforms.")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="validate a JSON Lines file of events against the contract")
    v.add_argument("path", help="JSONL file (.gz accepted) or - for stdin")
    v.add_argument("--kind", choices=["prediction", "label"], default="prediction")
    v.add_argument("--spec", help="model spec YAML (file or folder) for quality checks")
    v.add_argument("--json", action="store_true", help="print one JSON summary object")
    v.add_argument("--show", type=int, default=5, help="how many errors to show with line numbers")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("simulate", help="write a synthetic JSONL prediction stream")
    s.add_argument("--model", default="fraud")
    s.add_argument("--spec", help="model spec file or folder (default: the bundled specs)")
    s.add_argument("--events", type=int, required=True)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--drift-at", type=int)
    s.add_argument("--drift-feature")
    s.add_argument(
        "--drift-shift", type=float, default=1.0, help="shift in sd (mean) or factor (variance, latency)"
    )
    s.add_argument(
        "--drift-kind",
        choices=["mean", "variance", "score", "latency", "traffic", "concept"],
        default="mean",
        help="mean/variance of --drift-feature, the model's score (logit shift), latency or traffic (factor)",
    )
    s.add_argument("--bad-fraction", type=float, default=0.0, help="fraction of malformed lines")
    s.add_argument("--duplicate-fraction", type=float, default=0.0, help="fraction of re-sent events")
    s.add_argument("--labels-out", help="also write one LabelEvent per valid prediction here")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_simulate)

    sc = sub.add_parser("schema", help="print table definitions")
    scs = sc.add_subparsers(dest="schema_command", required=True)
    ddl = scs.add_parser("ddl", help="BigQuery table resources (JSON) or ClickHouse DDL")
    ddl.add_argument("--target", choices=["bigquery", "clickhouse"], required=True)
    ddl.add_argument("--database", default="audit", help="BigQuery dataset / ClickHouse database")
    ddl.add_argument("--project", default="my-project")
    ddl.add_argument("--ttl-days", type=int, default=0, help="ClickHouse TTL (0 = keep forever)")
    ddl.set_defaults(func=cmd_schema)

    r = sub.add_parser(
        "replay",
        help="batch replay / backfill of JSONL files through validate -> sinks (predaudit replay --help)",
        add_help=False,
    )
    r.set_defaults(func=cmd_replay)

    vf = sub.add_parser(
        "verify",
        help="recompute row hashes and Merkle roots and compare with the integrity records "
        "(predaudit verify --help)",
        add_help=False,
    )
    vf.set_defaults(func=cmd_verify)

    pv = sub.add_parser(
        "provision",
        help="create Pub/Sub topics/subscriptions and the BigQuery/ClickHouse tables and views (idempotent)",
        description="Create what the pipelines need, idempotently (running it again is fine): Pub/Sub "
        "topics and subscriptions (with a dead-letter policy), the BigQuery dataset, tables and views, "
        "the ClickHouse database, tables and views. Pub/Sub honours $PUBSUB_EMULATOR_HOST.",
    )
    pv.add_argument(
        "--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT", ""), help="Google Cloud project"
    )
    pv.add_argument("--sinks", default="clickhouse", help="comma list of: bigquery, clickhouse (empty: none)")
    pv.add_argument("--pubsub", choices=["on", "off"], default="on", help="create topics and subscriptions")
    pv.add_argument("--bq_project", default="", help="BigQuery project (default: --project)")
    pv.add_argument("--bq_dataset", default="audit", help="BigQuery dataset")
    pv.add_argument("--bq_endpoint", default="", help="BigQuery API endpoint (emulator); empty = Google")
    pv.add_argument(
        "--clickhouse_dsn",
        default="chdb:///tmp/predaudit-chdb",
        help="http(s)://user:pw@host:port or chdb:///path",
    )
    pv.add_argument("--clickhouse_database", default="audit", help="ClickHouse database")
    pv.add_argument("--ttl_days", type=int, default=0, help="ClickHouse TTL (0 = keep forever)")
    pv.add_argument(
        "--max_delivery_attempts",
        type=int,
        default=10,
        help="Pub/Sub delivery attempts before a message goes to the undeliverable topic",
    )
    pv.add_argument(
        "--dry-run", "--dry_run", dest="dry_run", action="store_true", help="print the plan, change nothing"
    )
    pv.set_defaults(func=cmd_provision)

    ref = sub.add_parser("reference", help="reference distributions for the drift monitors")
    refs = ref.add_subparsers(dest="reference_command", required=True)
    rb = refs.add_parser("build", help="build a reference from JSONL prediction events")
    rb.add_argument("--input", required=True, help="JSONL file glob (.gz accepted) or - for stdin")
    rb.add_argument("--model", required=True)
    rb.add_argument("--version", help="model version (default: all, which must be one version)")
    rb.add_argument("--spec", help="model spec file or folder (default: the bundled specs)")
    rb.add_argument("--bins", type=int, default=10)
    rb.add_argument("--top-k", type=int, default=20)
    rb.add_argument(
        "--seasonality",
        choices=["none", "daily", "weekly"],
        default="none",
        help="also keep a profile per hour of day / of week (a seasonal signal is compared with its hour)",
    )
    rb.add_argument("--out", required=True)
    rb.set_defaults(func=cmd_reference_build)

    d = sub.add_parser("demo", help="the local end-to-end demo")
    d.add_argument("--events", type=int, default=3000)
    d.set_defaults(func=cmd_demo)

    sd = sub.add_parser("sidecar", help="the serving sidecar: HTTP on loopback -> disk spool -> Pub/Sub")
    sd.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    sd.add_argument("--port", type=int, default=8089)
    sd.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT", "predaudit-local"))
    sd.add_argument("--predictions-topic", default="predictions", help="topic id or projects/P/topics/T")
    sd.add_argument("--labels-topic", default="labels")
    sd.add_argument("--spool-dir", default="./predaudit-spool")
    sd.add_argument(
        "--spool-max-bytes",
        type=int,
        default=1 << 30,
        help="503 above this many bytes of spool files on disk; give the volume 1 MiB more",
    )
    sd.add_argument("--fsync", choices=["always", "interval", "never"], default="interval")
    sd.add_argument("--auth-token-file", help="require Authorization: Bearer <token> on /v1/*")
    sd.add_argument("--kserve-mapping", help="YAML mapping InferenceServices to models (enables POST /)")
    sd.add_argument("--max-request-bytes", type=int, default=8 << 20)
    sd.add_argument("--ordering", choices=["model", "none"], default="model", help="Pub/Sub ordering key")
    sd.add_argument("--batch-max-messages", type=int, default=1000)
    sd.add_argument("--batch-max-bytes", type=int, default=1 << 20)
    sd.add_argument("--batch-max-latency-ms", type=float, default=10.0)
    sd.add_argument(
        "--publish-timeout-s", type=float, default=60.0, help="per publish, then backoff and retry"
    )
    sd.add_argument(
        "--shutdown-grace-s",
        type=float,
        default=5.0,
        help="on SIGTERM: publish for at most this long, then exit (the rest stays in the spool)",
    )
    sd.add_argument(
        "--idle-timeout-s", type=float, default=15.0, help="close a connection idle (or trickling) this long"
    )
    sd.add_argument("--body-timeout-s", type=float, default=10.0, help="408 when a body takes longer")
    sd.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one object per line with Cloud Logging's severity and message",
    )
    sd.set_defaults(func=cmd_sidecar)

    rn = sub.add_parser("run", help="the streaming pipeline (predaudit run --help)", add_help=False)
    rn.set_defaults(func=cmd_run)
    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=f"{text} (predaudit {name} --help)", add_help=False)
    return p


# Commands whose whole argument list is parsed by their own module's ``main(argv, out) -> int``.
DELEGATED: dict[str, tuple[str, str]] = {
    "alerts": ("pipelines.alerts_forward", "forward anomaly events to Alertmanager / a webhook"),
    "report": ("pipelines.report", "a self-contained HTML report from the audit tables"),
    "spec": ("schemas.infer", "infer a starting model spec from JSONL prediction events"),
}


def _delegate(args: argparse.Namespace, out: IO[str]) -> int:
    import importlib

    return importlib.import_module(DELEGATED[args.command][0]).main(args.beam_args, out)


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    own_parser = {"replay": cmd_replay, "run": cmd_run, "verify": cmd_verify}
    own_parser.update({name: _delegate for name in DELEGATED})
    if argv and argv[0] in own_parser:
        # their options (and --help) are parsed strictly by the command itself
        args = argparse.Namespace(command=argv[0], func=own_parser[argv[0]])
        args.beam_args = argv[1:]
    else:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, or a usage error already printed as one line
            return int(exc.code or 0)
        args.beam_args = []
    try:
        return args.func(args, out)
    except UsageError as exc:
        sys.stderr.write(f"predaudit {args.command}: error: {exc}\n")
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
