"""The sidecar's accept path, answer by answer (written to kill mutmut's survivors, issue #14):
how a body splits into events, the bearer check, size and time limits, what a 202 spools
(kind, key, attributes, accept time), the 400/413/503 bodies and the metrics they count."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import time
import uuid
from typing import Any

import orjson
import pytest
import requests
from aiohttp import web

from sidecar.server import BodyError, Sidecar, _client_errors, split_body
from sidecar.spool import SpoolFull, parse_frames
from tests.unit.test_server import good, post, start  # noqa: F401 (start: the fixture)


def spooled(sc: Sidecar) -> list:
    """Every record in the sidecar's segment files (from disk: the drainer owns ``read``)."""
    out = []
    for seg in sorted(pathlib.Path(sc.cfg.spool_dir).glob("seg-*.log")):
        out += parse_frames(seg.read_bytes(), 0, 0)[0]
    return out


def metrics(sc: Sidecar) -> str:
    return requests.get(f"http://127.0.0.1:{sc.port}/metrics", timeout=10).text


def a_label(i: int = 0, model: str | None = "fraud") -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    doc: dict[str, Any] = {
        "schema_version": "1",
        "event_id": f"lb-{i:06d}-{uuid.uuid4().hex[:8]}",
        "label_time": now,
        "label": "fraud",
    }
    if model:
        doc["model"] = {"name": model, "version": "1"}
    return doc


# -- split_body (pure) ----------------------------------------------------------------------
def test_an_empty_or_blank_body_is_refused() -> None:
    for body in (b"", b" \n\t "):
        with pytest.raises(BodyError) as err:
            split_body(body)
        assert err.value.code == "invalid_json" and str(err.value) == "the request body is empty"


@pytest.mark.parametrize("ctype", ["application/x-ndjson", "application/jsonl", "application/json-seq"])
def test_ndjson_content_types_split_by_line_even_arrays(ctype: str) -> None:
    body = b'[1]\n\n  {"a": 1}  \n[2]\n'
    assert split_body(body, ctype) == [b"[1]", b'{"a": 1}', b"[2]"]


def test_a_json_body_starting_with_an_array_is_one_array() -> None:
    assert split_body(b'  [{"a": 1} , {"b": [2]}]  ') == [b'{"a": 1}', b'{"b": [2]}']
    with pytest.raises(BodyError, match="the JSON array does not parse") as err:
        split_body(b"[1]\n[2]")  # two arrays without an NDJSON content type
    assert err.value.code == "invalid_json"


def test_one_pretty_printed_object_is_one_event() -> None:
    body = b'\n{\n  "a": 1,\n  "b": 2\n}\n'
    assert split_body(body) == [b'{\n  "a": 1,\n  "b": 2\n}']
    deep = b'{"a":\n' * 5000 + b"1" + b"}" * 5000  # too deep to parse: still one event
    assert split_body(deep) == [deep]
    assert split_body(b' {"a": 1} ') == [b'{"a": 1}']
    assert split_body(b'{"a": 1}\n\n {"b": 2} \n') == [b'{"a": 1}', b'{"b": 2}']


# -- the middleware (pure) --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), "invalid_encoding"),
        (RecursionError(), "nesting_too_deep"),
    ],
)
def test_client_text_errors_are_400_with_a_code(exc: BaseException, code: str) -> None:
    async def handler(request: Any) -> web.Response:
        raise exc

    async def ok(request: Any) -> web.Response:
        return web.Response(status=204)

    resp = asyncio.run(_client_errors(None, handler))
    assert resp.status == 400 and resp.content_type == "application/json"
    doc = orjson.loads(resp.body)
    assert doc["error"]["code"] == code and doc["error"]["message"] and "UTF-8" in doc["error"]["hint"]
    assert asyncio.run(_client_errors(None, ok)).status == 204


# -- bearer token -----------------------------------------------------------------------------
def test_the_bearer_check(start, tmp_path) -> None:  # noqa: F811
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    sc = start(auth_token_file=str(token))
    body = orjson.dumps(good())
    r = post(sc, body)
    assert r.status_code == 401 and r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"] == {
        "code": "unauthorized",
        "message": "missing or wrong bearer token",
        "hint": "Send Authorization: Bearer <token>.",
    }
    assert post(sc, body, Authorization="Bearer s3cre").status_code == 401
    assert post(sc, body, Authorization="Bearer s3cretX").status_code == 401
    assert post(sc, body, Authorization="Basic  s3cret").status_code == 401  # 7 chars, not Bearer
    assert post(sc, body, Authorization="Bearer   s3cret  ").status_code == 202
    assert post(sc, orjson.dumps(a_label()), "/v1/labels").status_code == 401
    assert 'requests_total{route="/v1/predictions",status="401"} 4.0' in metrics(sc)
    assert sc.spool.depth == 1


# -- size and time limits ---------------------------------------------------------------------
def test_the_request_size_limit(start) -> None:  # noqa: F811
    body = orjson.dumps(good())
    sc = start(max_request_bytes=len(body))
    assert post(sc, body).status_code == 202  # exactly the limit
    r = post(sc, body + b" ")
    assert r.status_code == 413
    assert r.json()["error"] == {
        "code": "request_too_large",
        "message": f"request body above max_request_bytes={len(body)}",
        "hint": "Send smaller batches (events are at most max_payload_bytes each).",
    }
    # chunked, so no Content-Length: refused while reading
    r = requests.post(f"http://127.0.0.1:{sc.port}/v1/labels", data=iter([body, b" " * 10]), timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    text = metrics(sc)
    assert 'requests_total{route="/v1/predictions",status="413"} 1.0' in text
    assert 'requests_total{route="/v1/labels",status="413"} 1.0' in text
    assert sc.spool.depth == 1


def test_a_body_timeout_names_the_limit(start) -> None:  # noqa: F811
    import socket

    sc = start(body_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", sc.port), timeout=30) as s:
        s.sendall(b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(body)["error"] == {
        "code": "request_timeout",
        "message": "the request body did not arrive within 0.5 s",
        "hint": "Send the whole body at once; the connection is closed.",
    }
    assert 'requests_total{route="/v1/labels",status="408"} 1.0' in metrics(sc)


# -- what a 202 spools --------------------------------------------------------------------------
def test_accepted_predictions_and_labels_are_spooled_as_their_kind(start) -> None:  # noqa: F811
    sc = start()
    before, t_start = time.time(), time.perf_counter()
    preds = [good(i) for i in range(2)]
    r = post(sc, orjson.dumps(preds))
    assert r.status_code == 202 and r.json() == {"accepted": 2}
    assert r.headers["Content-Type"].startswith("application/json")
    labels = [a_label(1), a_label(2, model=None)]
    r = post(sc, b"\n".join(orjson.dumps(x) for x in labels), "/v1/labels")
    assert r.status_code == 202 and r.json() == {"accepted": 2}
    after = time.time()
    elapsed = time.perf_counter() - t_start
    got = spooled(sc)
    assert [(x.kind, x.key, x.attributes["event_id"]) for x in got] == [
        ("prediction", preds[0]["model"]["name"], preds[0]["event_id"]),
        ("prediction", preds[1]["model"]["name"], preds[1]["event_id"]),
        ("label", "fraud", labels[0]["event_id"]),
        ("label", "", labels[1]["event_id"]),
    ]
    assert orjson.loads(got[0].data) == preds[0] and orjson.loads(got[3].data) == labels[1]
    assert got[2].attributes["model"] == "fraud" and "model" not in got[3].attributes
    assert all(before <= x.accepted_at <= after for x in got)
    # a prediction sent to /v1/labels breaks the label contract (and the other way round)
    assert post(sc, orjson.dumps(good(3)), "/v1/labels").status_code == 400
    assert post(sc, orjson.dumps(a_label(4))).status_code == 400
    assert len(spooled(sc)) == 4
    text = metrics(sc)
    assert 'accepted_total{kind="prediction"} 2.0' in text and 'accepted_total{kind="label"} 2.0' in text
    assert 'requests_total{route="/v1/predictions",status="202"} 1.0' in text
    assert 'requests_total{route="/v1/labels",status="202"} 1.0' in text
    assert 'request_seconds_count{route="/v1/labels"} 1.0' in text
    # the latency histogram measures the request: within the time the test waited for both
    spent = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("predaudit_sidecar_request_seconds_sum")
    )
    assert 0 < spent <= elapsed


# -- 400 ----------------------------------------------------------------------------------------
def test_a_400_lists_counts_and_meters_the_rejected_events(start) -> None:  # noqa: F811
    sc = start()
    events = [good(i) for i in range(5)]
    events[1]["latency_ms"] = -1
    del events[3]["event_id"]
    events[4]["latency_ms"] = -2
    r = post(sc, orjson.dumps(events))
    assert r.status_code == 400
    doc = r.json()
    assert doc["accepted"] == 0 and doc["rejected_count"] == 3
    assert doc["rejected_by_code"] == {"out_of_range": 2, "missing_field": 1}
    assert [(x["index"], x["code"]) for x in doc["rejected"]] == [
        (1, "out_of_range"),
        (3, "missing_field"),
        (4, "out_of_range"),
    ]
    assert doc["error"] == {
        "code": "invalid_events",
        "message": "3 of 5 events break the contract; nothing of this request was accepted",
        "hint": "Fix or drop the rejected events and send the request again (all or nothing).",
    }
    r = post(sc, b"[1, ", "/v1/labels")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert r.json()["error"]["hint"] == "Send a JSON object, a JSON array or NDJSON."
    text = metrics(sc)
    assert 'rejected_total{code="out_of_range",kind="prediction"} 2.0' in text
    assert 'rejected_total{code="missing_field",kind="prediction"} 1.0' in text
    assert 'rejected_total{code="invalid_json",kind="label"} 1.0' in text
    assert 'requests_total{route="/v1/predictions",status="400"} 1.0' in text
    assert 'requests_total{route="/v1/labels",status="400"} 1.0' in text
    assert "accepted_total{" not in text and sc.spool.depth == 0


# -- 503 ----------------------------------------------------------------------------------------
def test_a_503_carries_the_configured_retry_after_and_is_counted(start) -> None:  # noqa: F811
    sc = start(spool_max_bytes=2000, retry_after_s=7)
    r = post(sc, orjson.dumps([good(i) for i in range(10)]), "/v1/labels")
    assert r.status_code == 400  # predictions on the labels route: refused before the spool
    r = post(sc, orjson.dumps([a_label(i) for i in range(20)]), "/v1/labels")
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"
    assert r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc["accepted"] == 0 and doc["error"]["code"] == "spool_full"
    assert doc["error"]["message"].startswith("spool holds 0 of 2000 bytes")
    assert doc["error"]["hint"] == "Retry after the Retry-After delay."
    assert 'requests_total{route="/v1/labels",status="503"} 1.0' in metrics(sc)
    assert sc.spool.depth == 0


def test_a_disk_error_503_says_so(start, monkeypatch) -> None:  # noqa: F811
    from sidecar.spool import SpoolWriteFailed

    sc = start()

    def refuse(records: list) -> int:
        raise SpoolWriteFailed(sc.cfg.spool_dir, OSError(5, "Input/output error"))

    monkeypatch.setattr(sc.spool, "append", refuse)
    r = post(sc, orjson.dumps(good()))
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["error"]["code"] == "spool_write_failed" and "EIO" in r.json()["error"]["message"]
    assert r.json()["error"]["hint"].startswith("Retry after the Retry-After delay; the sidecar's disk")
    monkeypatch.setattr(sc.spool, "append", lambda records: (_ for _ in ()).throw(SpoolFull("closed")))
    assert post(sc, orjson.dumps(good())).json()["error"]["code"] == "spool_full"


def test_an_ndjson_line_that_is_an_array_is_rejected_by_its_index(start) -> None:  # noqa: F811
    """The content type decides: NDJSON is split by line even when a line is an array."""
    sc = start()
    body = b'["not", "an", "event"]\n' + orjson.dumps(good())
    r = post(sc, body, **{"Content-Type": "application/x-ndjson"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_events"
    assert [x["index"] for x in r.json()["rejected"]] == [0] and r.json()["rejected_count"] == 1
    r = post(sc, body)  # as JSON: an array that does not parse
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_events_are_checked_against_the_ingest_clock(start) -> None:  # noqa: F811
    """An event time far from the sidecar's clock breaks the contract (a producer's clock is off)."""
    sc = start()
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    r = post(sc, orjson.dumps({**good(), "event_time": future}))
    assert r.status_code == 400
    assert [(x["index"], x["code"]) for x in r.json()["rejected"]] == [(0, "timestamp_out_of_bounds")]
    r = post(sc, orjson.dumps({**a_label(), "label_time": future}), "/v1/labels")
    assert r.status_code == 400 and r.json()["rejected"][0]["code"] == "timestamp_out_of_bounds"
    assert sc.spool.depth == 0


def test_an_unparsable_body_says_why(start) -> None:  # noqa: F811
    sc = start()
    r = post(sc, b"[{}, ")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"
    assert r.json()["error"]["message"].startswith("the JSON array does not parse: ")
