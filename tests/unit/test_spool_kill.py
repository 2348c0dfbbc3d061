"""The spool's promises, one behaviour each (written to kill mutmut's survivors, issue #14):
exact cap and segment edges, cursor slots and their recovery, counters a metric shows
(depth, unpublished and used bytes), durability callbacks, and disk errors that must be
survived and reported."""

from __future__ import annotations

import errno
import os
import pathlib
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from typing import Any

import msgspec
import pytest

from sidecar import spool as spool_module
from sidecar.spool import (
    Spool,
    SpoolCorrupt,
    SpoolFull,
    SpoolLocked,
    SpoolWriteFailed,
    decode_slot,
    encode_slot,
    frame,
    parse_frames,
    segment_bytes_for,
)
from tests.unit.test_spool import drain, rec

REC_BYTES = len(frame(*rec(0)))  # every rec(i) with i < 10**6 frames to the same size


def ids(records: list) -> list[int]:
    return [int(r.attributes["event_id"]) for r in records]


def segment_files(root: pathlib.Path) -> list[str]:
    return sorted(p.name for p in root.glob("seg-*.log"))


def wait_for(cond: Any, what: str, within: float = 30.0) -> None:
    """Poll ``cond`` until it holds (a loaded box may be slow) or fail naming ``what``."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


class FakeOs:
    """``os`` for sidecar.spool that fails chosen calls: ``fail[name] = [errno, ...]`` raises
    those errors on the next calls of ``name`` (one per call), then behaves normally."""

    def __init__(self) -> None:
        self.fail: dict[str, list[int]] = {}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if not callable(real) or name not in ("fsync", "ftruncate", "open", "write", "pwrite"):
            return real

        def call(*args: Any, **kw: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            queue = self.fail.get(name)
            if queue:
                code = queue.pop(0)
                raise OSError(code, os.strerror(code))
            return real(*args, **kw)

        return call


# -- pure helpers ---------------------------------------------------------------------------
def test_segment_size_is_at_least_one_byte_for_tiny_caps() -> None:
    assert [segment_bytes_for(n) for n in (0, 15, 16, 32)] == [1, 1, 1, 2]
    assert segment_bytes_for(1 << 40) == 64 << 20


def test_write_failed_names_the_errno_and_the_fix() -> None:
    exc = SpoolWriteFailed("/spool", OSError(errno.EIO, "Input/output error"))
    assert exc.errno_name == "EIO" and isinstance(exc, SpoolFull)
    assert "Free space on the spool volume" in str(exc) and "--spool-max-bytes" in str(exc)
    assert SpoolWriteFailed("/s", OSError("no errno")).errno_name == "EIO"
    assert SpoolWriteFailed("/s", OSError(errno.ENOSPC, "full")).errno_name == "ENOSPC"


def test_parse_frames_keeps_a_partial_record_for_later_and_reports_ends() -> None:
    a, b = frame("prediction", "m", b"a", {"k": "v"}, 1.0), frame("label", "", b"bb", {}, 2.0)
    records, used = parse_frames(a + b + b[:5], 100, 4)
    assert used == len(a) + len(b)
    assert [(r.segment, r.end, r.kind, r.key, r.data, r.attributes, r.accepted_at) for r in records] == [
        (4, 100 + len(a), "prediction", "m", b"a", {"k": "v"}, 1.0),
        (4, 100 + len(a) + len(b), "label", "", b"bb", {}, 2.0),
    ]
    assert parse_frames(a[:3], 0, 1) == ([], 0)  # shorter than a header
    assert parse_frames(a[:-1], 0, 1) == ([], 0)  # header whole, body one byte short


def test_a_corrupt_record_is_reported_at_its_file_offset(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(i) for i in range(3)])
    s.close()
    (seg,) = tmp_path.glob("seg-*.log")
    data = bytearray(seg.read_bytes())
    data[REC_BYTES + 12] ^= 0xFF  # inside the second record's body
    seg.write_bytes(bytes(data))
    with pytest.raises(SpoolCorrupt, match=f"segment 1: bad checksum at offset {REC_BYTES};"):
        Spool(tmp_path, fsync="never")
    with pytest.raises(SpoolCorrupt, match=f"at offset {1000 + REC_BYTES};"):
        parse_frames(bytes(data), 1000, 1)


def test_cursor_slots_round_trip_and_reject_torn_or_short_ones() -> None:
    slot = encode_slot(2**40, 7, 2**33)
    assert len(slot) == 32 and slot[28:] == b"\0" * 4
    assert decode_slot(slot) == (2**40, 7, 2**33)
    assert decode_slot(slot[:28]) == (2**40, 7, 2**33)  # the padding is not checked
    assert decode_slot(slot[:27]) is None
    torn = bytearray(slot)
    torn[5] ^= 1
    assert decode_slot(bytes(torn)) is None
    assert decode_slot(slot[:24] + b"\0" * 8) is None  # a crc of 0 is never written


# -- files and their modes --------------------------------------------------------------------
def test_the_spool_creates_its_directory_and_keeps_its_files_private(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "a" / "b"
    s = Spool(root, fsync="interval", segment_bytes=REC_BYTES)
    s.append([rec(0)])
    s.append([rec(1)])  # rotates: a second segment file
    s.close()
    Spool(root, fsync="never").close()  # opening an existing directory is fine
    names = sorted(p.name for p in root.iterdir())
    assert names == ["cursor", "lock", "seg-00000000000000000001.log", "seg-00000000000000000002.log"]
    for p in root.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    assert (root / "cursor").stat().st_size == 64


# -- the cap and the segment edges ----------------------------------------------------------
def test_an_append_that_exactly_fills_the_cap_is_accepted(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never", max_bytes=3 * REC_BYTES)
    s.append([rec(0), rec(1)])
    s.append([rec(2)])  # used + len == max_bytes
    assert s.used_bytes == 3 * REC_BYTES
    with pytest.raises(SpoolFull, match=f"spool holds {3 * REC_BYTES} of {3 * REC_BYTES} bytes"):
        s.append([rec(3)])
    assert s.depth == 3 and ids(drain(s)) == [0, 1, 2]
    s.close()


def test_records_exactly_filling_a_segment_stay_in_it(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never", segment_bytes=2 * REC_BYTES)
    s.append([rec(0)])
    s.append([rec(1)])  # exactly the segment size: no rotation yet
    assert segment_files(tmp_path) == ["seg-00000000000000000001.log"]
    s.append([rec(2)])
    assert segment_files(tmp_path) == ["seg-00000000000000000001.log", "seg-00000000000000000002.log"]
    s.append([rec(3)])  # a successful append does not ask for a fresh segment
    assert len(segment_files(tmp_path)) == 2
    assert ids(drain(s)) == [0, 1, 2, 3]
    s.close()


def test_a_record_larger_than_a_segment_goes_alone_into_a_fresh_one(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never", segment_bytes=10)
    s.append([rec(0), rec(1)])  # an empty segment takes any append
    s.append([rec(2)])
    assert len(segment_files(tmp_path)) == 2
    assert ids(drain(s)) == [0, 1, 2]
    s.close()


def test_a_closed_spool_refuses_appends(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    assert s.writable()
    s.close()
    s.close()  # twice is fine
    assert not s.writable()
    with pytest.raises(SpoolFull, match="spool is closed"):
        s.append([rec(0)])


# -- counters -------------------------------------------------------------------------------
def test_unpublished_and_used_bytes_across_segments(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never", segment_bytes=3 * REC_BYTES)
    for i in range(7):  # segments of 3, 3, 1 records
        s.append([rec(i)])
    assert s.used_bytes == s.unpublished_bytes == 7 * REC_BYTES and s.depth == 7
    got = drain(s)
    s.commit(got[1].segment, got[1].end, 2)  # 2 of the first segment's 3
    assert s.unpublished_bytes == 5 * REC_BYTES and s.used_bytes == 7 * REC_BYTES and s.depth == 5
    s.commit(got[4].segment, got[4].end, 3)  # into the second segment: the first is deleted
    assert s.unpublished_bytes == 2 * REC_BYTES and s.used_bytes == 4 * REC_BYTES and s.depth == 2
    assert len(segment_files(tmp_path)) == 2
    s.close()


def test_committing_the_same_position_twice_counts_once(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(i) for i in range(5)])
    got = drain(s)
    s.commit(got[2].segment, got[2].end, 3)
    s.commit(got[2].segment, got[2].end, 3)  # a retried commit
    s.commit(got[0].segment, got[0].end, 1)  # an older one
    assert s.depth == 2 and s.unpublished_bytes == 2 * REC_BYTES
    s.close()
    s2 = Spool(tmp_path, fsync="never")
    assert s2.depth == 2 and ids(drain(s2)) == [3, 4]
    s2.close()


def test_a_wholly_published_segment_gives_its_space_back(tmp_path: pathlib.Path) -> None:
    # the last segment, a quarter full or more: a fresh one starts and the old is deleted
    s = Spool(tmp_path, fsync="never", segment_bytes=4 * REC_BYTES)
    s.append([rec(0)])
    got = drain(s)
    s.commit(got[-1].segment, got[-1].end, 1)
    assert s.used_bytes == 0 and segment_files(tmp_path) == ["seg-00000000000000000002.log"]
    s.append([rec(1)])
    assert ids(drain(s)) == [1]
    s.close()
    # less than a quarter: kept (rotating for every tiny batch would churn files)
    s = Spool(tmp_path / "b", fsync="never", segment_bytes=4 * REC_BYTES + 4)
    s.append([rec(0)])
    got = drain(s)
    s.commit(got[-1].segment, got[-1].end, 1)
    assert s.used_bytes == REC_BYTES and s.unpublished_bytes == 0
    assert segment_files(tmp_path / "b") == ["seg-00000000000000000001.log"]
    s.close()


# -- reading --------------------------------------------------------------------------------
def test_read_honours_max_records_and_a_record_above_max_bytes(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(i) for i in range(5)])
    assert ids(s.read(2)) == [0, 1]
    assert ids(s.read(10, max_bytes=REC_BYTES + 1)) == [2]
    # a record larger than max_bytes is not stuck: the rest of the segment is read whole
    assert ids(s.read(10, max_bytes=REC_BYTES - 1)) == [3, 4]
    assert s.read(10) == []
    s.close()


def test_rewind_reads_again_from_the_cursor(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never", segment_bytes=2 * REC_BYTES)
    s.append([rec(i) for i in range(2)])
    s.append([rec(i) for i in range(2, 4)])
    got = drain(s)
    s.commit(got[0].segment, got[0].end, 1)
    assert s.read(10) == []
    s.rewind()
    assert ids(drain(s)) == [1, 2, 3]
    s.close()


def test_a_waiting_read_wakes_up_for_an_append(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(s.read(10, timeout=60)), daemon=True)
    reader.start()
    wait_for(lambda: s._changed._waiters, "the reader to wait")
    s.append([rec(7)])
    reader.join(60)
    assert ids(got) == [7]
    s.append([rec(8)])
    assert ids(s.read(10, timeout=60)) == [8]  # unread records: no waiting
    s.close()


def test_on_append_is_called_for_every_append(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    calls: list[int] = []
    s.on_append = lambda: calls.append(s.depth)
    s.append([rec(0)])
    s.append([rec(1), rec(2)])
    assert calls == [1, 3]
    s.close()


# -- durability -----------------------------------------------------------------------------
def test_durable_callbacks_run_once_the_ticket_is_fsynced(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="always")
    first = s.append([rec(0)])
    assert s.wait_durable(first, timeout=30)
    now: list[int] = []
    s.on_durable(first, lambda: now.append(threading.get_ident()))
    assert now == [threading.get_ident()]  # already on disk: called at once, in this thread
    later: list[bool] = []
    ticket = s.append([rec(1)])
    assert ticket == 2 * REC_BYTES
    s.on_durable(ticket, lambda: later.append(True))
    wait_for(lambda: later, "the fsync thread to call back")  # without close()
    assert s.wait_durable(ticket, timeout=30)
    s.close()
    assert later == [True]


def test_without_fsync_always_durability_does_not_wait(tmp_path: pathlib.Path, monkeypatch) -> None:
    for mode in ("interval", "never"):
        s = Spool(tmp_path / mode, fsync=mode, fsync_interval_s=3600)
        fake = FakeOs()
        monkeypatch.setattr(spool_module, "os", fake)
        ticket = s.append([rec(0)])
        called: list[bool] = []
        s.on_durable(ticket, lambda called=called: called.append(True))
        assert called == [True] and s.wait_durable(ticket, timeout=0) is True
        assert fake.calls.get("fsync", 0) == 0  # interval: the first fsync is an hour away
        monkeypatch.undo()
        s.close()


def test_a_failing_fsync_is_retried_and_durability_waits_for_it(tmp_path: pathlib.Path, monkeypatch) -> None:
    errors: list[tuple[str, int]] = []
    s = Spool(tmp_path, fsync="always", on_error=lambda op, exc: errors.append((op, exc.errno)))
    fake = FakeOs()
    fake.fail["fsync"] = [errno.EIO, errno.EIO]
    monkeypatch.setattr(spool_module, "os", fake)
    ticket = s.append([rec(0)])
    done: list[bool] = []
    s.on_durable(ticket, lambda: done.append(True))
    assert s.wait_durable(ticket, timeout=60)
    assert done == [True] and errors == [("fsync", errno.EIO), ("fsync", errno.EIO)]
    s.close()


def test_close_wakes_waiters_and_fsyncs_the_tail(tmp_path: pathlib.Path, monkeypatch) -> None:
    errors: list[str] = []
    s = Spool(tmp_path, fsync="interval", fsync_interval_s=3600, on_error=lambda op, exc: errors.append(op))
    s.append([rec(0)])
    fake = FakeOs()
    monkeypatch.setattr(spool_module, "os", fake)
    s.close()
    assert fake.calls.get("fsync", 0) >= 1 and errors == []
    monkeypatch.undo()
    s = Spool(tmp_path, fsync="interval", on_error=lambda op, exc: errors.append(op))
    s.append([rec(1)])
    fake = FakeOs()
    fake.fail["fsync"] = [errno.EIO] * 3
    monkeypatch.setattr(spool_module, "os", fake)
    s.close()  # a failing final fsync is reported, never raised
    assert "fsync" in errors


# -- restart and the cursor -----------------------------------------------------------------
def test_the_newest_cursor_slot_wins(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="always")
    s.append([rec(i) for i in range(6)])
    got = drain(s)
    for k in range(5):  # slots alternate; the newest says "5 published"
        s.commit(got[k].segment, got[k].end, 1)
    s.close()
    s2 = Spool(tmp_path, fsync="always")
    assert s2.depth == 1 and ids(drain(s2)) == [5]
    s2.close()


def test_a_torn_newest_slot_replays_from_the_older_cursor(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(i) for i in range(6)])
    got = drain(s)
    s.commit(got[2].segment, got[2].end, 3)
    s.commit(got[3].segment, got[3].end, 1)
    s.close()  # the slots hold "3 published" and "4 published"
    cursor = tmp_path / "cursor"
    buf = bytearray(cursor.read_bytes())
    slots = [decode_slot(bytes(buf[:32])), decode_slot(bytes(buf[32:]))]
    assert all(slots)
    newest = 0 if slots[0][0] > slots[1][0] else 1  # type: ignore[index]
    buf[newest * 32 + 3] ^= 0xFF
    cursor.write_bytes(bytes(buf))
    s2 = Spool(tmp_path, fsync="never")
    assert s2.depth == 3 and ids(drain(s2)) == [3, 4, 5]
    assert not s2.cursor_dirty
    s2.close()


def test_without_a_valid_cursor_everything_on_disk_is_replayed(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never", segment_bytes=2 * REC_BYTES)
    for i in range(5):
        s.append([rec(i)])
    got = drain(s)
    s.commit(got[0].segment, got[0].end, 1)
    s.close()
    (tmp_path / "cursor").write_bytes(b"\0" * 64)  # both slots torn
    s2 = Spool(tmp_path, fsync="never")
    assert ids(drain(s2)) == [0, 1, 2, 3, 4]
    s2.close()
    (tmp_path / "cursor").unlink()  # no cursor file at all
    s3 = Spool(tmp_path, fsync="never")
    assert s3.depth == 5 and ids(drain(s3)) == [0, 1, 2, 3, 4]
    s3.close()


def test_restart_deletes_segments_a_crash_left_behind_the_cursor(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never", segment_bytes=2 * REC_BYTES)
    for i in range(6):  # segments 1, 2, 3
        s.append([rec(i)])
    got = drain(s)
    s.commit(got[3].segment, got[3].end, 4)  # segment 1 deleted, cursor at the end of 2 -> 3
    s.close()
    (tmp_path / "seg-00000000000000000001.log").write_bytes(frame(*rec(99)))  # cleanup was cut
    s2 = Spool(tmp_path, fsync="never")
    assert "seg-00000000000000000001.log" not in segment_files(tmp_path)
    assert ids(drain(s2)) == [4, 5]
    s2.close()


def test_a_cursor_past_every_segment_starts_the_next_one(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never", segment_bytes=2 * REC_BYTES)
    for i in range(4):
        s.append([rec(i)])
    got = drain(s)
    s.commit(got[-1].segment, got[-1].end, 4)
    s.close()
    for p in tmp_path.glob("seg-*.log"):
        p.unlink()
    (tmp_path / "cursor").write_bytes(encode_slot(9, 2, 5) * 2)  # in deleted segment 2
    s2 = Spool(tmp_path, fsync="never")
    assert segment_files(tmp_path) == ["seg-00000000000000000003.log"]
    assert s2.depth == 0 and s2.used_bytes == 0
    s2.append([rec(10)])
    assert ids(drain(s2)) == [10]
    s2.close()
    s3 = Spool(tmp_path, fsync="never")
    assert ids(drain(s3)) == [10]
    s3.close()


def test_a_cursor_beyond_a_shortened_segment_still_sees_new_appends(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(i) for i in range(4)])
    got = drain(s)
    s.commit(got[-1].segment, got[-1].end, 4)
    s.close()
    seg = tmp_path / "seg-00000000000000000001.log"
    seg.write_bytes(seg.read_bytes()[: 2 * REC_BYTES])  # the tail published and lost (fs repair)
    s2 = Spool(tmp_path, fsync="never")
    assert s2.depth == 0 and s2.unpublished_bytes == 0
    s2.append([rec(5)])
    assert ids(drain(s2)) == [5]
    s2.close()


def test_records_after_the_cursor_count_and_a_torn_tail_goes(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(i) for i in range(4)])
    got = drain(s)
    s.commit(got[0].segment, got[0].end, 1)
    s.close()
    seg = tmp_path / "seg-00000000000000000001.log"
    with open(seg, "ab") as f:
        f.write(frame(*rec(4))[:-3])
    s2 = Spool(tmp_path, fsync="never")
    assert s2.depth == 3 and seg.stat().st_size == 4 * REC_BYTES
    assert s2.unpublished_bytes == 3 * REC_BYTES
    s2.close()


def test_a_fresh_spool_has_a_clean_cursor(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    assert not s.cursor_dirty and s.persist_cursor() is True
    s.close()
    assert decode_slot((tmp_path / "cursor").read_bytes()[:32]) == (1, 1, 0)
    s2 = Spool(tmp_path, fsync="never")  # seq 1 in both slots: no rewrite on open
    s2.close()
    assert (tmp_path / "cursor").read_bytes() == encode_slot(1, 1, 0) * 2


def test_a_json_cursor_is_rewritten_as_slots(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(i) for i in range(3)])
    s.close()
    (tmp_path / "cursor").write_text(f' {{"segment": 1, "offset": {REC_BYTES}}}' + " " * 100)
    s2 = Spool(tmp_path, fsync="never")
    assert ids(drain(s2)) == [1, 2]
    assert (tmp_path / "cursor").read_bytes() == encode_slot(1, 1, REC_BYTES) * 2
    s2.close()


# -- disk errors ----------------------------------------------------------------------------
def test_a_failed_append_is_reported_and_the_next_starts_a_fresh_segment(
    tmp_path: pathlib.Path, monkeypatch
) -> None:
    errors: list[tuple[str, int]] = []
    s = Spool(tmp_path, fsync="never", on_error=lambda op, exc: errors.append((op, exc.errno)))
    s.append([rec(0)])
    fake = FakeOs()
    monkeypatch.setattr(spool_module, "os", fake)
    fake.fail["write"] = [errno.EIO]
    with pytest.raises(SpoolWriteFailed, match="EIO"):
        s.append([rec(1)])
    assert errors == [("append", errno.EIO)] and s.depth == 1
    s.append([rec(2)])
    assert len(segment_files(tmp_path)) == 2  # the failed segment can go once published
    s.append([rec(3)])
    assert len(segment_files(tmp_path)) == 2
    assert ids(drain(s)) == [0, 2, 3]
    s.close()


class _ShortThenFail:
    """``os.write`` that writes ``first`` bytes once, then fails with ENOSPC."""

    def __init__(self, first: int) -> None:
        self.first, self.writes = first, 0

    def __call__(self, fd: int, data: Any) -> int:
        self.writes += 1
        if self.writes == 1:
            return os.write(fd, bytes(data[: self.first]))
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_torn_append_whose_rollback_fails_is_cut_before_the_next(
    tmp_path: pathlib.Path, monkeypatch
) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(0)])
    fake = FakeOs()
    monkeypatch.setattr(spool_module, "os", fake)
    writer = _ShortThenFail(REC_BYTES + 5)
    monkeypatch.setattr(fake, "write", writer, raising=False)
    fake.fail["ftruncate"] = [errno.EIO]  # the rollback fails too: torn bytes stay for now
    with pytest.raises(SpoolWriteFailed):
        s.append([rec(1), rec(2)])
    seg = tmp_path / "seg-00000000000000000001.log"
    assert seg.stat().st_size == 2 * REC_BYTES + 5 and ids(drain(s)) == [0]
    monkeypatch.undo()
    s.append([rec(3)])  # cuts the torn bytes first (a fresh segment follows the failure)
    assert seg.stat().st_size == REC_BYTES
    assert ids(drain(s)) == [3] and s.depth == 2
    s.close()
    s2 = Spool(tmp_path, fsync="never")
    assert ids(drain(s2)) == [0, 3]
    s2.close()


def test_a_rollback_leaves_only_whole_records(tmp_path: pathlib.Path, monkeypatch) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(0)])
    fake = FakeOs()
    monkeypatch.setattr(spool_module, "os", fake)
    monkeypatch.setattr(fake, "write", _ShortThenFail(7), raising=False)
    with pytest.raises(SpoolWriteFailed):
        s.append([rec(1)])
    monkeypatch.undo()
    assert (tmp_path / "seg-00000000000000000001.log").stat().st_size == REC_BYTES
    s.close()


def test_a_rotation_whose_fsync_fails_leaves_no_new_segment(tmp_path: pathlib.Path, monkeypatch) -> None:
    errors: list[str] = []
    s = Spool(tmp_path, fsync="interval", segment_bytes=REC_BYTES, on_error=lambda op, e: errors.append(op))
    s.append([rec(0)])
    fake = FakeOs()
    monkeypatch.setattr(spool_module, "os", fake)
    fake.fail["fsync"] = [errno.EIO]
    with pytest.raises(SpoolWriteFailed, match="EIO"):
        s.append([rec(1)])  # needs a new segment; fsyncing the full one failed
    assert segment_files(tmp_path) == ["seg-00000000000000000001.log"] and errors == ["append"]
    s.append([rec(2)])
    assert ids(drain(s)) == [0, 2]
    s.close()
    monkeypatch.undo()
    s2 = Spool(tmp_path, fsync="never")
    assert ids(drain(s2)) == [0, 2]
    s2.close()


def test_rotation_fsyncs_the_full_segment_and_the_directory(tmp_path: pathlib.Path, monkeypatch) -> None:
    s = Spool(tmp_path, fsync="interval", fsync_interval_s=3600, segment_bytes=REC_BYTES)
    s.append([rec(0)])
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    fake = FakeOs()
    monkeypatch.setattr(spool_module, "os", fake)
    monkeypatch.setattr(fake, "fsync", fsync, raising=False)
    s.append([rec(1)])
    assert synced == [str(tmp_path / "seg-00000000000000000001.log"), str(tmp_path)]
    monkeypatch.undo()
    s.close()


def test_a_commit_whose_rotation_or_unlink_fails_is_reported(tmp_path: pathlib.Path, monkeypatch) -> None:
    errors: list[str] = []
    s = Spool(tmp_path, fsync="never", segment_bytes=REC_BYTES, on_error=lambda op, e: errors.append(op))
    s.append([rec(0)])
    got = drain(s)
    fake = FakeOs()
    monkeypatch.setattr(spool_module, "os", fake)
    fake.fail["open"] = [errno.EMFILE]
    s.commit(got[-1].segment, got[-1].end, 1)  # the fresh segment could not be opened
    assert errors == ["rotate"] and s.depth == 0 and s.used_bytes == REC_BYTES
    s.append([rec(1)])  # works: rotates now
    got = drain(s)
    assert ids(got) == [1]
    monkeypatch.undo()

    def refuse(self: pathlib.Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(pathlib.Path, "unlink", refuse)
    s.commit(got[-1].segment, got[-1].end, 1)
    assert "unlink" in errors and s.depth == 0
    monkeypatch.undo()
    s.close()


def test_cursor_writes_fsync_unless_never(tmp_path: pathlib.Path, monkeypatch) -> None:
    for mode, expect in (("always", True), ("never", False)):
        s = Spool(tmp_path / mode, fsync=mode)
        s.append([rec(0), rec(1)])
        got = drain(s)
        synced: list[str] = []
        real = os.fsync

        def fsync(fd: int, synced: list[str] = synced, real: Any = real) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        fake = FakeOs()
        monkeypatch.setattr(spool_module, "os", fake)
        monkeypatch.setattr(fake, "fsync", fsync, raising=False)
        s.commit(got[0].segment, got[0].end, 1)
        assert (str(tmp_path / mode / "cursor") in synced) is expect, mode
        monkeypatch.undo()
        s.close()


def test_crc_of_the_slot_head_is_what_decode_checks() -> None:
    head = encode_slot(1, 2, 3)[:24]
    assert encode_slot(1, 2, 3)[24:28] == (zlib.crc32(head) or 1).to_bytes(4, "little")


def test_a_zero_filled_tail_after_a_power_loss_is_cut(tmp_path: pathlib.Path) -> None:
    """A file extended but not written before a power loss reads back as zeros: a torn tail,
    not a record (the spool used to fail to start with a msgpack DecodeError)."""
    s = Spool(tmp_path, fsync="interval")
    s.append([rec(i) for i in range(3)])
    s.close()
    seg = tmp_path / "seg-00000000000000000001.log"
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)
    s2 = Spool(tmp_path, fsync="interval")
    assert seg.stat().st_size == 3 * REC_BYTES and s2.depth == 3
    s2.append([rec(3)])
    assert ids(drain(s2)) == [0, 1, 2, 3]
    s2.close()
    assert parse_frames(b"\0" * 8, 0, 1) == ([], 0)


def test_a_checksummed_body_that_is_no_record_is_corrupt_not_a_crash(tmp_path: pathlib.Path) -> None:
    body = msgspec.msgpack.encode(["prediction", "m"])
    bad = struct.pack("<II", len(body), zlib.crc32(body)) + body
    s = Spool(tmp_path, fsync="never")
    s.append([rec(0)])
    s.close()
    with open(tmp_path / "seg-00000000000000000001.log", "ab") as f:
        f.write(bad + frame(*rec(1)))
    with pytest.raises(SpoolCorrupt) as err:
        Spool(tmp_path, fsync="never")
    assert str(err.value) == (
        f"segment 1: not enough values to unpack (expected 5, got 2) at offset {REC_BYTES}; move that"
        " segment file aside (its records after the damage are lost to this sidecar) and start again"
    )


def test_the_error_messages_name_the_fix(tmp_path: pathlib.Path) -> None:
    assert str(SpoolWriteFailed("/spool", OSError(errno.ENOSPC, "No space left on device"))) == (
        "spool write failed in /spool: ENOSPC (No space left on device); the request was not stored."
        " Free space on the spool volume, or set --spool-max-bytes at least 1 MiB below its size"
    )
    with pytest.raises(ValueError) as err:
        Spool(tmp_path, fsync="sometimes")
    assert str(err.value) == "fsync must be one of ('always', 'interval', 'never'), not 'sometimes'"
    s = Spool(tmp_path, fsync="never")
    with pytest.raises(SpoolLocked) as locked:
        Spool(tmp_path, fsync="never")
    assert str(locked.value) == (
        f"{tmp_path} is in use by another sidecar process; give each sidecar its own --spool-dir"
    )
    s.close()
    data = bytearray(frame(*rec(0)))
    data[12] ^= 0xFF
    with pytest.raises(SpoolCorrupt) as corrupt:
        parse_frames(bytes(data), 0, 9)
    assert str(corrupt.value) == (
        "segment 9: bad checksum at offset 0; move that segment file aside (its records after the"
        " damage are lost to this sidecar) and start again"
    )


def _zero_crc_offset(seq: int, segment: int, low: int) -> int:
    """An offset whose slot head has crc32 0: solve for its high 32 bits (crc32 is affine)."""

    def f(x: int) -> int:
        return zlib.crc32(struct.pack("<QQQ", seq, segment, low | (x << 32)))

    base = f(0)
    rows = [(f(1 << i) ^ base, 1 << i) for i in range(32)]  # (image, preimage) pairs
    basis: dict[int, tuple[int, int]] = {}  # pivot bit -> (image, preimage)
    for img, pre in rows:
        for bit in sorted(basis, reverse=True):
            if img >> bit & 1:
                img, pre = img ^ basis[bit][0], pre ^ basis[bit][1]
        if img:
            basis[img.bit_length() - 1] = (img, pre)
    target, x = base, 0
    for bit in sorted(basis, reverse=True):
        if target >> bit & 1:
            target, x = target ^ basis[bit][0], x ^ basis[bit][1]
    assert target == 0 and f(x) == 0
    return low | (x << 32)


def test_a_slot_whose_crc32_is_zero_still_round_trips() -> None:
    """A crc of 0 is stored as 1 (so an all-zero slot is never valid); decode agrees."""
    offset = _zero_crc_offset(5, 3, 1234)
    assert zlib.crc32(encode_slot(5, 3, offset)[:24]) == 0
    assert decode_slot(encode_slot(5, 3, offset)) == (5, 3, offset)


def test_an_fsync_of_a_segment_rotation_closed_meanwhile_is_no_error(
    tmp_path: pathlib.Path, monkeypatch
) -> None:
    """The fsync thread took the segment's fd, then an append rotated (fsyncing and closing
    it): the failing late fsync is no disk error, and nothing waits for it."""
    errors: list[tuple[str, int]] = []
    s = Spool(
        tmp_path, fsync="always", segment_bytes=REC_BYTES, on_error=lambda op, e: errors.append((op, e.errno))
    )
    real = os.fsync
    fake = FakeOs()
    later: list[int] = []
    raced: list[bool] = []

    def fsync(fd: int) -> None:
        if threading.current_thread().name == "spool-fsync" and not raced:
            raced.append(True)
            later.append(s.append([rec(1)]))  # rotates: the old segment is fsynced and closed
            raise OSError(errno.EBADF, "Bad file descriptor")
        real(fd)

    monkeypatch.setattr(spool_module, "os", fake)
    monkeypatch.setattr(fake, "fsync", fsync, raising=False)
    first = s.append([rec(0)])
    assert s.wait_durable(first, timeout=30)
    wait_for(lambda: later, "the racing append")
    assert s.wait_durable(later[0], timeout=30)
    assert errors == [] and len(segment_files(tmp_path)) == 2
    monkeypatch.undo()
    s.close()


def test_interval_mode_fsyncs_in_the_background(tmp_path: pathlib.Path, monkeypatch) -> None:
    s = Spool(tmp_path, fsync="interval", fsync_interval_s=0.01)
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread().name == "spool-fsync":
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    fake = FakeOs()
    monkeypatch.setattr(spool_module, "os", fake)
    monkeypatch.setattr(fake, "fsync", fsync, raising=False)
    s.append([rec(0)])  # no rotation, no close: only the background thread fsyncs it
    wait_for(lambda: str(tmp_path / "seg-00000000000000000001.log") in synced, "a background fsync")
    monkeypatch.undo()
    s.close()


def test_the_default_mode_is_interval_and_a_restart_keeps_appending_to_the_last_segment(
    tmp_path: pathlib.Path,
) -> None:
    s = Spool(tmp_path)
    assert s.fsync_mode == "interval"
    s.append([rec(0)])
    s.close()
    s2 = Spool(tmp_path)  # no failed append before: no fresh segment either
    s2.append([rec(1)])
    got = drain(s2)
    s2.commit(got[0].segment, got[0].end, 1)  # less than a quarter of the segment published
    assert segment_files(tmp_path) == ["seg-00000000000000000001.log"] and s2.used_bytes == 2 * REC_BYTES
    s2.close()


def test_never_mode_runs_no_fsync_thread(tmp_path: pathlib.Path) -> None:
    def fsync_threads() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "spool-fsync")

    before = fsync_threads()
    s = Spool(tmp_path, fsync="never", fsync_interval_s=0.01)
    assert fsync_threads() == before
    s.close()
    s = Spool(tmp_path, fsync="interval", fsync_interval_s=0.01)
    assert fsync_threads() == before + 1
    s.close()


def test_a_process_that_never_closes_its_spool_still_exits(tmp_path: pathlib.Path) -> None:
    """The fsync thread is a daemon: a sidecar that dies without close() does not hang at exit."""
    code = f"from sidecar.spool import Spool; Spool({str(tmp_path)!r}, fsync='interval').append([])"
    done = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), timeout=120, check=False)
    assert done.returncode == 0
