"""A minimal board for the communication-layer tests (firmware/boards/__init__.py contract, the
parts the uplink uses: clock, storage_root, network, urandom, unique_id, free_heap).

It runs unchanged on CPython and inside the MicroPython VM (tests exec this file's text there).
It stands in until ``sim.hardware.board.SimBoard`` can be built in every checkout; ``make_board``
prefers SimBoard when its sensor models are importable."""
import os

from sim.hardware.board import SimNetwork
from sim.hardware.clock import VirtualClock


class CommsBoard:
    name = "sim"

    def __init__(self, storage_root, unix_time=None, seed=1):
        self.clock = VirtualClock(unix_time)
        self.storage_root = storage_root
        self.network = SimNetwork()
        self.seed = seed
        self._rng = None
        try:
            os.mkdir(storage_root)
        except OSError:
            pass

    def urandom(self, n):
        if hasattr(os, "urandom"):
            return os.urandom(n)
        if self._rng is None:
            import random
            random.seed(self.seed)
            self._rng = random
        return bytes(self._rng.getrandbits(8) for _ in range(n))

    def unique_id(self):
        s = self.seed & 0xFFFFFF
        return bytes((0x24, 0x0A, 0xC4, s >> 16, (s >> 8) & 0xFF, s & 0xFF))

    def free_heap(self):
        try:
            import gc
            return gc.mem_free()
        except AttributeError:
            return 1 << 20

    def wdt_feed(self):
        pass


def make_board(storage_root, unix_time=None, seed=1):
    """SimBoard when it can be built here, else CommsBoard."""
    try:
        from sim.hardware.board import SimBoard
        return SimBoard(storage_root=storage_root, unix_time=unix_time, seed=seed)
    except ImportError:
        return CommsBoard(storage_root, unix_time, seed)
