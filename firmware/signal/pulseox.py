"""Pulse oximetry chain: heart rate, SpO2, perfusion index, signal quality and withholding.

    po = PulseOx()                    # 100 samples/s, default calibration
    for red, ir in samples:           # ADC counts (MAX30102: 18 bit); red = -1 for IR only
        if po.push(red, ir):          # True once per second of samples: a report is ready
            show(po.hr_x10, po.spo2_x10, po.withheld)

Report fields (ints, set by the push that returned True):

* ``t_ms``: time of the report's last sample, ms since ``reset()``;
* ``hr_x10`` bpm × 10, ``spo2_x10`` % × 10, ``pi_x100`` % × 100: −1 when withheld or not measurable
  (SpO2 is −1 in IR-only operation and when the red/IR ratio is not consistent enough);
* ``q``: signal quality 0–100; ``withheld``: 0 when values are reported, else an index into
  ``WITHHELD`` (the reason's name) — nothing is reported then;
* ``age_ms``: time since the last report with a valid heart rate (−1 when there was none yet);
  ``stale`` = 1 when that value is more than 30 s old (ISO 80601-2-61 asks to indicate it);
  ``last_hr_x10``/``last_spo2_x10`` keep that last valid value for a display.

``push(red, ir, flags=0)``: ``flags`` bit 0 (``FLAG_ALC_OVF``) = the MAX30102 reported ambient
light cancellation overflow in this sample's FIFO read. IR-only: pass ``red = -1``.

Per sample: two band-pass front ends (``filters.BandPass``), the IR beat detector
(``beats.BeatDetector``), the extremes of the wide-band IR pulse (PI: the band-pass's 5.5 Hz
low-pass shaves the systolic peak), clipping and motion tests: small-int arithmetic, no
allocation. Per beat: interval, amplitudes, R and PI into ring buffers. Per report (1 Hz):
medians and the decisions. Algorithms, thresholds and their reasons: docs/signal.md.
"""
from array import array

from micropython import const

from firmware.signal import stats
from firmware.signal.beats import PEAK, BeatDetector
from firmware.signal.calibration import Calibration
from firmware.signal.filters import BandPass

# withholding reasons: index into WITHHELD
NONE = const(0)
NO_FINGER = const(1)
SETTLING = const(2)
MOTION = const(3)
LOW_PERFUSION = const(4)
CLIPPING = const(5)
AMBIENT_LIGHT = const(6)
IRREGULAR_RHYTHM = const(7)
WITHHELD = ("none", "no_finger", "settling", "motion", "low_perfusion", "clipping", "ambient_light",
            "irregular_rhythm")

FLAG_ALC_OVF = const(1)

RATE_HZ = const(100)
ADC_MAX = const(262143)
FINGER_MIN = const(10000)      # IR DC counts: below, no finger (bare sensor: LED cross-talk only)
CLIP_HI = const(261120)        # ADC_MAX − 1023: within 0.4 % of full scale
CLIP_LO = const(0)
FLAT_RUN = const(12)           # both channels stuck for 12 samples: saturated/frozen ADC
AMBIENT_DC = const(229376)     # both DCs above 7/8 full scale and within 1/16 of each other
AMBIENT_DIFF = const(16384)
PI_MIN_X100 = const(20)        # 0.20 % (band-passed pulse): below, withheld (low perfusion)
Q_MIN = const(40)
STALE_MS = const(30000)

_REPORT_N = const(100)         # samples per report (1 s)
_SETTLE_N = const(150)         # beats in the 1.5 s after a DC jump are not used
_MOTION_HOLD_N = const(150)    # samples withheld after the last motion evidence
_IV_MIN_Q8 = const(6982)       # 27.27 samples = 220 bpm, × 256
_IV_MAX_Q8 = const(51200)      # 200 samples = 30 bpm, × 256
_IV_MIN_N = const(27)          # 220 bpm, samples
_RESEED_MAX_N = const(500)     # re-seed anyway after 5 s of motion following a DC jump
_TREND_MAX = const(2097152)    # 2**21: × a peak delay < 256 stays a small int
_HR_WIN_N = const(800)         # the intervals between the beats of the last 8 s make the HR
_SPO2_WIN_N = const(500)       # beats in the last 5 s make SpO2 and PI
_NO_PULSE_N = const(400)       # no beat for 4 s with a finger: no pulsatile component
_NIV = const(32)               # intervals kept: the last 8 s up to 240 bpm (a power of two)
_IRR_MIN = const(5)            # intervals before an irregular rhythm's mean rate is reported
_EARLY2_MIN_Q8 = const(20480)  # a first reading from 2 intervals: slower than 75 bpm only
_AGREE2 = const(8)
_SHIFT_OUT = const(2)
_EARLY_N = const(5)
_SPO2_MIN_BEATS = const(3)     # beats with an R in the last 5 s for an SpO2
_SPO2_LOW_BEATS = const(4)     # ... and under 0.5 %, at least 4 from 60 bpm (5 s hold 5 beats)
_SPO2_LOW_HR = const(600)
_SPO2_PA_FULL = const(30)      # band-passed pulse (% of DC × 100) below which SpO2 needs
_SPO2_LOW_DISP = const(10)     # R within 10 % (mean abs. deviation) over the last 8 beats
_Q_PA_FULL = const(50)         # band-passed pulse (% of DC × 100) below which q is capped
_Q_PA_OFFSET = const(20)       # at pa + 20: 40 at the 0.20 % floor, 70 at 0.5 %
_IRR_PA_MIN = const(50)        # band-passed pulse, % of DC × 100, for an irregular rhythm's rate
_NB = const(8)
_DIS_MIN = const(4)            # reports withheld for motion/unexplained rhythm in a row: a disruption
_CONFIRM_N = const(6)          # ... after which a rate must repeat over 6 reports (or as many as the
_CONFIRM_MAX = const(60)       # disruption lasted, at most 60) before it is shown
_CONFIRM_TOL = const(16)       # within 1/16 (6 %) from one report to the next
_RESUME_N = const(6000)        # unless it resumes within 1/8 of the last valid rate, given < 60 s ago
_RESUME_TOL = const(8)
_RING = const(256)
_RMASK = const(255)
_TMASK = const(0x3FFFFFFF)
_HR_NUM = const(15360000)      # 60 s × 100 Hz × 256 (Q8) × 10 (bpm × 10)
_W_HP_SHIFT = const(6)         # the wide-band pulse's high-pass: as filters.BandPass's second one


def _q17(ac, dc):
    """ac/dc × 2**17 with small ints only (ac < 2**22, 0 < dc < 2**18)."""
    a = ac << 7
    hi = a // dc
    rem = a - hi * dc
    return (hi << 10) + ((rem << 10) // dc)


class PulseOx:
    """The streaming chain. ``rate_hz`` must be 100 (the host resamples other rates);
    ``cal`` a ``calibration.Calibration`` (default curve when None); ``motion`` an optional
    ``motion.MotionRef`` fed by the accelerometer (None: no motion reference, the chain as
    without one)."""

    def __init__(self, rate_hz=100, cal=None, motion=None):
        if rate_hz != RATE_HZ:
            raise ValueError("PulseOx runs at 100 samples/s; resample first (got %r)" % (rate_hz,))
        self.cal = cal if cal is not None else Calibration()
        self.motion = motion
        self.ir_f = BandPass()
        self.red_f = BandPass()
        self.det = BeatDetector()
        self.rbuf = array("i", bytes(4 * _RING))
        self.iv = array("i", bytes(4 * _NIV))       # beat intervals, samples × 256
        self.iv_n = array("i", bytes(4 * _NIV))     # sample index at which each interval began
        self.b_r = array("i", bytes(4 * _NB))       # per beat: R × 1024 (−1 = none)
        self.b_ru = array("i", bytes(4 * _NB))      # ... from the upstroke's middle half
        self.b_pi = array("i", bytes(4 * _NB))      # per beat: PI % × 100 (wide-band pulse)
        self.b_pa = array("i", bytes(4 * _NB))      # per beat: band-passed pulse, % of DC × 100
        self.b_n = array("i", bytes(4 * _NB))       # per beat: sample index
        self.s1 = array("i", bytes(4 * _NIV))       # scratch for medians
        self.s2 = array("i", bytes(4 * _NIV))
        self.reset()

    # -- state -------------------------------------------------------------------------------
    def reset(self):
        """Forget everything (new measurement); times restart at 0."""
        if self.motion is not None:
            self.motion.reset()
        self.ir_f.reset()
        self.red_f.reset()
        self.det.reset()
        self.n = 0
        self.rep_n = 0
        self.last_ir = -1
        self.last_red = -1
        self.flat = 0
        self.hr_q = 0
        self.mb_cnt = 0
        self.irr = 0
        self.iv_old = 0
        self.k_q8 = 0           # red/IR pulse amplitude ratio (counts), × 256
        self.mot_thr = 0        # |IR 40 ms slope| beyond which a sample is motion (0: not armed yet)
        self.lvl_thr = 0        # |IR pulse| beyond which a sample is motion
        self.reseed = False
        self.skip_amp = 0       # a beat that began before the light settled, kept aside for the reseed
        self.skip_slope = 0
        self.mot_until = 0
        self.settle_until = 0
        self.finger_n = -1      # sample index at which the finger was first seen (-1: absent)
        self.nf_reps = 2        # reports in a row without a finger (2 = a new placement is due)
        self.last_beat_n = -1
        self.ir_jumps = 0
        self.red_jumps = 0
        self.red_mode = False
        self.w_lp = 0           # wide-band IR pulse (PI): its high-pass state, counts × 128
        self.w_max = 0          # its maximum and minimum since the last beat's confirmation
        self.w_min = 0
        self.w_amp = 0          # its foot-to-peak rise over the last beat, counts × 8
        self._forget()
        self._clear_window()
        self.t_ms = 0
        self.hr_x10 = -1
        self.spo2_x10 = -1
        self.pi_x100 = -1
        self.q = 0
        self.irregular = 0
        self.withheld = NO_FINGER
        self.age_ms = -1
        self.stale = 0
        self.last_hr_x10 = -1
        self.last_spo2_x10 = -1
        self.last_valid_n = -1
        self.dis_n = 0          # reports in a row withheld for motion or an unexplained rhythm
        self.cf_need = 0        # consistent reports still needed before a rate is reported again
        self.cf_full = 0        # ... in all, after the last disruption
        self.cf_hr = -1         # the last rate so withheld, bpm × 10
        self.early = True       # finger placed, no valid reading yet: report the first at its beat

    def _forget(self):
        """Drop the beat history (finger placed/lifted, settling)."""
        self.iv_cnt = 0
        self.iv_head = 0
        self.b_cnt = 0
        self.b_head = 0
        self.last_t = -1
        self.refr_iv = 0        # Q8 samples from the last used beat to one refused as refractory

    def _jump(self, n):
        """A DC jump (finger placed or lifted, pressure step) at sample ``n``: start over once the
        light has settled."""
        self.ir_jumps = self.ir_f.jumps
        self.red_jumps = self.red_f.jumps
        self._forget()
        self.settle_until = n + _SETTLE_N
        self.reseed = True
        self.skip_amp = 0
        self.skip_slope = 0
        if self.finger_n < 0 and self.nf_reps != 1:
            # finger placed: what the motion tests learnt from the bare sensor's noise is void
            self.mot_thr = 0
            self.lvl_thr = 0
            self.k_q8 = 0
            self.mot_until = 0
        # else (a pressure step, motion) they stay as the last clean beats set them

    def _clear_window(self):
        self.w_clip = 0
        self.w_alc = 0
        self.w_mot = 0
        self.w_res = 0
        self.w_dr = 0
        self.w_red = 0

    # -- per sample --------------------------------------------------------------------------
    def push(self, red, ir, flags=0):
        """One sample pair (ADC counts; ``red`` −1 for IR only). True when a report is ready."""
        n = self.n + 1
        self.n = n
        if flags & FLAG_ALC_OVF:
            self.w_alc += 1
        if ir >= CLIP_HI or ir <= CLIP_LO:
            self.w_clip += 1
        irf = self.ir_f
        yi = irf.step(ir)
        # the wide-band pulse for PI: the same DC tracker and second high-pass as the band-pass,
        # without its 5.5 Hz low-pass (which shaves the systolic peak), counts × 8, pulse up
        w = ((irf.dc >> 8) - ir) << 3
        if irf.jumps != self.ir_jumps:
            self.w_lp = 0
            self._jump(n)
        elif self.reseed and n >= self.settle_until and not ((n - self.settle_until) & 31):
            # settled, and until the first beat is used: the amplitude estimate is capped at the
            # pulse's recent range every 0.32 s (a landing transient still in the 1.28 s window at
            # 1.5 s would otherwise hold the hysteresis above the pulse until it decays, seconds)
            self.det.settled(n)
        lp = self.w_lp + (((w << 4) - self.w_lp) >> _W_HP_SHIFT)
        self.w_lp = lp
        w -= lp >> 4
        ev = self.det.step(yi, n)
        if w > self.w_max:
            self.w_max = w
        elif w < self.w_min:
            self.w_min = w
        if ev == PEAK:
            # one beat lies between two peak confirmations (each 0.1–0.25 s after its peak):
            # its foot and systolic peak are the wide-band pulse's extremes there
            self.w_amp = self.w_max - self.w_min
            self.w_max = w
            self.w_min = w
        if red >= 0:
            self.w_red += 1
            if red >= CLIP_HI or red <= CLIP_LO:
                self.w_clip += 1
            if ir == self.last_ir and red == self.last_red:
                f = self.flat + 1
                self.flat = f
                if f >= FLAT_RUN:
                    self.w_clip += 1
            else:
                self.flat = 0
            self.last_red = red
            yr = self.red_f.step(red)
            if self.red_f.jumps != self.red_jumps:
                self._jump(n)
            rbuf = self.rbuf
            rbuf[n & _RMASK] = yr
            k = self.k_q8
            if k:
                # red/IR disagreement on the 40 ms slope: pulses are proportional, motion is not
                m = (n - 4) & _RMASK
                dr = yr - rbuf[m]
                e = (dr << 8) - k * (yi - self.det.buf[m])
                self.w_res += (e if e >= 0 else -e) >> 8
                self.w_dr += dr if dr >= 0 else -dr
        self.last_ir = ir
        t = self.mot_thr
        if t:
            di = yi - self.det.buf[(n - 4) & _RMASK]
            if di > t or -di > t or yi > self.lvl_thr or -yi > self.lvl_thr:
                self.w_mot += 1
                self.mot_until = n + _MOTION_HOLD_N
        if ev == PEAK:
            self._beat(n)
            if self.early and self.iv_cnt >= 2 and n >= self.settle_until and n >= self.mot_until \
                    and self._early(n):
                return True
        if n - self.rep_n >= _REPORT_N:
            self._report(n)
            return True
        return False

    # -- per beat ----------------------------------------------------------------------------
    def _beat(self, n):
        d = self.det
        amp = d.amp
        fresh = False
        if self.reseed and self.early and n >= self.settle_until and d.valley_n < self.settle_until:
            # a placement (after a pressure step or motion the estimates the clean beats set are
            # kept as they were): this beat's upstroke began before the light settled, perhaps a
            # landing swing (one set the estimate at 5x the pulse and the detector was blind for
            # seconds), perhaps the systolic beat before a diastolic wave; kept aside, the next
            # beat decides
            self.skip_amp = amp
            self.skip_slope = d.slope
        elif self.reseed and n >= self.settle_until and (n >= self.mot_until or n - self.settle_until > _RESEED_MAX_N):
            # the landing transient is over and the finger still: estimates start afresh from
            # this beat (after 5 s of motion evidence, from whatever beat comes: the thresholds
            # may be what is wrong), or from the beat kept aside when it is within 5x of this
            # one (a systolic beat and its diastolic wave; a landing swing is larger)
            self.reseed = False
            fresh = True
            if self.skip_amp <= amp * 5:
                d.reseed(self.skip_amp, self.skip_slope)
            else:
                d.reseed()
            self.k_q8 = 0
            self.mot_thr = 0
            self.lvl_thr = 0
            if amp * 8 < d.amp_est * 3:
                return      # under the hysteresis it sets: the diastolic wave, not a beat
        # a beat is used once settled and 1.5 s clear of motion; the motion tests follow the beats
        # except those of a burst (amplitude beyond 2× the tracked one) and while settling
        used = n >= self.settle_until and n >= self.mot_until
        tune = not self.reseed and (used or amp * 2 <= self.lvl_thr)
        if d.slope_est and tune:
            # motion: a 40 ms slope 3× the upstroke's, or an excursion 4× the beat amplitude
            self.mot_thr = 3 * d.slope_est + 48
            self.lvl_thr = 4 * d.amp_est + 96
        dci = self.ir_f.dc >> 8
        r = -1
        ru = -1
        if self.red_mode and dci > 0:
            # amplitudes at the same instants on both channels (3-sample means at IR valley, peak)
            buf = d.buf
            rbuf = self.rbuf
            pn = d.peak_n
            vn = d.valley_n
            if n - vn < _RING - 2 and pn > vn:
                sv = buf[(vn - 1) & _RMASK] + buf[vn & _RMASK] + buf[(vn + 1) & _RMASK]
                svr = rbuf[(vn - 1) & _RMASK] + rbuf[vn & _RMASK] + rbuf[(vn + 1) & _RMASK]
                ai = buf[(pn - 1) & _RMASK] + buf[pn & _RMASK] + buf[(pn + 1) & _RMASK] - sv
                ar = rbuf[(pn - 1) & _RMASK] + rbuf[pn & _RMASK] + rbuf[(pn + 1) & _RMASK] - svr
                pv = d.pvalley_n
                dv = vn - pv
                ti = 0
                tr = 0
                if 0 < pv and _IV_MIN_N <= dv and n - pv < _RING - 2:
                    # the baseline's drift (landing transient, wander, respiration: common to red
                    # and IR in proportion to their DC, so it would pull R towards 1) from the
                    # previous valley, extrapolated to the peak and taken off both amplitudes
                    ti = sv - buf[(pv - 1) & _RMASK] - buf[pv & _RMASK] - buf[(pv + 1) & _RMASK]
                    tr = svr - rbuf[(pv - 1) & _RMASK] - rbuf[pv & _RMASK] - rbuf[(pv + 1) & _RMASK]
                    if -_TREND_MAX < ti < _TREND_MAX and -_TREND_MAX < tr < _TREND_MAX:
                        k = pn - vn
                        ai -= (ti * k) // dv
                        ar -= (tr * k) // dv
                    else:
                        ti = 0
                        tr = 0
                dcr = self.red_f.dc >> 8
                # the same ratio over the middle half of the upstroke (a quarter of the rise time
                # either side of its 50 % point): the steepest part of the pulse, where a baseline
                # common to red and IR (respiration, wander: it pulls R towards 1) adds the least
                # per unit of pulse; _r_beats() chooses between the two per report
                hw = (pn - vn) >> 2
                if hw < 2:
                    hw = 2
                ka = d.up_n - hw
                kb = d.up_n + hw
                if ka < vn:
                    ka = vn
                if kb > pn:
                    kb = pn
                ui = (buf[(kb - 1) & _RMASK] + buf[kb & _RMASK] + buf[(kb + 1) & _RMASK]
                      - buf[(ka - 1) & _RMASK] - buf[ka & _RMASK] - buf[(ka + 1) & _RMASK])
                ur = (rbuf[(kb - 1) & _RMASK] + rbuf[kb & _RMASK] + rbuf[(kb + 1) & _RMASK]
                      - rbuf[(ka - 1) & _RMASK] - rbuf[ka & _RMASK] - rbuf[(ka + 1) & _RMASK])
                if ti or tr:
                    ui -= (ti * (kb - ka)) // dv
                    ur -= (tr * (kb - ka)) // dv
                if 0 < ui < (1 << 22) and 0 < ur < (1 << 22) and dcr > 0:
                    qi = _q17(ui, dci)
                    qr = _q17(ur, dcr)
                    if 0 < qr < (1 << 19) and qi > 0:
                        ru = (qr << 10) // qi
                if ai > 0 and ar > 0 and dcr > 0 and ai < (1 << 22) and ar < (1 << 22):
                    qi = _q17(ai, dci)
                    qr = _q17(ar, dcr)
                    if 0 < qr < (1 << 19) and qi > 0:
                        r = (qr << 10) // qi
                    elif qr < (1 << 23) and qi > 7 and amp * 4 <= d.amp_est * 5:
                        # a red pulse over 1/6 of its DC (PI 16-20 % at a low SpO2; 3 bits less of
                        # the IR ratio keep the intermediate a small int), from a beat of the
                        # tracked size: a motion burst's beat is larger
                        r = (qr << 7) // (qi >> 3)
                    kk = (ar << 8) // ai
                    if kk < (1 << 12) and tune and not fresh:
                        # red/IR amplitude ratio for the motion test: tracked on every beat
                        self.k_q8 = kk if self.k_q8 == 0 else self.k_q8 + ((kk - self.k_q8) >> 2)
        if not used:
            self.last_t = -1            # beats while settling or moving are not used
            return
        t = d.t_q8
        lt = self.last_t
        if lt >= 0:
            iv = (t - lt) & _TMASK
            if iv < _IV_MIN_Q8:
                self.refr_iv = iv
                return                      # refractory: a notch or noise, keep the previous beat
            r1 = self.refr_iv
            if r1 and ((iv - r1 - r1) << 2 if iv > r1 + r1 else (r1 + r1 - iv) << 2) < iv:
                # the beat refused just before lay half-way (±12 %): a rhythm beyond 220 bpm, not
                # a notch, and this "interval" spans two beats (three such read half the rate)
                iv = _IV_MAX_Q8 + 1
            if iv <= _IV_MAX_Q8:
                h = self.iv_head
                self.iv[h] = iv
                # when the interval began (its first beat's instant, not when the detector confirmed
                # the beat, ~0.1–0.25 s later): the HR window holds the beats of the last 8 s
                self.iv_n[h] = n - ((((((n & 0x3FFFFF) << 8) - t) & _TMASK) + iv) >> 8)
                self.iv_head = (h + 1) & (_NIV - 1)
                if self.iv_cnt < _NIV:
                    self.iv_cnt += 1
        self.last_t = t
        self.refr_iv = 0
        self.last_beat_n = n
        if dci <= 0 or amp <= 0:
            return
        wa = self.w_amp
        h = self.b_head
        self.b_r[h] = r
        self.b_ru[h] = ru
        # the pulse's amplitude in the detector's band, % of DC × 100 (the low-perfusion test)
        self.b_pa[h] = (amp * 1250) // dci if amp < 800000 else 100000
        # PI: the beat's foot-to-peak rise on the wide-band pulse, % of DC × 100
        self.b_pi[h] = -1 if wa <= 0 else (wa * 1250) // dci if wa < 800000 else 100000
        self.b_n[h] = n
        self.b_head = (h + 1) & (_NB - 1)
        if self.b_cnt < _NB:
            self.b_cnt += 1

    def _early(self, n):
        """At a beat before the first valid reading since the finger was placed: evaluate now. A
        valid reading is reported at once (True) and the 1-s report cadence restarts from this
        beat, so reports stay one per second; otherwise the last report's fields are restored and
        nothing is reported (False)."""
        t_ms = self.t_ms
        w = self.withheld
        q = self.q
        age = self.age_ms
        st = self.stale
        irr = self.irregular
        self._report(n, True)
        if self.withheld == NONE:
            self.rep_n = n
            self._clear_window()
            return True
        self.t_ms = t_ms
        self.withheld = w
        self.q = q
        self.age_ms = age
        self.stale = st
        self.irregular = irr
        self.hr_x10 = -1
        self.spo2_x10 = -1
        self.pi_x100 = -1
        return False

    # -- per report --------------------------------------------------------------------------
    def _report(self, n, early=False):
        if not early:
            self.rep_n = n
        self.t_ms = n * 10
        self.red_mode = self.w_red > 0
        dci = self.ir_f.dc >> 8
        dcr = self.red_f.dc >> 8
        w = NONE
        q = 100
        hr = -1
        spo2 = -1
        pi = -1
        if dci < FINGER_MIN:
            self.finger_n = -1
            self._forget()
            self.nf_reps += 1
            if self.nf_reps >= 2:
                # no finger for a second or more (not a moving finger's dip): the next placement
                # is a new measurement; motion tests off until armed by its first settled beat
                self.early = True
                self.mot_thr = 0
                self.lvl_thr = 0
                self.k_q8 = 0
            w = NO_FINGER
        elif self.finger_n < 0:
            self.finger_n = n
            self.nf_reps = 0
        else:
            self.nf_reps = 0
        if w == NONE and (self.w_alc or (self.red_mode and dci >= AMBIENT_DC and dcr >= AMBIENT_DC
                                         and -AMBIENT_DIFF < dci - dcr < AMBIENT_DIFF)):
            w = AMBIENT_LIGHT
        if w == NONE and self.w_clip:
            w = CLIPPING
            self.settle_until = n + _SETTLE_N
        if w == NONE and n < self.settle_until:
            w = SETTLING
        if w == NONE and dci > 0 and (self.det.amp_est * 1250) // dci < PI_MIN_X100 and self.det.amp_est:
            w = LOW_PERFUSION
        if w == NONE and (self.w_mot or n < self.mot_until):
            w = MOTION
        if (w == NONE and self.red_mode and self.k_q8 and self.w_res * 2 > self.w_dr
                and self.w_res > ((self.k_q8 * self.det.amp_est) >> 7) + 1500):
            # red and IR disagree on the slope: motion (pulses are proportional on both)
            w = MOTION
            self.mot_until = n + _MOTION_HOLD_N
        self.irr = 0
        if w == NONE:
            m = self._intervals(n)
            if m < 2:
                if self.last_beat_n < 0 or n - self.last_beat_n > _NO_PULSE_N:
                    w = SETTLING if n - self.finger_n < 2 * _NO_PULSE_N else NO_FINGER
                else:
                    w = SETTLING
            else:
                hr = self._hr(m)
                q = self.hr_q
                if hr < 0:
                    w = SETTLING if m < _IRR_MIN else IRREGULAR_RHYTHM
                elif self.irr and not self._pulses_confirmed(n):
                    w = IRREGULAR_RHYTHM
        pa = -1
        if w == NONE:
            pa = self._median_beats(n, self.b_pa)
            if pa >= 0 and pa < PI_MIN_X100:
                w = LOW_PERFUSION
            else:
                pi = self._median_beats(n, self.b_pi)
        if w == NONE and self.red_mode:
            ra = self._r_beats(n)
            rq = self._median_beats(n, ra)
            # the pulse for the low-perfusion rules: the beats' median or the tracked amplitude,
            # whichever is smaller (a few beats inflated by noise must not lift the median alone)
            ae = self.det.amp_est
            pl = (ae * 1250) // dci if ae < 800000 else 100000
            if pa < pl:
                pl = pa
            nb = _SPO2_LOW_BEATS if pl < _Q_PA_FULL and hr >= _SPO2_LOW_HR else _SPO2_MIN_BEATS
            if rq > 0 and self.mb_cnt >= nb and (
                    pl >= _SPO2_PA_FULL or self._disp_beats(n, ra, rq, _TMASK) <= _SPO2_LOW_DISP):
                # (near the floor a few consistent beats can be noise that happens to agree: the
                # last 8 beats must agree, not only those of the last 5 s)
                # (the median of one or two beats is one beat's R: one motion beat that came
                # before the motion test fired would be read as the SpO2)
                spo2 = self.cal.spo2_x10(rq)
                # consistency of R between beats lowers the quality
                disp = self._disp_beats(n, ra, rq)
                q -= disp
                if disp > 30:
                    spo2 = -1
        if q < 0:
            q = 0
        if w == NONE and q < Q_MIN:
            w = MOTION
        if w == NONE and 0 <= pa < _Q_PA_FULL and q > pa + _Q_PA_OFFSET:
            # low perfusion: reported (the pulse is detectable) but q says so, 40 at the 0.20 %
            # floor rising to 70 at 0.5 % (band-passed pulse, % of DC)
            q = pa + _Q_PA_OFFSET
        w = self._confirm(n, w, hr, early)
        if w == NONE and self.motion is not None and self.motion.check(hr):
            # the rate is the motion's (or its half/double), or the motion is vigorous: a mask on
            # the output only, the chain's own state goes on (firmware/signal/motion.py)
            w = MOTION
        if w != NONE:
            hr = -1
            spo2 = -1
            pi = -1
            if w == NO_FINGER or w == CLIPPING or w == AMBIENT_LIGHT:
                q = 0
        self.withheld = w
        self.irregular = self.irr if w == NONE else 0
        self.hr_x10 = hr
        self.spo2_x10 = spo2
        self.pi_x100 = pi
        self.q = q
        if hr >= 0:
            self.early = False
            self.last_valid_n = n
            self.last_hr_x10 = hr
            self.last_spo2_x10 = spo2
        if self.last_valid_n >= 0:
            a = (n - self.last_valid_n) * 10
            self.age_ms = a
            self.stale = 1 if a > STALE_MS else 0
        if not early:
            self._clear_window()

    def _confirm(self, n, w, hr, early):
        """The withholding reason ``w`` once the rate ``hr`` (bpm × 10) is checked for plausibility
        after a disruption: after ``_DIS_MIN`` reports in a row withheld for motion or an
        unexplained rhythm, a rate is shown only when it resumes near the last valid one (within
        1/8, that one under 60 s old), is a confirmed irregular rhythm, or has repeated within 1/16
        over as many reports as the disruption lasted (6 to 60; withheld as ``motion`` until
        then). A periodic motion (steps, tapping) whose beats look regular for a while reads its
        own cadence: on TROIKA (wrist, running) most gross errors were such windows after long
        unexplained stretches. ``early``: a first-reading evaluation, which only applies the
        pending check."""
        if early:
            return MOTION if w == NONE and self.cf_need else w
        if w == MOTION or w == IRREGULAR_RHYTHM:
            d = self.dis_n + 1
            self.dis_n = d
            if d >= _DIS_MIN:
                # as many agreeing reports as the disruption lasted (6 to 60): a motion that kept
                # the chain withholding for long can look regular for longer too
                k = d if d > _CONFIRM_N else _CONFIRM_N
                k = k if k < _CONFIRM_MAX else _CONFIRM_MAX
                self.cf_full = k
                self.cf_need = k
                self.cf_hr = -1
            return w
        if w == NO_FINGER:
            self.dis_n = 0
            self.cf_need = 0
            return w
        if w != NONE:
            return w
        self.dis_n = 0
        k = self.cf_need
        lh = self.last_hr_x10
        if k and self.irr:
            k = 0               # an irregular rhythm confirmed as pulses (red and IR agree on them)
            self.cf_need = 0
        if k and self.last_valid_n >= 0 and n - self.last_valid_n <= _RESUME_N \
                and -lh <= (hr - lh) * _RESUME_TOL <= lh:
            k = 0               # the rate resumes where it left off: the disruption was the motion
            self.cf_need = 0
        if k:
            c = self.cf_hr
            self.cf_hr = hr
            if c > 0 and -c <= (hr - c) * _CONFIRM_TOL <= c:
                k -= 1
            else:
                k = self.cf_full
            self.cf_need = k
            if k:
                return MOTION
        return NONE

    def _intervals(self, n):
        """Copy the intervals between beats of the last 8 s (by the beats' own instants) into
        ``s1``; their count."""
        m = 0
        s1 = self.s1
        iv = self.iv
        ivn = self.iv_n
        old = -1
        oldest = 0
        for i in range(self.iv_cnt):
            a = n - ivn[i]
            if a <= _HR_WIN_N:
                s1[m] = iv[i]
                m += 1
                if a > old:
                    old = a
                    oldest = iv[i]
        self.iv_old = oldest
        return m

    def _hr(self, m):
        """hr_x10 from the ``m`` intervals in ``s1`` (its quality in ``hr_q``, ``irr`` = 1 when the
        rhythm is irregular); −1 when there is no rate to give yet.

        Regular rhythm: intervals more than 25 % from the median (a missed or an extra beat) are
        left out of the mean, at most a third of them. Irregular rhythm (atrial fibrillation,
        frequent ectopic beats): the mean pulse rate over every interval of the window, as
        clinical oximeters report it, once there are ``_IRR_MIN`` intervals. Irregular = a robust
        CV over 8 %, more than a third of outliers, or outliers whose exclusion moves the mean by
        more than 5 % (a missed or extra beat is an interval under 0.6 or over 1.6 × the median;
        between those, an outlier is the rhythm, and dropping it would pick a regular-looking
        subset of an irregular rhythm)."""
        s1 = self.s1
        stats.sort(s1, m)
        med = stats.median_sorted(s1, m)
        tol = med >> 2
        lo = (med * 154) >> 8               # 0.6 × median
        hi = (med * 410) >> 8               # 1.6 × median
        tot = 0
        k = 0
        tot_r = 0
        k_r = 0
        for i in range(m):
            v = s1[i]
            if -tol <= v - med <= tol:
                tot += v
                k += 1
            if lo <= v <= hi:
                tot_r += v
                k_r += 1
        dev = stats.mad(s1, m, med, self.s2)
        cv = (dev * 1483) // med          # robust coefficient of variation, ‰
        self.irr = 0
        self.hr_q = 100 - cv // 3
        if m == 2 and ((s1[1] - s1[0]) * _AGREE2 > med or med < _EARLY2_MIN_Q8):
            return -1                     # two intervals only: slow rates, agreeing within 12 %
        # the means with and without the rhythm's outliers (× k × k_r: no division), ≤ 5 % apart
        d = (tot_r >> 4) * k - (tot >> 4) * k_r
        if (m - k) * 3 <= m and cv <= 80 and k >= 2 and (m >= _EARLY_N or self._early_ok(m, k, med, tol, hi)) \
                and (m - k < _SHIFT_OUT or -((tot >> 4) * k_r) <= d * 20 <= (tot >> 4) * k_r):
            return (_HR_NUM * k + (tot >> 1)) // tot     # rounded (a floor reads 0.05 bpm low)
        # irregular: the scatter is physiology, not noise (q lowered at most as the regular
        # limit allows), when the beats are beats: one missed or extra beat in eight at most
        if cv > 80:
            self.hr_q = 73
        if m < _IRR_MIN and k_r == m and m >= 3 and not self.early and tot_r + (med << 1) >= _HR_WIN_N << 8 \
                and self._median_beats(self.n, self.b_pa) >= _IRR_PA_MIN:
            # a slow heart (under ~40 bpm 8 s hold fewer than 5 intervals) after its first reading:
            # intervals that tile the 8 s, none a lost or extra beat, of a clearly detected pulse
            # are the window's mean rate whatever their scatter (respiratory arrhythmia at 38 bpm
            # spreads them by 25 %)
            if self.hr_q > 73:
                self.hr_q = 73
            return (_HR_NUM * m + (tot_r >> 1)) // tot_r
        if m < _IRR_MIN or (m - k_r) * 8 > m:
            return -1
        # lost beats at a steady rate make two groups, one twice the other (the median falls
        # between them): intervals near twice the lower quartile are not a rhythm, unless the
        # interval just before is short (under 0.8 × the median): a premature beat and its
        # compensatory pause (the two make about two cycles), not a beat lost at a steady rate
        q1 = s1[m >> 2]
        d2 = 0
        iv = self.iv
        ivn = self.iv_n
        c = self.iv_cnt
        h = self.iv_head - c
        n = self.n
        prev = med
        for j in range(c):
            i = (h + j) & (_NIV - 1)
            if n - ivn[i] > _HR_WIN_N:
                continue
            x = iv[i]
            v = x - (q1 << 1)
            if -(q1 >> 2) < v < (q1 >> 2) and prev * 5 >= med * 4:
                d2 += 1
            prev = x
        if d2 * 8 > m:
            return -1
        tot = 0
        for i in range(m):
            tot += s1[i]
        self.irr = 1
        return (_HR_NUM * m + (tot >> 1)) // tot

    def _early_ok(self, m, k, med, tol, hi):
        """With fewer than ``_EARLY_N`` intervals (sorted in ``s1``), a rate only from intervals
        within 1/8 of each other, leaving out at most the oldest, when the landing cut it short
        or a beat was lost: in an irregular rhythm a few intervals are no estimate of the mean
        rate, and an outlier among them may be the rhythm rather than a lost beat."""
        s1 = self.s1
        a = 0
        b = m - 1
        if k == m - 1:
            o = self.iv_old
            if not (o < med - tol or o > hi):
                return False
            if o == s1[0]:
                a = 1
            else:
                b = m - 2
        elif k != m:
            return False
        return (s1[b] - s1[a]) * 8 <= med

    def _pulses_confirmed(self, n):
        """Irregular intervals are a rhythm, not motion or missed beats, only when the beats are
        clearly pulses: red and IR agree on them (R within 15 % from beat to beat: motion is not
        proportional on both; IR-only operation cannot tell, so withholds) and the band-passed
        pulse is at least 0.5 % of the DC (weaker pulses under wander lose beats, and a mix of
        single and double intervals looks irregular)."""
        if not self.red_mode:
            return False
        ra = self._r_beats(n)
        rq = self._median_beats(n, ra)
        if rq <= 0 or self._disp_beats(n, ra, rq) > 15:
            return False
        return self._median_beats(n, self.b_pa) >= _IRR_PA_MIN

    def _r_beats(self, n):
        """The per-beat R to use: from the valley-to-peak rise (``b_r``) or from the upstroke's
        middle half (``b_ru``), whichever the beats of the last 5 s agree on better (mean absolute
        deviation), the first unless the second has as many beats. A baseline common to red and
        IR (respiration, wander) adds to each beat's rise in proportion to the time the rise
        takes, and the upstroke's middle half takes a quarter of it; but in tissue red and IR
        pulses differ a little in shape, and in landing drift the rise is the better measure
        (docs/signal.md, "R from the upstroke")."""
        r1 = self._median_beats(n, self.b_r)
        c1 = self.mb_cnt
        r2 = self._median_beats(n, self.b_ru)
        if r2 <= 0 or self.mb_cnt < c1:
            return self.b_r
        if r1 <= 0:
            return self.b_ru
        if self._disp_beats(n, self.b_ru, r2) < self._disp_beats(n, self.b_r, r1):
            return self.b_ru
        return self.b_r

    def _median_beats(self, n, arr):
        """Median of ``arr`` over the beats of the last 5 s (−1 when none or all −1)."""
        s2 = self.s2
        bn = self.b_n
        m = 0
        for i in range(self.b_cnt):
            if n - bn[i] <= _SPO2_WIN_N and arr[i] >= 0:
                s2[m] = arr[i]
                m += 1
        self.mb_cnt = m
        if m == 0:
            return -1
        stats.sort(s2, m)
        return stats.median_sorted(s2, m)

    def _disp_beats(self, n, arr, med, win=_SPO2_WIN_N):
        """Mean absolute deviation of ``arr`` from ``med`` over the last ``win`` samples, % of
        ``med``."""
        bn = self.b_n
        tot = 0
        m = 0
        for i in range(self.b_cnt):
            if n - bn[i] <= win and arr[i] >= 0:
                d = arr[i] - med
                tot += d if d >= 0 else -d
                m += 1
        if m == 0 or med <= 0:
            return 100
        return (tot * 100) // (m * med)

    def name(self):
        """The withholding reason of the last report ("none" when values were reported)."""
        return WITHHELD[self.withheld]
