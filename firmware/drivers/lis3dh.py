"""LIS3DH 3-axis accelerometer over I2C (address 0x18 with SA0 to GND, 0x19 with SA0 to VDD): the
optional motion reference of the signal chain.

Register map and facts: ST LIS3DH datasheet (DocID17530 rev 2) and application note AN3308.
What the driver guarantees:

- **Identity first.** ``check()`` reads WHO_AM_I (0x0F) and raises ``LIS3DHError("wrong-part")``
  unless it is 0x33; no ACK is ``"absent"``, another bus error ``"bus"``.
- **Configuration verified.** ``start()`` writes CTRL_REG1/4/5 and FIFO_CTRL_REG, reads them back
  and raises ``"verify"`` when a register does not hold what was written (a glitch on the shared
  bus, or another part at the address).
- **Whole FIFO in one burst.** The FIFO (32 samples of X, Y, Z) runs in stream mode at 100 Hz, as
  the MAX30102's, so both fill in 320 ms and are drained together. ``read_fifo()`` reads
  FIFO_SRC_REG (samples waiting: FSS, or 32 when OVRN_FIFO says full), then all of them in one read
  of 6 x n bytes from OUT_X_L with auto-increment (sub-address bit 7): with the FIFO on, the
  address rolls over from OUT_Z_H back to OUT_X_L (AN3308, 9.4).
- **Corrupt data raises.** High-resolution mode gives 12-bit samples left-justified in 16 bits,
  so the 4 low bits of every word are 0: a word with any of them set (a bus glitch, a floating
  bus reading 0xFF, the part in another mode) raises ``"corrupt"``, as does a FIFO_SRC_REG that
  says empty and non-empty at once. Nothing half-read is returned.
- **No allocation per read.** Samples land in ``self.x``, ``self.y``, ``self.z``
  (``array('h', 32)``, milli-g), through a buffer and memoryviews made once.

Default setting: 100 Hz, high-resolution (12 bit), +-4 g full scale, 2 mg per digit. Why: 100 Hz
is the signal chain's rate and keeps the FIFO in step with the MAX30102's; +-4 g holds a swinging
or running arm (wrist peaks of 2-3 g) with 2 mg resolution, far below the 100 mg the chain's
motion rule starts at; the part draws ~20 uA in this mode.
"""
from micropython import const
import array

from firmware.errors import PartError

ADDR = const(0x18)              # SA0 to GND (the reference board); 0x19 with SA0 to VDD
ADDR_ALT = const(0x19)
WHO_AM_I_VALUE = const(0x33)
FIFO_DEPTH = const(32)

_WHO_AM_I = const(0x0F)
_CTRL_REG1 = const(0x20)
_CTRL_REG4 = const(0x23)
_CTRL_REG5 = const(0x24)
_STATUS_REG = const(0x27)
_OUT_X_L = const(0x28)
_FIFO_CTRL_REG = const(0x2E)
_FIFO_SRC_REG = const(0x2F)
_AUTO_INC = const(0x80)         # sub-address bit 7: auto-increment

_XYZ_EN = const(0x07)
_HR = const(0x08)               # CTRL_REG4 high-resolution
_BDU = const(0x80)              # CTRL_REG4 block data update
_FIFO_EN = const(0x40)          # CTRL_REG5
_FM_BYPASS = const(0x00)
_FM_STREAM = const(0x80)
_OVRN = const(0x40)             # FIFO_SRC_REG
_EMPTY = const(0x20)
_FSS = const(0x1F)
_LOW_BITS = const(0x0F)         # 12-bit data left-justified: these bits of the low byte are 0

_ODR = {1: 1, 10: 2, 25: 3, 50: 4, 100: 5, 200: 6, 400: 7}
_FS = {2: 0, 4: 1, 8: 2, 16: 3}
_MG_PER_DIGIT = {2: 1, 4: 2, 8: 4, 16: 12}   # high-resolution mode (datasheet table 4)


class LIS3DHError(PartError):
    """The accelerometer failed. ``fault``: ``"absent"`` (no ACK), ``"wrong-part"`` (WHO_AM_I is
    not 0x33), ``"bus"`` (another I2C error), ``"verify"`` (a configuration register reads back
    differently), ``"corrupt"`` (sample words or FIFO status that cannot be); ``errno`` the bus
    error number when there is one."""

    source = "lis3dh"


class LIS3DH:
    """``LIS3DH(i2c, addr=0x18)``: ``i2c`` has the ``machine.I2C`` methods. Nothing is sent to the
    part until a method is called; ``start()`` begins sampling, ``read_fifo()`` drains it,
    ``stop()`` powers it down (~0.5 uA)."""

    def __init__(self, i2c, addr=ADDR):
        self.i2c = i2c
        self.addr = addr
        self.x = array.array("h", [0] * FIFO_DEPTH)   # milli-g
        self.y = array.array("h", [0] * FIFO_DEPTH)
        self.z = array.array("h", [0] * FIFO_DEPTH)
        self.rate_hz = 0
        self.range_g = 0
        self.overruns = 0        # reads that found the FIFO full (samples may have been lost)
        self._shift = 4
        self._mg = 2
        self._buf = bytearray(6 * FIFO_DEPTH)
        mv = memoryview(self._buf)
        # one view per sample count: slicing a memoryview allocates, so it is done here
        self._views = tuple(mv[: 6 * i] for i in range(FIFO_DEPTH + 1))
        self._one = bytearray(1)

    # --- bus ---
    def _read(self, reg, buf):
        try:
            self.i2c.readfrom_mem_into(self.addr, reg, buf)
        except OSError as e:
            raise LIS3DHError.from_bus(e, "accelerometer")

    def _reg(self, reg):
        self._read(reg, self._one)
        return self._one[0]

    def _write(self, reg, value):
        w = self._one
        w[0] = value
        try:
            self.i2c.writeto_mem(self.addr, reg, w)
        except OSError as e:
            raise LIS3DHError.from_bus(e, "accelerometer")

    def _set(self, reg, value):
        self._write(reg, value)
        got = self._reg(reg)
        if got != value:
            raise LIS3DHError("verify", "lis3dh: register 0x%02x reads 0x%02x after writing 0x%02x" % (reg, got, value))

    # --- identity and configuration ---
    def check(self):
        """Raise ``LIS3DHError`` unless a LIS3DH answers; return WHO_AM_I (0x33)."""
        w = self._reg(_WHO_AM_I)
        if w != WHO_AM_I_VALUE:
            raise LIS3DHError("wrong-part", "lis3dh: WHO_AM_I is 0x%02x, expected 0x33" % w)
        return w

    def start(self, rate_hz=100, range_g=4):
        """Sample X, Y, Z at ``rate_hz`` (1, 10, 25, 50, 100,
        200, 400) in high-resolution mode at +-``range_g`` g (2, 4, 8, 16) into the FIFO (stream
        mode: the newest 32 samples are kept). Checks the part first; every register written is
        read back. Clears the FIFO."""
        if rate_hz not in _ODR:
            raise ValueError("lis3dh: rate_hz %r is not one of 1, 10, 25, 50, 100, 200, 400" % (rate_hz,))
        if range_g not in _FS:
            raise ValueError("lis3dh: range_g %r is not one of 2, 4, 8, 16" % (range_g,))
        self.check()
        self._write(_CTRL_REG1, 0)                       # power down while configuring
        self._set(_CTRL_REG4, _BDU | (_FS[range_g] << 4) | _HR)
        self._set(_FIFO_CTRL_REG, _FM_BYPASS)            # bypass empties the FIFO
        self._set(_CTRL_REG5, _FIFO_EN)
        self._set(_FIFO_CTRL_REG, _FM_STREAM)
        self._set(_CTRL_REG1, (_ODR[rate_hz] << 4) | _XYZ_EN)
        self.rate_hz = rate_hz
        self.range_g = range_g
        self._mg = _MG_PER_DIGIT[range_g]
        self.overruns = 0

    def stop(self):
        """Power down (CTRL_REG1 ODR = 0); the configuration is kept."""
        self._write(_CTRL_REG1, 0)
        self.rate_hz = 0

    # --- data ---
    def read_fifo(self):
        """Drain every sample waiting in the FIFO into ``self.x``/``self.y``/``self.z`` (milli-g,
        int); return how many (0..32). Raises ``LIS3DHError("corrupt")`` when a word's low bits
        are set or FIFO_SRC_REG contradicts itself (nothing is returned from such a read)."""
        src = self._reg(_FIFO_SRC_REG)
        n = src & _FSS
        if src & _EMPTY:
            if n or src & _OVRN:
                raise LIS3DHError("corrupt", "lis3dh: FIFO_SRC_REG 0x%02x says empty and not empty" % src)
            return 0
        if src & _OVRN:
            n = FIFO_DEPTH
            self.overruns += 1
        if not n:
            return 0
        b = self._buf
        self._read(_OUT_X_L | _AUTO_INC, self._views[n])
        mg = self._mg
        xs = self.x
        ys = self.y
        zs = self.z
        j = 0
        for i in range(n):
            lx = b[j]
            ly = b[j + 2]
            lz = b[j + 4]
            if (lx | ly | lz) & _LOW_BITS:
                raise LIS3DHError("corrupt", "lis3dh: sample %d of %d has bits below the 12-bit data set" % (i, n))
            v = lx | (b[j + 1] << 8)
            xs[i] = ((v - 65536 if v & 0x8000 else v) >> 4) * mg
            v = ly | (b[j + 3] << 8)
            ys[i] = ((v - 65536 if v & 0x8000 else v) >> 4) * mg
            v = lz | (b[j + 5] << 8)
            zs[i] = ((v - 65536 if v & 0x8000 else v) >> 4) * mg
            j += 6
        return n

    def status(self):
        """STATUS_REG: bit 3 ZYXDA (new X, Y, Z), bit 7 ZYXOR (overrun)."""
        return self._reg(_STATUS_REG)


def probe(i2c):
    """A ``LIS3DH`` on ``i2c`` at 0x18 or 0x19 whose WHO_AM_I is right, else None (the part is
    optional: a board without it measures as before)."""
    for a in (ADDR, ADDR_ALT):
        d = LIS3DH(i2c, a)
        try:
            d.check()
            return d
        except LIS3DHError:
            pass
    return None
