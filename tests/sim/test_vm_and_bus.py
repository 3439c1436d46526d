"""The foundations every other suite stands on: the MicroPython VM bridge, the virtual clock and
the virtual I2C bus, on real MicroPython."""
import pytest

from host.mpvm import MicroPythonError


def test_vm_is_real_micropython(vm):
    assert vm.eval("__import__('sys').implementation.name") == "micropython"
    with pytest.raises(ImportError):
        import importlib

        importlib.import_module("machine")  # and CPython has none either
    with pytest.raises(MicroPythonError) as e:
        vm.exec("import machine")
    assert e.value.type == "ImportError"


def test_vm_reports_tracebacks_and_output(vm):
    with pytest.raises(MicroPythonError) as e:
        vm.exec("print('before')\nraise ValueError('boom')")
    assert e.value.type == "ValueError" and "boom" in e.value.traceback
    assert e.value.out == "before\n"


def test_vm_files_roundtrip(vm, tmp_path):
    vm.write_file("/flash/dir/a.bin", bytes(range(256)))
    assert vm.read_file("/flash/dir/a.bin") == bytes(range(256))
    vm.pull_tree("/flash", tmp_path / "f")
    assert (tmp_path / "f" / "dir" / "a.bin").read_bytes() == bytes(range(256))


def test_virtual_clock_wraps_like_micropython(vm):
    r = vm.eval("""(lambda c: (c.sleep_ms(1500), c.ticks_ms(), c.ticks_us(),
        c.ticks_diff(c.ticks_add(0, -5), 10), c.ticks_diff(c.ticks_add(0x3FFFFFFF, 3), 0x3FFFFFFF),
        c.unix_time()))(__import__('sim.hardware.clock', None, None, ['x']).VirtualClock())""")
    assert r == [None, 1500, 1500000, -15, 3, None]


def test_virtual_clock_sync(vm):
    vm.exec("from sim.hardware.clock import VirtualClock\nc = VirtualClock()\nc.sleep_ms(2500)")
    assert vm.eval("c.sync_time()") is False
    vm.exec("c.ntp_time = 1795430400")
    assert vm.eval("[c.sync_time(), c.unix_time()]") == [True, 1795430400]
    vm.exec("c.sleep_ms(1000)")
    assert vm.eval("c.unix_time()") == 1795430401


def test_bus_nack_and_transfer_time(vm):
    vm.exec("""
from sim.hardware.clock import VirtualClock
from sim.hardware.i2c import VirtualI2C
c = VirtualClock(); bus = VirtualI2C(c, 100000)
class Echo:
    def __init__(self): self.last = bytearray(4); self.n = 0
    def i2c_write(self, data, stop):
        self.n = len(data); self.last[:self.n] = data
    def i2c_read(self, buf):
        for i in range(len(buf)): buf[i] = self.last[0] + i
bus.attach(0x10, Echo())
try:
    bus.readfrom_mem(0x11, 0, 1); err = None
except OSError as e:
    err = e.args[0]
""")
    assert vm.eval("err") == 19  # ENODEV, as the ESP32 port reports a NACK
    assert vm.eval("list(bus.readfrom_mem(0x10, 7, 3))") == [7, 8, 9]
    # 1 address byte + 1 command, then 1 address byte + 3 data: (2 + 4) * 9 clocks at 100 kHz
    assert vm.eval("c.ticks_us()") == 540
    assert vm.eval("bus.scan()") == [0x10]
