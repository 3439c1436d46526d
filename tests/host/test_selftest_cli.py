"""`nabd selftest` as a user runs it: a subprocess, the firmware inside the MicroPython VM."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from host.mpvm import MicroPythonError

REPO = Path(__file__).resolve().parents[2]
NABD = [str(Path(sys.executable).with_name("nabd"))]


def nabd(*args, timeout=120):
    return subprocess.run(NABD + list(args), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_virtual_selftest_passes():
    p = nabd("selftest", "--virtual", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["ok"] is True and out["board"] == "sim" and out["faults"] == []
    assert len(out["checks"]) == 8
    assert all(set(c) == {"name", "ok", "detail"} and c["ok"] for c in out["checks"])


@pytest.mark.parametrize("fault", ["mlx90614:pec", "mlx90614:nack", "mlx90614:error-flag", "mlx90614:stuck",
                                   "max30102:absent", "max30102:overflow"])
def test_each_fault_fails_and_is_named(fault):
    p = nabd("selftest", "--virtual", "--json", "--fault", fault)
    assert p.returncode == 1, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["ok"] is False and out["faults"] == [fault]
    failed = [c for c in out["checks"] if not c["ok"]]
    assert failed and any(fault in c["detail"] for c in failed), failed


def test_swapped_leds_pass_and_are_reported():
    p = nabd("selftest", "--virtual", "--json", "--fault", "max30102:swapped-leds")
    assert p.returncode == 0, p.stdout + p.stderr
    leds = {c["name"]: c for c in json.loads(p.stdout)["checks"]}["max30102.leds"]
    assert leds["ok"] and "swapped" in leds["detail"] and "corrected" in leds["detail"]


def test_table_output_names_the_fault():
    p = nabd("selftest", "--virtual", "--fault", "mlx90614:pec")
    assert p.returncode == 1
    assert "FAIL  mlx90614.bus" in p.stdout and "mlx90614:pec" in p.stdout
    assert "result: FAIL" in p.stdout


def test_unknown_fault_is_a_usage_error_listing_the_valid_names():
    p = nabd("selftest", "--virtual", "--fault", "mlx90614:smoke")
    assert p.returncode == 2
    assert "mlx90614:smoke" in p.stderr and "max30102:swapped-leds" in p.stderr and "mlx90614:pec" in p.stderr
    p = nabd("selftest", "--virtual", "--json", "--fault", "nope")
    assert p.returncode == 2 and json.loads(p.stdout)["ok"] is False


def test_real_board_needs_a_port_and_faults_need_virtual():
    p = nabd("selftest")
    assert p.returncode == 2 and "--virtual" in p.stderr
    p = nabd("selftest", "--port", "/dev/null", "--fault", "mlx90614:pec")
    assert p.returncode == 2 and "--virtual" in p.stderr


def test_real_board_unreachable_is_a_device_error(tmp_path):
    """Without hardware only the failure path can run: mpremote on a port that is no device."""
    p = nabd("selftest", "--port", str(tmp_path / "ttyUSB9"), timeout=60)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "ttyUSB9" in p.stderr


def test_demo_runs_and_writes_the_screen(tmp_path):
    p = nabd("demo", "--bench", "--json", "--out", str(tmp_path), "--seconds", "3")
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["ok"] and (tmp_path / "screen.png").stat().st_size > 1000
    m = out["measurement"]
    assert 3600 <= m["t_obj_cc"] <= 3760 and m["lost"] == 0 and m["samples"] >= 290
    assert abs(m["pulse_bpm_rough"] - 72) <= 6
    assert out["screen"].count("\n") == 33 and "█" in out["screen"]


def test_device_code_is_valid_micropython_and_finds_the_esp32_board(vm):
    """What `nabd selftest --port` sends through mpremote: it compiles on MicroPython and names the
    ESP32 board class that exists (it cannot run here: the VM has no `machine`)."""
    from host.commands.selftest import DEVICE_CODE

    vm.exec(f"compile({DEVICE_CODE!r}, 'selftest', 'exec')")
    src = (REPO / "firmware" / "boards" / "esp32.py").read_text()
    assert "class Esp32Board" in src and "from firmware.boards import current" in DEVICE_CODE
    # with no board set (a real ESP32; the virtual device sets its SimBoard), current() builds the
    # ESP32 board, which needs the ESP32's modules (socket, machine): absent here
    with pytest.raises(MicroPythonError) as e:
        vm.exec("from firmware.boards import current\ncurrent()")
    assert e.value.type == "ImportError" and "firmware/boards/esp32.py" in e.value.traceback
