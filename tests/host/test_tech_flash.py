"""The virtual ESP32 ROM bootloader (`nabd sim bootloader`) with the real esptool (--no-stub),
and `nabd flash` through esptool's Python API, through real processes."""
import json
import os
import select
import signal
import subprocess
import sys
import threading
import tty
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def make_image(path: Path, size: int = 20000) -> bytes:
    """A valid ESP32 application image (two segments, checksum and SHA-256 digest)."""
    from esptool.bin_image import ELFSection, ESP32FirmwareImage

    img = ESP32FirmwareImage()
    img.entrypoint = 0x40080400
    img.segments = [ELFSection(b".dram0.data", 0x3FFB0000, os.urandom(size // 2), 0),
                    ELFSection(b".iram0.text", 0x40080000, os.urandom(size // 2), 0)]
    img.flash_mode, img.flash_size_freq, img.append_digest = 0, 0x20, True
    img.save(str(path))
    return path.read_bytes()


class Bootloader:
    def __init__(self, flash: Path, env: dict):
        self.flash = flash
        self.proc = subprocess.Popen([str(BIN / "nabd"), "sim", "bootloader", "--flash", str(flash), "--json"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)
        r, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if r else b""
        assert line, self.proc.stderr.read()
        self.port = json.loads(line)["port"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "NABD_VIRTUAL_PORTS": str(tmp_path / "ports")}


@pytest.fixture
def rom(tmp_path, env):
    b = Bootloader(tmp_path / "flash.bin", env)
    yield b
    b.stop()


def run(env, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def esptool(env, port: str, *args: str) -> subprocess.CompletedProcess:
    return run(env, str(BIN / "esptool"), "--chip", "esp32", "--port", port, "--before", "no-reset",
               "--after", "no-reset", "--no-stub", *args)


@pytest.mark.parametrize("compress", ["--compress", "--no-compress"])
def test_the_real_esptool_flashes_verifies_and_reads_back(rom, env, tmp_path, compress):
    image = make_image(tmp_path / "app.bin")
    p = esptool(env, rom.port, "write-flash", compress, "0x10000", str(tmp_path / "app.bin"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Hash of data verified" in p.stdout
    p = esptool(env, rom.port, "read-flash", "0x10000", str(len(image)), str(tmp_path / "back.bin"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "back.bin").read_bytes() == image
    p = run(env, str(BIN / "esptool"), "--chip", "esp32", "image-info", str(tmp_path / "back.bin"))
    assert p.returncode == 0 and "Entry point: 0x40080400" in p.stdout, p.stdout + p.stderr
    p = esptool(env, rom.port, "flash-id")
    assert p.returncode == 0 and "4MB" in p.stdout and "MAC:" in p.stdout, p.stdout
    rom.stop()                                          # the flash file holds what was written
    data = rom.flash.read_bytes()
    assert len(data) == 4 << 20 and data[0x10000:0x10000 + len(image)] == image
    assert data[:0x10000] == b"\xff" * 0x10000


def test_nabd_flash_writes_and_verifies_and_ports_lists_the_bootloader(rom, env, tmp_path):
    p = run(env, str(BIN / "nabd"), "ports", "--json")
    kinds = {e["port"]: e["kind"] for e in json.loads(p.stdout)["ports"]}
    assert kinds[rom.port] == "virtual bootloader"
    image = make_image(tmp_path / "fw.bin", 60000)
    p = run(env, str(BIN / "nabd"), "flash", "--port", rom.port, str(tmp_path / "fw.bin"), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["offset"] == 0x1000 and out["size"] == len(image)
    rom.stop()
    assert rom.flash.read_bytes()[0x1000:0x1000 + len(image)] == image


def test_a_corrupt_or_truncated_image_is_refused_before_the_chip_is_touched(rom, env, tmp_path):
    image = make_image(tmp_path / "fw.bin")
    (tmp_path / "trunc.bin").write_bytes(image[:5000])
    bad = bytearray(image)
    bad[3000] ^= 0xFF
    (tmp_path / "corrupt.bin").write_bytes(bytes(bad))
    (tmp_path / "text.bin").write_text("not firmware at all\n")
    for name, why in (("trunc.bin", "corrupt or truncated"), ("corrupt.bin", "corrupt or truncated"),
                      ("text.bin", "not an ESP32 firmware image")):
        p = run(env, str(BIN / "nabd"), "flash", "--port", rom.port, str(tmp_path / name))
        assert p.returncode == 4 and why in p.stderr, (name, p.stderr)
    rom.stop()
    assert not rom.flash.exists() or rom.flash.read_bytes() == b"\xff" * (4 << 20)


def test_flash_on_a_port_that_is_not_an_esp32(env):
    master, slave = os.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def echo():
        while not stop.is_set():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    os.write(master, os.read(master, 1024))
                except OSError:
                    return

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    try:
        image = Path(os.environ.get("TMPDIR", "/tmp")) / f"nabd-test-{os.getpid()}.bin"
        make_image(image)
        p = run(env, str(BIN / "nabd"), "flash", "--port", os.ttyname(slave), str(image), timeout=180)
        image.unlink()
    finally:
        stop.set()
        t.join()
        os.close(master)
        os.close(slave)
    assert p.returncode == 3 and "no ESP32 bootloader answers" in p.stderr, p.stdout + p.stderr
    p = run(env, str(BIN / "nabd"), "flash", "--port", "/dev/ttyUSB97", "x.bin")
    assert p.returncode == 4 or p.returncode == 3
