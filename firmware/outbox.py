"""The outbox: signed readings kept on flash until the gateway's signed ``ack`` names them.

One append-only file, ``outbox.bin`` under ``board.storage_root``. Every record is a 14-byte
header and its data::

    magic b"NB" | kind (1) | 0 (1) | length (2, LE) | seq (4, LE) | CRC32 (4, LE) | data
    kind R  a signed reading (data = the JWS bytes)
    kind A  the reading ``seq`` was acknowledged by the gateway (no data)
    kind D  the reading ``seq`` was dropped because the outbox was full (no data)
    kind C  written first by a compaction: seq = drops so far, data = 4-byte highest seq

The CRC covers kind, length, seq and data. Nothing already written is ever rewritten: an ack or a
drop is a new small record (a tombstone). When the dead part is large the file is compacted: the
live records are copied to ``outbox.tmp``, which is renamed over ``outbox.bin``.

Recovery at open: the file is scanned; the first record whose magic, length or CRC is wrong (a
write torn by a power cut can only be the last one) ends the valid part, and the file is rewritten
without it, so the others are never lost. Memory: two ``array('I')`` of the pending seqs and
their file offsets (8 bytes per waiting reading).

    box = Outbox(board, capacity=1000)
    box.append(seq, token)          # on flash (flushed, synced) before anybody sends it
    for seq, token in box.pending(after=0, limit=8): ...
    box.ack([seq, ...])             # the gateway stored these; unknown seqs are ignored
    box.depth, box.drops, box.max_seq, box.bytes_per_reading
"""
import array
import binascii
import os

from micropython import const

from firmware.errors import FlashError

_HDR = const(14)
_MAX_DATA = const(4096)
_COMPACT_MIN = const(16384)  # bytes of dead records before a compaction is worth it
_R = const(82)  # "R"
_A = const(65)  # "A"
_D = const(68)  # "D"
_C = const(67)  # "C"

HEADER_BYTES = _HDR


class OutboxError(FlashError):
    """The outbox could not be written (flash full, I/O error)."""


def _sync():
    f = getattr(os, "sync", None)
    if f is not None:
        f()


def _u32(b, i):
    return b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)


def _record(kind, seq, data):
    n = len(data)
    h = bytearray(_HDR)
    h[0] = 78  # "N"
    h[1] = 66  # "B"
    h[2] = kind
    h[4] = n & 0xFF
    h[5] = n >> 8
    for i in range(4):
        h[6 + i] = (seq >> (8 * i)) & 0xFF
    crc = binascii.crc32(data, binascii.crc32(memoryview(h)[2:10])) & 0xFFFFFFFF
    for i in range(4):
        h[10 + i] = (crc >> (8 * i)) & 0xFF
    return bytes(h) + bytes(data)


class Outbox:
    """See the module docstring. ``capacity`` is the number of readings kept (>= 1);
    ``name`` the file name on flash."""

    def __init__(self, board, capacity=1000, name="outbox"):
        if capacity < 1:
            raise ValueError("outbox capacity must be >= 1")
        self.capacity = capacity
        root = board.storage_root
        self.path = root + "/" + name + ".bin"
        self._tmp = root + "/" + name + ".tmp"
        self._seqs = array.array("I")
        self._offs = array.array("I")
        self.drops = 0
        self.max_seq = 0      # highest seq ever appended (survives compaction)
        self.recovered = 0    # bytes of torn tail discarded at open
        self._size = 0        # bytes in the file
        self._live = 0        # bytes of the records still pending (and the C record)
        self._cbytes = 0      # bytes of the C record at the start of the file
        self._open()

    # --- opening and recovery ---
    def _open(self):
        try:
            os.stat(self.path)
        except OSError:
            try:  # a compaction renamed away the old file but not yet the new one in
                os.stat(self._tmp)
                os.rename(self._tmp, self.path)
            except OSError:
                pass
        try:
            os.remove(self._tmp)  # an unfinished compaction; the main file is intact
        except OSError:
            pass
        good = self._scan()
        if good < self._size:
            self.recovered = self._size - good
            self._size = good
            self._compact()

    def _scan(self):
        """Index the file; returns the offset where the valid records end."""
        try:
            f = open(self.path, "rb")
        except OSError:
            return 0
        acked = {}
        hdr = bytearray(_HDR)
        off = 0
        try:
            while True:
                n = f.readinto(hdr)
                if not n:
                    break
                if n < _HDR or hdr[0] != 78 or hdr[1] != 66:
                    break
                kind = hdr[2]
                ln = hdr[4] | (hdr[5] << 8)
                seq = _u32(hdr, 6)
                if ln > _MAX_DATA:
                    break
                data = f.read(ln) if ln else b""
                if len(data) != ln:
                    break
                crc = binascii.crc32(data, binascii.crc32(memoryview(hdr)[2:10])) & 0xFFFFFFFF
                if crc != _u32(hdr, 10):
                    break
                if kind == _R:
                    self._seqs.append(seq)
                    self._offs.append(off)
                    self._live += _HDR + ln
                    if seq > self.max_seq:
                        self.max_seq = seq
                elif kind == _A or kind == _D:
                    acked[seq] = 1
                    if kind == _D:
                        self.drops += 1
                elif kind == _C and ln == 4:
                    self.drops += seq
                    m = _u32(data, 0)
                    if m > self.max_seq:
                        self.max_seq = m
                    self._live += _HDR + 4
                    self._cbytes = _HDR + 4
                else:
                    break
                off += _HDR + ln
            f.seek(0, 2)
            self._size = f.tell()
        finally:
            f.close()
        if acked:
            keep_s = array.array("I")
            keep_o = array.array("I")
            for i in range(len(self._seqs)):
                if self._seqs[i] not in acked:
                    keep_s.append(self._seqs[i])
                    keep_o.append(self._offs[i])
                else:
                    self._live -= _HDR + self._length_at(self._offs[i])
            self._seqs, self._offs = keep_s, keep_o
        return off

    def _length_at(self, off):
        with open(self.path, "rb") as f:
            f.seek(off)
            h = f.read(_HDR)
        return h[4] | (h[5] << 8)

    # --- writing ---
    def _write(self, rec):
        try:
            with open(self.path, "ab") as f:
                f.write(rec)
                f.flush()
            _sync()
        except OSError as e:
            raise OutboxError("cannot write the outbox: " + str(e))
        off = self._size
        self._size += len(rec)
        return off

    def append(self, seq, msg):
        """Keep the signed reading ``msg`` (bytes) under ``seq`` (> every earlier seq). When the
        outbox is full the oldest waiting reading is dropped (``drops`` + 1). Returns after the
        record is flushed to flash."""
        if seq <= self.max_seq:
            raise ValueError("seq %d is not above the outbox's highest %d" % (seq, self.max_seq))
        if not 0 < len(msg) <= _MAX_DATA:
            raise ValueError("a reading must be 1..%d bytes" % _MAX_DATA)
        while len(self._seqs) >= self.capacity:
            old = self._seqs[0]
            self._write(_record(_D, old, b""))
            self._forget(0)
            self.drops += 1
        off = self._write(_record(_R, seq, msg))
        self._seqs.append(seq)
        self._offs.append(off)
        self._live += _HDR + len(msg)
        self.max_seq = seq
        self._maybe_compact()

    def _forget(self, i):
        self._live -= _HDR + self._length_at(self._offs[i])
        self._seqs = self._seqs[:i] + self._seqs[i + 1:]
        self._offs = self._offs[:i] + self._offs[i + 1:]

    def _index(self, seq):
        lo, hi = 0, len(self._seqs)
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._seqs[mid] < seq:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(self._seqs) and self._seqs[lo] == seq else -1

    def ack(self, seqs):
        """Mark the named readings acknowledged (removed); unknown seqs are ignored.
        Returns how many were removed."""
        n = 0
        for s in seqs:
            if not isinstance(s, int) or isinstance(s, bool):
                continue
            i = self._index(s)
            if i < 0:
                continue
            self._write(_record(_A, s, b""))
            self._forget(i)
            n += 1
        if n:
            self._maybe_compact()
        return n

    # --- compaction ---
    def _maybe_compact(self):
        dead = self._size - self._live
        if dead >= _COMPACT_MIN and dead > self._live:
            self._compact()

    def _compact(self):
        """Copy the live records to a new file and rename it over the old one."""
        m = self.max_seq
        c = _record(_C, self.drops, bytes(((m & 0xFF), (m >> 8) & 0xFF, (m >> 16) & 0xFF, (m >> 24) & 0xFF)))
        offs = array.array("I")
        try:
            with open(self._tmp, "wb") as out:
                out.write(c)
                pos = len(c)
                try:
                    src = open(self.path, "rb")
                except OSError:
                    src = None
                if src is not None:
                    try:
                        for o in self._offs:
                            src.seek(o)
                            h = src.read(_HDR)
                            ln = h[4] | (h[5] << 8)
                            out.write(h)
                            out.write(src.read(ln))
                            offs.append(pos)
                            pos += _HDR + ln
                    finally:
                        src.close()
                out.flush()
            _sync()
            try:
                os.rename(self._tmp, self.path)
            except OSError:  # filesystems whose rename does not replace
                os.remove(self.path)
                os.rename(self._tmp, self.path)
            _sync()
        except OSError as e:
            raise OutboxError("outbox compaction failed: " + str(e))
        self._offs = offs
        self._size = pos
        self._live = pos
        self._cbytes = len(c)

    # --- reading ---
    @property
    def depth(self):
        """Readings waiting for the gateway's ack."""
        return len(self._seqs)

    @property
    def size(self):
        """Bytes the outbox file takes on flash now."""
        return self._size

    @property
    def bytes_per_reading(self):
        """Flash bytes one reading costs while it waits: its record plus its ack tombstone
        (averaged over the readings now pending; 0 when empty)."""
        n = len(self._seqs)
        if not n:
            return 0
        return (self._live - self._cbytes) // n + _HDR

    def contains(self, seq):
        return self._index(seq) >= 0

    def seqs(self):
        """The pending seqs in order (a copy)."""
        return list(self._seqs)

    def pending(self, after=0, limit=None):
        """Yield ``(seq, msg_bytes)`` of waiting readings with seq > ``after``, in seq order, at
        most ``limit`` of them. Do not ``append``/``ack`` while iterating: take a bounded
        ``list(box.pending(after, limit))`` first."""
        i = 0
        n = len(self._seqs)
        while i < n and self._seqs[i] <= after:
            i += 1
        count = 0
        if i >= n:
            return
        f = open(self.path, "rb")
        try:
            while i < len(self._seqs) and (limit is None or count < limit):
                f.seek(self._offs[i])
                h = f.read(_HDR)
                ln = h[4] | (h[5] << 8)
                s = self._seqs[i]
                data = f.read(ln)
                count += 1
                i += 1
                yield s, data
        finally:
            f.close()
