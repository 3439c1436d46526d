"""`nabd ports` and `nabd info` against the virtual device, and the one-line errors every
`--port` command gives (absent, busy, something that is not an ESP32), through real processes."""
import json
import os
import subprocess
import sys
import threading
import tty
from pathlib import Path

import pytest
import serial

from tests.host.test_virtual_device import Device as VDevice

REPO = Path(__file__).resolve().parents[2]
NABD = str(Path(sys.executable).parent / "nabd")


def nabd(*args: str, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([NABD, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def registry(tmp_path, monkeypatch):
    reg = tmp_path / "ports"
    monkeypatch.setenv("NABD_VIRTUAL_PORTS", str(reg))
    return reg


@pytest.fixture
def vdev(tmp_path, registry):
    d = VDevice(tmp_path / "flash")
    yield d
    d.stop()


def test_ports_lists_the_running_virtual_device_and_forgets_it_when_it_stops(vdev, registry):
    p = nabd("ports", "--json")
    assert p.returncode == 0, p.stderr
    ports = {e["port"]: e for e in json.loads(p.stdout)["ports"]}
    assert ports[vdev.port]["kind"] == "virtual device"
    text = nabd("ports").stdout
    assert f"* {vdev.port}" in text
    vdev.stop()
    ports = {e["port"] for e in json.loads(nabd("ports", "--json").stdout)["ports"]}
    assert vdev.port not in ports
    assert not list(registry.glob("*.json"))


def test_ports_marks_esp32_usb_bridges():
    from host.commands.ports import bridge

    assert bridge(0x10C4, 0xEA60) == "CP210x"
    assert bridge(0x1A86, 0x7523) == "CH340"
    assert bridge(0x0403, 0x6001).startswith("FTDI")
    assert "ESP32-S3" in bridge(0x303A, 0x1001)
    assert bridge(0x046D, 0xC52B) is None           # a mouse receiver


def test_info_reads_the_device(vdev, tmp_path):
    p = nabd("info", "--port", vdev.port, "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    from firmware.version import VERSION

    assert info["fw"] == VERSION
    assert info["device_id"] is None and "provision" in info["config_error"]
    assert info["outbox"] == 0 and info["free_heap"] > 0
    state = tmp_path / "provisioned"
    ident = json.loads(nabd("sim", "identity", "--state", str(state), "--json").stdout)
    d = VDevice(state)
    try:
        p = nabd("info", "--port", d.port, "--json")
    finally:
        d.stop()
    info = json.loads(p.stdout)
    assert info["device_id"] == ident["device_id"] and info["key_version"] == 1
    assert ident["key"] not in p.stdout and ident["mqtt_password"] not in p.stdout


def test_absent_port_is_a_device_error():
    p = nabd("info", "--port", "/dev/ttyUSB97")
    assert p.returncode == 3
    assert p.stderr.count("\n") == 1 and "no serial port /dev/ttyUSB97" in p.stderr and "nabd ports" in p.stderr


def test_busy_port_is_refused_at_once(vdev):
    held = serial.Serial(vdev.port, exclusive=True)
    try:
        p = nabd("info", "--port", vdev.port, timeout=20)
    finally:
        held.close()
    assert p.returncode == 3 and "in use by another program" in p.stderr, p.stderr


def test_a_port_that_echoes_is_not_an_esp32():
    master, slave = os.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def echo():
        import select

        while not stop.is_set():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    os.write(master, os.read(master, 1024))
                except OSError:
                    return

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    try:
        p = nabd("info", "--port", os.ttyname(slave), timeout=30)
    finally:
        stop.set()
        t.join()
        os.close(master)
        os.close(slave)
    assert p.returncode == 3 and "not an ESP32 running MicroPython" in p.stderr, p.stderr


def test_a_silent_port_does_not_answer_as_micropython():
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        p = nabd("info", "--port", os.ttyname(slave), timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert p.returncode == 3 and "does not answer as MicroPython" in p.stderr and "nabd flash" in p.stderr, p.stderr
