"""Driver figures on the real MicroPython interpreter (``python -m bench drivers``).

Allocation is ``gc.mem_alloc()`` growth (with ``gc.collect()`` before, never during: the VM's heap
is large) over many calls in steady state, divided per read or per sample; it includes the
simulated bus and models, which are written not to allocate, so any non-zero figure is a lead to
follow. ``*_heap_locked`` says whether the same calls also run with ``micropython.heap_lock()``
(the strongest proof: any allocation raises MemoryError). Samples lost: the MAX30102 model's
``produced`` counter against what the driver read, at the default configuration (100 samples/s)
with the reader polling every 40 ms (the FIFO holds 320 ms). ``vm_us_*`` are the WebAssembly
interpreter's own wall time (indicative: an ESP32 at 240 MHz is several times slower).

``ssd1306_alloc_bytes_per_frame_incl_sim_bus`` is not the driver's: ``VirtualI2C.writeto`` makes a
memoryview per transfer and its transfer-time formula ``(n + 1) * 9 * 10**6`` leaves the small-int
range for transfers above ~118 bytes (a 1025-byte frame); ``..._driver`` is the driver alone.
"""
from __future__ import annotations

from host.mpvm import MicroPythonVM

CODE = r"""
import gc, time, micropython
from sim.hardware.board import SimBoard
from firmware.drivers.mlx90614 import MLX90614
from firmware.drivers.max30102 import MAX30102
from firmware.drivers.ssd1306 import SSD1306

R = {}
board = SimBoard()
clock = board.clock
bus = board.i2c

def alloc(f, n):
    f(4)                                   # warm up: first-call allocations are not steady state
    gc.collect()
    a = gc.mem_alloc()
    f(n)
    return gc.mem_alloc() - a

def locked(f, n):
    micropython.heap_lock()
    try:
        f(n)
        return True
    except MemoryError:
        return False
    finally:
        micropython.heap_unlock()

# --- MLX90614 ---
mlx = MLX90614(bus, clock=clock)
def mlx_reads(n):
    while n:
        mlx.object_cc()
        n -= 1
N = 200
R['mlx90614_alloc_bytes_per_read'] = alloc(mlx_reads, N) / N
R['mlx90614_read_heap_locked'] = locked(mlx_reads, 20)
t0 = bus.transactions; v0 = clock.ticks_us(); w0 = time.ticks_us()
mlx_reads(N)
w1 = time.ticks_us()
R['mlx90614_bus_transactions_per_read'] = (bus.transactions - t0) / N
R['mlx90614_bus_us_per_read'] = clock.ticks_diff(clock.ticks_us(), v0) // N
R['vm_us_per_mlx90614_read'] = time.ticks_diff(w1, w0) / N

# --- MAX30102 ---
mx = MAX30102(bus, clock=clock)
mx.reset(); mx.check(); mx.configure()
mx.read_fifo()
got = [0]
def fifo(n):
    # n polls at the 40 ms cadence
    while n:
        clock.sleep_ms(40)
        got[0] += mx.read_fifo()
        n -= 1
fifo(5)
gc.collect()
got[0] = 0
a = gc.mem_alloc()
fifo(250)                                  # 10 s of data
R['max30102_alloc_bytes_per_sample'] = (gc.mem_alloc() - a) / got[0]
R['max30102_read_heap_locked'] = locked(fifo, 25)

# samples lost at the default configuration, reader keeping up: model counters vs driver reads
mx.reset(); mx.check(); mx.configure()
m = board.max
clock.sleep_ms(1)
mx.read_fifo()
p0 = m.produced
read = 0
t0 = bus.transactions; v0 = clock.ticks_us(); w0 = time.ticks_us()
for _ in range(1500):                      # 60 s at 40 ms
    clock.sleep_ms(40)
    read += mx.read_fifo()
w1 = time.ticks_us()
secs = clock.ticks_diff(clock.ticks_us(), v0) / 1e6
produced = m.produced - p0
waiting = m.fifo_count()                  # produced since the last poll: not lost, not yet read
R['max30102_samples_produced'] = produced
R['max30102_samples_read'] = read
R['max30102_samples_lost_per_1000'] = 1000 * (produced - read - waiting) / produced if produced else None
R['max30102_driver_reported_lost'] = mx.lost
R['max30102_bus_transactions_per_s'] = (bus.transactions - t0) / secs
R['max30102_samples_per_s'] = read / secs
R['vm_us_per_max30102_sample'] = time.ticks_diff(w1, w0) / read if read else None

# the reader too slow on purpose (every 500 ms): the driver must count what the FIFO dropped
mx.reset(); mx.check(); mx.configure(); mx.read_fifo()
p0 = m.produced; read = 0
for _ in range(20):
    clock.sleep_ms(500)
    read += mx.read_fifo()
true_lost = m.produced - p0 - read - m.fifo_count()
R['max30102_slow_reader_lost_per_1000_true'] = 1000 * true_lost / (m.produced - p0)
R['max30102_slow_reader_lost_per_1000_reported'] = 1000 * mx.lost / (m.produced - p0)
R['max30102_slow_reader_lost_count_exact'] = mx.lost_exact

# --- SSD1306 ---
oled = SSD1306(bus)
oled.text('nabd', 0, 0)
def shows(n):
    while n:
        oled.show()
        n -= 1
R['ssd1306_alloc_bytes_per_frame_incl_sim_bus'] = alloc(shows, 20) / 20
v0 = clock.ticks_us(); w0 = time.ticks_us()
shows(20)
w1 = time.ticks_us()
R['ssd1306_bus_ms_per_frame'] = clock.ticks_diff(clock.ticks_us(), v0) / 20000
R['vm_us_per_frame_incl_model'] = time.ticks_diff(w1, w0) / 20

# --- self-test ---
from firmware import selftest
b2 = SimBoard()
w0 = time.ticks_us()
res = selftest.run(b2)
R['selftest_virtual_ms'] = b2.clock.ticks_ms()
R['selftest_vm_ms'] = time.ticks_diff(time.ticks_us(), w0) // 1000
R['selftest_all_pass'] = selftest.passed(res)
"""

SINK_SHOW = r"""
import micropython, gc
from firmware.drivers.ssd1306 import SSD1306
class Sink:
    def writeto(self, addr, buf, stop=True): return len(buf)
d = SSD1306(Sink()); d.text('x', 0, 0)
def shows(n):
    while n:
        d.show(); n -= 1
shows(2)
gc.collect(); a = gc.mem_alloc(); shows(50); SHOW_ALLOC = (gc.mem_alloc() - a) / 50
"""


def run(outdir) -> dict:
    with MicroPythonVM() as vm:
        vm.exec(CODE)
        figures = vm.eval("R")
        vm.exec(SINK_SHOW)
        figures["ssd1306_alloc_bytes_per_frame_driver"] = vm.eval("SHOW_ALLOC")
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in sorted(figures.items())}
