"""The virtual device's boot step: what the ESP32's frozen firmware does before ``boot.py``, on the
simulated board. Runs inside the MicroPython VM that ``sim/virtual_device/repl.mjs`` drives, at power-on and
after every soft reboot:

    from sim.virtual_device import vm_boot
    vm_boot.boot(faults=["mlx90614:pec"], scenario_path="/scenario.bin", seed=7)

mounts the flash at ``/flash`` (``FlashVfs``: the files ``repl.mjs`` mirrors from the host folder
into ``/.flashfs``, with errors numbered as on the ESP32), builds the ``SimBoard`` on it, makes it
the board ``firmware.boards.current()`` returns, makes ``/flash`` the working directory (the root
filesystem of a real board, where ``mpremote fs cp x :x`` writes), and lets ``board.clock``'s
sleeps notice a Ctrl-C from the serial line (the ``vdev`` JS module's ``poll()``), so that a
firmware loop can be interrupted like on the ESP32.
"""
import os

# The WebAssembly build's C library numbers errors the WASI way (ENOENT is 44); MicroPython on the
# ESP32, its ``errno`` module and host tools such as mpremote use the Linux numbers.
_WASI_ERRNO = {63: 1, 44: 2, 29: 5, 8: 9, 6: 11, 48: 12, 2: 13, 10: 16, 20: 17, 75: 18, 43: 19, 54: 20,
               31: 21, 28: 22, 22: 27, 51: 28, 69: 30, 37: 36, 55: 39, 58: 95}


def _errno(e):
    n = e.args[0] if e.args else 0
    return OSError(_WASI_ERRNO.get(n, n)) if isinstance(n, int) else e


# The flash partition a MicroPython build for a 4 MB ESP32 gives its filesystem (littlefs, 4 KB
# blocks): what ``os.statvfs`` reports, so that ``mpremote df`` shows a board's figures.
FLASH_BLOCK = 4096
FLASH_BLOCKS = 512          # 2 MiB


class FlashVfs:
    """A MicroPython VFS over a folder of the interpreter's own filesystem (``os.VfsPosix(root)``)
    that raises ``OSError`` with the ESP32's error numbers and reports the ESP32's 2 MiB littlefs
    partition in ``statvfs``. Mount with ``os.mount(vfs, "/flash")``."""

    def __init__(self, root):
        self.root = root.rstrip("/")
        self.v = os.VfsPosix(root)

    def __repr__(self):
        return "<VfsLfs2>"      # what the ESP32's flash filesystem prints as

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        try:
            return self.v.open(path, mode)
        except OSError as e:
            raise _errno(e)

    def stat(self, path):
        try:
            return self.v.stat(path)
        except OSError as e:
            raise _errno(e)

    def statvfs(self, path):
        """(bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax) of the
        2 MiB partition; used blocks counted as littlefs does (whole blocks per file and
        folder, 2 for the superblock pair)."""
        try:
            self.v.stat(path)
        except OSError as e:
            raise _errno(e)
        used = 2 + self._blocks("")
        free = FLASH_BLOCKS - used if used < FLASH_BLOCKS else 0
        return (FLASH_BLOCK, FLASH_BLOCK, FLASH_BLOCKS, free, free, 0, 0, 0, 0, 255)

    def _blocks(self, path):
        n = 0
        for ent in self.v.ilistdir(path or "/"):
            p = path + "/" + ent[0]
            if ent[1] == 0x4000:
                n += 1 + self._blocks(p)
            else:
                n += (self.v.stat(p)[6] + FLASH_BLOCK - 1) // FLASH_BLOCK
        return n

    def ilistdir(self, path):
        """(name, type, inode, size) as on the ESP32's littlefs (VfsPosix omits the size)."""
        try:
            out = []
            base = path.rstrip("/") + "/"
            for ent in self.v.ilistdir(path):
                size = 0 if ent[1] == 0x4000 else self.v.stat(base + ent[0])[6]
                out.append((ent[0], ent[1], 0, size))
            return iter(out)
        except OSError as e:
            raise _errno(e)

    def mkdir(self, path):
        try:
            self.v.mkdir(path)
        except OSError as e:
            raise _errno(e)

    def rmdir(self, path):
        try:
            self.v.rmdir(path)
        except OSError as e:
            raise _errno(e)

    def remove(self, path):
        try:
            self.v.remove(path)
        except OSError as e:
            raise _errno(e)

    def rename(self, old, new):
        # VfsPosix(root).rename fails with ENOENT on the WebAssembly port (the root is not applied):
        # rename through the interpreter's root filesystem instead (replaces ``new``, as littlefs)
        try:
            os.rename(self.root + "/" + old.lstrip("/"), self.root + "/" + new.lstrip("/"))
        except OSError as e:
            raise _errno(e)

    def chdir(self, path):
        try:
            self.v.chdir(path)
        except OSError as e:
            raise _errno(e)

    def getcwd(self):
        return self.v.getcwd()


def mount_flash(store="/.flashfs", at="/flash"):
    """Mount ``store`` (a folder of the interpreter's filesystem) at ``at`` as the flash, and
    make ``vfs.mount()`` list only it: the interpreter's own root (where the frozen image lives)
    is not a filesystem of the board (``mpremote df`` shows what a board shows)."""
    import sys
    import vfs as _vfs

    os.mount(FlashVfs(store), at)

    class _Vfs:
        VfsPosix = _vfs.VfsPosix
        umount = staticmethod(_vfs.umount)

        @staticmethod
        def mount(*args):
            if args:
                return _vfs.mount(*args)
            return [m for m in _vfs.mount() if m[1] != "/"]

    sys.modules["vfs"] = _Vfs   # `import vfs` looks in sys.modules first


class Instruments:
    """The technician's reference instruments in front of the sensors, wrapping the scenario:

    - a blackbody calibrator: while set (``blackbody_c``), the MLX90614 sees its temperature;
    - an SpO2 simulator: while set (``spo2`` %, ``bpm``, ``pi_pm`` the IR perfusion in per mille,
      default 20), the MAX30102 sees a finger whose ratio of ratios is the simulator's reference
      curve R = (110 − SpO2) / 25 (the classic linear curve; the device's own default curve
      differs by design, which is what calibration against the simulator corrects).

    ``apply(settings)`` takes the dict ``nabd sim instrument`` writes; absent keys turn an
    instrument off."""

    def __init__(self, base, errors=None):
        self.base = base
        self.blackbody_mc = None
        self.sim = None
        # this unit's own errors before calibration (``unit_errors``): the thermometer reads
        # T·gain + offset of what is in front of it; the optical path turns R into R·r_gain
        self.gain_ppm, self.offset_mc, self.r_ppm = errors or (1000000, 0, 1000000)

    def apply(self, settings):
        from sim.hardware.scenario import PulseScenario

        bb = settings.get("blackbody_c")
        # blackbody_error_c: a blackbody out of tolerance, its cavity that far from its setpoint
        bb_err = settings.get("blackbody_error_c") or 0
        self.blackbody_mc = None if bb is None else int(round((bb + bb_err) * 1000))
        spo2 = settings.get("spo2")
        if spo2 is None:
            self.sim = None
            return
        r_pm = (110000 - int(round(spo2 * 1000))) // 25          # R × 1000
        r_pm = r_pm * self.r_ppm // 1000000                      # this unit's optical path
        ir_ac_pm = int(settings.get("pi_pm", 20))
        sim = PulseScenario(bpm=int(settings.get("bpm", 72)), ir_ac_pm=ir_ac_pm)
        sim.red_ac = sim.red * ir_ac_pm * r_pm // 1000000
        self.sim = sim

    def optical(self, t_us, out):
        (self.sim or self.base).optical(t_us, out)

    def object_mc(self, t_us):
        v = self.blackbody_mc if self.blackbody_mc is not None else self.base.object_mc(t_us)
        return v + v * (self.gain_ppm - 1000000) // 1000000 + self.offset_mc

    def ambient_mc(self, t_us):
        return self.base.ambient_mc(t_us)

    def finger(self, t_us):
        return True if self.sim is not None else self.base.finger(t_us)


def unit_errors(seed):
    """A unit's errors before calibration, fixed by its ``seed`` (so by its flash folder):
    thermometer gain 1 ± 1.0–2.5 % and offset ± 0.3–0.7 °C (same sign), optical R gain
    1 ± 4–8 %. Returns
    ``(temp_gain_ppm, temp_offset_mc, r_gain_ppm)``; the same under CPython and MicroPython."""
    x = [seed & 0x7FFFFFFF]

    def nxt():
        x[0] = (1103515245 * x[0] + 12345) & 0x7FFFFFFF
        return x[0] >> 8                    # 23 random bits

    def mag(lo, hi):                        # a magnitude in [lo, hi)
        return lo + nxt() * (hi - lo) // (1 << 23)

    # gain and offset err the same way (a unit reading high reads high across the range, as a
    # mis-set emissivity or a warm lens does), so the error shows at every temperature
    sign = 1 if nxt() & 1 else -1
    r_sign = 1 if nxt() & 1 else -1
    return (1000000 + sign * mag(10000, 25000), sign * mag(300, 700), 1000000 + r_sign * mag(40000, 80000))


_unit_errors = unit_errors


def boot(faults=(), scenario_path=None, seed=1, unix_time=None, storage_root="/flash", store=None,
         instruments=None, unit_errors=False):
    """Build the simulated board and make it current; returns it. ``scenario_path``: a scenario
    file for ``ArrayScenario.load`` (None: the default steady finger); ``unix_time``: host wall
    clock in Unix seconds at boot (None: never synced); ``unit_errors``: give the unit the errors
    of ``unit_errors(seed)`` (what calibration corrects)."""
    if store:
        mount_flash(store, storage_root)
        # the flash is the working directory before the firmware is imported, as on the ESP32
        # (sys.path starts with ''): firmware deployed there (``nabd deploy``'s .mpy files)
        # shadows the frozen image in /lib
        os.chdir(storage_root)

    from firmware import boards
    from sim.hardware.board import SimBoard

    if scenario_path:
        from sim.hardware.scenario import ArrayScenario

        scenario = ArrayScenario.load(scenario_path)
    else:
        from sim.hardware.scenario import PulseScenario

        scenario = PulseScenario()
    inst = Instruments(scenario, _unit_errors(seed) if unit_errors else None)
    if instruments:
        inst.apply(instruments)
    board = SimBoard(scenario=inst, faults=list(faults), storage_root=storage_root, seed=seed,
                     unix_time=unix_time)
    board.instruments = inst
    hook_interrupts(board)
    boards.set_current(board)
    os.chdir(storage_root)
    return board


def hook_interrupts(board):
    """Poll the serial line for Ctrl-C, and the host for new instrument settings, whenever the
    firmware sleeps (virtual time only advances there or on the bus, so every firmware loop passes
    through it). No-op outside the device."""
    try:
        import vdev  # the JS module sim/virtual_device/repl.mjs registers
    except ImportError:
        return
    poll = vdev.poll
    clock = board.clock
    sleep_ms = clock.sleep_ms
    sleep_us = clock.sleep_us

    def _poll():
        changed = poll()          # None, or the instrument settings (JSON) when they changed
        if changed:
            import json

            board.instruments.apply(json.loads(changed))

    def _sleep_ms(ms):
        _poll()
        sleep_ms(ms)

    def _sleep_us(us):
        _poll()
        sleep_us(us)

    clock.sleep_ms = _sleep_ms
    clock.sleep_us = _sleep_us
    hook_time_sleep(_poll)


SLEEP_SLICE_MS = 20   # how late a Ctrl-C in time.sleep() is seen at worst


def hook_time_sleep(poll):
    """Make ``time.sleep``/``sleep_ms``/``sleep_us`` interruptible by Ctrl-C: the WebAssembly
    port's own sleep blocks the interpreter's thread and never looks at the serial line, so sleep
    in slices of ``SLEEP_SLICE_MS`` with a ``poll()`` between them (the ESP32's sleep is
    interruptible the same way; its time module's functions are assignable here)."""
    import time

    real_ms = time.sleep_ms
    real_us = time.sleep_us
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff

    def sleep_ms(ms):
        t0 = ticks_ms()
        while True:
            poll()
            left = ms - ticks_diff(ticks_ms(), t0)
            if left <= 0:
                return
            real_ms(left if left < SLEEP_SLICE_MS else SLEEP_SLICE_MS)

    def sleep(s):
        """Seconds (int or float)."""
        sleep_ms(int(s * 1000))

    def sleep_us(us):
        if us >= 1000 * SLEEP_SLICE_MS:
            sleep_ms(us // 1000)
            us %= 1000
        poll()
        real_us(us)

    time.sleep_ms = sleep_ms
    time.sleep = sleep
    time.sleep_us = sleep_us
