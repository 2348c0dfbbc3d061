"""The streaming pipeline against the real Pub/Sub emulator, bqemulator and chDB."""

from __future__ import annotations

from pipelines.demo import stream_end_to_end
from tests.conftest import BQ_PROJECT


def test_publish_pipeline_both_sinks_conservation(
    pubsub_emulator, bq_emulator, chdb_path, monkeypatch
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.endpoint)
    s = stream_end_to_end(
        pubsub_emulator.endpoint,
        bq_emulator.endpoint,
        f"chdb://{chdb_path}",
        events=400,
        out=None,
        timeout=240,
        project=BQ_PROJECT,
        dataset="stream_e2e",
        seed=7,
        bq_write_endpoint=bq_emulator.grpc_endpoint,  # the sink's default path: Storage Write API
    )
    assert s["conserved"], s
    assert s["bigquery_rows"] == s["clickhouse_rows"] == s["distinct"]
    assert s["duplicates_collapsed"] == s["published"] - s["malformed"] - s["distinct"] > 0
    assert sum(s["dead_letters"].values()) == s["malformed"] > 0
    assert s["quality_rows"] > 0 and s["labels"] > 0
    assert s["windows"] >= 2  # the drift monitors fired on the stream's event-time windows
    assert s["clean_window_alerts"] == 0
