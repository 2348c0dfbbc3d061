"""The durable spool: replay after restart, torn tails, rotation, the cap, corruption, and a
full disk (a real small tmpfs when the machine allows mounting one, an injected one otherwise)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar import spool as spool_module
from sidecar.spool import Spool, SpoolCorrupt, SpoolFull, SpoolLocked, SpoolWriteFailed, parse_frames


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


# -- a full disk ----------------------------------------------------------------------------
class Volume:
    """A small volume for a spool: a real tmpfs of ``size`` bytes when ``mount`` works (root),
    else a directory whose writes through ``sidecar.spool`` fail like a disk of that size
    (short write, then ENOSPC). ``fill()`` takes the remaining space, ``free()`` gives it back.
    """

    def __init__(self, path: pathlib.Path, size: int, mounted: bool) -> None:
        self.path, self.size, self.mounted = path, size, mounted
        self.capacity = size
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
        self.capacity = self.size
        self._ballast.unlink(missing_ok=True)


class _DiskOs:
    """``os`` for sidecar.spool with writes that run out of space at ``volume.capacity``."""

    def __init__(self, volume: Volume) -> None:
        self._volume = volume

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        room = self._volume.capacity - self._volume.used()
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, bytes(data[:room]))


@contextlib.contextmanager
def small_volume(path: pathlib.Path, size: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Volume]:
    """A Volume at ``path``: tmpfs if this process may mount (set PREDAUDIT_TEST_NO_MOUNT=1 to
    force the injected one), unmounted again at the end."""
    path.mkdir(parents=True)
    mounted = False
    if not os.environ.get("PREDAUDIT_TEST_NO_MOUNT"):
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        with contextlib.suppress(OSError):
            mounted = subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    volume = Volume(path, size, mounted)
    if not mounted:
        monkeypatch.setattr(spool_module, "os", _DiskOs(volume))
    try:
        yield volume
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def whole_records_only(root: pathlib.Path) -> None:
    """Every segment file holds whole records and nothing else (no torn bytes)."""
    for seg in sorted(root.glob("seg-*.log")):
        buf = seg.read_bytes()
        _, used = parse_frames(buf, 0, 0)
        assert used == len(buf), f"{seg.name}: {len(buf) - used} torn bytes after the last whole record"


def test_a_failed_append_on_a_full_disk_is_rolled_back(tmp_path, monkeypatch) -> None:
    with small_volume(tmp_path / "vol", 1 << 20, monkeypatch) as vol:
        root = vol.path / "spool"
        s = Spool(root, fsync="never")  # the default cap (1 GiB) is far above the volume
        acked, i = [], 0
        with pytest.raises(SpoolWriteFailed, match="ENOSPC"):
            while True:
                s.append([rec(i, 3000)])
                acked.append(i)
                i += 1
        assert len(acked) > 250  # ~1 MiB of 3 KB records went in before the disk filled
        whole_records_only(root)
        with pytest.raises(SpoolWriteFailed):  # still full: refused again, nothing left behind
            s.append([rec(i, 3000)])
        whole_records_only(root)
        assert s.depth == len(acked)
        # publish everything: its segment is deleted, and appends work again at once
        got = drain(s)
        assert [int(r.attributes["event_id"]) for r in got] == acked
        s.commit(got[-1].segment, got[-1].end, len(got))
        assert vol.used() < 64 * 1024
        for k in range(100):
            s.append([rec(i + k, 3000)])
        s.close()
        s2 = Spool(root, fsync="never")
        assert [int(r.attributes["event_id"]) for r in drain(s2)] == list(range(i, i + 100))
        s2.close()


def test_the_cursor_moves_on_a_full_disk(tmp_path, monkeypatch) -> None:
    with small_volume(tmp_path / "vol", 1 << 20, monkeypatch) as vol:
        root = vol.path / "spool"
        s = Spool(root, fsync="always")
        s.append([rec(i) for i in range(10)])
        got = drain(s)
        vol.fill()
        s.commit(got[4].segment, got[4].end, 5)  # writing a new cursor file would need space
        assert not s.cursor_dirty and s.depth == 5
        s.close()
        s2 = Spool(root, fsync="always")
        assert [r.attributes["event_id"] for r in drain(s2)] == [str(i) for i in range(5, 10)]
        s2.close()
        vol.free()


def test_disk_use_stays_within_max_bytes_and_space_comes_back(tmp_path, monkeypatch) -> None:
    cap = 768 << 10
    with small_volume(tmp_path / "vol", 1 << 20, monkeypatch) as vol:
        s = Spool(vol.path / "spool", max_bytes=cap, fsync="never")
        assert s.segment_bytes == cap // 16
        n = 0
        for _ in range(4):  # fill to the cap, publish everything, again: never ENOSPC
            start = n
            with pytest.raises(SpoolFull) as refused:
                while True:
                    s.append([rec(n, 2000)])
                    n += 1
            assert type(refused.value) is SpoolFull, "the disk filled up before the cap"
            assert s.used_bytes <= cap and vol.used() <= cap + 4096
            assert (n - start) * 2100 > cap * 0.85  # the cap is usable, not eaten by published bytes
            got = drain(s)
            s.commit(got[-1].segment, got[-1].end, len(got))
            assert s.depth == 0 and s.used_bytes < s.segment_bytes
        s.close()


def test_a_cursor_behind_deleted_segments_resumes_at_the_next_one(tmp_path) -> None:
    s = Spool(tmp_path, fsync="never", segment_bytes=500)
    for i in range(40):
        s.append([rec(i)])
    got = drain(s)
    s.commit(got[29].segment, got[29].end, 30)
    first = min(int(p.name[4:-4]) for p in tmp_path.glob("seg-*.log"))
    s.close()
    # a cursor file that fell behind (its write failed) and points into a deleted segment,
    # in the JSON format of earlier versions
    (tmp_path / "cursor").write_text(json.dumps({"segment": first - 1, "offset": 10}))
    s2 = Spool(tmp_path, fsync="never")
    replayed = [int(r.attributes["event_id"]) for r in drain(s2)]
    assert replayed[-10:] == list(range(30, 40)) and replayed == sorted(replayed)  # no loss
    assert len(replayed) <= 10 + 40 // 3  # only the rest of the segment the cursor was in


class _FailingPwrite:
    """``os`` for sidecar.spool whose cursor writes fail with ENOSPC while ``failing``."""

    def __init__(self) -> None:
        self.failing, self.refused = True, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if self.failing:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.pwrite(fd, data, offset)


def test_a_failed_cursor_write_is_retried_not_fatal(tmp_path, monkeypatch) -> None:
    errors: list[tuple[str, int]] = []
    s = Spool(tmp_path, fsync="always", on_error=lambda op, exc: errors.append((op, exc.errno)))
    s.append([rec(i) for i in range(10)])
    got = drain(s)
    fake = _FailingPwrite()
    monkeypatch.setattr(spool_module, "os", fake)
    s.commit(got[5].segment, got[5].end, 6)  # must not raise: the drainer calls this
    assert s.cursor_dirty and s.depth == 4 and errors == [("cursor", errno.ENOSPC)]
    assert s.persist_cursor() is False  # still refused, still not fatal
    fake.failing = False
    assert s.persist_cursor() is True and not s.cursor_dirty
    s.close()
    s2 = Spool(tmp_path, fsync="always")
    assert [r.attributes["event_id"] for r in drain(s2)] == ["6", "7", "8", "9"]
    s2.close()
