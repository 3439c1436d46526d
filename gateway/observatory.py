"""Observatory feed: daily device counts per facility and region, never a person.

For each day D in [from, to] and each facility (with its ISO 3166-2 region, MA-01 .. MA-12), and for
each region as a whole:

- ``devices_registered``: devices registered on or before D (revoked ones excluded);
- ``devices_active``: devices that sent at least one reading measured on D (UTC);
- ``readings``: Observations measured on D, by kind (``temp``, ``spo2``, ``hr``, ``pi``);
- ``calibration_overdue``: registered devices whose calibration was due before D;
- ``firmware``: devices in service on D by firmware version (from their readings that day; devices
  with no reading that day are counted under their registered firmware).

Small cells. The reading-derived cells (``devices_active``, ``readings``) describe people: a
facility that saw one patient on a day would publish that patient's visit. They are suppressed
(``null`` and ``"suppressed": true``) when the day's readings there come from fewer than
``suppress_below`` distinct patients (readings without a patient token count as no patient, so a day
of anonymous readings is suppressed too). The default, 5, is the usual small-cell threshold of
health statistics publications (e.g. counts 1-4 withheld): low enough that a rural health centre
seeing a handful of patients a day still reports most days, high enough that no cell singles out a
person. Zero cells are published (no readings: nothing to disclose). Secondary suppression: when
exactly one facility of a region is suppressed on a day and the region row is not, the facility with
the next-smallest patient count is suppressed too, so that the region total minus the published
facilities cannot reveal the hidden cell. Registry cells (devices registered, calibration,
firmware) count devices, not people, and are always published.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import re
import threading
from collections import defaultdict

from gateway import recordstore as rs
from gateway.verify import TS_FLOOR

KINDS = ("temp", "spo2", "hr", "pi")
REGIONS = tuple(f"MA-{i:02d}" for i in range(1, 13))
DEFAULT_SUPPRESS_BELOW = 5
MAX_DAYS = 366
log = logging.getLogger("nabd.gateway.observatory")
_REGION = re.compile(r"^MA-(0[1-9]|1[0-2])$")


class ObservatoryError(ValueError):
    """Bad report parameters (dates, range, region)."""


def region_name(code: str) -> str:
    """English name of a Moroccan region from pycountry's offline ISO 3166-2 data."""
    validate_region(code)
    import pycountry

    sub = pycountry.subdivisions.get(code=code)
    if sub is None:
        raise ObservatoryError(f"unknown region {code!r}")
    return sub.name


def validate_region(code: str) -> str:
    if not isinstance(code, str) or not _REGION.match(code):
        raise ObservatoryError(f"region must be an ISO 3166-2 code MA-01 .. MA-12, got {code!r}")
    return code


def parse_range(date_from: str | None, date_to: str | None) -> tuple[dt.date, dt.date]:
    try:
        d0 = dt.date.fromisoformat(str(date_from))
        d1 = dt.date.fromisoformat(str(date_to))
    except ValueError:
        raise ObservatoryError("from and to must be dates YYYY-MM-DD") from None
    if d1 < d0:
        raise ObservatoryError("to is before from")
    if (d1 - d0).days + 1 > MAX_DAYS:
        raise ObservatoryError(f"at most {MAX_DAYS} days per report")
    return d0, d1


def _day_expr(db, col: str) -> str:
    """SQL for the UTC date (YYYY-MM-DD) of a stored time column on either dialect."""
    if db.dialect == "postgresql":
        return f"to_char(({col})::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    return f"date({col})"


def device_counts(db, date_from, date_to, suppress_below: int = DEFAULT_SUPPRESS_BELOW) -> dict:
    """The report for [date_from, date_to] (dates or 'YYYY-MM-DD'), as a JSON-ready dict."""
    d0, d1 = parse_range(date_from, date_to)
    k = int(suppress_below)
    if k < 1:
        raise ObservatoryError("suppress_below must be >= 1")
    # never a day before the earliest date a reading may carry (gateway/verify.py TS_FLOOR): rows
    # filed at such dates before that check existed are not counted
    lo = max(rs.to_iso(dt.datetime(d0.year, d0.month, d0.day, tzinfo=rs.UTC)),
             rs.to_iso(dt.datetime.fromtimestamp(TS_FLOOR, rs.UTC)))
    hi_day = d1 + dt.timedelta(days=1)
    hi = rs.to_iso(dt.datetime(hi_day.year, hi_day.month, hi_day.day, tzinfo=rs.UTC))
    day = _day_expr(db, "r.effective_at")
    with db.connect() as conn:
        devices = rs.rows(conn, "SELECT id, facility, region, status, fw, cal_due, registered_at FROM devices")
        obs = rs.rows(conn, rs.q(db, f"""
            SELECT {day} AS day, r.device_id AS device_id, o.code AS code, COUNT(*) AS n
            FROM readings r JOIN observations o ON o.reading_id = r.id
            WHERE r.effective_at >= ? AND r.effective_at < ?
            GROUP BY {day}, r.device_id, o.code"""), (lo, hi))
        pats = rs.rows(conn, rs.q(db, f"""
            SELECT {day} AS day, d.facility AS facility, d.region AS region, r.patient_id AS patient_id
            FROM readings r JOIN devices d ON d.id = r.device_id
            WHERE r.effective_at >= ? AND r.effective_at < ? AND r.patient_id IS NOT NULL
            GROUP BY {day}, d.facility, d.region, r.patient_id"""), (lo, hi))
        fws = rs.rows(conn, rs.q(db, f"""
            SELECT {day} AS day, r.device_id AS device_id, MAX(r.fw) AS fw
            FROM readings r WHERE r.effective_at >= ? AND r.effective_at < ?
            GROUP BY {day}, r.device_id"""), (lo, hi))
    # per (day, device): reading counts by kind
    per_dev: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    for r in obs:
        if r["code"] in KINDS:
            per_dev[(str(r["day"]), r["device_id"])][r["code"]] += int(r["n"])
    fw_of = {(str(r["day"]), r["device_id"]): r["fw"] for r in fws}
    # distinct patients per (day, facility, region) and per (day, region)
    fac_pat: dict[tuple, set] = defaultdict(set)
    reg_pat: dict[tuple, set] = defaultdict(set)
    for r in pats:
        fac_pat[(str(r["day"]), r["facility"], r["region"])].add(r["patient_id"])
        reg_pat[(str(r["day"]), r["region"])].add(r["patient_id"])

    facilities = sorted({(d["facility"] or "", d["region"] or "") for d in devices}, key=lambda x: (x[1], x[0]))
    rows_out = []
    day_i = d0
    while day_i <= d1:
        ds = day_i.isoformat()
        fac_rows = []
        for fac, reg in facilities:
            fac_rows.append(_cell(ds, day_i, reg, fac, [d for d in devices if (d["facility"] or "") == fac
                                                          and (d["region"] or "") == reg],
                                  per_dev, fw_of, len(fac_pat.get((ds, fac, reg), ())), k))
        for reg in sorted({r for _, r in facilities}):
            in_reg = [r for r in fac_rows if r["region"] == reg]
            region_row = _cell(ds, day_i, reg, None, [d for d in devices if (d["region"] or "") == reg],
                               per_dev, fw_of, len(reg_pat.get((ds, reg), ())), k)
            _secondary_suppression(in_reg, region_row)
            rows_out.extend(in_reg)
            rows_out.append(region_row)
        day_i += dt.timedelta(days=1)
    for r in rows_out:
        r.pop("_patients", None)
    return {"from": d0.isoformat(), "to": d1.isoformat(), "suppress_below": k,
            "generated_at": rs.now_utc().isoformat(timespec="seconds"), "rows": rows_out}


def _cell(ds, day, region, facility, devs, per_dev, fw_of, n_patients, k) -> dict:
    registered = [d for d in devs if d["status"] != "revoked" and (rs.parse_date(d["registered_at"]) or day) <= day]
    active = [d for d in devs if (ds, d["id"]) in per_dev]
    readings = dict.fromkeys(KINDS, 0)
    for d in active:
        for kind, n in per_dev[(ds, d["id"])].items():
            readings[kind] += n
    overdue = sum(1 for d in registered if d["cal_due"] is not None and rs.parse_date(d["cal_due"]) < day)
    firmware: dict[str, int] = defaultdict(int)
    for d in {d["id"]: d for d in registered + active}.values():
        fw = fw_of.get((ds, d["id"])) or d["fw"] or "unknown"
        firmware[fw] += 1
    try:
        name = region_name(region)
    except ObservatoryError:
        name = None
    row = {"date": ds, "region": region or None, "region_name": name, "facility": facility,
           "devices_registered": len(registered), "devices_active": len(active), "readings": readings,
           "calibration_overdue": overdue, "firmware": dict(sorted(firmware.items())),
           "suppressed": False, "_patients": n_patients}
    if sum(readings.values()) > 0 and n_patients < k:
        _suppress(row)
    return row


def _suppress(row: dict) -> None:
    row["devices_active"] = None
    row["readings"] = dict.fromkeys(KINDS)
    row["suppressed"] = True


def _secondary_suppression(fac_rows: list[dict], region_row: dict) -> None:
    hidden = [r for r in fac_rows if r["suppressed"]]
    if len(hidden) == 1 and not region_row["suppressed"]:
        shown = [r for r in fac_rows if not r["suppressed"] and sum(r["readings"].values()) > 0]
        if shown:
            _suppress(min(shown, key=lambda r: r["_patients"]))


CSV_FIELDS = ["date", "region", "region_name", "facility", "devices_registered", "devices_active",
              "readings_temp", "readings_spo2", "readings_hr", "readings_pi", "calibration_overdue",
              "firmware", "suppressed"]


def to_csv(report: dict) -> str:
    """CSV, one line per row; suppressed cells empty; firmware as 'version:count;...'."""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in report["rows"]:
        line = {k: r.get(k) for k in CSV_FIELDS if k in r}
        for kind in KINDS:
            line[f"readings_{kind}"] = r["readings"][kind]
        line["facility"] = r["facility"] if r["facility"] is not None else "(region total)"
        line["firmware"] = ";".join(f"{v}:{n}" for v, n in r["firmware"].items())
        line["suppressed"] = "true" if r["suppressed"] else "false"
        w.writerow({k: ("" if v is None else _csv_cell(v)) for k, v in line.items()})
    return out.getvalue()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def _csv_cell(v):
    """A text cell a spreadsheet would read as a formula (=, +, -, @, tab, CR first: OWASP's CSV
    injection rule) gets a leading apostrophe, so it is shown as text; numbers pass unchanged.
    Devices' firmware versions are checked at verification; facility names come from
    administrators, and rows stored before the check are still read."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


def to_text(report: dict) -> str:
    """A fixed-width table for people."""
    head = f"{'date':10} {'region':6} {'facility':24} {'reg':>4} {'act':>4} {'temp':>5} {'spo2':>5} " \
           f"{'hr':>5} {'pi':>5} {'cal!':>4}  firmware"
    lines = [f"observatory device counts {report['from']} .. {report['to']} "
             f"(cells under {report['suppress_below']} patients suppressed: '-')", head]

    def f(v):
        return "-" if v is None else str(v)
    for r in report["rows"]:
        fac = r["facility"] if r["facility"] is not None else "(region total)"
        rd = r["readings"]
        lines.append(f"{r['date']:10} {r['region'] or '':6} {fac[:24]:24} {r['devices_registered']:>4} "
                     f"{f(r['devices_active']):>4} {f(rd['temp']):>5} {f(rd['spo2']):>5} {f(rd['hr']):>5} "
                     f"{f(rd['pi']):>5} {r['calibration_overdue']:>4}  "
                     + ",".join(f"{v}:{n}" for v, n in r["firmware"].items()))
    return "\n".join(lines) + "\n"


def enqueue_daily_push(db, day: dt.date, suppress_below: int = DEFAULT_SUPPRESS_BELOW) -> bool:
    """Queue the report for ``day`` in the outbox (kind 'observatory', partition 'observatory'),
    once per day: returns False when that day is already queued. The check and the insert run
    under the database's write lock (SQLite ``BEGIN IMMEDIATE``, a transaction-scoped advisory lock
    on PostgreSQL), so two gateway processes scheduling the same day queue it once."""
    report = device_counts(db, day, day, suppress_below)
    key = f"observatory:{day.isoformat()}"
    body = json.dumps({"key": key, "report": report}, separators=(",", ":"))
    with db.connect() as conn:
        db.begin(conn)
        if db.dialect == "postgresql":
            conn.execute("SELECT pg_advisory_xact_lock(7366001)")  # 'nabd' observatory queue
        existing = rs.rows(conn, rs.q(db, "SELECT id FROM outbox WHERE kind = 'observatory' AND body LIKE ?"),
                           (f'{{"key":"{key}"%',))
        if existing:
            return False
        now = rs.to_iso(rs.now_utc())
        rs.execute(conn, rs.q(db, "INSERT INTO outbox (kind, partition_key, body, created_at, attempts, "
                                  "next_attempt_at) VALUES ('observatory', 'observatory', ?, ?, 0, ?)"),
                   (body, now, now))
        conn.commit()
    return True


class DailyPush:
    """``nabd-gateway serve`` queues each finished UTC day's counts for the observatory endpoint.

    Day D is queued once ``delay_hours`` after it ends (default 6 h: devices that were offline at
    midnight deliver their stored readings in the meantime; a reading that arrives later still
    counts in the report and the API, not in the pushed day). Days missed while the gateway was
    down are caught up, at most ``catch_up_days`` back and never before the first device was
    registered. Each day is queued once (``enqueue_daily_push``) and sent by the forwarder
    (gateway/forward.py), which retries until the endpoint accepts it; the body's ``key`` lets the
    endpoint ignore a repeat.
    """

    def __init__(self, db, suppress_below: int = DEFAULT_SUPPRESS_BELOW, delay_hours: float = 6.0,
                 catch_up_days: int = 7):
        self.db = db
        self.suppress_below = suppress_below
        self.delay = dt.timedelta(hours=delay_hours)
        self.catch_up_days = catch_up_days
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due_days(self, now: dt.datetime) -> list[dt.date]:
        """The finished days that should be queued by ``now`` (UTC), oldest first."""
        last = (now - self.delay).date() - dt.timedelta(days=1)
        first = last - dt.timedelta(days=self.catch_up_days - 1)
        with self.db.connect() as conn:
            row = rs.rows(conn, "SELECT MIN(registered_at) AS t FROM devices")[0]
        if row["t"] is None:
            return []
        registered = rs.parse_time(row["t"]).date()  # type: ignore[union-attr]
        first = max(first, registered)
        return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]

    def run_once(self, now: dt.datetime | None = None) -> list[dt.date]:
        """Queue every due day not queued yet; returns the days queued by this call."""
        now = now or rs.now_utc()
        return [d for d in self.due_days(now) if enqueue_daily_push(self.db, d, self.suppress_below)]

    def start(self, interval: float = 600.0) -> "DailyPush":
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    for d in self.run_once():
                        log.info("observatory counts for %s queued", d)
                except Exception:  # the database is away: the next round catches up
                    log.exception("queueing the observatory's daily counts failed; retrying")
                self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name="nabd-observatory-push", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
