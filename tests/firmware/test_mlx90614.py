"""MLX90614: the driver against the register-level model on real MicroPython (PEC, temperatures,
every fault, retries, EEPROM write cycle and busy time, start-up, sleep, zero allocation), plus a
CPython import smoke test."""
import pytest

from host.mpvm import MicroPythonError

SETUP = """
from sim.hardware.clock import VirtualClock
from sim.hardware.i2c import VirtualI2C
from sim.hardware.mlx90614 import MLX90614Model
from sim.hardware.scenario import ConstantScenario
from firmware.drivers.mlx90614 import MLX90614, MLX90614Error, crc8
clock = VirtualClock(); bus = VirtualI2C(clock, 100000)
scen = ConstantScenario(object_mc={obj}, ambient_mc={amb})
m = bus.attach(0x5A, MLX90614Model(clock, scen{model_kw}))
d = MLX90614(bus, clock=clock{drv_kw})

def fault(f, *a):
    # the named fault of a call that must raise, or the value it wrongly returned
    try:
        return ['returned', f(*a)]
    except MLX90614Error as e:
        return [e.fault, str(e)]
"""


def setup(vm, obj=36800, amb=24000, model_kw="", drv_kw=""):
    vm.exec(SETUP.format(obj=obj, amb=amb, model_kw=model_kw, drv_kw=drv_kw))


def cc(mc: int) -> int:
    """Expected reading: milli-degC quantised to the sensor's 0.02 K, in hundredths of degC."""
    return ((mc + 273150 + 10) // 20) * 2 - 27315


def crc8_bitwise(data) -> int:
    c = 0
    for b in data:
        c ^= b
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


def test_cpython_import_smoke():
    from firmware.drivers import mlx90614 as drv
    from sim.hardware.clock import VirtualClock
    from sim.hardware.i2c import VirtualI2C
    from sim.hardware.mlx90614 import MLX90614Model

    clock = VirtualClock()
    bus = VirtualI2C(clock)
    bus.attach(0x5A, MLX90614Model(clock))
    d = drv.MLX90614(bus, clock=clock)
    assert d.object_cc() == cc(36800) and d.ambient_cc() == cc(24000)
    assert issubclass(drv.MLX90614Error, Exception)


def test_pec_known_vectors(vm):
    setup(vm)
    # datasheet examples: read Tobj1 (SA 0x5A, cmd 0x07) returning 0x3AD2 has PEC 0x30;
    # write 0xC807 to PWMCTRL (cmd 0x22) has PEC 0x48. Hand-computed bitwise below too.
    assert crc8_bitwise([0xB4, 0x07, 0xB5, 0xD2, 0x3A]) == 0x30
    assert crc8_bitwise([0xB4, 0x22, 0x07, 0xC8]) == 0x48
    assert vm.eval("[crc8(bytes([0xB4, 0x07, 0xB5, 0xD2, 0x3A])), crc8(bytes([0xB4, 0x22, 0x07, 0xC8]))]") == [0x30, 0x48]
    # a message followed by its own PEC checks to 0
    assert vm.eval("crc8(bytes([0xB4, 0x07, 0xB5, 0xD2, 0x3A, 0x30]))") == 0
    # the model's PEC on the wire agrees with an independent bitwise CRC
    for cmd in (0x06, 0x07, 0x24, 0xF0):
        lsb, msb, pec = vm.eval(f"list(bus.readfrom_mem(0x5A, {cmd}, 3))")
        assert pec == crc8_bitwise([0xB4, cmd, 0xB5, lsb, msb])


@pytest.mark.parametrize("obj,amb", [(36800, 24000), (-12340, -5000), (100000, 40000), (37010, 23990)])
def test_temperatures(vm, obj, amb):
    setup(vm, obj, amb)
    assert vm.eval("[d.object_cc(), d.ambient_cc(), d.object_cc(2)]") == [cc(obj), cc(amb), cc(obj)]


def test_unit_offset_and_gain_errors(vm):
    setup(vm, model_kw=", offset_mc=-450, gain_ppm=20000")
    # 36.8 degC: +2 % of 36.8 = +0.736, -0.45 -> 37.086 degC
    assert vm.eval("d.object_cc()") == cc(36800 - 450 + 736)
    assert vm.eval("d.ambient_cc()") == cc(24000)   # unit errors are on the object channel


def test_wrong_emissivity_biases_the_reading(vm):
    setup(vm, model_kw=", target_emissivity=64224")    # skin, eps 0.98; the factory setting is 1.0
    low = vm.eval("d.object_cc()")
    assert cc(36800) - 40 < low < cc(36800) - 15          # reads ~0.26 K low
    assert vm.eval("d.set_emissivity(0.98)") is True
    assert vm.eval("d.object_cc()") == low                  # latched until wake / power cycle
    vm.exec("m.wake(); d.wait_ready()")
    assert abs(vm.eval("d.object_cc()") - cc(36800)) <= 2


@pytest.mark.parametrize("name,errno", [("pec", None), ("nack", 19), ("error-flag", None), ("stuck", 116)])
def test_every_fault_raises_named_never_a_value(vm, name, errno):
    setup(vm)
    vm.exec(f"m.inject({name!r}); t0 = clock.ticks_ms()")
    for call in ("d.object_cc", "d.ambient_cc", "lambda: d.object_cc(2)"):
        got, msg = vm.eval(f"fault({call})")
        assert got == name, msg
        assert msg.startswith("mlx90614:" + name)
        if errno:
            assert f"errno {errno}" in msg
    if name == "stuck":
        # every attempt held the bus for the 50 ms timeout: 3 calls x 4 attempts
        assert vm.eval("clock.ticks_diff(clock.ticks_ms(), t0)") >= 12 * 50
    if name != "error-flag":
        # EEPROM and flags reads are guarded the same way
        assert vm.eval("fault(d.emissivity)")[0] == name
    vm.exec(f"m.clear({name!r})")
    assert vm.eval("d.object_cc()") == cc(36800)


@pytest.mark.parametrize("name", ["pec", "nack", "error-flag", "stuck"])
def test_retries_recover_from_transient_fault(vm, name):
    setup(vm)
    vm.exec(f"m.inject({name!r}, count=2)")
    assert vm.eval("[d.object_cc(), d.failed_attempts]") == [cc(36800), 2]
    # with no retries, one transient fault is reported, and the next read is good again
    vm.exec(f"d0 = MLX90614(bus, clock=clock, retries=0); m.inject({name!r}, count=1)")
    assert vm.eval("fault(d0.object_cc)")[0] == name
    assert vm.eval("d0.object_cc()") == cc(36800)
    # more transient faults than retries: the fault is named
    vm.exec(f"m.inject({name!r}, count=4)")
    assert vm.eval("fault(d.object_cc)")[0] == name
    assert vm.eval("d.object_cc()") == cc(36800)


@pytest.mark.parametrize("cmd,word", [(0x07, 0xFFFF), (0x07, 0x0000), (0x06, 0xFFFF), (0x06, 0x0000),
                                      (0x07, 0x7FFF), (0x07, 10157), (0x06, 19908), (0x08, 0xFFFF)])
def test_impossible_words_with_valid_pec_never_returned(vm, cmd, word):
    setup(vm)
    vm.exec(f"m.set_word({cmd}, {word})")
    raw = vm.eval(f"list(bus.readfrom_mem(0x5A, {cmd}, 3))")
    assert raw[0] | raw[1] << 8 == word
    assert raw[2] == crc8_bitwise([0xB4, cmd, 0xB5, raw[0], raw[1]])     # the PEC is valid
    call = {0x06: "d.ambient_cc", 0x07: "d.object_cc", 0x08: "lambda: d.object_cc(2)"}[cmd]
    got, msg = vm.eval(f"fault({call})")
    assert got == "range", msg
    assert "103755" not in msg and "-27315" not in msg


def test_range_edges_are_returned(vm):
    setup(vm)
    vm.exec("m.set_word(7, 10158); m.set_word(6, 19907)")
    assert vm.eval("[d.object_cc(), d.ambient_cc()]") == [10158 * 2 - 27315, 19907 * 2 - 27315]


def test_emissivity_write_cycle(vm):
    setup(vm)
    assert vm.eval("d.emissivity()") == 0xFFFF
    vm.exec("t0 = clock.ticks_us()")
    assert vm.eval("d.set_emissivity(64224)") is True
    log = vm.eval("[(clock.ticks_diff(t, 0), c, v) for t, c, v in m.ee_log]")
    # erase (0x0000) then the value, into cell 0x24, at least 10 ms apart
    assert [(c, v) for _, c, v in log] == [(0x24, 0), (0x24, 64224)]
    assert log[1][0] - log[0][0] >= 10000
    assert vm.eval("[m.busy_ignored, m.unerased_writes, m.pec_rejects, m.eeprom[4], d.emissivity()]") == [
        0, 0, 0, 64224, 64224]
    assert vm.eval("clock.ticks_diff(clock.ticks_us(), t0)") >= 20000       # waited after the write too
    # same value again: no EEPROM cycle at all
    assert vm.eval("[d.set_emissivity(64224), m.ee_writes]") == [False, 2]
    # a float epsilon is converted the same way
    assert vm.eval("[d.set_emissivity(0.98), m.ee_writes]") == [False, 2]
    assert vm.eval("[d.set_emissivity(1.0), m.ee_writes, d.emissivity()]") == [True, 4, 65535]


@pytest.mark.parametrize("value", ["6553", "65536", "0", "0.05", "1.01", "'1'", "-1"])
def test_emissivity_range_checked(vm, value):
    setup(vm)
    with pytest.raises(MicroPythonError) as e:
        vm.exec(f"d.set_emissivity({value})")
    assert e.value.type == "ValueError"
    assert vm.eval("[m.ee_writes, d.emissivity()]") == [0, 0xFFFF]


def test_eeprom_verify_failure_raises(vm):
    setup(vm)
    vm.exec("m._ee_write = lambda idx, word: None")     # a worn-out cell that keeps its value
    got, msg = vm.eval("fault(d.set_emissivity, 60000)")
    assert got == "verify" and "0xFFFF" in msg


def test_eeprom_busy_honoured(vm):
    setup(vm)
    # the model: a second write within 5 ms of the first is ignored
    vm.exec("""
def raw_write(cell, word):
    b = bytes([word & 0xFF, word >> 8])
    bus.writeto_mem(0x5A, cell, b + bytes([crc8(bytes([0xB4, cell]) + b)]))
raw_write(0x20, 0); raw_write(0x20, 0x1234)
""")
    assert vm.eval("[m.busy_ignored, m.eeprom[0], d.flags() & 0x80]") == [1, 0, 0x80]
    # the driver started while the EEPROM is busy: it waits for EEBUSY to clear
    vm.exec("clock.sleep_ms(6); raw_write(0x21, 0)")
    assert vm.eval("d.flags() & 0x80") == 0x80
    assert vm.eval("[d.set_emissivity(50000), m.busy_ignored, d.emissivity()]") == [True, 1, 50000]
    # EEBUSY that never clears: a named fault, nothing written
    vm.exec("m._busy_until = 1 << 40; n = m.ee_writes")
    assert vm.eval("fault(d.set_emissivity, 40000)")[0] == "busy"
    assert vm.eval("m.ee_writes - n") == 0


def test_model_eeprom_semantics(vm):
    setup(vm)
    vm.exec("""
def raw_write(cell, word, pec_xor=0):
    b = bytes([word & 0xFF, word >> 8])
    bus.writeto_mem(0x5A, cell, b + bytes([crc8(bytes([0xB4, cell]) + b) ^ pec_xor]))
""")
    # programming over a non-erased cell only sets bits
    vm.exec("raw_write(0x22, 0x00F0); clock.sleep_ms(6)")
    assert vm.eval("[m.eeprom[2], m.unerased_writes]") == [0x0201 | 0x00F0, 1]
    # a write with a bad PEC is ignored
    vm.exec("raw_write(0x22, 0, pec_xor=1); clock.sleep_ms(6)")
    assert vm.eval("[m.eeprom[2], m.pec_rejects]") == [0x02F1, 1]
    # factory defaults
    assert vm.eval("[d.read_eeprom(0x05), d.read_eeprom(0x2E) & 0x7F, d.read_eeprom(0x24)]") == [0x9FB4, 0x5A, 0xFFFF]


def test_driver_refuses_factory_cells(vm):
    setup(vm)
    for call in ("d.write_eeprom(0x3C, 1)", "d.write_eeprom(0x26, 1)", "d.write_eeprom(0x25, 0x9FB4 ^ 0x0008)",
                 "d.write_eeprom(0x40, 1)", "d.write_eeprom(0x24, 0x10000)"):
        with pytest.raises(MicroPythonError) as e:
            vm.exec(call)
        assert e.value.type == "ValueError", call
    assert vm.eval("m.ee_writes") == 0
    # a user bit of Config1 (IIR) may change; bit 3 stays
    assert vm.eval("[d.write_eeprom(0x25, 0x9FB4 & ~0x7 | 0x3), d.read_eeprom(0x05)]") == [True, 0x9FB3]


def test_start_up_and_sleep(vm):
    setup(vm, model_kw=", powered_ms=0")
    # fresh power-on: the words carry the error flag and INIT is low for ~250 ms
    assert vm.eval("fault(d.object_cc)")[0] == "error-flag"
    assert vm.eval("d.flags() & 0x10") == 0
    waited = vm.eval("d.wait_ready()")
    assert 200 <= waited <= 260
    assert vm.eval("[d.flags() & 0x10, d.object_cc()]") == [0x10, cc(36800)]
    # sleep: the part leaves the bus until woken
    vm.exec("d.sleep()")
    assert vm.eval("m.asleep") is True
    assert vm.eval("fault(d.object_cc)")[0] == "nack"
    vm.exec("m.wake()")
    assert vm.eval("d.wait_ready()") >= 200
    assert vm.eval("d.object_cc()") == cc(36800)


def test_sleep_command_has_valid_pec(vm):
    setup(vm)
    vm.exec("m.i2c_write(memoryview(bytes([0xFF, 0x00])), True)")   # a sleep with a bad PEC
    assert vm.eval("[m.asleep, m.pec_rejects]") == [False, 1]
    vm.exec("d.sleep()")
    assert vm.eval("m.asleep") is True


def test_bad_arguments(vm):
    setup(vm)
    for call in ("d.object_cc(3)", "MLX90614(bus, clock, retries=-1)"):
        with pytest.raises(MicroPythonError) as e:
            vm.exec(call)
        assert e.value.type == "ValueError"
    with pytest.raises(MicroPythonError):
        vm.exec("m.inject('smoke')")


def test_zero_allocation_per_read(vm):
    setup(vm)
    vm.exec("""
from tests.firmware._heap import locked
d.object_cc(); d.ambient_cc(); d.object_cc(2)
got = [0, 0, 0, 0]               # made before the lock; the reads store small ints in it
def reads():
    got[0] = d.object_cc(); got[1] = d.ambient_cc(); got[2] = d.object_cc(2)
    m.inject("pec", 2)
    got[3] = d.object_cc()       # two failed attempts, then success: retries allocate nothing
def many():
    for i in range(100):
        d.object_cc()
""")
    assert vm.eval("locked(reads)") == [None, "ok", 0]
    assert vm.eval("got") == [cc(36800), cc(24000), cc(36800), cc(36800)]
    assert vm.eval("locked(many)") == [None, "ok", 0]


def test_heap_lock_catches_allocation(vm):
    """The proof above can fail: the same lock around an allocating call raises MemoryError."""
    setup(vm)
    vm.exec("from tests.firmware._heap import locked")
    assert vm.eval("locked(d.unit_id)")[1] == "allocated"
