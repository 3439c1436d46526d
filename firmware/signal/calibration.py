"""SpO2 and temperature calibration as the device stores it, in scaled integers.

SpO2 % = a·R² + b·R + c, R = (AC_red/DC_red)/(AC_ir/DC_ir) the ratio of ratios.

Defaults (``SPO2_COEFFS``, scaled by ``SPO2_COEFFS_SCALE`` = 10 000, order a, b, c): Maxim's
application-note curve for the MAX30101/MAX30102 without an optical shield,
1.5958422·R² − 34.6596622·R + 112.6898759 (99.1 % at R = 0.4, 89.2 % at 0.7, 79.6 % at 1.0). Of
the curves in circulation (``../shared/design/sensors.md``) it is the one published by the part's
maker for this part and this optical path; it is monotonic over R 0.3–3 (the RD117 curve turns over
below R = 0.34). It is a starting point only: curves disagree by 5–7 points at R 0.7–1.0, so each
design is calibrated by the technician tool against an SpO2 simulator, and the fitted coefficients
live in ``config.json`` (``calibration.spo2`` = [c0, c1, c2], ascending powers, as
``firmware/config.py`` validates them) and come here through :func:`from_config`.

Integer formats (hot path has no floats): R is carried as ``r_q10`` = R × 1024; SpO2 as
``spo2_x10`` = % × 10. Temperature gain is ``gain_ppm`` (parts per million, 1 000 000 = unity) and
offset ``offset_cc`` (hundredths of °C).
"""
from micropython import const

SPO2_COEFFS = (15958, -346597, 1126899)   # a, b, c of a·R² + b·R + c, × SPO2_COEFFS_SCALE
SPO2_COEFFS_SCALE = 10000

R_MIN_Q10 = const(205)     # R 0.2: below, the curve is extrapolated beyond 100 %
R_MAX_Q10 = const(3072)    # R 3.0: above, no calibration reaches (and optics are suspect)
_SPO2_MAX_X10 = const(1000)


class CalibrationError(ValueError):
    """A calibration record that cannot be used; the message names the field."""


def _scaled(v, scale, name):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CalibrationError(name + ": must be a number")
    x = v * scale
    x = int(x + 0.5) if x >= 0 else -int(-x + 0.5)
    if not -(1 << 29) < x < (1 << 29):
        raise CalibrationError(name + ": out of range")
    return x


class Calibration:
    """Stored coefficients. ``a``, ``b``, ``c`` are the SpO2 curve × 10 000 (SpO2 % = a·R² + b·R + c);
    ``temp_gain_ppm`` (1 000 000 = unity) and ``temp_offset_cc`` (0.01 °C) the thermometer's."""

    def __init__(self, a=SPO2_COEFFS[0], b=SPO2_COEFFS[1], c=SPO2_COEFFS[2],
                 temp_gain_ppm=1000000, temp_offset_cc=0):
        for name, v in (("a", a), ("b", b), ("c", c), ("temp_gain_ppm", temp_gain_ppm),
                        ("temp_offset_cc", temp_offset_cc)):
            if isinstance(v, bool) or not isinstance(v, int) or not -(1 << 29) < v < (1 << 29):
                raise CalibrationError(name + ": must be an int of magnitude < 2**29")
        if not 500000 <= temp_gain_ppm <= 1500000:
            raise CalibrationError("temp_gain_ppm: must be within 0.5–1.5 × 10**6")
        self.a = a
        self.b = b
        self.c = c
        self.temp_gain_ppm = temp_gain_ppm
        self.temp_offset_cc = temp_offset_cc

    def spo2_x10(self, r_q10):
        """SpO2 % × 10 from R × 1024 (clamped to 0–1000); −1 when R is outside 0.2–3.0.

        Small ints only (no allocation): Horner's form with the multiplications split so no
        intermediate reaches 2**30."""
        if r_q10 < R_MIN_Q10 or r_q10 > R_MAX_Q10:
            return -1
        hi = r_q10 >> 5
        lo = r_q10 & 31
        t = self.b + ((self.a * hi + ((self.a * lo) >> 5)) >> 5)   # (a·R + b) × 1e4
        tr = (t * hi + ((t * lo) >> 5)) >> 5          # (a·R + b)·R × 1e4
        v = (self.c + tr + 500) // 1000                # × 10
        if v > _SPO2_MAX_X10:
            return _SPO2_MAX_X10
        if v < 0:
            return 0
        return v

    def to_config(self):
        """The ``calibration`` fields of config.json this object stands for (floats)."""
        return {"spo2": [self.c / SPO2_COEFFS_SCALE, self.b / SPO2_COEFFS_SCALE, self.a / SPO2_COEFFS_SCALE],
                "temp_gain": self.temp_gain_ppm / 1000000, "temp_offset_c": self.temp_offset_cc / 100}


def from_config(cal):
    """A :class:`Calibration` from config.json's ``calibration`` object (or None: the defaults).

    ``spo2`` = [c0, c1] or [c0, c1, c2] (ascending powers of R, floats or ints, % units),
    ``temp_gain`` (unitless, e.g. 1.0021), ``temp_offset_c`` (°C). Missing fields keep the
    defaults. Raises CalibrationError naming the field."""
    if cal is None:
        return Calibration()
    if not isinstance(cal, dict):
        raise CalibrationError("calibration: must be a dict or None")
    a, b, c = SPO2_COEFFS
    s = cal.get("spo2")
    if s is not None:
        if not isinstance(s, (list, tuple)) or not 2 <= len(s) <= 3:
            raise CalibrationError("spo2: must be 2 or 3 numbers (ascending powers of R)")
        c = _scaled(s[0], SPO2_COEFFS_SCALE, "spo2[0]")
        b = _scaled(s[1], SPO2_COEFFS_SCALE, "spo2[1]")
        a = _scaled(s[2], SPO2_COEFFS_SCALE, "spo2[2]") if len(s) == 3 else 0
    g = cal.get("temp_gain")
    gain = 1000000 if g is None else _scaled(g, 1000000, "temp_gain")
    o = cal.get("temp_offset_c")
    off = 0 if o is None else _scaled(o, 100, "temp_offset_c")
    return Calibration(a, b, c, gain, off)
