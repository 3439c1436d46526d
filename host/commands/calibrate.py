"""``nabd calibrate``: fit a device's thermometer and SpO2 curve against reference instruments.

    nabd calibrate temp --port PORT --points 35,37,41 --by NAME [--out DIR] [--due-days 365] [--json]
    nabd calibrate spo2 --port PORT --points 100,97,94,90,85,80,75,70 --by NAME [...]

At each point the reference instrument is set (a blackbody calibrator in °C, an SpO2 simulator in
%): on a virtual device (``nabd sim device``; found through ``nabd ports``'s registry) the command
sets its virtual instruments itself; on a board it asks the technician to set the real one and
press Enter. The device measures with its own drivers and signal chain, uncorrected.

- temp: gain and offset (``T = gain·reading + offset``) by least squares over every point but the
  verification point (the middle one, never used for the fit); refused when a fit residual or the
  verification error exceeds 0.1 °C, or a reading is more than 3 °C off its setpoint (the
  instrument is not where it says, or the sensor is damaged).
- spo2: the curve SpO2 = c0 + c1·R + c2·R² over the device's ratio of ratios R, least squares over
  every point but the verification point (the one nearest 90 %); refused when the fit's RMS
  residual or the verification error exceeds 1.5 % SpO2, or R is outside 0.2–3.0.

An accepted fit is written into the device's ``config.json`` (``calibration``: coefficients, a new
calibration id, the date and the due date; staged, validated by the firmware, renamed), read back,
and leaves a signed-off record in ``--out`` (default ``calibration-records/``): a JSON file and a
one-page printable certificate (device, instrument, points, residuals, technician). A refused fit
writes nothing on the device. Exit 0; 1 refused; 2 usage; 3 device.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets
import sys
import time
from pathlib import Path

from host.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, CommandError, add_common, emit_json

TEMP_TOL_C = 0.1
TEMP_PLAUSIBLE_C = 3.0
SPO2_TOL = 1.5
SETTLE_S = 0.4            # after a virtual instrument change: the device applies it within 100 ms

# Runs on the device: the thermometer, uncorrected (median of n reads, 0.01 °C, and their spread)
DEVICE_TEMP = """
from firmware.boards import current
from firmware.drivers.mlx90614 import MLX90614
_b = current()
_c = _b.clock
def _temp(n):
    w = getattr(_b, 'mlx_wake', None)
    if w:
        w()
    m = MLX90614(_b.i2c, clock=_c)
    m.wait_ready()
    v = []
    for i in range(n):
        _c.sleep_ms(100)
        v.append(m.object_cc())
    v.sort()
    return [v[n // 2], v[-1] - v[0]]
"""

# Runs on the device: the firmware's SpO2 chain on the MAX30102 for ``s`` seconds of board time;
# the R (× 1024) of every report with a valid SpO2
DEVICE_R = """
from firmware.boards import current
from firmware.drivers.max30102 import MAX30102
from firmware.signal.pulseox import PulseOx
_b = current()
_c = _b.clock
def _r(s):
    d = MAX30102(_b.i2c, clock=_c)
    d.reset()
    d.check()
    d.configure()
    d.read_fifo()
    p = PulseOx()
    out = []
    t0 = _c.ticks_ms()
    while _c.ticks_diff(_c.ticks_ms(), t0) < s * 1000:
        _c.sleep_ms(40)
        n = d.read_fifo()
        for i in range(n):
            if p.push(d.red[i], d.ir[i]) and p.withheld == 0 and p.spo2_x10 > 0:
                r = p._median_beats(p.n, p.b_r)
                if r > 0:
                    out.append(r)
    return out
"""


class Instrument:
    """The reference instrument: virtual (writes the virtual device's instrument file) or real
    (asks the technician)."""

    def __init__(self, port: str, kind: str, quiet: bool):
        from host import virtual_ports

        self.entry = virtual_ports.lookup(port)
        self.kind = kind
        self.quiet = quiet
        self.virtual = bool(self.entry and self.entry.get("state"))

    @property
    def name(self) -> str:
        what = "blackbody calibrator" if self.kind == "temp" else "SpO2 simulator"
        return f"virtual {what} (nabd sim instrument)" if self.virtual else what

    def set(self, value: float) -> None:
        if self.virtual:
            from sim.virtual_device.serial_bridge import set_instruments

            if self.kind == "temp":
                set_instruments(Path(self.entry["state"]), blackbody_c=value)
            else:
                set_instruments(Path(self.entry["state"]), spo2=value)
            time.sleep(SETTLE_S)
            return
        if not sys.stdin.isatty():
            raise CommandError("a real instrument needs a technician at a terminal to set it (no terminal here)",
                               EXIT_USAGE)
        unit = "°C" if self.kind == "temp" else "% SpO2"
        print(f"Set the {self.name} to {value:g} {unit}; when it is stable, aim the device at it and press Enter",
              file=sys.stderr)
        input()

    def off(self) -> None:
        if self.virtual:
            from sim.virtual_device.serial_bridge import set_instruments

            set_instruments(Path(self.entry["state"]), **({"blackbody_c": None} if self.kind == "temp"
                                                         else {"spo2": None}))


def _points(text: str, lo: float, hi: float, need: int) -> list[float]:
    try:
        pts = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CommandError(f"--points: numbers separated by commas, not {text!r}", EXIT_USAGE) from None
    if len(pts) < need or len(set(pts)) != len(pts):
        raise CommandError(f"--points: at least {need} different points", EXIT_USAGE)
    bad = [p for p in pts if not lo <= p <= hi]
    if bad:
        raise CommandError(f"--points: {bad[0]:g} is outside {lo:g}..{hi:g}", EXIT_USAGE)
    return pts


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(gain, offset) of ys = gain·xs + offset, least squares."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    gain = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return gain, my - gain * mx


def device_temp_cc(raw_cc: int, gain_ppm: int, offset_cc: int) -> int:
    """What the firmware computes from a reading (``firmware/signal/temperature.py``, integers)."""
    def div_round(a: int, b: int) -> int:
        return (a + b // 2) // b if a >= 0 else -((-a + b // 2) // b)
    return raw_cc + div_round(raw_cc * (gain_ppm - 1000000), 1000000) + offset_cc


def fit_poly2(rs: list[float], ss: list[float]) -> list[float]:
    """[c0, c1, c2] of ss = c0 + c1·r + c2·r², least squares."""
    import numpy as np

    c2, c1, c0 = np.polyfit(np.array(rs, dtype=float), np.array(ss, dtype=float), 2).tolist()
    return [c0, c1, c2]


def device_spo2(r: float, coeffs: list[float]) -> float:
    """SpO2 % the firmware computes for R (``firmware/signal/calibration.py``, integers)."""
    from firmware.signal.calibration import from_config

    return from_config({"spo2": coeffs}).spo2_x10(int(round(r * 1024))) / 10


def measure_temp(dev, inst: Instrument, points: list[float], say) -> list[dict]:
    dev.exec(DEVICE_TEMP)
    rows = []
    for t in points:
        inst.set(t)
        med, spread = dev.call("_temp(16)", timeout=30)
        rows.append({"set": t, "read_c": med / 100, "spread_c": spread / 100})
        say(f"  blackbody {t:6.2f} °C   device reads {med / 100:6.2f} °C (error {med / 100 - t:+.2f})")
    return rows


def measure_r(dev, inst: Instrument, points: list[float], say, seconds: int) -> list[dict]:
    dev.exec(DEVICE_R)
    rows = []
    for s in points:
        inst.set(s)
        rq = dev.call(f"_r({seconds})", timeout=max(60, seconds * 6))
        if len(rq) < 3:
            raise CommandError(f"at {s:g} % the device measured no steady pulse (finger in the probe? simulator on?)",
                               EXIT_FAIL)
        rq.sort()
        r = rq[len(rq) // 2] / 1024
        rows.append({"set": s, "r": r, "reports": len(rq), "r_spread": (rq[-1] - rq[0]) / 1024})
        say(f"  simulator {s:5.1f} %   R = {r:.4f} ({len(rq)} reports)")
    return rows


def verify_index(points: list[float], target: float) -> int:
    """The point kept out of the fit: the one nearest ``target`` (ties: the first)."""
    return min(range(len(points)), key=lambda i: (abs(points[i] - target), i))


def commit_calibration(dev, root: str, fields: dict) -> dict:
    """Merge ``fields`` into config.json's ``calibration`` (staged, validated, renamed); the
    calibration the device reads back."""
    from host.commands.provision import read_config, remove_staged

    data = read_config(dev, root)
    if data is None:
        raise CommandError(f"the device has no valid config.json: `nabd provision --port {dev.port} ...` first",
                           EXIT_FAIL)
    cal = dict(data.get("calibration") or {})
    cal.update(fields)
    data["calibration"] = cal
    staged = root + "/config.new"
    dev.write_file_atomic(staged, json.dumps(data).encode())
    try:
        dev.exec(f"import json\nfrom firmware import config\nfrom firmware.signal import calibration\n"
                 f"with open({staged!r}) as _f:\n _d = json.load(_f)\n"
                 "config.validate(_d)\ncalibration.from_config(_d['calibration'])\n")
    except BaseException:
        try:
            remove_staged(dev, root)
        except Exception:  # noqa: BLE001 - the device went away; config.json is untouched
            pass
        raise
    dev.exec(f"import os\nos.rename({staged!r}, {root + '/config.json'!r})\n")
    return dev.call("config.load(boards.current()).calibration", setup="from firmware import config, boards\n")


def write_record(out_dir: Path, rec: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{rec['device_id']}-{rec['calibration']['id']}-{rec['kind']}"
    js = base.with_suffix(".json")
    js.write_text(json.dumps(rec, indent=1) + "\n")
    txt = base.with_suffix(".txt")
    txt.write_text(certificate(rec))
    return js, txt


def certificate(rec: dict) -> str:
    """One printable page (80 columns, < 60 lines)."""
    cal = rec["calibration"]
    what = "Infrared thermometer (MLX90614)" if rec["kind"] == "temp" else "Pulse oximeter SpO2 curve (MAX30102)"
    lines = ["NABD CALIBRATION CERTIFICATE", "=" * 78, "",
             f"Device            {rec['device_id']}   firmware {rec['fw']}   board {rec['uid']}",
             f"Quantity          {what}",
             f"Reference         {rec['instrument']}",
             f"Calibration id    {cal['id']}",
             f"Date              {cal['date']}        Due {cal['due']}",
             f"Result            {'ACCEPTED' if rec['accepted'] else 'REFUSED'}", ""]
    if rec["kind"] == "temp":
        lines += [f"Fit               T = {rec['fit']['gain']:.6f} x reading {rec['fit']['offset_c']:+.3f} °C",
                  f"Tolerance         {TEMP_TOL_C} °C (fit residuals and verification)", "",
                  "  setpoint °C   reading °C   corrected °C   error °C   use"]
        for p in rec["points"]:
            lines.append(f"  {p['set']:10.2f}   {p['read_c']:10.2f}   {p['corrected_c']:12.2f}   "
                         f"{p['error_c']:+8.2f}   {p['use']}")
    else:
        c = rec["fit"]["coeffs"]
        lines += [f"Fit               SpO2 = {c[0]:.3f} {c[1]:+.3f} R {c[2]:+.3f} R²",
                  f"Tolerance         {SPO2_TOL} % SpO2 (RMS of fit residuals, verification)", "",
                  "  setpoint %       R     device %   error %   use"]
        for p in rec["points"]:
            lines.append(f"  {p['set']:9.1f}   {p['r']:.4f}   {p['device_spo2']:8.1f}   {p['error']:+7.2f}   {p['use']}")
        lines.append(f"  RMS error over all points (Arms): {rec['fit']['arms']:.2f} %")
    lines += ["", f"Maximum fit residual: {rec['max_residual']:.3f}    verification error: {rec['verify_error']:.3f}",
              "", f"Calibrated by     {rec['by']}", "Signature         ______________________________",
              f"Record            {rec['device_id']}-{cal['id']}-{rec['kind']}.json", ""]
    return "\n".join(lines) + "\n"


class _progress:
    """A rich progress bar over the setpoints (on stderr; none with --json or a real instrument,
    whose prompts it would garble); the context value advances it by one point."""

    def __init__(self, total: int, show: bool):
        self.total, self.show, self.prog = total, show, None

    def __enter__(self):
        if not self.show:
            return lambda: None
        from rich.console import Console
        from rich.progress import Progress

        self.prog = Progress(console=Console(stderr=True), transient=True)
        self.prog.start()
        task = self.prog.add_task("measuring", total=self.total)
        return lambda: self.prog.advance(task)

    def __exit__(self, *exc):
        if self.prog is not None:
            self.prog.stop()


def calibrate(args) -> dict:
    from host.commands.info import read_info
    from host.commands.provision import root_of
    from host.device import Device

    if not args.by or not args.by.strip():
        raise CommandError("--by NAME: the technician who signs the record", EXIT_USAGE)
    if args.kind == "temp":
        points = _points(args.points, 20, 50, 3)
        vi = verify_index(points, (min(points) + max(points)) / 2)
    else:
        points = _points(args.points, 70, 100, 4)
        vi = verify_index(points, 90)
    say = (lambda s: None) if args.json else (lambda s: print(s, flush=True))
    inst = Instrument(args.port, args.kind, args.json)
    today = dt.date.today()
    with Device(args.port, timeout=30) as dev:
        info = read_info(dev)
        if not info["device_id"]:
            raise CommandError(f"the device is not provisioned: `nabd provision --port {args.port} ...` first", EXIT_FAIL)
        root = root_of(dev)
        say(f"calibrating {args.kind} of {info['device_id']} against the {inst.name}")
        try:
            with _progress(len(points), not args.json and inst.virtual) as advance:
                def step(line):
                    say(line)
                    advance()
                if args.kind == "temp":
                    rows = measure_temp(dev, inst, points, step)
                else:
                    rows = measure_r(dev, inst, points, step, args.seconds)
        finally:
            inst.off()
        cal_id = f"cal-{today.isoformat()}-{secrets.token_hex(2)}"
        due = today + dt.timedelta(days=args.due_days)
        fit_rows = [r for i, r in enumerate(rows) if i != vi]
        problems = []
        if args.kind == "temp":
            for r in rows:
                if abs(r["read_c"] - r["set"]) > TEMP_PLAUSIBLE_C:
                    problems.append(f"at {r['set']:g} °C the device read {r['read_c']:.2f} °C: out of tolerance "
                                    f"(> {TEMP_PLAUSIBLE_C:g} °C off; is the blackbody at its setpoint?)")
            gain, offset = fit_line([r["read_c"] for r in fit_rows], [r["set"] for r in fit_rows])
            gain_ppm, offset_cc = int(round(gain * 1e6)), int(round(offset * 100))
            if not 500000 <= gain_ppm <= 1500000 or not -1000 <= offset_cc <= 1000:
                problems.append(f"fitted gain {gain:.4f} / offset {offset:+.2f} °C is outside what the device accepts")
            for i, r in enumerate(rows):
                r["corrected_c"] = device_temp_cc(int(round(r["read_c"] * 100)), gain_ppm, offset_cc) / 100
                r["error_c"] = round(r["corrected_c"] - r["set"], 3)
                r["use"] = "verify" if i == vi else "fit"
            max_res = max(abs(r["error_c"]) for r in rows if r["use"] == "fit")
            ver = abs(rows[vi]["error_c"])
            tol = TEMP_TOL_C
            fields = {"temp_gain": gain_ppm / 1e6, "temp_offset_c": offset_cc / 100}
            fit = {"gain": gain_ppm / 1e6, "offset_c": offset_cc / 100}
        else:
            for r in rows:
                if not 0.2 <= r["r"] <= 3.0:
                    problems.append(f"at {r['set']:g} % R = {r['r']:.3f} is outside 0.2-3.0: out of tolerance")
            coeffs = fit_poly2([r["r"] for r in fit_rows], [r["set"] for r in fit_rows])
            coeffs = [round(c, 4) for c in coeffs]
            for i, r in enumerate(rows):
                r["device_spo2"] = device_spo2(r["r"], coeffs)
                r["error"] = round(r["device_spo2"] - r["set"], 2)
                r["use"] = "verify" if i == vi else "fit"
            fit_err = [r["error"] for r in rows if r["use"] == "fit"]
            max_res = (sum(e * e for e in fit_err) / len(fit_err)) ** 0.5
            ver = abs(rows[vi]["error"])
            arms = (sum(r["error"] ** 2 for r in rows) / len(rows)) ** 0.5
            tol = SPO2_TOL
            fields = {"spo2": coeffs}
            fit = {"coeffs": coeffs, "arms": round(arms, 3)}
        if max_res > tol:
            problems.append(f"fit residual {max_res:.3f} exceeds {tol:g}")
        if ver > tol:
            problems.append(f"verification error {ver:.3f} at {points[vi]:g} exceeds {tol:g}")
        accepted = not problems
        rec = {"kind": args.kind, "device_id": info["device_id"], "uid": info["uid"], "fw": info["fw"],
               "instrument": inst.name, "by": args.by.strip(), "accepted": accepted, "problems": problems,
               "calibration": {"id": cal_id, "date": today.isoformat(), "due": due.isoformat()},
               "points": rows, "fit": fit, "max_residual": round(max_res, 4), "verify_error": round(ver, 4),
               "at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if accepted:
            fields.update(id=cal_id, date=today.isoformat(), due=due.isoformat())
            rec["device_calibration"] = commit_calibration(dev, root, fields)
    js, txt = write_record(Path(args.out), rec)
    rec["record"] = str(js)
    rec["certificate"] = str(txt)
    return rec


def cmd_calibrate(args) -> int:
    rec = calibrate(args)
    if args.json:
        emit_json({"ok": rec["accepted"], **rec})
    else:
        if rec["accepted"]:
            c = rec["calibration"]
            print(f"ACCEPTED: {rec['device_id']} {args.kind} calibration {c['id']} written (due {c['due']}); "
                  f"max fit residual {rec['max_residual']:.3f}, verification error {rec['verify_error']:.3f}")
        else:
            print(f"REFUSED, nothing written on the device: {'; '.join(rec['problems'])}", file=sys.stderr)
        print(f"record {rec['record']}, certificate {rec['certificate']}")
    return EXIT_OK if rec["accepted"] else EXIT_FAIL


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="fit the thermometer or the SpO2 curve against reference instruments",
                       description="Fit the thermometer (gain, offset) or the R-to-SpO2 curve against reference "
                       "instruments (the virtual ones of a virtual device, or real ones the technician sets), "
                       "verify at a point not used for the fit, write the coefficients with a calibration id and "
                       "due date, and leave a JSON record and a printable certificate.")
    s = p.add_subparsers(dest="kind", metavar="QUANTITY", required=True)
    for kind, pts, hlp in (("temp", "35,37,41", "thermometer gain and offset against a blackbody calibrator"),
                           ("spo2", "100,97,94,90,85,80,75,70", "R-to-SpO2 curve against an SpO2 simulator")):
        c = s.add_parser(kind, help=hlp)
        add_common(c)
        c.add_argument("--points", default=pts, help=f"setpoints, comma-separated (default {pts})")
        c.add_argument("--by", required=True, metavar="NAME", help="technician signing the record")
        c.add_argument("--out", default="calibration-records", help="folder for the records (default "
                       "calibration-records)")
        c.add_argument("--due-days", type=int, default=365, help="days until the next calibration (default 365)")
        if kind == "spo2":
            c.add_argument("--seconds", type=int, default=12, help="measuring time per point (default 12)")
        c.set_defaults(func=cmd_calibrate)
