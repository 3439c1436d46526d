"""The physiology synthesiser tells the truth: the signal it renders carries the heart rate, SpO2
(through the inverse of the firmware's calibration curve) and perfusion it claims, no pulse without
a finger, reproducible seeds; its scenario files play back in ArrayScenario on MicroPython."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sim import physiology as ph


def _fft_hr(x: np.ndarray, rate: float) -> float:
    x = x - x.mean()
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 16 * len(x)))
    f = np.fft.rfftfreq(16 * len(x), 1.0 / rate)
    band = (f > 0.4) & (f < 4.0)
    return 60.0 * f[band][np.argmax(spec[band])]


def _beat_ratios(rec: ph.Recording, t0: float) -> tuple[float, float]:
    """Median over beats of R = (AC_red/DC_red)/(AC_ir/DC_ir) and of AC_ir/DC_ir, measured on the
    rendered photocurrents beat by beat (peak-to-trough, DC = beat mean)."""
    rs, pis = [], []
    b = rec.beats[(rec.beats > t0) & (rec.beats < rec.duration_s)]
    for a, c in zip(b[:-1], b[1:], strict=False):
        s = slice(int(a * rec.rate_hz), int(c * rec.rate_hz))
        red, ir = rec.red_pa[s], rec.ir_pa[s]
        acr, aci = np.ptp(red) / red.mean(), np.ptp(ir) / ir.mean()
        rs.append(acr / aci)
        pis.append(aci)
    return float(np.median(rs)), 100.0 * float(np.median(pis))


@pytest.mark.parametrize("hr", [30.0, 45.0, 72.0, 130.0, 180.0, 220.0])
def test_heart_rate_of_signal_matches_request(hr):
    p = ph.Physiology(seed=3, hr_bpm=hr, duration_s=40.0, hrv_sdnn_frac=0.005, rsa_frac=0.0)
    rec = ph.render(p)
    red, ir = rec.counts()
    on = rec.finger
    assert abs(_fft_hr(ir[on].astype(float), rec.rate_hz) - hr) < 0.02 * hr + 0.5
    # beat counting agrees with the truth the recording reports
    assert abs(rec.hr_at(35.0) - hr) < 0.04 * hr


@pytest.mark.parametrize("spo2", [70.0, 80.0, 88.0, 94.0, 98.0, 100.0])
def test_ratio_maps_back_through_calibration(spo2):
    rec = ph.render(ph.Physiology(seed=5, spo2_pct=spo2, pi_pct=2.0, monk=1, wander_frac=0.0,
                                  resp_baseline_frac=0.0, duration_s=20.0))
    r, pi = _beat_ratios(rec, 3.0)
    assert abs(float(ph.spo2_from_r(r)) - spo2) < 1.0
    assert abs(pi - 2.0) < 0.25
    assert np.nanmean(rec.spo2) == pytest.approx(spo2)


@pytest.mark.parametrize("hr,pi", [(40.0, 0.5), (75.0, 2.0), (130.0, 8.0), (200.0, 2.0)])
def test_perfusion_truth_is_peak_to_trough_over_the_mean(hr, pi):
    """The truth the benchmark scores PI against is the standard definition (docs/signal.md):
    peak-to-trough of the pulsatile IR light over its mean, at every heart rate."""
    rec = ph.render(ph.Physiology(seed=7, hr_bpm=hr, pi_pct=pi, monk=1, wander_frac=0.0,
                                  resp_baseline_frac=0.0, resp_am_frac=0.0, duration_s=20.0))
    _, measured = _beat_ratios(rec, 3.0)
    assert measured == pytest.approx(pi, rel=0.03)
    assert rec.pi_at(15.0) == pytest.approx(pi)


def test_inverse_calibration_is_the_inverse():
    for s in np.linspace(70, 100, 31):
        assert float(ph.spo2_from_r(ph.r_from_spo2(s))) == pytest.approx(s, abs=1e-3)
    r = ph.r_from_spo2(np.array([70.0, 85.0, 100.0]))
    assert r[0] > r[1] > r[2] > 0          # lower saturation, higher R
    with pytest.raises(ValueError):
        ph.r_from_spo2(150.0)


def test_calibration_matches_firmware_defaults():
    """The synthesiser renders R through the firmware's own default curve, so a simulated
    saturation reads back as itself on the device."""
    import warnings

    from firmware.signal import calibration

    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the firmware's defaults must be found, not guessed
        coeffs = ph.calibration_coefficients()
    scale = calibration.SPO2_COEFFS_SCALE
    assert coeffs == tuple(v / scale for v in calibration.SPO2_COEFFS)
    assert float(ph.spo2_from_r(ph.r_from_spo2(90.0))) == pytest.approx(90.0, abs=1e-3)


def test_no_finger_has_no_pulse():
    rec = ph.render(ph.scenario("no-finger", seed=1))
    assert not rec.finger.any()
    assert np.isnan(rec.hr_at(20.0))
    red, ir = rec.counts()
    for ch in (rec.red_pa, rec.ir_pa):
        x = ch - ch.mean()
        spec = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1.0 / rec.rate_hz)
        band = spec[(f > 0.5) & (f < 4.0)].sum()
        # only sensor noise: band power per DC² far below even a 0.1 % perfusion pulse
        assert band / (ch.mean() ** 2 * len(x) ** 2) < 1e-8
    assert ir.max() < 2000                  # cross-talk only: nowhere near a finger's ~80,000 counts
    normal = ph.render(ph.scenario("normal", seed=1))
    assert normal.counts()[1][normal.finger].mean() > 20_000


def test_low_perfusion_is_still_a_pulse_at_the_right_rate():
    rec = ph.render(ph.Physiology(seed=9, pi_pct=0.1, hr_bpm=66.0, duration_s=40.0, rsa_frac=0.0))
    _, ir = rec.counts()
    assert abs(_fft_hr(ir[rec.finger].astype(float), rec.rate_hz) - 66.0) < 2.0


def test_seeds_reproduce_and_differ():
    a = ph.render(ph.scenario("motion", seed=4))
    b = ph.render(ph.scenario("motion", seed=4))
    c = ph.render(ph.scenario("motion", seed=5))
    assert np.array_equal(a.red_pa, b.red_pa) and np.array_equal(a.counts()[1], b.counts()[1])
    assert a.params == b.params
    assert not np.array_equal(a.ir_pa, c.ir_pa)


def test_scenarios_carry_their_truth():
    motion = ph.render(ph.scenario("motion", seed=2))
    assert motion.motion.any() and motion.expected_withheld(float(motion.t[motion.motion][50])) == "motion"
    assert ph.render(ph.scenario("normal", seed=2)).expected_withheld(20.0) is None
    tachy = ph.scenario("tachycardia", seed=2)
    brady = ph.scenario("bradycardia", seed=2)
    assert tachy.hr_bpm >= 130 and brady.hr_bpm <= 50
    hyp = ph.render(ph.scenario("hypoxia", seed=2))
    assert hyp.spo2_at(29.0) < 81 and hyp.spo2_at(5.0) > hyp.spo2_at(29.0)
    amb = ph.render(ph.scenario("ambient", seed=2))
    assert amb.clipped()[amb.finger].mean() > 0.5
    off = ph.render(ph.scenario("finger-off", seed=2))
    assert off.finger.any() and not off.finger[-10:].any()
    assert len(off.finger_on_times()) == 1
    fever = ph.render(ph.scenario("fever", seed=2))
    normal = ph.render(ph.scenario("normal", seed=2))
    assert fever.core_c >= 38.0 > normal.core_c
    # the forehead reads below the core, more so in a colder room
    cold = ph.render(ph.Physiology(core_c=37.0, room_c=15.0))
    warm = ph.render(ph.Physiology(core_c=37.0, room_c=30.0))
    assert cold.object_mc.mean() < warm.object_mc.mean() < 37000


def test_skin_tone_lowers_red_more_than_ir():
    light = ph.render(ph.Physiology(monk=1, seed=1))
    dark = ph.render(ph.Physiology(monk=10, seed=1))
    on = light.finger
    red_drop = dark.red_pa[on].mean() / light.red_pa[on].mean()
    ir_drop = dark.ir_pa[on].mean() / light.ir_pa[on].mean()
    assert red_drop < ir_drop < 1.0
    assert red_drop < 0.5


def test_led_current_and_quantisation():
    rec = ph.render(ph.Physiology(seed=1))
    r7, i7 = rec.counts(led_ma=7.0)
    r14, i14 = rec.counts(led_ma=14.0)
    on = rec.finger
    assert i14[on].mean() == pytest.approx(2 * i7[on].mean(), rel=0.01)
    assert i7.dtype.kind == "i" and i7.max() <= ph.ADC_MAX and i7.min() >= 0
    assert rec.counts(led_ma=50.0, range_na=2048)[1].max() == ph.ADC_MAX   # saturates


def test_scenario_file_round_trips_on_micropython(vm, tmp_path):
    rec = ph.render(ph.scenario("fever", seed=7, duration_s=6.0))
    path = ph.write_scenario(tmp_path / "fever.scn", rec)
    head = json.loads(path.read_bytes().split(b"\n", 1)[0])
    assert head["n"] == rec.n and head["rate_hz"] == 100
    vm.write_file("/fever.scn", path.read_bytes())
    vm.exec("from sim.hardware.scenario import ArrayScenario\n"
            "import array\n"
            "s = ArrayScenario.load('/fever.scn')\n"
            "o = array.array('i', [0, 0, 0])\n"
            "def at(us):\n"
            "    s.optical(us, o)\n"
            "    return [o[0], o[1], o[2], s.finger(us), s.object_mc(us), s.ambient_mc(us)]\n")
    assert vm.eval("s.n") == rec.n
    for i in (0, 50, 150, 420, rec.n - 1):
        got = vm.eval(f"at({i * 10000})")
        assert got[0] == int(round(rec.red_pa[i])) and got[1] == int(round(rec.ir_pa[i]))
        assert got[2] == int(round(rec.ambient_pa[i]))
        assert got[3] == bool(rec.finger[i])
        assert got[4] == int(rec.object_mc[i * len(rec.object_mc) // rec.n])
        assert got[5] == int(rec.ambient_mc[i * len(rec.ambient_mc) // rec.n])


@pytest.mark.parametrize("name", ["normal", "no-finger"])
def test_scenario_feeds_the_max30102_model(vm, tmp_path, name):
    """The scenario file drives the simulated MAX30102 on MicroPython, and what the model delivers
    is what ``Recording.counts()`` predicts at the same LED current and range."""
    rec = ph.render(ph.scenario(name, seed=3, duration_s=9.0))
    vm.write_file("/s.scn", ph.write_scenario(tmp_path / "s.scn", rec).read_bytes())
    # 35 × 0.2 mA = 7 mA, 8.5 s (tests/sim/_maxraw.py)
    vm.exec("from tests.sim._maxraw import read_scenario\nred, ir = read_scenario('/s.scn', 35, 85)")
    red = np.asarray(vm.eval("red"))
    ir = np.asarray(vm.eval("ir"))
    assert len(ir) >= 820
    pr, pi_ = rec.counts(led_ma=7.0, range_na=4096)
    n = min(len(ir), rec.n) - 1
    sl = slice(300, n)                                 # after the finger has landed
    assert np.median(np.abs(ir[sl] - pi_[sl])) < 0.01 * max(1.0, float(np.median(pi_[sl]))) + 10
    assert np.median(np.abs(red[sl] - pr[sl])) < 0.01 * max(1.0, float(np.median(pr[sl]))) + 10
    if name == "normal":
        assert abs(_fft_hr(ir[sl].astype(float), 100.0) - rec.hr_at(8.0)) < 6.0
        # the pulse itself (beat-to-beat detail) is the synthesiser's, sample for sample
        assert np.corrcoef(np.diff(ir[sl].astype(float)), np.diff(pi_[sl].astype(float)))[0, 1] > 0.9
    else:
        assert ir.max() < 2000


def test_bench_statistics_on_hand_computed_values():
    from bench.peers import hr_in_window
    from bench.peers.rd117 import SPO2_TABLE, estimate
    from bench.signal_stats import arms, bland_altman, mae, pearson

    # Arms = sqrt(mean(d²)): d = (1, −1, 2, 0) -> sqrt(6/4)
    assert arms([91, 89, 92, 90], [90, 90, 90, 90]) == pytest.approx(math.sqrt(1.5))
    assert mae([91, 89, 92, 90], [90, 90, 90, 90]) == pytest.approx(1.0)
    # Bland–Altman: d = (1, 3, 5): bias 3, SD 2 (n − 1) -> limits 3 ± 3.92
    bias, lo, hi = bland_altman([11, 13, 15], [10, 10, 10])
    assert (bias, lo, hi) == pytest.approx((3.0, 3.0 - 3.92, 3.0 + 3.92))
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        arms([], [])
    # HR from beats 1 s apart ending in the window: 60 bpm; a rejected interval is left out
    beats = np.array([0.0, 1.0, 2.0, 3.0, 3.5])
    assert hr_in_window(beats, 3.0, 8.0) == pytest.approx(60.0)
    assert hr_in_window(beats, 4.0, 8.0, np.array([True, True, True, False])) == pytest.approx(60.0)
    # RD117's table is its quadratic; its HR is quantised to 1500 / integer interval
    assert SPO2_TABLE[50] == round(-45.060 * 0.25 + 30.354 * 0.5 + 94.845)
    t = np.arange(100)
    ir = (100000 - 800 * np.maximum(0, np.sin(2 * np.pi * t / 20.0))).astype(int)   # 75 bpm at 25 sps
    spo2, s_ok, hr, h_ok, r = estimate(ir, (ir * 0.8).astype(int))
    assert h_ok and hr == 75 and s_ok and 95 <= r <= 105     # equal modulation: R ≈ 1


def test_bench_clean_coverage_counts_windows_at_or_above_the_resolvable_floor():
    from bench import signal as bs

    nan = float("nan")

    def row(t, hr, pi):
        return {"t": t, "out": True, "withheld": None if hr == hr else "low_perfusion", "hr": hr, "spo2": nan,
                "pi": nan, "q": 0.5, "irregular": False, "ref_hr": 70.0, "ref_spo2": 97.0, "ref_pi": pi,
                "finger_none": False, "expect": None, "hp_hr": nan, "nk_hr": nan, "rd_hr": nan, "rd_spo2": nan,
                "rd_r": nan}

    def job(name, pi, rows):
        return {"name": name, "seed": 1, "hr": 70.0, "spo2": 97.0, "pi": pi, "monk": 3, "on": 1.0, "off": None,
                "motion": [], "duration": 35.0, "chain": True, "vm_s": 0.0, "n": 3500, "rows": rows}

    # above the floor: 3 of 4 clean windows reported (the one 5 s after placement is not clean);
    # below it: 1 of 4
    above = job("sweep", 0.5, [row(6.0, nan, 0.5), row(12.0, 70.0, 0.5), row(13.0, 70.0, 0.5),
                               row(14.0, 70.0, 0.5), row(15.0, nan, 0.5)])
    below = job("sweep", 0.12, [row(12.0, nan, 0.12), row(13.0, nan, 0.12), row(14.0, 70.0, 0.12),
                                row(15.0, nan, 0.12)])
    f, detail = bs.synthetic_figures([above, below])
    assert f["resolvable_pi_floor_pct"] == bs.RESOLVABLE_PI_PCT == 0.3
    assert (f["clean_windows"], f["clean_reported_hr_pct"]) == (4, pytest.approx(75.0))
    assert (f["clean_windows_all_pi"], f["clean_reported_hr_pct_all_pi"]) == (8, pytest.approx(50.0))
    assert (f["clean_windows_below_floor"], f["clean_reported_hr_pct_below_floor"]) == (4, pytest.approx(25.0))
    bands = {b["band"]: b for b in detail["pi_bands"]}
    assert bands["0.5–1"]["windows"] == 5 and bands["0.1–0.15"]["coverage_pct"] == pytest.approx(25.0)
