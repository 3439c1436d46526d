"""Virtual clock: firmware time that runs as fast as the test wants.

Ticks follow MicroPython's ``time.ticks_*`` semantics with a period of 2**30 so that every value
stays a small int (no heap allocation on MicroPython). Time advances only through ``sleep_*`` and
``advance_us``: a simulated sensor sees exactly the time the firmware spent waiting.
"""
from micropython import const

_PERIOD = const(0x40000000)  # 2**30
_MASK = const(0x3FFFFFFF)
_HALF = const(0x20000000)


class VirtualClock:
    def __init__(self, unix_time=None):
        self._us = 0          # ticks_us, wrapped
        self._sub_ms = 0      # microseconds not yet counted in _ms
        self._ms = 0          # ticks_ms, wrapped
        self._epochs = 0      # whole seconds elapsed, for unix_time()
        self._sub_s = 0       # microseconds not yet counted in _epochs
        self._unix0 = unix_time  # None: never synced
        self.ntp_time = None  # what sync_time() would get from the network; None = NTP unreachable

    # --- MicroPython time API ---
    def ticks_us(self):
        return self._us

    def ticks_ms(self):
        return self._ms

    def ticks_diff(self, a, b):
        return ((a - b + _HALF) & _MASK) - _HALF

    def ticks_add(self, t, d):
        return (t + d) & _MASK

    def sleep_us(self, us):
        if us > 0:
            self.advance_us(us)

    def sleep_ms(self, ms):
        if ms > 0:
            self.advance_us(ms * 1000)

    def advance_us(self, us):
        self._us = (self._us + us) & _MASK
        s = self._sub_ms + us
        self._ms = (self._ms + s // 1000) & _MASK
        self._sub_ms = s % 1000
        s = self._sub_s + us
        self._epochs += s // 1000000
        self._sub_s = s % 1000000

    # --- wall clock ---
    def unix_time(self):
        if self._unix0 is None:
            return None
        return self._unix0 + self._epochs

    def sync_time(self):
        if self.ntp_time is None:
            return False
        self._unix0 = self.ntp_time - self._epochs
        return True
