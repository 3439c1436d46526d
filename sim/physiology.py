"""Physiology synthesiser: red/IR photoplethysmograms and body temperature with known truth.

CPython + numpy only (host side: tests and benchmarks). It renders a :class:`Physiology` (the
parameters of one subject and session) into a :class:`Recording`: the optical world in the units of
``sim.hardware.scenario`` (photocurrent in **pA per mA of LED drive** for red and IR, ambient light in
**pA**, temperatures in **milli-°C**) plus the ground truth sample by sample (heart rate, SpO2,
perfusion index, finger on/off, motion, expected withholding). Two ways out:

* ``write_scenario(path, rec)`` writes the binary file ``ArrayScenario.load`` reads, so that the
  simulated MAX30102/MLX90614 inside the MicroPython VM see this world;
* ``rec.counts()`` renders what the MAX30102 would deliver at the default LED current and ADC
  range (ambient cancellation, 18-bit quantisation, sensor noise, clipping): the fast path for
  benchmark runs that feed the firmware signal chain directly.

The model, in one place (all relative quantities are fractions of the local DC level):

* pulse: each beat is one period of a periodic sum of Gaussians (systolic peak, dicrotic notch,
  diastolic wave) over the beat's phase; beat-to-beat intervals carry heart-rate variability
  (respiratory sinus arrhythmia + AR(1) noise); the transmitted light falls during systole;
* irregular rhythms: atrial fibrillation draws every RR independently (irregularly irregular, CV
  ``rr_cv``); frequent ectopic beats come early (coupling 55–75 % of the RR) and are followed by
  a compensatory pause. In both, a beat's pulse amplitude follows its filling time (the RR before
  it: Frank–Starling, so short cycles give small pulses, and the beat after a pause a larger one)
  with some random variation; PI's truth follows the amplitude beat by beat;
* SpO2 -> R: the ratio of ratios R = (AC_red/DC_red)/(AC_ir/DC_ir) is the INVERSE of the
  calibration curve the firmware uses by default (:func:`r_from_spo2`, coefficients read from
  ``firmware/signal/calibration.py``), so a perfect chain reads back exactly the requested SpO2;
* perfusion index PI = AC_ir/DC_ir × 100 % (peak-to-trough over the beat, DC = the local mean);
* respiration modulates the pulse amplitude and the baseline; baseline wander is a slow random
  walk; both are multiplicative and common to red and IR so that they do not move R;
* skin tone: Monk scale 1–10 sets a melanin optical density that attenuates red more than IR
  (melanin absorbance falls steeply with wavelength), lowering DC and AC alike; a small shunt of
  light that never crosses tissue is not attenuated, so very dark skin lowers AC/DC slightly and
  more in red (a small positive SpO2 bias, the direction reported clinically);
* motion bursts: band-limited (0.3–4 Hz) multiplicative artefacts, different on red and IR, plus a
  step in the baseline (finger pressure); large ones clip the ADC;
* ambient light reaches the photodiode mostly when no finger covers it; the MAX30102's ambient
  cancellation removes it up to a limit (:data:`ALC_LIMIT_PA`), beyond which it saturates;
* finger placement: the light level settles over ~1–2 s (pressure transient) after the finger
  lands; with no finger only LED cross-talk and ambient light remain, with no pulsatile part;
* temperature: the forehead (what the MLX90614 aims at) is cooler than the core by a fraction of the
  core–ambient gradient; the sensor die follows the room.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

RATE_HZ = 100
ADC_BITS = 18
ADC_MAX = (1 << ADC_BITS) - 1
DEFAULT_LED_MA = 7.0          # LED drive the firmware configures by default (both LEDs)
DEFAULT_RANGE_NA = 4096       # ADC full scale the firmware configures by default
ALC_LIMIT_PA = 50_000_000     # ambient photocurrent the MAX30102's cancellation removes (as the model)
ADC_NOISE_COUNTS = 2.0        # electronic noise, counts rms (18-bit, 411 µs pulses)
SHOT_NOISE_FRAC = 2e-5        # optical/shot noise, fraction of the photocurrent, rms

IR_DC_PA_PER_MA = 200_000     # fingertip IR return, light skin (Monk 1)
RED_IR_DC_RATIO = 0.8         # red return relative to IR, light skin
MELANIN_OD_RED = 1.2          # natural-log attenuation at Monk 10 relative to Monk 1
MELANIN_OD_IR = 0.35
SHUNT_FRAC = 0.003            # light reaching the photodiode without crossing tissue
CROSSTALK_PA_PER_MA = 400     # LED light returned with no finger

# -- calibration ---------------------------------------------------------------------------------

def calibration_coefficients() -> tuple[float, float, float]:
    """(a, b, c) of the firmware's default curve SpO2 % = a·R² + b·R + c
    (``firmware.signal.calibration.SPO2_COEFFS`` / ``SPO2_COEFFS_SCALE``)."""
    from firmware.signal.calibration import SPO2_COEFFS, SPO2_COEFFS_SCALE  # noqa: PLC0415

    return tuple(float(x) / SPO2_COEFFS_SCALE for x in SPO2_COEFFS)  # type: ignore[return-value]


def spo2_from_r(r, coeffs=None):
    """The calibration curve itself: SpO2 % from the ratio of ratios R (array or float)."""
    a, b, c = coeffs or calibration_coefficients()
    r = np.asarray(r, dtype=float)
    return a * r * r + b * r + c


def r_from_spo2(spo2, coeffs=None):
    """INVERSE of the calibration curve: the R that the curve maps to ``spo2`` %.

    The single place where SpO2 becomes R. Takes the root on the curve's decreasing branch over
    R ∈ [0.1, 3.0] (numerically: the curves in circulation are quadratics, some non-monotonic
    outside their useful range); raises ValueError when ``spo2`` is outside what the curve reaches.
    """
    a, b, c = coeffs or calibration_coefficients()
    grid = np.linspace(0.1, 3.0, 29001)
    curve = a * grid * grid + b * grid + c
    dec = np.concatenate([np.diff(curve) < 0, [False]])
    # the decreasing run of the curve that passes through 85 % (the middle of the rated range)
    mid = int(np.argmin(np.where(dec, np.abs(curve - 85.0), np.inf)))
    lo = hi = mid
    while lo > 0 and dec[lo - 1]:
        lo -= 1
    while hi + 1 < len(grid) and dec[hi]:
        hi += 1
    g = grid[lo:hi + 1][::-1]
    cv = curve[lo:hi + 1][::-1]                                # increasing in SpO2
    s = np.asarray(spo2, dtype=float)
    if np.any(s < cv[0] - 1e-9) or np.any(s > cv[-1] + 1e-9):
        raise ValueError(f"SpO2 {s.min():.1f}–{s.max():.1f} % outside the calibration curve's "
                         f"range {cv[0]:.1f}–{cv[-1]:.1f} %")
    out = np.interp(s, cv, g)
    return float(out) if out.ndim == 0 else out


# -- parameters ----------------------------------------------------------------------------------

@dataclass
class Physiology:
    """One subject and session. Times in seconds from the start of the recording."""

    name: str = "custom"
    seed: int = 0
    duration_s: float = 30.0
    rate_hz: int = RATE_HZ
    hr_bpm: float = 72.0
    hr_end_bpm: float | None = None       # linear ramp to this HR by the end (exercise, recovery)
    hrv_sdnn_frac: float = 0.015          # random beat-to-beat variability, fraction of RR
    rsa_frac: float = 0.02                # respiratory sinus arrhythmia, fraction of RR
    diastolic: float = 0.35              # pulse morphology, see pulse_shape()
    notch: float = 0.02
    irregular: bool = False               # atrial fibrillation: RR drawn independently (see rr_cv)
    rr_cv: float = 0.15                   # AF: coefficient of variation of RR
    ectopic_frac: float = 0.0             # share of beats that are premature (ectopic)
    resp_rate_bpm: float = 15.0
    resp_am_frac: float = 0.08            # respiratory modulation of pulse amplitude
    resp_baseline_frac: float = 0.004     # respiratory modulation of the baseline (fraction of DC)
    wander_frac: float = 0.01             # slow baseline wander, fraction of DC (rms)
    spo2_pct: float = 97.0
    spo2_end_pct: float | None = None     # linear ramp (desaturation)
    pi_pct: float = 2.0                   # perfusion index (IR AC/DC, %)
    monk: int = 3                         # Monk skin-tone scale 1 (lightest) .. 10 (darkest)
    tissue_gain: float = 1.0              # finger size/pressure: scales the tissue return
    finger_on_s: float | None = 1.0       # finger lands (None: never)
    finger_off_s: float | None = None     # finger leaves
    motion: list[tuple[float, float, float]] = field(default_factory=list)  # (t0, t1, severity)
    ambient_pa: float = 20_000.0          # room light on the bare photodiode, pA
    finger_ambient_frac: float = 0.02     # share of the ambient light that passes a finger
    noise_gain: float = 1.0
    core_c: float = 37.0
    room_c: float = 24.0
    forehead_k: float = 0.07              # forehead = core − k·(core − room)

    def with_(self, **kw) -> Physiology:
        return replace(self, **kw)


# -- recording -----------------------------------------------------------------------------------

@dataclass
class Recording:
    """A rendered world plus its truth. Arrays are per sample at ``rate_hz``."""

    params: Physiology
    rate_hz: int
    t: np.ndarray
    red_pa: np.ndarray       # pA per mA of red LED drive
    ir_pa: np.ndarray        # pA per mA of IR LED drive
    ambient_pa: np.ndarray   # pA
    finger: np.ndarray       # bool
    motion: np.ndarray       # bool
    settling: np.ndarray     # bool: finger landed less than 2 s ago
    hr_inst: np.ndarray      # bpm of the beat in progress (nan without finger)
    spo2: np.ndarray         # % (nan without finger)
    pi: np.ndarray           # % (nan without finger)
    beats: np.ndarray        # systolic-foot times of the beats, s
    object_mc: np.ndarray    # forehead temperature, milli-°C, 1 Hz
    ambient_mc: np.ndarray   # sensor die temperature, milli-°C, 1 Hz
    core_c: float

    @property
    def n(self) -> int:
        return len(self.t)

    @property
    def duration_s(self) -> float:
        return self.n / self.rate_hz

    def counts(self, led_ma: float = DEFAULT_LED_MA, range_na: int = DEFAULT_RANGE_NA,
               seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(red, ir) 18-bit ADC counts as the MAX30102 delivers them at ``led_ma`` and full-scale
        ``range_na``: LED drive × return + uncancelled ambient, sensor noise, quantised, clipped."""
        rng = np.random.default_rng(self.params.seed * 7919 + 17 if seed is None else seed)
        fs_pa = range_na * 1000.0
        amb = self.ambient_pa
        residual = np.maximum(0.0, amb - ALC_LIMIT_PA)
        out = []
        for ch in (self.red_pa, self.ir_pa):
            c = (ch * led_ma + residual) / fs_pa * (ADC_MAX + 1)
            c = c + rng.normal(0.0, ADC_NOISE_COUNTS * self.params.noise_gain, self.n)
            out.append(np.clip(np.floor(c), 0, ADC_MAX).astype(np.int64))
        return out[0], out[1]

    def clipped(self, led_ma: float = DEFAULT_LED_MA, range_na: int = DEFAULT_RANGE_NA) -> np.ndarray:
        """Samples where either channel sits at the ADC's full scale (or at zero)."""
        r, i = self.counts(led_ma, range_na)
        return (r >= ADC_MAX) | (i >= ADC_MAX) | (r <= 0) | (i <= 0)

    # -- truth over windows ---------------------------------------------------------------------
    def _idx(self, t0: float, t1: float) -> slice:
        a = max(0, int(round(t0 * self.rate_hz)))
        b = min(self.n, max(a + 1, int(round(t1 * self.rate_hz))))
        return slice(a, b)

    def hr_at(self, t: float, window_s: float = 8.0) -> float:
        """Reference HR at time ``t``: beats per minute over the beat intervals completed in
        [t − window_s, t] (nan when the finger is off at t or fewer than 2 beats)."""
        if not self.finger[min(self.n - 1, int(t * self.rate_hz))]:
            return float("nan")
        b = self.beats[(self.beats >= t - window_s) & (self.beats <= t)]
        if len(b) < 2:
            return float("nan")
        return 60.0 * (len(b) - 1) / (b[-1] - b[0])

    def spo2_at(self, t: float, window_s: float = 4.0) -> float:
        return float(np.nanmean(self.spo2[self._idx(t - window_s, t)])) if self.finger_all(t - 0.5, t) else float("nan")

    def pi_at(self, t: float, window_s: float = 4.0) -> float:
        return float(np.nanmean(self.pi[self._idx(t - window_s, t)])) if self.finger_all(t - 0.5, t) else float("nan")

    def finger_all(self, t0: float, t1: float) -> bool:
        return bool(self.finger[self._idx(t0, t1)].all())

    def finger_none(self, t0: float, t1: float) -> bool:
        return not bool(self.finger[self._idx(t0, t1)].any())

    def motion_any(self, t0: float, t1: float) -> bool:
        return bool(self.motion[self._idx(t0, t1)].any())

    def finger_on_times(self) -> list[float]:
        """Times at which the finger lands."""
        f = self.finger.astype(np.int8)
        on = np.nonzero(np.diff(f) == 1)[0] + 1
        times = [float(i / self.rate_hz) for i in on]
        if self.n and f[0]:
            times.insert(0, 0.0)
        return times

    def expected_withheld(self, t: float, lookback_s: float = 1.0) -> str | None:
        """Why a value reported at ``t`` must be withheld (None: a reading is expected to be
        possible): no finger, motion, or clipping in the last ``lookback_s``."""
        s = self._idx(t - lookback_s, t)
        if not self.finger[s].all():
            return "no finger"
        if self.motion[s].any():
            return "motion"
        if self.clipped()[s].any():
            return "clipping"
        return None

    def truth(self) -> dict:
        """A JSON-able summary of the ground truth (constant parts and intervals)."""
        p = self.params
        return {
            "name": p.name, "seed": p.seed, "duration_s": self.duration_s,
            "hr_bpm": [p.hr_bpm, p.hr_end_bpm or p.hr_bpm],
            "spo2_pct": [p.spo2_pct, p.spo2_end_pct or p.spo2_pct],
            "pi_pct": p.pi_pct, "monk": p.monk,
            "finger_on_s": p.finger_on_s, "finger_off_s": p.finger_off_s,
            "motion": [list(m) for m in p.motion],
            "core_c": p.core_c, "forehead_c": float(self.object_mc.mean()) / 1000.0,
        }


# -- synthesis -----------------------------------------------------------------------------------

def pulse_shape(diastolic: float = 0.35, notch: float = 0.02) -> tuple[tuple[float, float, float], ...]:
    """Gaussians (amplitude, centre phase, width) of one beat: systolic peak, dicrotic notch
    (negative), diastolic wave. ``diastolic`` 0.15–0.5 of the systolic peak; ``notch`` 0 (a mere
    shoulder, older or vasoconstricted subjects) to ~0.12 (a distinct notch, young subjects)."""
    mu = 0.38 + 0.6 * notch                      # a distinct notch comes with a later, narrower wave
    return ((1.0, 0.18, 0.065), (-notch, mu - 0.08, 0.03), (diastolic, mu, 0.12 - 0.25 * notch))


def _raw_pulse(ph: np.ndarray, shape) -> np.ndarray:
    v = np.zeros_like(ph)
    for a, mu, s in shape:
        for k in (-1.0, 0.0, 1.0):
            v += a * np.exp(-0.5 * ((ph - mu - k) / s) ** 2)
    return v


def pulse_template(phase: np.ndarray, shape=None) -> np.ndarray:
    """Blood volume over one beat, 0 (foot) .. 1 (systolic peak), periodic in ``phase`` (0..1)."""
    shape = shape or pulse_shape()
    grid = _raw_pulse(np.linspace(0.0, 1.0, 4001), shape)
    lo, hi = float(grid.min()), float(grid.max())
    return (_raw_pulse(np.mod(phase, 1.0), shape) - lo) / (hi - lo)


def pulse_mean(shape=None) -> float:
    """Mean of :func:`pulse_template` over a beat."""
    return float(pulse_template(np.linspace(0.0, 1.0, 4000, endpoint=False), shape).mean())


def _beat_times(p: Physiology, rng: np.random.Generator, t_end: float) -> np.ndarray:
    """Beat onsets from −3 s to t_end + 3 s with HR ramp, RSA and AR(1) variability (or an AF or
    ectopic rhythm)."""
    beats = [-3.0 + rng.uniform(0, 60.0 / p.hr_bpm)]
    ar = 0.0
    fr = p.resp_rate_bpm / 60.0
    phi = rng.uniform(0, 2 * math.pi)
    pause = 0.0
    while beats[-1] < t_end + 3.0:
        t = beats[-1]
        frac = min(1.0, max(0.0, t / max(p.duration_s, 1e-9)))
        hr = p.hr_bpm + ((p.hr_end_bpm if p.hr_end_bpm is not None else p.hr_bpm) - p.hr_bpm) * frac
        rr = 60.0 / hr
        if p.irregular:
            # irregularly irregular: independent RRs, log-normal (right-skewed, as in AF), mean kept
            s = math.sqrt(math.log(1.0 + p.rr_cv ** 2))
            rr *= float(np.clip(math.exp(rng.normal(-0.5 * s * s, s)), 0.45, 2.2))
        else:
            ar = 0.6 * ar + rng.normal(0.0, p.hrv_sdnn_frac * math.sqrt(1 - 0.36))
            rr *= 1.0 + p.rsa_frac * math.sin(2 * math.pi * fr * t + phi) + ar
            if pause:
                rr, pause = pause, 0.0                  # the compensatory pause after an ectopic beat
            elif p.ectopic_frac and rng.uniform() < p.ectopic_frac:
                c = rng.uniform(0.55, 0.75)             # coupling interval, share of the RR
                # ventricular: fully compensatory (the two cycles make 2 RR); atrial: less so
                pause = rr * ((2.0 - c) if rng.uniform() < 0.6 else rng.uniform(1.05, 1.25))
                rr *= c
        beats.append(t + max(rr, 60.0 / 260.0))
    return np.asarray(beats)


def _beat_amplitudes(p: Physiology, rng: np.random.Generator, beats: np.ndarray) -> np.ndarray:
    """Pulse amplitude of each beat relative to a steady beat (1.0). In AF and with ectopic beats
    the stroke volume follows the filling time, the RR before the beat (a premature beat ejects
    little, the beat after a pause more); steady rhythms keep 1.0."""
    n = len(beats)
    if not (p.irregular or p.ectopic_frac) or n < 3:
        return np.ones(n)
    rr = np.diff(beats)
    pre = np.concatenate([[float(np.median(rr))], rr[:-1]])   # the RR that ends where beat k begins
    rel = pre / float(np.median(rr))
    amp = 1.0 + 0.9 * (rel - 1.0) + rng.normal(0.0, 0.08, len(rr))
    return np.concatenate([np.clip(amp, 0.3, 1.5), [1.0]])


def _bandlimited(rng: np.random.Generator, n: int, rate: float, f_lo: float, f_hi: float) -> np.ndarray:
    """Unit-rms noise band-limited to [f_lo, f_hi] Hz (FFT shaping)."""
    spec = np.fft.rfft(rng.normal(size=n))
    f = np.fft.rfftfreq(n, 1.0 / rate)
    spec[(f < f_lo) | (f > f_hi)] = 0
    x = np.fft.irfft(spec, n)
    sd = x.std()
    return x / sd if sd > 0 else x


def render(p: Physiology) -> Recording:
    """Synthesise the optical and thermal world of ``p`` with its truth."""
    rng = np.random.default_rng(p.seed)
    rate = int(p.rate_hz)
    n = int(round(p.duration_s * rate))
    t = np.arange(n) / rate

    # finger presence
    finger = np.zeros(n, dtype=bool)
    if p.finger_on_s is not None:
        finger[t >= p.finger_on_s] = True
        if p.finger_off_s is not None:
            finger[t >= p.finger_off_s] = False

    # beats and pulse
    beats = _beat_times(p, rng, p.duration_s)
    k = np.clip(np.searchsorted(beats, t, side="right") - 1, 0, len(beats) - 2)
    rr = beats[k + 1] - beats[k]
    phase = (t - beats[k]) / rr
    shape = pulse_shape(p.diastolic, p.notch)
    amp = _beat_amplitudes(p, rng, beats)[k]      # 1.0 in a steady rhythm
    pulse = pulse_template(phase, shape) * amp
    hr_inst = 60.0 / rr

    # SpO2 and R, perfusion
    frac = t / max(p.duration_s, 1e-9)
    spo2 = p.spo2_pct + ((p.spo2_end_pct if p.spo2_end_pct is not None else p.spo2_pct) - p.spo2_pct) * frac
    r = r_from_spo2(spo2)
    fr = p.resp_rate_bpm / 60.0
    resp = np.sin(2 * math.pi * fr * t + rng.uniform(0, 2 * math.pi))
    ac_ir = p.pi_pct / 100.0 * (1.0 + p.resp_am_frac * resp)
    ac_red = ac_ir * r

    # common multiplicative baseline: respiration + wander (+ motion steps)
    wander = _bandlimited(rng, n, rate, 0.01, 0.12) * p.wander_frac if n > 8 else np.zeros(n)
    base = 1.0 + p.resp_baseline_frac * resp + wander

    # motion bursts (different on red and IR) and their truth
    motion = np.zeros(n, dtype=bool)
    mot_red = np.zeros(n)
    mot_ir = np.zeros(n)
    for t0, t1, sev in p.motion:
        m = (t >= t0) & (t < t1)
        if not m.any():
            continue
        motion |= m
        seg = int(m.sum())
        env = np.sin(np.linspace(0, math.pi, seg)) ** 0.5
        a = _bandlimited(rng, seg, rate, 0.3, 4.0) if seg > 8 else np.zeros(seg)
        b = _bandlimited(rng, seg, rate, 0.3, 4.0) if seg > 8 else np.zeros(seg)
        step = rng.uniform(-1.0, 1.0) * sev
        mot_ir[m] = sev * env * a + step * env
        mot_red[m] = sev * env * (0.7 * a + 0.7 * b) * 1.3 + step * env * 1.2

    # skin tone: melanin attenuates tissue light, red more than IR
    mel = (min(max(p.monk, 1), 10) - 1) / 9.0
    t_red = math.exp(-MELANIN_OD_RED * mel)
    t_ir = math.exp(-MELANIN_OD_IR * mel)
    dc_ir = IR_DC_PA_PER_MA * p.tissue_gain * t_ir
    dc_red = IR_DC_PA_PER_MA * RED_IR_DC_RATIO * p.tissue_gain * t_red
    shunt = SHUNT_FRAC * IR_DC_PA_PER_MA

    # finger settling: light level rises and overshoots as pressure settles
    settle = np.ones(n)
    settling = np.zeros(n, dtype=bool)
    if p.finger_on_s is not None:
        dt = t - p.finger_on_s
        on = (dt >= 0) & finger
        ov = rng.uniform(0.05, 0.15)
        tau = rng.uniform(0.4, 0.9)
        settle[on] = (1.0 - np.exp(-dt[on] / 0.15)) * (1.0 + ov * np.exp(-dt[on] / tau))
        settling = on & (dt < 2.0)

    # transmitted light falls with blood volume; zero mean over a steady beat (a beat's scaled
    # pulse keeps its foot at the same level, so beats join without a step)
    puls = pulse_mean(shape) - pulse
    tissue_ir = dc_ir * base * settle * (1.0 + ac_ir * puls) * (1.0 + mot_ir)
    tissue_red = dc_red * base * settle * (1.0 + ac_red * puls) * (1.0 + mot_red)
    ir = np.where(finger, tissue_ir + shunt, CROSSTALK_PA_PER_MA)
    red = np.where(finger, tissue_red + shunt * RED_IR_DC_RATIO, CROSSTALK_PA_PER_MA * RED_IR_DC_RATIO)
    ir = ir * (1.0 + rng.normal(0.0, SHOT_NOISE_FRAC * p.noise_gain, n))
    red = red * (1.0 + rng.normal(0.0, SHOT_NOISE_FRAC * p.noise_gain, n))
    ir = np.maximum(ir, 0.0)
    red = np.maximum(red, 0.0)

    # ambient light: mostly blocked by the finger; flicker residue and slow changes
    amb_room = p.ambient_pa * (1.0 + 0.05 * np.sin(2 * math.pi * 0.05 * t) + 0.01 * rng.normal(size=n))
    ambient = np.where(finger, amb_room * p.finger_ambient_frac, amb_room)
    if p.motion:  # a moving finger lets light in
        ambient = np.where(motion, amb_room * 0.1, ambient)
    ambient = np.maximum(ambient, 0.0)

    # temperature (1 Hz): forehead cooler than the core by a share of the core-room gradient
    secs = max(1, int(math.ceil(p.duration_s)))
    ts = np.arange(secs)
    core = p.core_c + 0.02 * np.sin(2 * math.pi * ts / 60.0)
    forehead = core - p.forehead_k * (core - p.room_c) + rng.normal(0.0, 0.01, secs)
    die = p.room_c + 0.3 * (1.0 - np.exp(-ts / 120.0))     # the device warms a little in the hand

    valid = finger
    return Recording(
        params=p, rate_hz=rate, t=t, red_pa=red, ir_pa=ir, ambient_pa=ambient,
        finger=finger, motion=motion & finger, settling=settling,
        hr_inst=np.where(valid, hr_inst, np.nan), spo2=np.where(valid, spo2, np.nan),
        pi=np.where(valid, ac_ir * amp * 100.0, np.nan), beats=beats,
        object_mc=np.round(forehead * 1000).astype(np.int64),
        ambient_mc=np.round(die * 1000).astype(np.int64), core_c=p.core_c,
    )


# -- named scenarios -----------------------------------------------------------------------------

def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def scenario(name: str, seed: int = 0, duration_s: float = 30.0) -> Physiology:
    """A named, seeded scenario. Parameters vary with the seed within the scenario's ranges."""
    rng = np.random.default_rng([abs(hash_name(name)), seed])
    base = Physiology(
        name=name, seed=int(rng.integers(0, 2**31 - 1)), duration_s=duration_s,
        hr_bpm=_u(rng, 60, 90), spo2_pct=_u(rng, 95, 99.5), pi_pct=float(np.exp(rng.uniform(np.log(1.0), np.log(5.0)))),
        monk=int(rng.integers(1, 7)), resp_rate_bpm=_u(rng, 10, 20), tissue_gain=_u(rng, 0.8, 1.2),
        finger_on_s=_u(rng, 0.5, 2.0), core_c=_u(rng, 36.4, 37.2), room_c=_u(rng, 20, 27),
        diastolic=_u(rng, 0.15, 0.5), notch=_u(rng, 0.0, 0.1),
    )
    if name == "normal":
        return base
    if name == "fever":
        return base.with_(core_c=_u(rng, 38.2, 40.5), hr_bpm=_u(rng, 85, 115))
    if name == "hypothermia":
        return base.with_(core_c=_u(rng, 33.0, 35.0), hr_bpm=_u(rng, 45, 60))
    if name == "hypoxia":
        s0 = _u(rng, 88, 95)
        return base.with_(spo2_pct=s0, spo2_end_pct=_u(rng, 70, min(s0, 80)), hr_bpm=_u(rng, 80, 110))
    if name == "tachycardia":
        return base.with_(hr_bpm=_u(rng, 130, 220))
    if name == "bradycardia":
        return base.with_(hr_bpm=_u(rng, 30, 50))
    if name == "exercise":
        return base.with_(hr_bpm=_u(rng, 90, 110), hr_end_bpm=_u(rng, 140, 170))
    if name == "motion":
        t0 = _u(rng, 8, duration_s * 0.5)
        t1 = t0 + _u(rng, 3, 6)
        t2 = _u(rng, t1 + 3, max(t1 + 4, duration_s - 4))
        return base.with_(motion=[(t0, t1, _u(rng, 0.05, 0.3)), (t2, t2 + _u(rng, 2, 4), _u(rng, 0.05, 0.3))])
    if name == "no-finger":
        return base.with_(finger_on_s=None, ambient_pa=_u(rng, 5_000, 150_000))
    if name == "finger-off":
        return base.with_(finger_off_s=_u(rng, duration_s * 0.5, duration_s * 0.7))
    if name == "low-perfusion":
        return base.with_(pi_pct=float(np.exp(rng.uniform(np.log(0.1), np.log(0.4)))))
    if name == "high-perfusion":
        return base.with_(pi_pct=_u(rng, 8, 20))
    if name == "dark-skin":
        return base.with_(monk=int(rng.integers(8, 11)))
    if name == "ambient":      # sunlight on the sensor: cancellation overflows, ADC saturates
        return base.with_(ambient_pa=_u(rng, 6e7, 1.2e8), finger_ambient_frac=_u(rng, 0.9, 1.0))
    if name in ("af", "irregular"):    # atrial fibrillation ("irregular": its former name)
        return base.with_(name="af", irregular=True, hr_bpm=_u(rng, 50, 150), rr_cv=_u(rng, 0.12, 0.25))
    if name == "ectopic":      # frequent premature beats (atrial or ventricular) in sinus rhythm
        return base.with_(ectopic_frac=_u(rng, 0.08, 0.3), hr_bpm=_u(rng, 45, 120))
    raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


SCENARIOS = ("normal", "fever", "hypothermia", "hypoxia", "tachycardia", "bradycardia", "exercise", "motion",
             "no-finger", "finger-off", "low-perfusion", "high-perfusion", "dark-skin", "ambient", "af", "ectopic")


def hash_name(name: str) -> int:
    """Stable (process-independent) hash of a scenario name."""
    h = 2166136261
    for ch in name.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def suite(n: int = 200, seed: int = 2025, duration_s: float = 35.0, rhythm: bool = True) -> list[Physiology]:
    """The benchmark suite: ``n`` seeded recordings spanning HR 30–220 bpm, SpO2 70–100 %, PI
    0.1–20 %, Monk 1–10, with ~25 % carrying artefacts (motion, finger removed, no finger, sunlight)
    and a few named clinical scenarios; then (``rhythm``) ``max(2, n // 20)`` atrial-fibrillation
    recordings at ventricular rates spread over 50–160 bpm and as many with frequent ectopic beats
    over 45–130 bpm, so that irregular rhythms are measured at several rates."""
    rng = np.random.default_rng(seed)
    out: list[Physiology] = []
    named = ["motion", "motion", "no-finger", "finger-off", "ambient", "motion", "hypoxia", "exercise",
             "af", "fever", "dark-skin", "low-perfusion"]
    for i in range(n):
        kind = named[(i // 4) % len(named)] if i % 4 == 3 else "sweep"
        if kind != "sweep":
            out.append(scenario(kind, seed=seed + i, duration_s=duration_s))
            continue
        out.append(Physiology(
            name="sweep", seed=int(rng.integers(0, 2**31 - 1)), duration_s=duration_s,
            hr_bpm=_u(rng, 30, 220), spo2_pct=_u(rng, 70, 100),
            pi_pct=float(np.exp(rng.uniform(np.log(0.1), np.log(20.0)))),
            monk=int(rng.integers(1, 11)), resp_rate_bpm=_u(rng, 8, 25), tissue_gain=_u(rng, 0.7, 1.3),
            finger_on_s=_u(rng, 0.5, 2.0), hrv_sdnn_frac=_u(rng, 0.005, 0.03), rsa_frac=_u(rng, 0.0, 0.04),
            wander_frac=_u(rng, 0.002, 0.02), core_c=_u(rng, 35.5, 40.5), room_c=_u(rng, 18, 30),
            diastolic=_u(rng, 0.15, 0.5), notch=_u(rng, 0.0, 0.1),
        ))
    k = max(2, n // 20) if rhythm else 0
    for i in range(k):
        x = (i + 0.5) / k
        out.append(scenario("af", seed=seed + n + i, duration_s=duration_s).with_(hr_bpm=50 + 110 * x))
        out.append(scenario("ectopic", seed=seed + n + i, duration_s=duration_s).with_(hr_bpm=45 + 85 * x))
    return out


# -- output --------------------------------------------------------------------------------------

def write_scenario(path, rec: Recording | Physiology) -> Path:
    """Write the binary file ``sim.hardware.scenario.ArrayScenario.load`` reads: one JSON header line
    (``n``, ``rate_hz``, ``object_mc``, ``ambient_mc``, plus ``truth``), then little-endian int32
    red and IR (pA per mA of LED drive) and ambient (pA), then one byte per sample: finger flag.
    Temperatures are written as a constant or as a 1 Hz list (which ``ArrayScenario`` stretches
    over the recording)."""
    if isinstance(rec, Physiology):
        rec = render(rec)
    path = Path(path)

    def temp(a: np.ndarray):
        return int(a[0]) if np.all(a == a[0]) else [int(x) for x in a]

    head = {"n": rec.n, "rate_hz": int(rec.rate_hz), "object_mc": temp(rec.object_mc),
            "ambient_mc": temp(rec.ambient_mc), "truth": rec.truth()}
    lim = 2**31 - 1
    with open(path, "wb") as f:
        f.write(json.dumps(head, separators=(",", ":")).encode() + b"\n")
        for a in (rec.red_pa, rec.ir_pa, rec.ambient_pa):
            f.write(np.clip(np.round(a), 0, lim).astype("<i4").tobytes())
        f.write(rec.finger.astype(np.uint8).tobytes())
    return path
