"""Observatory counts: per facility/region/day, small-cell suppression, regions, CSV, API, push."""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import urllib.request

import pytest

from gateway import observatory
from gateway.web.server import start_api
from tests.gateway import _records
from tests.gateway._records import UTC, add_device, make_db, payload, store_reading

db_url = _records.db_url  # fixture: SQLite and PostgreSQL

D1 = dt.datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@pytest.fixture
def db(db_url):
    db = make_db(db_url)
    # Casablanca: two facilities; Rabat: one
    add_device(db, "nabd-00000000000a", facility="CS Hay Mohammadi", region="MA-06", fw="0.1.0")
    add_device(db, "nabd-00000000000b", facility="CS Hay Mohammadi", region="MA-06", fw="0.1.0",
               cal_due="2026-11-01")                               # overdue from 2026-11-02
    add_device(db, "nabd-00000000000c", facility="CS Anfa", region="MA-06", fw="0.2.0")
    add_device(db, "nabd-00000000000d", facility="CS Agdal", region="MA-04", fw="0.1.0")
    add_device(db, "nabd-00000000000e", facility="CS Agdal", region="MA-04", registered_at="2026-11-24T10:00:00+00:00")
    add_device(db, "nabd-00000000000f", facility="CS Agdal", region="MA-04", status="revoked")
    seq = iter(range(1, 10_000))
    # Hay Mohammadi, day 1: 6 patients on device a, 1 on device b (fw 0.1.1 reported by the reading)
    for i in range(6):
        store_reading(db, payload("nabd-00000000000a", next(seq), D1 + dt.timedelta(minutes=i), patient=f"p-ham{i}"))
    store_reading(db, payload("nabd-00000000000b", next(seq), D1, patient="p-ham9", codes=("temp",), fw="0.1.1"))
    # Anfa, day 1: 2 patients only -> suppressed
    for i in range(2):
        store_reading(db, payload("nabd-00000000000c", next(seq), D1, patient=f"p-anfa{i}", codes=("spo2", "hr")))
    # Agdal, day 1: 5 patients exactly (threshold 5 -> published); day 2: anonymous readings only
    for i in range(5):
        store_reading(db, payload("nabd-00000000000d", next(seq), D1, patient=f"p-agd{i}", codes=("temp",)))
    store_reading(db, payload("nabd-00000000000d", next(seq), D1 + dt.timedelta(days=1), patient=None))
    return db


def row(report, date, facility, region=None):
    (r,) = [r for r in report["rows"] if r["date"] == date and r["facility"] == facility
            and (region is None or r["region"] == region)]
    return r


def test_counts_per_facility_and_region(db):
    rep = observatory.device_counts(db, "2026-11-23", "2026-11-24", suppress_below=1)
    ham = row(rep, "2026-11-23", "CS Hay Mohammadi")
    assert ham["region"] == "MA-06" and ham["region_name"].startswith("Casablanca-Settat")
    assert ham["devices_registered"] == 2 and ham["devices_active"] == 2
    assert ham["readings"] == {"temp": 7, "spo2": 6, "hr": 6, "pi": 6}
    assert ham["calibration_overdue"] == 1
    assert ham["firmware"] == {"0.1.0": 1, "0.1.1": 1}
    assert ham["suppressed"] is False
    agdal1 = row(rep, "2026-11-23", "CS Agdal")
    assert agdal1["readings"]["temp"] == 5 and not agdal1["suppressed"]
    assert agdal1["devices_registered"] == 1          # e registered the next day, f revoked
    assert row(rep, "2026-11-24", "CS Agdal")["devices_registered"] == 2
    assert row(rep, "2026-11-24", "CS Anfa")["readings"] == {"temp": 0, "spo2": 0, "hr": 0, "pi": 0}
    assert row(rep, "2026-11-24", "CS Anfa")["suppressed"] is False    # zero published
    region = row(rep, "2026-11-23", None, "MA-06")
    assert region["readings"] == {"temp": 7, "spo2": 8, "hr": 8, "pi": 6}
    assert region["devices_active"] == 3 and region["devices_registered"] == 3
    json.dumps(rep)


def test_small_cells_suppressed_with_secondary_suppression(db):
    rep = observatory.device_counts(db, "2026-11-23", "2026-11-24", suppress_below=5)
    anfa = row(rep, "2026-11-23", "CS Anfa")
    assert anfa["suppressed"] is True and anfa["devices_active"] is None
    assert anfa["readings"] == {"temp": None, "spo2": None, "hr": None, "pi": None}
    assert anfa["devices_registered"] == 1   # registry counts are not about people
    # the region total (9 patients) is published, so the other facility is suppressed too:
    # region minus one published facility would otherwise give Anfa's counts away
    assert row(rep, "2026-11-23", None, "MA-06")["suppressed"] is False
    assert row(rep, "2026-11-23", "CS Hay Mohammadi")["suppressed"] is True
    # anonymous readings (no patient token) count as no patient: suppressed
    assert row(rep, "2026-11-24", "CS Agdal")["suppressed"] is True
    # with a lower threshold nothing is hidden on day 1
    rep2 = observatory.device_counts(db, "2026-11-23", "2026-11-23", suppress_below=2)
    assert not any(r["suppressed"] for r in rep2["rows"])
    # no personal data anywhere in the report
    text = json.dumps(rep2)
    assert "p-ham" not in text and "p-anfa" not in text and "nabd-00000000000a" not in text


@pytest.mark.parametrize("a,b", [("2026-11-24", "2026-11-23"), ("yesterday", "2026-11-23"),
                                 ("2026-01-01", "2027-06-01"), ("2026-11-23", None)])
def test_bad_ranges(db, a, b):
    with pytest.raises(observatory.ObservatoryError):
        observatory.device_counts(db, a, b)


def test_regions():
    assert observatory.region_name("MA-01").startswith("Tanger")
    assert [observatory.validate_region(r) for r in observatory.REGIONS][-1] == "MA-12"
    for bad in ("MA-13", "MA-00", "FR-75", "ma-01", "MA-1"):
        with pytest.raises(observatory.ObservatoryError):
            observatory.region_name(bad)


def test_csv(db):
    rep = observatory.device_counts(db, "2026-11-23", "2026-11-23", suppress_below=5)
    rows = list(csv.DictReader(io.StringIO(observatory.to_csv(rep))))
    assert len(rows) == len(rep["rows"])
    anfa = [r for r in rows if r["facility"] == "CS Anfa"][0]
    assert anfa["suppressed"] == "true" and anfa["readings_spo2"] == "" and anfa["devices_registered"] == "1"
    agdal = [r for r in rows if r["facility"] == "CS Agdal"][0]
    assert agdal["readings_temp"] == "5" and agdal["firmware"] == "0.1.0:1"


def test_api_json_and_csv(db):
    token = "t0ken-for-tests"
    server = start_api({"api": {"listen": "127.0.0.1:0", "token_sha256": hashlib.sha256(token.encode()).hexdigest()},
                        "observatory": {"suppress_below": 5}}, db)
    try:
        def get(accept=None, q="from=2026-11-23&to=2026-11-24"):
            h = {"Authorization": f"Bearer {token}"}
            if accept:
                h["Accept"] = accept
            req = urllib.request.Request(f"{server.url}/observatory/device-counts?{q}", headers=h)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.headers["Content-Type"], r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.headers["Content-Type"], e.read().decode()
        status, ctype, body = get()
        assert status == 200 and ctype.startswith("application/json")
        assert json.loads(body)["rows"] == observatory.device_counts(db, "2026-11-23", "2026-11-24", 5)["rows"]
        status, ctype, body = get("text/csv")
        assert status == 200 and ctype.startswith("text/csv") and body.startswith("date,region,region_name")
        status, ctype, body = get(q="from=2026-11-23")
        assert status == 400 and json.loads(body)["resourceType"] == "OperationOutcome"
    finally:
        server.shutdown()


def test_daily_push_enqueued_once(db):
    assert observatory.enqueue_daily_push(db, dt.date(2026, 11, 23), 5) is True
    assert observatory.enqueue_daily_push(db, dt.date(2026, 11, 23), 5) is False
    assert observatory.enqueue_daily_push(db, dt.date(2026, 11, 24), 5) is True
    from gateway import recordstore as rs
    with db.connect() as c:
        rows = rs.rows(c, "SELECT kind, partition_key, body FROM outbox WHERE kind = 'observatory' ORDER BY id")
    assert [r["partition_key"] for r in rows] == ["observatory", "observatory"]
    body = json.loads(rows[0]["body"])
    assert body["key"] == "observatory:2026-11-23" and body["report"]["from"] == "2026-11-23"
