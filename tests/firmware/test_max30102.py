"""MAX30102 driver on the real MicroPython VM against the register-level model (sim/hardware).

The model's counters are the ground truth: ``produced`` (samples the part generated), ``lost``
(dropped by overflow), ``popped`` (read out), ``count`` (waiting in the FIFO)."""
import pytest

from host.mpvm import MicroPythonError

SETUP = """
import array, gc, micropython
from sim.hardware.clock import VirtualClock
from sim.hardware.i2c import VirtualI2C
from sim.hardware.max30102 import MAX30102Model
from sim.hardware.scenario import ConstantScenario, PulseScenario, ArrayScenario
from firmware.drivers.max30102 import MAX30102, MAX30102Error
c = VirtualClock()
bus = VirtualI2C(c, 100000)
m = bus.attach(0x57, MAX30102Model(c, {scenario}{model_args}))
d = MAX30102(bus, clock=c)
def err(f, *a, **k):
    try:
        f(*a, **k)
    except MAX30102Error as e:
        return [e.fault, e.errno, str(e)]
    except ValueError as e:
        return ['ValueError', None, str(e)]
    return None
def drain(sleeps, reps=1):
    # read after each sleep (ms); return (samples read, red list, ir list)
    got = 0
    reds = []
    irs = []
    for _ in range(reps):
        for s in sleeps:
            c.sleep_ms(s)
            n = d.read_fifo()
            got += n
            for i in range(n):
                reds.append(d.red[i])
                irs.append(d.ir[i])
    return got, reds, irs
"""


def setup(vm, scenario="PulseScenario()", model_args="", configure="d.check(); d.reset(); d.configure()"):
    vm.exec(SETUP.format(scenario=scenario, model_args=(", " + model_args) if model_args else ""))
    if configure:
        vm.exec(configure)


def counts(pa_per_ma, led_code=35, range_code=1, pw_code=3):
    """What the datasheet's transfer gives (noise off): pA = pA/mA x mA, counts = pA x 2**18 /
    full scale, at the pulse width's resolution (right-aligned, as the driver returns it)."""
    pa = pa_per_ma * led_code // 5
    v = min(pa * 262144 // (2048000 << range_code), 0x3FFFF)
    return v >> (3 - pw_code)


# --- identity, reset -----------------------------------------------------------------------------

def test_part_id_check_and_reset(vm):
    setup(vm, configure="")
    assert vm.eval("d.part_id()") == 0x15
    assert vm.eval("d.check()") == 0x15
    vm.exec("d.configure(sample_rate=200, red_ma=12.4)")
    assert vm.eval("[m.regs[0x0A], m.regs[0x0C], m.regs[0x09]]") == [(1 << 5) | (2 << 2) | 3, 62, 3]
    vm.exec("d.reset()")
    # every register back at its power-on value, the bit polled until it self-cleared
    assert vm.eval("[m.resets, m.regs[0x0A], m.regs[0x0C], m.regs[0x09], d.configured]") == [1, 0, 0, 0, False]
    assert vm.eval("m.sampling()") is False


def test_reset_timeout_is_named(vm):
    setup(vm, configure="")
    vm.exec("m.inject('reset-stuck'); t0 = c.ticks_ms()")
    fault, _, msg = vm.eval("err(d.reset)")
    assert fault == "reset-timeout" and "RESET" in msg
    assert 50 <= vm.eval("c.ticks_diff(c.ticks_ms(), t0)") < 80   # bounded


def test_wrong_part_is_named(vm):
    setup(vm, model_args="part_id=0x11", configure="")
    fault, _, msg = vm.eval("err(d.check)")
    assert fault == "wrong-part" and "0x11" in msg and "MAX30100" in msg


def test_absent_part(vm):
    setup(vm, configure="")
    vm.exec("m.inject('absent')")
    for call in ("d.check", "d.reset", "d.read_fifo", "d.die_temp_cc", "d.configure"):
        fault, errno, _ = vm.eval(f"err({call})")
        assert (fault, errno) == ("absent", 19), call
    assert vm.eval("bus.scan()") == []
    vm.exec("m.clear('absent')")
    assert vm.eval("bus.scan()") == [0x57]
    assert vm.eval("d.check()") == 0x15


def test_first_access_after_power_up_is_retried_a_bounded_number_of_times(vm):
    setup(vm, configure="")
    vm.exec("m.inject('absent', 2)")             # the first two transactions fail
    assert vm.eval("d.check()") == 0x15
    assert vm.eval("m.accesses") == 4            # 2 NACKed + the write and read that answered
    setup(vm, configure="")
    vm.exec("m.inject('absent', 3)")
    assert vm.eval("err(d.check)")[0] == "absent"
    # once the part has answered, a failure is reported at once (no retry loop in read paths)
    vm.exec("d.check(); d.configure(); m.inject('absent', 1); a0 = m.accesses")
    assert vm.eval("err(d.read_fifo)")[0] == "absent"
    assert vm.eval("m.accesses - a0") == 1


# --- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ("mode='pulse'", "mode"),
    ("sample_rate=150", "sample_rate 150"),
    ("pulse_width_us=400", "pulse_width_us 400"),
    ("adc_range_na=1000", "adc_range_na 1000"),
    ("sample_avg=3", "sample_avg 3"),
    ("red_ma=51.2", "red_ma"),
    ("ir_ma=-1", "ir_ma"),
    ("almost_full=16", "almost_full 16"),
    ("almost_full=33", "almost_full 33"),
    ("sample_rate=400", "400 sps is not honoured with 411 us pulses in spo2 mode (at most 200"),
    ("sample_rate=1600, pulse_width_us=215", "at most 800"),
    ("mode='hr', sample_rate=1600", "at most 1000"),
    ("mode='multi', sample_rate=3200, pulse_width_us=69", "at most 1600"),
])
def test_configure_rejects_what_the_part_cannot_do(vm, kwargs, words):
    setup(vm, configure="d.check()")
    vm.exec("t0 = bus.transactions")
    kind, _, msg = vm.eval(f"err(d.configure, {kwargs})")
    assert kind == "ValueError" and words in msg, msg
    assert vm.eval("bus.transactions - t0") == 0     # nothing written


def test_configure_writes_the_datasheet_fields(vm):
    setup(vm, configure="d.check()")
    vm.exec("d.configure(mode='hr', sample_rate=1000, pulse_width_us=411, adc_range_na=16384, "
            "red_ma=51, ir_ma=0.2, sample_avg=32, rollover=False, almost_full=32)")
    regs = vm.eval("[m.regs[r] for r in (0x08, 0x09, 0x0A, 0x0C, 0x0D, 0x02, 0x04, 0x05, 0x06)]")
    assert regs == [(5 << 5) | 0x00, 0x02, (3 << 5) | (5 << 2) | 3, 255, 1, 0x80, 0, 0, 0]
    vm.exec("d.configure(mode='multi', sample_rate=400, pulse_width_us=215, sample_avg=4, almost_full=17)")
    regs = vm.eval("[m.regs[r] for r in (0x08, 0x09, 0x0A, 0x11, 0x12)]")
    assert regs == [(2 << 5) | 0x10 | 0x0F, 0x07, (1 << 5) | (3 << 2) | 2, 0x21, 0]
    assert vm.eval("[d.period_us, d.output_sps]") == [10000, 100.0]


def test_configure_clears_the_fifo_and_loss(vm):
    setup(vm)
    vm.exec("c.sleep_ms(2000); d.read_fifo()")
    assert vm.eval("d.lost") > 0
    vm.exec("c.sleep_ms(120); d.configure()")
    assert vm.eval("[m.count, m.regs[4], m.regs[5], m.regs[6], d.lost, d.last_lost]") == [0, 0, 0, 0, 0, 0]


# --- FIFO ----------------------------------------------------------------------------------------

def _ramp_scenario(n=6000):
    # distinct pseudo-random levels per 10 ms slot, 10 pA/mA (4.5 counts) apart: any lost,
    # repeated or reordered sample shows
    return (f"ArrayScenario(100, array.array('i', [100000 + (k * 7919) % 5000 * 10 for k in range({n})]), "
            f"array.array('i', [150000 + (k * 104729) % 5000 * 10 for k in range({n})]))")


def _ramp(k):
    return 100000 + (k * 7919) % 5000 * 10, 150000 + (k * 104729) % 5000 * 10


RED_INDEX = {counts(_ramp(k)[0]): k for k in range(5000)}


def test_fifo_drains_every_sample_in_order_across_pointer_wraps(vm):
    setup(vm, scenario=_ramp_scenario(), model_args="seed=3")
    vm.exec("m.noise_pa = 0")
    # irregular reader: 0..30 samples per read, the 32-slot pointers wrap again and again
    got, reds, irs = vm.eval("drain([7, 13, 23, 290, 1, 150, 60, 3, 210], reps=12)")
    assert got == len(reds) > 3 * 32 * 10
    assert vm.eval("[m.popped, m.lost, m.produced - m.popped - m.count]") == [got, 0, 0]
    # the first sample is at scenario index i0; every following one is the next index
    i0 = RED_INDEX[reds[0]]
    assert i0 < 20
    exp_red = [counts(_ramp(i0 + k)[0]) for k in range(got)]
    exp_ir = [counts(_ramp(i0 + k)[1]) for k in range(got)]
    assert reds == exp_red
    assert irs == exp_ir


def test_samples_follow_a_pulse_scenario(vm):
    setup(vm, scenario="PulseScenario(bpm=60, red=150000, ir=200000, red_ac_pm=20, ir_ac_pm=30)")
    vm.exec("m.noise_pa = 0")
    got, reds, irs = vm.eval("drain([100], reps=30)")   # 3 s: three beats at 60 bpm
    assert got >= 299
    # DC and trough as the transfer predicts (7 mA, 4096 nA); the AC depth ratio survives
    # (within the waveform's change over one 10 ms sample: 2 % of the AC per 10 ms)
    assert max(reds) == pytest.approx(counts(150000), abs=counts(3000 * 2 // 100) + 1)
    assert min(reds) == pytest.approx(counts(150000 - 3000), abs=counts(3000 * 2 // 100) + 1)
    assert max(irs) == pytest.approx(counts(200000), abs=counts(6000 * 2 // 100) + 1)
    assert min(irs) == pytest.approx(counts(200000 - 6000), abs=counts(6000 * 2 // 100) + 1)
    # 1 s period: the waveform repeats every 100 samples
    assert reds[:100] == pytest.approx(reds[100:200], abs=1)


def test_no_sample_lost_when_the_reader_keeps_up(vm):
    setup(vm)
    # 60 s of virtual time at the default 100 sps, read every 100-250 ms
    got, _, _ = vm.eval("(lambda r: (r[0], [], []))(drain([100, 250, 180, 60], reps=102))")
    produced, lost, popped, in_fifo = vm.eval("[m.produced, m.lost, m.popped, m.count]")
    assert produced >= 6000
    assert lost == 0 and vm.eval("d.lost") == 0
    assert got == popped == produced - in_fifo


@pytest.mark.parametrize("rollover", [True, False])
def test_overflow_counted_exactly_when_the_reader_is_too_slow(vm, rollover):
    setup(vm, scenario=_ramp_scenario(), configure=f"d.check(); d.reset(); d.configure(rollover={rollover})")
    vm.exec("m.noise_pa = 0; m.inject('overflow')")
    got, reds, _ = vm.eval("drain([5], reps=40)")
    # one more poll at full speed: a loss in the last poll's race window shows in the next one
    vm.exec("m.clear('overflow'); n_last = d.read_fifo()")
    got += vm.eval("n_last")
    produced, lost, popped, in_fifo, silent = vm.eval("[m.produced, m.lost, m.popped, m.count, m.silent_lost]")
    assert lost > 40 * 5                                  # every poll lost samples
    assert got == popped
    assert produced - got - in_fifo == lost
    assert silent > 0                                     # the race happened during the run
    if rollover:   # RD moved on at each overwrite: every loss is accounted for
        assert vm.eval("[d.lost, d.lost_exact]") == [lost, True]
    else:          # without rollover the race leaves no trace in any register
        assert vm.eval("[d.lost, d.lost_exact]") == [lost - silent, True]
    assert got == 40 * 32 + vm.eval("n_last")             # each poll found a full FIFO
    # rollover keeps the newest samples, no rollover the oldest: either way runs of 32 in order
    seq = [RED_INDEX[r] for r in reds[:64]]
    assert seq[1:32] == [seq[0] + i for i in range(1, 32)]
    assert seq[32] - seq[31] > 1                          # the gap of the lost samples


def test_overflow_beyond_the_saturating_counter_is_estimated(vm):
    setup(vm)
    vm.exec("c.sleep_ms(200); d.read_fifo(); c.sleep_ms(1000); n = d.read_fifo()")
    assert vm.eval("[n, m.regs[5], d.last_lost >= 15, d.lost_exact]") == [32, 0, True, False]
    lost = vm.eval("m.lost")
    assert lost > 15
    assert abs(vm.eval("d.lost") - lost) <= 2


def test_full_fifo_read_as_32_not_0(vm):
    setup(vm)
    vm.exec("c.sleep_ms(5); d.read_fifo()")
    # wait until exactly 32 samples wait: WR == RD and nothing lost
    vm.exec("while m.fifo_count() < 32: c.sleep_ms(1)")
    assert vm.eval("[m.count, m.regs[4] == m.regs[6], m.regs[5], m.lost]") == [32, True, 0, 0]
    assert vm.eval("d.read_fifo()") == 32
    assert vm.eval("[m.lost, d.lost, m.produced - m.popped - m.count, min(d.red) > 50000]") == [0, 0, 0, True]


def test_empty_fifo_with_a_stale_a_full_reads_0(vm):
    # A_FULL latches when the FIFO reaches 17 and stays set while the reader drains through
    # FIFO_DATA; right after a drain WR == RD with A_FULL set must still mean "empty"
    setup(vm, configure="d.check(); d.reset(); d.configure(sample_rate=50)")
    vm.exec("c.sleep_ms(400); n1 = d.read_fifo(); a_full = m.regs[0] & 0x80; waiting = m.fifo_count()")
    assert vm.eval("[n1 >= 17, a_full, waiting]") == [True, 0x80, 0]
    assert vm.eval("d.read_fifo()") == 0


@pytest.mark.parametrize("pw_us, pw_code", [(411, 3), (215, 2), (118, 1), (69, 0)])
def test_resolution_shift_per_pulse_width(vm, pw_us, pw_code):
    setup(vm, scenario="ConstantScenario(red=150003, ir=199999)",
          configure=f"d.check(); d.reset(); d.configure(pulse_width_us={pw_us}, adc_range_na=2048)")
    vm.exec("m.noise_pa = 0; c.sleep_ms(100)")
    n = vm.eval("d.read_fifo()")
    assert n >= 9
    red, ir = vm.eval("[d.red[0], d.ir[0]]")
    assert red == counts(150003, range_code=0, pw_code=pw_code)
    assert ir == counts(199999, range_code=0, pw_code=pw_code)
    assert red < 2 ** (15 + pw_code) and red > 2 ** (14 + pw_code)
    # on the wire the data are left-justified: the unused low bits are zero
    raw = vm.eval("list(m.fifo[0:3])")
    v = (raw[0] << 16) | (raw[1] << 8) | raw[2]
    assert v & ((1 << (3 - pw_code)) - 1) == 0 and v >> (3 - pw_code) == red


def test_hr_mode_is_red_only(vm):
    setup(vm, scenario="ConstantScenario(red=150000, ir=200000)",
          configure="d.check(); d.reset(); d.configure(mode='hr')")
    vm.exec("m.noise_pa = 0; c.sleep_ms(100)")
    assert vm.eval("d.read_fifo()") >= 9
    assert vm.eval("[d.red[0], d.ir[0]]") == [counts(150000), 0]


def test_multi_led_mode_reads_both_slots(vm):
    setup(vm, scenario="ConstantScenario(red=150000, ir=200000)",
          configure="d.check(); d.reset(); d.configure(mode='multi', red_ma=5.0, ir_ma=9.0)")
    vm.exec("m.noise_pa = 0; c.sleep_ms(100)")
    assert vm.eval("d.read_fifo()") >= 9
    assert vm.eval("[d.red[0], d.ir[0]]") == [counts(150000, led_code=25), counts(200000, led_code=45)]


def test_led_current_scales_and_the_adc_clips(vm):
    setup(vm, scenario="ConstantScenario(red=150000, ir=200000)",
          configure="d.check(); d.reset(); d.configure(red_ma=3.4, ir_ma=51, adc_range_na=2048)")
    vm.exec("m.noise_pa = 0; c.sleep_ms(100); d.read_fifo()")
    assert vm.eval("[d.red[0], d.ir[0]]") == [counts(150000, led_code=17, range_code=0), 0x3FFFF]


# --- swapped LEDs --------------------------------------------------------------------------------

def test_swapped_leds_detected_and_corrected(vm):
    setup(vm, scenario="ConstantScenario(red=150000, ir=200000)",
          configure="d.check(); d.reset(); d.configure(sample_rate=200, sample_avg=2, red_ma=6.0, ir_ma=8.0)")
    vm.exec("m.noise_pa = 0")
    assert vm.eval("[d.detect_swapped_leds(), d.swapped]") == [False, False]
    vm.exec("m.inject('swapped-leds'); c.sleep_ms(100); d.read_fifo()")
    # uncorrected, a swapped part puts IR light in the red slot
    assert vm.eval("[d.red[0], d.ir[0]]") == [counts(200000, led_code=40), counts(150000, led_code=30)]
    cfg = "[m.regs[r] for r in (0x02, 0x03, 0x08, 0x09, 0x0A, 0x0C, 0x0D, 0x11, 0x12)]"
    before = vm.eval(cfg)
    assert vm.eval("[d.detect_swapped_leds(), d.swapped]") == [True, True]
    assert vm.eval(cfg) == before                                # configuration restored
    assert vm.eval("d.config['sample_rate']") == 200
    vm.exec("c.sleep_ms(100); n = d.read_fifo()")
    assert vm.eval("[d.red[0], d.ir[0]]") == [counts(150000, led_code=30), counts(200000, led_code=40)]
    # a part without the defect, probed again, is set back
    vm.exec("m.clear('swapped-leds')")
    assert vm.eval("[d.detect_swapped_leds(), d.swapped]") == [False, False]


def test_swap_detection_without_a_finger_is_inconclusive(vm):
    setup(vm, scenario="ConstantScenario(red=0, ir=0, finger=False)")
    vm.exec("d.swapped = True")
    assert vm.eval("[d.detect_swapped_leds(), d.swapped]") == [None, True]


# --- die temperature, power ----------------------------------------------------------------------

@pytest.mark.parametrize("mc, cc", [(-5250, -525), (-40000, -4000), (-30, -6), (0, 0), (23990, 2394),
                                    (36800, 3675), (85000, 8500)])
def test_die_temperature_signed(vm, mc, cc):
    setup(vm, scenario=f"ConstantScenario(ambient_mc={mc})")
    vm.exec("t0 = c.ticks_ms()")
    assert vm.eval("d.die_temp_cc()") == cc
    assert 29 <= vm.eval("c.ticks_diff(c.ticks_ms(), t0)") < 40
    assert vm.eval("d.status() & 0x200") == 0x200   # DIE_TEMP_RDY set by the part; reading clears it
    assert vm.eval("d.status() & 0x200") == 0


def test_shutdown_stops_sampling_and_wake_resumes(vm):
    setup(vm)
    vm.exec("c.sleep_ms(100); d.read_fifo(); d.shutdown(); p0 = m.produced")
    vm.exec("c.sleep_ms(2000)")
    assert vm.eval("[m.produced - p0, d.read_fifo(), d.lost]") == [0, 0, 0]
    vm.exec("d.wake(); c.sleep_ms(105)")
    assert 10 <= vm.eval("d.read_fifo()") <= 11
    assert vm.eval("d.lost") == 0


def test_status_flags(vm):
    setup(vm, configure="")
    assert vm.eval("d.status() & 0x01") == 0x01          # PWR_RDY after power-up, cleared by reading
    assert vm.eval("d.status()") == 0
    vm.exec("d.configure(); c.sleep_ms(180)")
    assert vm.eval("m.int_pending()") is True             # A_FULL at 17 samples, enabled
    assert vm.eval("d.status() & 0xC0") == 0xC0
    assert vm.eval("m.int_pending()") is False


# --- allocation ----------------------------------------------------------------------------------

READS = """
from tests.firmware._heap import locked
def reads(k, ms):
    tot = 0
    for _ in range(k):
        c.sleep_ms(ms)
        tot += d.read_fifo()
    return tot
"""


@pytest.mark.parametrize("setup_code", [
    "d.configure()",
    "d.configure(mode='hr')",
    "d.configure(); d.swapped = True",
    "d.configure(); m.inject('overflow')",
])
def test_read_fifo_allocates_nothing(vm, setup_code):
    setup(vm, configure="d.check(); d.reset(); " + setup_code)
    vm.exec(READS + "reads(5, 50)")
    tot, state, allocated = vm.eval("locked(lambda: reads(300, 50))")
    assert (state, allocated) == ("ok", 0)
    assert tot >= 300 * 4


def test_read_fifo_allocates_nothing_on_the_full_and_empty_paths(vm):
    setup(vm)
    vm.exec("""
from tests.firmware._heap import locked
def full_reads(k):
    tot = 0
    for _ in range(k):
        while m.fifo_count() < 32:    # exactly 32 waiting: WR == RD, OVF 0, status read
            c.sleep_ms(1)
        tot += d.read_fifo()
        tot += d.read_fifo()          # at once: WR == RD, empty
    return tot
full_reads(2)
""")
    tot, state, allocated = vm.eval("locked(lambda: full_reads(10))")
    assert [state, allocated, vm.eval("m.lost")] == ["ok", 0, 0]
    assert tot >= 10 * 32


# --- CPython -------------------------------------------------------------------------------------

def test_cpython_import_and_run():
    from firmware.drivers.max30102 import MAX30102, MAX30102Error
    from sim.hardware.clock import VirtualClock
    from sim.hardware.i2c import VirtualI2C
    from sim.hardware.max30102 import MAX30102Model
    from sim.hardware.scenario import PulseScenario

    c = VirtualClock()
    bus = VirtualI2C(c, 100000)
    m = bus.attach(0x57, MAX30102Model(c, PulseScenario(ambient_mc=-1500)))
    d = MAX30102(bus, clock=c)
    assert d.check() == 0x15
    d.reset()
    d.configure()
    total = 0
    for _ in range(50):
        c.sleep_ms(100)
        total += d.read_fifo()
    assert total == m.popped and m.lost == 0 and total >= 499
    assert d.die_temp_cc() == -150
    m.inject("absent")
    with pytest.raises(MAX30102Error) as e:
        d.read_fifo()
    assert e.value.fault == "absent"
    with pytest.raises(ValueError):
        m.inject("melted")


def test_micropython_errors_surface(vm):
    setup(vm, configure="")
    with pytest.raises(MicroPythonError) as e:
        vm.exec("m.inject('absent'); d.check()")
    assert e.value.type == "MAX30102Error"
