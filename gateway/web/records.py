"""What the console shows, read from the records (both databases), and the clinicians' record
changes: device assignment and attaching an unassigned reading. No web framework here.

Alert thresholds (adults; docs/console.md cites them):
- fever: temperature >= 38.0 °C;
- low SpO2: < 92 % (NEWS2's highest score, 3 points, is SpO2 <= 91 %);
- tachycardia: pulse > 100 /min; bradycardia: pulse < 50 /min (ACC/AHA/HRS definitions of sinus
  tachycardia and sinus bradycardia).
"""
from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from gateway import admin
from gateway import recordstore as rs
from gateway.db import Database, audit, utcnow

PATIENT_RE = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
FEVER_C = 38.0
LOW_SPO2_PCT = 92
TACHY_BPM = 100
BRADY_BPM = 50
CODES = ("temp", "spo2", "hr", "pi")


class RecordError(ValueError):
    """A change to the records that cannot be made; the message says why."""


def alerts(values: dict[str, float]) -> list[str]:
    """Alert names for one set of values (``temp`` °C, ``spo2`` %, ``hr`` /min)."""
    out = []
    t, s, h = values.get("temp"), values.get("spo2"), values.get("hr")
    if t is not None and t >= FEVER_C:
        out.append("fever")
    if s is not None and s < LOW_SPO2_PCT:
        out.append("low_spo2")
    if h is not None and h > TACHY_BPM:
        out.append("tachycardia")
    if h is not None and h < BRADY_BPM:
        out.append("bradycardia")
    return out


def check_patient(token: str) -> str:
    token = (token or "").strip()
    if not PATIENT_RE.match(token):
        raise RecordError("a patient code is 4 to 64 letters, digits, '-' or '_' (a pseudonymous code, "
                          "never a name or a national id)")
    return token


def _readings(db: Database, conn: Any, where: str, params: tuple, limit: int) -> list[dict]:
    """Readings matching ``where`` (newest first, at most ``limit``) with their values by code."""
    rows = rs.rows(conn, db.sql(f"SELECT r.id, r.device_id, r.seq, r.patient_id, r.effective_at, r.fw "
                                f"FROM readings r WHERE {where} ORDER BY r.effective_at DESC, r.id DESC LIMIT ?"),
                   (*params, limit))
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    marks = ",".join("?" * len(ids))
    obs = rs.rows(conn, db.sql(f"SELECT reading_id, code, value FROM observations WHERE reading_id IN ({marks})"),
                  tuple(ids))
    values: dict[int, dict[str, float]] = {i: {} for i in ids}
    for o in obs:
        values[o["reading_id"]][o["code"]] = float(o["value"])
    out = []
    for r in rows:
        v = values[r["id"]]
        out.append({"id": int(r["id"]), "device_id": r["device_id"], "seq": int(r["seq"]),
                    "patient_id": r["patient_id"], "at": rs.parse_time(r["effective_at"]), "fw": r["fw"],
                    "values": v, "alerts": alerts(v)})
    return out


def open_assignments(db: Database, conn: Any) -> list[dict]:
    return rs.rows(conn, "SELECT device_id, patient_id, started_at, started_by FROM device_assignments "
                         "WHERE ended_at IS NULL ORDER BY device_id")


def patients_overview(db: Database) -> list[dict]:
    """Every patient with their latest value of each kind, its time, alerts and assigned devices;
    patients with an alert first, then the most recently measured."""
    with db.connect() as conn:
        pats = rs.rows(conn, "SELECT id, created_at FROM patients")
        latest = rs.rows(conn, """
            SELECT patient_id, code, value, effective_at FROM (
              SELECT r.patient_id, o.code, o.value, r.effective_at,
                     ROW_NUMBER() OVER (PARTITION BY r.patient_id, o.code ORDER BY r.effective_at DESC, r.id DESC) AS k
              FROM readings r JOIN observations o ON o.reading_id = r.id WHERE r.patient_id IS NOT NULL) x
            WHERE k = 1""")
        counts = rs.rows(conn, "SELECT patient_id, COUNT(*) AS n FROM readings WHERE patient_id IS NOT NULL "
                               "GROUP BY patient_id")
        assigned = open_assignments(db, conn)
    by: dict[str, dict] = {p["id"]: {"id": p["id"], "values": {}, "last_at": None, "readings": 0, "devices": []}
                           for p in pats}
    for r in latest:
        p = by.setdefault(r["patient_id"], {"id": r["patient_id"], "values": {}, "last_at": None, "readings": 0,
                                            "devices": []})
        p["values"][r["code"]] = float(r["value"])
        t = rs.parse_time(r["effective_at"])
        p["last_at"] = max(p["last_at"], t) if p["last_at"] else t
    for r in counts:
        if r["patient_id"] in by:
            by[r["patient_id"]]["readings"] = int(r["n"])
    for a in assigned:
        if a["patient_id"] in by:
            by[a["patient_id"]]["devices"].append(a["device_id"])
    out = list(by.values())
    for p in out:
        p["alerts"] = alerts(p["values"])
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    out.sort(key=lambda p: (not p["alerts"], -(p["last_at"] or epoch).timestamp(), p["id"]))
    return out


def patient_detail(db: Database, patient: str, limit: int = 500) -> dict | None:
    """One patient's readings (newest first), chart series (oldest first) and assigned devices."""
    with db.connect() as conn:
        if not rs.patient_exists(db, conn, patient):
            return None
        readings = _readings(db, conn, "r.patient_id = ?", (patient,), limit)
        assigned = [a for a in open_assignments(db, conn) if a["patient_id"] == patient]
    series: dict[str, list] = {"t": []}
    for c in ("temp", "spo2", "hr"):
        series[c] = []
    for r in reversed(readings):
        series["t"].append(int(r["at"].timestamp()))
        for c in ("temp", "spo2", "hr"):
            series[c].append(r["values"].get(c))
    latest: dict[str, float] = {}
    for r in readings:                      # newest first: the first value of each kind is the latest
        for c, v in r["values"].items():
            latest.setdefault(c, v)
    return {"id": patient, "readings": readings, "series": series, "latest": latest, "alerts": alerts(latest),
            "devices": [{"device_id": a["device_id"], "since": rs.parse_time(a["started_at"]),
                         "by": a["started_by"]} for a in assigned]}


def inbox(db: Database, limit: int = 200) -> list[dict]:
    """Readings that carry no patient (taken before an assignment, or on an unassigned device)."""
    with db.connect() as conn:
        return _readings(db, conn, "r.patient_id IS NULL", (), limit)


def active_devices(db: Database) -> list[dict]:
    with db.connect() as conn:
        devs = rs.rows(conn, "SELECT id, facility FROM devices WHERE status = 'active' ORDER BY id")
        assigned = {a["device_id"]: a["patient_id"] for a in open_assignments(db, conn)}
    return [{"id": d["id"], "facility": d["facility"], "patient": assigned.get(d["id"])} for d in devs]


def attach_reading(db: Database, reading_id: int, patient: str, actor: str, forward: bool = False) -> dict:
    """Give an unassigned reading to a patient (the signed payload is unchanged: the attribution is
    the clinician's, and the audit log says whose). Refused when the reading already has a patient.
    ``forward`` (FHIR forwarding enabled): in the same transaction, an outbox row that sends the
    reading's Observations again as updates, now with their subject (gateway/forward.py)."""
    patient = check_patient(patient)
    now = utcnow()
    with db.connect() as conn:
        db.begin(conn)
        r = rs.rows(conn, db.sql("SELECT id, device_id, seq, patient_id FROM readings WHERE id = ?"), (reading_id,))
        if not r:
            raise RecordError(f"no reading {reading_id}")
        if r[0]["patient_id"] is not None:
            raise RecordError(f"reading {reading_id} already belongs to a patient")
        conn.execute(db.sql("INSERT INTO patients (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"),
                     (patient, now))
        n = conn.execute(db.sql("UPDATE readings SET patient_id = ? WHERE id = ? AND patient_id IS NULL"),
                         (patient, reading_id)).rowcount
        if n != 1:
            raise RecordError(f"reading {reading_id} already belongs to a patient")
        if forward:
            conn.execute(db.sql("INSERT INTO outbox (kind, partition_key, body, created_at, attempts, "
                                "next_attempt_at) VALUES ('fhir', ?, ?, ?, 0, ?)"),
                         (r[0]["device_id"], '{"reading_id":%d,"update":true}' % int(reading_id), now, now))
        audit(db, conn, actor, "readings.attach", f"Patient/{patient}",
              f"reading={reading_id} device={r[0]['device_id']} seq={r[0]['seq']}")
    return r[0]


def record_assignment(db: Database, device_id: str, patient: str | None, command_n: int, actor: str) -> None:
    """After the signed assign-patient command was published: end the device's open assignment and,
    for a patient, open the new one."""
    now = utcnow()
    with db.connect() as conn:
        db.begin(conn)
        conn.execute(db.sql("UPDATE device_assignments SET ended_at = ?, ended_by = ? WHERE device_id = ? "
                            "AND ended_at IS NULL"), (now, actor, device_id))
        if patient is not None:
            conn.execute(db.sql("INSERT INTO device_assignments (device_id, patient_id, started_at, started_by, "
                                "command_n) VALUES (?, ?, ?, ?, ?)"), (device_id, patient, now, actor, command_n))


def devices_overview(db: Database) -> list[dict]:
    """admin.list_devices plus the latest status' sensors and error count, and the last reading time."""
    devs = admin.list_devices(db)
    with db.connect() as conn:
        st = {r["device_id"]: r for r in rs.rows(conn, "SELECT device_id, sensors, errors, received_at, rssi "
                                                      "FROM device_status")}
        last = {r["device_id"]: r["t"] for r in rs.rows(conn, "SELECT device_id, MAX(effective_at) AS t FROM readings "
                                                             "GROUP BY device_id")}
        assigned = {a["device_id"]: a["patient_id"] for a in open_assignments(db, conn)}
    today = utcnow().date()
    for d in devs:
        s = st.get(d["id"])
        sensors = {}
        if s is not None:
            try:
                sensors = json.loads(s["sensors"]) if isinstance(s["sensors"], str) else dict(s["sensors"])
            except (ValueError, TypeError):
                sensors = {"status": "unreadable"}
        d["faults"] = {k: v for k, v in sensors.items() if v != "ok"}
        d["errors"] = int(s["errors"]) if s is not None else None
        d["rssi"] = s["rssi"] if s is not None else None
        d["status_at"] = rs.parse_time(s["received_at"]) if s is not None else None
        d["last_reading_at"] = rs.parse_time(last.get(d["id"]))
        due = rs.parse_date(d["cal_due"])
        d["cal_overdue"] = due is not None and due < today
        d["patient"] = assigned.get(d["id"])
    return devs
