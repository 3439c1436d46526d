"""Device application figures on the real MicroPython VM (``build/bench/device.json``).

One full cycle of the device: a short button press, temperature (MLX90614 woken, 8 reads), SpO2
and pulse (MAX30102 FIFO into the chain until 3 stable reports), signing, the outbox on flash, and
the MQTT publish, on the simulated board with the ``normal`` scenario. The VM has no socket: the
uplink publishes into ``sim.hardware.loopback`` (an in-memory MQTT peer answering CONNACK,
SUBACK, PUBACK; it sends no acks here, so none of its own signing is counted).

- ``heap_peak_bytes``: the device's peak heap during the cycle: for each loop step, the live heap
  at its start (after ``gc.collect()``) plus everything the step allocates with the collector
  off; the maximum over the steps, minus the live heap before the device was built (modules
  imported, simulated board made). So: device objects (buffers, outbox index, chains, drivers,
  uplink, MQTT buffers) plus the worst step's transient garbage. Target <= 60,000.
- ``heap_device_bytes``: live heap of the built, idle device (after a collection);
  ``heap_code_bytes``: the firmware modules compiled from source in RAM (on the ESP32 they are
  frozen or ``.mpy`` files: mostly out of the heap); ``heap_headroom_100k_bytes``: what the peak
  leaves of the ~100 KB an ESP32 without PSRAM has free.
- Not measured: a cycle in a VM capped at 100 KB. ``MicroPythonVM(heapsize=100_000)`` does not cap
  the heap of the pinned WebAssembly build (``gc.mem_free()`` there reports ~134 MB: the heap
  grows on demand), so such a run would prove nothing.
- ``outbox_bytes_per_reading``, ``sign_cost_ref_units``: from ``bench/device_comms.py``
  (the same reference loop as the signal benchmark).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench import device_comms
from host.mpvm import MicroPythonVM
from sim import physiology

MARK = "gc.collect()\n{name} = gc.mem_alloc()"   # in its own exec: no setup code object alive

IMPORTS = """
import gc
from sim.hardware.scenario import ArrayScenario
from sim.hardware.board import SimBoard
from sim.hardware.loopback import Loopback
from firmware import config, main
import firmware.app, firmware.ui, firmware.uplink, firmware.mqtt, firmware.outbox, firmware.jws
import firmware.signal.pulseox, firmware.signal.temperature, firmware.reading
"""

BOARD = """
board = SimBoard(scenario=ArrayScenario.load('/scenario.bin'), storage_root='/flash', unix_time=1795430400)
cfg = config.create_identity(board)
peer = Loopback()
peer.keep = 2
board.network.stream_factory = peer.open
"""

DEVICE = """
dev = main.build(board, cfg)
app = dev.app
for _ in range(5):
    app.step()
"""

# one loop step, measured: run as its own exec after a separate ``gc.collect()`` exec (the
# WebAssembly port's collector reclaims garbage reliably only between top-level executions)
STEP = """
_a = gc.mem_alloc()
gc.disable()
if _n == 0:
    board.button.press()
if _n == 3:
    board.button.release()
app.step()
_u = gc.mem_alloc()
gc.enable()
if _u > _peak:
    _peak = _u
    _peak_at = (_n, app.state, _u - _a)
_n += 1
_done = app.state == 'result' and any(t.endswith('/reading') for t, _ in peer.published)
"""

def _scenario_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        p = physiology.write_scenario(Path(tmp) / "s.bin", physiology.scenario("normal", seed=1, duration_s=40))
        return p.read_bytes()


def _vm_cycle(vm: MicroPythonVM, data: bytes, limit: int = 2000) -> dict:
    vm.write_file("/scenario.bin", data)
    vm.exec("import gc")
    vm.exec(MARK.format(name="_m0"))
    vm.exec(IMPORTS)
    vm.exec(MARK.format(name="_m1"))
    vm.exec(BOARD)
    vm.exec(MARK.format(name="_m2"))
    vm.exec(DEVICE)
    vm.exec(MARK.format(name="_m3"))
    vm.exec("_n = 0\n_peak = 0\n_peak_at = None\n_done = False")
    for _ in range(limit):
        vm.exec("gc.collect()")
        vm.exec(STEP)
        if vm.eval("_done"):
            break
    peak, at, steps, state, result, err = vm.eval(
        "[_peak, _peak_at, _n, app.state, app.result.to_dict() if app.result else None, app.last_error]")
    m0, m1, m2, m3 = vm.eval("[_m0, _m1, _m2, _m3]")
    return {"peak": peak, "peak_at": at, "steps": steps, "state": state, "result": result, "error": err,
            "code": m1 - m0, "device": m3 - m2, "board": m2}


def run(outdir) -> dict:
    data = _scenario_bytes()
    with MicroPythonVM() as vm:
        big = _vm_cycle(vm, data)
        comms = device_comms.measure(vm)
    ok = big["state"] == "result" and big["result"] and big["result"]["seq"] == 1
    figures = {
        "heap_peak_bytes": big["peak"] - big["board"] if ok else None,
        "heap_device_bytes": big["device"],
        "heap_code_bytes": big["code"],
        "cycle_steps": big["steps"],
        "heap_peak_step": {"step": big["peak_at"][0], "state": big["peak_at"][1],
                           "step_alloc_bytes": big["peak_at"][2]} if big["peak_at"] else None,
        "cycle_ok": bool(ok),
        "outbox_bytes_per_reading": comms["outbox_bytes_per_reading"],
        "sign_cost_ref_units": comms["sign_cost_ref_units"],
        "signed_reading_bytes": comms["signed_reading_bytes"],
    }
    figures["heap_headroom_100k_bytes"] = 100_000 - figures["heap_peak_bytes"] if ok else None
    figures["targets"] = {"heap_peak_bytes": "<= 60000"}
    return figures
