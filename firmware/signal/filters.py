"""Per-channel front end: DC tracking and band-pass, fixed point, no allocation per sample.

``BandPass.step(x)`` takes one ADC sample (counts, 0–262 143) and returns the pulsatile part,
**inverted** so that blood volume goes up (transmitted light falls in systole), in counts × 8:

* DC: one-pole IIR ``dc += (x·256 − dc) >> 7`` in Q8 (time constant 128 samples = 1.28 s at 100 Hz,
  high-pass corner 0.12 Hz). A jump of more than a quarter of the DC (finger placed or lifted,
  pressure step) re-seeds the tracker at once instead of waiting ~4 s, and counts in ``jumps``;
  for 1.28 s after a re-seed the tracker "shifts gears" (time constants 8, 16, 32, 64 samples,
  then 128) so that the rest of the landing transient is followed instead of ringing through the
  band-pass for seconds;
* low-pass: an 8-sample boxcar (running sum over a ring; −3 dB at 5.5 Hz, first null at 12.5 Hz at
  100 Hz) of ``dc − x``; the sum keeps 3 extra bits of resolution.

* a second high-pass on the boxcar output: one-pole, ``lp`` in Q4, time constant 64 samples
  (corner 0.25 Hz): with the DC tracker, a second-order roll-off below the slowest heart rate
  (30 bpm = 0.5 Hz) that removes baseline wander and respiration, whose slope over an upstroke
  would otherwise bias the amplitudes at low perfusion.

So the output is the 0.25–5.5 Hz band of the light signal. Both channels use the same filter, so
the ratio of their pulse amplitudes (SpO2's R) is unchanged by it.
"""
from array import array

from micropython import const

_DC_SHIFT = const(7)
_N = const(8)          # boxcar length (power of two)
_MASK = const(7)
_HP_SHIFT = const(6)
_GEAR_N = const(128)   # samples of faster DC tracking after a re-seed   # second high-pass: time constant 64 samples, corner 0.25 Hz


class BandPass:
    """DC tracker + boxcar low-pass for one channel. ``dc`` is the DC in counts × 256 (Q8)."""

    def __init__(self):
        self.buf = array("i", bytes(4 * _N))
        self.reset()

    def reset(self):
        buf = self.buf
        for i in range(_N):
            buf[i] = 0
        self.dc = 0
        self.sum = 0
        self.lp = 0
        self.i = 0
        self.jumps = 0
        self.g = _GEAR_N

    def step(self, x):
        """One sample (counts) -> the band-passed pulse, inverted, counts × 8."""
        dc = self.dc
        d = (x << 8) - dc
        if d > (dc >> 2) or -d > (dc >> 2):
            # first sample, finger placed/lifted, pressure step: re-seed and clear the boxcar
            dc = x << 8
            self.jumps += 1
            buf = self.buf
            for i in range(_N):
                buf[i] = 0
            self.sum = 0
            self.lp = 0
            self.g = 0
        else:
            g = self.g
            if g < _GEAR_N:
                # just after a re-seed: faster tracking (time constants 8, 16, 32, 64 samples)
                # so the rest of the landing transient does not ring through the filters
                self.g = g + 1
                dc += d >> (3 if g < 16 else 4 if g < 32 else 5 if g < 64 else 6)
            else:
                dc += d >> _DC_SHIFT
        self.dc = dc
        v = (dc >> 8) - x
        i = self.i
        buf = self.buf
        s = self.sum + v - buf[i]
        buf[i] = v
        self.i = (i + 1) & _MASK
        self.sum = s
        lp = self.lp + (((s << 4) - self.lp) >> _HP_SHIFT)
        self.lp = lp
        return s - (lp >> 4)
