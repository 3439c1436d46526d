"""Body temperature from repeated MLX90614 object readings, in hundredths of °C (ints only).

    tp = TempProcessor(cal_gain_ppm=1000000, cal_offset_cc=0, site="forehead")
    for _ in range(16):
        tp.add(driver.object_cc(), driver.ambient_cc())   # ambient optional
    temp_cc, flags = tp.result()                        # None when no reading can be given

Steps (docs/signal.md):

1. robust average: median and median absolute deviation (MAD) of up to ``N_MAX`` reads; reads
   further than max(4·1.4826·MAD, 0.15 °C) from the median are rejected (a hand moving, a read
   of hair or the room); the mean of the rest, rounded. At least 3 reads and half of them must
   remain, and the MAD must be ≤ 0.20 °C, else flag ``NO_READING``;
2. calibration: T = T·gain + offset (``cal_gain_ppm``: 1 000 000 = unity; ``cal_offset_cc``);
   ``object_cc`` keeps this calibrated surface temperature;
3. site offset, forehead → core (``site="forehead"``): the heat-balance form
   T_core = T_s + k·(T_s − T_a) with k = 0.075 when the ambient (sensor die) temperature T_a is
   known, else + 0.90 °C (the same relation at a 24 °C room); ``site="none"`` adds nothing;
4. flags: ``FEVER`` at ≥ 38.00 °C, ``LO`` below 34.00 °C, ``HI`` above 42.50 °C (the rated
   display range: outside it the value is not shown as a body temperature); the limits are
   firmware/limits.py's.
"""
from array import array

from micropython import const

from firmware.limits import FEVER_CC, RATED_HI_CC, RATED_LO_CC
from firmware.signal.stats import mad, median_sorted, sort

FEVER = const(1)
LO = const(2)
HI = const(4)
NO_READING = const(8)
FLAG_NAMES = ("fever", "LO", "HI", "no_reading")   # bit i of the flags -> FLAG_NAMES[i]

SITE_K_MILLI = const(75)         # forehead heat-balance coefficient k × 1000
SITE_FIXED_CC = const(90)        # forehead -> core without an ambient reading, 0.01 °C
N_MAX = const(32)
_REJECT_MIN_CC = const(15)
_MAD_MAX_CC = const(20)          # reads scattering more than this (0.2 °C MAD) give no reading
SITES = ("forehead", "none")


def flag_names(flags):
    """The names of the bits set in ``flags``."""
    return [FLAG_NAMES[i] for i in range(len(FLAG_NAMES)) if flags & (1 << i)]


def _div_round(a, b):
    return (a + b // 2) // b if a >= 0 else -((-a + b // 2) // b)


class TempProcessor:
    def __init__(self, cal_gain_ppm=1000000, cal_offset_cc=0, site="forehead"):
        if site not in SITES:
            raise ValueError("site must be one of " + ", ".join(SITES) + ", got " + repr(site))
        if not 500000 <= cal_gain_ppm <= 1500000:
            raise ValueError("cal_gain_ppm must be within 500000–1500000 (1000000 = unity)")
        if not -1000 <= cal_offset_cc <= 1000:
            raise ValueError("cal_offset_cc must be within ±10.00 °C")
        self.gain_ppm = cal_gain_ppm
        self.offset_cc = cal_offset_cc
        self.site = site
        self.reads = array("i", bytes(4 * N_MAX))
        self.tmp = array("i", bytes(4 * N_MAX))
        self.reset()

    def reset(self):
        self.n = 0
        self.amb_sum = 0
        self.amb_n = 0
        self.object_cc = None
        self.n_used = 0
        self.n_rejected = 0

    def add(self, obj_cc, amb_cc=None):
        """One object reading (0.01 °C); the sensor's ambient reading optionally. Beyond
        ``N_MAX`` reads the oldest are overwritten."""
        self.reads[self.n % N_MAX] = obj_cc
        self.n += 1
        if amb_cc is not None:
            self.amb_sum += amb_cc
            self.amb_n += 1

    def result(self):
        """(temp_cc or None, flags): body temperature in 0.01 °C (site offset applied)."""
        m = self.n if self.n < N_MAX else N_MAX
        self.object_cc = None
        self.n_used = 0
        self.n_rejected = 0
        if m < 3:
            return None, NO_READING
        a = self.tmp
        for i in range(m):
            a[i] = self.reads[i]
        sort(a, m)
        med = median_sorted(a, m)
        d = self.reads
        dev = mad(d, m, med, a)
        if dev > _MAD_MAX_CC:
            return None, NO_READING         # reads scatter: the aim or the subject is moving
        lim = (dev * 5930) // 1000          # 4 × 1.4826 × MAD
        if lim < _REJECT_MIN_CC:
            lim = _REJECT_MIN_CC
        tot = 0
        k = 0
        for i in range(m):
            v = d[i]
            if -lim <= v - med <= lim:
                tot += v
                k += 1
        self.n_used = k
        self.n_rejected = m - k
        if k < 3 or 2 * k < m:
            return None, NO_READING
        t = _div_round(tot, k)
        t = t + _div_round(t * (self.gain_ppm - 1000000), 1000000) + self.offset_cc
        self.object_cc = t
        if self.site == "forehead":
            if self.amb_n:
                ta = _div_round(self.amb_sum, self.amb_n)
                t = t + _div_round((t - ta) * SITE_K_MILLI, 1000)
            else:
                t = t + SITE_FIXED_CC
        flags = 0
        if t >= FEVER_CC:
            flags |= FEVER
        if t < RATED_LO_CC:
            flags |= LO
        if t > RATED_HI_CC:
            flags |= HI
        return t, flags

