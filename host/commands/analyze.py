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

Output: ``--json`` prints one JSON object per report (1 per s) then
``{"summary": {...}}``; otherwise a table. Exit 4 on unreadable files or missing columns.
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


def register(sub) -> None:
    p = sub.add_parser("analyze", help="run the firmware signal chain over a recorded PPG CSV",
                       description="Replay a recorded PPG file (CSV) through the firmware's own signal chain, "
                       "run on the MicroPython VM, and print heart rate, SpO2 and perfusion index once a "
                       "second. Columns are named (header row) or 0-based indices; other sample rates are "
                       "resampled to 100 Hz.")
    p.add_argument("path", help="CSV file")
    p.add_argument("--rate", type=float, default=100.0, help="sample rate of the file, Hz (default 100)")
    p.add_argument("--red", default=None, help="red column: name or 0-based index; 'none' for IR only")
    p.add_argument("--ir", default=None, help="IR column: name or 0-based index (default: 'ir' or 1/0)")
    p.add_argument("--no-header", action="store_true", help="the file has no header row")
    p.add_argument("--skip-rows", type=int, default=None, help="lines to skip before the header/data")
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
                  skip_rows: int | None = None) -> tuple[list[float] | None, list[float], dict]:
    """(red or None, ir, info) from a CSV. Raises CommandError (exit 4) with the reason."""
    try:
        text = path.read_text(errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"{path}: cannot read ({e})", EXIT_DATA) from None
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
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
    red_v: list[float] = []
    ir_v: list[float] = []
    bad = 0
    for line_no, r in enumerate(rows[start:], start=start + 1):
        try:
            iv = float(r[ii])
            rv = float(r[ri]) if ri is not None else 0.0
        except (IndexError, ValueError):
            bad += 1
            if bad > 10 and bad * 10 > line_no - start:
                raise CommandError(f"{path}: line {line_no}: not numeric in the chosen columns ({r[:6]})",
                                   EXIT_DATA) from None
            continue
        if not (math.isfinite(iv) and math.isfinite(rv)):
            bad += 1
            continue
        ir_v.append(iv)
        red_v.append(rv)
    if len(ir_v) < 2:
        raise CommandError(f"{path}: fewer than 2 numeric samples in the chosen columns", EXIT_DATA)
    info = {"samples": len(ir_v), "skipped_rows": bad, "header": header is not None,
            "ir_column": ir, "red_column": red}
    return (red_v if ri is not None else None), ir_v, info


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


def run(args) -> int:
    from host.mpvm import MicroPythonError, VMUnavailable
    from host.signalrun import SignalInputError, run_chain

    path = Path(args.path)
    if not path.is_file():
        raise CommandError(f"{path}: no such file", EXIT_DATA)
    if args.rate <= 0 or not math.isfinite(args.rate):
        raise CommandError(f"--rate must be a positive number of Hz, got {args.rate}", EXIT_USAGE)
    red, ir, info = read_channels(path, args.red, args.ir, args.no_header, args.skip_rows)
    try:
        outs = run_chain(red, ir, args.rate)
    except SignalInputError as e:
        raise CommandError(f"{path}: {e}", EXIT_DATA) from None
    except VMUnavailable as e:
        raise CommandError(str(e), EXIT_DEVICE) from None
    except MicroPythonError as e:
        raise CommandError(f"the signal chain failed in MicroPython ({e.type}):\n{e.traceback}", EXIT_DEVICE) from None
    summary = summarize(outs)
    if args.json:
        for o in outs:
            emit_json({k: o[k] for k in ("t", "hr", "spo2", "pi", "q", "withheld")}
                      | {"stale": o["stale"]})
        emit_json({"summary": summary})
        return 0
    w = sys.stdout.write
    w(f"{path.name}: {info['samples']} samples at {args.rate:g} Hz "
      f"({info['samples'] / args.rate:.1f} s), IR column {info['ir_column']}, "
      f"red column {info['red_column'] if red is not None else '- (IR only: no SpO2)'}\n")
    w(f"{'t (s)':>6} {'HR bpm':>7} {'SpO2 %':>7} {'PI %':>6} {'q':>5}  withheld\n")
    for o in outs:
        def f(v, nd=1):
            return "-" if v is None else f"{v:.{nd}f}"
        w(f"{o['t']:6.0f} {f(o['hr']):>7} {f(o['spo2']):>7} {f(o['pi'], 2):>6} {o['q']:5.2f}  "
          f"{o['withheld'] or ''}{' (stale)' if o['stale'] else ''}\n")
    w(f"summary: HR median {summary['hr_median'] if summary['hr_median'] is not None else '-'} bpm, "
      f"SpO2 median {summary['spo2_median'] if summary['spo2_median'] is not None else '-'} %, "
      f"{summary['reported']} reported, {summary['withheld']} withheld "
      f"{summary['withheld_reasons'] or ''}\n")
    return 0
