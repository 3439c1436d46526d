"""Register-level model of the MAX30102 pulse oximeter (I2C 0x57) on the virtual bus.

What the model honours (MAX30102 datasheet, 19-7740 rev 1, and ``../shared/design/sensors.md``):

- Every register with its power-on value; PART_ID 0x15 (``part_id=0x11`` makes a MAX30100),
  REV_ID 0x03. Writes to read-only registers are ignored. The register pointer is set by the first
  byte of a write; reads and writes auto-increment it, except at FIFO_DATA (0x07), which streams
  the FIFO: 3 bytes per active LED channel per sample, 18-bit data left-justified (bits 17:16 in
  the first byte), the read pointer advancing on the first byte of each sample (datasheet) and
  OVF_COUNTER returning to 0 when a sample is popped.
- Sampling driven by the virtual clock, computed lazily on each bus access from elapsed time:
  ``floor(elapsed * SPO2_SR / (10**6 * SMP_AVE))`` new samples, the fraction carried over. A sample
  rate the datasheet does not allow with the pulse width and mode (tables "SpO2/HR mode allowed
  settings") is not honoured: the model runs at the highest allowed rate instead, as the part does.
- FIFO 32 deep: WR/RD pointers, OVF_COUNTER saturating at 0xF; with ROLLOVER_EN the newest sample
  overwrites the oldest, without it the FIFO stops when full. Every sample that does not survive
  counts in ``lost``; ``produced`` counts every sample generated, ``popped`` every sample read out:
  ``produced == lost + popped + samples in the FIFO`` is the ground truth for tests and benchmarks.
  ``silent_lost`` counts the losses no register ever showed: dropped after the reader's last read
  of OVF_COUNTER and erased from it by the next pop (a full FIFO losing a sample between a
  reader's pointer poll and its FIFO_DATA read). With rollover the read pointer still moves.
- Interrupt status 1: A_FULL (set on each push that leaves at least 32 − FIFO_A_FULL samples),
  PPG_RDY (each push), ALC_OVF (ambient light beyond the cancellation limit), PWR_RDY (power-up);
  status 2: DIE_TEMP_RDY. Flags latch and clear when their status register is read; shutdown
  clears them. ``int_pending()`` is the INT pin: enabled flags, and PWR_RDY which cannot be masked.
- Modes: HR (0x02, LED1 = red only, 3 bytes/sample), SpO2 (0x03, LED1 red + LED2 IR, 6 bytes),
  multi-LED (0x07, SLOT1/SLOT2 of 0x11 pick LED1 or LED2; slots 3-4 are not modelled).
  SHDN (0x09 b7) stops sampling and keeps the registers; RESET (b6) restores every register and
  reads back set for ``RESET_US`` of virtual time before it self-clears.
- Optics: photocurrent (pA) = scenario pA/mA × LED mA (0.2 mA per step of 0x0C/0x0D) + ambient pA
  − ambient cancellation (up to ``alc_limit_pa``, beyond which ALC_OVF is set and the residual
  reaches the ADC), plus deterministic noise; counts = pA × 2**18 / (ADC range in pA), clipped to
  0..0x3FFFF, truncated to the pulse width's resolution (18/17/16/15 bits). The scenario is sampled
  once per output sample; averaging reduces the noise by sqrt(SMP_AVE).
- Noise: uniform ±``noise_pa`` pA at 411 µs (shorter pulses integrate less light: ×1.38 at 215 µs,
  ×1.87 at 118 µs, ×2.44 at 69 µs), from a seeded 16-bit LCG: the same run gives the same data.
- Die temperature: TEMP_EN (0x21 b0) starts a conversion that ends ``TEMP_US`` later: TINT
  (two's complement °C, floor) and TFRAC (1/16 °C) from ``scenario.ambient_mc``, TEMP_EN clears
  itself and DIE_TEMP_RDY is set.

Faults (``inject(name, count=None)``; ``count`` occurrences, then the fault clears itself):

``absent``        no ACK: every access raises ``OSError(19)`` (ENODEV); ``count`` accesses only
                  models the first reads after power-up failing. ``present`` is False meanwhile.
``overflow``      the reader is too slow. Chosen mechanism: each read that starts at FIFO_WR_PTR
                  (the driver's poll of the pointers) first stalls the host by ``OVERFLOW_STALL``
                  sample periods (40: the FIFO's 32 plus 8) on the virtual clock, as a firmware
                  busy elsewhere (flash write, GC, display) would. So each poll finds the FIFO full
                  with about 8 samples lost, few enough that OVF_COUNTER (saturating at 15) still
                  counts them exactly. ``count`` limits the number of stalled polls.
``swapped-leds``  the clone-board defect: the light LED1's current drives lands in the IR (second)
                  channel and LED2's in the red (first) channel.
``reset-stuck``   the RESET bit never self-clears (a part held in reset; tests the driver's bound).

Steady-state paths (bus access, sampling, streaming) allocate nothing: registers and the FIFO are
preallocated bytearrays, arithmetic is in small ints (< 2**30) as long as the run is shorter than
about 17 minutes of virtual time.
"""
from micropython import const
import array

# registers
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

# bits
_A_FULL = const(0x80)
_PPG_RDY = const(0x40)
_ALC_OVF = const(0x20)
_PWR_RDY = const(0x01)
_DIE_TEMP_RDY = const(0x02)
_SHDN = const(0x80)
_RESET = const(0x40)

_DEPTH = const(32)
_FULL18 = const(0x3FFFF)
_CHUNK_US = const(100000)   # elapsed time is processed in chunks so products stay small ints
_ENODEV = const(19)

_SR_SPS = (50, 100, 200, 400, 800, 1000, 1600, 3200)
# highest sample rate code allowed per pulse-width code (69, 118, 215, 411 us), per mode
_MAX_SR_SPO2 = (6, 5, 4, 3)   # 1600, 1000, 800, 400 sps
_MAX_SR_HR = (7, 6, 6, 5)     # 3200, 1600, 1600, 1000 sps
_NOISE_PW_PM = (2440, 1870, 1380, 1000)      # noise vs pulse width, per mille of the 411 us figure
_NOISE_AVG_PM = (1000, 707, 500, 354, 250, 177, 177, 177)  # 1/sqrt(SMP_AVE), per mille

# writable registers (everything else is read-only or reserved)
_WRITABLE = (_INT_ENABLE_1, _INT_ENABLE_2, _FIFO_WR_PTR, _OVF_COUNTER, _FIFO_RD_PTR, _FIFO_CONFIG,
             _MODE_CONFIG, _SPO2_CONFIG, _LED1_PA, _LED2_PA, _MULTI_LED_1, _MULTI_LED_2, _TEMP_CONFIG)

FAULTS = ("absent", "overflow", "swapped-leds", "reset-stuck")


class MAX30102Model:
    """``MAX30102Model(clock, scenario=None, addr=0x57, part_id=0x15, seed=1)``: attach it to a
    ``VirtualI2C``. ``scenario`` gives the optics and the die temperature (a steady finger when
    None)."""

    RESET_US = 1000        # RESET bit reads set this long (virtual us) before it self-clears
    TEMP_US = 29000        # die temperature conversion time (datasheet: 29 ms typical)
    OVERFLOW_STALL = 40    # sample periods the "overflow" fault stalls each FIFO poll

    def __init__(self, clock, scenario=None, addr=0x57, part_id=0x15, seed=1):
        if scenario is None:
            from sim.hardware.scenario import ConstantScenario
            scenario = ConstantScenario()
        self.clock = clock
        self.scenario = scenario
        self.addr = addr
        self.part_id = part_id
        self.rev_id = 0x03
        self.alc_limit_pa = 50000000   # ambient cancellation limit, pA (model parameter)
        self.noise_pa = 60             # noise amplitude at 411 us, no averaging, pA
        self._seed = seed & 0xFFFF
        self.regs = bytearray(256)
        self.fifo = bytearray(_DEPTH * 6)   # 6 bytes a slot: channel 1 then channel 2
        self._opt = array.array("i", [0, 0, 0])
        self._last = clock.ticks_us()
        self.t_us = 0          # virtual time since the model was made (scenario time)
        self.produced = 0      # samples generated
        self.lost = 0          # samples dropped or overwritten by overflow
        self.popped = 0        # samples read out through FIFO_DATA
        self.underruns = 0     # FIFO_DATA read while the FIFO was empty
        # lost samples no register ever showed: counted in OVF_COUNTER after its last read, then
        # erased by a pop (the race between a reader's pointer poll and its FIFO_DATA read)
        self.silent_lost = 0
        self._ovf_unread = 0
        self.accesses = 0
        self.resets = 0
        self.swapped = False
        self._absent = 0       # 0: present; -1: absent for ever; n > 0: the next n accesses
        self._overflow = 0     # same convention for stalled FIFO polls
        self._reset_stuck = False
        self._combined = False  # the last write set the pointer for a combined (repeated-start) read
        self._ptr = 0
        self._power_on()

    # --- faults ---
    def inject(self, name, count=None):
        """Inject fault ``name`` (``FAULTS``); ``count`` occurrences (None: until cleared)."""
        n = -1 if count is None else int(count)
        if name == "absent":
            self._absent = n
        elif name == "overflow":
            self._overflow = n
        elif name == "swapped-leds":
            self.swapped = True
        elif name == "reset-stuck":
            self._reset_stuck = True
        else:
            raise ValueError("unknown MAX30102 fault " + repr(name) + "; valid: " + ", ".join(FAULTS))

    def clear(self, name=None):
        """Remove fault ``name``, or every fault when None."""
        if name is not None and name not in FAULTS:
            raise ValueError("unknown MAX30102 fault " + repr(name) + "; valid: " + ", ".join(FAULTS))
        if name is None or name == "absent":
            self._absent = 0
        if name is None or name == "overflow":
            self._overflow = 0
        if name is None or name == "swapped-leds":
            self.swapped = False
        if name is None or name == "reset-stuck":
            self._reset_stuck = False
            if self._reset_until >= 0:
                self._reset_until = self.t_us

    @property
    def present(self):
        return self._absent == 0

    # --- state ---
    def _power_on(self):
        self._reset_regs()
        self.regs[_INT_STATUS_1] = _PWR_RDY

    def _reset_regs(self):
        r = self.regs
        for i in range(256):
            r[i] = 0
        r[_REV_ID] = self.rev_id
        r[_PART_ID] = self.part_id
        self.count = 0         # samples in the FIFO (resolves WR == RD)
        self._acc = 0          # sample-rate x microseconds carried towards the next sample
        self._byte = 0         # position within the sample being streamed
        self._cur = 0          # FIFO slot being streamed
        self._temp_at = -1     # t_us when the running temperature conversion ends
        self._reset_until = -1
        self._derive()

    def _derive(self):
        r = self.regs
        mode = r[_MODE_CONFIG] & 0x07
        self._mode = mode
        cfg = r[_SPO2_CONFIG]
        self._pw = cfg & 0x03
        self._range = (cfg >> 5) & 0x03
        sr = (cfg >> 2) & 0x07
        lim = (_MAX_SR_HR if mode == 2 else _MAX_SR_SPO2)[self._pw]
        self._sr = _SR_SPS[sr if sr <= lim else lim]
        avg = (r[_FIFO_CONFIG] >> 5) & 0x07
        self._avg_code = avg
        self._cost = 1000000 << (avg if avg <= 5 else 5)   # sr-us per output sample
        # channels: 0 none, 1 LED1, 2 LED2
        if mode == 2:
            self._s1, self._s2 = 1, 0
        elif mode == 3:
            self._s1, self._s2 = 1, 2
        elif mode == 7:
            m = r[_MULTI_LED_1]
            self._s1 = m & 0x07 if (m & 0x07) in (1, 2) else 0
            self._s2 = (m >> 4) & 0x07 if self._s1 and ((m >> 4) & 0x07) in (1, 2) else 0
        else:
            self._s1, self._s2 = 0, 0
        self._bps = 3 * ((1 if self._s1 else 0) + (1 if self._s2 else 0))

    def sampling(self):
        """True while the part converts samples (a mode set, not shut down, not in reset)."""
        return (self._mode in (2, 3, 7) and self._s1 != 0 and not (self.regs[_MODE_CONFIG] & _SHDN)
                and self._reset_until < 0)

    def period_us(self):
        """Time between output samples at the current settings, us (0 when not sampling)."""
        if self._mode not in (2, 3, 7):
            return 0
        return self._cost // self._sr

    def int_pending(self):
        """The INT pin: True while an enabled interrupt (or PWR_RDY) is flagged."""
        self._update()
        r = self.regs
        return bool((r[_INT_STATUS_1] & (r[_INT_ENABLE_1] | _PWR_RDY)) or
                    (r[_INT_STATUS_2] & r[_INT_ENABLE_2] & _DIE_TEMP_RDY))

    # --- time ---
    def _update(self):
        now = self.clock.ticks_us()
        e = self.clock.ticks_diff(now, self._last)
        self._last = now
        while e > 0:
            step = e if e < _CHUNK_US else _CHUNK_US
            e -= step
            self._advance(step)

    def _advance(self, step):
        t0 = self.t_us
        self.t_us = t = t0 + step
        if self._reset_until >= 0 and t >= self._reset_until and not self._reset_stuck:
            self._reset_until = -1
            # sampling (if a mode was written during reset) starts now
            self._acc = 0
            return
        if self._temp_at >= 0 and t >= self._temp_at:
            self._finish_temp()
        if not self.sampling():
            return
        sr = self._sr
        acc = self._acc + step * sr
        cost = self._cost
        k = acc // cost
        acc -= k * cost
        self._acc = acc
        if k:
            self._produce(k, t, acc, sr, cost)

    def _produce(self, k, t_end, acc, sr, cost):
        rollover = self.regs[_FIFO_CONFIG] & 0x10
        skip = k - _DEPTH if rollover and k > _DEPTH else 0
        if skip:   # the pointers move on as if every skipped sample had been written
            r = self.regs
            r[_FIFO_WR_PTR] = (r[_FIFO_WR_PTR] + skip) & 0x1F
            r[_FIFO_RD_PTR] = (r[_FIFO_RD_PTR] + skip) & 0x1F
        for j in range(k):
            if j < skip:   # overwritten before anyone could read it
                self.produced += 1
                self.lost += 1
                self._ovf()
                continue
            if self.count >= _DEPTH and not rollover:
                n = k - j
                self.produced += n
                self.lost += n
                self._ovf(n)
                return
            self._push(t_end - (acc + (k - 1 - j) * cost) // sr)

    def _ovf(self, n=1):
        r = self.regs
        v = r[_OVF_COUNTER] + n
        r[_OVF_COUNTER] = v if v < 0x0F else 0x0F
        self._ovf_unread += n

    def _push(self, t):
        r = self.regs
        self.produced += 1
        opt = self._opt
        self.scenario.optical(t, opt)
        amb = opt[2]
        if amb > self.alc_limit_pa:
            amb -= self.alc_limit_pa
            r[_INT_STATUS_1] |= _ALC_OVF
        else:
            amb = 0
        wr = r[_FIFO_WR_PTR] & 0x1F
        if self.count >= _DEPTH:      # rollover: the oldest sample goes
            self.lost += 1
            self._ovf()
            r[_FIFO_RD_PTR] = (r[_FIFO_RD_PTR] + 1) & 0x1F
        else:
            self.count += 1
        o = wr * 6
        self._encode(o, self._s1, opt, amb)
        self._encode(o + 3, self._s2, opt, amb)
        r[_FIFO_WR_PTR] = (wr + 1) & 0x1F
        r[_INT_STATUS_1] |= _PPG_RDY
        if self.count >= _DEPTH - (r[_FIFO_CONFIG] & 0x0F):
            r[_INT_STATUS_1] |= _A_FULL

    def _encode(self, o, slot, opt, amb):
        f = self.fifo
        if slot == 0:
            f[o] = f[o + 1] = f[o + 2] = 0
            return
        r = self.regs
        red_led = slot == 1
        if self.swapped:    # the LED1 slot shows LED2's light and vice versa
            red_led = not red_led
        if red_led:
            pa = opt[0] * r[_LED1_PA] // 5
        else:
            pa = opt[1] * r[_LED2_PA] // 5
        # noise: 16-bit LCG (ZX81 constants), uniform in +-noise
        s = (self._seed * 75 + 74) % 65537
        self._seed = s
        amp = self.noise_pa * _NOISE_PW_PM[self._pw] // 1000 * _NOISE_AVG_PM[self._avg_code] // 1000
        pa += amb + ((s & 0xFF) - 128) * amp // 128
        if pa < 0:
            pa = 0
        elif pa > 40000000:
            pa = 40000000
        v = pa * 16 // (125 << self._range)     # pA * 2**18 / (2048 nA << range)
        if v > _FULL18:
            v = _FULL18
        sh = 3 - self._pw
        v = (v >> sh) << sh
        f[o] = v >> 16
        f[o + 1] = (v >> 8) & 0xFF
        f[o + 2] = v & 0xFF

    def _finish_temp(self):
        r = self.regs
        self._temp_at = -1
        mc = self.scenario.ambient_mc(self.t_us)
        s16 = (mc * 16) // 1000            # 1/16 degC, floor
        if s16 < -128 * 16:
            s16 = -128 * 16
        elif s16 > 127 * 16 + 15:
            s16 = 127 * 16 + 15
        r[_TEMP_INT] = (s16 >> 4) & 0xFF
        r[_TEMP_FRAC] = s16 & 0x0F
        r[_TEMP_CONFIG] &= 0xFE
        r[_INT_STATUS_2] |= _DIE_TEMP_RDY

    # --- bus protocol ---
    def _ack(self):
        self.accesses += 1
        a = self._absent
        if a:
            if a > 0:
                self._absent = a - 1
            raise OSError(_ENODEV)

    def i2c_write(self, data, stop):
        self._ack()
        self._update()
        n = len(data)
        if n == 0:
            return
        p = data[0]
        self._ptr = p
        self._byte = 0
        self._combined = not stop
        if not stop and p == _FIFO_WR_PTR and self._overflow:
            if self._overflow > 0:
                self._overflow -= 1
            if self.sampling():
                self.clock.advance_us(self.OVERFLOW_STALL * self.period_us())
                self._update()
        for i in range(1, n):
            self._write_reg(p, data[i])
            if p != _FIFO_DATA:
                p = (p + 1) & 0xFF
        self._ptr = p

    def _write_reg(self, reg, v):
        if reg not in _WRITABLE:
            return
        r = self.regs
        if reg == _MODE_CONFIG:
            if v & _RESET:
                self.resets += 1
                self._reset_regs()
                self._reset_until = self.t_us + self.RESET_US
                return
            was_shdn = r[_MODE_CONFIG] & _SHDN
            r[reg] = v & 0x87
            if (v & _SHDN) and not was_shdn:
                r[_INT_STATUS_1] = 0
                r[_INT_STATUS_2] = 0
            if was_shdn and not (v & _SHDN):
                self._acc = 0
            self._derive()
            return
        if self._reset_until >= 0:   # the part ignores writes while it resets
            return
        if reg == _FIFO_WR_PTR or reg == _FIFO_RD_PTR:
            r[reg] = v & 0x1F
            self.count = (r[_FIFO_WR_PTR] - r[_FIFO_RD_PTR]) & 0x1F
            return
        if reg == _OVF_COUNTER:
            r[reg] = v & 0x1F
            return
        if reg == _TEMP_CONFIG:
            r[reg] = v & 0x01
            if v & 0x01:
                self._temp_at = self.t_us + self.TEMP_US
            return
        if reg == _INT_ENABLE_1:
            v &= 0xE0
        elif reg == _INT_ENABLE_2:
            v &= 0x02
        elif reg == _SPO2_CONFIG:
            v &= 0x7F
        elif reg == _MULTI_LED_1 or reg == _MULTI_LED_2:
            v &= 0x77
        r[reg] = v
        if reg == _SPO2_CONFIG or reg == _FIFO_CONFIG or reg == _MULTI_LED_1:
            self._derive()

    def i2c_read(self, buf):
        self._ack()
        combined = self._combined
        self._combined = False
        if not combined:
            self._update()
        # a combined read is served as of its start (the time of the pointer write): samples that
        # arrive during the transfer are pushed after it, as the part does while it streams
        r = self.regs
        p = self._ptr
        for i in range(len(buf)):
            if p == _FIFO_DATA:
                buf[i] = self._fifo_byte()
                continue
            if p == _MODE_CONFIG and self._reset_until >= 0:
                buf[i] = _RESET
            else:
                buf[i] = r[p]
                if p == _OVF_COUNTER:
                    self._ovf_unread = 0
            if p == _INT_STATUS_1 or p == _INT_STATUS_2:
                r[p] = 0
            p = (p + 1) & 0xFF
        self._ptr = p
        if combined:
            self._update()

    def _fifo_byte(self):
        bps = self._bps
        if bps == 0:
            return 0
        r = self.regs
        b = self._byte
        if b == 0:
            rd = r[_FIFO_RD_PTR] & 0x1F
            self._cur = rd
            if self.count > 0:
                self.count -= 1
                self.popped += 1
                r[_FIFO_RD_PTR] = (rd + 1) & 0x1F
                r[_OVF_COUNTER] = 0
                self.silent_lost += self._ovf_unread
                self._ovf_unread = 0
            else:
                self.underruns += 1
        v = self.fifo[self._cur * 6 + b]
        b += 1
        self._byte = 0 if b >= bps else b
        return v

    # --- for tests and benchmarks ---
    def fifo_count(self):
        """Samples waiting in the FIFO now (what WR/RD/OVF leave ambiguous)."""
        self._update()
        return self.count
