"""Motion reference: an accelerometer's say on whether a pulse rate can be believed.

    mr = MotionRef()
    po = PulseOx(motion=mr)           # or po.motion = mr; None (the default): no motion reference
    for each accelerometer sample:    # 100 Hz, as the PPG
        mr.push_xyz(x, y, z)          # milli-g (or mr.push(magnitude_mg))

A regular motion (running steps, tapping, a shaking hand) makes the optical signal beat at its own
rate, and with an optical sensor alone a regular cadence looks like a pulse: on TROIKA (wrist,
running) every test tried on the PPG alone let such windows through (docs/signal.md, "Tried and not
kept"). What wearables and motion-tolerant oximeters do is look at the motion itself. Each report,
``PulseOx`` asks ``check(hr_x10)`` about the rate it is about to report; the answer (``why``):

* ``COINCIDENT``: the motion is not small (RMS of the band-passed magnitude >= ``GATE_MG``, 100
  mg) and it has a spectral line at the pulse rate, at half of it or at twice it that holds at
  least 1/10 of the motion's power over the last 8 s (the HR window). The rate may be the pulse or
  the motion, and no test tells which: withheld. Why these numbers: over 8 s at 25 Hz one DFT bin
  of a motion without a dominant rhythm holds ~1/36 of the 0.5-5 Hz power, so 1/10 is ~4 times
  that, while a running or tapping cadence puts 30-80 % of it in its bin (measured on TROIKA);
  the bin is 7.5 bpm wide, so rates within ~4-6 bpm of the cadence (or its half/double) count as
  coinciding. Below 100 mg RMS a motion does not make the beats (TROIKA's standing stretches,
  40-90 mg, read right) and a still limb shows the pulse itself (the ballistocardiogram) at the
  pulse rate, which must not withhold it.
* ``VIGOROUS``: the motion's RMS is at least ``HIGH_MG`` (1.5 g): beyond the most vigorous motion
  the chain was validated under (running, 0.3-1.0 g RMS at the wrist on TROIKA), withheld
  whatever the rate.
* ``NONE``: neither (also while fewer than 4 s of motion samples are in).

A withheld report says ``motion`` (``pulseox.MOTION``), the protocol's existing reason; HR and SpO2
both go. Without a ``MotionRef`` the chain is exactly as it was.

Per sample (``push``): a DC tracker (time constant 0.64 s, -3 dB at 0.25 Hz: gravity and posture
out, the 20-bpm half of a 40-bpm pulse kept), four samples summed into one at 25 Hz, a ring of
10 s; small ints, nothing allocated. Per report (``check``): one pass for the scale and the
energy, and only when the motion is above the gate, one pass of three single-bin DFTs (cosine table
lookups) over 200 samples. Magnitudes: ``push_xyz`` takes the square root of x^2 + y^2 + z^2 by two
Newton steps from the previous sample's magnitude (exact to ~1 mg at 100 Hz).
"""
from array import array

from micropython import const

from firmware.signal.stats import isqrt

NONE = const(0)
COINCIDENT = const(1)
VIGOROUS = const(2)
WHY = ("none", "coincident", "vigorous")

GATE_MG = const(100)          # band-passed magnitude RMS below which the cadence rule is off
HIGH_MG = const(1500)         # ... at or above which every rate is withheld
SHARE_DIV = const(10)         # a line holding >= 1/10 of the motion power coincides

_DEC = const(4)               # 100 Hz -> 25 Hz
_FS_X10 = const(250)          # the decimated rate, Hz x 10
_WIN = const(200)             # 8 s at 25 Hz: the HR window
_MIN = const(100)             # 4 s before any verdict
_RING = const(256)
_RMASK = const(255)
_HP_SHIFT = const(6)          # DC tracker: 64 samples (0.64 s)
_AMP = const(128)             # samples scaled under 128 for the DFT: products stay small ints
_TAB = const(256)             # cosine table: 256 steps per cycle, Q10

# cos(2 pi i / 256) x 1024 for i = 0..64 (a quarter wave, as literals: the same integers on
# MicroPython's single-precision floats as on CPython), unfolded into the whole cycle at import
_QCOS = (
    1024, 1024, 1023, 1021, 1019, 1016, 1013, 1009, 1004, 999, 993, 987, 980, 972, 964, 955,
    946, 936, 926, 915, 903, 891, 878, 865, 851, 837, 822, 807, 792, 775, 759, 742, 724, 706,
    688, 669, 650, 630, 610, 590, 569, 548, 526, 505, 483, 460, 438, 415, 392, 369, 345, 321,
    297, 273, 249, 224, 200, 175, 150, 125, 100, 75, 50, 25, 0)
_COS = array("h", bytes(2 * _TAB))
for _i in range(_TAB):
    _j = _i & 127
    _v = _QCOS[_j] if _j <= 64 else -_QCOS[128 - _j]
    _COS[_i] = _v if _i < 128 else -_v


class MotionRef:
    """The motion reference; see the module docstring. ``rms_mg`` (the last check's motion RMS,
    milli-g, -1 before 4 s of samples), ``share_pm`` (the largest share of the motion power at the
    rate, its half or double, per mille; -1 when not computed) and ``why`` (``NONE``,
    ``COINCIDENT``, ``VIGOROUS``) say what the last ``check`` saw."""

    def __init__(self):
        self.ring = array("i", bytes(4 * _RING))
        self.reset()

    def reset(self):
        """Forget the motion (a new measurement)."""
        self.dc = -1
        self.acc = 0
        self.k = 0
        self.head = 0
        self.fill = 0
        self.mag = 1000
        self.rms_mg = -1
        self.share_pm = -1
        self.why = NONE

    def push_xyz(self, x, y, z):
        """One accelerometer sample, milli-g per axis (|a| < 16 g)."""
        s = x * x + y * y + z * z
        g = self.mag
        g = (g + s // g) >> 1
        if g < 1:
            g = 1
        g = (g + s // g) >> 1
        if g < 1:
            g = 1
        self.mag = g
        # as push(g), inlined: a call per sample is a fifth of this path's cost on the VM
        dc = self.dc
        if dc < 0:
            dc = g << 8
        dc += ((g << 8) - dc) >> _HP_SHIFT
        self.dc = dc
        a = self.acc + g - (dc >> 8)
        k = self.k + 1
        if k == _DEC:
            h = self.head
            self.ring[h] = a
            self.head = (h + 1) & _RMASK
            if self.fill < _WIN:
                self.fill += 1
            a = 0
            k = 0
        self.acc = a
        self.k = k

    def push(self, m):
        """One motion magnitude sample |a|, milli-g (int), at 100 Hz."""
        dc = self.dc
        if dc < 0:
            dc = m << 8
        dc += ((m << 8) - dc) >> _HP_SHIFT
        self.dc = dc
        a = self.acc + m - (dc >> 8)
        k = self.k + 1
        if k == _DEC:
            h = self.head
            self.ring[h] = a
            self.head = (h + 1) & _RMASK
            if self.fill < _WIN:
                self.fill += 1
            a = 0
            k = 0
        self.acc = a
        self.k = k

    def check(self, hr_x10):
        """Whether a pulse rate of ``hr_x10`` (bpm x 10) should be withheld for motion: ``NONE``
        (0) or the reason, ``COINCIDENT`` or ``VIGOROUS`` (also kept in ``why``)."""
        m = self.fill
        self.why = NONE
        self.share_pm = -1
        if m < _MIN:
            self.rms_mg = -1
            return NONE
        ring = self.ring
        h0 = self.head - m
        mx = 0
        for j in range(m):
            v = ring[(h0 + j) & _RMASK]
            if v > mx:
                mx = v
            elif -v > mx:
                mx = -v
        s = 0
        while (mx >> s) >= _AMP:
            s += 1
        tot = 0
        e = 0
        for j in range(m):
            x = ring[(h0 + j) & _RMASK] >> s
            tot += x
            e += x * x
        e -= (tot * tot) // m           # the window's mean out: power about it
        # RMS in mg: samples are sums of 4 (mg x 4) shifted right by s
        r = isqrt(e // m) << s
        self.rms_mg = r >> 2
        if self.rms_mg >= HIGH_MG:
            self.why = VIGOROUS
            return VIGOROUS
        if self.rms_mg < GATE_MG or hr_x10 <= 0:
            return NONE
        # single-bin DFTs at f, f/2, 2f; phase in 1/65536 cycle per 25-Hz sample
        d1 = (hr_x10 << 16) // (_FS_X10 * 60)
        d2 = d1 >> 1
        d3 = d1 << 1
        p1 = p2 = p3 = 0
        r1 = i1 = r2 = i2 = r3 = i3 = 0
        c = _COS
        for j in range(m):
            x = ring[(h0 + j) & _RMASK] >> s
            t = p1 >> 8
            r1 += x * c[t]
            i1 += x * c[(t - 64) & _RMASK]
            t = p2 >> 8
            r2 += x * c[t]
            i2 += x * c[(t - 64) & _RMASK]
            t = p3 >> 8
            r3 += x * c[t]
            i3 += x * c[(t - 64) & _RMASK]
            p1 = (p1 + d1) & 0xFFFF
            p2 = (p2 + d2) & 0xFFFF
            p3 = (p3 + d3) & 0xFFFF
        # share = 2 |X|^2 / (m E) >= 1/SHARE_DIV, i.e. |X|^2 >= m E / (2 SHARE_DIV); X in x units
        lim = (m * e) // (2 * SHARE_DIV)
        r1 >>= 10
        i1 >>= 10
        r2 >>= 10
        i2 >>= 10
        r3 >>= 10
        i3 >>= 10
        best = r1 * r1 + i1 * i1
        p = r2 * r2 + i2 * i2
        if p > best:
            best = p
        p = r3 * r3 + i3 * i3
        if p > best:
            best = p
        self.share_pm = best // ((m * e) // 2000 + 1)
        if best >= lim and e > 0:
            self.why = COINCIDENT
            return COINCIDENT
        return NONE
