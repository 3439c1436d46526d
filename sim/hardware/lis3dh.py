"""Register-level model of the LIS3DH 3-axis accelerometer (I2C 0x18/0x19) on the virtual bus.

What the model honours (ST LIS3DH datasheet DocID17530 rev 2, application note AN3308):

- The registers 0x07..0x3F with their power-on values; WHO_AM_I (0x0F) 0x33 (``who_am_i=`` makes
  another part). The first byte of a write is the sub-address; bit 7 set makes reads and writes
  auto-increment it, else every byte goes to the same register. Read-only registers (STATUS_REG,
  OUT_*, FIFO_SRC_REG, WHO_AM_I) ignore writes.
- Sampling driven by the virtual clock, computed lazily on each bus access from elapsed time at
  CTRL_REG1's ODR (1..400 Hz; 0 = power-down, nothing sampled), the fraction carried over. Each
  sample is the scenario's acceleration (``accel(t_us, out)`` -> milli-g in ``out[0..2]``; a
  scenario without it is a device lying still: 0, 0, +1000 mg; ``model.motion`` can be set to any
  such callable later) plus deterministic noise of
  +-``noise_mg``, converted with CTRL_REG4's full scale (2/4/8/16 g) and resolution (12 bit with HR,
  10 bit normal, 8 bit with LPen) at the datasheet's sensitivity (HR: 1/2/4/12 mg per digit) to two's complement left-justified in 16 bits, saturated at the
  full scale. Unused low bits read 0, as on the part.
- Output registers OUT_X_L..OUT_Z_H (0x28..0x2D): the newest sample in bypass mode; with FIFO_EN
  (CTRL_REG5 bit 6) and a FIFO mode (FIFO_CTRL_REG bits 7:6) reads pop the FIFO: reading OUT_Z_H
  pops a sample, and an auto-incremented read wraps from 0x2D back to 0x28 (AN3308, 9.4), so a
  burst of 6 x n bytes reads n samples.
- FIFO 32 deep: stream mode (0b10) keeps the newest 32 (the oldest is overwritten), FIFO mode
  (0b01) stops when full; bypass (0b00) empties it. FIFO_SRC_REG: WTM (bit 7: samples > FTH),
  OVRN_FIFO (bit 6: 32 unread samples), EMPTY (bit 5), FSS (bits 4:0, unread samples, 31 at most).
  ``produced``, ``popped`` and ``lost`` count samples (ground truth for tests).
- STATUS_REG (0x27): ZYXDA (bit 3) when a sample newer than the last read of OUT_Z_H exists.

Faults (``inject(name, count=None)``): ``"nack"`` raises ``OSError(ENODEV)`` on every access,
``"corrupt"`` sets the low bits of the words read out (what a glitch or a floating bus gives),
``"stuck-config"`` ignores writes to CTRL_REG1 (a part whose configuration does not take).

Steady-state reads allocate nothing (preallocated FIFO bytearray, small ints).
"""
from micropython import const
import array

_ENODEV = const(19)
_WHO_AM_I = const(0x0F)
_CTRL_REG1 = const(0x20)
_CTRL_REG4 = const(0x23)
_CTRL_REG5 = const(0x24)
_STATUS_REG = const(0x27)
_OUT_X_L = const(0x28)
_OUT_Z_H = const(0x2D)
_FIFO_CTRL_REG = const(0x2E)
_FIFO_SRC_REG = const(0x2F)
_DEPTH = const(32)

FAULTS = ("nack", "corrupt", "stuck-config")
_ODR_HZ = (0, 1, 10, 25, 50, 100, 200, 400, 1600, 1344)
_SENS_HR = (1, 2, 4, 12)          # mg per digit, 12-bit high-resolution (datasheet table 4);
_SENS_X = {12: 1, 10: 4, 8: 16}   # x4 in normal (10-bit), x16 in low-power (8-bit) mode
_READ_ONLY = (0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x27, 0x28, 0x29, 0x2A, 0x2B, 0x2C,
              0x2D, 0x2F, 0x31, 0x35, 0x39)


class LIS3DHModel:
    """One LIS3DH for ``VirtualI2C.attach(addr, model)``; see the module docstring."""

    def __init__(self, clock, scenario=None, addr=0x18, who_am_i=0x33, noise_mg=4, seed=1):
        self.clock = clock
        self.scenario = scenario
        self.motion = getattr(scenario, "accel", None) if scenario is not None else None
        self.addr = addr
        self.noise_mg = noise_mg
        self.present = True
        self.regs = bytearray(0x40)
        self.regs[_WHO_AM_I] = who_am_i
        self.regs[_CTRL_REG1] = 0x07          # power-on: power-down, X/Y/Z enabled
        self.fifo = bytearray(6 * _DEPTH)
        self._head = 0                         # oldest sample's slot
        self._cnt = 0
        self.latest = bytearray(6)
        self._fresh = False
        self._ptr = 0
        self._inc = False
        self._xyz = array.array("i", [0, 0, 1000])
        self._rng = seed & 0x7FFF or 1
        self._last = clock.ticks_us()
        self._t = 0
        self._frac = 0                         # us x ODR carried over
        self._f_nack = 0
        self._f_corrupt = 0
        self._f_stuck = 0
        self.produced = 0
        self.popped = 0
        self.lost = 0

    # --- faults ---
    def inject(self, name, count=None):
        n = -1 if count is None else count
        if name == "nack":
            self._f_nack = n
        elif name == "corrupt":
            self._f_corrupt = n
        elif name == "stuck-config":
            self._f_stuck = n
        else:
            raise ValueError("unknown LIS3DH fault " + repr(name) + "; valid: " + ", ".join(FAULTS))

    def clear(self):
        self._f_nack = self._f_corrupt = self._f_stuck = 0

    # --- sampling ---
    def _odr(self):
        i = self.regs[_CTRL_REG1] >> 4
        return _ODR_HZ[i] if i < len(_ODR_HZ) else 0

    def _advance(self):
        now = self.clock.ticks_us()
        d = self.clock.ticks_diff(now, self._last)
        self._last = now
        odr = self._odr()
        if odr == 0 or d <= 0:
            self._t += d if d > 0 else 0
            return
        acc = self._frac + d * odr
        k = acc // 1000000
        self._frac = acc - k * 1000000
        t0 = self._t
        self._t += d
        step = 1000000 // odr
        for i in range(k):
            self._sample(t0 + (i + 1) * step)

    def _noise(self):
        # 15-bit LCG: products stay small ints (< 2**30) on MicroPython
        r = (self._rng * 1103 + 12345) & 0x7FFF
        self._rng = r
        n = self.noise_mg
        return ((r * (2 * n + 1)) >> 15) - n if n else 0

    def _sample(self, t_us):
        xyz = self._xyz
        if self.motion is not None:
            self.motion(t_us, xyz)
        else:
            xyz[0] = 0
            xyz[1] = 0
            xyz[2] = 1000
        r4 = self.regs[_CTRL_REG4]
        bits = 12 if r4 & 0x08 else (8 if self.regs[_CTRL_REG1] & 0x08 else 10)
        sens = _SENS_HR[(r4 >> 4) & 3] * _SENS_X[bits]
        full = 1 << (bits - 1)
        lat = self.latest
        for a in range(3):
            v = xyz[a] + self._noise()
            v = (v + (sens >> 1)) // sens if v >= 0 else -(((sens >> 1) - v) // sens)
            v = full - 1 if v > full - 1 else (-full if v < -full else v)
            w = (v << (16 - bits)) & 0xFFFF
            lat[2 * a] = w & 0xFF
            lat[2 * a + 1] = w >> 8
        self._fresh = True
        self.produced += 1
        mode = self.regs[_FIFO_CTRL_REG] >> 6
        if not (self.regs[_CTRL_REG5] & 0x40) or mode == 0:
            return
        if self._cnt == _DEPTH:
            if mode == 1:                      # FIFO mode: stops when full
                self.lost += 1
                return
            self._head = (self._head + 1) % _DEPTH   # stream: the oldest is overwritten
            self._cnt -= 1
            self.lost += 1
        j = 6 * ((self._head + self._cnt) % _DEPTH)
        f = self.fifo
        for i in range(6):
            f[j + i] = lat[i]
        self._cnt += 1

    # --- registers ---
    def _fifo_on(self):
        return bool(self.regs[_CTRL_REG5] & 0x40) and self.regs[_FIFO_CTRL_REG] >> 6 != 0

    def _read_reg(self, r):
        if r == _FIFO_SRC_REG:
            c = self._cnt
            fth = self.regs[_FIFO_CTRL_REG] & 0x1F
            return ((0x80 if c > fth else 0) | (0x40 if c == _DEPTH else 0) | (0x20 if c == 0 else 0)
                    | (c if c < _DEPTH else 31))
        if r == _STATUS_REG:
            return 0x0F if self._fresh else 0
        if _OUT_X_L <= r <= _OUT_Z_H:
            k = r - _OUT_X_L
            if self._fifo_on():
                if self._cnt == 0:
                    v = self.latest[k]
                else:
                    v = self.fifo[6 * self._head + k]
                    if r == _OUT_Z_H:
                        self._head = (self._head + 1) % _DEPTH
                        self._cnt -= 1
                        self.popped += 1
            else:
                v = self.latest[k]
                if r == _OUT_Z_H:
                    self._fresh = False
            f = self._f_corrupt
            if f and not k & 1:
                if f > 0:
                    self._f_corrupt = f - 1
                v |= 0x05
            return v
        return self.regs[r] if r < 0x40 else 0

    def _write_reg(self, r, v):
        if r >= 0x40 or r in _READ_ONLY or r < 0x07:
            return
        if r == _CTRL_REG1 and self._f_stuck:
            if self._f_stuck > 0:
                self._f_stuck -= 1
            return
        self.regs[r] = v
        if r == _FIFO_CTRL_REG and v >> 6 == 0:
            self._cnt = 0                      # bypass mode empties the FIFO
            self._head = 0

    def _bus(self):
        n = self._f_nack
        if n:
            if n > 0:
                self._f_nack = n - 1
            raise OSError(_ENODEV)
        if not self.present:
            raise OSError(_ENODEV)
        self._advance()

    def i2c_write(self, data, stop):
        self._bus()
        if not len(data):
            return
        sub = data[0]
        self._inc = bool(sub & 0x80)
        self._ptr = sub & 0x7F
        for i in range(1, len(data)):
            self._write_reg(self._ptr, data[i])
            if self._inc:
                self._ptr += 1

    def i2c_read(self, buf):
        self._bus()
        fifo = self._fifo_on()
        for i in range(len(buf)):
            r = self._ptr
            buf[i] = self._read_reg(r)
            if self._inc:
                r += 1
                if fifo and r > _OUT_Z_H and self._ptr <= _OUT_Z_H and self._ptr >= _OUT_X_L:
                    r = _OUT_X_L               # AN3308: the FIFO read wraps to OUT_X_L
                self._ptr = r
