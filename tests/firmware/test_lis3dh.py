"""LIS3DH: the driver against the register-level model on real MicroPython (identity, configuration
read back, FIFO bursts at 100 Hz with wrap-around, scale and sign, overrun, corrupt words, zero
allocation per read), and the boards exposing it (None when absent)."""
from host.mpvm import MicroPythonError

SETUP = """
from array import array
from sim.hardware.clock import VirtualClock
from sim.hardware.i2c import VirtualI2C
from sim.hardware.lis3dh import LIS3DHModel
from firmware.drivers.lis3dh import LIS3DH, LIS3DHError, probe

class Shake:
    # a still device (gravity on z) shaken along x at 2 Hz, 500 mg, as a square wave
    def accel(self, t_us, out):
        out[0] = 500 if (t_us // 250000) % 2 else -500
        out[1] = -250
        out[2] = 1000

clock = VirtualClock(); bus = VirtualI2C(clock, 100000)
m = bus.attach({addr}, LIS3DHModel(clock, Shake(), {addr}, noise_mg={noise}{model_kw}))
d = LIS3DH(bus, {addr})

def fault(f, *a):
    try:
        return ['returned', f(*a)]
    except LIS3DHError as e:
        return [e.fault, str(e)]
"""


def setup(vm, addr=0x18, noise=0, model_kw=""):
    vm.exec(SETUP.format(addr=addr, noise=noise, model_kw=model_kw))


def test_identity_and_probe(vm):
    setup(vm)
    assert vm.eval("d.check()") == 0x33
    assert vm.eval("probe(bus).addr") == 0x18
    # SA0 high: found at 0x19; nothing on the bus: None
    vm.exec("bus2 = VirtualI2C(clock, 100000)\nbus2.attach(0x19, LIS3DHModel(clock, None, 0x19))")
    assert vm.eval("probe(bus2).addr") == 0x19
    assert vm.eval("probe(VirtualI2C(clock, 100000)) is None")


def test_wrong_part_and_absent(vm):
    setup(vm, model_kw=", who_am_i=0x32")
    f, msg = vm.eval("fault(d.check)")
    assert f == "wrong-part" and "WHO_AM_I is 0x32, expected 0x33" in msg
    assert vm.eval("probe(bus) is None")
    vm.exec("m.present = False")
    assert vm.eval("fault(d.start)")[0] == "absent"
    assert vm.eval("fault(LIS3DH(bus, 0x30).check)")[0] == "absent"


def test_start_verifies_and_rejects_bad_settings(vm):
    setup(vm)
    vm.exec("d.start()")
    # 100 Hz, X/Y/Z on; BDU, +-4 g, high resolution; FIFO on, stream mode
    assert vm.eval("[m.regs[0x20], m.regs[0x23], m.regs[0x24], m.regs[0x2E]]") == [0x57, 0x98, 0x40, 0x80]
    for bad in ("rate_hz=99", "range_g=3"):
        try:
            vm.exec(f"d.start({bad})")
            raise AssertionError("accepted " + bad)
        except MicroPythonError as e:
            assert "ValueError" in str(e) and "lis3dh" in str(e)
    setup(vm)
    vm.exec("m.inject('stuck-config')")
    f, msg = vm.eval("fault(d.start)")
    assert f == "verify" and "register 0x20" in msg


def test_fifo_samples_scale_sign_and_rate(vm):
    setup(vm)
    vm.exec("d.start(); clock.sleep_ms(250); n = d.read_fifo()")
    n = vm.eval("n")
    assert 24 <= n <= 26          # 250 ms at 100 Hz (the reads themselves take bus time)
    xs, ys, zs = vm.eval("[list(d.x[:n]), list(d.y[:n]), list(d.z[:n])]")
    assert set(xs) <= {500, -500} and -500 in xs
    assert set(ys) == {-250} and set(zs) == {1000}
    # 2 s of reads every 40 ms, as the app does: every sample produced arrives, none lost
    vm.exec("tot = 0\nfor _ in range(50):\n    clock.sleep_ms(40)\n    tot += d.read_fifo()")
    produced, popped, lost, tot = vm.eval("[m.produced, m.popped, m.lost, tot + n]")
    assert lost == 0 and popped == tot and produced - popped <= 1
    # 2.25 s of virtual time in all, plus the bus time of 51 reads at 100 kHz (~2.6 ms each)
    assert 225 <= tot <= 245


def test_full_scale_and_resolution(vm):
    setup(vm)
    vm.exec("class Big:\n    def accel(self, t, out):\n        out[0] = 9000; out[1] = -9000; out[2] = 3\n"
            "m.motion = Big().accel\nd.start(range_g=8); clock.sleep_ms(50); n = d.read_fifo()")
    assert vm.eval("[d.x[0], d.y[0], d.z[0]]") == [8188, -8192, 4]   # saturated: 12 bits of 4 mg
    vm.exec("d.start(range_g=2); clock.sleep_ms(50); n = d.read_fifo()")
    assert vm.eval("[d.x[0], d.y[0], d.z[0]]") == [2047, -2048, 3]   # 1 mg per digit


def test_overrun_counts_and_keeps_newest(vm):
    setup(vm)
    vm.exec("d.start(); clock.sleep_ms(1000); n = d.read_fifo()")
    assert vm.eval("n") == 32
    assert vm.eval("d.overruns") == 1
    assert vm.eval("m.lost") >= 60


def test_corrupt_words_raise(vm):
    setup(vm)
    vm.exec("d.start(); clock.sleep_ms(100); m.inject('corrupt', 1)")
    f, msg = vm.eval("fault(d.read_fifo)")
    assert f == "corrupt" and "12-bit" in msg
    # the next read is clean again
    vm.exec("clock.sleep_ms(100)")
    assert vm.eval("d.read_fifo()") > 0
    # a floating bus (every byte 0xFF) is corrupt, not -1 mg
    vm.exec("m.inject('corrupt')\nclock.sleep_ms(100)")
    assert vm.eval("fault(d.read_fifo)")[0] == "corrupt"


def test_read_allocates_nothing(vm):
    setup(vm, noise=4)
    vm.exec("from tests.firmware._heap import locked\nd.start()\n"
            "def step():\n    clock.sleep_ms(40)\n    return d.read_fifo()\n"
            "for _ in range(5):\n    step()")
    got, state, alloc = vm.eval("locked(step)")
    assert state == "ok" and alloc == 0 and got >= 3


def test_sim_board_exposes_it_only_when_fitted(vm):
    vm.exec("from sim.hardware.board import SimBoard\na = SimBoard(storage_root='')\n"
            "b = SimBoard(storage_root='', accel=True)")
    assert vm.eval("a.accel is None")
    assert vm.eval("b.accel.addr") == 0x18
    assert vm.eval("b.i2c.scan()") == [0x18, 0x3C, 0x57, 0x5A]
    vm.exec("b.accel.start(); b.clock.sleep_ms(100); n = b.accel.read_fifo()")
    assert vm.eval("n") >= 9 and abs(vm.eval("b.accel.z[0]") - 1000) <= 8


def test_cpython_import_smoke():
    from firmware.drivers import lis3dh
    from sim.hardware.clock import VirtualClock
    from sim.hardware.i2c import VirtualI2C
    from sim.hardware.lis3dh import LIS3DHModel

    clock = VirtualClock()
    bus = VirtualI2C(clock)
    bus.attach(0x18, LIS3DHModel(clock))
    d = lis3dh.LIS3DH(bus)
    d.start()
    clock.sleep_ms(100)
    n = d.read_fifo()
    assert n >= 9 and abs(d.z[0] - 1000) <= 8 and abs(d.x[0]) <= 8
