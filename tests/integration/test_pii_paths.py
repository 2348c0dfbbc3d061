"""PII never leaks, on any path: a marker value in a ``pii: hash`` and a ``pii: drop`` feature of
the example spec, in every kind of bad input, through the replay pipeline (both sinks), the
streaming pipeline (Pub/Sub emulator, chDB, the dead letter topic) and the sidecar (HTTP
responses, its log); then every table (every column, base64 payloads decoded), every log line,
every response and every dead letter message is searched for the marker.

Before the fix the replay and streaming tests found the marker in ``dead_letters`` (NaN
literal, invalid UTF-8, oversize, truncated, misplaced features...) and in
``audit.predictions`` (``"Fraud"`` / ``"fraud "`` model names, an ``"Email"`` key).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import io
import logging
import pathlib
import uuid
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
import pytest
import requests
from google.cloud import pubsub_v1

from pipelines import replay as replay_cli
from pipelines.audit_pipeline import build, streaming_options
from pipelines.common import patch_direct_runner_pubsub
from pipelines.demo import SPECS, publish, wait_for
from pipelines.provision import PubSubNames, provision_clickhouse, provision_pubsub
from schemas import REFERENCE_EVENT
from sidecar.server import Sidecar, SidecarConfig
from tests.conftest import BQ_PROJECT

MARK = "PIIMARK-4242-secret"
#: what is searched for: the marker's head, so a truncated or partial copy is found too
NEEDLE = "piimark"


class Case(NamedTuple):
    name: str
    raw: bytes
    #: "row" (audited), "dead" (a dead letter), "dup" (an exact duplicate, collapsed), or
    #: "time" (valid in replay, a dead letter in streaming: timestamp_out_of_bounds)
    expect: str


def _event(i: int, when: str, **changes: Any) -> dict[str, Any]:
    base = orjson.loads(REFERENCE_EVENT)
    ev = copy.deepcopy(base)
    ev["event_id"] = f"pii-{i:04d}-{uuid.uuid4().hex[:8]}"
    ev["event_time"] = when
    # PII first: an oversized payload's kept prefix holds it
    ev["features"] = {"email": MARK, "phone_number": MARK + "-drop", **base["features"]}
    for key, value in changes.items():
        if value is None:
            ev.pop(key, None)
        else:
            ev[key] = value
    return ev


def corpus(when: str) -> list[Case]:
    """Every kind of bad input I could trigger with the PII features present (one line each)."""
    cases: list[Case] = []
    n = iter(range(10_000))

    def add(name: str, raw: bytes | dict, expect: str = "dead") -> None:
        cases.append(Case(name, raw if isinstance(raw, bytes) else orjson.dumps(raw), expect))

    def ev(**ch: Any) -> dict[str, Any]:
        return _event(next(n), when, **ch)

    def feats(e: dict[str, Any], **ch: Any) -> dict[str, Any]:
        e["features"].update(ch)
        return e

    ok = ev()
    add("valid", ok, "row")
    add("exact duplicate", ok, "dup")
    conflict = copy.deepcopy(ok)
    conflict["prediction"]["score"] = 0.5
    add("conflicting duplicate", conflict)
    add(
        "Email key variant (valid)",
        {**ev(), "features": {"Email ": MARK, "PHONE_NUMBER": MARK, "num_00": 1.0}},
        "row",
    )
    for name in ("Fraud", "fraud ", " FRAUD"):
        add(f"model name {name!r}", ev(model={"name": name, "version": "2026-02-15"}))
    raw = orjson.dumps(ev())
    add("NaN literal", raw.replace(b'"num_00":', b'"num_00":NaN,"x":'))
    add("Infinity literal", raw.replace(b'"num_00":', b'"num_00":-Infinity,"x":'))
    add("NaN as the PII value", raw.replace(f'"{MARK}"'.encode(), b"NaN", 1))
    add("invalid UTF-8 in the PII value", raw.replace(MARK.encode(), MARK.encode() + b"\xff\xfe"))
    add("invalid UTF-8 elsewhere", raw.replace(b'"DE"', b'"D\xc3"'))
    add(
        "escaped key + NaN",
        raw.replace(b'"email"', b'"em\\u0061il"').replace(b'"num_00":', b'"num_00":NaN,"x":'),
    )
    add("truncated", raw[: raw.index(MARK.encode()) + 30])
    add(
        "single-quoted pseudo JSON",
        f"{{'features': {{'email': '{MARK}', 'phone_number': '{MARK}'}}}}".encode(),
    )
    add("bare keys", f"{{features: {{email: {MARK}, phone_number: {MARK}}}}}".encode())
    big = feats(ev(), blob="x" * 300_000)
    add("too large", big)
    cut = orjson.dumps(ev())
    at = cut.index(MARK.encode())
    add(
        "too large, the prefix ends inside the PII value",
        cut[:at] + b"PIIMARK" + b"-" * 4096 + cut[at:] + b" " * 300_000,
    )
    add("not an object", orjson.dumps([ev()]))
    add("missing event_id", ev(event_id=None))
    add("missing model", ev(model=None))
    add("model name not a string", ev(model={"name": 7, "version": "1"}))
    add("wrong type: PII value an object", feats(ev(), email={"v": MARK}))
    add("wrong type: features a list", {**ev(), "features": [_event(0, when)["features"]]})
    add("out of range", ev(latency_ms=-1))
    add("invalid value", ev(status="bogus"))
    add("string too long", feats(ev(), email=MARK * 300))
    add("too many features", feats(ev(), **{f"f{i}": 1.0 for i in range(600)}))
    add("too many entries", ev(metadata={f"k{i}": "v" for i in range(100)}))
    add("vector too long", feats(ev(), embedding=[0.5] * 5000))
    deep: Any = 1
    for _ in range(40):
        deep = {"d": deep}
    add("nesting too deep", ev(schema_version="1.1", ext=deep))
    add("invalid timestamp", ev(event_time="yesterday"))
    add("unknown schema version", ev(schema_version="2"))
    add("invalid event_id", ev(event_id="x"))
    add("unknown field (misplaced features)", {**ev(), "feature": {"email": MARK, "phone_number": MARK}})
    add("timestamp out of bounds", ev(event_time="2020-01-01T00:00:00Z"), "time")
    return cases


KSERVE_MAPPING = """
services:
  - inferenceservice: fraud-detector
    namespace: prod
    model: fraud
    version: "2026-02-15"
    features: [email, phone_number, amount]
    output: {field: score}
"""


def kserve_post(port: int, ce_type: str, ce_id: str, body: dict) -> requests.Response:
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    attrs = {
        "type": f"org.kubeflow.serving.inference.{ce_type}",
        "source": "http://localhost:9081/",
        "id": ce_id,
        "inferenceservicename": "fraud-detector",
        "namespace": "prod",
        "component": "predictor",
        "endpoint": "default",
        "time": dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
    }
    headers, data = to_binary(CloudEvent(attrs, body))
    return requests.post(
        f"http://127.0.0.1:{port}/",
        data=data,
        headers={**headers, "Content-Type": "application/json"},
        timeout=30,
    )


def leaks(text: str | bytes | None) -> bool:
    if text is None:
        return False
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return NEEDLE in text.lower()


def clickhouse_leaks(client, db: str) -> list[str]:
    """Every row of every stored table of ``db`` (all columns as text, base64 payloads decoded)
    that holds the marker, as ``table: row``. Views and materialized views read these tables;
    the Set tables behind the dedup views hold identities only (and cannot be SELECTed)."""
    found = []
    for table in client.query(
        f"SELECT name FROM system.tables WHERE database = '{db}' AND engine LIKE '%MergeTree'"
    ).result_rows:
        name = table[0]
        q = client.query(f"SELECT *, toString(tuple(*)) FROM `{db}`.`{name}`")
        cols = q.column_names
        for row in q.result_rows:
            values = dict(zip(cols, row, strict=True))
            b64 = values.get("payload_base64")
            if leaks(str(row)) or (b64 and leaks(base64.b64decode(b64))):
                found.append(f"{name}: {str(row)[:300]}")
    return found


def bigquery_leaks(client, dataset: str) -> list[str]:
    found = []
    for table in client.list_tables(f"{BQ_PROJECT}.{dataset}"):
        for row in client.query(f"SELECT * FROM `{BQ_PROJECT}.{dataset}.{table.table_id}`").result():
            values = dict(row.items())
            b64 = values.get("payload_base64")
            if leaks(str(values)) or (b64 and leaks(base64.b64decode(b64))):
                found.append(f"{table.table_id}: {str(values)[:300]}")
    return found


def log_leaks(caplog: pytest.LogCaptureFixture, *streams: str) -> list[str]:
    lines = [r.getMessage() + (r.exc_text or "") for r in caplog.records] + list(streams)
    return [ln[:300] for ln in lines if leaks(ln)]


def write_corpus(path: pathlib.Path, cases: list[Case]) -> None:
    for c in cases:
        assert b"\n" not in c.raw, c.name
    path.write_bytes(b"".join(c.raw + b"\n" for c in cases))


@pytest.fixture()
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("apache_beam", "urllib3", "google", "grpc", "asyncio"):
        logging.getLogger(name).setLevel(logging.INFO)
    return caplog


def test_replay_both_sinks_nothing_leaks(
    tmp_path, chdb_path, chdb_client, ch_database, bq_emulator, bq_client, bq_dataset, logs, capfd
) -> None:
    cases = corpus("2026-03-01T12:00:00Z")
    events, labels = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    write_corpus(events, cases)
    # prediction-shaped and broken lines sent to the labels input: label dead letters too
    write_corpus(
        labels, [c for c in cases if c.name in ("valid", "NaN literal", "invalid UTF-8 in the PII value")]
    )
    out = io.StringIO()
    code = replay_cli.run(
        [
            f"--input={events}",
            f"--labels_input={labels}",
            f"--model_specs={SPECS}",
            "--sinks=clickhouse,bigquery",
            f"--clickhouse_dsn=chdb://{chdb_path}",
            f"--clickhouse_database={ch_database}",
            f"--bq_project={BQ_PROJECT}",
            f"--bq_dataset={bq_dataset}",
            f"--bq_endpoint={bq_emulator.endpoint}",
            "--monitors=off",
            "--progress_interval_s=0",
        ],
        out,
    )
    captured = capfd.readouterr()
    assert code == 0, (out.getvalue(), captured.err)
    # every line is accounted: rows + dead letters + collapsed duplicates
    rows = int(chdb_client.command(f"SELECT count() FROM `{ch_database}`.predictions"))
    dead = int(
        chdb_client.command(f"SELECT count() FROM `{ch_database}`.dead_letters WHERE kind = 'prediction'")
    )
    assert rows == sum(c.expect in ("row", "time") for c in cases)
    assert dead == sum(c.expect == "dead" for c in cases)
    codes = dict(
        chdb_client.query(
            f"SELECT error_code, count() FROM `{ch_database}`.dead_letters GROUP BY error_code"
        ).result_rows
    )
    assert codes["model_name_mismatch"] == 3 and codes["conflicting_duplicate"] == 1, codes
    assert clickhouse_leaks(chdb_client, ch_database) == []
    assert bigquery_leaks(bq_client, bq_dataset) == []
    assert log_leaks(logs, out.getvalue(), captured.out, captured.err) == []
    # the redacted payloads still say where the PII was, and hash + size are kept
    texts = [
        r[0]
        for r in chdb_client.query(
            f"SELECT payload_text FROM `{ch_database}`.dead_letters WHERE payload_text IS NOT NULL"
        ).result_rows
    ]
    assert any('"email":"hmac-sha256:' in t for t in texts) and any('"pii:dropped"' in t for t in texts)
    assert (
        int(
            chdb_client.command(
                f"SELECT countIf(length(payload_sha256) != 64 OR payload_size = 0) FROM `{ch_database}`.dead_letters"
            )
        )
        == 0
    )


@pytest.mark.parametrize("mode", ["hash", "full"])
def test_replay_dead_letter_payload_modes(tmp_path, chdb_path, chdb_client, ch_database, mode) -> None:
    cases = [
        c
        for c in corpus("2026-03-01T12:00:00Z")
        if c.name in ("NaN literal", "too large", "model name 'Fraud'", "valid")
    ]
    events = tmp_path / "events.jsonl"
    write_corpus(events, cases)
    code = replay_cli.run(
        [
            f"--input={events}",
            f"--model_specs={SPECS}",
            "--sinks=clickhouse",
            f"--clickhouse_dsn=chdb://{chdb_path}",
            f"--clickhouse_database={ch_database}",
            f"--dead_letter_payload={mode}",
            "--monitors=off",
            "--progress_interval_s=0",
        ],
        io.StringIO(),
    )
    assert code == 0
    stored = chdb_client.query(
        f"SELECT payload_text, payload_base64, payload_sha256, payload_size FROM `{ch_database}`.dead_letters"
    ).result_rows
    assert len(stored) == 3
    assert all(len(sha) == 64 and size > 0 for _, _, sha, size in stored)
    if mode == "hash":
        assert all(text is None and b64 is None for text, b64, _, _ in stored)
        assert clickhouse_leaks(chdb_client, ch_database) == []
    else:  # full: the raw bytes, PII included (what the option's help warns about) -- and the
        # search finds it, so the searches above can fail
        assert len(clickhouse_leaks(chdb_client, ch_database)) == 3


def test_streaming_and_sidecar_nothing_leaks(
    pubsub_emulator, chdb_path, tmp_path, monkeypatch, logs, capfd
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.endpoint)
    suffix = uuid.uuid4().hex[:8]
    names = PubSubNames(
        BQ_PROJECT,
        predictions_topic=f"pii-p-{suffix}",
        labels_topic=f"pii-l-{suffix}",
        dead_letters_topic=f"pii-d-{suffix}",
        predictions_subscription=f"pii-p-sub-{suffix}",
        labels_subscription=f"pii-l-sub-{suffix}",
    )
    provision_pubsub(names)
    subscriber = pubsub_v1.SubscriberClient()
    dead_sub = f"projects/{BQ_PROJECT}/subscriptions/pii-d-watch-{suffix}"
    subscriber.create_subscription(name=dead_sub, topic=names.topic(names.dead_letters_topic))
    db = f"pii_stream_{suffix}"
    ch = provision_clickhouse(f"chdb://{chdb_path}", db)
    now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    cases = corpus(now)

    mapping = tmp_path / "kserve.yaml"
    mapping.write_text(KSERVE_MAPPING)
    # the sidecar: every case posted alone; what it accepts it publishes to the predictions topic
    sc = Sidecar(
        SidecarConfig(
            port=0,
            project=BQ_PROJECT,
            predictions_topic=names.predictions_topic,
            labels_topic=names.labels_topic,
            spool_dir=str(tmp_path / "spool"),
            kserve_mapping=str(mapping),
        )
    ).start()
    responses: list[str] = []
    via_sidecar: set[str] = set()
    try:
        for c in cases:
            r = requests.post(
                f"http://127.0.0.1:{sc.port}/v1/predictions",
                data=c.raw,
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
            responses.append(f"{c.name}: {r.status_code} {r.text}")
            assert r.status_code in (202, 400, 413), responses[-1]
            if r.status_code == 202:
                via_sidecar.add(c.name)
        # KServe CloudEvents: two mapped pairs (audited) and three that cannot be mapped
        ks = [
            ("ks-1", {"instances": [[MARK, MARK + "-drop", 10.0]]}, {"predictions": [0.9]}, 202),
            (
                "ks-2",
                {"instances": [{"email": MARK, "phone_number": MARK, "amount": 3.0}]},
                {"predictions": [0.2]},
                202,
            ),
            ("ks-3", {"instances": [[MARK, MARK]]}, {"predictions": [0.1]}, 400),  # shape mismatch
            ("ks-4", {"instances": [[MARK, MARK, "x"]]}, {"predictions": ["NaN-ish", 1]}, 400),
        ]
        for ce_id, req, resp, status in ks:
            r1 = kserve_post(sc.port, "request", ce_id, req)
            r2 = kserve_post(sc.port, "response", ce_id, resp)
            responses += [
                f"{ce_id} request: {r1.status_code} {r1.text}",
                f"{ce_id} response: {r2.status_code} {r2.text}",
            ]
            assert status in (r1.status_code, r2.status_code), responses[-2:]
        r = requests.post(
            f"http://127.0.0.1:{sc.port}/",
            data=orjson.dumps({"email": MARK}),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        responses.append(f"bad cloudevent: {r.status_code} {r.text}")
        assert r.status_code == 400 and r.json()["rejected"][0]["code"] == "kserve_bad_cloudevent"
        metrics = requests.get(f"http://127.0.0.1:{sc.port}/metrics", timeout=30).text
    finally:
        sc.stop(10)
    assert {"valid", "model name 'Fraud'", "Email key variant (valid)"} <= via_sidecar
    # the rest as a producer without the sidecar would send it, straight to the topic
    publish(names.topic(names.predictions_topic), [c.raw for c in cases if c.name not in via_sidecar])

    opts = streaming_options(
        [
            f"--predictions_subscription={names.subscription(names.predictions_subscription)}",
            f"--dead_letter_topic={names.topic(names.dead_letters_topic)}",
            "--sinks=clickhouse",
            f"--clickhouse_dsn=chdb://{chdb_path}",
            f"--clickhouse_database={db}",
            f"--model_specs={SPECS}",
            "--monitors=off",
        ]
    )
    patch_direct_runner_pubsub(opts)
    p = beam.Pipeline(options=opts)
    build(p, opts)
    result = p.run()
    want = len(cases) - sum(c.expect == "dup" for c in cases) + 2  # + the two KServe pairs

    def total() -> tuple[bool, str]:
        n = int(
            ch.command(
                f"SELECT (SELECT count() FROM `{db}`.predictions) + (SELECT count() FROM `{db}`.dead_letters)"
            )
        )
        return n >= want, f"{n}/{want}"

    try:
        wait_for(total, 240, None, "every case in a table")
    finally:
        result.cancel()
    topic_messages: list[bytes] = []
    while True:
        resp = subscriber.pull(subscription=dead_sub, max_messages=100, timeout=10)
        if not resp.received_messages:
            break
        topic_messages += [m.message.data for m in resp.received_messages]
        subscriber.acknowledge(subscription=dead_sub, ack_ids=[m.ack_id for m in resp.received_messages])
    captured = capfd.readouterr()
    assert (
        int(ch.command(f"SELECT count() FROM `{db}`.dead_letters WHERE error_code = 'model_name_mismatch'"))
        == 3
    )
    assert (
        len(topic_messages) >= sum(c.expect in ("dead", "time") for c in cases) - 1
    )  # all but the conflict (dedup stage)
    assert clickhouse_leaks(ch, db) == []
    assert [
        m[:200]
        for m in topic_messages
        if leaks(m) or leaks(base64.b64decode(orjson.loads(m).get("payload_base64") or b""))
    ] == []
    assert [r[:300] for r in responses if leaks(r)] == [] and not leaks(metrics)
    kserve_rows = ch.query(
        f"SELECT features FROM `{db}`.predictions WHERE JSONExtractString(metadata, 'ce_id') IN ('ks-1', 'ks-2')"
    ).result_rows
    assert len(kserve_rows) == 2 and all('"email":"hmac-sha256:' in f for (f,) in kserve_rows), kserve_rows
    assert log_leaks(logs, captured.out, captured.err) == []
