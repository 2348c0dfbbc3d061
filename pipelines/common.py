"""Helpers both pipelines share: sink construction and spec loading from options."""

from __future__ import annotations

from schemas.specs import ModelSpec, load_specs
from transforms.sinks.base import SinkFn
from transforms.sinks.bigquery import BigQuerySinkFn
from transforms.sinks.clickhouse import ClickHouseSinkFn
from transforms.sinks.retry import RetryPolicy


def sink_fns(opts, sinks: list[str]) -> list[SinkFn]:
    policy = RetryPolicy(attempts=opts.sink_max_attempts)
    fns: list[SinkFn] = []
    if "bigquery" in sinks:
        fns.append(BigQuerySinkFn(opts.bq_project, opts.bq_dataset, opts.bq_endpoint, policy))
    if "clickhouse" in sinks:
        fns.append(ClickHouseSinkFn(opts.clickhouse_dsn, opts.clickhouse_database, policy))
    return fns


def specs_from(opts) -> dict[str, ModelSpec]:
    return load_specs(opts.model_specs) if opts.model_specs else {}
