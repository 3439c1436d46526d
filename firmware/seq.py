"""Counters on flash that never go backwards, across reboots and power loss.

``PersistedInt(board, name)`` keeps one non-decreasing integer in two slot files
(``NAME.a`` / ``NAME.b`` under ``board.storage_root``), each ``b"<value> <crc32 hex>\\n"``. A write
always overwrites the slot holding the OLDER value, so a power cut in the middle of a write can
only tear that slot: the other still holds the last completed value, and reading takes the
largest slot whose checksum is good. No rename is needed (works on LittleFS and FAT alike).

``SeqCounter(board, floor=0)`` hands out reading ``seq`` numbers (>= 1), strictly increasing for
ever (with ``name="conn"``: the uplink's connection numbers, firmware/uplink.py). It reserves
blocks of ``BLOCK`` numbers: before using any number of a block it persists the start of the NEXT
block; at boot it starts from that persisted value, skipping what was left of the block in use
when the power went. Flash wear: one write per ``BLOCK`` readings. ``floor``
(e.g. the highest ``seq`` the outbox has ever held) is a second line of defence::

    seq = SeqCounter(board, floor=outbox.max_seq)
    n = seq.next()   # 1, 2, 3 ... never reused
    seq.last         # the last number handed out (0 before any)
"""
import binascii
import os

from micropython import const

from firmware.errors import FlashError

BLOCK = const(64)


class SeqError(FlashError):
    """Persisting a counter failed: no number may be used."""


def _sync():
    f = getattr(os, "sync", None)
    if f is not None:
        f()


def _encode(value):
    s = str(value).encode()
    return s + b" " + ("%08x" % (binascii.crc32(s) & 0xFFFFFFFF)).encode() + b"\n"


def _decode(data):
    """The value in a slot's bytes, or None when the slot is torn/corrupt."""
    try:
        if not data.endswith(b"\n"):
            return None
        v, c = data[:-1].split(b" ")
        if int(c, 16) != binascii.crc32(v) & 0xFFFFFFFF:
            return None
        n = int(v)
        return n if n >= 0 else None
    except (ValueError, TypeError):
        return None


class PersistedInt:
    """A non-decreasing integer kept in two checksummed slot files. ``value`` is ``None`` when
    nothing was ever stored; ``set(v)`` requires ``v >= value`` and returns after the write."""

    def __init__(self, board, name):
        root = board.storage_root
        self._paths = (root + "/" + name + ".a", root + "/" + name + ".b")
        self._slots = [self._read(p) for p in self._paths]
        self.value = None
        for v in self._slots:
            if v is not None and (self.value is None or v > self.value):
                self.value = v

    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f:
                return _decode(f.read(48))
        except OSError:
            return None

    def set(self, value):
        if self.value is not None and value < self.value:
            raise ValueError("persisted counter cannot go back from %d to %d" % (self.value, value))
        a, b = self._slots
        # overwrite the slot with the older (or no) value; the newest stays intact
        i = 0 if (a is None or (b is not None and a <= b)) else 1
        try:
            with open(self._paths[i], "wb") as f:
                f.write(_encode(value))
            _sync()
        except OSError as e:
            self._slots[i] = None  # unknown content now
            raise SeqError("cannot persist counter: " + str(e))
        self._slots[i] = value
        self.value = value


class SeqCounter:
    """Reading sequence numbers, >= 1, strictly increasing for ever (see module docstring)."""

    def __init__(self, board, floor=0, name="seq"):
        self._store = PersistedInt(board, name)
        start = self._store.value or 1
        if floor + 1 > start:
            start = floor + 1
        self._next = start
        self._limit = start  # nothing reserved yet in this boot
        self.last = start - 1

    def next(self):
        """The next number; persists a new block reservation first when needed (SeqError)."""
        if self._next >= self._limit:
            self._store.set(self._next + BLOCK)
            self._limit = self._next + BLOCK
        n = self._next
        self._next = n + 1
        self.last = n
        return n

    def peek(self):
        """The number ``next()`` would return."""
        return self._next
