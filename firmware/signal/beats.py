"""Beat detection on the band-passed IR pulse (pulse up), fixed point, no allocation per sample.

Peak/valley detection with hysteresis: while rising, follow the maximum; a peak is confirmed when
the signal has fallen ``hyst`` below it; while falling, follow the minimum; a valley is confirmed
when the signal has risen ``hyst`` above it. ``hyst`` = 3/8 of the tracked beat amplitude (never
below ``HYST_MIN``): large enough to ignore the dicrotic notch and noise, small enough to follow
a halving of the amplitude from one beat to the next. With no peak for 1.5 s (or 1.5 beats of a slower pulse) the
tracked amplitude decays (halves every ~0.4 s) so that the detector finds a pulse that became much weaker.

The beat's time is where the upstroke crosses 50 % of its valley-to-peak rise, linearly
interpolated between samples (Q8 = 1/256 sample): the steepest, least noise-sensitive point of
the pulse, and heart rate is therefore not quantised to whole sample lags. The last 256 samples
are kept in a ring (``buf``) for that search.

``amp_est`` tracks the beat amplitude, ``slope_est`` the upstroke's rise over 4 samples (both
exponential averages over ~4 beats). ``reseed()`` restarts them from the beat just confirmed
(after the finger settled: the landing transient inflates them); restarting from zero instead
would drop the hysteresis to ``HYST_MIN`` and let the diastolic wave count as beats.

``step(y, n)`` returns ``PEAK`` when it confirmed a beat (then ``t_q8`` = its time in 1/256 sample,
modulo 2**30, ``amp`` = valley-to-peak rise in the input's units, ``peak_n``/``valley_n`` the
sample indices, ``pvalley_n`` the valley before ``valley_n``, ``up_n`` the first sample of the
upstroke at or above its 50 % level), ``VALLEY`` when it confirmed a
valley, 0 otherwise.
"""
from array import array

from micropython import const

PEAK = const(1)
VALLEY = const(2)
HYST_MIN = const(24)           # counts × 8 (3 counts)
_RING = const(256)
_RMASK = const(255)
_RANGE_N = const(128)          # samples over which settled() measures the pulse's range (2**7)
_DY_MAX = const(4194304)       # 2**22: × j < 128 stays a small int
_DECAY_AFTER = const(150)      # samples without a peak before the amplitude estimate decays
_DECAY_MAX = const(320)        # ... or 1.5 beat intervals, at most 3.2 s
_DECAY_SHIFT = const(2)        # by 1/4 every 16 samples (halves in ~0.4 s)
_TMASK = const(0x3FFFFFFF)


class BeatDetector:
    def __init__(self):
        self.buf = array("i", bytes(4 * _RING))
        self.reset()

    def reset(self):
        self.rising = True
        self.ext = 0
        self.ext_n = 0
        self.valley = 0
        self.valley_n = 0
        self.pvalley_n = -1
        self.amp_est = 0
        self.slope_est = 0
        self.slope = 0
        self.hyst = HYST_MIN
        self.since = 0
        self.wait = _DECAY_AFTER
        self.t_q8 = 0
        self.amp = 0
        self.peak = 0
        self.peak_n = 0
        self.up_n = 0

    def settled(self, n):
        """The light has settled after a DC jump (``n``: the current sample index). The landing
        transient's "beats" may have inflated the amplitude estimate, and the hysteresis would
        then miss the real pulse for seconds: the estimate is capped at the signal's range over
        the last 1.28 s (the transient has faded from it; the pulse has not), and the slope
        estimate scaled with it. :meth:`reseed` sets both from the next beat."""
        buf = self.buf
        # the range about the line from the window's first to its last sample: the landing's
        # slow drift (the light still settling) is not pulse
        y0 = buf[(n - _RANGE_N) & _RMASK]
        dy = buf[n & _RMASK] - y0
        if -_DY_MAX < dy < _DY_MAX:
            hi = 0
            lo = 0
            j = 0
            for k in range(n - _RANGE_N, n):
                v = buf[k & _RMASK] - y0 - ((dy * j) >> 7)
                j += 1
                if v > hi:
                    hi = v
                elif v < lo:
                    lo = v
            r = hi - lo
        else:
            r = 0
        a = self.amp_est
        if 0 < r < a:
            self.slope_est = (self.slope_est * r) // a if self.slope_est < (1 << 20) else self.slope_est >> 1
            self.amp_est = r
            h = (r * 3) >> 3
            self.hyst = h if h > HYST_MIN else HYST_MIN

    def reseed(self, amp_min=0, slope_min=0):
        """Restart the amplitude and slope estimates from the beat just confirmed (``amp``,
        ``slope``; or the estimates :meth:`settled` left, or ``amp_min``/``slope_min``, when
        larger: a diastolic wave taken for a beat must not set the hysteresis)."""
        a = self.amp if self.amp > self.amp_est else self.amp_est
        if amp_min > a:
            a = amp_min
        sl = self.slope if self.slope > self.slope_est else self.slope_est
        if slope_min > sl:
            sl = slope_min
        self.amp_est = a
        self.slope_est = sl if sl > 0 else 0
        h = (a * 3) >> 3
        self.hyst = h if h > HYST_MIN else HYST_MIN

    def step(self, y, n):
        """One band-passed sample ``y`` at sample index ``n`` (increasing by one per call)."""
        self.buf[n & _RMASK] = y
        s = self.since + 1
        self.since = s
        if s > self.wait and not (s & 15):
            a = self.amp_est
            a -= a >> _DECAY_SHIFT
            self.amp_est = a
            h = (a * 3) >> 3
            self.hyst = h if h > HYST_MIN else HYST_MIN
        if self.rising:
            if y > self.ext:
                self.ext = y
                self.ext_n = n
            elif y < self.ext - self.hyst:
                self.rising = False
                return self._peak(n)
        else:
            if y < self.ext:
                self.ext = y
                self.ext_n = n
            elif y > self.ext + self.hyst:
                self.rising = True
                self.pvalley_n = self.valley_n
                self.valley = self.ext
                self.valley_n = self.ext_n
                self.ext = y
                self.ext_n = n
                return VALLEY
        return 0

    def _peak(self, n):
        p = self.ext
        pn = self.ext_n
        v = self.valley
        vn = self.valley_n
        amp = p - v
        self.peak = p
        self.peak_n = pn
        self.amp = amp
        self.ext = self.buf[n & _RMASK]
        self.ext_n = n
        # amplitude tracking: follow fast, but one odd beat moves the estimate by 1/4 only
        a = self.amp_est
        if a == 0:
            a = amp
        else:
            a += (amp - a) >> 2
        self.amp_est = a
        h = (a * 3) >> 3
        self.hyst = h if h > HYST_MIN else HYST_MIN
        # the decay waits 1.5 s, or 1.5 beats of a slower pulse (at 30–40 bpm a beat takes 1.5–2 s:
        # decaying within it would let the diastolic wave pass for a beat)
        w = self.since + (self.since >> 1)
        self.wait = w if _DECAY_AFTER < w < _DECAY_MAX else _DECAY_AFTER if w <= _DECAY_AFTER else _DECAY_MAX
        self.since = 0
        # 50 % crossing of the upstroke, searched backwards from the peak
        buf = self.buf
        thr = (p + v) >> 1
        lo = vn
        if pn - lo > _RING - 2 or n - lo > _RING - 2:
            lo = n - (_RING - 2)
        k = pn
        while k > lo and buf[(k - 1) & _RMASK] >= thr:
            k -= 1
        if k <= lo:
            k = lo + 1
        self.up_n = k
        b0 = buf[(k - 1) & _RMASK]
        b1 = buf[k & _RMASK]
        if b1 > b0 and b0 < thr:
            frac = ((thr - b0) << 8) // (b1 - b0)
            if frac > 256:
                frac = 256
        else:
            frac = 0
        self.t_q8 = ((((k - 1) & 0x3FFFFF) << 8) + frac) & _TMASK
        # steepness of the upstroke: rise over 4 samples around the 50 % point
        s4 = buf[(k + 1) & _RMASK] - buf[(k - 3) & _RMASK]
        self.slope = s4
        if s4 > 0:
            e = self.slope_est
            self.slope_est = s4 if e == 0 else e + ((s4 - e) >> 2)
        return PEAK
