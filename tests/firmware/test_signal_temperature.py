"""Temperature processing (firmware/signal/temperature.py) on the MicroPython VM: robust averaging,
outlier rejection, calibration, forehead->core offset, fever and LO/HI flags."""
from __future__ import annotations

import pytest

from host.signalrun import run_temperature


def test_average_rejects_outliers(vm):
    reads = [3650, 3652, 3648, 3651, 3649, 3650, 10000, -27315, 3653, 3647]
    r = run_temperature(reads, site="none", vm=vm)
    assert r["object_c"] == pytest.approx(36.50, abs=0.005)
    assert r["n_rejected"] == 2 and r["n_used"] == 8
    assert r["flags"] == []


def test_calibration_gain_and_offset(vm):
    # true = 1.02 × measured − 0.50 °C
    r = run_temperature([3500] * 8, cal_gain_ppm=1_020_000, cal_offset_cc=-50, site="none", vm=vm)
    assert r["object_c"] == pytest.approx(35.70 - 0.50, abs=0.005)


def test_forehead_offset_fixed_and_with_ambient(vm):
    r = run_temperature([3610] * 8, site="forehead", vm=vm)
    assert r["object_c"] == pytest.approx(36.10, abs=0.005)
    assert r["temp_c"] == pytest.approx(37.00, abs=0.005)          # + 0.90 °C
    out = vm.exec("from firmware.signal.temperature import TempProcessor\n"
                  "tp = TempProcessor(site='forehead')\n"
                  "for i in range(8):\n    tp.add(3610, 2410)\n"
                  "print(tp.result()[0])\n")
    assert int(out) == 3610 + round(0.075 * (3610 - 2410))         # heat balance, k = 0.075


@pytest.mark.parametrize("cc,flags", [(3799 - 90, []), (3800 - 90, ["fever"]), (3390 - 90, ["LO"]),
                                      (4260 - 90, ["fever", "HI"])])
def test_fever_lo_hi_flags(vm, cc, flags):
    r = run_temperature([cc] * 6, site="forehead", vm=vm)
    assert r["flags"] == flags, r


def test_no_reading_when_reads_disagree_or_too_few(vm):
    assert run_temperature([3600, 3601], vm=vm)["flags"] == ["no_reading"]
    r = run_temperature([3600, 3700, 3800, 3900, 4000, 4100], vm=vm)
    assert r["temp_c"] is None and r["flags"] == ["no_reading"]


def test_bad_arguments_raise(vm):
    with pytest.raises(Exception, match="site"):
        run_temperature([3600] * 4, site="armpit", vm=vm)
