"""In-VM helper of tests/sim/test_physiology.py: the MAX30102 register model fed by a scenario
file, read at the register level (no driver), so the model alone is what is compared."""
from sim.hardware.clock import VirtualClock
from sim.hardware.i2c import VirtualI2C
from sim.hardware.max30102 import MAX30102Model
from sim.hardware.scenario import ArrayScenario


def read_scenario(path, led, polls):
    """SpO2 mode at 100 sps, 411 us pulses, 4096 nA range, both LEDs at ``led`` × 0.2 mA; the FIFO
    drained every 100 ms of virtual time, ``polls`` times. Returns (red counts, IR counts)."""
    clock = VirtualClock()
    bus = VirtualI2C(clock, 400000)
    bus.attach(0x57, MAX30102Model(clock, ArrayScenario.load(path)))
    bus.writeto_mem(0x57, 0x09, b"\x03")  # SpO2 mode
    bus.writeto_mem(0x57, 0x0A, bytes([(1 << 5) | (1 << 2) | 3]))  # 4096 nA, 100 sps, 411 us
    bus.writeto_mem(0x57, 0x0C, bytes([led]))  # LED1 red, 0.2 mA steps
    bus.writeto_mem(0x57, 0x0D, bytes([led]))  # LED2 IR
    bus.writeto_mem(0x57, 0x08, b"\x10")  # no averaging, rollover
    for r in (0x04, 0x05, 0x06):
        bus.writeto_mem(0x57, r, b"\x00")
    red = []
    ir = []
    for _ in range(polls):
        clock.advance_us(100000)
        wr = bus.readfrom_mem(0x57, 0x04, 1)[0]
        rd = bus.readfrom_mem(0x57, 0x06, 1)[0]
        n = (wr - rd) & 0x1F
        if n:
            b = bus.readfrom_mem(0x57, 0x07, 6 * n)
            for i in range(n):
                o = 6 * i
                red.append(((b[o] << 16) | (b[o + 1] << 8) | b[o + 2]) & 0x3FFFF)
                ir.append(((b[o + 3] << 16) | (b[o + 4] << 8) | b[o + 5]) & 0x3FFFF)
    return red, ir
