"""MAX30102 pulse oximeter over I2C (address 0x57): reset, identity, configuration, FIFO, die
temperature, swapped-LED detection.

Register map and facts: MAX30102 datasheet (19-7740 rev 1) and ``../shared/design/sensors.md``.

FIFO reading (``read_fifo``) drains every sample waiting in the part in one burst:

- one 3-byte read of FIFO_WR_PTR, OVF_COUNTER, FIFO_RD_PTR; samples = (WR − RD) mod 32;
- WR == RD means empty *or* full: OVF_COUNTER > 0 means full (it counts samples lost since the
  FIFO filled and returns to 0 on the next read); otherwise INT_STATUS_1 is read and A_FULL means
  full, provided at least 31 sample periods elapsed since the previous poll (a latched A_FULL
  from an earlier fill cannot pass for a full FIFO);
- one read of FIFO_DATA of n × 3 bytes per channel into a preallocated buffer (memoryviews of each
  possible length are made once), samples unpacked into ``self.red`` / ``self.ir``
  (``array('i', 32)``), 18-bit left-justified data shifted right by (3 − pulse-width code);
- OVF_COUNTER is added to ``self.lost`` (samples lost since ``configure``) and kept in
  ``self.last_lost``. It saturates at 15: past that the loss is estimated from the elapsed time
  and ``self.lost_exact`` becomes False.
- A full FIFO can drop a sample between the pointer poll and the first byte of the FIFO_DATA read;
  the pop then clears OVF_COUNTER before anyone saw it. With rollover (the default) the dropped
  sample still moved the read pointer, so the next poll finds RD ahead of where this read left it
  by more than OVF_COUNTER explains, and the difference is counted too: ``lost`` is exact. Without
  rollover no register keeps such a loss (the model counts it as ``silent_lost``).

Nothing is allocated per call (proven on MicroPython with ``micropython.heap_lock()``).

Red/IR: LED1 is red and LED2 is IR (datasheet); in SpO2 mode a sample is LED1 then LED2. Many
clone modules have them the other way round: ``detect_swapped_leds()`` drives LED1 alone and looks
at which channel answers, and sets ``self.swapped`` so that ``read_fifo`` exchanges the channels.

Default configuration (``configure()`` without arguments), for 100 samples/s into the signal
chain: SpO2 mode, 100 sps with no on-chip averaging, 411 µs pulses (18-bit), 4096 nA ADC range,
7 mA on each LED. Why: 411 µs is the longest integration, so the lowest noise per sample and the
full 18 bits, and it is allowed at 100 sps in every mode; 100 sps leaves 10 ms beat timing and
is ten times the highest cardiac harmonic used. 400 sps with 4× averaging would cut the noise by
half but costs four times the LED energy and sits at the edge of the pulse-width/rate table; the
signal chain filters anyway. A fingertip returns ~1.4 µA of IR at 7 mA: about a third of the
4096 nA range, leaving headroom for bright fingers and ambient residue without clipping
(2048 nA clips bright fingers; 8192 nA wastes a bit). Rollover on: if the reader ever falls behind
the newest data is kept and the loss is counted. The FIFO (32 samples) fills in 320 ms: call
``read_fifo`` at least every ~250 ms; A_FULL (INT pin) fires at 17 samples.

Allowed sample rate per pulse width (datasheet tables "SpO2/HR mode allowed settings"); a rate
beyond these is not honoured by the part, so ``configure`` refuses it. With 411 µs pulses in
SpO2/multi mode we stop at 200 sps: the project's sensor notes (shared/design/sensors.md) record
that rates >= 400 sps are not honoured there, and refusing a marginal setting costs nothing (the
firmware runs at 100 sps) while accepting one the part ignores would silently change the rate:

==========  ======  ======  ======  ======
mode        69 µs   118 µs  215 µs  411 µs
==========  ======  ======  ======  ======
SpO2/multi  1600    1000    800     200
HR          3200    1600    1600    1000
==========  ======  ======  ======  ======
"""
from micropython import const
import array

from firmware.errors import PartError

ADDR = const(0x57)
PART_ID = const(0x15)
FIFO_DEPTH = const(32)

# status() bits: INT_STATUS_1 in bits 7:0, INT_STATUS_2 in bits 15:8
A_FULL = const(0x80)
PPG_RDY = const(0x40)
ALC_OVF = const(0x20)
PWR_RDY = const(0x01)
DIE_TEMP_RDY = const(0x200)

_INT_STATUS_1 = const(0x00)
_INT_STATUS_2 = const(0x01)
_INT_ENABLE_1 = const(0x02)
_INT_ENABLE_2 = const(0x03)
_FIFO_WR_PTR = const(0x04)
_OVF_COUNTER = const(0x05)
_FIFO_RD_PTR = const(0x06)
_FIFO_DATA = const(0x07)
_FIFO_CONFIG = const(0x08)
_MODE_CONFIG = const(0x09)
_SPO2_CONFIG = const(0x0A)
_LED1_PA = const(0x0C)
_LED2_PA = const(0x0D)
_MULTI_LED_1 = const(0x11)
_MULTI_LED_2 = const(0x12)
_TEMP_INT = const(0x1F)
_TEMP_FRAC = const(0x20)
_TEMP_CONFIG = const(0x21)
_REV_ID = const(0xFE)
_PART_ID = const(0xFF)

_SHDN = const(0x80)
_RESET = const(0x40)
_A_FULL_EN = const(0x80)
_DIE_TEMP_RDY_EN = const(0x02)

_RESET_POLLS = const(50)     # 1 ms apart
_FIRST_TRIES = const(3)      # first access after power-up, 10 ms apart
_TEMP_WAIT_MS = const(30)
_TEMP_POLLS = const(35)      # 2 ms apart after the first wait: 100 ms in all
_PROBE_SAMPLES = const(8)
_PROBE_MIN = const(2000)     # 18-bit counts a driven LED must at least return
_PROBE_RATIO = const(4)

_MODES = {"hr": 0x02, "spo2": 0x03, "multi": 0x07}
_RATES = (50, 100, 200, 400, 800, 1000, 1600, 3200)
_PULSES = (69, 118, 215, 411)
_RANGES = (2048, 4096, 8192, 16384)
_AVERAGES = (1, 2, 4, 8, 16, 32)
_MAX_RATE_SPO2 = (1600, 1000, 800, 200)
_MAX_RATE_HR = (3200, 1600, 1600, 1000)


class MAX30102Error(PartError):
    """The pulse oximeter failed. ``fault``: ``"absent"`` (no ACK at the address),
    ``"wrong-part"`` (PART_ID is not 0x15), ``"reset-timeout"`` (RESET never self-cleared),
    ``"bus"`` (another I2C error); ``errno`` the bus error number when there is one."""

    source = "max30102"


class MAX30102:
    """``MAX30102(i2c, clock, addr=0x57)``: ``i2c`` has the ``machine.I2C`` methods, ``clock``
    is the board's (``board.clock``: ``sleep_ms``/``ticks_ms``/``ticks_diff``).
    Nothing is sent to the part until a method is called."""

    def __init__(self, i2c, clock, addr=ADDR):
        self.i2c = i2c
        self.addr = addr
        self.clock = clock
        self.red = array.array("i", [0] * FIFO_DEPTH)
        self.ir = array.array("i", [0] * FIFO_DEPTH)
        self.swapped = False
        self.lost = 0           # samples lost (FIFO overflow) since configure()
        self.last_lost = 0      # lost before the last read_fifo()
        self.lost_exact = True  # False once OVF_COUNTER saturated and the loss was estimated
        self.configured = False
        self.config = None      # the last configure() arguments, as a dict
        self.period_us = 0      # time between output samples
        self.output_sps = 0.0
        self._fresh = True      # nothing read yet: the first access gets retries
        self._bps = 6
        self._shift = 0
        self._shdn = False
        self._t_poll = 0
        self._rd_next = -1      # where this driver left FIFO_RD_PTR (-1: unknown)
        self._rollover = False
        self._buf = bytearray(FIFO_DEPTH * 6)
        mv = memoryview(self._buf)
        # one view per multiple of 3 bytes: slicing a memoryview allocates, so it is done here
        self._views = tuple(mv[: 3 * i] for i in range(2 * FIFO_DEPTH + 1))
        self._ptrs = bytearray(3)
        self._one = bytearray(1)
        self._two = bytearray(2)
        self._w = bytearray(3)

    # --- bus ---
    def _read(self, reg, buf):
        try:
            self.i2c.readfrom_mem_into(self.addr, reg, buf)
        except OSError as e:
            raise MAX30102Error.from_bus(e, "sensor")

    def _write(self, reg, value):
        w = self._one
        w[0] = value
        try:
            self.i2c.writeto_mem(self.addr, reg, w)
        except OSError as e:
            raise MAX30102Error.from_bus(e, "sensor")

    def _reg(self, reg):
        self._read(reg, self._one)
        return self._one[0]

    def _first(self, reg):
        """Read one register, retrying a bounded number of times while this is the first access
        (the first transaction after power-up can fail on cheap modules)."""
        tries = _FIRST_TRIES if self._fresh else 1
        err = None
        for i in range(tries):
            try:
                v = self._reg(reg)
                self._fresh = False
                return v
            except MAX30102Error as e:
                err = e
                if i + 1 < tries:
                    self.clock.sleep_ms(10)
        assert err is not None
        raise err

    # --- identity and reset ---
    def part_id(self):
        """PART_ID register (0x15 for a MAX30102, 0x11 for a MAX30100)."""
        return self._first(_PART_ID)

    def rev_id(self):
        return self._reg(_REV_ID)

    def check(self):
        """Raise ``MAX30102Error`` unless a MAX30102 answers; return its PART_ID."""
        pid = self.part_id()
        if pid != PART_ID:
            hint = " (a MAX30100)" if pid == 0x11 else ""
            raise MAX30102Error("wrong-part", "max30102: PART_ID is 0x%02x%s, expected 0x15" % (pid, hint))
        return pid

    def reset(self):
        """Reset every register to its power-on value: set RESET and poll until the part clears
        it (up to 50 ms), else ``MAX30102Error("reset-timeout")``. Configuration is lost."""
        self._first(_MODE_CONFIG)
        self._write(_MODE_CONFIG, _RESET)
        self.configured = False
        self._rd_next = -1
        self._shdn = False
        for _ in range(_RESET_POLLS):
            self.clock.sleep_ms(1)
            if not self._reg(_MODE_CONFIG) & _RESET:
                return
        raise MAX30102Error("reset-timeout", "max30102: RESET bit still set after %d ms" % _RESET_POLLS)

    # --- configuration ---
    def configure(self, mode="spo2", sample_rate=100, pulse_width_us=411, adc_range_na=4096,
                  red_ma=7.0, ir_ma=7.0, sample_avg=1, rollover=True, almost_full=17):
        """Set up and start sampling; every value is checked against the datasheet's options
        before anything is written (``ValueError`` names the bad one).

        ``mode`` "hr" (red only), "spo2" (red + IR) or "multi" (slot 1 = LED1 red, slot 2 = LED2
        IR); ``sample_rate`` sps (50..3200); ``pulse_width_us`` 69/118/215/411 (15..18 bits);
        ``adc_range_na`` full scale 2048..16384 nA; ``red_ma``/``ir_ma`` LED current 0..51 mA in
        0.2 mA steps; ``sample_avg`` on-chip averaging 1..32 (output rate = sample_rate /
        sample_avg); ``rollover`` keep the newest samples when the FIFO overflows;
        ``almost_full`` FIFO level (17..32 samples) raising A_FULL. Clears the FIFO pointers,
        ``lost`` and ``last_lost``."""
        if mode not in _MODES:
            raise ValueError("max30102: mode must be one of 'hr', 'spo2', 'multi', not %r" % (mode,))
        if sample_rate not in _RATES:
            raise ValueError("max30102: sample_rate %r sps is not one of %s" % (sample_rate, _RATES))
        if pulse_width_us not in _PULSES:
            raise ValueError("max30102: pulse_width_us %r is not one of %s" % (pulse_width_us, _PULSES))
        if adc_range_na not in _RANGES:
            raise ValueError("max30102: adc_range_na %r is not one of %s" % (adc_range_na, _RANGES))
        if sample_avg not in _AVERAGES:
            raise ValueError("max30102: sample_avg %r is not one of %s" % (sample_avg, _AVERAGES))
        pw = _PULSES.index(pulse_width_us)
        limit = (_MAX_RATE_HR if mode == "hr" else _MAX_RATE_SPO2)[pw]
        if sample_rate > limit:
            raise ValueError("max30102: %d sps is not honoured with %d us pulses in %s mode (at most %d sps)"
                             % (sample_rate, pulse_width_us, mode, limit))
        red = self._led_code("red_ma", red_ma)
        ir = self._led_code("ir_ma", ir_ma)
        if not isinstance(almost_full, int) or not 17 <= almost_full <= 32:
            raise ValueError("max30102: almost_full %r must be 17..32 samples" % (almost_full,))

        self._write(_MODE_CONFIG, 0)          # stop sampling while reconfiguring
        self._write(_FIFO_CONFIG, (_AVERAGES.index(sample_avg) << 5) | (0x10 if rollover else 0)
                    | (32 - almost_full))
        self._write(_SPO2_CONFIG, (_RANGES.index(adc_range_na) << 5) | (_RATES.index(sample_rate) << 2) | pw)
        self._write(_LED1_PA, red)
        self._write(_LED2_PA, ir)
        self._write(_MULTI_LED_1, 0x21 if mode == "multi" else 0)
        self._write(_MULTI_LED_2, 0)
        self._write(_INT_ENABLE_1, _A_FULL_EN)
        self._write(_INT_ENABLE_2, _DIE_TEMP_RDY_EN)
        self._write(_MODE_CONFIG, _MODES[mode])
        self._clear_fifo()
        self.config = {"mode": mode, "sample_rate": sample_rate, "pulse_width_us": pulse_width_us,
                       "adc_range_na": adc_range_na, "red_ma": red_ma, "ir_ma": ir_ma,
                       "sample_avg": sample_avg, "rollover": rollover, "almost_full": almost_full}
        self._bps = 3 if mode == "hr" else 6
        self._shift = 3 - pw
        self.period_us = 1000000 * sample_avg // sample_rate
        self.output_sps = sample_rate / sample_avg
        self.lost = 0
        self.last_lost = 0
        self.lost_exact = True
        self._shdn = False
        self._rollover = bool(rollover)
        self.configured = True

    @staticmethod
    def _led_code(name, ma):
        if not isinstance(ma, (int, float)) or not 0 <= ma <= 51.0:
            raise ValueError("max30102: %s %r must be 0..51 mA" % (name, ma))
        return int(ma * 5 + 0.5)

    def _clear_fifo(self):
        w = self._w
        w[0] = w[1] = w[2] = 0
        try:   # FIFO_WR_PTR, OVF_COUNTER, FIFO_RD_PTR in one auto-incremented write
            self.i2c.writeto_mem(self.addr, _FIFO_WR_PTR, w)
        except OSError as e:
            raise MAX30102Error.from_bus(e, "sensor")
        self._t_poll = self.clock.ticks_ms()
        self._rd_next = 0

    # --- FIFO ---
    def read_fifo(self):
        """Drain every sample waiting in the FIFO into ``self.red`` / ``self.ir`` (18-bit ADC
        counts at the configured resolution; ``ir`` is 0 in HR mode); return how many (0..32).
        ``self.last_lost`` / ``self.lost``: samples the part dropped before this read / since
        ``configure``."""
        p = self._ptrs
        self._read(_FIFO_WR_PTR, p)
        now = self.clock.ticks_ms()
        elapsed = self.clock.ticks_diff(now, self._t_poll)
        self._t_poll = now
        ovf = p[1] & 0x1F
        rd = p[2] & 0x1F
        n = (p[0] - rd) & 0x1F
        if n == 0:
            if ovf:
                n = FIFO_DEPTH
            elif not self._shdn and self.period_us and elapsed * 1000 >= 31 * self.period_us:
                if self._reg(_INT_STATUS_1) & A_FULL:
                    n = FIFO_DEPTH
        lost = ovf
        if ovf >= 0x0F:
            if self.period_us:
                est = (elapsed * 1000 + self.period_us // 2) // self.period_us - FIFO_DEPTH
                if est > lost:
                    lost = est
            self.lost_exact = False
        elif self._rollover and self._rd_next >= 0:
            # overwrites pushed RD on; those OVF_COUNTER does not show were lost before the last pop
            lost += (rd - self._rd_next - ovf) & 0x1F
        self.lost += lost
        self.last_lost = lost
        if n == 0:
            self._rd_next = rd
            return 0
        bps = self._bps
        self._rd_next = -1      # unknown until the burst succeeds
        self._read(_FIFO_DATA, self._views[n * bps // 3])
        self._rd_next = (rd + n) & 0x1F
        b = self._buf
        red = self.red
        ir = self.ir
        sh = self._shift
        j = 0
        if bps == 3:
            for i in range(n):
                red[i] = (((b[j] << 16) | (b[j + 1] << 8) | b[j + 2]) & 0x3FFFF) >> sh
                ir[i] = 0
                j += 3
            return n
        if self.swapped:
            red, ir = ir, red
        for i in range(n):
            red[i] = (((b[j] << 16) | (b[j + 1] << 8) | b[j + 2]) & 0x3FFFF) >> sh
            ir[i] = (((b[j + 3] << 16) | (b[j + 4] << 8) | b[j + 5]) & 0x3FFFF) >> sh
            j += 6
        return n

    def status(self):
        """Read (and so clear) both interrupt status registers: INT_STATUS_1 in bits 7:0,
        INT_STATUS_2 in bits 15:8 (``A_FULL``, ``PPG_RDY``, ``ALC_OVF``, ``PWR_RDY``,
        ``DIE_TEMP_RDY``)."""
        t = self._two
        self._read(_INT_STATUS_1, t)
        return t[0] | (t[1] << 8)

    # --- swapped LEDs ---
    def detect_swapped_leds(self):
        """Drive LED1 alone in SpO2 mode and see which channel answers: True (the IR channel
        answers: swapped LEDs), False (red answers, as it should), None (no clear answer: no
        finger or too little light; ``swapped`` is left as it was). Sets ``self.swapped`` so that
        ``read_fifo`` exchanges the channels, and restores the previous configuration."""
        saved = self.config
        ma = saved["red_ma"] if saved and saved["red_ma"] > 0 else 7.0
        self.configure(mode="spo2", sample_rate=100, pulse_width_us=411,
                       adc_range_na=saved["adc_range_na"] if saved else 4096, red_ma=ma, ir_ma=0)
        swapped = self.swapped
        self.swapped = False
        try:
            self.clock.sleep_ms(_PROBE_SAMPLES * 10 + 5)
            n = self.read_fifo()
            s1 = s2 = 0
            for i in range(n):
                s1 += self.red[i]
                s2 += self.ir[i]
        finally:
            self.swapped = swapped
            if saved:
                self.configure(**saved)
            else:
                self.configure()
        if n == 0:
            return None
        s1 //= n
        s2 //= n
        if s1 >= _PROBE_MIN and s1 >= _PROBE_RATIO * s2:
            result = False
        elif s2 >= _PROBE_MIN and s2 >= _PROBE_RATIO * s1:
            result = True
        else:
            return None
        self.swapped = result
        return result

    # --- die temperature, power ---
    def die_temp_cc(self):
        """Die temperature in hundredths of a degree C (int, signed; ±1 °C accuracy): starts a
        conversion (~29 ms) and waits for it, polling TEMP_EN until it self-clears."""
        self._reg(_INT_STATUS_2)             # clear a stale DIE_TEMP_RDY
        self._write(_TEMP_CONFIG, 0x01)
        self.clock.sleep_ms(_TEMP_WAIT_MS)
        for _ in range(_TEMP_POLLS):
            if not self._reg(_TEMP_CONFIG) & 0x01:
                break
            self.clock.sleep_ms(2)
        else:
            raise MAX30102Error("bus", "max30102: die temperature conversion did not finish")
        t = self._two
        self._read(_TEMP_INT, t)
        tint = t[0] - 256 if t[0] & 0x80 else t[0]
        s16 = tint * 16 + (t[1] & 0x0F)      # 1/16 degC
        return (s16 * 25 + 2) // 4            # round(s16 * 100 / 16)

    def shutdown(self):
        """Power-save: sampling stops, registers are kept, interrupts cleared."""
        self._write(_MODE_CONFIG, self._reg(_MODE_CONFIG) | _SHDN)
        self._shdn = True

    def wake(self):
        """Leave power-save; sampling resumes with the same configuration."""
        self._write(_MODE_CONFIG, self._reg(_MODE_CONFIG) & ~_SHDN & 0xFF)
        self._shdn = False
        self._t_poll = self.clock.ticks_ms()
