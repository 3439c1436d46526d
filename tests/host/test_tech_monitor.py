"""`nabd monitor` on the virtual device: readings and log lines as JSON lines, a clean end on
Ctrl-C with the device still answering afterwards."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.host.test_virtual_device import Device as VDevice

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def unit(tmp_path, monkeypatch):
    monkeypatch.setenv("NABD_VIRTUAL_PORTS", str(tmp_path / "ports"))
    state = tmp_path / "flash"
    subprocess.run([str(BIN / "nabd"), "sim", "identity", "--state", str(state)], check=True, capture_output=True)
    d = VDevice(state)
    yield d
    d.stop()


def test_monitor_shows_a_reading_and_the_log_as_json_lines(unit):
    p = subprocess.run([str(BIN / "nabd"), "monitor", "--port", unit.port, "--measure", "1", "--json"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines()]
    assert events[0]["started"].startswith("nabd-")
    readings = [e["reading"] for e in events if "reading" in e]
    assert len(readings) == 1 and readings[0]["seq"] == 1 and readings[0]["spo2"] is not None
    logs = [e["log"] for e in events if "log" in e]
    assert any(level == "INFO" and "reading seq=1" in msg for _, level, _, msg in logs)
    assert [e["state"] for e in events if "state" in e][:3] == ["idle", "temp", "ppg"]


def test_ctrl_c_ends_monitor_cleanly_and_the_device_still_answers(unit):
    proc = subprocess.Popen([str(BIN / "nabd"), "monitor", "--port", unit.port], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    first = proc.stdout.readline()                 # the loop runs on the device
    assert first.startswith("started  nabd-"), first
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    out = first + out
    assert proc.returncode == 0, err
    assert "started  nabd-" in out, (out, err)
    assert "state    idle" in out and "Traceback" not in err
    assert "monitor stopped" in err
    p = subprocess.run([str(BIN / "nabd"), "info", "--port", unit.port, "--json"], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert p.returncode == 0 and json.loads(p.stdout)["outbox"] == 0, p.stderr
