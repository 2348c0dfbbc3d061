"""Durable append-only spool: an accepted event leaves it only after Pub/Sub confirmed it.

Layout of ``DIR``: segment files ``seg-<n>.log`` (n = 20 digits, increasing) holding framed
records, and ``cursor`` (JSON ``{"segment": n, "offset": k}``): every record before that
position has been published. A record is ``<u32 length><u32 crc32>`` + a msgpack body
``[kind, key, data, attributes, accepted_at]``. On open, a torn tail (a crash in the middle of
an append) is cut at the last whole record; records after the cursor are replayed.

Durability (``fsync``): ``always`` fsyncs before the append returns (group commit: one fsync
covers every append waiting for it); ``interval`` fsyncs from a background thread every
``fsync_interval_s``; ``never`` leaves it to the OS. In all three modes each append is one
``write(2)`` before the caller answers 202, so a killed *process* (SIGKILL) loses nothing; the
modes differ only for a machine crash or power loss.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pathlib
import struct
import threading
import zlib
from collections.abc import Callable, Iterable

import msgspec

_HEADER = struct.Struct("<II")
_SEGMENT_PREFIX = "seg-"
FSYNC_MODES = ("always", "interval", "never")


class SpoolFull(Exception):
    """The spool holds ``max_bytes`` of unpublished events; the caller should answer 503."""


class SpoolLocked(ValueError):
    """Another live process holds the spool directory."""


class SpoolCorrupt(ValueError):
    """A whole record failed its checksum in the middle of a segment (disk damage)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One spooled message: where it ends in the spool (for the cursor) and what to publish."""

    segment: int
    end: int
    kind: str
    key: str
    data: bytes
    attributes: dict[str, str]
    accepted_at: float


def frame(kind: str, key: str, data: bytes, attributes: dict[str, str], accepted_at: float) -> bytes:
    """One framed record.

    >>> f = frame("prediction", "fraud", b"{}", {"model": "fraud"}, 1.5)
    >>> parse_frames(f, 0, 7)[0][0].data
    b'{}'
    """
    body = msgspec.msgpack.encode((kind, key, data, attributes, accepted_at))
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def parse_frames(buf: bytes, base: int, segment: int) -> tuple[list[Record], int]:
    """Whole records in ``buf`` (which starts at file offset ``base``) and bytes consumed.

    A record cut short at the end is left for later (it is still being written, or torn).
    A complete record with a bad checksum raises SpoolCorrupt.
    """
    out: list[Record] = []
    pos, n = 0, len(buf)
    while n - pos >= _HEADER.size:
        length, crc = _HEADER.unpack_from(buf, pos)
        start = pos + _HEADER.size
        if n - start < length:
            break
        body = buf[start : start + length]
        if zlib.crc32(body) != crc:
            raise SpoolCorrupt(
                f"segment {segment}: bad checksum at offset {base + pos}; move that segment file aside"
                " (its records after the damage are lost to this sidecar) and start again"
            )
        kind, key, data, attrs, ts = msgspec.msgpack.decode(body)
        pos = start + length
        out.append(Record(segment, base + pos, kind, key, data, attrs, ts))
    return out, pos


def _segment_path(root: pathlib.Path, n: int) -> pathlib.Path:
    return root / f"{_SEGMENT_PREFIX}{n:020d}.log"


def _fsync_dir(root: pathlib.Path) -> None:
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Append-only segment files with a published-up-to cursor.

    >>> import tempfile
    >>> s = Spool(tempfile.mkdtemp(), fsync="never")
    >>> ticket = s.append([("prediction", "fraud", b"{}", {}, 0.0)])
    >>> [r.data for r in s.read(10)]
    [b'{}']
    >>> s.unpublished_bytes > 0, s.depth
    (True, 1)
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        max_bytes: int = 1 << 30,
        fsync: str = "interval",
        fsync_interval_s: float = 1.0,
        segment_bytes: int = 64 << 20,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}, not {fsync!r}")
        self.root = pathlib.Path(directory)
        self.root.mkdir(parents=True, exist_ok=True)
        # one process per spool: a second writer would interleave records and race the cursor
        self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLocked(
                f"{self.root} is in use by another sidecar process; give each sidecar its own --spool-dir"
            ) from None
        self.max_bytes, self.fsync_mode, self.segment_bytes = max_bytes, fsync, segment_bytes
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        segments = sorted(
            int(p.name[len(_SEGMENT_PREFIX) : -4]) for p in self.root.glob(f"{_SEGMENT_PREFIX}*.log")
        )
        cursor = self._load_cursor()
        if cursor is None:
            cursor = (segments[0], 0) if segments else (1, 0)
        # Segments wholly before the cursor were published before a crash cut their cleanup.
        for n in [s for s in segments if s < cursor[0]]:
            _segment_path(self.root, n).unlink(missing_ok=True)
        segments = [s for s in segments if s >= cursor[0]] or [cursor[0]]
        self._sizes: dict[int, int] = {}
        self._depth = 0
        for n in segments:
            self._sizes[n] = self._recover_segment(n, cursor[1] if n == cursor[0] else 0)
        self._cursor = cursor
        self._read_pos = cursor
        self._write_seg = segments[-1]
        self._fd = os.open(
            _segment_path(self.root, self._write_seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        self._written_total = 0  # bytes appended by this process (for fsync group commit)
        self._synced_total = 0
        self._sync_cond = threading.Condition()
        self._durable_waiters: list[tuple[int, Callable[[], None]]] = []
        #: called after every append (the drainer's wake-up)
        self.on_append: Callable[[], None] | None = None
        self._fsync_thread: threading.Thread | None = None
        if fsync != "never":
            interval = 0.0 if fsync == "always" else fsync_interval_s
            self._fsync_thread = threading.Thread(
                target=self._fsync_loop, args=(interval,), name="spool-fsync", daemon=True
            )
            self._fsync_thread.start()

    # -- recovery -------------------------------------------------------------------------
    def _load_cursor(self) -> tuple[int, int] | None:
        path = self.root / "cursor"
        if not path.exists():
            return None
        doc = json.loads(path.read_text())
        return int(doc["segment"]), int(doc["offset"])

    def _recover_segment(self, n: int, start: int) -> int:
        """Size of segment ``n`` after cutting a torn tail; counts its unpublished records."""
        path = _segment_path(self.root, n)
        if not path.exists():
            path.touch(mode=0o600)
            return 0
        buf = path.read_bytes()
        records, used = parse_frames(buf[start:], start, n)
        self._depth += len(records)
        size = start + used
        if size < len(buf):  # torn tail: the append never completed, so it was never answered 202
            with open(path, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())
        return size

    # -- writer side ----------------------------------------------------------------------
    @property
    def unpublished_bytes(self) -> int:
        return sum(self._sizes.values()) - self._cursor[1]

    @property
    def depth(self) -> int:
        """Records accepted and not yet published."""
        return self._depth

    def writable(self) -> bool:
        """For readiness: the directory accepts writes and the spool is not closed."""
        return not self._closed and os.access(self.root, os.W_OK)

    def append(self, records: Iterable[tuple[str, str, bytes, dict[str, str], float]]) -> int:
        """Append records with one write; returns the sync ticket (see ``wait_durable``).

        Raises SpoolFull (nothing written) when the cap would be exceeded.
        """
        records = list(records)
        blob = b"".join(frame(*r) for r in records)
        n_records = len(records)
        with self._lock:
            if self._closed:
                raise SpoolFull("spool is closed")
            if self.unpublished_bytes + len(blob) > self.max_bytes:
                raise SpoolFull(f"spool holds {self.unpublished_bytes} of {self.max_bytes} bytes")
            if self._sizes[self._write_seg] and self._sizes[self._write_seg] + len(blob) > self.segment_bytes:
                self._rotate()
            written = os.write(self._fd, blob)
            while written < len(blob):  # short writes are rare but legal
                written += os.write(self._fd, blob[written:])
            self._sizes[self._write_seg] += len(blob)
            self._depth += n_records
            self._written_total += len(blob)
            ticket = self._written_total
            self._changed.notify_all()
        if self.fsync_mode == "always":
            with self._sync_cond:
                self._sync_cond.notify_all()
        if self.on_append is not None:
            self.on_append()
        return ticket

    def on_durable(self, ticket: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the fsync thread) once ``ticket`` is on disk; now if it is."""
        with self._sync_cond:
            if self.fsync_mode == "always" and self._synced_total < ticket and not self._closed:
                self._durable_waiters.append((ticket, callback))
                return
        callback()

    def wait_durable(self, ticket: int, timeout: float | None = None) -> bool:
        """Block until everything up to ``ticket`` is fsynced (``always`` mode); else no-op."""
        if self.fsync_mode != "always":
            return True
        with self._sync_cond:
            return self._sync_cond.wait_for(lambda: self._synced_total >= ticket or self._closed, timeout)

    def _rotate(self) -> None:
        if self.fsync_mode != "never":
            os.fsync(self._fd)
        os.close(self._fd)
        self._write_seg += 1
        self._sizes[self._write_seg] = 0
        self._fd = os.open(
            _segment_path(self.root, self._write_seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        if self.fsync_mode != "never":
            _fsync_dir(self.root)

    def _fsync_loop(self, interval: float) -> None:
        while True:
            with self._sync_cond:
                if interval:
                    self._sync_cond.wait(interval)
                else:
                    self._sync_cond.wait_for(lambda: self._written_total > self._synced_total or self._closed)
                if self._closed:
                    return
            with self._lock:
                target, fd = self._written_total, self._fd
            if target > self._synced_total:
                try:
                    os.fsync(fd)
                except OSError:  # fd rotated away under us: rotation fsynced it already
                    pass
            with self._sync_cond:
                self._synced_total = max(self._synced_total, target)
                self._sync_cond.notify_all()
                ready = [cb for t, cb in self._durable_waiters if t <= self._synced_total]
                self._durable_waiters = [(t, cb) for t, cb in self._durable_waiters if t > self._synced_total]
            for cb in ready:
                cb()

    # -- reader side (the publisher) ------------------------------------------------------
    def read(self, max_records: int, max_bytes: int = 4 << 20, timeout: float = 0.0) -> list[Record]:
        """Next records after the last read (not after the cursor), in spool order."""
        with self._lock:
            if timeout and not self._has_unread():
                self._changed.wait(timeout)
            seg, off = self._read_pos
            size = self._sizes.get(seg, 0)
            if off >= size and seg < self._write_seg:
                seg, off = seg + 1, 0
                size = self._sizes.get(seg, 0)
            if off >= size:
                return []
        with open(_segment_path(self.root, seg), "rb") as f:
            f.seek(off)
            buf = f.read(min(size - off, max_bytes))
        records, used = parse_frames(buf, off, seg)
        if not records and size - off > 0:  # one record larger than max_bytes
            with open(_segment_path(self.root, seg), "rb") as f:
                f.seek(off)
                records, used = parse_frames(f.read(size - off), off, seg)
        records = records[:max_records]
        if records:
            self._read_pos = (seg, records[-1].end)
        return records

    def _has_unread(self) -> bool:
        seg, off = self._read_pos
        return off < self._sizes.get(seg, 0) or seg < self._write_seg

    def rewind(self) -> None:
        """Read again from the cursor (after the publisher dropped its in-flight state)."""
        with self._lock:
            self._read_pos = self._cursor

    def commit(self, segment: int, end: int, count: int) -> None:
        """Everything up to (segment, end) is published: move the cursor, drop old segments."""
        with self._lock:
            if (segment, end) <= self._cursor:
                return
            self._cursor = (segment, end)
            self._depth -= count
            old = [n for n in self._sizes if n < segment]
            for n in old:
                del self._sizes[n]
        tmp = self.root / "cursor.tmp"
        tmp.write_text(json.dumps({"segment": segment, "offset": end}))
        if self.fsync_mode != "never":
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, self.root / "cursor")
        for n in old:
            _segment_path(self.root, n).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.fsync_mode != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._changed.notify_all()
        with self._sync_cond:
            self._synced_total = self._written_total
            self._sync_cond.notify_all()
            ready, self._durable_waiters = [cb for _, cb in self._durable_waiters], []
        for cb in ready:
            cb()
        if self._fsync_thread:
            self._fsync_thread.join(5)
        os.close(self._lock_fd)  # releases the flock
