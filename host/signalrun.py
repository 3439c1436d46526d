"""Run the firmware signal chain (``firmware/signal/``) on the real MicroPython VM over recorded or
synthetic samples: the harness behind ``nabd analyze``, the tests and ``bench/signal.py``.

* :func:`run_chain` — red/IR samples (ADC counts) -> one dict per 1-s report of ``PulseOx``;
* :func:`measure_cost` — allocation and time per sample on the VM, against a reference loop;
* :func:`run_temperature` — MLX90614 object readings -> the ``TempProcessor`` result.

The samples travel as one binary int32 file into the VM's filesystem and the loop runs inside the
VM (one ``exec`` per recording, not per sample); reports are collected as int tuples in the VM and
come back as JSON. Floats exist on the host side only.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import numpy as np

from host.mpvm import MicroPythonVM

FIRMWARE_RATE_HZ = 100
_SAMPLES = "/tmp/ppg.i32"
_MARK = "\x1e"
_WITHHELD = ("none", "no_finger", "settling", "motion", "low_perfusion", "clipping", "ambient_light",
             "irregular_rhythm")


def _temp_flag_names(flags: int) -> list[str]:
    from firmware.signal.temperature import FLAG_NAMES  # noqa: PLC0415

    return [n for i, n in enumerate(FLAG_NAMES) if flags & (1 << i)]


class SignalInputError(ValueError):
    """Samples the chain cannot take (lengths differ, empty, not finite, bad rate)."""


def resample(x: np.ndarray, rate_hz: float, to_hz: float = FIRMWARE_RATE_HZ) -> np.ndarray:
    """Linear interpolation of ``x`` (sampled at ``rate_hz``) onto a ``to_hz`` grid."""
    if rate_hz == to_hz:
        return np.asarray(x, dtype=float)
    n = len(x)
    t_in = np.arange(n) / rate_hz
    n_out = int(np.floor((n - 1) / rate_hz * to_hz)) + 1
    t_out = np.arange(n_out) / to_hz
    return np.interp(t_out, t_in, np.asarray(x, dtype=float))


def prepare(red: Sequence[float] | None, ir: Sequence[float], rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """(red, ir) as int32 at 100 Hz; red = −1 everywhere for IR only. Raises SignalInputError."""
    if not rate_hz or not np.isfinite(rate_hz) or rate_hz <= 0:
        raise SignalInputError(f"sample rate must be a positive number of Hz, got {rate_hz!r}")
    ir_a = np.asarray(ir, dtype=float)
    if ir_a.ndim != 1 or len(ir_a) < 2:
        raise SignalInputError("the IR channel needs at least 2 samples")
    if red is not None:
        red_a = np.asarray(red, dtype=float)
        if red_a.shape != ir_a.shape:
            raise SignalInputError(f"red ({len(red_a)}) and IR ({len(ir_a)}) differ in length")
    else:
        red_a = None
    for name, a in (("IR", ir_a), ("red", red_a)):
        if a is not None and not np.all(np.isfinite(a)):
            raise SignalInputError(f"the {name} channel holds non-numeric or infinite values")
    ir_r = np.clip(np.round(resample(ir_a, rate_hz)), 0, (1 << 24) - 1).astype(np.int32)
    if red_a is None:
        red_r = np.full(len(ir_r), -1, dtype=np.int32)
    else:
        red_r = np.clip(np.round(resample(red_a, rate_hz)), 0, (1 << 24) - 1).astype(np.int32)
    return red_r, ir_r


def prepare_motion(motion: Sequence[float], n: int, rate_hz: float) -> np.ndarray:
    """The accelerometer magnitude |a| (milli-g, ``n`` samples at ``rate_hz``) as int32 at 100 Hz,
    resampled as the PPG is. Raises SignalInputError."""
    a = np.asarray(motion, dtype=float)
    if a.shape != (n,):
        raise SignalInputError(f"motion ({a.size}) and IR ({n}) differ in length")
    if not np.all(np.isfinite(a)):
        raise SignalInputError("the motion channel holds non-numeric or infinite values")
    return np.clip(np.round(resample(a, rate_hz)), 0, 64000).astype(np.int32)


def _cal_source(cal) -> str:
    """MicroPython source building the Calibration: ``cal`` None, a config.json ``calibration``
    dict (floats), or a Calibration-like object with a, b, c (ints × 1e4)."""
    if cal is None:
        return "cal = None\n"
    if isinstance(cal, dict):
        return "from firmware.signal import calibration as _c\ncal = _c.from_config(" + json.dumps(cal) + ")\n"
    return (f"from firmware.signal.calibration import Calibration\n"
            f"cal = Calibration({int(cal.a)}, {int(cal.b)}, {int(cal.c)})\n")


# samples are (red, ir) pairs, or with a motion reference (red, ir, motion magnitude mg) triples:
# %(k)d values a sample; %(motion)s holds the MotionRef lines or nothing
_START = """
import gc
from array import array
from firmware.signal.pulseox import PulseOx
%(motion)spo = PulseOx(100, cal%(mr)s)
out = []
buf = array('i', bytes(%(k)d * 4 * 512))
f = open(%(path)r, 'rb')
push = po.push
"""
_START_MOTION = "from firmware.signal.motion import MotionRef\nmr = MotionRef()\nmpush = mr.push\n"

# %(reads)d reads of up to 512 samples; prints how many bytes were consumed
_STEP = """
k = 1
for _ in range(%(reads)d):
    k = f.readinto(buf)
    if not k:
        break
    for i in range(0, k // 4, %(k)d):
%(mpush)s        if push(buf[i], buf[i + 1]):
            out.append((po.t_ms, po.hr_x10, po.spo2_x10, po.pi_x100, po.q, po.withheld, po.age_ms, po.stale,
                        po.irregular))
print(f.tell())
"""
_STEP_MOTION = "        mpush(buf[i + 2])\n"

_END = """
f.close()
gc.collect()
import json
print('\\x1e' + json.dumps(out))
"""

_READS_PER_STEP = 24         # 12 288 sample pairs (~2 minutes at 100 Hz) between progress reports


def _to_dict(rep) -> dict:
    t_ms, hr, spo2, pi, q, w, age, stale, irr = rep
    return {"t": t_ms / 1000.0,
            "hr": hr / 10.0 if hr >= 0 else None,
            "spo2": spo2 / 10.0 if spo2 >= 0 else None,
            "pi": pi / 100.0 if pi >= 0 else None,
            "q": q / 100.0,
            "withheld": _WITHHELD[w] if w else None,
            "age_s": age / 1000.0 if age >= 0 else None,
            "stale": bool(stale),
            "irregular": bool(irr)}


def run_chain(red: Sequence[float] | None, ir: Sequence[float], rate_hz: float = FIRMWARE_RATE_HZ,
              cal=None, vm: MicroPythonVM | None = None,
              progress: Callable[[float], None] | None = None,
              motion: Sequence[float] | None = None) -> list[dict]:
    """Run ``PulseOx`` on the MicroPython VM over a recording; one dict per report (1 per s):
    ``{"t": s, "hr": bpm|None, "spo2": %|None, "pi": %|None, "q": 0–1, "withheld": reason|None,
    "age_s": s since the last valid HR|None, "stale": bool}``.

    ``red`` None = IR only (heart rate and PI only). Samples are ADC counts at ``rate_hz``,
    linearly resampled to 100 Hz when different. ``cal``: None (default curve), a config.json
    ``calibration`` dict, or a ``Calibration``. ``vm``: reuse an open VM (else a fresh one).
    ``progress``: called with the share of the recording done (0–1) every ~2 minutes of samples
    (the loop then runs in steps, one ``exec`` each, instead of one). ``motion``: the
    accelerometer's magnitude |a| in milli-g at ``rate_hz``, same length as ``ir``, fed to a
    ``firmware.signal.motion.MotionRef`` (None: the chain without a motion reference)."""
    red_r, ir_r = prepare(red, ir, rate_hz)
    k = 2 if motion is None else 3
    data = np.empty(k * len(ir_r), dtype="<i4")
    data[0::k] = red_r
    data[1::k] = ir_r
    if motion is not None:
        data[2::k] = prepare_motion(motion, len(ir), rate_hz)
    own = vm is None
    m = MicroPythonVM(heapsize=2 * 1024 * 1024) if own else vm
    try:
        m.write_file(_SAMPLES, data.tobytes())
        start = _cal_source(cal) + _START % {"path": _SAMPLES, "k": k, "motion": "" if k == 2 else _START_MOTION,
                                              "mr": "" if k == 2 else ", mr"}
        def step(reads: int) -> str:
            return _STEP % {"reads": reads, "k": k, "mpush": "" if k == 2 else _STEP_MOTION}

        if progress is None:
            out = m.exec(start + step(len(data) // (512 * k) + 2) + _END)
        else:
            m.exec(start)
            total = data.nbytes
            done = 0
            while done < total:
                done = int(m.exec(step(_READS_PER_STEP)).split()[-1])
                progress(min(1.0, done / total) if total else 1.0)
            out = m.exec(_END)
    finally:
        if own:
            m.close()
    return [_to_dict(r) for r in json.loads(out.rsplit(_MARK, 1)[1])]


_COST = """
import gc, time, micropython
from array import array
from firmware.signal.pulseox import PulseOx
%(setup)s
n = %(n)d
buf = array('i', bytes(8 * 1000))
with open(%(path)r, 'rb') as f:
    f.readinto(buf)
push = po.push
%(chain)sdef empty(n):
    t0 = time.ticks_us()
    for j in range(n // 1000):
        for i in range(0, 2000, 2):
            buf[i]; buf[i + 1]
    return time.ticks_diff(time.ticks_us(), t0)
def ref(n):
    acc = 0
    t0 = time.ticks_us()
    for i in range(n):
        acc = (acc + i * 3) & 0xFFFF
    return time.ticks_diff(time.ticks_us(), t0)
chain(10000)                      # warm up: finger settled, beats, reports
a0 = a1 = 0                       # the globals exist before the count (a dict growing is not the chain's)
gc.collect()
a0 = gc.mem_alloc()
chain(n)
a1 = gc.mem_alloc()
gc.collect()
locked_ok = True
micropython.heap_lock()
try:
    chain(2000)
except MemoryError:
    locked_ok = False
finally:
    micropython.heap_unlock()
tr = [ref(n)]
tcs = []
tes = []
for _ in range(3):                # interleaved, median of 3: one slice of a loaded machine is noise
    tcs.append(chain(n))
    tes.append(empty(n))
    tr.append(ref(n))
for _ in range(2):
    tr.append(ref(n))
tc = sorted(tcs)[1]
te = sorted(tes)[1]
tr2 = tr[-1]
import json
print('\\x1e' + json.dumps([a1 - a0, tr, tr2, tc, te, locked_ok, po.hr_x10, po.withheld]))
"""


_COST_SETUP = "po = PulseOx()"
_COST_CHAIN = """def chain(n):
    t0 = time.ticks_us()
    for j in range(n // 1000):
        for i in range(0, 2000, 2):
            push(buf[i], buf[i + 1])
    return time.ticks_diff(time.ticks_us(), t0)
"""
# with the motion reference, its worst case: an accelerometer (z only) that follows the pulse, so
# that the motion is above the gate and every report runs the three DFTs
_COST_SETUP_M = """from firmware.signal.motion import MotionRef
mr = MotionRef()
po = PulseOx(motion=mr)
mpush = mr.push_xyz"""
_COST_CHAIN_M = """def chain(n):
    t0 = time.ticks_us()
    for j in range(n // 1000):
        for i in range(0, 2000, 2):
            mpush(0, 0, 1000 + ((110000 - buf[i + 1]) >> 2))
            push(buf[i], buf[i + 1])
    return time.ticks_diff(time.ticks_us(), t0)
"""


def cost_samples() -> np.ndarray:
    """1000 samples (10 s, 12 beats at 72 bpm: loops seamlessly) of a plausible red/IR pulse,
    interleaved int32, with a little noise."""
    rng = np.random.default_rng(1)
    i = np.arange(1000)
    ph = (i % 83.3333) / 83.3333
    pulse = np.where(ph < 0.2, np.sin(ph / 0.2 * np.pi / 2), 1.0 - (ph - 0.2) / 0.8)
    red = 80000 - 600 * pulse + rng.normal(0, 2, 1000)
    ir = 110000 - 1800 * pulse + rng.normal(0, 2, 1000)
    data = np.empty(2000, dtype="<i4")
    data[0::2] = np.round(red)
    data[1::2] = np.round(ir)
    return data


def measure_cost(n_samples: int = 20000, motion: bool = False) -> dict:
    """Allocation and time per ``push`` on the MicroPython VM, steady state (a synthetic 72 bpm
    pulse, after 100 s of warm-up).

    ``alloc_bytes_per_sample``: gc.mem_alloc() delta over ``n_samples`` pushes ÷ n;
    ``heap_locked_ok``: 2000 more pushes ran under micropython.heap_lock() without MemoryError;
    ``cost_ref_units_per_sample``: VM time per push (the driving loop's own time removed; median of
    three timings, interleaved with the reference's) ÷ VM time of one iteration of
    ``acc = (acc + i * 3) & 0xFFFF`` (median of six, same run, its loop included).
    ``motion``: with a ``MotionRef`` fed one accelerometer sample per push (its worst case: a
    motion that follows the pulse, so every report runs its DFTs); the accelerometer sample's own
    arithmetic in the loop is counted in the chain's time."""
    n = max(1000, (int(n_samples) // 1000) * 1000)
    code = (_COST.replace("%(setup)s", _COST_SETUP_M if motion else _COST_SETUP)
            .replace("%(chain)s", _COST_CHAIN_M if motion else _COST_CHAIN)
            .replace("%(n)d", str(n)).replace("%(path)r", repr("/tmp/cost.i32")))
    with MicroPythonVM() as vm:
        vm.write_file("/tmp/cost.i32", cost_samples().tobytes())
        w0 = time.monotonic()
        out = vm.exec(code)
        wall = time.monotonic() - w0
    d_alloc, tr, tr2, tc, te, locked_ok, hr, withheld = json.loads(out.rsplit(_MARK, 1)[1])
    ref_us = sorted(tr)[len(tr) // 2] / n     # median of 6: one run can be off several-fold on a loaded machine
    push_us = max(0, tc - te) / n
    return {"alloc_bytes_per_sample": d_alloc / n,
            "heap_locked_ok": bool(locked_ok),
            "cost_ref_units_per_sample": round(push_us / ref_us, 1),
            "push_us_vm": round(push_us, 2), "ref_us_vm": round(ref_us, 3),
            "n_samples": n, "wall_s": round(wall, 2),
            "steady_hr": hr / 10.0 if hr >= 0 else None,
            "steady_withheld": _WITHHELD[withheld] if withheld else None}


_TEMP = """
from firmware.signal.temperature import TempProcessor
tp = TempProcessor(%(args)s)
for v in %(reads)s:
    tp.add(v)
r = tp.result()
import json
print('\\x1e' + json.dumps([r[0], r[1], tp.object_cc, tp.n_used, tp.n_rejected]))
"""


def run_temperature(reads_cc: Sequence[int], cal_gain_ppm: int = 1_000_000, cal_offset_cc: int = 0,
                    site: str = "forehead", vm: MicroPythonVM | None = None) -> dict:
    """The firmware temperature pipeline on the VM over repeated MLX90614 object readings
    (hundredths of °C). ``cal_gain_ppm``: calibration gain in ppm (1 000 000 = unity);
    ``cal_offset_cc``: offset in 0.01 °C; ``site``: "forehead" (adds the documented forehead→core
    offset) or "none".

    Returns ``{"object_c": calibrated object °C (no site offset) | None, "temp_c": body °C (with
    the site offset) | None, "flags": [names], "n_used": n, "n_rejected": n}``."""
    reads = [int(v) for v in reads_cc]
    args = f"cal_gain_ppm={int(cal_gain_ppm)}, cal_offset_cc={int(cal_offset_cc)}, site={site!r}"
    code = _TEMP.replace("%(args)s", args).replace("%(reads)s", repr(reads))
    own = vm is None
    m = MicroPythonVM() if own else vm
    try:
        out = m.exec(code)
    finally:
        if own:
            m.close()
    temp, flags, obj, used, rej = json.loads(out.rsplit(_MARK, 1)[1])
    return {"object_c": obj / 100.0 if obj is not None else None,
            "temp_c": temp / 100.0 if temp is not None else None,
            "flags": _temp_flag_names(flags), "flag_bits": flags, "n_used": used, "n_rejected": rej}
