"""The durable spool: replay after restart, torn tails, rotation, the cap, corruption."""

from __future__ import annotations

import pathlib

import pytest

from sidecar.spool import Spool, SpoolCorrupt, SpoolFull, SpoolLocked


def rec(i: int, size: int = 10) -> tuple[str, str, bytes, dict[str, str], float]:
    return ("prediction", "m", f"{i:06d}".encode() + b"x" * size, {"event_id": str(i)}, float(i))


def drain(s: Spool, n: int = 10**6) -> list:
    out = []
    while len(out) < n and (batch := s.read(1000)):
        out += batch
    return out


def test_unpublished_records_are_replayed_after_a_restart(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(i) for i in range(10)])
    got = drain(s)
    assert [r.attributes["event_id"] for r in got] == [str(i) for i in range(10)]
    s.commit(got[3].segment, got[3].end, 4)  # 0..3 published
    assert s.depth == 6
    s.close()
    s2 = Spool(tmp_path, fsync="never")
    assert s2.depth == 6
    assert [r.attributes["event_id"] for r in drain(s2)] == [str(i) for i in range(4, 10)]


def test_a_torn_tail_is_cut_and_the_spool_keeps_working(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="always")
    s.append([rec(i) for i in range(3)])
    s.close()
    (seg,) = tmp_path.glob("seg-*.log")
    whole = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02")  # a crash in the middle of the next append
    s2 = Spool(tmp_path, fsync="always")
    assert seg.stat().st_size == whole
    s2.append([rec(3)])
    assert [r.attributes["event_id"] for r in drain(s2)] == ["0", "1", "2", "3"]


def test_segments_rotate_and_published_ones_are_deleted(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never", segment_bytes=500)
    for i in range(40):
        s.append([rec(i)])
    assert len(list(tmp_path.glob("seg-*.log"))) > 3
    got = drain(s)
    assert [int(r.attributes["event_id"]) for r in got] == list(range(40))
    s.commit(got[-1].segment, got[-1].end, len(got))
    assert len(list(tmp_path.glob("seg-*.log"))) == 1
    assert s.depth == 0 and s.unpublished_bytes == 0


def test_the_cap_refuses_whole_appends_and_frees_on_commit(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never", max_bytes=1000)
    n = 0
    with pytest.raises(SpoolFull):
        while True:
            s.append([rec(n, 50)])
            n += 1
    assert 0 < s.unpublished_bytes <= 1000 and s.depth == n
    got = drain(s)
    s.commit(got[-1].segment, got[-1].end, len(got))
    s.append([rec(n, 50)])
    assert s.depth == 1


def test_a_corrupt_record_in_the_middle_is_reported(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    s.append([rec(i) for i in range(3)])
    s.close()
    (seg,) = tmp_path.glob("seg-*.log")
    data = bytearray(seg.read_bytes())
    data[12] ^= 0xFF  # inside the first record's body
    seg.write_bytes(bytes(data))
    with pytest.raises(SpoolCorrupt, match="bad checksum at offset 0"):
        Spool(tmp_path, fsync="never")


def test_fsync_always_waits_for_the_disk(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="always")
    ticket = s.append([rec(1)])
    assert s.wait_durable(ticket, timeout=5)
    called = []
    s.on_durable(s.append([rec(2)]), lambda: called.append(True))
    s.close()
    assert called == [True]


def test_bad_fsync_mode_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="fsync must be one of"):
        Spool(tmp_path, fsync="sometimes")


def test_a_spool_directory_has_one_owner(tmp_path: pathlib.Path) -> None:
    s = Spool(tmp_path, fsync="never")
    with pytest.raises(SpoolLocked, match="in use by another sidecar process"):
        Spool(tmp_path, fsync="never")
    s.close()
    Spool(tmp_path, fsync="never").close()  # free again once the owner closed (or died)
