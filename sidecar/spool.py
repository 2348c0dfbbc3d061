"""Durable append-only spool: an accepted event leaves it only after Pub/Sub confirmed it.

Layout of ``DIR``: segment files ``seg-<n>.log`` (n = 20 digits, increasing) holding framed
records, and ``cursor``: every record before (segment, offset) has been published. The cursor
file is two fixed 32-byte slots ``<u64 seq><u64 segment><u64 offset><u32 crc32>`` overwritten
in place, alternately, so moving the cursor never needs new disk blocks (it works on a full
disk) and a torn slot write leaves the other slot valid; an older JSON cursor is read once.
A record is ``<u32 length><u32 crc32>`` + a msgpack body ``[kind, key, data, attributes,
accepted_at]``. On open, a torn tail (a crash in the middle of an append) is cut at the last
whole record; records after the cursor are replayed.

Disk use: ``max_bytes`` caps the bytes of segment files on disk (published-but-not-yet-deleted
bytes included), so a volume of ``max_bytes`` + 1 MiB never fills up. Segments are at most
``max_bytes / 16`` (64 MiB at most) and a wholly published segment is deleted at once, so space
comes back in steps of at most 1/16 of the cap. An append that fails part-way (ENOSPC, EIO) is
cut back to the last whole record and raised as ``SpoolWriteFailed`` (nothing of it stays), and
the next append starts a fresh segment so the full one can be deleted once it is published.

Durability (``fsync``): ``always`` fsyncs before the append returns (group commit: one fsync
covers every append waiting for it); ``interval`` fsyncs from a background thread every
``fsync_interval_s``; ``never`` leaves it to the OS. In all three modes each append is one
``write(2)`` before the caller answers 202, so a killed *process* (SIGKILL) loses nothing; the
modes differ only for a machine crash or power loss.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable

import msgspec

_HEADER = struct.Struct("<II")
_SLOT = struct.Struct("<QQQI")  # seq, segment, offset, crc32 of the first 24 bytes
_SLOT_SIZE = 32
_SEGMENT_PREFIX = "seg-"
FSYNC_MODES = ("always", "interval", "never")
#: the largest segment file; smaller caps get max_bytes / 16
MAX_SEGMENT_BYTES = 64 << 20


def segment_bytes_for(max_bytes: int) -> int:
    """Segment size for a cap: 1/16 of it, at most 64 MiB (space comes back per segment).

    >>> segment_bytes_for(1 << 30), segment_bytes_for(2 << 20)
    (67108864, 131072)
    """
    return max(1, min(MAX_SEGMENT_BYTES, max_bytes // 16))


class SpoolFull(Exception):
    """The spool cannot take the append (nothing of it was written); the caller answers 503."""


class SpoolWriteFailed(SpoolFull):
    """The disk refused the append (ENOSPC, EIO...): it was rolled back; retry later.

    >>> str(SpoolWriteFailed("/spool", OSError(errno.ENOSPC, "No space left on device")))[:43]
    'spool write failed in /spool: ENOSPC (No sp'
    """

    def __init__(self, root: str | os.PathLike, exc: OSError) -> None:
        self.errno_name = errno.errorcode.get(exc.errno or 0, "EIO")
        super().__init__(
            f"spool write failed in {root}: {self.errno_name} ({exc.strerror}); the request was"
            " not stored. Free space on the spool volume, or set --spool-max-bytes at least"
            " 1 MiB below its size"
        )


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

    A record cut short at the end is left for later (it is still being written, or torn), and
    so is a zero length: no record is empty, so that is a zero-filled tail (what a power loss
    leaves of a file extended but not yet written). A complete record with a bad checksum, or
    a body that is not a record, raises SpoolCorrupt.
    """
    out: list[Record] = []
    pos, n = 0, len(buf)
    while n - pos >= _HEADER.size:
        length, crc = _HEADER.unpack_from(buf, pos)
        start = pos + _HEADER.size
        if n - start < length or not length:
            break
        body = buf[start : start + length]
        try:
            if zlib.crc32(body) != crc:
                raise ValueError("bad checksum")
            kind, key, data, attrs, ts = msgspec.msgpack.decode(body)
        except (ValueError, TypeError) as exc:  # msgspec.DecodeError is a ValueError
            raise SpoolCorrupt(
                f"segment {segment}: {exc} at offset {base + pos}; move that segment file aside"
                " (its records after the damage are lost to this sidecar) and start again"
            ) from None
        pos = start + length
        out.append(Record(segment, base + pos, kind, key, data, attrs, ts))
    return out, pos


def _segment_path(root: pathlib.Path, n: int) -> pathlib.Path:
    return root / f"{_SEGMENT_PREFIX}{n:020d}.log"


def encode_slot(seq: int, segment: int, offset: int) -> bytes:
    """One cursor slot (32 bytes).

    >>> decode_slot(encode_slot(3, 7, 99))
    (3, 7, 99)
    >>> decode_slot(b"\\x00" * 32) is None
    True
    """
    head = _SLOT.pack(seq, segment, offset, 0)[:24]
    return (head + struct.pack("<I", zlib.crc32(head) or 1)).ljust(_SLOT_SIZE, b"\0")


def decode_slot(buf: bytes) -> tuple[int, int, int] | None:
    """(seq, segment, offset) of a valid slot, or None (never written, or torn)."""
    if len(buf) < _SLOT.size:
        return None
    seq, segment, offset, crc = _SLOT.unpack_from(buf)
    return (seq, segment, offset) if crc == (zlib.crc32(buf[:24]) or 1) else None


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
        segment_bytes: int | None = None,
        on_error: Callable[[str, OSError], None] | None = None,
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
        self.max_bytes, self.fsync_mode = max_bytes, fsync
        self.segment_bytes = segment_bytes or segment_bytes_for(max_bytes)
        #: called with (operation, error) for every disk error the spool survived
        self.on_error = on_error
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        segments = sorted(
            int(p.name[len(_SEGMENT_PREFIX) : -4]) for p in self.root.glob(f"{_SEGMENT_PREFIX}*.log")
        )
        self._cursor_seq, cursor = self._load_cursor()
        if cursor is None:
            cursor = (segments[0], 0) if segments else (1, 0)
        elif cursor[0] not in segments:
            # its segment was wholly published and deleted before the cursor file caught up
            later = [s for s in segments if s > cursor[0]]
            cursor = (later[0], 0) if later else (cursor[0] + 1, 0)
        # Segments wholly before the cursor were published before a crash cut their cleanup.
        for n in [s for s in segments if s < cursor[0]]:
            _segment_path(self.root, n).unlink(missing_ok=True)
        segments = [s for s in segments if s >= cursor[0]] or [cursor[0]]
        self._sizes: dict[int, int] = {}
        self._depth = 0
        for n in segments:
            self._sizes[n] = self._recover_segment(n, cursor[1] if n == cursor[0] else 0)
        cursor = (cursor[0], min(cursor[1], self._sizes[cursor[0]]))
        self._cursor = cursor
        self._persisted: tuple[int, int] | None = None
        self._cursor_fd = self._open_cursor_file()
        self._persist_lock = threading.Lock()
        self._read_pos = cursor
        self._write_seg = segments[-1]
        self._fd = os.open(
            _segment_path(self.root, self._write_seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        self._rotate_next = False  # after a failed append: start a fresh segment
        self._torn: int | None = None  # a rollback that did not complete: cut here first
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
    def _load_cursor(self) -> tuple[int, tuple[int, int] | None]:
        """(slot sequence, cursor) from the cursor file; a JSON cursor from older versions too."""
        path = self.root / "cursor"
        if not path.exists():
            return 0, None
        buf = path.read_bytes()
        if buf.lstrip()[:1] == b"{":
            doc = json.loads(buf)
            return 0, (int(doc["segment"]), int(doc["offset"]))
        slots = [x for x in (decode_slot(buf[:_SLOT_SIZE]), decode_slot(buf[_SLOT_SIZE:])) if x]
        if not slots:
            return 0, None
        seq, segment, offset = max(slots)
        return seq, (segment, offset)

    def _open_cursor_file(self) -> int:
        """The cursor file, holding two valid slots (written once here, then only overwritten)."""
        path = self.root / "cursor"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size != 2 * _SLOT_SIZE or self._cursor_seq == 0:
            seq, (seg, off) = self._cursor_seq + 1, self._cursor
            blob = encode_slot(seq, seg, off) + encode_slot(seq, seg, off)
            os.pwrite(fd, blob, 0)
            os.ftruncate(fd, 2 * _SLOT_SIZE)
            os.fsync(fd)
            self._cursor_seq = seq
        self._persisted = self._cursor
        return fd

    def _recover_segment(self, n: int, start: int) -> int:
        """Size of segment ``n`` after cutting a torn tail; counts its unpublished records."""
        path = _segment_path(self.root, n)
        if not path.exists():
            path.touch(mode=0o600)
            return 0
        buf = path.read_bytes()
        start = min(start, len(buf))
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
        return (
            sum(self._sizes.values())
            - self._cursor[1]
            - sum(size for n, size in self._sizes.items() if n < self._cursor[0])
        )

    @property
    def used_bytes(self) -> int:
        """Bytes of segment files on disk (what ``max_bytes`` caps)."""
        return sum(self._sizes.values())

    @property
    def depth(self) -> int:
        """Records accepted and not yet published."""
        return self._depth

    def writable(self) -> bool:
        """For readiness: the directory accepts writes and the spool is not closed."""
        return not self._closed and os.access(self.root, os.W_OK)

    def append(self, records: Iterable[tuple[str, str, bytes, dict[str, str], float]]) -> int:
        """Append records with one write; returns the sync ticket (see ``wait_durable``).

        All or nothing: raises SpoolFull when the cap would be exceeded and SpoolWriteFailed
        when the disk refused the write; in both cases nothing of the append stays on disk.
        """
        records = list(records)
        blob = b"".join(frame(*r) for r in records)
        n_records = len(records)
        with self._lock:
            if self._closed:
                raise SpoolFull("spool is closed")
            if self.used_bytes + len(blob) > self.max_bytes:
                raise SpoolFull(
                    f"spool holds {self.used_bytes} of {self.max_bytes} bytes"
                    f" ({self.unpublished_bytes} unpublished)"
                )
            try:
                if self._torn is not None:
                    os.ftruncate(self._fd, self._torn)
                    self._torn = None
                size = self._sizes[self._write_seg]
                if size and (size + len(blob) > self.segment_bytes or self._rotate_next):
                    self._rotate()
                self._write(blob)
            except OSError as exc:
                self._rotate_next = True
                self._report("append", exc)
                raise SpoolWriteFailed(self.root, exc) from None
            self._rotate_next = False
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

    def _write(self, blob: bytes) -> None:
        """Write ``blob`` at the end of the write segment, or leave the segment as it was."""
        start = self._sizes[self._write_seg]
        view, written = memoryview(blob), 0
        try:
            while written < len(blob):  # short writes are legal (a disk filling up gives them)
                written += os.write(self._fd, view[written:])
        except OSError:
            if written:  # os.write raises only when it wrote nothing: earlier calls wrote these
                try:  # roll back to the last whole record, so the next append follows it
                    os.ftruncate(self._fd, start)
                except OSError:
                    self._torn = start  # cut before the next append (readers stop at _sizes)
            raise

    def _report(self, op: str, exc: OSError) -> None:
        if self.on_error is not None:
            self.on_error(op, exc)

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
        """Start the next segment (caller holds the lock); on OSError nothing changed."""
        path = _segment_path(self.root, self._write_seg + 1)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if self.fsync_mode != "never":
                os.fsync(self._fd)
                _fsync_dir(self.root)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = fd
        self._write_seg += 1
        self._sizes[self._write_seg] = 0

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
                except OSError as exc:
                    with self._lock:
                        rotated = fd != self._fd  # rotation fsynced it before closing it
                    if not rotated:  # not on disk: waiters keep waiting, try again shortly
                        self._report("fsync", exc)
                        time.sleep(0.1)
                        continue
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
        elif off >= size:
            self._read_pos = (seg, off)
        return records

    def _has_unread(self) -> bool:
        seg, off = self._read_pos
        return off < self._sizes.get(seg, 0) or seg < self._write_seg

    def rewind(self) -> None:
        """Read again from the cursor (after the publisher dropped its in-flight state)."""
        with self._lock:
            self._read_pos = self._cursor

    @property
    def cursor_dirty(self) -> bool:
        """The cursor moved since it was last written (a write failed): ``persist_cursor`` again."""
        return self._persisted != self._cursor

    def commit(self, segment: int, end: int, count: int) -> None:
        """Everything up to (segment, end) is published: move the cursor, drop old segments.

        Never raises for a disk error: the cursor file is retried by the next call (a stale
        cursor only means duplicates after a restart, never loss).
        """
        with self._lock:
            if (segment, end) > self._cursor:
                self._cursor = (segment, end)
                self._depth -= count
            seg, off = self._cursor
            if off >= self._sizes.get(seg, 0):  # the cursor's segment is wholly published
                if seg < self._write_seg:
                    self._cursor = (seg + 1, 0)
                elif off and (off >= self.segment_bytes // 4 or self._rotate_next):
                    try:  # everything is published: give the next appends a fresh segment
                        self._rotate()
                        self._cursor = (self._write_seg, 0)
                    except OSError as exc:
                        self._report("rotate", exc)
            old = [n for n in self._sizes if n < self._cursor[0]]
            for n in old:
                del self._sizes[n]
        self.persist_cursor()
        # A wholly published segment can go before the cursor file says so: on restart a
        # cursor in a missing segment moves to the next one (see __init__).
        for n in old:
            try:
                _segment_path(self.root, n).unlink(missing_ok=True)
            except OSError as exc:
                self._report("unlink", exc)

    def persist_cursor(self) -> bool:
        """Write the cursor to the slot not holding the newest one; False if the disk refused."""
        with self._persist_lock:
            with self._lock:
                cursor = self._cursor
            if cursor == self._persisted or self._cursor_fd < 0:
                return True
            seq = self._cursor_seq + 1
            try:
                os.pwrite(self._cursor_fd, encode_slot(seq, *cursor), (seq % 2) * _SLOT_SIZE)
                if self.fsync_mode != "never":
                    os.fsync(self._cursor_fd)
            except OSError as exc:
                self._report("cursor", exc)
                return False
            self._cursor_seq, self._persisted = seq, cursor
            return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self.fsync_mode != "never":
                    os.fsync(self._fd)
            except OSError as exc:
                self._report("fsync", exc)
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
        self.persist_cursor()
        with self._persist_lock:
            os.close(self._cursor_fd)
            self._cursor_fd = -1
        os.close(self._lock_fd)  # releases the flock
