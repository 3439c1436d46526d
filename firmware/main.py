"""Entry point: build the device from its board and run the measurement loop forever.

On the ESP32 (``boot.py`` imports nothing heavy; MicroPython then runs ``main.py``)::

    import firmware.main        # builds firmware.boards.esp32.Esp32Board and calls run()

For the virtual device and tests::

    from firmware import main
    dev = main.build(board)                     # config, drivers, chains, uplink, app
    main.run(board, dev=dev, max_readings=3)    # returns after 3 readings were submitted
    main.run(board, until=lambda app: ...)      # or when until(app) is true (checked every step)

``build`` never raises for a sensor or display fault: the part is marked in ``uplink.sensors``
and the app shows the error when it is used. A missing or invalid ``config.json`` is shown on the
screen and the device waits (feeding the watchdog) for a technician: nothing can be signed
without the key.
"""
from firmware import config as config_mod
from firmware.app import App
from firmware.drivers.max30102 import MAX30102
from firmware.drivers.mlx90614 import MLX90614
from firmware.drivers.ssd1306 import SSD1306
from firmware.log import Log
from firmware.outbox import Outbox
from firmware.seq import SeqCounter
from firmware.ui import UI
from firmware.uplink import Uplink


class Device:
    """What ``build`` made: ``board``, ``cfg``, ``log``, ``ui``, ``outbox``, ``uplink``, ``app``."""

    def __init__(self, **kw):
        for k in kw:
            setattr(self, k, kw[k])


def _display(board, log):
    try:
        return SSD1306(board.i2c)
    except Exception as e:  # noqa: BLE001 - the device measures without a screen
        log.error("display", str(e))
        return None


def make_chains(cfg):
    """The SpO2/pulse chain and the temperature chain, calibrated from ``cfg.calibration``."""
    from firmware.signal import calibration
    from firmware.signal.pulseox import PulseOx
    from firmware.signal.temperature import TempProcessor

    cal = calibration.from_config(cfg.calibration if cfg is not None else None)
    return PulseOx(cal=cal), TempProcessor(cal.temp_gain_ppm, cal.temp_offset_cc, "forehead")


def build(board, cfg=None, outbox_capacity=1000):
    """Everything the loop needs, on ``board``. ``cfg``: a Config (default: ``config.json``)."""
    log = Log(board)
    ui = UI(_display(board, log))
    if cfg is None:
        cfg = config_mod.load(board)
    box = Outbox(board, capacity=outbox_capacity)
    seq = SeqCounter(board, floor=box.max_seq)
    up = Uplink(board, cfg, box, seq, log)
    mlx = MLX90614(board.i2c, clock=board.clock)
    mx = MAX30102(board.i2c, clock=board.clock)
    pulseox, thermo = make_chains(cfg)
    if getattr(board, "accel", None) is not None:
        # the optional accelerometer is fitted: the chain gets its motion reference
        from firmware.signal.motion import MotionRef

        pulseox.motion = MotionRef()
    app = App(board, ui, mlx, mx, pulseox, thermo, up, log, cfg)
    up.on_command = app.command
    log.info("main", "started, device %s, %d readings waiting" % (cfg.device_id, box.depth))
    return Device(board=board, cfg=cfg, log=log, ui=ui, outbox=box, uplink=up, app=app)


def run(board, dev=None, cfg=None, max_readings=None, until=None):
    """Run the loop: forever, or until ``max_readings`` readings were submitted (and their result
    shown), or until ``until(app)`` is true. Returns the Device."""
    if dev is None:
        dev = build(board, cfg)
    app = dev.app
    while True:
        app.step()
        if max_readings is not None and app.readings >= max_readings and app.state != "temp" \
                and app.state != "ppg":
            return dev
        if until is not None and until(app):
            return dev


def _no_config(board, err):
    """Show why the device cannot start, feed the watchdog, and wait for provisioning."""
    log = Log(board)
    log.error("main", str(err))
    ui = UI(_display(board, log))
    try:
        ui.error("config", str(err), "provision me")
    except Exception:  # noqa: BLE001
        pass
    while True:
        board.wdt_feed()
        board.clock.sleep_ms(1000)
        if config_mod.exists(board):
            try:
                config_mod.load(board)
                board.reset()
            except config_mod.ConfigError:
                pass


def start(board):
    """Boot sequence: NTP when the network allows it, then ``run`` forever. A production device
    (``config.json`` ``"production": true``) locks the REPL first (``board.lock_repl()``: Ctrl-C
    no longer breaks into it) and resets on a crash instead of stopping at the prompt, where
    anyone with a USB cable could read ``config.json``."""
    try:
        cfg = config_mod.load(board)
    except config_mod.ConfigError as e:
        _no_config(board, e)
        return
    if not cfg.production:
        run(board, cfg=cfg)
        return
    board.lock_repl()
    try:
        run(board, cfg=cfg)
    except Exception as e:  # noqa: BLE001 - logged, then a reset: never the REPL
        try:
            Log(board).error("main", "crash, resetting: " + repr(e))
        except Exception:  # noqa: BLE001
            pass
        board.reset()


def _esp32():
    from firmware.boards.esp32 import Esp32Board

    start(Esp32Board())


if __name__ == "__main__":
    _esp32()
