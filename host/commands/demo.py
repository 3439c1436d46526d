"""``nabd demo``: the system on simulated hardware (``make demo``, the README's main job).

The site demo (default) builds a whole site from the real parts (see ``host/site.py``): Mosquitto
with per-device credentials and the protocol's ACL, ``nabd-gateway serve`` with its records, and a
virtual device running the unchanged firmware. The device runs its self-test, measures a patient
(temperature, SpO2, pulse), signs each reading and publishes it; the gateway verifies and files it;
a signed command assigns a patient; the records are read back through the FHIR API; the observatory
counts are printed; and the device's screen is saved as ``build/demo/screen.png``.

``nabd demo --bench`` is the bench-top check alone: inside the real MicroPython interpreter, the
sensor self-test, a temperature reading and a few seconds of PPG on the simulated board, with the
OLED printed as text (``run_demo()``).
"""
from __future__ import annotations

import secrets
import sys
from pathlib import Path

from host import screenshot
from host.cli import add_common
from host.commands.selftest import print_table, run_in_vm, valid_faults
from nabd_cli import EXIT_DEVICE, EXIT_FAIL, EXIT_OK, CommandError, emit_json

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_OUT = REPO / "build" / "demo"

# Device-side part of the demo, run in the VM after the board exists as `board`.
MEASURE = """
import array
from firmware.drivers.mlx90614 import MLX90614
from firmware.drivers.max30102 import MAX30102
from firmware.drivers.ssd1306 import SSD1306

clock = board.clock
oled = SSD1306(board.i2c)
oled.text('nabd', 0, 0)
oled.text('measuring...', 0, 16)
oled.show()

def temperature(n=8):
    m = MLX90614(board.i2c, clock=clock)
    tot = 0
    for _ in range(n):
        tot += m.object_cc()
        clock.sleep_ms(100)
    return tot // n, m.ambient_cc()

def ppg(seconds):
    d = MAX30102(board.i2c, clock=clock)
    d.reset(); d.check(); d.configure()
    d.detect_swapped_leds()          # a swapped unit is corrected by the driver from here on
    d.configure()
    d.read_fifo()
    cap = 100 * seconds + 64
    red = array.array('i', bytes(4 * cap)); ir = array.array('i', bytes(4 * cap))
    n = 0
    t0 = clock.ticks_ms()
    while clock.ticks_diff(clock.ticks_ms(), t0) < seconds * 1000:
        clock.sleep_ms(40)
        k = d.read_fifo()
        for i in range(k):
            if n < cap:
                red[n] = d.red[i]; ir[n] = d.ir[i]; n += 1
    d.shutdown()
    return red, ir, n, d.lost, d.swapped

def crude_pulse(x, n, seconds):
    # beats = downward crossings of the mean (a rough estimate; the signal chain does it properly)
    if n < 10:
        return 0
    mean = sum(x[i] for i in range(n)) // n
    hyst = (max(x[i] for i in range(n)) - min(x[i] for i in range(n))) // 8
    beats = 0; above = x[0] > mean
    first = last = -1
    for i in range(1, n):
        if above and x[i] < mean - hyst:
            above = False; beats += 1
            if first < 0: first = i
            last = i
        elif not above and x[i] > mean + hyst:
            above = True
    if beats < 2:
        return 0
    return (beats - 1) * 60 * n // ((last - first) * seconds)

t_obj, t_amb = temperature()
red, ir, n, lost, swapped = ppg(SECONDS)
bpm = crude_pulse(ir, n, SECONDS)

def dc(x): return sum(x[i] for i in range(n)) // n if n else 0
def ac(x): return (max(x[i] for i in range(n)) - min(x[i] for i in range(n))) if n else 0

oled.fill(0)
oled.text('nabd', 0, 0)
oled.text('selftest ' + ('OK' if ALL_OK else 'KO'), 40, 0)
oled.big_text('%d.%d' % (t_obj // 100, (t_obj % 100) // 10), 0, 12, 2)
oled.text('C', 66, 20)
oled.text('%d' % bpm, 88, 12)
oled.text('bpm', 88, 22)
# the last 2 s of IR as a plethysmogram: less light returned (more blood) is drawn higher
top, h = 36, 27
oled.rect(0, top - 1, 128, h + 2, 1)
m = min(n, 200)
if m > 2:
    seg = ir[n - m:n]
    lo = min(seg); hi = max(seg); span = (hi - lo) or 1
    px = py = -1
    for i in range(m):
        x = 1 + i * 125 // (m - 1)
        y = top + ((seg[i] - lo) * (h - 1)) // span
        if px >= 0:
            oled.line(px, py, x, y, 1)
        px, py = x, y
oled.show()
RESULT = {'t_obj_cc': t_obj, 't_amb_cc': t_amb, 'samples': n, 'lost': lost, 'swapped': swapped,
          'pulse_bpm_rough': bpm, 'red_dc': dc(red), 'ir_dc': dc(ir), 'red_ac': ac(red), 'ir_ac': ac(ir),
          'virtual_ms': clock.ticks_ms(), 'bus_transactions': board.i2c.transactions}
"""


def run_demo(out_dir: Path = DEFAULT_OUT, seconds: int = 4, bpm: int = 72, faults: tuple[str, ...] = (),
             scale: int = 4) -> dict:
    """Run the demo in a fresh MicroPython VM; returns self-test, measurement, screen (ASCII) and
    the PNG path."""
    from host.mpvm import MicroPythonError, MicroPythonVM, VMUnavailable

    try:
        with MicroPythonVM() as vm:
            vm.exec("from sim.hardware.scenario import PulseScenario\n"
                    f"scenario = PulseScenario(bpm={int(bpm)})\n")
            checks = run_in_vm(vm, list(faults), "board", "scenario")
            vm.exec(f"SECONDS = {int(seconds)}\nALL_OK = {all(c['ok'] for c in checks)}\n" + MEASURE)
            result = vm.eval("RESULT")
            frame = vm.eval("board.oled.frame().hex()")
            contrast = vm.eval("board.oled.contrast")
    except VMUnavailable as e:
        raise CommandError(str(e), EXIT_DEVICE) from None
    except MicroPythonError as e:
        raise CommandError(f"the demo failed in MicroPython ({e.type}):\n{e.traceback}", EXIT_FAIL) from None
    png = screenshot.to_png(frame, Path(out_dir) / "screen.png", scale=scale, contrast=contrast)
    return {"ok": all(c["ok"] for c in checks), "selftest": checks, "measurement": result,
            "screen": screenshot.ascii_art(frame), "screen_png": str(png), "bpm_scenario": bpm}


def _print_report(r: dict) -> None:
    print_table(r["selftest"], "sim", [])
    m = r["measurement"]
    print()
    print(f"temperature (forehead, 8 reads): {m['t_obj_cc'] / 100:.2f} °C   ambient {m['t_amb_cc'] / 100:.2f} °C")
    print(f"PPG: {m['samples']} samples, {m['lost']} lost; DC red {m['red_dc']} IR {m['ir_dc']}, "
          f"AC red {m['red_ac']} IR {m['ir_ac']}" + ("; red/IR swapped, corrected" if m["swapped"] else ""))
    print(f"pulse (rough, zero crossings): {m['pulse_bpm_rough']} bpm (scenario: {r['bpm_scenario']} bpm)")
    print(f"virtual time {m['virtual_ms']} ms, {m['bus_transactions']} I2C transactions")
    print()
    print("OLED:")
    print(r["screen"])
    print(f"screenshot: {r['screen_png']}")


def run_site_demo(out_dir: Path = DEFAULT_OUT, readings: int = 2, scenario: str = "normal", say=print,
                  keep: bool = False) -> dict:
    """Self-test, then broker + gateway + virtual device; returns what the records and the
    observatory show."""
    from host import site as site_mod
    from host.commands import sim

    say = say or (lambda *a: None)
    out_dir = Path(out_dir)
    say("1. self-test of the firmware on the simulated board (MicroPython VM)")
    bench = run_demo(out_dir / "bench", seconds=2)
    say("   " + ", ".join(f"{c['name']} {'ok' if c['ok'] else 'FAILED'}" for c in bench["selftest"]))
    with site_mod.Site(out_dir / "site") as s:
        say("2. site set-up: gateway config with fresh secrets, device identity, broker passwords + ACL")
        s.setup()
        s.start()
        say(f"   broker {s.broker_url} (no anonymous access), gateway API {s.api}, device {s.device_id}")
        say(f"   the API speaks HTTPS; its certificate is signed by the site's one-off CA {s.ca_file}")
        say(f"3. the device measures {readings} patient(s) and publishes; the gateway acknowledges each")
        first = s.measure(1, scenario=scenario)
        say(f"   first reading: seq {first['seqs']} acknowledged: {first['ok']}")
        say("4. the gateway assigns patient p-demo01 to the device (signed command)")
        cmd = s.assign_patient("p-demo01")
        rest = s.measure(max(readings - 1, 1), scenario=scenario, seed=1)
        say(f"   next readings: seq {rest['seqs']} acknowledged: {rest['ok']}")
        obs = s.observations()
        say(f"5. the records (GET /fhir/Observation?device={s.device_id}): {len(obs)} Observations")
        rows = []
        for o in obs:
            q = o.get("valueQuantity", {})
            rows.append({"code": o["code"]["coding"][0]["code"], "display": o["code"]["coding"][0].get("display", ""),
                         "value": q.get("value"), "unit": q.get("code"), "subject": (o.get("subject") or {}).get("reference"),
                         "effective": o.get("effectiveDateTime")})
            say(f"   {rows[-1]['effective']}  {rows[-1]['display'][:34]:<34} {q.get('value')!s:>6} {q.get('code', ''):<5}"
                f" {rows[-1]['subject'] or '(no patient yet)'}")
        say("6. the site console: a clinician account, and the patient's page as the clinician sees it")
        clinician, password = "clinicien", secrets.token_urlsafe(12)
        s.add_user(clinician, "clinician", password)
        page = s.console_page(clinician, password, "/console/patients/p-demo01")
        shown = page.count("data-reading=")
        say(f"   console {s.console}  clinician login: {clinician} / {password}")
        say(f"   patient p-demo01: {shown} reading(s) on the clinician's page")
        counts = s.observatory()
        say("7. observatory (device counts; cells with fewer than "
            f"{counts.get('suppress_below')} patients suppressed):")
        for r in counts.get("rows", []):
            say(f"   {r['date']} {r['region']} {r.get('facility') or '(region total)'}: registered "
                f"{r['devices_registered']}, active {r['devices_active']}, firmware {r['firmware']}"
                + (" [suppressed]" if r.get("suppressed") else ""))
        if keep:   # an interactive `make demo`: leave the console up until the user is done with it
            input(f"   the site keeps running: open {s.console} (the browser asks about the site's own "
                  f"certificate: accept it, or import {s.ca_file}) (Enter stops it) ")
    shot = sim.screenshot(scenario, out_dir / "screen.png", at="result")
    say("8. the device's result screen (" + shot["out"] + "):")
    say(shot["ascii"])
    ok = bool(first["ok"] and rest["ok"] and bench["ok"] and obs and shown == len(rest["seqs"]))
    return {"ok": ok, "device_id": s.device_id, "selftest": bench["selftest"], "readings": first["seqs"] + rest["seqs"],
            "command": {k: cmd.get(k) for k in ("cmd", "n", "args")}, "observations": rows,
            "observatory": counts, "screen_png": shot["out"],
            "console": {"url": s.console, "user": clinician, "readings_shown": shown}}


def cmd_demo(args) -> int:
    if args.bench:
        r = run_demo(Path(args.out), seconds=args.seconds, bpm=args.bpm, faults=tuple(args.fault or ()))
        if args.json:
            emit_json(r)
        else:
            _print_report(r)
        return EXIT_OK if r["ok"] else EXIT_FAIL
    from host.site import SiteError

    try:
        r = run_site_demo(Path(args.out), readings=args.readings, scenario=args.scenario,
                          say=None if args.json else print, keep=not args.json and sys.stdin.isatty())
    except SiteError as e:
        raise CommandError(str(e), EXIT_DEVICE) from None
    if args.json:
        emit_json(r)
    else:
        print("demo " + ("complete: every reading signed, verified, stored once and readable as FHIR R4"
                         if r["ok"] else "FAILED"))
    return EXIT_OK if r["ok"] else EXIT_FAIL


def register(sub) -> None:
    p = sub.add_parser("demo", help="the system on simulated hardware: broker, gateway, virtual device, records")
    add_common(p, port=False)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the site and screen.png (default build/demo)")
    p.add_argument("--readings", type=int, default=3, help="readings the virtual device takes (default 3)")
    p.add_argument("--scenario", default="normal", help="physiology scenario of the patient (default normal)")
    p.add_argument("--bench", action="store_true", help="only the bench-top sensor check on the MicroPython VM")
    p.add_argument("--seconds", type=int, default=4, help="--bench: seconds of PPG to record (default 4)")
    p.add_argument("--bpm", type=int, default=72, help="pulse rate of the simulated finger")
    p.add_argument("--fault", action="append", choices=valid_faults(), metavar="NAME",
                   help="inject a simulated fault (repeatable)")
    p.set_defaults(func=cmd_demo)
