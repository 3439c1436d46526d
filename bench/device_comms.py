"""Device communication-layer figures on the real MicroPython VM.

- ``outbox_bytes_per_reading``: flash bytes one typical signed reading costs in the outbox while it
  waits (its record and its ack tombstone; 4 observations, calibration, patient token).
- ``signed_reading_bytes``: the size of that signed message on the wire.
- ``sign_cost_ref_units``: VM time to build + sign one reading divided by the VM time of one
  iteration of the reference loop ``acc = (acc + i * 3) & 0xFFFF`` measured in the same run.
- ``sign_queue_heap_bytes``: heap allocated by one ``Uplink.submit`` (serialise, sign, append to
  the outbox) after ``gc.collect()``, measured with ``gc.mem_alloc()`` with the collector off.
- ``sign_queue_fits_100k_heap``: the same submit cycle succeeds in a VM with a 100,000-byte heap.

Other benchmarks may reuse ``VM_SETUP`` (a comms stack in the VM), ``ref_iteration_us(vm)`` and
``measure(vm)``.
"""
from __future__ import annotations

from host.mpvm import MicroPythonVM

VM_SETUP = """
import gc, os, time
from firmware import config as C, reading as R, jws
from firmware.outbox import Outbox
from firmware.seq import SeqCounter
from firmware.log import Log
from firmware.uplink import Uplink
from sim.hardware.clock import VirtualClock
from sim.hardware.board import SimNetwork

class Board:
    name = 'sim'
    storage_root = '/flash'
    def __init__(self):
        self.clock = VirtualClock(1795430400)
        self.network = SimNetwork()
    def urandom(self, n):
        return bytes(n)
    def unique_id(self):
        return b'\\x24\\x0a\\xc4\\x00\\x00\\x01'
    def free_heap(self):
        return gc.mem_free()

try:
    os.mkdir('/flash')
except OSError:
    pass
board = Board()
cfg = C.Config({'device_id': 'nabd-240ac4000001', 'key': '11' * 32, 'key_version': 1,
                'mqtt_password': 'pw-0123456789', 'broker': 'mqtt://127.0.0.1:1883',
                'calibration': {'id': 'cal-2026-11-02', 'date': '2026-11-02', 'due': '2027-11-02'}})
box = Outbox(board)
up = Uplink(board, cfg, box, SeqCounter(board, floor=box.max_seq), Log(board))

def one():
    obs, flags = R.observations(temp_mc=36870, spo2=97, hr=72, pi_cp=240, q_temp=970, q_ppg=910)
    return up.submit(R.build_reading(1795430400, True, 73125, '0.1.0', cfg.calibration, 'p-7Hq2xK', obs, flags))

def ref_loop(n):
    acc = 0
    t0 = time.ticks_us()
    for i in range(n):
        acc = (acc + i * 3) & 0xFFFF
    return time.ticks_diff(time.ticks_us(), t0)

def sign_loop(n):
    obs, flags = R.observations(temp_mc=36870, spo2=97, hr=72, pi_cp=240, q_temp=970, q_ppg=910)
    p = R.build_reading(1795430400, True, 73125, '0.1.0', cfg.calibration, 'p-7Hq2xK', obs, flags)
    p['v'] = 1
    p['dev'] = cfg.device_id
    t0 = time.ticks_us()
    for s in range(n):
        p['seq'] = s + 1
        jws.sign(cfg.key, cfg.kid, 'nabd-reading+jws', R.dumps(p))
    return time.ticks_diff(time.ticks_us(), t0)

def heap_of_submit():
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    one()
    d = gc.mem_alloc() - a
    gc.enable()
    return d
"""


def ref_iteration_us(vm: MicroPythonVM, n: int = 200_000) -> float:
    """VM microseconds of one reference-loop iteration (best of 3)."""
    return min(vm.eval(f"ref_loop({n})") for _ in range(3)) / n


def measure(vm: MicroPythonVM) -> dict:
    vm.exec(VM_SETUP)
    for _ in range(20):
        vm.exec("one()")
    bpr = vm.eval("box.bytes_per_reading")
    size = vm.eval("[len(m) for _, m in box.pending(limit=1)][0]")
    ref = ref_iteration_us(vm)
    n = 200
    sign_us = min(vm.eval(f"sign_loop({n})") for _ in range(3)) / n
    heap = min(vm.eval("heap_of_submit()") for _ in range(5))
    return {"outbox_bytes_per_reading": bpr, "signed_reading_bytes": size,
            "sign_us_vm": round(sign_us, 1), "ref_iteration_us_vm": round(ref, 4),
            "sign_cost_ref_units": round(sign_us / ref, 1), "sign_queue_heap_bytes": heap}


def run(outdir) -> dict:
    with MicroPythonVM() as vm:
        figures = measure(vm)
    with MicroPythonVM(heapsize=100_000) as small:
        small.exec(VM_SETUP)
        ok = all(small.eval("one()") == i for i in range(1, 11))
        figures["sign_queue_fits_100k_heap"] = ok
        figures["sign_queue_heap_bytes_100k_vm"] = small.eval("heap_of_submit()")
    return figures
