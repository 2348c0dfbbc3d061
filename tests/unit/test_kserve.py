"""KServe expiry sweep: one bad lone half never stops the others (it is a counted rejection)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

import sidecar.kserve as kserve
from schemas import Decoders, EventValidationError
from sidecar.kserve import Half, Joiner, Mapping, OutputMap, ServiceMap, run_sweeper
from sidecar.spool import SpoolWriteFailed

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


@pytest.mark.parametrize(
    "tensor",
    [
        {"name": "x", "shape": [1, "2"], "datatype": "FP32", "data": [1, 2]},  # a shape that is no int
        {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": 5},  # data that is no list
    ],
)
def test_a_body_of_an_unexpected_shape_is_a_bad_body_error_not_an_exception(tmp_path, tensor) -> None:
    spool = ContractSpool()
    joiner = Joiner(MAPPING, tmp_path, spool)
    joiner.add(half("pair-001", {"predictions": [0.5]}, kind="response"))
    with pytest.raises(kserve.KServeError) as err:  # the sidecar answers 400 with this code
        joiner.add(half("pair-001", {"inputs": [tensor]}))
    assert err.value.code == "kserve_bad_body" and "request or response body" in err.value.message
    assert joiner.pending == 1  # the response half is still published alone after the TTL
    assert [e for h, e in joiner.expire(now=100.0)] == [None]
    assert spool.spooled[0]["metadata"]["predaudit_unpaired"] == "response"
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


# -- a full disk under the journal -------------------------------------------------------------
class Volume:
    """A small volume: a real tmpfs when this process may mount one (root), else a directory whose
    writes through ``sidecar.kserve`` fail like a full disk (short write, then ENOSPC)."""

    def __init__(self, path: pathlib.Path, mounted: bool) -> None:
        self.path, self.mounted = path, mounted
        self.capacity: int | None = None  # injected mode: bytes the directory may hold
        self._ballast = path / "ballast"

    def used(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def fill(self) -> None:
        if not self.mounted:
            self.capacity = self.used()
            return
        fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * chunk):
                        pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.capacity = None
        self._ballast.unlink(missing_ok=True)


class _DiskOs:
    """``os`` for sidecar.kserve whose writes run out of space at ``volume.capacity``."""

    def __init__(self, volume: Volume) -> None:
        self._volume = volume

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self._volume.capacity is None:
            return os.write(fd, data)
        room = self._volume.capacity + 512 - self._volume.used()  # some slack, as a real disk block
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, bytes(data[:room]))


@pytest.fixture()
def small_volume(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Volume]:
    path = tmp_path / "vol"
    path.mkdir()
    mounted = False
    if not os.environ.get("PREDAUDIT_TEST_NO_MOUNT"):
        cmd = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)]
        with contextlib.suppress(OSError):
            mounted = subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    volume = Volume(path, mounted)
    if not mounted:
        monkeypatch.setattr(kserve, "os", _DiskOs(volume))
    try:
        yield volume
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def journal_lines(directory: pathlib.Path) -> list[bytes]:
    """The journal's lines, asserting each is whole (hex of a record) and the file ends with one."""
    data = (directory / "kserve-pending.journal").read_bytes()
    assert not data or data.endswith(b"\n"), "a torn line at the end of the journal"
    lines = data.splitlines()
    for line in lines:
        bytes.fromhex(line.decode())  # raises on a partial/garbled line
    return lines


def test_a_half_the_disk_cannot_journal_is_refused_whole_and_the_journal_stays_readable(
    small_volume: Volume,
) -> None:
    spool = ContractSpool()
    joiner = Joiner(MAPPING, small_volume.path, spool)
    assert joiner.add(half("a-000001", {"instances": [[1.0]]})) == 0
    small_volume.fill()
    big = {"instances": [[float(i)] for i in range(2000)]}  # a journal line far above a block's slack
    with pytest.raises(SpoolWriteFailed):  # the sidecar answers 503 + Retry-After; KServe retries
        joiner.add(half("b-000002", big))
    assert joiner.pending == 1
    assert len(journal_lines(small_volume.path)) == 1  # the partial line was cut back off

    small_volume.free()
    assert joiner.add(half("b-000002", big)) == 0  # KServe's retry
    assert joiner.add(half("c-000003", {"instances": [[3.0]]})) == 0
    joiner.close()
    again = Joiner(MAPPING, small_volume.path, spool)
    assert sorted(h for h, _ in again._pending.items()) == [
        f"{x}\0request" for x in ("a-000001", "b-000002", "c-000003")
    ]
    again.close()


def test_a_done_mark_the_disk_refuses_is_healed_so_a_restart_does_not_resurrect_the_half(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = Volume(tmp_path, mounted=False)
    monkeypatch.setattr(kserve, "os", _DiskOs(volume))
    spool = ContractSpool()
    joiner = Joiner(MAPPING, tmp_path, spool)
    joiner.add(half("pair-001", {"instances": [[1.0]]}))
    volume.capacity = volume.used() - 512  # full: not even the slack is left
    assert joiner.add(half("pair-001", {"predictions": [0.7]}, kind="response")) == 1  # spooled
    assert joiner.pending == 0
    volume.free()
    assert joiner.expire(now=0.0) == []  # the next sweep pass rewrites the journal from memory
    joiner.close()
    again = Joiner(MAPPING, tmp_path, spool)
    assert again.pending == 0 and again.expire(now=1e12) == []  # not re-emitted as a lone half
    assert [e["prediction"] for e in spool.spooled] == [{"score": 0.7}]
    again.close()
