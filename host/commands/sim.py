"""``nabd sim``: the virtual device.

- ``run --state DIR --broker mqtt://HOST:PORT [--scenario NAME] [--readings N] [--seed S]
  [--timeout S]``: the unchanged firmware (``firmware.main``) on the simulated board under CPython,
  with real sockets to the broker. Its flash (config.json, outbox, seq, logs) lives in DIR and is
  kept across runs; a fresh identity is made when DIR has none. It takes N measurements on the
  named physiology scenario (button presses simulated) and exits 0 once every reading in the
  outbox was acknowledged by the gateway (signed ack), or 1 at the timeout with the outbox kept for
  the next run (3 when the broker never answered: the readings are kept all the same). Secrets are never printed by ``run``.
- ``identity --state DIR [--broker URL] --json``: creates the identity if needed and prints
  ``device_id``, ``key`` (hex), ``key_version``, ``mqtt_password``: what a technician (or a test)
  needs to register the device with the gateway and the broker. It prints secrets: on purpose.
- ``screenshot --scenario NAME --out FILE.png [--at idle|measuring|result|info]``: one simulated
  measurement ON THE MICROPYTHON VM (no network: an in-memory peer plays broker and gateway) and a
  PNG of what the screen shows at that moment.

The simulated clock: firmware time is virtual (a measurement takes milliseconds of real time); the
wall clock the readings carry (``ts``) is the host's real time, so the gateway's skew check sees a
device whose clock was synced by NTP.
"""
from __future__ import annotations

import tempfile
import time
import zlib
from pathlib import Path

from host.cli import add_common
from nabd_cli import EXIT_DATA, EXIT_DEVICE, EXIT_FAIL, EXIT_OK, EXIT_USAGE, CommandError, emit_json

AT = ("idle", "measuring", "result", "info")
PRESS_MS = 120        # a short press
DWELL_MS = 1500       # time the virtual user looks at a screen before the next press
SECONDS_PER_READING = 50


def _scenarios() -> tuple[str, ...]:
    from sim import physiology

    return physiology.SCENARIOS


def write_scenario(name: str, seed: int, duration_s: float, path: Path) -> Path:
    """Render the named physiology scenario into the file ``ArrayScenario.load`` reads."""
    from sim import physiology

    if name not in physiology.SCENARIOS:
        raise CommandError(f"unknown scenario {name!r}; known: {', '.join(physiology.SCENARIOS)}", EXIT_USAGE)
    return physiology.write_scenario(path, physiology.scenario(name, seed=seed, duration_s=duration_s))


def _board_seed(state: Path) -> int:
    """The simulated MAC's last 3 bytes: stable for a state folder, different between folders."""
    return zlib.crc32(str(state.resolve()).encode()) & 0xFFFFFF


def make_board(state: Path, scenario=None, accel: bool = False):
    """A SimBoard whose flash is ``state`` and whose wall clock is the host's; ``accel``: with the
    optional LIS3DH accelerometer fitted."""
    from sim.hardware.board import SimBoard

    board = SimBoard(scenario=scenario, storage_root=str(state), seed=_board_seed(state), unix_time=int(time.time()),
                     accel=accel)
    board.clock.unix_time = lambda: int(time.time())  # NTP-synced device: host wall clock
    board.clock.sync_time = lambda: True
    return board


def identity(state: Path, broker: str | None = None):
    """Load (or create) the identity in ``state``; point it at ``broker`` when given."""
    from firmware import config

    state.mkdir(parents=True, exist_ok=True)
    board = make_board(state)
    try:
        cfg = config.create_identity(board, broker=broker or "mqtt://127.0.0.1:1883")
    except config.ConfigError as e:
        raise CommandError(f"{state / config.NAME}: {e}", EXIT_DATA) from None
    if broker and cfg.broker != broker:
        data = dict(cfg.data)
        data["broker"] = broker
        try:
            cfg = config.save(board, data)
        except config.ConfigError as e:
            raise CommandError(f"--broker: {e}", EXIT_USAGE) from None
    return cfg


# --- nabd sim identity ---------------------------------------------------------------------------

def cmd_identity(args) -> int:
    cfg = identity(Path(args.state), args.broker)
    out = {"device_id": cfg.device_id, "key": cfg.data["key"], "key_version": cfg.key_version,
           "mqtt_password": cfg.mqtt_password, "broker": cfg.broker}
    if args.json:
        emit_json(out)
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return EXIT_OK


# --- nabd sim run ----------------------------------------------------------------------------------

class Driver:
    """The virtual user: presses the button for each measurement, watches the outbox, stops at
    the deadline. ``until(app)`` for ``firmware.main.run``."""

    def __init__(self, board, readings: int, timeout_s: float, say=None):
        self.board = board
        self.readings = readings
        self.deadline = time.monotonic() + timeout_s
        self.say = say or (lambda s: None)
        self.pressed_at = None
        self.results: list[dict] = []
        self.timed_out = False
        self.done = False
        self._seen = 0

    def __call__(self, app) -> bool:
        c = self.board.clock
        now = c.ticks_ms()
        btn = self.board.button
        if self.pressed_at is not None:
            if c.ticks_diff(now, self.pressed_at) >= PRESS_MS:
                btn.release()
                self.pressed_at = None
        elif (app.readings < self.readings and app.state in ("idle", "result", "error")
              and app._elapsed() >= DWELL_MS):
            btn.press()
            self.pressed_at = now
        if app.measurements > self._seen:
            self._seen = app.measurements
            r = app.result.to_dict()
            self.results.append(r)
            self.say(_describe(r))
        idle = app.state in ("idle", "result", "info", "error")
        if app.readings >= self.readings and idle and app.uplink.queued == 0:
            self.done = True
            return True
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return True
        if idle:
            time.sleep(0.002)  # waiting on the network: do not spin a core
        return False


def _describe(r: dict) -> str:
    from firmware.ui import temp_text

    parts = [f"seq {r['seq']}" if r["seq"] is not None else "not recorded",
             f"T {temp_text(r['temp_cc'])} C", f"SpO2 {r['spo2'] if r['spo2'] is not None else '--'} %",
             f"pulse {r['hr'] if r['hr'] is not None else '--'} /min"]
    if r["reason"]:
        parts.append(f"({r['reason']})")
    if r["alerts"]:
        parts.append("alerts: " + ",".join(r["alerts"]))
    return "reading " + ", ".join(parts)


def run_device(state: Path, broker: str, scenario: str = "normal", readings: int = 1, seed: int = 0,
               timeout_s: float = 120.0, say=None, accel: bool = False) -> dict:
    """``nabd sim run`` as a function; returns the summary dict (``ok`` True when every reading in
    the outbox was acknowledged before the timeout)."""
    from firmware import main
    from sim.hardware.scenario import ArrayScenario

    cfg = identity(state, broker)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_scenario(scenario, seed, readings * SECONDS_PER_READING + 30, Path(tmp) / "scenario.bin")
        sc = ArrayScenario.load(str(path))
    board = make_board(state, sc, accel)
    dev = main.build(board, cfg)
    first = dev.outbox.depth
    seq0 = dev.uplink.seq.last
    drv = Driver(board, readings, timeout_s, say)
    try:
        main.run(board, dev=dev, until=drv)
    finally:
        dev.uplink.close()
    seqs = [r["seq"] for r in drv.results if r["seq"] is not None]
    return {"ok": drv.done, "device_id": cfg.device_id, "scenario": scenario, "readings": len(drv.results),
            "seqs": seqs, "seq_before": seq0, "waiting_before": first, "acked": dev.uplink.acked, "connects": dev.uplink.connects,
            "queued": dev.outbox.depth, "drops": dev.outbox.drops, "errors": dev.uplink.errors,
            "last_error": dev.app.last_error or dev.uplink.last_error, "results": drv.results,
            "virtual_s": board.clock.ticks_ms() // 1000, "timed_out": drv.timed_out}


def cmd_run(args) -> int:
    from firmware import config

    if args.readings < 1:
        raise CommandError("--readings must be >= 1", EXIT_USAGE)
    try:
        config.parse_broker(args.broker)
    except config.ConfigError as e:
        raise CommandError(f"--broker: {e}", EXIT_USAGE) from None
    say = None if args.json else print
    out = run_device(Path(args.state), args.broker, args.scenario, args.readings, args.seed, args.timeout, say,
                     accel=args.accel)
    if not out["ok"] and not out["connects"]:
        # measured offline, as a device does; but nothing was delivered because the broker never answered
        msg = (f"{out['device_id']}: never reached the broker at {args.broker} ({out['last_error']}); "
               f"{out['queued']} readings kept in the outbox in {args.state}: start the broker, or correct --broker")
        if not args.json:
            raise CommandError(msg, EXIT_DEVICE)
        emit_json(out | {"error": msg, "exit": EXIT_DEVICE})
        return EXIT_DEVICE
    if args.json:
        emit_json(out)
    elif out["ok"]:
        print(f"{out['device_id']}: {out['readings']} readings (seq {', '.join(map(str, out['seqs']))}) "
              f"acknowledged by the gateway; outbox empty")
    else:
        print(f"{out['device_id']}: timed out after {args.timeout:g} s with {out['queued']} readings waiting "
              f"in the outbox (kept in {args.state}); last error: {out['last_error']}")
    return EXIT_OK if out["ok"] else EXIT_FAIL


# --- nabd sim screenshot ------------------------------------------------------------------------------

# The device's objects and helpers, as names in the VM's session (tests and screen_at use them).
VM_DEVICE = """
from firmware import config, main
from sim.hardware.stepped_device import SteppedDevice
sd = SteppedDevice('/scenario.bin', unix_time=UNIX0)
board, cfg, peer, dev, app = sd.board, sd.cfg, sd.peer, sd.dev, sd.app
steps, press, until, frame = sd.steps, sd.press, sd.until, sd.frame
"""


def vm_device(vm, scenario: str, seed: int = 0, duration_s: float = 45.0, unix0: int = 1795430400) -> None:
    """Set up the device (board, loopback peer, app) in a MicroPython VM on the named scenario."""
    with tempfile.TemporaryDirectory() as tmp:
        data = write_scenario(scenario, seed, duration_s, Path(tmp) / "scenario.bin").read_bytes()
    vm.write_file("/scenario.bin", data)
    vm.exec(VM_DEVICE.replace("UNIX0", str(int(unix0))))


def screen_at(vm, at: str) -> str:
    """Drive the VM device to the moment ``at`` and return the frame (hex)."""
    if at == "idle":
        vm.exec("steps(3)")
    else:
        vm.exec("steps(3)\npress()")
        if at == "measuring":
            ok = vm.eval("until(lambda: app.ui.screen == 'measuring' or app.state == 'result')")
        else:
            ok = vm.eval("until(lambda: app.state == 'result' and app.result.state in ('stored', 'nothing to send'))"
                         " and until(lambda: app.ui.screen == 'result')")
            if ok and at == "info":
                ok = vm.eval("[press(1600), app.ui.screen == 'info'][1]")
        if not ok:
            raise CommandError(f"the simulated device never reached the {at!r} screen "
                               f"(state {vm.eval('app.state')!r}, error {vm.eval('app.last_error')!r})", EXIT_DEVICE)
    return vm.eval("frame()")


def screenshot(scenario: str, out: Path, at: str = "result", seed: int = 0, scale: int = 4) -> dict:
    from host import screenshot as shot
    from host.mpvm import MicroPythonError, MicroPythonVM, VMUnavailable

    try:
        with MicroPythonVM() as vm:
            vm_device(vm, scenario, seed)
            fr = screen_at(vm, at)
            state = vm.eval("[app.state, app.ui.screen, app.result.to_dict() if app.result else None]")
    except VMUnavailable as e:
        raise CommandError(str(e), EXIT_DEVICE) from None
    except MicroPythonError as e:
        raise CommandError(f"firmware error on the MicroPython VM:\n{e.traceback}", EXIT_DEVICE) from None
    shot.to_png(fr, out, scale=scale)
    return {"ok": True, "out": str(out), "at": at, "scenario": scenario, "screen": state[1],
            "result": state[2], "ascii": shot.ascii_art(fr)}


def cmd_screenshot(args) -> int:
    if args.scale < 1:
        raise CommandError("--scale must be >= 1", EXIT_USAGE)
    out = screenshot(args.scenario, Path(args.out), args.at, args.seed, args.scale)
    if args.json:
        emit_json({k: v for k, v in out.items() if k != "ascii"})
    else:
        print(out["ascii"])
        print(f"saved {out['out']} ({args.at}, scenario {args.scenario})")
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser("sim", help="the virtual device: run it against a broker, screenshots",
                              description="The virtual device: the unchanged firmware on a simulated "
                              "board, measuring against a real broker, behind a pseudo-terminal, or on the "
                              "MicroPython VM for screenshots.")
    sub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")

    r = sub.add_parser("run", help="run the virtual device: N measurements, published and acknowledged")
    add_common(r, port=False)
    r.add_argument("--state", required=True, help="folder holding the device's flash (kept across runs)")
    r.add_argument("--broker", required=True, help="mqtt://HOST:PORT (or mqtts://)")
    r.add_argument("--scenario", default="normal", help="physiology scenario (default normal)")
    r.add_argument("--readings", type=int, default=1, help="measurements to take (default 1)")
    r.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    r.add_argument("--accel", action="store_true",
                   help="fit the optional LIS3DH accelerometer (the chain's motion reference; lying still)")
    r.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up (default 120)")
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("identity", help="print (creating if needed) the virtual device's identity and secrets")
    add_common(i, port=False)
    i.add_argument("--state", required=True, help="folder holding the device's flash")
    i.add_argument("--broker", default=None, help="broker URL to store in config.json")
    i.set_defaults(func=cmd_identity)

    s = sub.add_parser("screenshot", help="PNG of the screen during a simulated measurement (MicroPython VM)")
    add_common(s, port=False)
    s.add_argument("--scenario", default="normal", help="physiology scenario (default normal)")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--at", choices=AT, default="result", help="moment to capture (default result)")
    s.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    s.add_argument("--scale", type=int, default=4, help="pixels per OLED pixel (default 4)")
    s.set_defaults(func=cmd_screenshot)

    from sim.virtual_device.serial_bridge import add_device_parser

    add_device_parser(sub)

    from host.commands.fleet import add_parser as add_fleet_parser

    add_fleet_parser(sub)

    from sim.bootloader import add_parser as add_bootloader_parser

    add_bootloader_parser(sub)

    def no_sub(args) -> int:
        p.print_help()
        return EXIT_USAGE

    p.set_defaults(func=no_sub)

