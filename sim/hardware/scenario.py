"""Scenarios: the optical and thermal world the simulated sensors see.

A scenario is any object with these methods (all integers, so that models stay allocation-free
on MicroPython):

``optical(t_us, out)``    fill ``out[0]`` (red) and ``out[1]`` (IR) with the photodiode current the
                          LED light returns, in **pA per mA of LED drive current**, and ``out[2]``
                          with the ambient-light photocurrent in **pA** (independent of the LEDs).
                          ``out`` is a preallocated ``array('i', [0, 0, 0])``. ``t_us`` is the
                          virtual clock's time in µs since the scenario started (not wrapped).
``object_mc(t_us)``       temperature of what the MLX90614 aims at, milli-°C.
``ambient_mc(t_us)``      ambient (sensor die) temperature, milli-°C.
``finger(t_us)``          True while a finger is on the MAX30102 (for tests and ground truth only).

The MAX30102 model turns photocurrent into ADC counts: counts = (pA_per_mA × LED mA + ambient pA −
ambient cancellation) scaled to its ADC full-scale range (2048–16384 nA over 2^18 counts), clipped.
A typical fingertip returns ~200,000 pA/mA of IR DC (so ~1.4 µA at 7 mA), with a pulsatile part of
0.5–5 % of it; no finger returns almost nothing but ambient light.

The physiology synthesiser (``sim.physiology``, CPython + numpy) renders named scenarios
into arrays that ``ArrayScenario`` plays back inside the MicroPython VM.
"""
from micropython import const
import array

_US = const(1000000)


class ConstantScenario:
    """A steady world: fixed optical levels and temperatures (driver tests, self-test)."""

    def __init__(self, red=150000, ir=200000, ambient=0, object_mc=36800, ambient_mc=24000, finger=True):
        self.red = red
        self.ir = ir
        self.ambient = ambient
        self.obj = object_mc
        self.amb = ambient_mc
        self.has_finger = finger

    def optical(self, t_us, out):
        out[0] = self.red
        out[1] = self.ir
        out[2] = self.ambient

    def object_mc(self, t_us):
        return self.obj

    def ambient_mc(self, t_us):
        return self.amb

    def finger(self, t_us):
        return self.has_finger


class PulseScenario(ConstantScenario):
    """A simple pulsatile finger: triangle-wave pulse at ``bpm`` with a fractional AC depth per
    channel (per-mille). Integer-only; enough for driver and FIFO tests, not for signal accuracy."""

    def __init__(self, bpm=72, red_ac_pm=15, ir_ac_pm=25, **kw):
        super().__init__(**kw)
        self.period_us = (60 * _US) // bpm
        self.red_ac = (self.red * red_ac_pm) // 1000
        self.ir_ac = (self.ir * ir_ac_pm) // 1000

    def optical(self, t_us, out):
        ph = (t_us % self.period_us) * 1000 // self.period_us  # 0..999
        tri = ph * 2 if ph < 500 else (1000 - ph) * 2          # 0..1000
        out[0] = self.red - (self.red_ac * tri) // 1000
        out[1] = self.ir - (self.ir_ac * tri) // 1000
        out[2] = self.ambient


class ArrayScenario:
    """Plays back sampled arrays (``array('i')``) at ``rate_hz``: red and IR in pA/mA, ambient in
    pA, finger flags (``bytearray``), temperatures in milli-°C (arrays or constants). Holds the
    last sample after the end."""

    def __init__(self, rate_hz, red, ir, ambient=None, finger=None, object_mc=36800, ambient_mc=24000):
        self.rate = rate_hz
        self.red = red
        self.ir = ir
        self.amb_light = ambient
        self.fingers = finger
        self.obj = object_mc
        self.amb = ambient_mc
        self.n = len(red)

    def _i(self, t_us):
        i = (t_us // 1000) * self.rate // 1000
        return i if i < self.n else self.n - 1

    def optical(self, t_us, out):
        i = self._i(t_us)
        out[0] = self.red[i]
        out[1] = self.ir[i]
        out[2] = self.amb_light[i] if self.amb_light is not None else 0

    def object_mc(self, t_us):
        o = self.obj
        return o if isinstance(o, int) else o[self._i(t_us) * len(o) // self.n]

    def ambient_mc(self, t_us):
        a = self.amb
        return a if isinstance(a, int) else a[self._i(t_us) * len(a) // self.n]

    def finger(self, t_us):
        return True if self.fingers is None else bool(self.fingers[self._i(t_us)])

    @classmethod
    def load(cls, path):
        """Read a scenario file written by ``sim.physiology.write_scenario`` (header line
        of JSON, then little-endian int32 arrays red, ir, ambient and a byte array of finger flags)."""
        import json

        with open(path, "rb") as f:
            head = json.loads(f.readline())
            n = head["n"]
            arrs = []
            for _ in range(3):
                a = array.array("i", bytes(4 * n))
                f.readinto(a)
                arrs.append(a)
            fing = bytearray(n)
            f.readinto(fing)
        return cls(head["rate_hz"], arrs[0], arrs[1], arrs[2], fing,
                   head.get("object_mc", 36800), head.get("ambient_mc", 24000))
