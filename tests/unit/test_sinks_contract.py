"""The sink mechanics' contract, exactly: batch sizes, counters, dead-letter contents, the lines
a user sees, retries and their jitter, the failure markers, and the ClickHouse client options.

Counters are read from Beam's own MetricsContainer (the one a runner gives a step), so a
miscounted or misnamed ``<sink>_rows_written_<table>`` -- which the replay summary compares
with the rows it sent -- fails here. The sink is the in-process ``MemorySink`` of
tests/unit/test_sinks.py.
"""

from __future__ import annotations

import http.server
import logging
import pickle
import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp

from tests.beam_helpers import counted
from tests.unit.test_sinks import CALLS, STORE, MemorySink, SinkDown, drive, pred_row, stored
from transforms.sinks.base import LogLimiter, SinkFn, cached_client
from transforms.sinks.errors import (
    MARKER,
    ROW_REFUSAL,
    SINK_FAILURE,
    TRANSIENT,
    SinkFailure,
    SinkStopped,
    Verdict,
    find_sink_failure,
    marked,
    parse_marked,
    sink_stopped,
)
from transforms.sinks.retry import RetriesExhausted, RetryPolicy, call_with_retries
from transforms.sinks.write import WriteAudit

FAST = RetryPolicy(attempts=3, base_delay_s=0.0)


def key() -> str:
    return f"c-{uuid.uuid4().hex[:8]}"


# -- batching ---------------------------------------------------------------------------------
def test_rows_are_flushed_at_exactly_max_batch_size_and_at_the_bundle_end() -> None:
    k = key()
    fn = MemorySink(k).for_table("predictions", 4)
    assert drive(fn, [pred_row(i) for i in range(9)]) == []
    assert CALLS[k] == [("predictions", 4), ("predictions", 4), ("predictions", 1)]
    k2 = key()
    fn2 = MemorySink(k2).for_table("labels", 3)
    fn2.setup()
    fn2.start_bundle()
    assert list(fn2.process([pred_row(i) for i in range(5)], ts=Timestamp(1))) == []  # a list: one element
    assert CALLS[k2] == [("labels", 5)]
    assert list(fn2.finish_bundle()) == []  # nothing buffered: no insert at all
    assert CALLS[k2] == [("labels", 5)]


def test_a_dead_letter_from_a_full_batch_comes_out_of_process_and_the_rest_at_the_bundle_end() -> None:
    k = key()
    fn = MemorySink(k, refuse=["evt-000001", "evt-000004"]).for_table("predictions", 3)
    fn.setup()
    fn.start_bundle()
    emitted = []
    for i, ts in zip(range(5), (5, 9, 7, 3, 4), strict=True):
        emitted.append([d["event_id"] for d in fn.process(pred_row(i), ts=Timestamp(ts))])
    assert emitted == [[], [], ["evt-000001"], [], []]
    late = list(fn.finish_bundle())
    assert [w.value["event_id"] for w in late] == ["evt-000004"]
    assert late[0].timestamp == Timestamp(9)  # the bundle's latest element timestamp
    assert stored(k, "predictions") == ["evt-000000", "evt-000002", "evt-000003"]


def test_for_table_copies_the_settings_and_leaves_the_original_alone() -> None:
    fn = MemorySink("orig", mode="streaming", policy=FAST)
    copy = fn.for_table("labels", 7)
    assert (copy.table, copy.max_batch_size, copy.mode, copy.policy, copy.key) == (
        "labels",
        7,
        "streaming",
        FAST,
        "orig",
    )
    assert (fn.table, fn.max_batch_size) == ("predictions", 5000)
    assert type(copy) is MemorySink
    with pytest.raises(ValueError, match=r"sink mode must be one of \('replay', 'streaming'\), not 'batch'"):
        MemorySink("x", mode="batch")


# -- refusals: which rows, which reason, which counters ---------------------------------------
def test_refused_rows_are_dead_letters_with_their_own_reason_and_the_counters_add_up() -> None:
    k = key()
    fn = MemorySink(k, refuse=["evt-000002", "evt-000005"]).for_table("predictions", 100)
    rows = [pred_row(i) for i in range(7)]
    with counted() as c:
        dead = drive(fn, rows)
        assert c("memory_rows_written_predictions") == 5
        assert c("memory_rejected_rows") == 2
        assert c("memory_retries") == 0 and c("memory_sink_failures") == 0
    assert [(d["event_id"], d["error_message"]) for d in dead] == [
        ("evt-000002", "refused evt-000002"),
        ("evt-000005", "refused evt-000005"),
    ]
    d = dead[0]
    assert (d["stage"], d["error_code"], d["kind"], d["error_path"], d["attributes"]) == (
        "sink.memory",
        "sink_rejected",
        "row",
        "$.predictions",
        '{"table":"predictions"}',
    )
    assert d["model_name"] == "fraud" and d["ingest_time"] == rows[2]["ingest_time"]


def test_a_raised_row_error_is_bisected_to_the_row_and_names_the_servers_reason() -> None:
    k = key()
    fn = MemorySink(k, raise_for=["evt-000006"]).for_table("predictions", 100)
    rows = [pred_row(i) for i in range(8)]
    with counted() as c:
        dead = drive(fn, rows)
        assert c("memory_rows_written_predictions") == 7 and c("memory_rejected_rows") == 1
    assert [(d["event_id"], d["error_message"]) for d in dead] == [
        ("evt-000006", "refused_by_server: a row in this batch cannot be stored")
    ]
    assert stored(k, "predictions") == [r["event_id"] for r in rows if r["event_id"] != "evt-000006"]
    # halves: 8 -> 4+4 -> (2+2) -> (1+1): the refused row alone, every other row written once
    assert sum(n for _, n in CALLS[k] if n == 1) == 2 and len(CALLS[k]) == 7


def test_transient_retries_are_counted_and_the_written_rows_once() -> None:
    k = key()
    fn = MemorySink(k, fail_first=2, policy=FAST).for_table("labels", 100)
    with counted() as c:
        assert drive(fn, [pred_row(i) for i in range(3)]) == []
        assert (c("memory_retries"), c("memory_rows_written_labels"), c("memory_sink_failures")) == (2, 3, 0)


def test_exhausted_retries_are_the_default_unreachable_line_and_counted() -> None:
    k = key()
    fn = MemorySink(k, fail_first=99, policy=FAST)
    fn.sleep = lambda s: None  # type: ignore[method-assign]
    with counted() as c, pytest.raises(SinkStopped) as info:
        drive(fn, [pred_row(1)])
    failure = find_sink_failure(info.value)
    assert failure is not None and str(failure) == (
        "memory: predictions: gave up after 3 attempts: ConnectionError: failure 3 "
        "-- fix: check that memory is reachable"
    )
    assert failure.code == "unreachable"
    assert info.value.__cause__ is failure
    assert c("memory_sink_failures") == 1 and c("memory_retries") == 2


def test_refused_dead_letters_name_the_first_three_ids_and_stop_replay() -> None:
    rows = [pred_row(i) for i in range(5)]
    dead = drive(MemorySink(key(), refuse=[r["event_id"] for r in rows]), rows)
    k = key()
    dl = MemorySink(k, refuse=[r["event_id"] for r in rows[1:]], refuse_tables=("dead_letters",))
    dl = dl.for_table("dead_letters", 10)  # type: ignore[assignment]
    with counted() as c, pytest.raises(SinkStopped) as info:
        drive(dl, dead)
    failure = find_sink_failure(info.value)
    assert failure is not None
    ids = ", ".join(d["dead_letter_id"] for d in dead[1:4])
    assert (failure.code, failure.reason, failure.fix) == (
        "dead_letter_refused",
        f"4 dead letter(s) refused ({ids}): refused evt-000001",
        "check that the dead_letters table has the expected columns (`predaudit provision`)",
    )
    assert c("memory_dead_letters_refused") == 4 and c("memory_rows_written_dead_letters") == 1
    assert c("memory_rejected_rows") == 0 and c("memory_sink_failures") == 1


def test_a_streaming_failure_is_logged_with_the_rows_waiting_and_the_lines_held_back(caplog) -> None:
    k = key()
    policy = RetryPolicy(attempts=1, failure_max_delay_s=5.0)
    fn = MemorySink(k, fail_first=4, fail_with=SinkDown, mode="streaming", policy=policy)
    sleeps: list[float] = []
    fn.sleep = sleeps.append  # type: ignore[method-assign]
    now = [0.0]
    fn.limiter = LogLimiter(60.0, clock=lambda: now[0])

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += 40.0  # the second failure is within the minute, the third not

    fn.sleep = sleep  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="transforms.sinks.base"), counted() as c:
        assert drive(fn, [pred_row(i) for i in range(3)]) == []
        assert c("memory_sink_failures") == 4 and c("memory_rows_written_predictions") == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "transforms.sinks.base"]
    assert lines == [
        "memory: predictions: failure 1 -- fix: run `predaudit provision` "
        "(3 rows waiting; retrying every <= 5 s; 0 similar lines suppressed)",
        "memory: predictions: failure 3 -- fix: run `predaudit provision` "
        "(3 rows waiting; retrying every <= 5 s; 1 similar lines suppressed)",
    ]
    assert sleeps == [1.0, 2.0, 4.0, 5.0]


def test_the_log_budget_is_per_sink_and_table() -> None:
    now = [0.0]
    lim = LogLimiter(10.0, clock=lambda: now[0])
    assert [lim.allow("a"), lim.allow("b"), lim.allow("a"), lim.allow("a")] == [
        (True, 0),
        (True, 0),
        (False, 0),
        (False, 0),
    ]
    now[0] = 10.0  # exactly the interval later: allowed again
    assert lim.allow("a") == (True, 2) and lim.allow("b") == (True, 0)
    now[0] = 19.9
    assert lim.allow("a") == (False, 0)


# -- clients and connecting -------------------------------------------------------------------
def test_cached_client_makes_one_client_per_key_and_thread() -> None:
    made: list[int] = []

    def make() -> object:
        made.append(1)
        return object()

    k = ("cache-test", uuid.uuid4().hex)
    first = cached_client(k, make)
    assert cached_client(k, make) is first and len(made) == 1
    assert cached_client((*k, "other"), make) is not first and len(made) == 2
    box: list[object] = []
    t = threading.Thread(target=lambda: box.append(cached_client(k, make)))
    t.start()
    t.join()
    assert box[0] is not first and len(made) == 3


class OtherMemorySink(MemorySink):
    """Another sink class with the same connection settings: it must get its own client."""

    name = "other"

    def make_client(self) -> object:
        return "other-client"


def test_two_sink_classes_with_the_same_settings_never_share_a_client() -> None:
    k = key()
    a, b = MemorySink(k), OtherMemorySink(k)
    assert drive(a, [pred_row(1)]) == [] and drive(b, [pred_row(2)]) == []
    assert a.client is not b.client and b.client == "other-client"
    a.setup()
    assert a.client is None  # made on the first write, inside the retry loop


class ConnectAs(MemorySink):
    """A sink whose connect raises an error its classify reads as ``verdict``."""

    def __init__(self, k: str, verdict: Verdict) -> None:
        super().__init__(k, policy=FAST)
        self.verdict = verdict

    def make_client(self) -> object:
        raise LookupError("no store at that path")

    def classify(self, exc: BaseException) -> Verdict:
        assert isinstance(exc, LookupError)  # the cause, not the wrapper
        return self.verdict


@pytest.mark.parametrize(
    ("verdict", "code"),
    [
        (Verdict(SINK_FAILURE, "missing_column", "no column x", "provision"), "connect_failed"),
        (Verdict(SINK_FAILURE, "unexpected_error", "no column x", "see the log"), "connect_failed"),
        (Verdict(ROW_REFUSAL, "refused_by_server", "no column x"), "connect_failed"),
        (Verdict(SINK_FAILURE, "auth_failed", "no column x", "check the password"), "auth_failed"),
    ],
)
def test_a_connect_error_is_a_connect_failure_unless_typed(verdict: Verdict, code: str) -> None:
    with pytest.raises(SinkStopped) as info:
        drive(ConnectAs(key(), verdict), [pred_row(1)])
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.code == code
    if code == "connect_failed":
        assert (failure.reason, failure.fix) == (
            "cannot connect: no column x",
            "check the memory connection settings",
        )
    else:
        assert (failure.reason, failure.fix) == ("no column x", "check the password")


def test_the_base_sink_names_the_table_as_given_and_asks_for_the_rest() -> None:
    fn = SinkFn(FAST, table="labels")
    assert fn.where("labels") == "labels"
    assert fn.connect_fix() == "check the sink connection settings"
    for call in (
        fn.client_key,
        fn.make_client,
        lambda: fn.insert("t", []),
        lambda: fn.classify(ValueError()),
    ):
        with pytest.raises(NotImplementedError):
            call()


# -- WriteAudit ------------------------------------------------------------------------------
def test_write_audit_writes_parts_to_their_table_and_every_dead_letter_to_every_sink() -> None:
    a, b = key(), key()
    fa = MemorySink(a, refuse=["evt-000001"])
    fb = OtherMemorySink(b, refuse=["evt-000003"])
    decode_dead = {"dead_letter_id": "d-0", "event_id": "decode-0", "error_code": "invalid_json"}
    with TestPipeline() as p:
        part1 = p | "P1" >> beam.Create([pred_row(i) for i in range(3)])
        part2 = p | "P2" >> beam.Create([pred_row(i) for i in range(3, 5)])
        dl = p | "DL" >> beam.Create([decode_dead])
        dead = {"predictions/a": part1, "predictions/b": part2, "dead_letters": dl} | WriteAudit(
            [fa, fb], max_batch_size=2
        )
        assert_that(
            dead | beam.Map(lambda d: (d["event_id"], d["error_code"])),
            equal_to(
                [
                    ("decode-0", "invalid_json"),
                    ("evt-000001", "sink_rejected"),
                    ("evt-000003", "sink_rejected"),
                ]
            ),
        )
    assert stored(a, "predictions") == ["evt-000000", "evt-000002", "evt-000003", "evt-000004"]
    assert stored(b, "predictions") == ["evt-000000", "evt-000001", "evt-000002", "evt-000004"]
    for k in (a, b):
        assert sorted(d["event_id"] for d in STORE[k]["dead_letters"]) == [
            "decode-0",
            "evt-000001",
            "evt-000003",
        ]
        assert max(n for t, n in CALLS[k] if t == "predictions") <= 2  # the batch size reached the DoFn
    assert WriteAudit([fa]).max_batch_size == 5000  # the default batch, as SinkFn's
    with pytest.raises(ValueError, match="^WriteAudit needs at least one sink$"):
        WriteAudit([])


# -- retries ---------------------------------------------------------------------------------
def test_retry_waits_are_full_jitter_under_each_ceiling_from_the_given_rng() -> None:
    policy = RetryPolicy(attempts=5, base_delay_s=1.0, max_delay_s=3.0)
    assert policy.ceilings() == [1.0, 2.0, 3.0, 3.0]
    waits: list[float] = []
    seen: list[str] = []
    calls = [0]

    def flaky() -> str:
        calls[0] += 1
        if calls[0] < 5:
            raise TimeoutError(f"slow {calls[0]}")
        return "ok"

    got = call_with_retries(
        flaky,
        lambda e: isinstance(e, TimeoutError),
        policy,
        on_retry=lambda e: seen.append(str(e)),
        sleep=waits.append,
        rng=random.Random(7),
    )
    ref = random.Random(7)
    assert got == "ok" and waits == [ref.uniform(0, c) for c in policy.ceilings()]
    assert seen == ["slow 1", "slow 2", "slow 3", "slow 4"]


def test_retries_give_up_after_the_attempts_with_the_last_error_and_permanent_errors_at_once() -> None:
    attempts: list[int] = []

    def down() -> None:
        attempts.append(1)
        raise ConnectionError(f"refused #{len(attempts)}")

    waits: list[float] = []
    with pytest.raises(RetriesExhausted) as info:
        call_with_retries(down, lambda e: True, RetryPolicy(attempts=3, base_delay_s=0.5), sleep=waits.append)
    assert str(info.value) == "gave up after 3 attempts: ConnectionError: refused #3"
    assert info.value.attempts == 3 and info.value.__cause__ is info.value.last
    assert str(info.value.last) == "refused #3" and len(waits) == 2
    assert all(0 <= w <= c for w, c in zip(waits, [0.5, 1.0], strict=True))

    attempts.clear()
    with pytest.raises(ConnectionError, match="refused #1"):
        call_with_retries(down, lambda e: False, RetryPolicy(attempts=3), sleep=waits.append)
    assert len(attempts) == 1 and len(waits) == 2


def test_the_failure_backoff_doubles_from_its_base_to_its_cap() -> None:
    p = RetryPolicy(failure_base_delay_s=0.5, failure_max_delay_s=3.0)
    assert [p.failure_delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    unbounded = RetryPolicy(failure_max_delay_s=float("inf"))
    assert unbounded.failure_delay(30) == unbounded.failure_delay(500) == 2.0**30  # the exponent is capped


# -- failure markers -------------------------------------------------------------------------
F = SinkFailure("clickhouse", "audit.labels", "table is gone", "run provision", "unknown_table")


def test_a_sink_failure_pickles_whole_and_its_marker_parses_back() -> None:
    back = pickle.loads(pickle.dumps(F))
    assert (back.sink, back.table, back.reason, back.fix, back.code) == (
        "clickhouse",
        "audit.labels",
        "table is gone",
        "run provision",
        "unknown_table",
    )
    assert SinkFailure("s", "t", "r", "f").code == "sink_failure"
    assert marked(F) == (
        "PREDAUDIT_SINK_FAILURE[clickhouse|audit.labels|unknown_table] "
        "clickhouse: audit.labels: table is gone -- fix: run provision"
    )
    stopped = sink_stopped(F)
    assert isinstance(stopped, SinkStopped) and stopped.args == (marked(F) + "\n",)
    for text in (marked(F), "x\n" + marked(F) + "\n [while running 'W']"):
        p = parse_marked(text)
        assert p is not None and (p.sink, p.table, p.code, p.reason, p.fix) == (
            "clickhouse",
            "audit.labels",
            "unknown_table",
            "table is gone",
            "run provision",
        )
    assert parse_marked("no marker here") is None
    two = parse_marked(marked(F) + "\n" + marked(SinkFailure("other", "x.y", "r", "f", "c")))
    assert two is not None and two.sink == "clickhouse"  # the first marker in the text
    odd = parse_marked(MARKER + "[bq] something else")
    assert odd is not None and (odd.sink, odd.table, odd.code, odd.reason, odd.fix) == (
        "bq",
        "",
        "sink_failure",
        "something else",
        "",
    )
    bare = parse_marked(MARKER + "[a|b|c]")
    assert bare is not None and (bare.sink, bare.table, bare.reason, bare.fix) == ("a", "b", "", "")


def test_find_sink_failure_takes_the_innermost_failure_or_the_first_marked_text() -> None:
    inner = SinkFailure("bigquery", "p.d.t", "gone", "provision", "not_found")
    outer = SinkFailure("bigquery [step]", "p.d.t", "gone", "provision", "not_found")
    try:
        try:
            raise inner
        except SinkFailure as e:
            raise outer from e
    except SinkFailure as e:
        assert find_sink_failure(e) is inner
    first = RuntimeError(marked(F))
    second = RuntimeError(marked(SinkFailure("other", "x.y", "r", "f", "c")))
    first.__context__ = second
    found = find_sink_failure(first)
    assert found is not None and found.sink == "clickhouse"
    loop = RuntimeError("plain")
    loop.__context__ = loop
    assert find_sink_failure(loop) is None and find_sink_failure(None) is None
    wrapped = RuntimeError(marked(SinkFailure("other", "x.y", "r", "f", "c")))
    wrapped.__cause__ = F
    assert find_sink_failure(wrapped) is F  # a real one beats text


# -- ClickHouse: DSNs, loopback, client options ----------------------------------------------
def test_redact_dsn_removes_every_password_and_nothing_else() -> None:
    from transforms.sinks.clickhouse import redact_dsn

    assert redact_dsn("http://u:p@h:8123/db?secure=0#f") == "http://u@h:8123/db?secure=0#f"
    assert redact_dsn("https://h/?user=u&PASSWORD=x&a=1") == "https://h/?user=u&a=1"
    assert redact_dsn("https://u:p:q@h") == "https://u@h"
    assert redact_dsn("https://u:p@ss@h/") == "https://u@h/"  # an @ in the password
    assert redact_dsn("http://h:8123/?secure=1") == "http://h:8123/?secure=1"


def test_loopback_hosts() -> None:
    from transforms.sinks.clickhouse import is_loopback

    assert [is_loopback(h) for h in ("[::1]", "LOCALHOST", "127.0.0.9", "ip6-localhost")] == [True] * 4
    assert [is_loopback(h) for h in ("10.0.0.1", "127.evil.example", "ch.example", "::2", "Xlocalhost")] == [
        False
    ] * 5


def test_plain_http_to_another_host_warns_once_per_host(caplog) -> None:
    from transforms.sinks.clickhouse import warn_plain_http

    host = f"ch-{uuid.uuid4().hex[:6]}.example"
    with caplog.at_level(logging.WARNING, logger="transforms.sinks.clickhouse"):
        assert warn_plain_http(f"http://u:pw@{host}:8123") is True
        assert warn_plain_http(f"http://u:pw@{host}:8123") is False
        assert warn_plain_http(f"http://u:pw@second-{host}:8123") is True  # another host: its own warning
        assert warn_plain_http(f"https://u:pw@other-{host}") is False
        assert warn_plain_http("http://u:pw@127.0.0.1:8123") is False
    lines = [r.getMessage() for r in caplog.records if r.name == "transforms.sinks.clickhouse"]
    assert lines == [
        f"clickhouse: http://u@{h}:8123 is plain HTTP to a non-loopback host: the password crosses "
        "the network unencrypted; use https://"
        for h in (host, f"second-{host}")
    ]


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        self.send_response(500)
        self.send_header("X-ClickHouse-Exception-Code", "516")
        self.end_headers()
        self.wfile.write(b"Code: 516. DB::Exception: no. (AUTHENTICATION_FAILED)")

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def recorder() -> Iterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Rec", (_Recorder,), {"seen": seen})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1], seen
    srv.shutdown()
    srv.server_close()


def test_the_secret_password_is_the_one_sent_and_https_means_tls_on_any_port(recorder, tmp_path) -> None:
    import base64

    from transforms.sinks.clickhouse import ClickHouseSinkFn, classify_clickhouse, clickhouse_client

    port, seen = recorder
    secret = tmp_path / "pw"
    secret.write_text("from-secret\n")
    fn = ClickHouseSinkFn(f"http://audit:in-dsn@127.0.0.1:{port}", "audit", FAST, password_secret=str(secret))
    assert fn.client_key() == (f"http://audit:in-dsn@127.0.0.1:{port}", str(secret))
    with pytest.raises(Exception) as info:
        fn.make_client()
    assert classify_clickhouse(info.value, "audit", "t", fn.dsn).code == "auth_failed"
    auth = {h.get("Authorization") or h.get("authorization") for h in seen} - {None}
    users = {(h.get("X-ClickHouse-User"), h.get("X-ClickHouse-Key")) for h in seen}
    sent = {base64.b64decode(a.split()[1]).decode() for a in auth} | {f"{u}:{k}" for u, k in users if u}
    assert sent == {"audit:from-secret"}
    # https:// on a plain-HTTP port: a TLS handshake is attempted (and fails), never cleartext
    seen.clear()
    with pytest.raises(Exception) as info:
        clickhouse_client(f"https://audit:pw@127.0.0.1:{port}")
    assert classify_clickhouse(info.value, "audit", "t", "https://x").code == "tls" and seen == []


def test_an_unreadable_password_secret_is_a_sink_failure_naming_the_reference(tmp_path) -> None:
    from transforms.sinks.clickhouse import ClickHouseSinkFn

    ref = str(tmp_path / "missing")
    fn = ClickHouseSinkFn("http://127.0.0.1:1", "audit", FAST, password_secret=ref).for_table("labels", 10)
    with pytest.raises(SinkStopped) as info:
        drive(fn, [pred_row(1)])
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.table == "audit.labels"
    assert failure.code.startswith("secret_") and failure.reason.startswith(
        f"cannot read the password: {failure.code}: {ref}"
    )
    assert failure.fix


def test_clickhouse_errors_without_a_server_code() -> None:
    from clickhouse_connect.driver import exceptions as chx

    from transforms.sinks.clickhouse import classify_clickhouse

    def v(exc: BaseException) -> tuple[str, str, str, str]:
        got = classify_clickhouse(exc, "audit", "predictions", "http://u:pw@h:8123")
        return got.kind, got.code, got.reason, got.fix

    provision = (
        "run `predaudit provision --sinks clickhouse --clickhouse_dsn http://u@h:8123 "
        "--clickhouse_database audit --pubsub off` (or replay without --no_create_tables)"
    )
    assert v(chx.DataError("bad value")) == (ROW_REFUSAL, "unencodable_value", "DataError: bad value", "")
    assert v(chx.ProgrammingError("Unrecognized column 'x'")) == (
        SINK_FAILURE,
        "missing_column",
        "ProgrammingError: Unrecognized column 'x'",
        f"the table audit.predictions lacks expected columns: {provision}",
    )
    assert v(chx.OperationalError("reset"))[:3] == (TRANSIENT, "unreachable", "OperationalError: reset")
    assert v(TimeoutError("slow"))[:2] == (TRANSIENT, "unreachable")
    assert v(ConnectionResetError("rst"))[:2] == (TRANSIENT, "unreachable")
    assert v(KeyError("k")) == (
        SINK_FAILURE,
        "unexpected_error",
        "KeyError: 'k'",
        "unexpected error writing audit.predictions; see the log",
    )
    long = chx.DatabaseError("Code: 469. " + "y" * 400 + "\nsecond line")
    long.code = 469  # type: ignore[attr-defined]
    kind, code, reason, _ = v(long)
    assert (kind, code, reason) == (ROW_REFUSAL, "refused_by_server", "code 469: Code: 469. " + "y" * 289)
    named = chx.DatabaseError("boom")
    named.code, named.name = 159, "TIMEOUT_EXCEEDED"  # type: ignore[attr-defined]
    assert v(named)[:3] == (TRANSIENT, "server_busy", "TIMEOUT_EXCEEDED: boom")
    not_ch = ValueError("x")
    not_ch.code = 469  # type: ignore[attr-defined]  # a code attribute on a foreign error: ignored
    assert v(not_ch)[1] == "unexpected_error"


def test_a_tls_error_deep_in_a_urllib3_chain_is_tls() -> None:
    import ssl

    import urllib3.exceptions

    from transforms.sinks.clickhouse import classify_clickhouse, is_tls_error

    tls = ssl.SSLCertVerificationError("certificate verify failed")
    retry = urllib3.exceptions.MaxRetryError(None, "/", reason=tls)  # type: ignore[arg-type]
    outer = ConnectionError("connect")
    outer.__context__ = retry
    assert is_tls_error(outer) and not is_tls_error(ConnectionError("refused"))
    got = classify_clickhouse(outer, "audit", "labels", "https://u:pw@h:8443")
    assert (got.kind, got.code, got.reason, got.fix) == (
        SINK_FAILURE,
        "tls",
        "TLS failure: ConnectionError: connect",
        "check the server certificate / CA for https://u@h:8443",
    )
    loop = ConnectionError("loop")
    loop.__context__ = loop
    assert not is_tls_error(loop)


def test_a_value_error_is_a_refusal_only_when_the_column_serializer_raised_it() -> None:
    from transforms.sinks.clickhouse import _raised_in, classify_clickhouse

    try:
        raise ValueError("ours")
    except ValueError as exc:
        ours = exc
    assert not _raised_in(ours, "clickhouse_connect") and _raised_in(ours, __name__)
    assert not _raised_in(ValueError("never raised"), __name__)
    assert classify_clickhouse(ours, "a", "b", "x").code == "unexpected_error"


def test_the_clickhouse_sink_names_its_table_by_database() -> None:
    from transforms.sinks.clickhouse import ClickHouseSinkFn

    fn = ClickHouseSinkFn("chdb:///tmp/x", "audit_db", mode="streaming")
    assert (fn.where("labels"), fn.mode, fn.policy, fn.password_secret) == (
        "audit_db.labels",
        "streaming",
        RetryPolicy(),
        "",
    )
    assert fn.client_key() == ("chdb:///tmp/x", "")


def test_exhausted_retries_are_a_sink_failure_verdict_with_the_reachability_fix() -> None:
    from transforms.sinks.clickhouse import ClickHouseSinkFn

    exc = RetriesExhausted(4, TimeoutError("slow"))
    assert MemorySink("x").exhausted(exc) == Verdict(
        SINK_FAILURE,
        "unreachable",
        "gave up after 4 attempts: TimeoutError: slow",
        "check that memory is reachable",
    )
    assert ClickHouseSinkFn("https://u:pw@h:8443", "audit").exhausted(exc) == Verdict(
        SINK_FAILURE,
        "unreachable",
        "gave up after 4 attempts: TimeoutError: slow",
        "check that ClickHouse at https://u@h:8443 is up and reachable",
    )
    assert MemorySink("x").is_transient(ConnectionError()) and not MemorySink("x").is_transient(SinkDown())


def test_a_policy_of_no_attempts_never_calls_and_never_returns_silently() -> None:
    called: list[int] = []
    with pytest.raises(AssertionError, match="^unreachable$"):
        call_with_retries(lambda: called.append(1), lambda e: True, RetryPolicy(attempts=0))
    assert called == []


def test_the_clickhouse_sink_classifies_with_its_own_database_table_and_dsn() -> None:
    from clickhouse_connect.driver._backend.httpcommon import build_http_error

    from transforms.secrets import SecretError
    from transforms.sinks.clickhouse import ClickHouseSinkFn

    fn = ClickHouseSinkFn("http://u:pw@h:1", "audit_x").for_table("labels", 10)
    missing = build_http_error(
        404, "81", "Code: 81. DB::Exception: no db. (UNKNOWN_DATABASE)", True, "u", False
    )
    v = fn.classify(missing)
    assert (v.kind, v.code) == (SINK_FAILURE, "unknown_database")
    assert "--clickhouse_dsn http://u@h:1 --clickhouse_database audit_x --pubsub off" in v.fix
    assert fn.classify(KeyError("k")).fix == "unexpected error writing audit_x.labels; see the log"
    err = SecretError("secret_not_found", "/run/pw", "create it")
    assert fn.classify(err) == Verdict(
        SINK_FAILURE, "secret_not_found", "cannot read the password: secret_not_found: /run/pw", "create it"
    )


def test_each_failing_table_logs_its_own_line_within_the_minute(caplog) -> None:
    lim = LogLimiter(60.0, clock=lambda: 0.0)  # one process-wide limiter, a frozen clock
    fns = []
    for table in ("predictions", "labels"):
        fn = MemorySink(key(), fail_first=1, fail_with=SinkDown, mode="streaming").for_table(table, 10)
        fn.sleep = lambda s: None  # type: ignore[method-assign]
        fn.limiter = lim
        fns.append(fn)
    with caplog.at_level(logging.ERROR, logger="transforms.sinks.base"):
        for fn in fns:
            assert drive(fn, [pred_row(1)]) == []
    logged = [r.getMessage().split(" -- ")[0] for r in caplog.records if r.name == "transforms.sinks.base"]
    assert logged == ["memory: predictions: failure 1", "memory: labels: failure 1"]
