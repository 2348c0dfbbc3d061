"""KServe expiry sweep: one bad lone half never stops the others (it is a counted rejection)."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import pathlib

import orjson
import pytest

import sidecar.kserve as kserve
from schemas import Decoders, EventValidationError
from sidecar.kserve import Half, Joiner, Mapping, OutputMap, ServiceMap, run_sweeper

MAPPING = Mapping(
    services=[ServiceMap("fraud-detector", "fraud", version="1", features=["amount"], output=OutputMap())],
    ttl_s=30.0,
)
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def half(ce_id: str, body: dict, arrived_at: float = 0.0, kind: str = "request") -> Half:
    return Half(
        ce_id=ce_id,
        half=kind,
        service="fraud-detector",
        namespace="prod",
        component="predictor",
        endpoint="default",
        time=NOW.isoformat(),
        body=orjson.dumps(body),
        arrived_at=arrived_at,
    )


class ContractSpool:
    """The sidecar's emit: every built event must pass the contract before it is spooled."""

    def __init__(self) -> None:
        self.decoders = Decoders()
        self.spooled: list[dict] = []
        self.fail_with: OSError | None = None

    def __call__(self, events: list[bytes]) -> None:
        for raw in events:
            self.decoders.prediction(raw, NOW)  # raises EventValidationError, as the sidecar's emit
        if self.fail_with is not None:
            raise self.fail_with
        self.spooled += [orjson.loads(raw) for raw in events]


# A V1 instance given as an object may hold anything; a nested object is not a feature value.
BAD_BODY = {"instances": [{"amount": {"currency": "EUR", "value": 3}}]}


def test_a_lone_half_that_breaks_the_contract_is_rejected_and_later_halves_still_expire(
    tmp_path: pathlib.Path,
) -> None:
    spool = ContractSpool()
    joiner = Joiner(MAPPING, tmp_path, spool)
    assert joiner.add(half("bad-1", BAD_BODY, arrived_at=0.0)) == 0
    assert joiner.add(half("good-1", {"instances": [[12.5]]}, arrived_at=1.0)) == 0

    done = joiner.expire(now=100.0)
    assert [(h, type(e).__name__ if e else None) for h, e in done] == [
        ("request", "EventValidationError"),
        ("request", None),
    ]
    err = done[0][1]
    assert isinstance(err, EventValidationError) and (err.code, err.path) == (
        "wrong_type",
        "$.features.amount",
    )
    assert [(e["metadata"]["ce_id"], e["features"]) for e in spool.spooled] == [("good-1", {"amount": 12.5})]
    assert joiner.pending == 0 and joiner.expire(now=200.0) == []

    # a later lone half is still swept, and a restart does not resurrect the rejected one
    joiner.add(half("good-2", {"instances": [[7.0]]}, arrived_at=150.0))
    joiner.close()
    again = Joiner(MAPPING, tmp_path, spool)
    assert again.pending == 1
    assert [(h, e) for h, e in again.expire(now=300.0)] == [("request", None)]
    assert [e["metadata"]["ce_id"] for e in spool.spooled] == ["good-1", "good-2"]
    again.close()


def test_a_half_the_spool_cannot_take_stays_pending_and_the_others_go_on(tmp_path: pathlib.Path) -> None:
    spool = ContractSpool()
    joiner = Joiner(MAPPING, tmp_path, spool)
    joiner.add(half("a-0001", {"instances": [[1.0]]}, arrived_at=0.0))
    spool.fail_with = OSError(errno.ENOSPC, "No space left on device")
    assert joiner.expire(now=100.0) == []  # not done, not dropped: retried on the next pass
    assert joiner.pending == 1 and joiner.retry_errors == 1
    spool.fail_with = None
    joiner.add(half("b-0002", {"instances": [[2.0]]}, arrived_at=50.0))
    assert [h for h, e in joiner.expire(now=100.0) if e is None] == ["request", "request"]
    assert sorted(e["metadata"]["ce_id"] for e in spool.spooled) == ["a-0001", "b-0002"]
    joiner.close()


def test_a_mapping_bug_on_one_half_is_reported_not_raised(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = kserve.build_events

    def buggy(mapping, request, response):  # a bug for one body only
        if (request or response).ce_id == "boom-001":
            raise IndexError("list index out of range")
        return real(mapping, request, response)

    monkeypatch.setattr(kserve, "build_events", buggy)
    spool = ContractSpool()
    joiner = Joiner(MAPPING, tmp_path, spool)
    joiner.add(half("boom-001", {"instances": [[1.0]]}, arrived_at=0.0))
    joiner.add(half("fine-002", {"instances": [[2.0]]}, arrived_at=0.0))
    done = joiner.expire(now=100.0)
    assert [getattr(e, "code", None) for _, e in done] == ["kserve_internal_error", None]
    assert done[0][1].to_dict()["hint"]
    assert [e["metadata"]["ce_id"] for e in spool.spooled] == ["fine-002"]
    joiner.close()


def test_the_sweeper_loop_survives_a_failing_pass(tmp_path: pathlib.Path) -> None:
    spool = ContractSpool()
    mapping = Mapping(services=MAPPING.services, ttl_s=0.0)
    joiner = Joiner(mapping, tmp_path, spool)
    reported: list[tuple[str, str | None]] = []
    calls = {"n": 0}

    def report(h: str, err) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a metrics bug in the first pass")
        reported.append((h, getattr(err, "code", None)))

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(run_sweeper(joiner, report, interval_s=0.01))
        joiner.add(half("first-01", {"instances": [[1.0]]}))
        await wait(lambda: calls["n"] >= 1)
        joiner.add(half("bad-0002", BAD_BODY))
        joiner.add(half("later-03", {"instances": [[3.0]]}))
        await wait(lambda: len(reported) >= 2)
        assert not task.done()
        task.cancel()

    async def wait(cond, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not cond():
            assert asyncio.get_running_loop().time() < deadline, "the sweeper stopped sweeping"
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert reported == [("request", "wrong_type"), ("request", None)]
    assert [e["metadata"]["ce_id"] for e in spool.spooled] == ["first-01", "later-03"]
    joiner.close()
