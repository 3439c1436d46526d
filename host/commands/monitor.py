"""``nabd monitor``: the device's readings and log as they happen.

    nabd monitor --port PORT [--json] [--measure N] [--seconds S]

Soft-reboots the device and runs the firmware's main loop (what ``main.py`` runs at power-on)
from the raw REPL, with a hook that prints every new measurement result and every log line as one JSON line;
the host shows them as text, or passes them on as JSON lines (``--json``). Ctrl-C (or
``--seconds``, or ``--measure N`` once N results were shown) stops the loop on the device with a
Ctrl-C of its own and exits 0: the device is left at its REPL, its outbox and log on flash as the
loop left them (it starts measuring again at its next reset).

``--measure N`` presses the button N times (a simulated board's button only; on a board press
the real one). Exit 0; 3 when the device cannot be reached or stops answering.
"""
from __future__ import annotations

import json
import sys
import time

from host.cli import add_common
from nabd_cli import EXIT_DEVICE, EXIT_OK, EXIT_USAGE, CommandError, emit_json

MARK = "\x1e"

# Runs on the device: the main loop with a hook. One line per event: MARK + JSON.
DEVICE_MONITOR = """
import json
from firmware.boards import current
from firmware import main
_b = current()
_d = main.build(_b)
_app = _d.app
_w = _d.log.write
def _lw(level, source, msg):
    _w(level, source, msg)
    print('\\x1e' + json.dumps({'log': [_b.clock.ticks_ms(), level, source, str(msg)]}))
_d.log.write = _lw
print('\\x1e' + json.dumps({'started': _d.cfg.device_id, 'outbox': _d.outbox.depth}))
_st = {'seen': 0, 'want': MEASURE, 'pressed': None, 'last': None}
def _hook(app):
    c = _b.clock
    if app.measurements > _st['seen']:
        _st['seen'] = app.measurements
        print('\\x1e' + json.dumps({'reading': app.result.to_dict(), 'outbox': _d.outbox.depth}))
    if app.state != _st['last']:
        _st['last'] = app.state
        print('\\x1e' + json.dumps({'state': app.state}))
    p = _st['pressed']
    if p is not None and c.ticks_diff(c.ticks_ms(), p) >= 120:
        _b.button.release()
        _st['pressed'] = None
    elif p is None and _st['want'] > 0 and app.state in ('idle', 'result', 'error') and app._elapsed() >= 1500:
        _st['want'] -= 1
        _b.button.press()
        _st['pressed'] = c.ticks_ms()
    if app.state in ('idle', 'result', 'info', 'error'):
        c.sleep_ms(5)
    return False
main.run(_b, dev=_d, until=_hook)
"""


def describe(ev: dict) -> str | None:
    if "reading" in ev:
        r = ev["reading"]
        from firmware.ui import temp_text

        t = temp_text(r["temp_cc"]) if r.get("temp_cc") is not None else "--"
        parts = [f"seq {r['seq']}" if r.get("seq") is not None else "not recorded", f"T {t} °C",
                 f"SpO2 {r['spo2'] if r.get('spo2') is not None else '--'} %",
                 f"pulse {r['hr'] if r.get('hr') is not None else '--'} /min"]
        if r.get("reason"):
            parts.append(f"({r['reason']})")
        return "reading  " + ", ".join(parts) + f"; outbox {ev['outbox']}"
    if "log" in ev:
        ms, level, source, msg = ev["log"]
        return f"log      {ms / 1000:9.3f} {level:<5} {source}: {msg}"
    if "state" in ev:
        return f"state    {ev['state']}"
    if "started" in ev:
        return f"started  {ev['started']}, {ev['outbox']} readings waiting"
    return None


def cmd_monitor(args) -> int:
    from host.device import Device

    if args.measure < 0:
        raise CommandError("--measure: 0 or more", EXIT_USAGE)
    emit = emit_json if args.json else (lambda ev: (lambda s: s and print(s, flush=True))(describe(ev)))
    readings = 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    buf = bytearray()
    done = False

    with Device(args.port) as dev:
        if args.measure:
            has = dev.call("hasattr(__import__('firmware.boards').boards.current().button, 'press')")
            if not has:
                raise CommandError("--measure presses a simulated board's button; on a board press the real one",
                                   EXIT_USAGE)
        dev.soft_reset()        # the loop starts as at power-on (a fresh interpreter, boot.py run)
        t = dev.t
        t.exec_raw_no_follow(DEVICE_MONITOR.replace("MEASURE", str(int(args.measure))))
        s = t.serial
        try:
            while not done:
                if deadline and time.monotonic() > deadline:
                    break
                chunk = s.read(max(1, s.in_waiting or 1))
                if not chunk:
                    continue
                buf += chunk
                if b"\x04" in buf:            # the loop ended on the device (an exception)
                    out, _, err = bytes(buf).partition(b"\x04")
                    rest = s.read(4096)
                    err = (err + rest).split(b"\x04")[0].decode("utf-8", "replace").strip()
                    raise CommandError(f"the firmware's loop stopped on the device: "
                                       f"{err.splitlines()[-1] if err else 'no traceback'}", EXIT_DEVICE)
                while b"\n" in buf:
                    line, _, rest = bytes(buf).partition(b"\n")
                    buf = bytearray(rest)
                    text = line.decode("utf-8", "replace").rstrip("\r")
                    if text.startswith(MARK):
                        try:
                            ev = json.loads(text[1:])
                        except ValueError:
                            continue
                        emit(ev)
                        if "reading" in ev:
                            readings += 1
                            if args.measure and readings >= args.measure:
                                done = True
                    elif text.strip():
                        emit({"print": text}) if args.json else print(f"device   {text}", flush=True)
        except KeyboardInterrupt:
            pass
        finally:
            # stop the loop on the device (its own Ctrl-C) and wait for the end of its output
            try:
                s.write(b"\x03")
                t.read_until(1, b"\x04>", timeout=5, timeout_overall=10)
            except Exception:  # noqa: BLE001 - the device went away; nothing more to stop
                pass
    if not args.json:
        print(f"monitor stopped ({readings} readings)", file=sys.stderr)
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("monitor", help="live readings and log of a device (Ctrl-C ends)",
                       description="Run the device's main loop and show its readings and log lines as they "
                       "happen (JSON lines with --json); Ctrl-C stops it cleanly.")
    add_common(p)
    p.add_argument("--measure", type=int, default=0, metavar="N",
                   help="press a simulated board's button N times, stop after N readings")
    p.add_argument("--seconds", type=float, default=0, help="stop after S seconds (default: at Ctrl-C)")
    p.set_defaults(func=cmd_monitor)
