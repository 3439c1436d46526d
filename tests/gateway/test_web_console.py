"""The console's parts below the browser: translation catalogue and templates, the vendored chart
library, alert thresholds, and the record reads and changes (gateway/web/records.py) on both
databases. The pages themselves are tested in a real browser (tests/e2e/test_console_browser.py)."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from gateway.web import auth, console
from gateway.web import records as rec
from tests.gateway._records import add_device, make_db, payload, store_reading

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "gateway" / "web"
UTC = dt.timezone.utc


def test_catalogue_has_every_key_the_pages_use_in_every_language():
    cat = console.load_catalogue()
    used = set()
    for f in (WEB / "templates").glob("*.html"):
        used |= set(re.findall(r"""\bt\(\s*["']([a-z0-9_]+)["']""", f.read_text()))
    used |= set(re.findall(r"""_key=["']([a-z0-9_]+)["']""", (WEB / "console.py").read_text()))
    used |= {"login_throttled", "login_wrong"}
    used |= {f"role_{r}" for r in auth.ROLES} | {f"state_{s}" for s in ("online", "offline", "unknown")}
    used |= {f"alert_{a}" for a in ("fever", "low_spo2", "tachycardia", "bradycardia")}
    used |= {f"done_{d}" for d in console.DONE} | {f"lang_{lang}" for lang in console.LANGS}
    used = {k for k in used if not k.endswith("_")}         # prefixes of the keys added above
    assert used - set(cat) == set()
    assert all(set(cat[k]) == set(console.LANGS) for k in cat)


def test_catalogue_gap_is_an_error(tmp_path):
    p = tmp_path / "i18n.toml"
    p.write_text('a = { fr = "x", en = "y" }\n')
    with pytest.raises(ValueError, match="a has no ar"):
        console.load_catalogue(p)


def test_vendored_uplot_is_the_npm_release():
    dist = REPO / "node_modules" / "uplot"
    assert dist.is_dir(), "node_modules/uplot missing: `make setup` installs package.json's packages"
    import json
    assert json.loads((REPO / "package.json").read_text())["dependencies"]["uplot"] == \
        json.loads((dist / "package.json").read_text())["version"]
    vendored = WEB / "static" / "vendor" / "uplot"
    for name, src in (("uPlot.iife.min.js", "dist/uPlot.iife.min.js"), ("uPlot.min.css", "dist/uPlot.min.css"),
                      ("LICENSE", "LICENSE")):
        assert (vendored / name).read_bytes() == (dist / src).read_bytes(), name


@pytest.mark.parametrize("values,expected", [
    ({"temp": 37.9, "spo2": 92, "hr": 100}, []),
    ({"temp": 38.0}, ["fever"]),
    ({"spo2": 91.9}, ["low_spo2"]),
    ({"hr": 100.5}, ["tachycardia"]),
    ({"hr": 49}, ["bradycardia"]),
    ({"hr": 50}, []),
    ({"temp": 39.2, "spo2": 85, "hr": 130}, ["fever", "low_spo2", "tachycardia"]),
    ({}, []),
])
def test_alert_thresholds(values, expected):
    assert rec.alerts(values) == expected


def test_times_on_the_site_clock():
    """Stored times are UTC; pages show them on the site's clock, Morocco's legal time by default
    (UTC+1, UTC+0 during Ramadan: the IANA database records each year's switch)."""
    from zoneinfo import ZoneInfo

    from gateway.config import from_dict

    casa = ZoneInfo(from_dict({}).console.timezone)
    assert casa.key == "Africa/Casablanca"
    assert console._when("2026-11-30T10:00:00+00:00", casa) == "2026-11-30 11:00"
    assert console._when(dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC), casa) == "2026-03-01 10:00"   # Ramadan 1447
    assert console._when("2026-11-30T23:30:00+00:00", casa) == "2026-12-01 00:30"                # the next day
    assert console._when(None, casa) == "—"
    t = int(dt.datetime(2026, 11, 30, 10, 0, tzinfo=UTC).timestamp())
    r = int(dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC).timestamp())
    assert console._wall_clock({"t": [t, r], "hr": [70, 71]}, casa) == {"t": [t + 3600, r], "hr": [70, 71]}
    assert console._offset_label(dt.datetime(2026, 11, 30, tzinfo=casa)) == "UTC+01:00"
    assert console._offset_label(dt.datetime(2026, 3, 1, tzinfo=casa)) == "UTC"
    assert console._offset_label(dt.datetime(2026, 11, 30, tzinfo=ZoneInfo("America/St_Johns"))) == "UTC-03:30"


def test_number_format_follows_the_language():
    assert console._num(38.04, 1, "fr") == "38,0" and console._num(38.04, 1, "en") == "38.0"
    assert console._num(None) == "—"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path}/gw.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    d = make_db(url)
    add_device(d, "nabd-a1b2c3d4e5f6")
    return d


def _reading(db, seq, minutes_ago, patient, temp=36.9, hr=72):
    p = payload("nabd-a1b2c3d4e5f6", seq, dt.datetime.now(UTC) - dt.timedelta(minutes=minutes_ago), patient=patient)
    p["obs"][0]["value"], p["obs"][2]["value"] = temp, hr
    store_reading(db, p)


def test_patients_overview_latest_values_and_alerts_first(db):
    _reading(db, 1, 30, "p-calm01")
    _reading(db, 2, 20, "p-hot001", temp=37.0)
    _reading(db, 3, 10, "p-hot001", temp=38.4, hr=45)
    _reading(db, 4, 5, None)
    pats = rec.patients_overview(db)
    assert [p["id"] for p in pats] == ["p-hot001", "p-calm01"]
    hot = pats[0]
    assert hot["values"]["temp"] == 38.4 and hot["readings"] == 2 and hot["alerts"] == ["fever", "bradycardia"]
    d = rec.patient_detail(db, "p-hot001")
    assert [r["seq"] for r in d["readings"]] == [3, 2]
    assert d["series"]["temp"] == [37.0, 38.4] and d["series"]["t"] == sorted(d["series"]["t"])
    assert rec.patient_detail(db, "p-nobody") is None
    assert [r["seq"] for r in rec.inbox(db)] == [4]


def test_attach_reading_once_and_audited(db):
    _reading(db, 7, 5, None)
    [r] = rec.inbox(db)
    rec.attach_reading(db, r["id"], "p-late01", "user:amina")
    assert rec.inbox(db) == []
    assert [x["seq"] for x in rec.patient_detail(db, "p-late01")["readings"]] == [7]
    with pytest.raises(rec.RecordError, match="already belongs"):
        rec.attach_reading(db, r["id"], "p-other1", "user:karim")
    with pytest.raises(rec.RecordError, match="pseudonymous"):
        rec.attach_reading(db, r["id"], "Fatima Zahra", "user:karim")
    with pytest.raises(rec.RecordError, match="no reading"):
        rec.attach_reading(db, 99999, "p-late01", "user:karim")
    # its FHIR Observations now name the patient (the signed payload did not)
    from gateway import recordstore as rs
    with db.connect() as c:
        obs, total = rs.observations_page(db, c, "patient_id", "p-late01", 10, 0)
        again = rs.reading_observations(db, c, r["id"])
    assert total == 4 and all(o["subject"] == {"reference": "Patient/p-late01"} for o in obs + again)
    [a] = auth.audit_log(db, target="Patient/p-late01")
    assert (a["actor"], a["action"]) == ("user:amina", "readings.attach") and "seq=7" in a["detail"]


def test_assignments_open_and_end(db):
    with db.connect() as c:
        c.execute(db.sql("INSERT INTO patients (id, created_at) VALUES (?, ?)"), ("p-bed001", auth.utcnow()))
    rec.record_assignment(db, "nabd-a1b2c3d4e5f6", "p-bed001", 1, "user:amina")
    assert [d["patient"] for d in rec.active_devices(db)] == ["p-bed001"]
    assert rec.patient_detail(db, "p-bed001")["devices"][0]["device_id"] == "nabd-a1b2c3d4e5f6"
    rec.record_assignment(db, "nabd-a1b2c3d4e5f6", None, 2, "user:amina")
    assert [d["patient"] for d in rec.active_devices(db)] == [None]
    [dev] = rec.devices_overview(db)
    assert dev["patient"] is None and dev["state"] == "unknown" and not dev["cal_overdue"]
