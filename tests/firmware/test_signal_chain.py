"""The pulse-oximetry chain (firmware/signal/pulseox.py) on the MicroPython VM: accuracy on
synthetic PPG with known truth, every withholding reason, staleness, IR-only, calibration, and
zero allocation per sample under heap_lock."""
from __future__ import annotations

import numpy as np
import pytest

from host.signalrun import measure_cost, run_chain
from tests.firmware._ppg import ppg, r_of_spo2, render


def _reported(outs, t0=0.0):
    return [o for o in outs if o["withheld"] is None and o["t"] >= t0]


@pytest.mark.parametrize("hr,spo2,pi", [(42.0, 98.0, 3.0), (72.0, 95.0, 2.0), (118.0, 88.0, 1.0),
                                        (175.0, 80.0, 4.0), (210.0, 92.0, 2.0)])
def test_hr_and_spo2_within_2(vm, hr, spo2, pi):
    red, ir, beats = ppg(30, hr=hr, spo2=spo2, pi=pi, seed=int(hr))
    outs = run_chain(red, ir, 100, vm=vm)
    rep = _reported(outs, 12)
    assert len(rep) >= 12, [o["withheld"] for o in outs]
    true_hr = 60.0 / np.mean(np.diff(beats[(beats > 4) & (beats < 30)]))
    for o in rep:
        assert abs(o["hr"] - true_hr) <= 2.0, (o, true_hr)
        assert o["spo2"] is not None and abs(o["spo2"] - spo2) <= 2.0, (o, spo2)
        assert abs(o["pi"] - pi) / pi < 0.10, o      # PI at every rate (not band-limited)
        assert 0.5 <= o["q"] <= 1.0


def test_heart_rate_not_quantised_to_sample_lags(vm):
    # 73.6 bpm = 81.52 samples per beat: a lag-quantised estimate reads 73.2 or 74.1
    red, ir, _ = ppg(30, hr=73.6, hrv=0.0, seed=3)
    rep = _reported(run_chain(red, ir, 100, vm=vm), 10)
    assert rep
    assert abs(np.median([o["hr"] for o in rep]) - 73.6) < 0.25


def test_heart_rate_is_rounded_not_floored(vm):
    # 72.37 bpm: bpm × 10 = 723.7 reads 72.4 (a floor of the mean would read 72.3, 0.05 bpm low
    # on average)
    red, ir, _ = ppg(30, hr=72.37, hrv=0.0, seed=3)
    rep = _reported(run_chain(red, ir, 100, vm=vm), 10)
    assert len(rep) >= 10
    assert all(abs(o["hr"] - 72.4) < 0.01 for o in rep), [o["hr"] for o in rep]


def _hr_last_8_s(beats, t):
    """60 / mean interval between the beats of the last 8 s (the benchmark's reference)."""
    b = beats[(beats >= t - 8) & (beats <= t)]
    return 60.0 * (len(b) - 1) / (b[-1] - b[0])


def _rate_step(before_bpm, after_bpm, step_s=15.0, seconds=30.0):
    b = list(np.arange(0.0, step_s, 60.0 / before_bpm))
    while b[-1] < seconds + 3:
        b.append(b[-1] + 60.0 / after_bpm)
    return np.asarray(b)


@pytest.mark.parametrize("before,after,tol", [(200.0, 170.0, 1.5), (60.0, 70.0, 0.5)])
def test_heart_rate_averages_the_beats_of_the_last_8_s(vm, before, after, tol):
    # a step in rate: while the 8-s window straddles it, HR is the mean over the beats of the
    # last 8 s at every rate. At 200 bpm 8 s hold ~27 intervals (a 16-interval ring covered
    # 4.8 s: up to 7 bpm off here); membership goes by the beats' own instants, not by when the
    # detector confirmed them (~0.2 s later at 60 bpm: one interval too many, up to 2 bpm off)
    beats = _rate_step(before, after)
    red, ir = render(beats, 30.0, pi=2.0)
    rep = _reported(run_chain(red, ir, 100, vm=vm), 14)
    assert len(rep) >= 14
    for o in rep:
        assert abs(o["hr"] - _hr_last_8_s(beats, o["t"])) <= tol, (o, _hr_last_8_s(beats, o["t"]))


def test_resampled_from_25_hz(vm):
    red, ir, _ = ppg(30, hr=80, spo2=96, rate=25, seed=5)
    rep = _reported(run_chain(red, ir, 25, vm=vm), 10)
    assert len(rep) >= 10
    assert abs(np.median([o["hr"] for o in rep]) - 80) < 2
    assert abs(np.median([o["spo2"] for o in rep]) - 96) < 2


def test_ir_only_gives_hr_and_pi_not_spo2(vm):
    _, ir, _ = ppg(25, hr=66, seed=7)
    rep = _reported(run_chain(None, ir, 100, vm=vm), 8)
    assert len(rep) >= 10
    assert all(o["spo2"] is None and o["pi"] is not None for o in rep)
    assert abs(np.median([o["hr"] for o in rep]) - 66) < 2


def test_no_finger_is_withheld_with_its_reason(vm):
    rng = np.random.default_rng(1)
    ir = 180 + np.round(rng.normal(0, 3, 3000)).astype(int)
    red = 140 + np.round(rng.normal(0, 3, 3000)).astype(int)
    outs = run_chain(red, ir, 100, vm=vm)
    assert outs and all(o["withheld"] == "no_finger" and o["hr"] is None and o["spo2"] is None for o in outs)


def test_settling_after_the_finger_lands(vm):
    red, ir, _ = ppg(20, hr=75, finger_on=3.0, seed=2)
    outs = run_chain(red, ir, 100, vm=vm)
    by_t = {round(o["t"]): o for o in outs}
    assert all(by_t[t]["withheld"] == "no_finger" for t in (1, 2, 3))
    assert by_t[4]["withheld"] == "settling" and by_t[4]["hr"] is None
    assert _reported(outs), "a reading once settled"
    first = _reported(outs)[0]
    # 1.5 s of settling, then three beats (0.8 s apart): reported at the beat, not at a whole second
    assert first["t"] - 3.0 <= 5.0, first
    assert round(first["t"] % 1.0, 2) not in (0.0, 1.0), first
    assert abs(first["hr"] - 75) <= 3 and abs(first["spo2"] - 97) <= 2, first
    # one report per second all the same: the cadence restarts from the early report
    assert len(outs) == 20
    ts = [o["t"] for o in outs]
    assert all(0.05 < b - a <= 1.0 + 1e-9 for a, b in zip(ts, ts[1:], strict=False)), ts


def test_no_allocation_from_finger_landing_to_first_reading(vm):
    # heap locked from the first sample: bare sensor, DC jumps as the finger lands, settling, the
    # early evaluations at each beat and the first reading
    red, ir, _ = ppg(12, hr=60, finger_on=2.0, seed=14)
    data = np.empty(2 * len(ir), dtype="<i4")
    data[0::2] = red
    data[1::2] = ir
    vm.write_file("/tmp/l.i32", data.tobytes())
    out = vm.exec(
        "import micropython\nfrom array import array\nfrom firmware.signal.pulseox import PulseOx\n"
        "buf = array('i', open('/tmp/l.i32', 'rb').read())\npo = PulseOx()\npush = po.push\n"
        "first = array('i', [-1])\ni = 0\nmicropython.heap_lock()\n"
        "try:\n    for i in range(0, len(buf), 2):\n        if push(buf[i], buf[i + 1]) and po.hr_x10 >= 0 and first[0] < 0:\n"
        "            first[0] = po.t_ms\nfinally:\n    micropython.heap_unlock()\n"
        "print(first[0], po.withheld, po.hr_x10)\n")
    first, withheld, hr = (int(x) for x in out.split())
    assert 0 < first - 2000 <= 6000 and withheld == 0 and abs(hr - 600) < 30


def _band_noise(rng, n, lo=0.3, hi=4.0, rate=100):
    spec = np.fft.rfft(rng.normal(size=n))
    f = np.fft.rfftfreq(n, 1 / rate)
    spec[(f < lo) | (f > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / x.std()


def test_motion_bursts_are_withheld(vm):
    red, ir, _ = ppg(40, hr=70, seed=4)
    rng = np.random.default_rng(4)
    s = slice(1500, 2200)                                   # 15–22 s
    m = s.stop - s.start
    ir = ir.astype(float)
    red = red.astype(float)
    ir[s] *= 1 + 0.05 * _band_noise(rng, m)
    red[s] *= 1 + 0.05 * _band_noise(rng, m)
    outs = run_chain(red, ir, 100, vm=vm)
    during = [o for o in outs if 16 <= o["t"] <= 22]
    assert during and all(o["withheld"] is not None and o["hr"] is None for o in during)
    assert sum(o["withheld"] == "motion" for o in during) >= len(during) - 1
    assert _reported(outs, 30), "readings come back after the motion"


@pytest.mark.parametrize("hr,pi,dc_ir", [(40.0, 2.0, 100_000.0), (72.0, 0.5, 60_000.0), (72.0, 8.0, 150_000.0),
                                         (120.0, 2.0, 100_000.0), (180.0, 1.0, 100_000.0), (210.0, 4.0, 80_000.0)])
def test_perfusion_index_is_peak_to_trough_over_dc_at_every_rate(vm, hr, pi, dc_ir):
    """PI = foot-to-peak of the raw pulsatile IR signal / its DC × 100 (Masimo's and the
    literature's definition, docs/signal.md): the generator's pulse has exactly ``pi`` % of
    ``dc_ir`` peak to trough. The band-passed pulse loses 5–40 % of it between 40 and 210 bpm
    (the 5.5 Hz low-pass shaves the systolic peak); the reported PI must not."""
    red, ir, _ = ppg(30, hr=hr, pi=pi, dc_ir=dc_ir, dc_red=0.7 * dc_ir, seed=int(hr) + 1)
    rep = _reported(run_chain(red, ir, 100, vm=vm), 10)
    assert len(rep) >= 15
    for o in rep:
        assert abs(o["pi"] - pi) / pi <= 0.05, (o, pi)


def test_low_perfusion_is_decided_on_the_pulse_the_detector_sees(vm):
    """The low-perfusion test is on the band-passed pulse (what the beat detector and R work
    on), not on the reported PI: the same 0.3 % PI is reported at 60 bpm, and withheld at
    200 bpm where the band-passed pulse is about half as large (docs/signal.md)."""
    red, ir, _ = ppg(30, hr=60, pi=0.3, seed=3)
    rep = _reported(run_chain(red, ir, 100, vm=vm), 8)
    assert len(rep) >= 18 and all(abs(o["pi"] - 0.3) <= 0.02 for o in rep)
    red, ir, _ = ppg(30, hr=200, pi=0.3, seed=3)
    late = [o for o in run_chain(red, ir, 100, vm=vm) if o["t"] >= 8]
    assert all(o["withheld"] == "low_perfusion" for o in late), [o["withheld"] for o in late]


def test_low_perfusion_is_withheld(vm):
    red, ir, _ = ppg(30, hr=80, pi=0.08, seed=6)
    outs = run_chain(red, ir, 100, vm=vm)
    late = [o for o in outs if o["t"] >= 8]
    assert not _reported(outs)
    assert sum(o["withheld"] == "low_perfusion" for o in late) >= len(late) * 0.8


def test_clipping_is_withheld(vm):
    red, ir, _ = ppg(30, hr=70, seed=8)
    ir = ir.copy()
    ir[1200:1900] = np.minimum(ir[1200:1900] + 170_000, 262_143)     # saturates on every beat
    outs = run_chain(red, ir, 100, vm=vm)
    during = [o for o in outs if 13 <= o["t"] <= 19]
    assert during and all(o["withheld"] == "clipping" for o in during)
    assert _reported(outs, 24)


def test_ambient_light_heuristic_and_driver_flag(vm):
    # sunlight: the same photocurrent added to both channels, both near full scale
    red, ir, _ = ppg(20, hr=70, dc_ir=240_000, dc_red=236_000, pi=0.5, seed=9)
    outs = run_chain(red, ir, 100, vm=vm)
    assert all(o["withheld"] == "ambient_light" for o in outs if o["t"] >= 2)
    # the driver's ALC overflow flag (FLAG_ALC_OVF) withholds the window it arrives in
    red, ir, _ = ppg(20, hr=70, seed=9)
    vm.write_file("/tmp/s.txt", " ".join(f"{a},{b}" for a, b in zip(red.tolist(), ir.tolist(), strict=True)))
    got = vm.exec(
        "from firmware.signal.pulseox import PulseOx, FLAG_ALC_OVF, WITHHELD\n"
        "po = PulseOx()\nout = []\n"
        "for i, p in enumerate(open('/tmp/s.txt').read().split()):\n"
        "    a, b = p.split(',')\n"
        "    if po.push(int(a), int(b), FLAG_ALC_OVF if 1500 <= i < 1510 else 0):\n"
        "        out.append(WITHHELD[po.withheld])\n"
        "print(out)\n")
    names = eval(got)  # noqa: S307 - a list of names printed by our own code
    assert names[15] == "ambient_light"
    assert "none" in names[10:15] and "none" in names[16:]


def test_irregular_rhythm_reports_the_mean_rate_and_spo2_with_the_flag(vm):
    # atrial-fibrillation-like: every RR drawn independently (CV 18 %)
    red, ir, beats = ppg(40, hr=90, spo2=93.0, irregular=True, seed=10)
    outs = run_chain(red, ir, 100, vm=vm)
    late = [o for o in outs if o["t"] >= 10]
    rep = _reported(outs, 10)
    assert len(rep) >= len(late) * 0.8, [o["withheld"] for o in late]
    assert sum(o["irregular"] for o in rep) >= len(rep) * 0.8
    for o in rep:
        assert abs(o["hr"] - _hr_last_8_s(beats, o["t"])) <= 3.0, o     # the mean rate
        assert abs(o["spo2"] - 93.0) <= 2.0, o                          # R needs no regularity
    # a steady rhythm never carries the flag
    red, ir, _ = ppg(30, hr=90, seed=10)
    assert not any(o["irregular"] for o in run_chain(red, ir, 100, vm=vm))


def test_irregular_rhythm_without_red_is_withheld(vm):
    # IR only: nothing tells an irregular rhythm from motion or lost beats (red and IR agreeing
    # on every beat is the evidence), so the rate is withheld, as before
    _, ir, _ = ppg(40, hr=90, irregular=True, seed=10)
    late = [o for o in run_chain(None, ir, 100, vm=vm) if o["t"] >= 10]
    assert sum(o["withheld"] == "irregular_rhythm" for o in late) >= len(late) * 0.6
    assert len(_reported(late)) <= len(late) * 0.2


def test_irregular_rhythm_at_low_perfusion_is_withheld(vm):
    # a band-passed pulse under 0.5 % of the DC: irregular intervals there are more often lost
    # beats under wander than a rhythm
    red, ir, _ = ppg(40, hr=90, pi=0.3, irregular=True, seed=10)
    late = [o for o in run_chain(red, ir, 100, vm=vm) if o["t"] >= 10]
    assert not any(o["irregular"] for o in late)


def _disrupted(after_bpm, seed=3):
    """Beat onsets: 70 bpm for 15 s, an unexplained rhythm (RR CV 25 %) to 30 s, then a regular
    ``after_bpm`` (a periodic motion, steps or tapping, looks just like this to an IR-only chain)."""
    rng = np.random.default_rng(seed)
    b = list(np.arange(0.0, 15.0, 60 / 70))
    t = b[-1]
    while t < 30.0:
        t += 60 / 70 * min(max(1 + rng.normal(0, 0.35), 0.5), 1.8)
        b.append(t)
    while t < 73.0:
        t += 60 / after_bpm * (1 + rng.normal(0, 0.01))
        b.append(t)
    return np.array(b)


def test_a_new_rate_after_a_disruption_must_repeat_before_it_is_shown(vm):
    # IR only, as the wrist recordings of TROIKA: a regular rate at a new value right after a
    # stretch of motion or unexplained rhythm is withheld (as motion) until it has repeated within
    # 6 % over as many reports as the disruption lasted (at least 6); the same rate resuming
    # where it left off is shown at once
    _, ir = render(_disrupted(150.0), 70.0, pi=2.0)
    outs = run_chain(None, ir, 100, vm=vm)
    assert all(abs(o["hr"] - 70) < 8 for o in _reported(outs) if o["t"] < 30)
    new = [o for o in outs if o["hr"] is not None and abs(o["hr"] - 150) < 3]
    assert new, [(o["t"], o["withheld"]) for o in outs]
    regular = [o for o in outs if o["t"] >= 30 and o["withheld"] != "irregular_rhythm"]
    held = [o for o in regular if o["t"] < new[0]["t"]]
    assert held, [(o["t"], o["withheld"]) for o in outs]
    before = [o["withheld"] for o in outs if o["t"] < held[0]["t"]]
    run = len(before) - max(i for i, w in enumerate(before) if w != "irregular_rhythm") - 1
    assert len(held) >= max(6, run), [(o["t"], o["withheld"]) for o in outs]
    assert all(o["withheld"] == "motion" for o in held), [(o["t"], o["withheld"]) for o in regular]
    assert all(o["withheld"] is None for o in outs if o["t"] >= new[0]["t"])
    # the pulse coming back at its rate after the same disruption: no wait
    _, ir = render(_disrupted(70.0), 70.0, pi=2.0)
    outs = run_chain(None, ir, 100, vm=vm)
    back = [o for o in outs if o["t"] >= 30 and o["withheld"] != "irregular_rhythm"]
    assert back and all(o["withheld"] is None and abs(o["hr"] - 70) < 3 for o in back), back
    # and a clean 150 bpm from placement is read as soon as ever
    _, ir, _ = ppg(20, hr=150.0, seed=5)
    first = _reported(run_chain(None, ir, 100, vm=vm))
    assert first and first[0]["t"] <= 6.0


@pytest.mark.parametrize("k", [24, 47])
def test_spo2_at_low_perfusion_is_not_read_from_a_few_noisy_beats(vm, k):
    # the benchmark suite's recordings 24 and 47 (true PI 0.17 and 0.12 %, 120 and 88 bpm): three
    # beats inflated by noise lifted the beats' median pulse above 0.5 % and SpO2 read 83 against
    # 93 % and 90.5 against 95.6 %; under 0.5 % (the smaller of the beats' median and the tracked
    # amplitude) SpO2 now needs 4 beats from 60 bpm
    from sim import physiology as ph

    rec = ph.render(ph.suite(200)[k])
    red, ir = rec.counts()
    for o in run_chain(red, ir, 100, vm=vm):
        if o["spo2"] is not None:
            assert abs(o["spo2"] - rec.spo2_at(o["t"])) <= 5.0, o
    # a clean pulse at the same perfusion still gives its SpO2 every second
    for hr, pi in ((45.0, 0.3), (90.0, 0.3), (150.0, 0.4)):
        red, ir, _ = ppg(30, hr=hr, pi=pi, spo2=94.0, seed=7)
        late = [o for o in run_chain(red, ir, 100, vm=vm) if o["t"] >= 10]
        assert all(o["spo2"] is not None and abs(o["spo2"] - 94.0) <= 2 for o in late), (hr, pi, late)


def test_a_few_intervals_of_an_irregular_rhythm_give_no_first_reading(vm):
    # before five intervals, an outlier may be the rhythm rather than a lost beat: no reading
    # from the regular-looking rest of them (it read 109 against a mean of 77 bpm)
    beats = np.cumsum([0.0, 0.8, 0.8, 0.8, 0.8, 0.55, 0.52, 0.9, 1.0, 0.6, 0.95, 0.7, 0.85, 0.75, 1.0, 0.6,
                       0.8, 0.9])
    red, ir = render(beats, 13.0, rng=np.random.default_rng(2))
    for o in _reported(run_chain(red, ir, 100, vm=vm)):
        assert abs(o["hr"] - _hr_last_8_s(beats, o["t"])) <= 3.0, o


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_slow_landing_drift_does_not_hold_back_the_first_reading(vm, seed):
    # the light still drifting 1.5 s after the finger landed (10 % of the DC, decaying over
    # 1.5 s) swings the band-passed IR far more than a 0.4 % pulse: measured about the drift's
    # line, the amplitude estimate is capped at the pulse and the first reading comes at
    # 4.5-4.6 s (5.2 s when the cap was the plain range, taken once)
    red, ir, beats = ppg(20, hr=90, pi=0.4, seed=seed, finger_on=1.0)
    t = np.arange(len(ir)) / 100
    drift = np.where(t >= 1.0, 1 + 0.1 * np.exp(-(t - 1.0) / 1.5), 1)
    red, ir = np.round(red * drift).astype(int), np.round(ir * drift).astype(int)
    rep = _reported(run_chain(red, ir, 100, vm=vm))
    assert rep and rep[0]["t"] - 1.0 <= 4.8, rep[:1]
    assert abs(rep[0]["hr"] - _hr_last_8_s(beats, rep[0]["t"])) <= 3.0, rep[0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_landing_overshoot_is_not_the_first_settled_beat(vm, seed):
    # the light overshoots by 5 % 0.8 s after landing: the swing that began before the light
    # settled and was confirmed after it must not restart the amplitude estimate (it set it at
    # several times the pulse and the first reading came at 5.6-5.7 s instead of 3.2 s)
    red, ir, beats = ppg(20, hr=75, pi=1.5, seed=seed, finger_on=1.0)
    t = np.arange(len(ir)) / 100
    x = np.clip((t - 1.0) / 0.8, 0, None)
    g = np.where(t >= 1.0, 1 + 0.05 * x * np.exp(1 - x), 1)
    red, ir = np.round(red * g).astype(int), np.round(ir * g).astype(int)
    rep = _reported(run_chain(red, ir, 100, vm=vm))
    assert rep and rep[0]["t"] - 1.0 <= 4.0, rep[:1]
    assert abs(rep[0]["hr"] - _hr_last_8_s(beats, rep[0]["t"])) <= 3.0, rep[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_slow_placement_with_a_distinct_diastolic_wave_is_read(vm, seed):
    # at 36 bpm the first beat after the light settled is the diastolic wave: the estimates start
    # from the systolic beat before it (kept aside, within 5x), and the wave is no beat (it
    # locked the detector onto both waves and this placement never reported)
    red, ir, beats = ppg(25, hr=36, pi=1.5, seed=seed, finger_on=1.0)
    rep = _reported(run_chain(red, ir, 100, vm=vm))
    assert rep and rep[0]["t"] - 1.0 <= 7.0, rep[:1]
    for o in rep:
        assert abs(o["hr"] - _hr_last_8_s(beats, o["t"])) <= 2.0, o


@pytest.mark.parametrize("spo2,pi", [(72.0, 18.0), (78.0, 20.0)])
def test_spo2_when_the_red_pulse_exceeds_a_sixth_of_its_dc(vm, spo2, pi):
    # high perfusion at a low saturation: the red pulse is a quarter of its DC, beyond the range
    # the ratio's first fixed-point form holds (SpO2 was withheld on every beat)
    red, ir, _ = ppg(25, hr=80, spo2=spo2, pi=pi, seed=7)
    rep = _reported(run_chain(red, ir, 100, vm=vm), 10)
    assert len(rep) >= 12
    for o in rep:
        assert o["spo2"] is not None and abs(o["spo2"] - spo2) <= 2.0, o


@pytest.mark.parametrize("hr", [222.0, 226.0])
def test_a_rhythm_beyond_the_refractory_limit_is_not_read_at_half_rate(vm, hr):
    # beyond 220 bpm some intervals fall under the 27.3-sample refractory limit: the refused beat
    # lies half-way, so the "interval" it leaves spans two beats, and three such read 111-114 bpm
    red, ir, _ = ppg(30, hr=hr, pi=2.0, seed=1, hrv=0.02)
    for o in _reported(run_chain(red, ir, 100, vm=vm)):
        assert o["hr"] >= 200.0, o


def test_a_slow_heart_with_respiratory_arrhythmia_keeps_reporting(vm):
    # 36 bpm: 8 s hold 4 intervals, fewer than the 5 a scattered window needs; once the rhythm
    # swings by +-11 % with breathing, intervals that tile the 8 s (none a lost or extra beat) still
    # give the window's mean rate (they were withheld as "settling" from 21 s on)
    rr = [60 / 36 * (1 + (0.01 if k < 9 else 0.11) * np.sin(2.1 * k)) for k in range(40)]
    beats = np.cumsum([0.0] + rr)
    red, ir = render(beats, 45.0, pi=1.5, rng=np.random.default_rng(4))
    outs = [o for o in run_chain(red, ir, 100, vm=vm) if o["t"] >= 22]
    rep = _reported(outs)
    assert len(rep) == len(outs) >= 20, [o["withheld"] for o in outs]
    for o in rep:
        assert abs(o["hr"] - _hr_last_8_s(beats, o["t"])) <= 1.5, o
        assert not o["irregular"]


def test_stale_after_30_s_without_a_valid_value(vm):
    red, ir, _ = ppg(20, hr=70, seed=11)
    rng = np.random.default_rng(11)
    gone = 45 * 100
    red = np.concatenate([red, 120 + np.round(rng.normal(0, 3, gone)).astype(int)])
    ir = np.concatenate([ir, 150 + np.round(rng.normal(0, 3, gone)).astype(int)])
    outs = run_chain(red, ir, 100, vm=vm)
    last_valid = max(o["t"] for o in outs if o["withheld"] is None)
    for o in outs:
        if o["t"] > last_valid:
            assert o["hr"] is None
            assert o["stale"] == (round(o["t"] - last_valid, 3) > 30.0), o
    assert any(o["stale"] for o in outs)


def test_device_calibration_changes_spo2(vm):
    red, ir, _ = ppg(25, hr=70, spo2=90, seed=12)
    r = r_of_spo2(90.0)
    outs = run_chain(red, ir, 100, cal={"spo2": [110.0, -25.0]}, vm=vm)
    rep = _reported(outs, 10)
    assert rep and abs(np.median([o["spo2"] for o in rep]) - (110 - 25 * r)) < 1.5


def test_calibration_integer_curve_matches_the_formula(vm):
    got = vm.eval("[__import__('firmware.signal.calibration').signal.calibration.Calibration().spo2_x10(r) "
                  "for r in range(205, 3073, 37)]")
    for r, v in zip(range(205, 3073, 37), got, strict=True):
        x = r / 1024
        want = min(100.0, max(0.0, 1.5958422 * x * x - 34.6596622 * x + 112.6898759))
        assert abs(v / 10 - want) <= 0.1, (x, v, want)
    assert vm.eval("__import__('firmware.signal.calibration').signal.calibration.Calibration().spo2_x10(100)") == -1


def test_zero_allocation_per_sample_under_heap_lock(vm):
    red, ir, _ = ppg(40, hr=72, seed=13)
    data = np.empty(2 * len(ir), dtype="<i4")
    data[0::2] = red
    data[1::2] = ir
    vm.write_file("/tmp/z.i32", data.tobytes())
    out = vm.exec(
        "import micropython, gc\nfrom array import array\nfrom firmware.signal.pulseox import PulseOx\n"
        "buf = array('i', open('/tmp/z.i32', 'rb').read())\npo = PulseOx()\npush = po.push\n"
        "for i in range(0, 4000, 2):\n    push(buf[i], buf[i + 1])\n"      # 20 s: settled, beats
        "gc.collect()\nreports = 0\nmicropython.heap_lock()\n"
        "try:\n    for i in range(4000, len(buf), 2):\n        if push(buf[i], buf[i + 1]):\n"
        "            reports += 1\nfinally:\n    micropython.heap_unlock()\n"
        "print(reports, po.withheld, po.hr_x10)\n")
    reports, withheld, hr = (int(x) for x in out.split())
    assert reports == 20 and withheld == 0 and abs(hr - 720) < 30


def test_measure_cost_reports_zero_allocation():
    # the cost figure's budget (<= 150 reference units) is the benchmark's (make bench), not a test's:
    # on a loaded machine a timing says nothing about the firmware
    c = measure_cost(5000)
    assert c["alloc_bytes_per_sample"] == 0
    assert c["heap_locked_ok"] is True
    assert c["cost_ref_units_per_sample"] > 0
    assert c["steady_withheld"] is None and abs(c["steady_hr"] - 72) < 2


def test_premature_beats_with_compensatory_pauses_are_a_rhythm_not_lost_beats(vm):
    # ventricular trigeminy at 70 bpm: every third beat premature (coupling 60 % of the cycle) and
    # followed by its compensatory pause (the two make two cycles). A third of the intervals are
    # premature, so the lower quartile is one of them and the pauses lie near twice it: the 1 : 2
    # test for lost beats took them for beats lost at a steady rate and withheld every window
    rr = 60 / 70
    beats = np.cumsum([0.0] + [rr, 0.6 * rr, 1.4 * rr] * 14)
    red, ir = render(beats, 35.0, rng=np.random.default_rng(4))
    late = [o for o in run_chain(red, ir, 100, vm=vm) if o["t"] >= 10]
    rep = _reported(late)
    assert len(rep) >= len(late) * 0.9, [o["withheld"] for o in late]
    for o in rep:
        assert o["irregular"], o
        # (8 s hold 3-4 cycles of the pattern: the mean over them moves by ~4 bpm with the phase)
        assert abs(o["hr"] - _hr_last_8_s(beats, o["t"])) <= 5.0, o
    # beats lost at a steady rate (every third, 1 : 2 intervals with no premature beat before
    # the long ones) are still no rhythm
    lost = np.cumsum([0.0] + [rr * 0.75, rr * 0.75, 2 * rr * 0.75] * 18)
    red, ir = render(lost, 35.0, rng=np.random.default_rng(4))
    assert not any(o["irregular"] for o in run_chain(red, ir, 100, vm=vm))


def test_irregular_rhythm_under_a_breathing_baseline_keeps_its_readings(vm):
    # atrial fibrillation at 70 bpm, PI 1.2 %, and a breathing baseline of 0.4 % of the DC at
    # 20 breaths/min common to red and IR (within what real finger recordings show against a
    # pulse of this size). The baseline adds to each beat's valley-to-peak rise with R = 1, and in
    # AF the rises differ beat to beat, so R from the rise scattered by 20-40 % and the rhythm
    # test (red and IR agree on the beats) withheld ~40 % of the windows; R from the upstroke's
    # middle half agrees within a few % and SpO2 stays within 2 points
    for seed in (10, 11):
        red, ir, beats = ppg(40, hr=70, pi=1.2, spo2=95.0, seed=seed, irregular=True)
        b = 1 + 0.004 * np.sin(2 * np.pi * 20 / 60 * np.arange(len(ir)) / 100 + 1.0)
        red, ir = np.round(red * b).astype(int), np.round(ir * b).astype(int)
        late = [o for o in run_chain(red, ir, 100, vm=vm) if o["t"] >= 10]
        rep = _reported(late)
        assert len(rep) >= len(late) * 0.9, (seed, [o["withheld"] for o in late])
        for o in rep:
            assert o["spo2"] is not None and abs(o["spo2"] - 95.0) <= 2.0, o
            assert abs(o["hr"] - _hr_last_8_s(beats, o["t"])) <= 5.0, o
