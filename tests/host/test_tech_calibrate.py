"""`nabd calibrate temp|spo2` on a virtual device given per-unit errors (thermometer offset and
gain, optical R), through real processes: the errors show before, are within tolerance after
(measured through the firmware's own calibrated chains on the MicroPython device), and refusals
write nothing on the device."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.host.test_virtual_device import Device as VDevice
from tests.host.test_virtual_device import Serial

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# the firmware's calibrated chains, on the device, as a reading would compute them
MEASURE = """
from firmware.boards import current
from firmware import config
from firmware.signal import calibration
from firmware.signal.temperature import TempProcessor
from firmware.signal.pulseox import PulseOx
from firmware.drivers.mlx90614 import MLX90614
from firmware.drivers.max30102 import MAX30102
b = current()
cal = calibration.from_config(config.load(b).calibration)
def temp():
    th = TempProcessor(cal.temp_gain_ppm, cal.temp_offset_cc, 'forehead')
    m = MLX90614(b.i2c, clock=b.clock)
    for i in range(16):
        b.clock.sleep_ms(100)
        th.add(m.object_cc())
    th.result()
    return th.object_cc
def spo2(s=10):
    d = MAX30102(b.i2c, clock=b.clock)
    d.reset(); d.check(); d.configure(); d.read_fifo()
    p = PulseOx(cal=cal)
    out = []
    t0 = b.clock.ticks_ms()
    while b.clock.ticks_diff(b.clock.ticks_ms(), t0) < s * 1000:
        b.clock.sleep_ms(40)
        n = d.read_fifo()
        for i in range(n):
            if p.push(d.red[i], d.ir[i]) and p.withheld == 0 and p.spo2_x10 > 0:
                out.append(p.spo2_x10)
    out.sort()
    return out[len(out) // 2] if out else -1
"""


def run(tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def unit(tmp_path, monkeypatch):
    """A provisioned virtual device with per-unit errors."""
    monkeypatch.setenv("NABD_VIRTUAL_PORTS", str(tmp_path / "ports"))
    state = tmp_path / "flash"
    assert run("nabd", "sim", "identity", "--state", str(state), "--json").returncode == 0
    d = VDevice(state, "--unit-errors")
    yield d
    d.stop()


class Raw:
    """The measuring code above, in the device's raw REPL."""

    def __init__(self, port: str):
        self.s = Serial(port)
        self.s.write(b"\r\x03\r\x01")
        self.s.read_until(b"raw REPL; CTRL-B to exit\r\n>")
        self.exec(MEASURE)

    def exec(self, code: str) -> str:
        self.s.write(code.encode() + b"\x04")
        out = self.s.read_until(b"\x04>", timeout=120).decode()
        assert out.startswith("OK") and out.endswith("\x04\x04>"), out
        return out[2:-3]

    def close(self) -> None:
        self.s.write(b"\x02")
        self.s.close()


def instrument(state: Path, *args: str) -> None:
    assert run("nabd", "sim", "instrument", "--state", str(state), *args).returncode == 0
    time.sleep(0.4)


def temp_errors(d) -> dict:
    r = Raw(d.port)
    try:
        out = {}
        for t in (34, 36, 38, 40, 42):
            instrument(d.state, "--blackbody", str(t))
            out[t] = int(r.exec("print(temp())")) / 100 - t
        return out
    finally:
        r.close()
        instrument(d.state, "--blackbody", "off")


def spo2_arms(d) -> tuple[float, dict]:
    r = Raw(d.port)
    try:
        errs = {}
        for s in (100, 95, 90, 85, 80, 75, 70):
            instrument(d.state, "--spo2", str(s))
            errs[s] = int(r.exec("print(spo2())")) / 10 - s
        return (sum(e * e for e in errs.values()) / len(errs)) ** 0.5, errs
    finally:
        r.close()
        instrument(d.state, "--spo2", "off")


def test_calibration_brings_the_unit_within_tolerance(unit, tmp_path):
    from sim.virtual_device.serial_bridge import board_seed
    from sim.virtual_device.vm_boot import unit_errors

    gain_ppm, offset_mc, r_ppm = unit_errors(board_seed(unit.state))
    before = temp_errors(unit)
    assert max(abs(e) for e in before.values()) > 0.3, before           # the unit's errors show
    # and they are the unit's: offset + (gain - 1)·T, within the sensor's resolution
    for t, e in before.items():
        assert abs(e - (offset_mc / 1000 + t * (gain_ppm - 1e6) / 1e6)) < 0.06, (t, e)
    arms_before, _ = spo2_arms(unit)
    assert arms_before > 1.5

    out_dir = tmp_path / "records"
    p = run("nabd", "calibrate", "temp", "--port", unit.port, "--points", "35,37,41", "--by", "A. Technician",
            "--out", str(out_dir), "--json")
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["accepted"] and rec["by"] == "A. Technician"
    assert [pt["use"] for pt in rec["points"]] == ["fit", "verify", "fit"]
    after = temp_errors(unit)
    assert max(abs(e) for e in after.values()) <= 0.1, after

    p = run("nabd", "calibrate", "spo2", "--port", unit.port, "--by", "A. Technician", "--out", str(out_dir), "--json")
    assert p.returncode == 0, p.stderr
    rec2 = json.loads(p.stdout)
    arms_after, errs = spo2_arms(unit)
    assert arms_after <= 1.5, errs

    # written on the device: both fits, the latest id, date and due date; records and certificates
    cfg = json.loads((unit.state / "config.json").read_text())["calibration"]
    assert cfg["id"] == rec2["calibration"]["id"] and cfg["due"] == rec2["calibration"]["due"]
    assert cfg["temp_gain"] == rec["fit"]["gain"] and cfg["spo2"] == rec2["fit"]["coeffs"]
    cert = Path(rec2["certificate"]).read_text()
    assert "A. Technician" in cert and rec2["calibration"]["id"] in cert and len(cert.splitlines()) < 60
    info = json.loads(run("nabd", "info", "--port", unit.port, "--json").stdout)
    assert info["calibration"]["id"] == rec2["calibration"]["id"]
    print(f"\ntemp error before {before}, after {after}; SpO2 Arms before {arms_before:.2f} %, "
          f"after {arms_after:.2f} %")


def test_an_out_of_tolerance_instrument_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("NABD_VIRTUAL_PORTS", str(tmp_path / "ports"))
    state = tmp_path / "flash"
    run("nabd", "sim", "identity", "--state", str(state))
    d = VDevice(state)
    instrument(state, "--blackbody-error", "4")                # the blackbody is 4 degC off its setpoint
    try:
        before = (state / "config.json").read_bytes()
        p = run("nabd", "calibrate", "temp", "--port", d.port, "--by", "T", "--out", str(tmp_path / "rec"))
        assert p.returncode == 1 and "REFUSED, nothing written on the device" in p.stderr, p.stderr
        assert "out of tolerance" in p.stderr
        assert (state / "config.json").read_bytes() == before
        assert not (state / "config.new").exists()
        assert list((tmp_path / "rec").glob("*.txt"))                # the refusal is on record too
    finally:
        d.stop()


def test_a_device_that_stops_answering_mid_calibration(unit, tmp_path):
    before = (unit.state / "config.json").read_bytes()
    proc = subprocess.Popen([str(BIN / "nabd"), "calibrate", "spo2", "--port", unit.port, "--by", "T",
                             "--out", str(tmp_path / "rec")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    threading.Timer(3.0, lambda: os.kill(unit.proc.pid, signal.SIGSTOP)).start()   # the bridge freezes
    try:
        out, err = proc.communicate(timeout=200)
    finally:
        os.kill(unit.proc.pid, signal.SIGCONT)
    assert proc.returncode == 3 and "stopped answering" in err, err
    assert err.strip().count("\n") == 0
    assert (unit.state / "config.json").read_bytes() == before


def test_calibrate_usage_errors(tmp_path):
    p = run("nabd", "calibrate", "temp", "--port", "/dev/null", "--points", "35,37", "--by", "T")
    assert p.returncode == 2 and "at least 3" in p.stderr
    p = run("nabd", "calibrate", "temp", "--port", "/dev/ttyUSB97", "--by", "T")
    assert p.returncode == 3 and "no serial port" in p.stderr
