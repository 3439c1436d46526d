"""A whole nabd device on the simulated board, stepped by hand: what screenshots and the workflow
tests drive inside the MicroPython VM (also runs under CPython).

The device talks to an in-memory broker and gateway (``Loopback``), so a measurement is published
and acknowledged without sockets. Time is the board's virtual clock: it advances only when the
firmware waits or talks on the bus.

    sd = SteppedDevice('/scenario.bin', unix_time=1795430400)
    sd.press()                                   # the button, 120 ms
    sd.until(lambda: sd.app.state == 'result')   # step until a condition (or the limit)
"""
from sim.hardware.scenario import ArrayScenario
from sim.hardware.board import SimBoard
from sim.hardware.loopback import Loopback
from firmware import config, main


class SteppedDevice:
    """``scenario_path``: a rendered scenario file; ``unix_time``: the clock's start (s since 1970);
    the flash is ``storage_root`` (a folder); ``accel=True`` fits the optional LIS3DH (lying still
    unless ``board.lis.motion`` is set)."""

    def __init__(self, scenario_path, unix_time, storage_root='/flash', accel=False):
        self.scenario_path = scenario_path
        self.accel = accel
        self.storage_root = storage_root
        self.board = board = self._board(unix_time)
        self.cfg = config.create_identity(board)
        self._start(main.build(self._connect(board), self.cfg))

    def _board(self, unix_time):
        return SimBoard(scenario=ArrayScenario.load(self.scenario_path), storage_root=self.storage_root,
                        unix_time=unix_time, accel=self.accel)

    def _connect(self, board):
        self.peer = Loopback(self.cfg.key, self.cfg.kid)
        board.network.stream_factory = self.peer.open
        return board

    def _start(self, dev):
        self.dev, self.cfg, self.app = dev, dev.cfg, dev.app

    def reboot(self):
        """Power cycle: a fresh board on the same flash (the clock goes on); the firmware reads its
        configuration back from flash, as at power-on."""
        self.board = self._board(self.board.clock.unix_time())
        self._start(main.build(self._connect(self.board)))

    def steps(self, n):
        for _ in range(n):
            self.app.step()

    def press(self, ms=120):
        """Hold the button for ``ms`` milliseconds of device time, stepping the firmware."""
        board, app = self.board, self.app
        board.button.press()
        t = board.clock.ticks_ms()
        while board.clock.ticks_diff(board.clock.ticks_ms(), t) < ms:
            app.step()
        board.button.release()
        app.step()

    def until(self, pred, limit=3000):
        """Step until ``pred()`` is true, at most ``limit`` steps; returns ``pred()``."""
        for _ in range(limit):
            if pred():
                return True
            self.app.step()
        return pred()

    def frame(self):
        """The OLED's frame buffer, hex."""
        return self.board.oled.frame().hex()
