"""MLX90614 infrared thermometer over SMBus (I2C at <= 100 kHz), address 0x5A.

Over any object with the ``machine.I2C`` methods (``readfrom_mem_into``, ``writeto_mem``,
``writeto``). What the driver guarantees:

- **Every word is checked.** A read is the SMBus Read Word: S, SA+W, cmd, *repeated start*, SA+R,
  LSB, MSB, PEC, P (``readfrom_mem_into(addr, cmd, buf3)`` is exactly that). The PEC (CRC-8,
  polynomial 0x07, init 0, MSB first) over SA<<1, cmd, SA<<1|1, LSB, MSB is verified on every read;
  writes carry the PEC over SA<<1, cmd, LSB, MSB.
- **It never returns an impossible temperature.** A word with the error flag (bit 15) raises;
  raw 0x0000 (-273.15 degC) and 0xFFFF (1037.55 degC), the classic failed-read values, raise; any
  value outside the part's range (Ta -40..125 degC, To -70..380 degC) raises.
- **Bounded retries, then a named fault.** A bus error (``OSError`` ENODEV/EIO/ETIMEDOUT), a PEC
  mismatch, the error flag or an out-of-range word is retried ``retries`` times (1 ms apart after a
  bus error), then ``MLX90614Error`` is raised; its ``fault`` says which of the last attempt's:
  ``"pec"``, ``"nack"`` (no ACK or other bus error), ``"error-flag"``, ``"stuck"`` (bus held,
  ETIMEDOUT), ``"range"``; EEPROM writes add ``"verify"`` (read-back differs) and ``"busy"``
  (EEBUSY never cleared).
- **No allocation per read.** Temperatures are ints in hundredths of a degree Celsius
  (T = raw * 2 - 27315, raw in 0.02 K), the word lands in a buffer made once, the CRC is a table
  lookup; the success path of a read, retries included, allocates nothing on MicroPython.

EEPROM: ``read_eeprom``/``write_eeprom`` take the cell as its command (0x20..0x3F) or its address
(0x00..0x1F). Writes follow the datasheet's cycle: erase (write 0x0000), wait 10 ms, write, wait
10 ms, read back and compare; nothing is written when the cell already holds the value. Only the
user cells are writable (To_max 0x20, To_min 0x21, PWMCTRL 0x22, Ta range 0x23, emissivity 0x24,
Config1 0x25 without ever changing its factory bit 3, SMBus address 0x2E); calibration and ID cells
are refused. A new emissivity or configuration takes effect after a power cycle or sleep/wake.
Not done here: Melexis' newer emissivity procedure for parts that also need cell 0x2F adjusted.

Sleep: ``sleep()`` sends command 0xFF with its PEC. Waking needs SDA held low >= 33 ms, which only
the board can do with the pins (then call ``wait_ready()``: the part needs ~250 ms before its first
valid reading).
"""
from micropython import const

from firmware.errors import PartError, code, is_timeout

# RAM (command 0x00 | address)
_RAW_IR1 = const(0x04)
_RAW_IR2 = const(0x05)
_TA = const(0x06)
_TOBJ1 = const(0x07)
_TOBJ2 = const(0x08)
# EEPROM (command 0x20 | address)
_EE = const(0x20)
_TO_MAX = const(0x20)
_TO_MIN = const(0x21)
_PWMCTRL = const(0x22)
_TA_RANGE = const(0x23)
_EMISSIVITY = const(0x24)
_CONFIG1 = const(0x25)
_SMBUS_ADDR = const(0x2E)
_ID0 = const(0x3C)
_CONFIG1_FACTORY_BIT = const(0x0008)   # bit 3: Melexis says never change it
# other commands
_FLAGS = const(0xF0)
_SLEEP = const(0xFF)

# flags word (command 0xF0)
FLAG_EEBUSY = const(0x80)
FLAG_EE_DEAD = const(0x20)
FLAG_INIT = const(0x10)      # active low: 0 while the power-on initialisation runs

ADDR = const(0x5A)
EMISSIVITY_MIN = const(6554)   # epsilon 0.1
EMISSIVITY_MAX = const(65535)  # epsilon 1.0

_ERROR_FLAG = const(0x8000)
# physical range in raw 0.02 K units: T(cc) = raw * 2 - 27315
_TA_LO = const(11658)    # -40.0 degC (operating range)
_TA_HI = const(19907)    # 125.0 degC
_TO_LO = const(10158)    # -70.0 degC (measurement range)
_TO_HI = const(32657)    # 380.0 degC
_NO_CHECK = const(-1)

_EE_WAIT_MS = const(10)       # datasheet minimum 5 ms; 10 ms is the careful choice
_EE_BUSY_POLLS = const(10)

# fault codes (ints on the hot path; names only when raising)
_F_NONE = const(0)
_F_PEC = const(1)
_F_NACK = const(2)
_F_FLAG = const(3)
_F_STUCK = const(4)
_F_RANGE = const(5)
_FAULT_NAMES = ("", "pec", "nack", "error-flag", "stuck", "range")
_FAULT_TEXT = ("", "PEC mismatch", "no ACK / bus error", "the sensor flags the word invalid (bit 15)",
               "I2C bus held (timeout)", "impossible value")

_WRITABLE = (_TO_MAX, _TO_MIN, _PWMCTRL, _TA_RANGE, _EMISSIVITY, _CONFIG1, _SMBUS_ADDR)


def _make_table():
    t = bytearray(256)
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        t[i] = c
    return bytes(t)


_CRC8 = _make_table()


def crc8(data, crc=0):
    """SMBus PEC: CRC-8, polynomial 0x07 (x^8+x^2+x+1), MSB first, of ``data`` (bytes-like)
    continued from ``crc``."""
    t = _CRC8
    for b in data:
        crc = t[crc ^ b]
    return crc


class MLX90614Error(PartError):
    """The thermometer could not give a trustworthy word. ``fault`` is one of ``"pec"``,
    ``"nack"``, ``"error-flag"``, ``"stuck"``, ``"range"`` (reads), ``"verify"``, ``"busy"``
    (EEPROM writes); the message names it first."""

    source = "mlx90614"

    def __init__(self, fault, message, errno=None):
        super().__init__(fault, "mlx90614:" + fault + " - " + message, errno)


class MLX90614:
    """One MLX90614 on ``i2c`` at ``addr``. ``clock`` is the board clock (``board.clock``; retry
    and EEPROM waits use its ``sleep_ms``), ``retries`` how many times a failed read is repeated."""

    def __init__(self, i2c, clock, addr=ADDR, retries=3):
        if not 0 <= retries <= 10:
            raise ValueError("retries must be 0..10")
        self._i2c = i2c
        self._addr = addr
        self._clock = clock
        self._retries = retries
        self._buf = bytearray(3)   # LSB, MSB, PEC
        self._wbuf = bytearray(3)
        self._sbuf = bytearray(2)
        self._sa_w = (addr << 1) & 0xFF
        self._sa_r = self._sa_w | 1
        # statistics, for the self-test and logs
        self.reads = 0
        self.failed_attempts = 0
        self.last_fault = ""

    # --- temperatures, hundredths of a degree Celsius ---
    def ambient_cc(self):
        """Sensor die (ambient) temperature Ta, int hundredths of degC."""
        return self._read(_TA, _TA_LO, _TA_HI) * 2 - 27315

    def object_cc(self, zone=1):
        """Object temperature Tobj1 (``zone=2``: Tobj2 of dual-zone parts), int hundredths of
        degC."""
        if zone == 1:
            cmd = _TOBJ1
        elif zone == 2:
            cmd = _TOBJ2
        else:
            raise ValueError("zone must be 1 or 2")
        return self._read(cmd, _TO_LO, _TO_HI) * 2 - 27315

    def raw_ir(self, channel=1):
        """Raw IR channel 1 or 2 (RAM 0x04/0x05) as a signed int (the word is sign-magnitude).
        PEC-checked; no range check."""
        w = self._read(_RAW_IR1 if channel == 1 else _RAW_IR2, _NO_CHECK, 0)
        return -(w & 0x7FFF) if w & _ERROR_FLAG else w

    # --- status ---
    def flags(self):
        """The flags word (command 0xF0): ``FLAG_EEBUSY``, ``FLAG_EE_DEAD``, ``FLAG_INIT`` (0 while
        initialising)."""
        return self._read(_FLAGS, _NO_CHECK, 0)

    def wait_ready(self, timeout_ms=400):
        """Wait (polling every 10 ms on the board clock) until a PEC-valid, in-range ambient
        reading arrives, as after power-on or wake (~250 ms). Returns the ms waited; raises the
        last ``MLX90614Error`` on timeout."""
        waited = 0
        while True:
            try:
                self.ambient_cc()
                return waited
            except MLX90614Error:
                if waited >= timeout_ms:
                    raise
            self._clock.sleep_ms(10)
            waited += 10

    def sleep(self):
        """Enter sleep mode (command 0xFF + PEC). Waking is the board's job (SDA low >= 33 ms)."""
        b = self._sbuf
        b[0] = _SLEEP
        b[1] = _CRC8[_CRC8[self._sa_w] ^ _SLEEP]
        self._bus(self._i2c.writeto, b)

    # --- EEPROM ---
    def emissivity(self):
        """Emissivity setting, int 0..65535 (65535 = 1.0; epsilon = value / 65535)."""
        return self.read_eeprom(_EMISSIVITY)

    def set_emissivity(self, value):
        """Set the emissivity: int 6554..65535 (epsilon 0.1..1.0), or a float epsilon 0.1..1.0.
        Written only when different; returns True when the EEPROM was written. Takes effect after
        a power cycle or sleep/wake."""
        if isinstance(value, float):
            if not 0.1 <= value <= 1.0:
                raise ValueError("emissivity must be 0.1..1.0")
            value = int(value * 65535 + 0.5)
        if not isinstance(value, int) or not EMISSIVITY_MIN <= value <= EMISSIVITY_MAX:
            raise ValueError("emissivity must be %d..%d (epsilon 0.1..1.0)" % (EMISSIVITY_MIN, EMISSIVITY_MAX))
        return self.write_eeprom(_EMISSIVITY, value)

    def unit_id(self):
        """The four factory ID words (EEPROM 0x3C..0x3F)."""
        return tuple(self.read_eeprom(_ID0 + i) for i in range(4))

    def read_eeprom(self, addr):
        """One EEPROM word; ``addr`` 0x00..0x1F or its command 0x20..0x3F."""
        return self._read(self._ee_cmd(addr), _NO_CHECK, 0)

    def write_eeprom(self, addr, value):
        """Write one user EEPROM cell with erase-wait-write-wait-verify; nothing is written when
        the cell already holds ``value``. Returns True when written. Refuses (ValueError) the
        factory cells and any change of Config1 bit 3; raises ``MLX90614Error`` (``"verify"``)
        when the read-back differs."""
        cmd = self._ee_cmd(addr)
        if cmd not in _WRITABLE:
            raise ValueError("EEPROM 0x%02X is a factory cell: refusing to write it" % cmd)
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueError("EEPROM value must be 0..0xFFFF")
        current = self._read(cmd, _NO_CHECK, 0)
        if cmd == _CONFIG1 and (current ^ value) & _CONFIG1_FACTORY_BIT:
            raise ValueError("Config1 bit 3 is factory calibration: never change it")
        if current == value:
            return False
        for word in (0, value):     # erase, then write
            self._wait_ee()
            self._write(cmd, word)
            self._clock.sleep_ms(_EE_WAIT_MS)
        self._wait_ee()
        got = self._read(cmd, _NO_CHECK, 0)
        if got != value:
            raise MLX90614Error("verify", "EEPROM 0x%02X reads 0x%04X after writing 0x%04X" % (cmd, got, value))
        return True

    # --- internals ---
    @staticmethod
    def _ee_cmd(addr):
        if not isinstance(addr, int) or not 0 <= addr <= 0x3F:
            raise ValueError("EEPROM address must be 0x00..0x1F or command 0x20..0x3F")
        return addr | _EE

    def _wait_ee(self):
        for _ in range(_EE_BUSY_POLLS):
            if not self._read(_FLAGS, _NO_CHECK, 0) & FLAG_EEBUSY:
                return
            self._clock.sleep_ms(_EE_WAIT_MS // 2)
        raise MLX90614Error("busy", "EEPROM busy (EEBUSY) for %d ms" % (_EE_BUSY_POLLS * _EE_WAIT_MS // 2))

    def _read(self, cmd, lo, hi):
        """The PEC-checked word at ``cmd``; with ``lo >= 0`` also the error flag, 0x0000/0xFFFF
        and the range ``lo..hi`` (raw). Allocation-free unless it raises."""
        buf = self._buf
        t = _CRC8
        fault = _F_NONE
        errno = 0
        raw = 0
        self.reads += 1
        for attempt in range(self._retries + 1):
            if attempt:
                self.failed_attempts += 1
                if fault == _F_NACK or fault == _F_STUCK:
                    self._clock.sleep_ms(1)
            try:
                self._i2c.readfrom_mem_into(self._addr, cmd, buf)
            except OSError as e:
                errno = code(e)
                fault = _F_STUCK if is_timeout(errno) else _F_NACK
                continue
            if t[t[t[t[t[self._sa_w] ^ cmd] ^ self._sa_r] ^ buf[0]] ^ buf[1]] != buf[2]:
                fault = _F_PEC
                continue
            raw = buf[0] | (buf[1] << 8)
            if lo >= 0:
                if raw == 0 or raw == 0xFFFF:
                    fault = _F_RANGE
                    continue
                if raw & _ERROR_FLAG:
                    fault = _F_FLAG
                    continue
                if raw < lo or raw > hi:
                    fault = _F_RANGE
                    continue
            return raw
        self.failed_attempts += 1
        self._fail(fault, cmd, errno, raw)

    def _fail(self, fault, cmd, errno, raw):
        name = _FAULT_NAMES[fault]
        self.last_fault = name
        msg = "%s at 0x%02X, cmd 0x%02X, after %d attempt(s)" % (_FAULT_TEXT[fault], self._addr, cmd,
                                                                 self._retries + 1)
        bus = fault == _F_NACK or fault == _F_STUCK
        if bus:
            msg += " (errno %d)" % errno
        elif fault == _F_RANGE or fault == _F_FLAG:
            msg += " (raw 0x%04X)" % raw
        raise MLX90614Error(name, msg, errno if bus else None)

    def _write(self, cmd, word):
        """SMBus Write Word with PEC, retried on bus errors."""
        b = self._wbuf
        b[0] = word & 0xFF
        b[1] = word >> 8
        t = _CRC8
        b[2] = t[t[t[t[self._sa_w] ^ cmd] ^ b[0]] ^ b[1]]
        self._bus(self._i2c.writeto_mem, b, cmd)

    def _bus(self, fn, buf, cmd=-1):
        errno = 0
        for attempt in range(self._retries + 1):
            if attempt:
                self._clock.sleep_ms(1)
            try:
                if cmd < 0:
                    fn(self._addr, buf)
                else:
                    fn(self._addr, cmd, buf)
                return
            except OSError as e:
                errno = code(e)
        self._fail(_F_STUCK if is_timeout(errno) else _F_NACK,
                   cmd if cmd >= 0 else _SLEEP, errno, 0)
