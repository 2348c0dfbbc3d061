"""A hypothesis corpus of malformed payloads through the replay pipeline: no crash, and
every line lands in dead letters with a stable code and its payload hash."""

from __future__ import annotations

import hashlib
import json

import apache_beam as beam
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.options import AuditOptions
from pipelines.replay import build
from schemas import ERROR_CODES, REFERENCE_EVENT
from schemas.tables import create_clickhouse_tables

no_newline = st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" "))
ref = REFERENCE_EVENT.decode()

malformed = st.one_of(
    no_newline,  # random bytes
    st.integers(1, len(REFERENCE_EVENT) - 2).map(lambda n: REFERENCE_EVENT[:n]),  # truncated JSON
    st.integers(300_000, 400_000).map(lambda n: b'{"x": "' + b"a" * n + b'"}'),  # above max_payload_bytes
    st.integers(20, 3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]).map(
        lambda lit: ref.replace("12.7", lit).encode()
    ),
    st.sampled_from(['"x"', "[]", "{}", "true", "-1"]).map(
        lambda v: ref.replace('"latency_ms":12.7', f'"latency_ms":{v}').encode()
    ),
    st.binary(min_size=1, max_size=4)
    .filter(lambda b: b"\n" not in b and b"\r" not in b)
    .map(lambda junk: REFERENCE_EVENT.replace(b'"DE"', b'"D\xff' + junk + b'"')),  # invalid UTF-8
    st.sampled_from([b"null", b"[1,2]", b'"text"', b"42"]),  # not an object
)


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(malformed, min_size=60, max_size=120))
def test_malformed_payloads_all_become_coded_dead_letters(
    tmp_path_factory, chdb_path, chdb_client, payloads
) -> None:
    payloads = [p for p in payloads if p.strip()]  # blank lines are skipped (and counted) by replay
    db = f"t_malformed_{hashlib.sha256(b''.join(payloads)).hexdigest()[:10]}"
    chdb_client.command(f"CREATE DATABASE IF NOT EXISTS `{db}`")
    create_clickhouse_tables(chdb_client, db)
    path = tmp_path_factory.mktemp("corpus") / "bad.jsonl"
    path.write_bytes(b"".join(p + b"\n" for p in payloads))
    opts = AuditOptions(
        [f"--input={path}", f"--clickhouse_dsn=chdb://{chdb_path}", f"--clickhouse_database={db}"]
    )
    with beam.Pipeline(options=opts) as p:
        build(p, opts)
    assert int(chdb_client.command(f"SELECT count() FROM `{db}`.predictions")) == 0
    rows = chdb_client.query(
        f"SELECT payload_sha256, error_code, payload_size, payload_truncated FROM `{db}`.dead_letters"
    ).result_rows
    assert {r[0] for r in rows} == {hashlib.sha256(p).hexdigest() for p in payloads}
    assert {r[1] for r in rows} <= set(ERROR_CODES)
    for _sha, code, size, truncated in rows:
        assert truncated == (size > 262_144), (code, size)
    assert json.dumps(sorted({r[1] for r in rows}))  # codes are plain strings
