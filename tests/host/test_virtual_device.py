"""The virtual device (`nabd sim device`) as host tools see it: a serial port on a pty.

Everything goes through real processes: `nabd sim device` (Python pty bridge + Node.js +
MicroPython), `mpremote` and `nabd selftest --port`, each bounded by a timeout; devices are
stopped with SIGTERM (SIGKILL if they linger) in teardown.
"""
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
import tty
from pathlib import Path

import pytest

from host.mpvm import VMUnavailable, check_available

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NABD = str(BIN / "nabd")
MPREMOTE = str(BIN / "mpremote")

try:
    check_available()
except VMUnavailable as e:  # pragma: no cover - setup problem, stated
    pytest.skip(str(e), allow_module_level=True)
if not Path(MPREMOTE).exists():  # pragma: no cover
    pytest.skip("mpremote is not installed in the venv", allow_module_level=True)


class Device:
    """A running `nabd sim device` process."""

    def __init__(self, state: Path, *extra: str):
        self.state = state
        self.proc = subprocess.Popen([NABD, "sim", "device", "--state", str(state), "--json", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        r, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if r else b""
        if not line:
            self.stop()
            raise AssertionError("the virtual device did not start: " + self.proc.stderr.read().decode())
        self.info = json.loads(line)
        self.port = self.info["port"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
        return self.proc.returncode


@pytest.fixture
def device_factory(tmp_path):
    devices = []

    def make(state: Path | None = None, *extra: str) -> Device:
        d = Device(state or tmp_path / "flash", *extra)
        devices.append(d)
        return d

    yield make
    for d in devices:
        d.stop()


@pytest.fixture
def device(device_factory) -> Device:
    return device_factory()


def mpremote(port: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=timeout)


def test_exec_prints_on_the_device(device):
    p = mpremote(device.port, "exec", "import sys; print(1+1, sys.implementation.name)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["2", "micropython"]


def test_a_traceback_on_the_device_fails_mpremote(device):
    p = mpremote(device.port, "exec", "1/0")
    assert p.returncode != 0
    assert "ZeroDivisionError" in p.stdout + p.stderr


def test_fs_cp_lands_in_the_state_folder_and_survives_soft_reset(device, tmp_path):
    src = tmp_path / "config.json"
    src.write_bytes(b'{"device_id": "vd-1"}\n' + bytes(range(256)))
    p = mpremote(device.port, "fs", "cp", str(src), ":config.json")
    assert p.returncode == 0, p.stderr
    assert (device.state / "config.json").read_bytes() == src.read_bytes()   # written through
    back = tmp_path / "back.json"
    p = mpremote(device.port, "soft-reset", "fs", "cp", ":config.json", str(back))
    assert p.returncode == 0, p.stderr
    assert back.read_bytes() == src.read_bytes()
    p = mpremote(device.port, "fs", "ls")
    assert "config.json" in p.stdout and str(src.stat().st_size) in p.stdout


def test_firmware_writes_and_deletes_reach_the_host(device):
    code = ("from firmware.boards import current\nb = current()\n"
            "import os\nos.mkdir(b.storage_root + '/logs')\n"
            "f = open(b.storage_root + '/logs/a.txt', 'w'); f.write('abc'); f.close()\n"
            "print(b.name, b.storage_root, os.getcwd())\n")
    p = mpremote(device.port, "exec", code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["sim", "/flash", "/flash"]
    assert (device.state / "logs" / "a.txt").read_text() == "abc"
    p = mpremote(device.port, "fs", "rm", ":logs/a.txt", "+", "fs", "rmdir", ":logs")
    assert p.returncode == 0, p.stderr
    assert not (device.state / "logs").exists()


def test_missing_file_is_enoent_as_on_the_esp32(device):
    p = mpremote(device.port, "exec", "import errno\ntry:\n open('nope')\nexcept OSError as e:\n"
                                      " print(e.errno == errno.ENOENT)")
    assert p.stdout.strip() == "True", p.stdout + p.stderr
    p = mpremote(device.port, "fs", "cat", ":nope")
    assert p.returncode != 0 and "No such file" in p.stdout + p.stderr


def test_flash_persists_across_a_restart_of_the_device(device_factory, tmp_path):
    state = tmp_path / "unit7"
    d1 = device_factory(state)
    src = tmp_path / "cal.json"
    src.write_text('{"temp_offset_cc": 12}')
    assert mpremote(d1.port, "fs", "cp", str(src), ":cal.json").returncode == 0
    assert d1.stop() == 0          # SIGTERM: clean exit
    d2 = device_factory(state)
    p = mpremote(d2.port, "exec", "print(open('cal.json').read())")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == src.read_text()


def test_selftest_over_the_port_passes(device):
    p = subprocess.run([NABD, "selftest", "--port", device.port, "--json"], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["ok"] is True and len(out["checks"]) == 8
    assert all(c["ok"] for c in out["checks"]), out["checks"]


def test_selftest_over_the_port_names_an_injected_fault(device_factory):
    d = device_factory(None, "--fault", "mlx90614:pec")
    p = subprocess.run([NABD, "selftest", "--port", d.port, "--json"], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert p.returncode == 1, p.stdout + p.stderr
    out = json.loads(p.stdout)
    failed = [c for c in out["checks"] if not c["ok"]]
    assert failed and all(c["name"].startswith("mlx90614") for c in failed)
    assert any("mlx90614:pec" in c["detail"] for c in failed), failed


def test_unknown_fault_is_a_usage_error(tmp_path):
    p = subprocess.run([NABD, "sim", "device", "--state", str(tmp_path / "s"), "--fault", "mlx90614:fire"],
                       capture_output=True, text=True, timeout=30, cwd=REPO)
    assert p.returncode == 2
    assert "mlx90614:pec" in p.stderr          # lists the valid ones


class Serial:
    """The port opened by hand, as a terminal program would."""

    def __init__(self, port: str):
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        self.rest = b""
        tty.setraw(self.fd, termios.TCSANOW)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read_until(self, marker: bytes, timeout: float = 10) -> bytes:
        """Bytes up to and including ``marker``; what came after it is kept for the next read."""
        buf = self.rest
        end = time.monotonic() + timeout
        while marker not in buf:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} within {timeout} s; got {buf!r}")
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                buf += os.read(self.fd, 4096)
        cut = buf.index(marker) + len(marker)
        self.rest = buf[cut:]
        return buf[:cut]

    def close(self) -> None:
        os.close(self.fd)


def test_raw_repl_protocol_raw_paste_and_ctrl_c(device):
    s = Serial(device.port)
    try:
        s.write(b"\r\x03\r\x01")
        s.read_until(b"raw REPL; CTRL-B to exit\r\n>")
        s.write(b"x = 6 * 7\x04")                       # plain raw mode
        assert s.read_until(b"\x04>") == b"OK\x04\x04>"
        s.write(b"\x05A\x01")                           # raw-paste: header, window size
        s.read_until(b"R\x01", 5)
        while len(s.rest) < 2:
            s.rest += os.read(s.fd, 2)
        window, s.rest = int.from_bytes(s.rest[:2], "little"), s.rest[2:]
        assert 32 <= window <= 4096
        s.write(b"print(x)\x04")
        assert s.read_until(b"\x04>").endswith(b"\x0442\r\n\x04\x04>")
        # Ctrl-C interrupts firmware that loops on the board clock
        s.write(b"from firmware.boards import current\nc = current().clock\nwhile True:\n c.sleep_ms(10)\n\x04")
        s.read_until(b"OK")
        time.sleep(0.3)
        s.write(b"\x03")
        out = s.read_until(b"\x04>")
        assert b"KeyboardInterrupt" in out
        s.write(b"\x04")                                # empty buffer: soft reboot
        s.read_until(b"soft reboot\r\n")
        s.read_until(b"raw REPL; CTRL-B to exit\r\n>")
        s.write(b"print(x)\x04")                        # a fresh interpreter
        assert b"NameError" in s.read_until(b"\x04>")
        s.write(b"\x02")                                # friendly REPL
        s.read_until(b">>> ")
        s.write(b"6 * 7\r")
        assert b"42\r\n>>> " in s.read_until(b"42\r\n>>> ")
    finally:
        s.close()


READ_INSTRUMENTS = (
    "from firmware.boards import current\nfrom firmware.drivers.mlx90614 import MLX90614\n"
    "b = current()\nm = MLX90614(b.i2c, clock=b.clock)\nb.clock.sleep_ms(300)\n"
    "s = b.scenario.sim\n"
    "print(m.object_cc(), s and (s.red_ac * 10**6 // s.red) * 1000 // (s.ir_ac * 10**6 // s.ir))\n")


def instrument(state: Path, *args: str) -> dict:
    p = subprocess.run([NABD, "sim", "instrument", "--state", str(state), "--json", *args], capture_output=True,
                       text=True, timeout=30, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


def test_reference_instruments_set_from_the_host(device):
    p = mpremote(device.port, "exec", READ_INSTRUMENTS)
    assert p.stdout.split() == ["3681", "None"], p.stdout + p.stderr       # the default finger, 36.8 degC
    out = instrument(device.state, "--blackbody", "39.5", "--spo2", "90")
    assert out["settings"] == {"blackbody_c": 39.5, "spo2": 90.0}
    assert Path(device.info["instruments"]).exists()
    p = mpremote(device.port, "exec", READ_INSTRUMENTS)
    obj, r_milli = p.stdout.split()
    assert abs(int(obj) - 3950) <= 2                       # the blackbody, through the MLX90614 model
    assert abs(int(r_milli) - 800) <= 5                    # R = (110 - 90) / 25 from the simulator
    # changed while the device runs (no reboot): applied at the firmware's next sleep
    s = Serial(device.port)
    try:
        s.write(b"\r\x03\r\x01")
        s.read_until(b"raw REPL; CTRL-B to exit\r\n>")
        s.write(READ_INSTRUMENTS.encode() + b"\x04")
        assert abs(int(s.read_until(b"\x04>")[2:].split()[0]) - 3950) <= 2
        instrument(device.state, "--blackbody", "off", "--spo2", "off")
        time.sleep(0.3)
        s.write(b"b.clock.sleep_ms(1)\nprint(m.object_cc(), b.scenario.sim)\x04")
        assert s.read_until(b"\x04>").startswith(b"OK3681 None")
    finally:
        s.close()


def test_instrument_rejects_bad_values(tmp_path):
    p = subprocess.run([NABD, "sim", "instrument", "--state", str(tmp_path / "s"), "--spo2", "120"],
                       capture_output=True, text=True, timeout=30, cwd=REPO)
    assert p.returncode == 2 and "--spo2" in p.stderr


def test_ctrl_c_interrupts_time_sleep_in_the_raw_repl(device):
    """A real board stops `time.sleep(10)` at Ctrl-C; so must the virtual one (bytes on the wire)."""
    s = Serial(device.port)
    try:
        s.write(b"\r\x03\r\x01")
        s.read_until(b"raw REPL; CTRL-B to exit\r\n>")
        s.write(b"import time\ntime.sleep(10)\x04")
        s.read_until(b"OK")
        time.sleep(0.3)
        t0 = time.monotonic()
        s.write(b"\x03")
        out = s.read_until(b"\x04>", timeout=5)
        assert time.monotonic() - t0 < 2, "Ctrl-C was seen only when the sleep ended"
        assert out.startswith(b"\x04Traceback (most recent call last):") and b"KeyboardInterrupt" in out, out
        s.write(b"time.sleep_ms(5)\ntime.sleep_us(5)\ntime.sleep(0.01)\nprint(6 * 7)\x04")   # sleeps still sleep
        assert s.read_until(b"\x04>") == b"OK42\r\n\x04\x04>"
    finally:
        s.close()


def test_ctrl_c_ends_a_sleeping_loop_in_the_friendly_repl_and_the_device_answers(device):
    """`while True: time.sleep(1)` then Ctrl-C at the friendly REPL: KeyboardInterrupt, a prompt,
    and the device keeps answering mpremote (it used to hang until killed)."""
    s = Serial(device.port)
    try:
        s.write(b"\r\x03\x02")
        s.read_until(b">>> ")
        time.sleep(0.5)
        s.rest = b""
        while select.select([s.fd], [], [], 0.2)[0]:      # stale prompts
            os.read(s.fd, 4096)
        s.write(b"import time\r")
        s.read_until(b"import time\r\n>>> ")
        s.write(b"while True: time.sleep(1)\r")
        s.read_until(b"... ")
        s.write(b"\r")
        time.sleep(1.5)
        s.write(b"\x03")
        out = s.read_until(b">>> ", timeout=5)
        assert b"Traceback (most recent call last):" in out and b"KeyboardInterrupt: \r\n>>> " in out, out
    finally:
        s.close()
    p = mpremote(device.port, "exec", "print(6 * 7)", timeout=20)
    assert p.returncode == 0 and p.stdout.strip() == "42", p.stdout + p.stderr


def test_mpremote_df_shows_the_flash_partition(device):
    """`mpremote df` shows one filesystem, the ESP32's 2 MiB littlefs partition, in columns."""
    mpremote(device.port, "exec", "f = open('x.bin', 'wb'); f.write(bytes(5000)); f.close()")
    p = mpremote(device.port, "df")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["filesystem", "size", "used", "avail", "use%", "mounted", "on"]
    assert len(lines) == 2, p.stdout
    fs, size, used, avail, pct, at = lines[1].split()
    assert (fs, size, at) == ("<VfsLfs2>", "2097152", "/flash")
    assert int(used) + int(avail) == 2097152
    assert int(used) >= 4 * 4096                  # superblocks + a 5000-byte file (2 blocks)
    assert int(pct) == 100 * int(used) // 2097152


def test_rename_on_the_flash_replaces_the_target_as_littlefs_does(device):
    """config.save's atomic write (tmp + rename) must work on the virtual device's /flash."""
    p = mpremote(device.port, "exec", "import os\nfor n, t in (('a.tmp', 'new'), ('b', 'old')):\n"
                 " f = open('/flash/' + n, 'w'); f.write(t); f.close()\n"
                 "os.rename('/flash/a.tmp', '/flash/b')\nos.rename('b', 'c')\nprint(sorted(os.listdir('/flash')), open('c').read())")
    assert p.returncode == 0, p.stderr + p.stdout
    assert p.stdout.strip() == "['c'] new"
    assert (device.state / "c").read_text() == "new" and not (device.state / "b").exists()
