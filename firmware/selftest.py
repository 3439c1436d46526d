"""Sensor self-test: what a technician runs before trusting a unit (``nabd selftest``).

``run(board)`` returns a list of ``(name, ok, detail)``, one per check, in this order:

``mlx90614.bus``       the thermometer answers at 0x5A and several reads are all PEC-valid
``mlx90614.ambient``   Ta plausible (-20..60 \u00b0C)
``mlx90614.object``    Tobj plausible (-20..100 \u00b0C)
``max30102.part``      reset and part ID 0x15 at 0x57
``max30102.leds``      LED order; a unit with red/IR swapped passes, corrected in software
``max30102.fifo_rate`` samples for 1 s of board time within +-2 % of the configured rate
``max30102.overflow``  no sample lost while reading at the normal cadence
``max30102.die_temp``  die temperature plausible (-20..85 \u00b0C)
``lis3dh.fifo``        only on a board with the optional accelerometer (``board.accel``): 0.5 s of
                      its FIFO at the normal cadence, rate 100 Hz +-10 % and the mean |a| of a
                      unit at rest 0.8..1.2 g (gravity: the axes answer and are scaled)

A failing check names its fault first in the detail, as the simulator's fault names do
(``"mlx90614:pec - PEC mismatch on 10 of 10 reads"``), so a log or a technician's screen says
what is wrong. Every exception from a driver is caught per check: the self-test never crashes.
Time is the board's clock, so on the simulated board the test takes milliseconds.
"""
from micropython import const

from firmware.drivers.mlx90614 import MLX90614
from firmware.drivers.max30102 import MAX30102
from firmware.errors import bus_fault, code
from firmware.signal.stats import isqrt

_READS = const(5)              # reads of each of Ta and Tobj for the PEC check
_WINDOW_US = const(1000000)    # FIFO rate measured over 1 s
_CADENCE_MS = const(40)        # the application's normal FIFO read cadence (FIFO holds 320 ms)
_TOLERANCE_PM = const(20)      # +-2 % on the sample rate, per mille
_ACC_WINDOW_US = const(500000)
_ACC_TOL_PM = const(100)       # the LIS3DH's internal oscillator: +-10 % on its data rate

DASH = " \u2014 "

_MLX_TEXT = {
    "pec": "PEC mismatch",
    "nack": "no ACK at 0x5A (absent, unpowered or bus fault)",
    "error-flag": "the sensor flags its reading invalid (bit 15)",
    "stuck": "I2C bus held (timeout)",
    "range": "impossible temperature",
}
_MAX_TEXT = {
    "absent": "no ACK at 0x57 (part absent or unpowered)",
    "wrong-part": "another part answers at 0x57",
    "overflow": "FIFO overflow: samples lost",
    "reset-timeout": "the RESET bit never cleared",
    "stuck": "I2C bus held (timeout)",
}


def _fault_of(part, e):
    """The named fault an exception stands for: ``part:fault``."""
    f = getattr(e, "fault", None)
    if not f and isinstance(e, OSError):
        f = bus_fault(code(e), "absent" if part == "max30102" else "nack")
    if not f:
        f = type(e).__name__
    return part + ":" + f


def _describe(part, e):
    """``part:fault \u2014 what happened``, from the driver's exception."""
    name = _fault_of(part, e)
    msg = str(e)
    for prefix in (name, part + ":"):        # the drivers name their fault or part first already
        if msg.startswith(prefix):
            msg = msg[len(prefix):].lstrip(" -:")
    if not msg:
        table = _MLX_TEXT if part == "mlx90614" else _MAX_TEXT
        msg = table.get(name.split(":", 1)[1], "error")
    return name + DASH + msg


def _cc(v):
    """Hundredths of a degree as text: 3680 -> '36.80'."""
    s = "-" if v < 0 else ""
    v = -v if v < 0 else v
    return "%s%d.%02d" % (s, v // 100, v % 100)


class _Context:
    def __init__(self, board):
        self.board = board
        self.clock = board.clock
        self.mlx = None
        self.max = None
        self.max_failed = None   # the named fault that stopped the MAX30102 checks
        self.session = None      # (samples read, lost, elapsed us, expected rate) of the FIFO run


# --- MLX90614 ---
def _mlx_bus(ctx):
    # no retries: every read's own PEC counts
    ctx.mlx = MLX90614(ctx.board.i2c, clock=ctx.clock, retries=0)
    m = ctx.mlx
    good = 0
    faults = {}  # type: dict
    first = {}  # type: dict
    total = 2 * _READS
    for i in range(total):
        try:
            if i % 2:
                m.object_cc()
            else:
                m.ambient_cc()
            good += 1
        except Exception as e:
            name = _fault_of("mlx90614", e)
            if name == "mlx90614:error-flag":
                good += 1        # the word arrived intact; the plausibility checks report the flag
                continue
            faults[name] = faults.get(name, 0) + 1
            if name not in first:
                first[name] = e
    if not faults:
        return True, "present at 0x5A, %d of %d reads PEC-valid" % (good, total)
    parts = []
    for name in sorted(faults):
        n = faults[name]
        if name == "mlx90614:pec":
            parts.append(name + DASH + "PEC mismatch on %d of %d reads" % (n, total))
        else:
            what = _MLX_TEXT.get(name.split(":", 1)[1]) or str(first[name])
            parts.append(name + DASH + "%s on %d of %d reads" % (what, n, total))
    return False, "; ".join(parts)


def _mlx_reading(ctx, what, lo_cc, hi_cc):
    m = MLX90614(ctx.board.i2c, clock=ctx.clock)     # the production setting: bounded retries
    try:
        v = m.ambient_cc() if what == "Ta" else m.object_cc()
    except Exception as e:
        return False, _describe("mlx90614", e)
    rng = "%s..%s \u00b0C" % (_cc(lo_cc)[:-3], _cc(hi_cc)[:-3])
    if lo_cc <= v <= hi_cc:
        return True, "%s %s \u00b0C (plausible %s)" % (what, _cc(v), rng)
    return False, "mlx90614:implausible" + DASH + "%s %s \u00b0C outside %s" % (what, _cc(v), rng)


def _mlx_ambient(ctx):
    return _mlx_reading(ctx, "Ta", -2000, 6000)


def _mlx_object(ctx):
    return _mlx_reading(ctx, "Tobj", -2000, 10000)


# --- MAX30102 ---
def _max_part(ctx):
    d = MAX30102(ctx.board.i2c, clock=ctx.clock)
    ctx.max = d
    try:
        d.reset()
        pid = d.check()
        rev = d.rev_id()
    except Exception as e:
        ctx.max_failed = _fault_of("max30102", e)
        raise
    return True, "part ID 0x%02x at 0x57, revision 0x%02x" % (pid, rev)


def _need_max(ctx):
    if ctx.max_failed:
        return False, ctx.max_failed + DASH + "not run: the part check failed"
    return None


def _max_leds(ctx):
    d = ctx.max
    d.configure()
    swapped = d.detect_swapped_leds()       # restores the configuration itself
    if swapped is None:
        return False, "max30102:no-reflection" + DASH + "LED order undetermined: cover the sensor with a finger"
    if swapped:
        return True, "red/IR swapped on this unit: corrected in software"
    return True, "red on LED1, IR on LED2 as specified"


def _max_session(ctx):
    """Read the FIFO at the normal cadence for 1 s of board time: (samples read, lost, elapsed us,
    expected output rate in samples/s)."""
    d = ctx.max
    clock = ctx.clock
    d.configure()
    c = d.config
    rate = c["sample_rate"] // c["sample_avg"]
    d.read_fifo()                          # whatever accumulated during configuration
    n0 = 0
    lost0 = d.lost
    t0 = clock.ticks_us()
    while True:
        clock.sleep_ms(_CADENCE_MS)
        n0 += d.read_fifo()
        elapsed = clock.ticks_diff(clock.ticks_us(), t0)
        if elapsed >= _WINDOW_US:
            break
    ctx.session = (n0, d.lost - lost0, elapsed, rate)
    return ctx.session


def _max_rate(ctx):
    n, lost, elapsed, rate = _max_session(ctx)
    produced = n + lost
    # centi-Hz, integer only
    got_chz = produced * 100000000 // elapsed
    exp_chz = rate * 100
    dev_pm = (got_chz - exp_chz) * 1000 // exp_chz
    text = "%d.%02d samples/s over %d ms, configured %d (%s%d.%d %%)" % (
        got_chz // 100, got_chz % 100, elapsed // 1000, rate, "-" if dev_pm < 0 else "+",
        abs(dev_pm) // 10, abs(dev_pm) % 10)
    if -_TOLERANCE_PM <= dev_pm <= _TOLERANCE_PM:
        return True, text
    return False, "max30102:rate" + DASH + text + ", outside +-2 %"


def _max_overflow(ctx):
    s = ctx.session
    if s is None:
        s = _max_session(ctx)
    n, lost, elapsed, rate = s
    if lost == 0:
        return True, "0 of %d samples lost reading every %d ms" % (n, _CADENCE_MS)
    return False, "max30102:overflow" + DASH + "%d of %d samples lost (FIFO overflow counter) reading every %d ms" % (
        lost, n + lost, _CADENCE_MS)


def _max_die(ctx):
    v = ctx.max.die_temp_cc()
    if -2000 <= v <= 8500:
        return True, "die %s \u00b0C (plausible -20..85)" % _cc(v)
    return False, "max30102:implausible" + DASH + "die %s \u00b0C outside -20..85 \u00b0C" % _cc(v)


_CHECKS = (
    ("mlx90614.bus", "mlx90614", _mlx_bus),
    ("mlx90614.ambient", "mlx90614", _mlx_ambient),
    ("mlx90614.object", "mlx90614", _mlx_object),
    ("max30102.part", "max30102", _max_part),
    ("max30102.leds", "max30102", _max_leds),
    ("max30102.fifo_rate", "max30102", _max_rate),
    ("max30102.overflow", "max30102", _max_overflow),
    ("max30102.die_temp", "max30102", _max_die),
)


# --- LIS3DH (optional) ---
def _acc_fifo(ctx):
    a = ctx.board.accel
    clock = ctx.clock
    a.start()
    try:
        a.read_fifo()                       # what came before the window
        n = 0
        sx = sy = sz = 0
        t0 = clock.ticks_us()
        while True:
            clock.sleep_ms(_CADENCE_MS)
            k = a.read_fifo()
            for i in range(k):
                sx += a.x[i]
                sy += a.y[i]
                sz += a.z[i]
            n += k
            elapsed = clock.ticks_diff(clock.ticks_us(), t0)
            if elapsed >= _ACC_WINDOW_US:
                break
    finally:
        a.stop()
    if n == 0:
        return False, "lis3dh:rate" + DASH + "no sample in %d ms" % (elapsed // 1000)
    got_chz = n * 100000000 // elapsed
    dev_pm = (got_chz - 10000) * 1000 // 10000
    g2 = (sx // n) ** 2 + (sy // n) ** 2 + (sz // n) ** 2
    text = "%d.%02d samples/s, mean |a| %d mg" % (got_chz // 100, got_chz % 100, isqrt(g2))
    if not -_ACC_TOL_PM <= dev_pm <= _ACC_TOL_PM:
        return False, "lis3dh:rate" + DASH + text + ", outside 100 Hz +-10 %"
    if not 800 * 800 <= g2 <= 1200 * 1200:
        return False, "lis3dh:gravity" + DASH + text + ", outside 800..1200 mg for a unit at rest"
    return True, text




def run(board):
    """Run every check on ``board``; returns ``[(name, ok, detail), ...]``. Never raises."""
    ctx = _Context(board)
    results = []
    checks = list(_CHECKS)
    if getattr(board, "accel", None) is not None:
        checks.append(("lis3dh.fifo", "lis3dh", _acc_fifo))
    for name, part, check in checks:
        try:
            board.wdt_feed()
        except Exception:
            pass
        try:
            if part == "max30102" and check is not _max_part:
                skip = _need_max(ctx)
                if skip:
                    results.append((name, skip[0], skip[1]))
                    continue
            ok, detail = check(ctx)
        except Exception as e:
            ok, detail = False, _describe(part, e)
        results.append((name, bool(ok), detail))
    if ctx.max is not None and not ctx.max_failed:
        try:
            ctx.max.shutdown()      # sensors sleep when idle
        except Exception:
            pass
    return results


def passed(results):
    """True when every check passed."""
    for r in results:
        if not r[1]:
            return False
    return True
