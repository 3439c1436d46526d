"""Temperature accuracy after calibration: simulated MLX90614 units (per-unit offset and gain
errors, ``sim/hardware/mlx90614.py``) read through the firmware driver on the virtual I2C bus,
two-point calibration against a blackbody, then the firmware temperature pipeline
(``host.signalrun.run_temperature``) on repeated reads; error against the blackbody setpoint.
"""
from __future__ import annotations

import numpy as np

UNITS = 40
CAL_POINTS_C = (30.0, 42.0)           # blackbody setpoints for the two-point calibration
TEST_POINTS_C = (32.0, 34.0, 35.0, 36.0, 36.5, 37.0, 37.5, 38.0, 39.0, 40.0, 41.0, 42.0)
READS = 8                              # repeated reads the firmware averages per measurement
NOISE_MC = 30                          # object read noise, milli-°C rms (scene + sensor)
OUTLIER_P = 0.05                       # share of reads disturbed (a hand passing, a draught)


class _Blackbody:
    """The MLX90614 model's scenario: a blackbody at ``mc`` milli-°C with read noise and
    occasional outliers; the room (die) at 24 °C."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.mc = 37000

    def object_mc(self, t_us):
        v = self.mc + int(self.rng.normal(0.0, NOISE_MC))
        if self.rng.random() < OUTLIER_P:
            v += int(self.rng.choice([-1, 1]) * self.rng.uniform(500, 2000))
        return v

    def ambient_mc(self, t_us):
        return 24000

    def optical(self, t_us, out):
        out[0] = out[1] = out[2] = 0

    def finger(self, t_us):
        return False


def _unit(seed: int):
    from firmware.drivers.mlx90614 import MLX90614  # noqa: PLC0415
    from sim.hardware.clock import VirtualClock  # noqa: PLC0415
    from sim.hardware.i2c import VirtualI2C  # noqa: PLC0415
    from sim.hardware.mlx90614 import MLX90614Model  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    bb = _Blackbody(rng)
    clock = VirtualClock()
    bus = VirtualI2C(clock, 100000)
    off = int(rng.normal(0, 250))            # ±0.5 °C class parts: offset σ 0.25 °C
    gain = int(rng.normal(0, 4000))          # gain σ 0.4 %
    bus.attach(0x5A, MLX90614Model(clock, bb, 0x5A, off, gain, unit=seed))
    drv = MLX90614(bus, clock=clock)

    def reads(c: float, n: int) -> list[int]:
        bb.mc = int(round(c * 1000))
        out = []
        for _ in range(n):
            clock.advance_us(100_000)
            out.append(int(drv.object_cc()))
        return out

    return reads, off, gain


def measure() -> dict:
    try:
        from host import signalrun  # noqa: PLC0415
        from host.mpvm import MicroPythonVM  # noqa: PLC0415
    except ImportError:
        return {"temp_abs_err_c_p95": None}
    errs = []
    raw_errs = []
    rejected = 0
    with MicroPythonVM() as vm:           # one VM for every measurement (a start costs ~0.2 s)
        for u in range(UNITS):
            reads, _, _ = _unit(1000 + u)
            # two-point calibration: median of 16 reads at each blackbody setpoint (rejects outliers)
            m = [float(np.median(reads(c, 16))) / 100.0 for c in CAL_POINTS_C]
            gain = (CAL_POINTS_C[1] - CAL_POINTS_C[0]) / (m[1] - m[0])
            offset = CAL_POINTS_C[0] - gain * m[0]
            for c in TEST_POINTS_C:
                rc = reads(c, READS)
                raw_errs.append(abs(float(np.mean(rc)) / 100.0 - c))
                # gain in ppm (1 000 000 = unity), offset in 0.01 °C; site "none": the blackbody
                # is the surface itself, no forehead-to-core offset
                res = signalrun.run_temperature(rc, cal_gain_ppm=int(round(gain * 1_000_000)),
                                                cal_offset_cc=int(round(offset * 100)), site="none", vm=vm)
                if res["object_c"] is None:
                    raise RuntimeError(f"run_temperature returned no object temperature: {res}")
                rejected += res["n_rejected"]
                errs.append(abs(res["object_c"] - c))
    e = np.asarray(errs)
    return {"temp_abs_err_c_p95": round(float(np.percentile(e, 95)), 3),
            "temp_abs_err_c_max": round(float(e.max()), 3),
            "temp_abs_err_c_p95_uncalibrated_mean": round(float(np.percentile(raw_errs, 95)), 3),
            "temp_units": UNITS, "temp_measurements": len(errs),
            "temp_reads_rejected_pct": round(100.0 * rejected / (len(errs) * READS), 2)}
