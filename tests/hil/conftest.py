"""The rig of the hardware-in-the-loop suite: a device on a serial port and a board in its ROM
bootloader. Without options both are virtual (`nabd sim device --unit-errors`, `nabd sim
bootloader`), started here and stopped at the end; with `--port` / `--bootloader-port` the same
tests run against real boards (reference instruments then need a technician at the terminal)."""
from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Proc:
    """A `nabd sim device|bootloader --json` process; ``info`` is its first JSON line."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([str(BIN / "nabd"), "sim", *args, "--json"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=REPO)
        r, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if r else b""
        if not line:
            self.stop()
            raise AssertionError(f"nabd sim {args[0]} did not start: {self.proc.stderr.read().decode()}")
        self.info = json.loads(line)
        self.port = self.info["port"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


class Rig:
    def __init__(self, tmp: Path, config):
        self.tmp = tmp
        self.virtual = config.getoption("--port") is None
        self.port = config.getoption("--port")
        self.boot_port = config.getoption("--bootloader-port")
        self.image = config.getoption("--image")
        self.state = tmp / "device-flash" if self.virtual else None
        self.device: Proc | None = None
        self.rom: Proc | None = None
        if self.virtual:
            self.start_device()
        if self.boot_port is None and self.virtual:
            self.rom = Proc("bootloader", "--flash", str(tmp / "rom-flash.bin"), "--size", "4MB")
            self.boot_port = self.rom.port

    def start_device(self) -> None:
        self.device = Proc("device", "--state", str(self.state), "--unit-errors")
        self.port = self.device.port

    def stop_device(self) -> None:
        if self.device is not None:
            self.device.stop()
            self.device = None

    def stop(self) -> None:
        self.stop_device()
        if self.rom is not None:
            self.rom.stop()


@pytest.fixture
def rig(tmp_path, monkeypatch, request):
    monkeypatch.setenv("NABD_VIRTUAL_PORTS", str(tmp_path / "virtual-ports"))
    r = Rig(tmp_path, request.config)
    yield r
    r.stop()
