"""Test helpers of the records side (API, forwarder, observatory): a migrated database and rows
seeded through the gateway's own code (gateway.fhir for the Observations and Bundles), written with
the column names of the schema (gateway/migrations)."""
from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from gateway import fhir
from gateway import recordstore as rs

UTC = dt.timezone.utc


def make_db(url: str):
    from gateway.db import Database

    db = Database(url)
    db.migrate()
    return db


def add_device(db, dev: str, facility: str = "CS Hay Mohammadi", region: str = "MA-06", fw: str = "0.1.0",
               cal_due: str | None = "2027-05-02", registered_at: str = "2026-01-01T00:00:00+00:00",
               status: str = "active") -> None:
    with db.connect() as c:
        rs.execute(c, rs.q(db, "INSERT INTO devices (id, facility, region, status, fw, cal_id, cal_date, cal_due, "
                               "registered_at, cmd_n) VALUES (?,?,?,?,?,?,?,?,?,0)"),
                   (dev, facility, region, status, fw, "cal-1", "2026-01-01", cal_due, registered_at))
        c.commit()


def payload(dev: str, seq: int, ts: dt.datetime, patient: str | None = "p-7Hq2xK", codes=("temp", "spo2", "hr", "pi"),
            fw: str = "0.1.0", flags=()) -> dict:
    values = {"temp": (36.9, "Cel"), "spo2": (97, "%"), "hr": (72, "/min"), "pi": (2.4, "%")}
    p = {"v": 1, "dev": dev, "seq": seq, "ts": int(ts.timestamp()), "ts_ok": True, "up": 100, "fw": fw,
         "cal": {"id": "cal-1", "date": "2026-01-01"}, "site": "forehead+finger",
         "obs": [{"code": c, "value": values[c][0], "unit": values[c][1], "q": 0.9} for c in codes],
         "flags": list(flags)}
    if patient:
        p["patient"] = patient
    return p


def store_reading(db, p: dict, received_at: dt.datetime | None = None, outbox: bool = True) -> list[dict]:
    """Insert a reading, its Observations and (optionally) its outbox row, in one transaction, the
    way the ingest's store step does."""
    received_at = received_at or dt.datetime.fromtimestamp(p["ts"], UTC)
    obs = fhir.observations_for_reading(p, received_at)
    raw = json.dumps(p)
    with db.connect() as c:
        if p.get("patient") and not rs.rows(c, rs.q(db, "SELECT id FROM patients WHERE id = ?"), (p["patient"],)):
            rs.execute(c, rs.q(db, "INSERT INTO patients (id, created_at) VALUES (?, ?)"),
                       (p["patient"], rs.to_iso(received_at)))
        rs.execute(c, rs.q(db, "INSERT INTO readings (device_id, seq, sha256, raw, ts, ts_ok, received_at, "
                               "patient_id, fw, effective_at) VALUES (?,?,?,?,?,?,?,?,?,?)"),
                   (p["dev"], p["seq"], "00" * 32, raw.encode(), p["ts"], bool(p["ts_ok"]), rs.to_iso(received_at),
                    p.get("patient"), p["fw"], rs.to_iso(rs.parse_time(obs[0]["effectiveDateTime"]))))
        rid = rs.rows(c, rs.q(db, "SELECT id FROM readings WHERE device_id = ? AND seq = ?"),
                      (p["dev"], p["seq"]))[0]["id"]
        for pos, (o, item) in enumerate(zip(obs, p["obs"], strict=True)):
            rs.execute(c, rs.q(db, "INSERT INTO observations (reading_id, pos, code, value, unit, q, resource) "
                                   "VALUES (?,?,?,?,?,?,?)"),
                       (rid, pos, item["code"], item["value"], item["unit"], item["q"], json.dumps(o)))
        if outbox:
            rs.execute(c, rs.q(db, "INSERT INTO outbox (kind, partition_key, body, created_at, attempts, next_attempt_at) "
                                   "VALUES ('fhir', ?, ?, ?, 0, ?)"),
                       (p["dev"], json.dumps(fhir.transaction_bundle(obs)), rs.to_iso(received_at),
                        rs.to_iso(received_at)))
        c.commit()
    return obs


_DBS = [d for d in ("sqlite", "postgresql") if os.environ.get("NABD_TEST_DB", d) == d]


@pytest.fixture(params=_DBS)
def db_url(request, tmp_path) -> str:
    """Every records test runs on both databases: SQLite in the test's folder and a fresh PostgreSQL
    database (NABD_TEST_DB=sqlite or =postgresql narrows it to one)."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path}/gateway.db"
