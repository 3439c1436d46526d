"""The virtual device: to every host tool, an ESP32 running nabd on a serial port.

``VirtualDevice(state)`` opens a pseudo-terminal pair, starts ``sim/virtual_device/repl.mjs`` (the real
MicroPython, WebAssembly build under Node.js, running the firmware on the simulated board) and
bridges bytes between the pty's master side and the interpreter. Host tools open the slave side,
``port`` (``/dev/pts/N``), exactly as they open ``/dev/ttyUSB0``::

    dev = VirtualDevice(Path("state"), faults=["mlx90614:pec"])
    port = dev.start()                       # "/dev/pts/5"
    dev.serve()                              # bridge until dev.stop() (or the interpreter exits)

    $ mpremote connect /dev/pts/5 exec "print(1+1)"
    $ nabd selftest --port /dev/pts/5

``state`` is the device's flash (the same folder ``nabd sim run --state`` uses): it appears as
``/flash`` inside the device (the working directory, so ``mpremote fs cp x :x`` lands in it) and is
written through after every command (see ``sim/virtual_device/repl.mjs``), so provisioning survives a soft
reboot, a restart of this process and a SIGTERM. The serial protocol, soft reboot and Ctrl-C
handling are documented in ``sim/virtual_device/repl.mjs``.

Like a UART nobody listens to, output that no client reads is dropped once the pty and a 64 KB
buffer are full (and pyserial flushes stale input when a client opens the port).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import termios
import tty
import zlib
from pathlib import Path

from host.mpvm import REPO, check_available, node_modules_dir

PENDING_MAX = 64 * 1024


def instruments_path(state: Path) -> Path:
    """The reference instruments' settings of the device whose flash is ``state``: a JSON file
    beside the folder (not in it: it is not part of the device), ``<state>.instruments.json``."""
    state = Path(state).resolve()
    return state.with_name(state.name + ".instruments.json")


def board_seed(state: Path) -> int:
    """The simulated MAC's last 3 bytes: stable for a state folder (same formula as
    ``nabd sim run``, so both see the same unit)."""
    return zlib.crc32(str(Path(state).resolve()).encode()) & 0xFFFFFF


class VirtualDevice:
    """One virtual device on a pty. ``faults``: names from ``sim.hardware.board.FAULTS``;
    ``scenario_file``: a rendered scenario (``sim.physiology.write_scenario``) the
    sensors play back (None: a steady finger at 36.8 degC)."""

    def __init__(self, state: Path, faults: list[str] | tuple[str, ...] = (), scenario_file: Path | None = None,
                 heapsize: int = 1024 * 1024, unit_errors: bool = False):
        self.state = Path(state)
        self.unit_errors = unit_errors
        self.faults = list(faults)
        self.scenario_file = scenario_file
        self.heapsize = heapsize
        self.port: str | None = None
        self.proc: subprocess.Popen | None = None
        self._master = self._slave = -1
        self._stop = False
        self.dropped = 0

    def start(self) -> str:
        """Open the pty, start the interpreter; return the port (the pty's slave path)."""
        check_available()
        self.state.mkdir(parents=True, exist_ok=True)
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)   # bytes as they are: no echo, no CR/LF mapping
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        cfg = {"repo": str(REPO), "flash": str(self.state.resolve()), "faults": self.faults,
               "seed": board_seed(self.state), "heapsize": self.heapsize,
               "instruments": str(instruments_path(self.state)), "unit_errors": self.unit_errors,
               "scenario": str(self.scenario_file) if self.scenario_file else None}
        self.proc = subprocess.Popen(
            ["node", str(Path(__file__).with_name("repl.mjs")), json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO),
            env={**os.environ, "NODE_PATH": str(node_modules_dir())})
        return self.port

    def stop(self) -> None:
        """Ask ``serve`` to return (safe from a signal handler)."""
        self._stop = True

    def serve(self) -> int:
        """Bridge bytes until ``stop()`` or the interpreter exits; then stop the interpreter
        (SIGTERM: it writes the flash once more) and return its exit code."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        node_in, node_out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        pending = bytearray()
        try:
            while not self._stop:
                wlist = [self._master] if pending else []
                try:
                    r, w, _ = select.select([self._master, node_out], wlist, [], 0.2)
                except InterruptedError:
                    continue
                if node_out in r:
                    data = os.read(node_out, 65536)
                    if not data:
                        break            # the interpreter exited
                    pending += data
                if self._master in r:
                    try:
                        data = os.read(self._master, 65536)
                    except (BlockingIOError, InterruptedError):
                        data = b""
                    if data:
                        os.write(node_in, data)
                if pending:
                    try:
                        n = os.write(self._master, pending)
                        del pending[:n]
                    except BlockingIOError:
                        if len(pending) > PENDING_MAX:
                            # nobody reads the port: drop, like a UART with nobody listening
                            self.dropped += len(pending)
                            pending.clear()
                            termios.tcflush(self._slave, termios.TCIFLUSH)
        except BrokenPipeError:
            pass
        return self.close()

    def close(self) -> int:
        """Stop the interpreter (SIGTERM, then SIGKILL after 5 s) and close the pty."""
        code = 0
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            code = self.proc.returncode
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    if f is not None:
                        f.close()
                except BrokenPipeError:
                    pass
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        return code


# -- ``nabd sim device`` ---------------------------------------------------------------------------
def cmd_device(args) -> int:
    """Start the virtual device, print its port, serve until SIGTERM/SIGINT (exit 0)."""
    import sys
    import tempfile

    from host.cli import EXIT_DEVICE, EXIT_OK, EXIT_USAGE, CommandError, emit_json
    from host.mpvm import VMUnavailable
    from sim.hardware.board import FAULTS

    faults = list(args.fault or [])
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise CommandError(f"unknown fault {', '.join(bad)}; valid faults: {', '.join(FAULTS)}", EXIT_USAGE)
    state = Path(args.state)
    if state.exists() and not state.is_dir():
        raise CommandError(f"--state {state} is not a folder", EXIT_USAGE)
    with tempfile.TemporaryDirectory(prefix="nabd-vdev-") as tmp:
        scenario_file = None
        if args.scenario:
            from host.commands.sim import write_scenario

            scenario_file = write_scenario(args.scenario, args.seed, args.duration, Path(tmp) / "scenario.bin")
        dev = VirtualDevice(state, faults=faults, scenario_file=scenario_file, unit_errors=args.unit_errors)
        try:
            port = dev.start()
        except VMUnavailable as e:
            raise CommandError(str(e), EXIT_DEVICE) from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: dev.stop())
        from host import virtual_ports

        entry = virtual_ports.register(port, "virtual device", f"nabd sim device --state {state}",
                                       state=str(state.resolve()))
        if args.json:
            emit_json({"port": port, "pid": os.getpid(), "state": str(state.resolve()), "faults": faults,
                       "scenario": args.scenario, "instruments": str(instruments_path(state))})
        else:
            print(f"virtual device on {port} (flash {state.resolve()}"
                  + (f", faults {', '.join(faults)}" if faults else "") + "); SIGTERM or Ctrl-C stops it",
                  flush=True)
        try:
            code = dev.serve()
        finally:
            virtual_ports.unregister(entry)
        stopped = dev._stop
    if not stopped:
        raise CommandError(f"the virtual device's interpreter exited ({code})", EXIT_DEVICE)
    if dev.dropped and not args.json:
        print(f"{dev.dropped} output bytes nobody read were dropped", file=sys.stderr)
    return EXIT_OK


def add_device_parser(sub) -> None:
    """Register ``nabd sim device`` on the ``sim`` subcommand's subparsers."""
    from host.cli import add_common

    d = sub.add_parser("device", help="the virtual device on a pseudo-terminal (mpremote, nabd --port work on it)",
                       description="An ESP32 running nabd, as far as host tools can tell: the real MicroPython "
                       "running the firmware on the simulated board, behind a pty speaking the REPL and raw REPL; "
                       "its flash kept in --state.")
    add_common(d, port=False)
    d.add_argument("--state", required=True, help="folder holding the device's flash (kept across runs)")
    d.add_argument("--fault", action="append", metavar="NAME", help="inject a simulated sensor fault (repeatable)")
    d.add_argument("--scenario", default=None, help="physiology scenario the sensors see (default: a steady finger)")
    d.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    d.add_argument("--duration", type=float, default=120.0, help="scenario length in seconds (default 120)")
    d.add_argument("--unit-errors", action="store_true",
                   help="give this unit a thermometer gain/offset error and an optical R error, fixed by its "
                   "flash folder (what `nabd calibrate` corrects)")
    d.set_defaults(func=cmd_device)

    i = sub.add_parser("instrument", help="set the virtual device's reference instruments (blackbody, SpO2 simulator)",
                       description="Set the reference instruments in front of a virtual device's sensors "
                       "(applied while it runs, at its next board-clock sleep; kept for its next start).")
    add_common(i, port=False)
    i.add_argument("--state", required=True, help="the virtual device's flash folder")
    i.add_argument("--blackbody", metavar="DEGC|off", help="blackbody calibrator temperature in degC, or off")
    i.add_argument("--spo2", metavar="PCT|off", help="SpO2 simulator setpoint in %%, or off")
    i.add_argument("--blackbody-error", metavar="DEGC", type=float,
                   help="make the blackbody out of tolerance: its cavity this far from its setpoint (0: fine)")
    i.add_argument("--bpm", type=int, help="SpO2 simulator pulse rate (default 72)")
    i.add_argument("--pi", type=int, metavar="PERMILLE", help="SpO2 simulator IR perfusion, per mille (default 20)")
    i.set_defaults(func=cmd_instrument)


def _setting(value: str, lo: float, hi: float, name: str) -> float | None:
    from host.cli import EXIT_USAGE, CommandError

    if value.lower() == "off":
        return None
    try:
        v = float(value)
    except ValueError:
        raise CommandError(f"--{name}: a number or off, not {value!r}", EXIT_USAGE) from None
    if not lo <= v <= hi:
        raise CommandError(f"--{name}: {v} is outside {lo:g}..{hi:g}", EXIT_USAGE)
    return v


def set_instruments(state: Path, **changes) -> dict:
    """Update the virtual device's reference instruments (``blackbody_c``, ``spo2``, ``bpm``,
    ``pi_pm``; None turns one off) in ``<state>.instruments.json``, atomically; the settings."""
    path = instruments_path(Path(state))
    settings: dict = {}
    if path.exists():
        settings = json.loads(path.read_text())
    settings.update(changes)
    settings = {k: v for k, v in settings.items() if v is not None}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return settings


def cmd_instrument(args) -> int:
    """Update ``<state>.instruments.json`` (atomically) and print the settings."""
    from host.cli import EXIT_DATA, EXIT_OK, EXIT_USAGE, CommandError, emit_json

    path = instruments_path(Path(args.state))
    settings: dict = {}
    if path.exists():
        try:
            settings = json.loads(path.read_text())
        except ValueError as e:
            raise CommandError(f"{path}: not JSON ({e}); delete it to start over", EXIT_DATA) from None
    if args.blackbody is not None:
        settings["blackbody_c"] = _setting(args.blackbody, -20, 120, "blackbody")
    if args.spo2 is not None:
        settings["spo2"] = _setting(args.spo2, 50, 100, "spo2")
    if args.blackbody_error is not None:
        if not -10 <= args.blackbody_error <= 10:
            raise CommandError("--blackbody-error: -10..10 degC", EXIT_USAGE)
        settings["blackbody_error_c"] = args.blackbody_error or None
    if args.bpm is not None:
        if not 20 <= args.bpm <= 250:
            raise CommandError("--bpm: 20..250", EXIT_USAGE)
        settings["bpm"] = args.bpm
    if args.pi is not None:
        if not 1 <= args.pi <= 200:
            raise CommandError("--pi: 1..200 per mille", EXIT_USAGE)
        settings["pi_pm"] = args.pi
    settings = {k: v for k, v in settings.items() if v is not None}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings, sort_keys=True) + "\n")
    os.replace(tmp, path)
    if args.json:
        emit_json({"ok": True, "file": str(path), "settings": settings})
    else:
        bb = settings.get("blackbody_c")
        sp = settings.get("spo2")
        print(f"blackbody: {'off' if bb is None else f'{bb:g} °C'}; SpO2 simulator: "
              + ("off" if sp is None else f"{sp:g} % at {settings.get('bpm', 72)}/min, PI {settings.get('pi_pm', 20)} ‰"))
    return EXIT_OK
