"""The motion reference (firmware/signal/motion.py) on the real MicroPython VM: the rule's verdicts
on known motions (a cadence at the rate, its half and double, an unrelated one, a small one, a
vigorous one), the magnitude from x/y/z, no allocation per sample or per check; the chain with it
through the harness (host/signalrun.py); and the device with the LIS3DH fitted."""
from __future__ import annotations

import math

import numpy as np
import pytest

from host import signalrun
from tests.firmware import _ppg

MOTION = """
from firmware.signal.motion import MotionRef, NONE, COINCIDENT, VIGOROUS
from firmware.signal.stats import isqrt
mr = MotionRef()
def feed(bpm, amp_mg, seconds, harm=0.0):
    # |a| = 1 g + a cadence at bpm (sine) with an optional second harmonic, 100 Hz
    import math
    w = 2 * math.pi * bpm / 60 / 100
    for i in range(int(seconds * 100)):
        mr.push(1000 + int(amp_mg * (math.sin(w * i) + harm * math.sin(2 * w * i + 0.7))))
"""


def verdicts(vm, bpm, amp, rates, seconds=10, harm=0.0):
    vm.exec(MOTION + f"feed({bpm}, {amp}, {seconds}, {harm})")
    return [vm.eval(f"mr.check({r})") for r in rates]


def test_cadence_at_the_rate_its_half_or_double_is_withheld(vm):
    # a 150-steps/min cadence at 400 mg: rates at it, at half and at double coincide
    got = verdicts(vm, 150, 400, [1500, 1480, 750, 3000])
    assert got == [1, 1, 1, 1]
    assert 700 <= vm.eval("mr.share_pm") and 260 <= vm.eval("mr.rms_mg") <= 300   # 400 / sqrt 2
    # rates away from it (by more than a DFT bin of 8 s) are not
    assert [vm.eval(f"mr.check({r})") for r in (1200, 1800, 1000, 600)] == [0, 0, 0, 0]
    assert vm.eval("mr.why") == 0


def test_small_or_unrelated_motion_keeps_the_rate(vm):
    # 50 mg at the pulse rate: below the gate (a still limb shows the pulse itself)
    assert verdicts(vm, 72, 50, [720]) == [0]
    assert 30 <= vm.eval("mr.rms_mg") <= 40
    # a still device: nothing
    vm.exec("mr.reset()\nfor i in range(1000):\n    mr.push(1000)")
    assert vm.eval("[mr.check(720), mr.rms_mg]") == [0, 0]


def test_vigorous_motion_withholds_any_rate_and_short_windows_do_not(vm):
    assert verdicts(vm, 100, 2400, [720, 1500]) == [2, 2]
    assert vm.eval("mr.rms_mg") >= 1500
    # under 4 s of motion samples: no verdict yet
    vm.exec("mr.reset()")
    vm.exec("feed(150, 400, 3.5)")
    assert vm.eval("[mr.check(1500), mr.rms_mg]") == [0, -1]
    vm.exec("feed(150, 400, 1)")
    assert vm.eval("mr.check(1500)") == 1


def test_magnitude_from_xyz_andisqrt(vm):
    vm.exec(MOTION)
    assert vm.eval("[isqrt(v) for v in (0, 1, 2, 15, 16, 17, 1000000, 1073741823)]") == \
        [0, 1, 1, 3, 4, 4, 1000, 32767]
    # a swinging arm: x/y/z changing smoothly; the magnitude follows within 1 mg after the start
    vm.exec("import math\nerr = 0\nfor i in range(500):\n"
            "    x = int(800 * math.sin(i / 7)); y = int(-600 * math.cos(i / 11)); z = 1000 + int(300 * math.sin(i / 5))\n"
            "    mr.push_xyz(x, y, z)\n"
            "    if i > 5:\n        err = max(err, abs(mr.mag - isqrt(x * x + y * y + z * z)))")
    assert vm.eval("err") <= 1
    vm.exec("mr.push_xyz(0, 0, 0)\nmr.push_xyz(0, 0, 0)\nmr.push_xyz(3, 4, 0)")    # free fall, then 5 mg
    assert vm.eval("mr.mag") >= 1


def test_no_allocation_per_sample_or_check(vm):
    vm.exec(MOTION + "from tests.firmware._heap import locked\nfeed(150, 400, 10)\n"
            "def one():\n    for i in range(400):\n        mr.push_xyz(100, -200, 1000 + (i & 63) * 8)\n"
            "    return mr.check(1500) * 10 + mr.check(900)")   # an int: a list would allocate
    out, state, alloc = vm.eval("locked(one)")
    assert state == "ok" and alloc == 0
    vm.exec("feed(150, 400, 10)")
    out, state, alloc = vm.eval("locked(lambda: mr.check(1500))")
    assert (out, state, alloc) == (1, "ok", 0)


def test_cost_measurement_with_the_motion_reference_allocates_nothing():
    # the benchmark's worst case: a motion that follows the pulse, DFTs every report, all withheld
    c = signalrun.measure_cost(5000, motion=True)
    assert c["alloc_bytes_per_sample"] == 0 and c["heap_locked_ok"] is True
    assert c["steady_withheld"] == "motion" and c["cost_ref_units_per_sample"] > 0


def _pulse(seconds: float, hr: float):
    red, ir, _ = _ppg.ppg(seconds=seconds, hr=hr, seed=3)
    return red, ir


def _cadence(n: int, bpm: float, amp: float) -> np.ndarray:
    t = np.arange(n) / 100.0
    return 1000.0 + amp * np.sin(2 * math.pi * bpm / 60.0 * t)


def test_chain_withholds_a_rate_that_is_the_motions_and_keeps_the_rest(vm):
    red, ir = _pulse(40, 96)
    base = signalrun.run_chain(red, ir, 100, vm=vm)
    assert sum(1 for o in base if o["hr"] is not None) >= 25
    # a still accelerometer and an unrelated cadence (150/min) change nothing: bit for bit
    for mot in (np.full(len(ir), 1000.0), _cadence(len(ir), 150, 400)):
        assert signalrun.run_chain(red, ir, 100, vm=vm, motion=mot) == base
    # the same cadence as the pulse: every report from 4 s of motion on is withheld as motion
    got = signalrun.run_chain(red, ir, 100, vm=vm, motion=_cadence(len(ir), 96, 400))
    assert all(o["hr"] is None and o["spo2"] is None for o in got if o["t"] >= 4.0)
    assert sum(1 for o in got if o["withheld"] == "motion") >= 30
    # half the pulse rate (the pulse at the motion's second harmonic): withheld too
    got = signalrun.run_chain(red, ir, 100, vm=vm, motion=_cadence(len(ir), 48, 400))
    assert all(o["hr"] is None for o in got if o["t"] >= 4.0)


def test_harness_rejects_a_bad_motion_channel():
    red, ir = _pulse(5, 72)
    with pytest.raises(signalrun.SignalInputError, match="differ in length"):
        signalrun.prepare_motion(np.ones(10), len(ir), 100)
    with pytest.raises(signalrun.SignalInputError, match="non-numeric"):
        signalrun.prepare_motion(np.full(len(ir), np.nan), len(ir), 100)


DEVICE = """
from sim.hardware.stepped_device import SteppedDevice
sd = SteppedDevice('/scenario.bin', unix_time=1795430400, accel=True)
board, app = sd.board, sd.app
steps, press, until = sd.steps, sd.press, sd.until
steps(3)
"""


def _device(vm, scenario="normal", seed=1):
    import tempfile
    from pathlib import Path

    from host.commands.sim import write_scenario
    from sim import physiology

    with tempfile.TemporaryDirectory() as tmp:
        vm.write_file("/scenario.bin", write_scenario(scenario, seed, 60, Path(tmp) / "s.bin").read_bytes())
    vm.exec(DEVICE)
    return physiology.scenario(scenario, seed=seed, duration_s=60)


def test_device_with_the_accelerometer_still_measures_as_before(vm):
    truth = _device(vm)
    assert vm.eval("[board.accel.addr, app.ppg.motion is not None]") == [0x18, True]
    vm.exec("press()")
    assert vm.eval("until(lambda: app.state == 'result', 4000)"), vm.eval("[app.state, app.last_error]")
    r = vm.eval("app.result.to_dict()")
    assert r["reason"] is None and abs(r["hr"] - truth.hr_bpm) <= 4 and abs(r["spo2"] - truth.spo2_pct) <= 3
    assert vm.eval("app.uplink.sensors.get('lis3dh')") == "ok"
    assert vm.eval("board.lis.popped") > 300                 # the FIFO was drained all along
    assert vm.eval("board.lis.regs[0x20] >> 4") == 0         # and the part powered down after


def test_device_shaken_at_the_pulse_rate_withholds_for_motion(vm):
    truth = _device(vm)
    period_us = int(60e6 / truth.hr_bpm)
    vm.exec("import math\ndef shake(t, out):\n"
            f"    out[0] = int(500 * math.sin(2 * math.pi * (t % {period_us}) / {period_us}))\n"
            "    out[1] = 0\n    out[2] = 1000 + out[0]\n"
            "board.lis.motion = shake\npress()")
    assert vm.eval("until(lambda: app.state == 'result', 4000)")
    r = vm.eval("app.result.to_dict()")
    assert r["hr"] is None and r["spo2"] is None and r["reason"] == "motion"


def test_device_goes_on_without_a_failing_accelerometer(vm):
    truth = _device(vm)
    vm.exec("board.lis.inject('corrupt')\npress()")
    assert vm.eval("until(lambda: app.state == 'result', 4000)")
    r = vm.eval("app.result.to_dict()")
    assert r["reason"] is None and abs(r["hr"] - truth.hr_bpm) <= 4
    assert vm.eval("app.uplink.sensors.get('lis3dh')") == "error: corrupt"
    assert vm.eval("app.state") == "result" and vm.eval("app.last_error") is None
