"""Register-level model of the MLX90614 IR thermometer on the virtual I2C bus (SMBus, 0x5A).

What the model honours, from the MLX90614 datasheet (SMBus Read/Write Word only):

- **Read Word**: a 1-byte write of the command with no stop (repeated start follows), then a read
  of LSB, MSB, PEC. Commands 0x00|addr read RAM, 0x20|addr EEPROM, 0xF0 the flags. The PEC
  (CRC-8, polynomial 0x07) covers SA<<1, cmd, SA<<1|1, LSB, MSB. Bytes read past the PEC are 0xFF.
- **Write Word**: cmd, LSB, MSB, PEC in one write; the PEC over SA<<1, cmd, LSB, MSB is checked and
  a write with a bad PEC is ignored (``pec_rejects``). RAM writes are ignored. **Sleep**: 0xFF + PEC;
  the part then ignores the bus (NACK, ``OSError(ENODEV)``) until ``wake()``.
- **RAM**: 0x06 Ta, 0x07 Tobj1, 0x08 Tobj2 in 0.02 K (quantised, rounded), 0x04/0x05 raw IR
  (sign-magnitude, a plausible figure, not a calibrated one). Ta and the object come from the
  scenario (``ambient_mc(t_us)``, ``object_mc(t_us)``; Tobj2 from ``object2_mc`` when the scenario
  has one), at the virtual clock's time since the model was made.
- **Emissivity** (approximation): the part converts IR power P = eps_target*(To^4 - Ta^4) back with
  its setting eps_set. Linearised around Ta, the reading is Ta + (To - Ta) * eps_target / eps_set,
  so a wrong setting biases it (eps 0.98 target, 1.0 setting: 36.8 degC reads ~0.26 K low). Against
  the T^4 law this is within 0.07 K for eps ratios 0.98..1 and within 0.16 K for 0.95..1 (To 30..42,
  Ta 15..35 degC): the direction and size of the bias, not a radiometric model. ``target_emissivity`` (0..65535, default 65535 = the scenario's object temperature is
  what an ideal black body would read) models skin (~0.98 = 64224). As on the real part, the
  EEPROM setting is latched at power-on/wake: a new emissivity shows after ``wake()`` or
  ``power_cycle()``.
- **Unit errors** on the object temperature (so that calibration matters): reading = T + offset_mc +
  T * gain_ppm / 10^6 (T in milli-degC, before quantisation).
- **EEPROM** 0x20..0x3F with factory defaults (To_max 0x9993, To_min 0x62E3, PWMCTRL 0x0201,
  Ta range 0xF71C, emissivity 0xFFFF, Config1 0x9FB4, SMBus address 0xBE5A, four ID words). Writing
  0x0000 erases a cell; programming can only set bits, so a non-zero write over a non-erased cell
  stores old OR new (``unerased_writes`` counts them: the driver's read-back catches it). Each
  write/erase keeps EEBUSY (flags bit 7) set for 5 ms; a write during busy is acknowledged but
  ignored (``busy_ignored``). ``ee_writes`` counts programming cycles (erases included),
  ``ee_erases`` the erases.
- **Flags** (0xF0): bit 7 EEBUSY, bit 5 EE_DEAD (0), bit 4 INIT (active low: 0 while starting).
- **Start-up**: temperature words carry the error flag (0x8000) until 250 ms after power-on/wake.
  ``powered_ms`` is how long the part has already been powered when the model is made: by default
  250 ms, because the ESP32 takes longer than that to boot MicroPython; 0 models a fresh power-on.

Faults (``inject(name, count=None)``, ``clear(name=None)``; ``count`` limits a fault to that many
occurrences): ``"pec"`` corrupts the PEC of reads, ``"nack"`` raises ``OSError(ENODEV)`` on every
transfer, ``"error-flag"`` sets bit 15 of temperature words, ``"stuck"`` holds the bus: 50 ms
(the ESP32 I2C timeout) charged to the clock, then ``OSError(ETIMEDOUT)`` (116, the ESP32 port's
errno). The read path is allocation-free in steady state (ints only, no buffers made).
"""
from micropython import const

_ENODEV = const(19)
_ETIMEDOUT = const(116)
_STUCK_US = const(50000)
_STARTUP_US = const(250000)
_EEBUSY_US = const(5000)
_K0_MC = const(273150)

_TA = const(0x06)
_TOBJ1 = const(0x07)
_TOBJ2 = const(0x08)
_EE = const(0x20)
_EMISSIVITY = const(0x04)   # EEPROM index
_FLAGS = const(0xF0)
_SLEEP = const(0xFF)

FAULTS = ("pec", "nack", "error-flag", "stuck")

_FACTORY = (0x9993, 0x62E3, 0x0201, 0xF71C, 0xFFFF, 0x9FB4)


def _crc(crc, b):
    crc ^= b
    for _ in range(8):
        crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class MLX90614Model:
    """One MLX90614 for ``VirtualI2C.attach(addr, model)``; see the module docstring."""

    def __init__(self, clock, scenario=None, addr=0x5A, offset_mc=0, gain_ppm=0, powered_ms=250,
                 target_emissivity=65535, unit=1):
        if scenario is None:
            from sim.hardware.scenario import ConstantScenario
            scenario = ConstantScenario()
        self.clock = clock
        self.scenario = scenario
        self.addr = addr
        self.offset_mc = offset_mc
        self.gain_ppm = gain_ppm
        self.target_emissivity = target_emissivity
        self.present = True
        self._obj2 = getattr(scenario, "object2_mc", None)
        self.eeprom = [0] * 32
        for i, v in enumerate(_FACTORY):
            self.eeprom[i] = v
        self.eeprom[0x0E] = 0xBE00 | (addr & 0x7F)
        u = unit & 0xFFFF
        self.eeprom[0x1C] = 0x1A2B ^ u
        self.eeprom[0x1D] = (u * 7919) & 0xFFFF
        self.eeprom[0x1E] = 0x4C5A
        self.eeprom[0x1F] = 0x9000 | (u >> 4 & 0x0FFF)
        # time: elapsed us since the model was made (the clock's ticks wrap)
        self._last = clock.ticks_us()
        self._t = 0
        self._on_t = -powered_ms * 1000    # power-on, on the same axis
        self._busy_until = -1
        self._e_active = self.eeprom[_EMISSIVITY]
        self.asleep = False
        self._cmd = -1
        # fault counters: 0 off, -1 until cleared, n > 0 that many more occurrences
        self._f_pec = 0
        self._f_nack = 0
        self._f_flag = 0
        self._f_stuck = 0
        # statistics for tests
        self.reads = 0
        self.ee_writes = 0
        self.ee_erases = 0
        self.ee_log = []          # (t_us, cell, value) of accepted programming cycles
        self.unerased_writes = 0
        self.busy_ignored = 0
        self.pec_rejects = 0
        self.ram_writes = 0
        self.malformed = 0
        self._forced = [-1] * 9   # per RAM cell: a word forced by a test, -1 = the scenario's

    # --- power ---
    def power_cycle(self):
        """Power off and on: start-up time again, EEPROM settings latched, awake."""
        self._on_t = self._now()
        self._e_active = self.eeprom[_EMISSIVITY]
        self.asleep = False
        self._cmd = -1

    def wake(self):
        """Wake from sleep (the board holding SDA low >= 33 ms): like a power-on."""
        self.power_cycle()

    def ready(self):
        return self._now() - self._on_t >= _STARTUP_US

    # --- faults ---
    def inject(self, name, count=None):
        n = -1 if count is None else count
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        if name == "pec":
            self._f_pec = n
        elif name == "nack":
            self._f_nack = n
        elif name == "error-flag":
            self._f_flag = n
        elif name == "stuck":
            self._f_stuck = n
        else:
            raise ValueError("unknown MLX90614 fault " + repr(name) + "; valid: " + ", ".join(FAULTS))

    def clear(self, name=None):
        if name is None or name == "pec":
            self._f_pec = 0
        if name is None or name == "nack":
            self._f_nack = 0
        if name is None or name == "error-flag":
            self._f_flag = 0
        if name is None or name == "stuck":
            self._f_stuck = 0
        if name is not None and name not in FAULTS:
            raise ValueError("unknown MLX90614 fault " + repr(name))

    def faults(self):
        """Names of the faults currently injected."""
        return [n for n, v in zip(FAULTS, (self._f_pec, self._f_nack, self._f_flag, self._f_stuck)) if v]

    # --- wire ---
    def _now(self):
        now = self.clock.ticks_us()
        self._t += self.clock.ticks_diff(now, self._last)
        self._last = now
        return self._t

    def _bus_faults(self):
        n = self._f_stuck
        if n:
            if n > 0:
                self._f_stuck = n - 1
            self.clock.advance_us(_STUCK_US)
            raise OSError(_ETIMEDOUT)
        n = self._f_nack
        if n:
            if n > 0:
                self._f_nack = n - 1
            raise OSError(_ENODEV)
        if self.asleep or not self.present:
            raise OSError(_ENODEV)

    def i2c_write(self, data, stop):
        self._bus_faults()
        n = len(data)
        if n == 1 and not stop:
            self._cmd = data[0]
            return
        self._cmd = -1
        sa_w = (self.addr << 1) & 0xFF
        if n == 2 and data[0] == _SLEEP:
            if _crc(_crc(0, sa_w), _SLEEP) == data[1]:
                self.asleep = True
            else:
                self.pec_rejects += 1
            return
        if n != 4:
            self.malformed += 1
            return
        cmd = data[0]
        pec = _crc(_crc(_crc(_crc(0, sa_w), cmd), data[1]), data[2])
        if pec != data[3]:
            self.pec_rejects += 1
            return
        word = data[1] | (data[2] << 8)
        if cmd & 0xE0 == _EE:
            self._ee_write(cmd & 0x1F, word)
        elif cmd < _EE:
            self.ram_writes += 1     # RAM is read-only: acknowledged, ignored
        else:
            self.malformed += 1

    def i2c_read(self, buf):
        self._bus_faults()
        cmd = self._cmd
        self._cmd = -1
        n = len(buf)
        if cmd < 0:              # a read without a command: the part sends nothing useful
            for i in range(n):
                buf[i] = 0xFF
            return
        self.reads += 1
        word = self._word(cmd)
        lsb = word & 0xFF
        msb = word >> 8
        sa_w = (self.addr << 1) & 0xFF
        pec = _crc(_crc(_crc(_crc(_crc(0, sa_w), cmd), sa_w | 1), lsb), msb)
        f = self._f_pec
        if f:
            if f > 0:
                self._f_pec = f - 1
            pec ^= 0x5A
        if n > 0:
            buf[0] = lsb
        if n > 1:
            buf[1] = msb
        if n > 2:
            buf[2] = pec
        for i in range(3, n):
            buf[i] = 0xFF

    # --- registers ---
    def _word(self, cmd):
        t = self._now()
        if cmd == _FLAGS:
            w = 0
            if t < self._busy_until:
                w |= 0x80
            if t - self._on_t >= _STARTUP_US:
                w |= 0x10
            return w
        if cmd & 0xE0 == _EE:
            return self.eeprom[cmd & 0x1F]
        if cmd >= _EE:
            return 0xFFFF         # unknown command
        if not 4 <= cmd <= 8:
            return 0              # RAM cells the model does not hold
        if self._forced[cmd] >= 0:
            return self._forced[cmd]
        if t - self._on_t < _STARTUP_US:
            return 0x8000 if cmd >= _TA else 0
        ta = self.scenario.ambient_mc(t)
        if cmd == _TA:
            w = self._raw(ta)
        else:
            obj2 = self._obj2
            to = obj2(t) if (cmd != _TOBJ1 and cmd != 4 and obj2 is not None) else self.scenario.object_mc(t)
            es = self._e_active >> 5
            if es < 1:
                es = 1
            d = ((to - ta) * (self.target_emissivity >> 5)) // es   # apparent To - Ta, mK
            if cmd < _TA:         # raw IR channel: sign-magnitude, ~1 count per 10 mK
                v = d // 10
                return (0x8000 | min(-v, 0x7FFF)) if v < 0 else min(v, 0x7FFF)
            app = ta + d
            app += self.offset_mc + ((app // 10) * self.gain_ppm) // 100000
            w = self._raw(app)
        f = self._f_flag
        if f:
            if f > 0:
                self._f_flag = f - 1
            w |= 0x8000
        return w

    @staticmethod
    def _raw(mc):
        """milli-degC -> 0.02 K word, rounded, clipped to 15 bits."""
        r = (mc + _K0_MC + 10) // 20
        return 0 if r < 0 else (0x7FFF if r > 0x7FFF else r)

    def _ee_write(self, idx, word):
        t = self._now()
        if t < self._busy_until:
            self.busy_ignored += 1
            return
        old = self.eeprom[idx]
        if word == 0:
            self.ee_erases += 1
            new = 0
        else:
            if old != 0:
                self.unerased_writes += 1
            new = old | word
        self.eeprom[idx] = new
        self.ee_writes += 1
        self.ee_log.append((t, idx | _EE, word))
        self._busy_until = t + _EEBUSY_US

    def set_word(self, cmd, word):
        """Test hook: force the next reads of RAM ``cmd`` (0x04..0x08) to return ``word``
        (e.g. 0xFFFF or 0x0000 with a valid PEC); ``None`` returns to the scenario."""
        if not 4 <= cmd <= 8:
            raise ValueError("RAM cell must be 0x04..0x08")
        self._forced[cmd] = -1 if word is None else word & 0xFFFF
