"""The streaming audit pipeline: Pub/Sub -> validate -> dedup -> BigQuery/ClickHouse (+ dead letters).

Run as ``predaudit run [options]`` or ``python -m pipelines.audit_pipeline [options]`` (what
the Flex Template launches). Wiring only: every step is a transform in ``transforms/``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import apache_beam as beam
import orjson
from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub, WriteToPubSub
from apache_beam.options.pipeline_options import StandardOptions

from pipelines.common import monitors, patch_direct_runner_pubsub, publish_anomalies, sink_fns, specs_from
from pipelines.options import AuditOptions, OptionsError, validate
from transforms.deadletters import RawMessage
from transforms.dedup import DedupByEventId
from transforms.integrity import ExportIntegrity, IntegrityRecords
from transforms.monitors.drift import anomaly_row
from transforms.sinks.write import WriteAudit
from transforms.validate import DEAD_LETTERS, ValidateEvents


def to_raw_message(msg: PubsubMessage) -> RawMessage:
    return RawMessage(msg.data or b"", dict(msg.attributes or {}), msg.message_id, msg.publish_time)


def dead_letter_message(dead: dict) -> PubsubMessage:
    """A dead letter as a Pub/Sub message, with attributes for subscription filters."""
    attrs = {k: str(dead[k]) for k in ("stage", "kind", "error_code") if dead.get(k)}
    return PubsubMessage(orjson.dumps(dead), attrs)


def _read(p: beam.Pipeline, label: str, subscription: str, opts: AuditOptions) -> beam.PCollection:
    return (
        p
        | f"Read{label}"
        >> ReadFromPubSub(
            subscription=subscription,
            with_attributes=True,
            timestamp_attribute=opts.timestamp_attribute or None,
            # no id_label: Dataflow would dedup by the bare event_id attribute, dropping another
            # model's prediction that reuses the id; DedupByEventId dedups redeliveries by identity
            id_label=None,
        )
        | f"{label}ToMessages" >> beam.Map(to_raw_message)
    )


def build(p: beam.Pipeline, opts: AuditOptions) -> dict[str, beam.PCollection]:
    sinks = validate(opts, "streaming")
    specs = specs_from(opts)
    preds = _read(
        p, "Predictions", opts.predictions_subscription, opts
    ) | "ValidatePredictions" >> ValidateEvents(
        "prediction",
        specs=specs,
        dead_letter_payload=opts.dead_letter_payload,
        pii_key_secret=opts.pii_key_secret,
    )
    # dedup by identity (model name, event_id); conflicting later copies become dead letters
    pred_dedup = preds.rows | "DedupPredictions" >> DedupByEventId(opts.dedup_horizon_s, "predictions")
    out = {"predictions": pred_dedup.rows}
    dead = [preds[DEAD_LETTERS], pred_dedup[DEAD_LETTERS]]
    if opts.labels_subscription:
        labels = _read(p, "Labels", opts.labels_subscription, opts) | "ValidateLabels" >> ValidateEvents(
            "label",
            specs=specs,
            dead_letter_payload=opts.dead_letter_payload,
            pii_key_secret=opts.pii_key_secret,
        )
        label_dedup = labels.rows | "DedupLabels" >> DedupByEventId(
            opts.dedup_horizon_s, "labels", "payload_sha256"
        )
        out["labels"] = label_dedup.rows
        dead += [labels[DEAD_LETTERS], label_dedup[DEAD_LETTERS]]
    out["dead_letters"] = dead | "DecodeDeadLetters" >> beam.Flatten()
    # tamper evidence: hourly event-time integrity records, re-emitted per pane (accumulating)
    out["integrity"] = out["predictions"] | "Integrity" >> IntegrityRecords(
        f"streaming:{opts.predictions_subscription}", bounded=False
    )
    if opts.integrity_export:
        _ = out["integrity"] | "ExportIntegrity" >> beam.ParDo(ExportIntegrity(opts.integrity_export))
    mon = monitors(out["predictions"], opts, specs, bounded=False, labels=out.get("labels"))
    if mon:
        out["drift_metrics"] = mon["drift_metrics"]
        out["anomalies"] = mon["anomalies"] | "AnomalyRows" >> beam.Map(anomaly_row)
        if opts.anomaly_topic:
            publish_anomalies(mon["anomalies"], opts.anomaly_topic)
    all_dead = dict(out) | "Write" >> WriteAudit(sink_fns(opts, sinks, "streaming"), opts.sink_batch_size)
    if opts.dead_letter_topic:
        _ = (
            all_dead
            | "DeadLettersToMessages" >> beam.Map(dead_letter_message)
            | "PublishDeadLetters" >> WriteToPubSub(opts.dead_letter_topic, with_attributes=True)
        )
    out["all_dead_letters"] = all_dead
    return out


def streaming_options(argv: Sequence[str]) -> AuditOptions:
    opts = AuditOptions(list(argv))
    opts.view_as(StandardOptions).streaming = True
    return opts


def run(argv: Sequence[str] | None = None) -> int:
    opts = streaming_options(sys.argv[1:] if argv is None else argv)
    from pipelines import logs
    from pipelines.provision import ProvisionError, prepare_sinks, provision_command

    logs.configure(opts.view_as(AuditOptions).log_format)

    try:
        sinks = validate(opts, "streaming")
        # fail fast: every table this pipeline writes must exist with the expected columns
        problems = prepare_sinks(opts, sinks, create=False)
    except (OptionsError, ProvisionError) as exc:
        sys.stderr.write(f"predaudit run: error: {exc}\n")
        return 2
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        sys.stderr.write(
            f"predaudit run: error: {problems[0]}{more} -- fix: run `{provision_command(opts, sinks)}`\n"
        )
        return 1
    patch_direct_runner_pubsub(opts)
    p = beam.Pipeline(options=opts)
    build(p, opts)
    p.run().wait_until_finish()
    return 0


if __name__ == "__main__":
    sys.exit(run())
