"""``nabd analyze``: replay a recorded PPG CSV through the firmware's own signal chain on the
MicroPython VM (``host/signalrun.py``).

    nabd analyze rec.csv --red red --ir ir [--rate 100] [--json]
    nabd analyze alsementsov.csv --rate 25 --red 0 --ir 1          # headerless: auto-detected
    nabd analyze oxiwear.csv --rate 64 --red LEDC2 --ir LEDC1      # preamble skipped to the header

Columns are named (header) or 0-based indices. Either channel may be absent: IR alone gives heart
rate and PI only (``--red`` omitted or ``--red none``). A file whose first row is numeric is read as
headerless (or say ``--no-header``); lines before the header row (register dumps, start time) are
skipped automatically when the named columns appear further down, or explicitly with
``--skip-rows N``. Other rates are resampled to 100 Hz on the host.

Checks (each a one-line message on stderr):

* the sample rate: ``--rate`` must be 10–10 000 samples/s (exit 2). A time column (``timestamp``,
  ``time``, ``time_ms``, ...; a plain sample counter is not one) gives the rate when ``--rate`` is
  not given and refuses one that disagrees by more than 5 % (exit 4, with the file's rate). Without
  one, the pulse's fundamental (the strongest spectral peak with its second harmonic) must be
  at most 220 bpm at the declared rate: a strong pulse faster than that means a wrong rate (exit
  4, with the likely rate). ``--force`` analyses anyway, with a warning;
* red and IR swapped: when the chain's SpO2 reads below 70 % and the ratio of ratios R at the
  pulse's fundamental is over 1.1 with a plausible inverse (0.3–0.9), a warning;
* rows that are not numbers in the chosen columns are skipped and reported with their line
  numbers; ``--strict`` makes the first of them an error (exit 4).

Recordings longer than three minutes show a progress bar on stderr when it is a terminal.

Output: ``--json`` prints one JSON object per report (1 per s) then
``{"summary": {...}}``; otherwise a table. Exit 4 on unreadable files, missing columns, a rate that
the file contradicts, or (``--strict``) bad rows.
"""
from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path

from host.cli import add_common
from nabd_cli import EXIT_DATA, EXIT_DEVICE, EXIT_USAGE, CommandError, emit_json

_MAX_SCAN = 200         # lines searched for the header row
RATE_MIN = 10.0         # samples/s: a 220 bpm pulse needs well over 2 × 3.7 Hz
RATE_MAX = 10000.0
DEFAULT_RATE = 100.0
HR_RANGE = (30.0, 220.0)           # bpm the chain reports
_COMMON_RATES = (25, 50, 64, 100, 125, 128, 200, 250, 256, 400, 500, 512, 1000)
_PULSE_SHARE_MIN = 0.25            # share of 0.4–10 Hz power in the pulse's fundamental + 2nd harmonic
_RATE_TOL = 0.05
_SWAP_R = 1.1                      # with SpO2 read under 70 %: R this high, and its inverse plausible
_SWAP_SPO2 = 70.0
_PROGRESS_S = 180.0                # recordings longer than this show a progress bar (on a terminal)
_TIME_UNITS = (("us", 1e-6), ("micro", 1e-6), ("ms", 1e-3), ("milli", 1e-3))
_TIME_NAMES = ("timestamp", "time", "t", "ts", "sec", "secs", "seconds", "s", "ms", "millis", "us", "micros")


def register(sub) -> None:
    p = sub.add_parser("analyze", help="run the firmware signal chain over a recorded PPG CSV",
                       description="Replay a recorded PPG file (CSV) through the firmware's own signal chain, "
                       "run on the MicroPython VM, and print heart rate, SpO2 and perfusion index once a "
                       "second. Columns are named (header row) or 0-based indices; other sample rates are "
                       "resampled to 100 Hz.")
    p.add_argument("path", help="CSV file")
    p.add_argument("--rate", type=float, default=None,
                   help="sample rate of the file, samples/s (default: from its time column, else 100)")
    p.add_argument("--red", default=None, help="red column: name or 0-based index; 'none' for IR only")
    p.add_argument("--ir", default=None, help="IR column: name or 0-based index (default: 'ir' or 1/0)")
    p.add_argument("--no-header", action="store_true", help="the file has no header row")
    p.add_argument("--skip-rows", type=int, default=None, help="lines to skip before the header/data")
    p.add_argument("--strict", action="store_true", help="a row that is not numeric is an error (exit 4)")
    p.add_argument("--force", action="store_true", help="analyse even when the rate check fails")
    add_common(p, port=False)
    p.set_defaults(func=run)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _col_index(spec: str, header: list[str] | None, what: str, path: Path) -> int:
    if spec.isdigit():
        i = int(spec)
        width = len(header) if header else None
        if width is not None and i >= width:
            raise CommandError(f"{path}: {what} column {i} does not exist (the file has {width} columns)", EXIT_DATA)
        return i
    if header is None:
        raise CommandError(f"{path}: {what} column {spec!r} named but the file has no header; give an index", EXIT_DATA)
    names = [h.strip() for h in header]
    low = [h.lower() for h in names]
    if spec in names:
        return names.index(spec)
    if spec.lower() in low:
        return low.index(spec.lower())
    raise CommandError(f"{path}: no {what} column {spec!r}; columns: {', '.join(n for n in names if n)}", EXIT_DATA)


def read_channels(path: Path, red: str | None, ir: str | None, no_header: bool = False,
                  skip_rows: int | None = None, strict: bool = False) -> tuple[list[float] | None, list[float], dict]:
    """(red or None, ir, info) from a CSV. Raises CommandError (exit 4) with the reason."""
    try:
        text = path.read_text(errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"{path}: cannot read ({e})", EXIT_DATA) from None
    numbered = [(k + 1, r) for k, r in enumerate(csv.reader(text.splitlines())) if any(c.strip() for c in r)]
    rows = [r for _, r in numbered]
    if not rows:
        raise CommandError(f"{path}: empty file", EXIT_DATA)
    red = None if red is not None and red.lower() == "none" else red
    start = skip_rows or 0
    header: list[str] | None = None
    if not no_header:
        named = [c for c in (red, ir) if c is not None and not c.isdigit()]
        if skip_rows is None and named:
            # the header is the first line holding every named column (preamble lines skipped)
            for k, r in enumerate(rows[:_MAX_SCAN]):
                cells = [c.strip().lower() for c in r]
                if all(c.lower() in cells for c in named):
                    start = k
                    break
            else:
                raise CommandError(f"{path}: no header row with column(s) {', '.join(named)} in the first "
                                   f"{_MAX_SCAN} lines; columns of line 1: {', '.join(rows[0])}", EXIT_DATA)
        if start >= len(rows):
            raise CommandError(f"{path}: --skip-rows {start} skips the whole file", EXIT_DATA)
        first = rows[start]
        if all(_is_number(c) for c in first if c.strip()):
            header = None               # headerless numeric file
        else:
            header = first
            start += 1
    if ir is None:
        if header is not None and "ir" in [h.strip().lower() for h in header]:
            ir = "ir"
        else:
            ir = "1" if red != "1" and len(rows[start]) > 1 else "0"
    if red is None and header is not None and "red" in [h.strip().lower() for h in header] and ir.lower() != "red":
        red = "red"
    ii = _col_index(ir, header, "IR", path)
    ri = _col_index(red, header, "red", path) if red is not None else None
    ti = _time_column(header, (ii, ri))
    red_v: list[float] = []
    ir_v: list[float] = []
    t_v: list[float] = []
    skipped: list[int] = []
    for n_read, (line_no, r) in enumerate(numbered[start:], start=1):
        try:
            iv = float(r[ii])
            rv = float(r[ri]) if ri is not None else 0.0
            ok = math.isfinite(iv) and math.isfinite(rv)
        except (IndexError, ValueError):
            ok = False
        if not ok:
            if strict:
                raise CommandError(f"{path}: line {line_no}: not a number in the chosen columns "
                                   f"({','.join(r[:6])}); --strict stops at the first such row", EXIT_DATA)
            skipped.append(line_no)
            if len(skipped) > 10 and len(skipped) * 10 > n_read:
                raise CommandError(f"{path}: line {line_no}: not numeric in the chosen columns ({r[:6]})",
                                   EXIT_DATA) from None
            continue
        ir_v.append(iv)
        red_v.append(rv)
        if ti is not None:
            try:
                t_v.append(float(r[ti]))
            except (IndexError, ValueError):
                ti = None
    if len(ir_v) < 2:
        raise CommandError(f"{path}: fewer than 2 numeric samples in the chosen columns", EXIT_DATA)
    info = {"samples": len(ir_v), "skipped_rows": len(skipped), "skipped_lines": skipped,
            "header": header is not None, "ir_column": ir, "red_column": red,
            "time_column": header[ti].strip() if ti is not None and header is not None else None,
            "time": t_v if ti is not None else None}
    return (red_v if ri is not None else None), ir_v, info


def _time_column(header: list[str] | None, used: tuple) -> int | None:
    """Index of a time column in ``header`` (not one of the ``used`` channel columns), or None."""
    if header is None:
        return None
    for k, h in enumerate(header):
        name = h.strip().lower()
        if k in used:
            continue
        if name in _TIME_NAMES or name.startswith(("time", "timestamp")):
            return k
    return None


def timestamp_rate(name: str, t: list[float]) -> list[float]:
    """Sample rates (samples/s) that the time column ``name`` can mean, most likely first; empty
    when it is no clock (a sample counter stepping by exactly 1, or not increasing)."""
    if len(t) < 3:
        return []
    steps = [b - a for a, b in zip(t, t[1:], strict=False)]
    med = statistics.median(steps)
    if med <= 0 or all(d == 1 for d in steps):
        return []
    low = name.lower()
    for key, unit in _TIME_UNITS:
        if low == key or low.endswith("_" + key) or low.endswith(key) and len(low) > len(key) + 3:
            return [1.0 / (med * unit)]
    if low in ("s", "sec", "secs", "seconds") or low.endswith(("_s", "_sec")):
        return [1.0 / med]
    # unit unknown: seconds, milliseconds or microseconds, those giving a usable rate
    out = [1.0 / (med * u) for u in (1.0, 1e-3, 1e-6)]
    return sorted((r for r in out if RATE_MIN <= r <= RATE_MAX), key=lambda r: abs(math.log(r / DEFAULT_RATE)))


def pulse_fundamental(ir: list[float], rate: float) -> tuple[float, float] | None:
    """(bpm, share) of the IR channel's pulse at ``rate``: the frequency in 0.4–5 Hz whose power
    plus its second harmonic's is largest (a PPG's harmonic structure), and the share of the
    0.4–10 Hz power that holds. None for recordings shorter than 8 s."""
    import numpy as np  # noqa: PLC0415
    from scipy.signal import detrend, welch  # noqa: PLC0415

    x = np.asarray(ir, dtype=float)
    if len(x) < rate * 8:
        return None
    f, p = welch(detrend(x), fs=rate, nperseg=int(min(len(x), rate * 16)))
    hi = min(10.0, rate * 0.45)
    band = (f >= 0.4) & (f <= hi)
    tot = float(p[band].sum())
    if tot <= 0:
        return None
    best, bf = -1.0, 0.0
    for i in np.nonzero(band & (f <= 5.0))[0]:
        s = float(p[i])
        if 2 * f[i] <= hi:
            s += float(p[int(np.argmin(np.abs(f - 2 * f[i])))])
        if s > best:
            best, bf = s, float(f[i])
    return 60.0 * bf, best / tot


def likely_rate(bpm: float, rate: float) -> float | None:
    """The common sample rate at which a pulse seen at ``bpm`` (at ``rate``) becomes an ordinary
    one (40–180 bpm, nearest 75), or None."""
    got = [(abs(math.log(bpm * c / rate / 75.0)), c) for c in _COMMON_RATES
           if c != rate and 40.0 <= bpm * c / rate <= 180.0]
    return float(min(got)[1]) if got else None


def check_rate(path: Path, declared: float | None, ir: list[float], info: dict, force: bool, warn) -> float:
    """The rate to analyse at, after checking it against the file (see the module docstring)."""
    t = info.get("time")
    if t:
        rates = timestamp_rate(info["time_column"], t)
        if rates:
            if declared is None:
                warn(f"rate: {rates[0]:.4g} samples/s from the time column {info['time_column']!r}")
                return rates[0]
            if any(abs(r - declared) <= _RATE_TOL * declared for r in rates):
                return declared
            why = (f"--rate {declared:g} disagrees with the time column {info['time_column']!r} "
                   f"({rates[0]:.4g} samples/s)")
            if not force:
                raise CommandError(f"{path}: {why}: rerun with --rate {rates[0]:.4g}", EXIT_DATA)
            warn(f"warning: {path}: {why} (--force: analysed at {declared:g})")
            return declared
    rate = DEFAULT_RATE if declared is None else declared
    pf = pulse_fundamental(ir, rate)
    if pf is None:
        return rate
    bpm, share = pf
    # only a pulse too fast to be one is refused: below 30 bpm the strongest peak is as likely
    # respiration or wander in a poor recording (the chain withholds those) as a wrong rate
    if bpm <= HR_RANGE[1] or share < _PULSE_SHARE_MIN:
        return rate
    lr = likely_rate(bpm, rate)
    if lr is None:
        return rate
    given = f"--rate {rate:g}" if declared is not None else f"the default rate {rate:g} (no --rate)"
    why = (f"at {given} the pulse would be {bpm:.0f} bpm, outside {HR_RANGE[0]:.0f}–{HR_RANGE[1]:.0f}: "
           f"the recording is likely {lr:g} samples/s ({bpm * lr / rate:.0f} bpm)")
    if not force:
        raise CommandError(f"{path}: {why}; rerun with --rate {lr:g}", EXIT_DATA)
    warn(f"warning: {path}: {why} (--force: analysed at {rate:g})")
    return rate


def swapped_ratio(red: list[float], ir: list[float], rate: float) -> float | None:
    """The ratio of ratios R over the whole recording: RMS of each channel around the pulse's
    fundamental (±25 %: broadband noise on a poor red channel would inflate a wide band) over its
    mean; None when it cannot be measured."""
    import numpy as np  # noqa: PLC0415
    from scipy.signal import butter, sosfiltfilt  # noqa: PLC0415

    r = np.asarray(red, dtype=float)
    i = np.asarray(ir, dtype=float)
    pf = pulse_fundamental(ir, rate)
    if pf is None or not HR_RANGE[0] <= pf[0] <= HR_RANGE[1] or r.mean() <= 0 or i.mean() <= 0:
        return None
    f0 = pf[0] / 60.0
    sos = butter(2, [0.75 * f0, min(1.3 * f0, rate * 0.45)], btype="band", fs=rate, output="sos")
    ai = float(np.std(sosfiltfilt(sos, i)))
    ar = float(np.std(sosfiltfilt(sos, r)))
    if ai <= 0 or ar <= 0:
        return None
    return (ar / float(r.mean())) / (ai / float(i.mean()))


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 1) if xs else None


def summarize(outs: list[dict]) -> dict:
    hrs = [o["hr"] for o in outs if o["withheld"] is None and o["hr"] is not None]
    sps = [o["spo2"] for o in outs if o["withheld"] is None and o["spo2"] is not None]
    reasons: dict[str, int] = {}
    for o in outs:
        if o["withheld"] is not None:
            reasons[o["withheld"]] = reasons.get(o["withheld"], 0) + 1
    return {"hr_median": _median(hrs), "spo2_median": _median(sps),
            "reported": sum(1 for o in outs if o["withheld"] is None),
            "withheld": sum(1 for o in outs if o["withheld"] is not None), "withheld_reasons": reasons}


def _progress_bar(total_s: float):
    """A progress callback drawing a bar on stderr (the caller checked that it is a terminal)."""
    def show(done: float) -> None:
        n = int(done * 30)
        sys.stderr.write(f"\ranalyze [{'#' * n}{'.' * (30 - n)}] {done * 100:3.0f} % of {total_s / 60:.1f} min")
        if done >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def run(args) -> int:
    from host.mpvm import MicroPythonError, VMUnavailable
    from host.signalrun import SignalInputError, run_chain

    if args.rate is not None and not (math.isfinite(args.rate) and RATE_MIN <= args.rate <= RATE_MAX):
        raise CommandError(f"--rate must be a sample rate of {RATE_MIN:g} to {RATE_MAX:g} samples/s, got {args.rate:g}",
                           EXIT_USAGE)
    path = Path(args.path)
    if not path.is_file():
        raise CommandError(f"{path}: no such file", EXIT_DATA)

    def warn(msg: str) -> None:
        sys.stderr.write(msg + "\n")

    red, ir, info = read_channels(path, args.red, args.ir, args.no_header, args.skip_rows, args.strict)
    lines = info["skipped_lines"]
    if lines:
        shown = ", ".join(str(x) for x in lines[:10]) + (f", ... ({len(lines) - 10} more)" if len(lines) > 10 else "")
        plural = "s" if len(lines) > 1 else ""
        warn(f"warning: {path}: skipped {len(lines)} row{plural} not numeric in the chosen columns: line{plural} {shown}")
    rate = check_rate(path, args.rate, ir, info, args.force, warn)
    dur = info["samples"] / rate
    bar = _progress_bar(dur) if dur > _PROGRESS_S and sys.stderr.isatty() else None
    try:
        outs = run_chain(red, ir, rate, progress=bar)
    except SignalInputError as e:
        raise CommandError(f"{path}: {e}", EXIT_DATA) from None
    except VMUnavailable as e:
        raise CommandError(str(e), EXIT_DEVICE) from None
    except MicroPythonError as e:
        raise CommandError(f"the signal chain failed in MicroPython ({e.type}):\n{e.traceback}", EXIT_DEVICE) from None
    summary = summarize(outs)
    if red is not None and summary["spo2_median"] is not None and summary["spo2_median"] < _SWAP_SPO2:
        # the SpO2 the chain read is below the rated range: is R inverted?
        rr = swapped_ratio(red, ir, rate)
        if rr is not None and rr > _SWAP_R and 0.3 <= 1.0 / rr <= 0.9:
            warn(f"warning: {path}: red and IR look swapped (ratio of ratios R = {rr:.2f}, {1.0 / rr:.2f} the "
                 f"other way round): check --red and --ir")
            info["swapped_suspected"] = True
    summary["rate"] = rate
    summary["skipped_lines"] = info["skipped_lines"]
    summary["swapped_suspected"] = bool(info.get("swapped_suspected"))
    if args.json:
        for o in outs:
            emit_json({k: o[k] for k in ("t", "hr", "spo2", "pi", "q", "withheld")}
                      | {"stale": o["stale"], "irregular": o["irregular"]})
        emit_json({"summary": summary})
        return 0
    w = sys.stdout.write
    w(f"{path.name}: {info['samples']} samples at {rate:g} Hz "
      f"({info['samples'] / rate:.1f} s), IR column {info['ir_column']}, "
      f"red column {info['red_column'] if red is not None else '- (IR only: no SpO2)'}\n")
    w(f"{'t (s)':>6} {'HR bpm':>7} {'SpO2 %':>7} {'PI %':>6} {'q':>5}  withheld\n")
    for o in outs:
        def f(v, nd=1):
            return "-" if v is None else f"{v:.{nd}f}"
        w(f"{o['t']:6.0f} {f(o['hr']):>7} {f(o['spo2']):>7} {f(o['pi'], 2):>6} {o['q']:5.2f}  "
          f"{o['withheld'] or ''}{' (irregular rhythm: mean rate)' if o['irregular'] else ''}"
          f"{' (stale)' if o['stale'] else ''}\n")
    w(f"summary: HR median {summary['hr_median'] if summary['hr_median'] is not None else '-'} bpm, "
      f"SpO2 median {summary['spo2_median'] if summary['spo2_median'] is not None else '-'} %, "
      f"{summary['reported']} reported, {summary['withheld']} withheld "
      f"{summary['withheld_reasons'] or ''}\n")
    return 0
