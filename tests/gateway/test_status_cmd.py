"""Device status ingestion (gateway/status.py) and signed commands (gateway/device_commands.py) on
SQLite and PostgreSQL, the command CLI against a real Mosquitto. Statuses and commands are built
and checked with the FIRMWARE's code (firmware/jws.py, firmware.reading.dumps: the exact bytes a
device sends) and CPython's hmac, independent of the gateway's signer."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from firmware import jws as fw_jws
from firmware import reading as fw_reading
from gateway import admin, device_commands, metrics, observatory
from gateway.db import Database
from gateway.status import DEVICES_ONLINE, STATUS_MESSAGES, StatusStore, latest
from gateway.store import Message
from tests.support.harness import rows, scalar, write_config

REPO = Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc
DEV = "nabd-240ac4000abc"
KEY = bytes(range(32))
OTHER = "nabd-240ac4000def"
KEY2 = bytes(range(32, 64))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def kek():
    return os.urandom(32)


@pytest.fixture
def db(db_url, kek):
    d = Database(db_url)
    d.migrate()
    admin.add_device(d, kek, DEV, KEY, "chu-ibn-sina", "MA-04", actor="test")
    admin.add_device(d, kek, OTHER, KEY2, "cs-azrou", "MA-05", actor="test")
    return d


def status(dev=DEV, **kw) -> dict:
    """A status payload exactly as firmware/uplink.py's status_payload builds it."""
    p = {"v": 1, "dev": dev, "state": "online", "conn": 1, "ts": int(time.time()), "ts_ok": True, "up": 12, "fw": "0.2.0",
         "rssi": -61, "heap": 81234, "outbox": 3, "drops": 0, "seq": 1042,
         "sensors": {"mlx90614": "ok", "max30102": "ok"}, "cal_due": "2027-11-02", "errors": 0}
    p.update(kw)
    return p


def sign(payload: dict, key: bytes = KEY, kid: str = DEV + "/1", typ: str = "nabd-status+jws") -> bytes:
    return fw_jws.sign(key, kid, typ, fw_reading.dumps(payload))


def msg(raw: bytes, dev: str = DEV) -> Message:
    return Message(f"nabd/v1/dev/{dev}/status", raw, dt.datetime.now(UTC))


def process(db, kek, *messages):
    store = StatusStore(db, kek)
    conn = db.open()
    try:
        return store.process(conn, list(messages))
    finally:
        conn.close()


# --- status ----------------------------------------------------------------------------------------

def test_status_is_verified_and_the_latest_is_kept(db, kek):
    assert fw_reading.dumps(status()).startswith(b'{"v":1,')  # the firmware's own serialiser
    before = STATUS_MESSAGES.value(result="accepted")
    online = sign(status())
    (v,) = process(db, kek, msg(online))
    assert v.kind == "accept"
    (s,) = latest(db, DEV)
    assert s["state"] == "online" and s["fw"] == "0.2.0" and s["rssi"] == -61 and s["heap"] == 81234
    assert s["outbox"] == 3 and s["drops"] == 0 and s["errors"] == 0 and s["seq"] == 1042
    assert s["sensors"] == {"mlx90614": "ok", "max30102": "ok"} and s["cal_due"] == "2027-11-02"
    assert s["key_version"] == 1 and s["messages"] == 1 and s["received_at"].endswith("+00:00")
    devs = {d["id"]: d for d in admin.list_devices(db)}
    dev = devs[DEV]
    assert dev["fw"] == "0.2.0" and dev["last_seen_at"] is not None
    # devices list shows what the status says: online, 3 readings waiting, none dropped
    assert (dev["state"], dev["outbox"], dev["drops"], dev["cal_due"]) == ("online", 3, 0, "2027-11-02")
    assert (devs[OTHER]["state"], devs[OTHER]["outbox"]) == ("unknown", None)   # no status yet
    assert str(scalar(db.url, "SELECT cal_due FROM devices WHERE id = ?", (DEV,))) == "2027-11-02"
    since = s["state_since"]

    # the same bytes again (broker redelivery): a duplicate, nothing changes
    (v,) = process(db, kek, msg(online))
    assert v.kind == "duplicate" and latest(db, DEV)[0]["messages"] == 1
    # another online status: replaces the values, state_since kept
    (v,) = process(db, kek, msg(sign(status(up=99, heap=70000, sensors={"mlx90614": "ok", "max30102": "absent"}))))
    s = latest(db, DEV)[0]
    assert v.kind == "accept" and s["up"] == 99 and s["sensors"]["max30102"] == "absent"
    assert s["state_since"] == since and s["messages"] == 2
    # the Last Will (offline, signed at connect time: an older ts, a smaller up) comes after the
    # online statuses of its connection
    time.sleep(0.01)
    (v,) = process(db, kek, msg(sign(status(state="offline", ts=int(time.time()) - 3600, rssi=None,
                                            fw="0.2.1", cal_due=None))))
    s = latest(db, DEV)[0]
    assert v.kind == "accept" and s["state"] == "offline" and s["rssi"] is None and s["state_since"] > since
    assert scalar(db.url, "SELECT fw FROM devices WHERE id = ?", (DEV,)) == "0.2.1"
    assert scalar(db.url, "SELECT cal_due FROM devices WHERE id = ?", (DEV,)) is None
    # an unsynced clock: ts is uptime, never "future" (the next connection)
    (v,) = process(db, kek, msg(sign(status(conn=2, ts=10**12, ts_ok=False))))
    assert v.kind == "accept" and latest(db, DEV)[0]["ts_ok"] is False
    assert STATUS_MESSAGES.value(result="accepted") - before == 4
    assert int(scalar(db.url, "SELECT COUNT(*) FROM quarantine")) == 0


def test_forged_and_malformed_statuses_are_quarantined_with_their_reason(db, kek):
    admin.add_device(db, kek, "nabd-revoked01", os.urandom(32), "x", "MA-01", actor="test")
    admin.revoke_device(db, "nabd-revoked01")
    now = int(time.time())
    cases = {
        "oversized": (DEV, b"x" * 2049),
        "malformed": (DEV, b"not.a.jws!"),
        "bad_signature": (DEV, sign(status(), key=os.urandom(32))),
        "unknown_device": ("nabd-nobody01", sign(status(dev="nabd-nobody01"), kid="nabd-nobody01/1")),
        "revoked": ("nabd-revoked01", sign(status(dev="nabd-revoked01"), kid="nabd-revoked01/1")),
        "topic_mismatch": (OTHER, sign(status())),          # DEV's status on OTHER's topic
        "invalid": (DEV, sign(status(state="asleep"))),
        "future_ts": (DEV, sign(status(ts=now + 3600))),
    }
    more = [  # other shapes of the same reasons
        ("malformed", DEV, sign(status(), typ="nabd-reading+jws")),    # a reading's typ on the status topic
        ("malformed", DEV, sign(status(), kid=DEV + "/1").replace(b".", b".=", 1)),
        ("malformed", DEV, fw_jws.sign(KEY, DEV + "/1", "nabd-status+jws", b'{"v":1,"v":1}')),  # duplicate member
        ("malformed", DEV, fw_jws.sign(KEY, DEV + "/1", "nabd-status+jws", b'{"heap":NaN}')),
        ("invalid", DEV, sign({k: v for k, v in status().items() if k != "heap"})),
        ("invalid", DEV, sign(status(extra=1))),
        ("invalid", DEV, sign(status(cal_due="2027-02-30"))),
        ("invalid", DEV, sign(status(outbox=-1))),
        ("invalid", DEV, sign(status(conn=0))),
        ("invalid", DEV, sign(status(conn="7"))),
        ("invalid", DEV, sign({k: v for k, v in status().items() if k != "conn"})),   # firmware before conn
        ("invalid", DEV, sign(status(sensors=["ok"]))),
        ("topic_mismatch", DEV, sign(status(dev=OTHER))),             # payload names another device
    ]
    q0 = metrics.QUARANTINE.value(reason="bad_signature")
    items = [(r, d, raw) for r, (d, raw) in cases.items()] + more
    verdicts = process(db, kek, *[msg(raw, d) for _, d, raw in items])
    assert [v.reason for v in verdicts] == [r for r, _, _ in items]
    got = rows(db.url, "SELECT reason, topic, raw FROM quarantine ORDER BY id")
    assert [(r, t, bytes(raw)) for r, t, raw in got] == \
        [(r, f"nabd/v1/dev/{d}/status", raw[:4096]) for r, d, raw in items]
    assert latest(db) == []                                    # nothing stored
    assert rows(db.url, "SELECT kind, device_id FROM security_events") == [("status_bad_signature", DEV)]
    assert metrics.QUARANTINE.value(reason="bad_signature") == q0 + 1


def test_statuses_feed_the_observatory_and_the_online_gauge(db, kek):
    """devices.fw and devices.cal_due come from statuses: the observatory's firmware versions and
    calibration-overdue counts follow them without a single reading."""
    today = dt.datetime.now(UTC).date()
    overdue = (today - dt.timedelta(days=3)).isoformat()
    process(db, kek, msg(sign(status(fw="0.3.0", cal_due=overdue))),
            msg(sign(status(dev=OTHER, fw="0.2.9", cal_due="2099-01-01"), key=KEY2, kid=OTHER + "/1"), OTHER))
    rep = observatory.device_counts(db, today.isoformat(), today.isoformat())
    cells = {r["region"]: r for r in rep["rows"] if r.get("facility") is None} if "rows" in rep else None
    flat = json.dumps(rep)
    assert '"0.3.0": 1' in flat and '"0.2.9": 1' in flat, flat[:2000]
    if cells:
        assert cells["MA-04"]["calibration_overdue"] == 1 and cells["MA-05"]["calibration_overdue"] == 0
    else:
        assert '"calibration_overdue": 1' in flat
    store = StatusStore(db, kek)
    with db.connect() as conn:
        assert store.online_count(conn) == 2
    process(db, kek, msg(sign(status(state="offline"))))
    admin.revoke_device(db, OTHER)
    with db.connect() as conn:
        assert store.online_count(conn) == 0    # one offline, the other revoked
    assert DEVICES_ONLINE.name in metrics.REGISTRY.render()


def connection(c: int, up0: int, *ups: int, fw: str = "0.2.0") -> tuple[bytes, list[bytes]]:
    """One MQTT connection of the device, as firmware/uplink.py signs it: the Last Will at connect
    time (offline, up0), then the online statuses (the first at up0, then at each of ``ups``)."""
    will = sign(status(conn=c, state="offline", up=up0, rssi=None, fw=fw))
    return will, [sign(status(conn=c, up=u, fw=fw, outbox=u % 7)) for u in (up0, *ups)]


def test_replayed_old_statuses_are_stale_and_quarantined(db, kek):
    """(conn, rank, up) orders a device's statuses: an old online cannot make a dead device look
    alive, an older connection's will cannot make a live one look dead; the genuine will of the
    current connection still comes after its online statuses."""
    rejected0 = STATUS_MESSAGES.value(result="rejected")
    dup0 = STATUS_MESSAGES.value(result="duplicate")
    stale0 = metrics.QUARANTINE.value(reason="stale_status")
    will1, (on1a, on1b) = connection(1, 4, 900, fw="0.1.0")
    kinds = [v.kind for v in process(db, kek, msg(on1a), msg(on1b))]
    assert kinds == ["accept", "accept"]
    seen1 = scalar(db.url, "SELECT last_seen_at FROM devices WHERE id = ?", (DEV,))
    # an older status of the same connection (a smaller up) after a newer one
    (v,) = process(db, kek, msg(on1a))
    assert (v.kind, v.reason) == ("reject", "stale_status")
    assert "conn 1, online, up 4 s" in v.detail and "stored status (conn 1, online, up 900 s)" in v.detail
    assert latest(db, DEV)[0]["up"] == 900
    # the genuine will of connection 1, signed before its online statuses, published after them
    (v,) = process(db, kek, msg(will1))
    s = latest(db, DEV)[0]
    assert v.kind == "accept" and (s["state"], s["conn"], s["up"]) == ("offline", 1, 4)
    # the device is dead: its old online statuses replayed do not bring it back
    time.sleep(0.01)
    assert [v.reason for v in process(db, kek, msg(on1b), msg(on1a))] == ["stale_status"] * 2
    assert latest(db, DEV)[0]["state"] == "offline"
    assert scalar(db.url, "SELECT last_seen_at FROM devices WHERE id = ?", (DEV,)) == seen1

    # connection 2 (after a reboot: conn jumped, up restarted): its online comes after the old will
    will2, (on2a, on2b) = connection(65, 2, 40)
    assert [v.kind for v in process(db, kek, msg(on2a))] == ["accept"]
    s = latest(db, DEV)[0]
    assert (s["state"], s["conn"], s["up"]) == ("online", 65, 2)
    assert scalar(db.url, "SELECT fw FROM devices WHERE id = ?", (DEV,)) == "0.2.0"
    # the device is alive: the will of the older connection replayed does not make it look dead,
    # and the older connection's figures (fw 0.1.0) do not come back
    verdicts = process(db, kek, msg(will1), msg(on1b), msg(on2b))
    assert [(v.kind, v.reason) for v in verdicts] == [("reject", "stale_status"), ("reject", "stale_status"),
                                                      ("accept", "")]
    s = latest(db, DEV)[0]
    assert (s["state"], s["conn"], s["up"], s["outbox"]) == ("online", 65, 40, 40 % 7)
    assert scalar(db.url, "SELECT fw FROM devices WHERE id = ?", (DEV,)) == "0.2.0"
    # an identical redelivery of the stored status: a harmless duplicate, not stale
    (v,) = process(db, kek, msg(on2b))
    assert v.kind == "duplicate" and latest(db, DEV)[0]["messages"] == 5
    # two statuses of one connection in the same second are both genuine: the later received is kept
    (v,) = process(db, kek, msg(sign(status(conn=65, up=40, heap=1234))))
    assert v.kind == "accept" and latest(db, DEV)[0]["heap"] == 1234
    # and the genuine will of connection 65 ends it
    (v,) = process(db, kek, msg(will2))
    assert v.kind == "accept" and latest(db, DEV)[0]["state"] == "offline"

    # the same bytes again count on their row (gateway/quarantine.py): 5 rejections, 3 rows
    got = rows(db.url, "SELECT reason, topic, device_hint, raw, hits FROM quarantine ORDER BY id")
    assert [(r, t, d, bytes(raw), h) for r, t, d, raw, h in got] == [
        ("stale_status", f"nabd/v1/dev/{DEV}/status", DEV, raw, n) for raw, n in ((on1a, 2), (on1b, 2), (will1, 1))]
    assert metrics.QUARANTINE.value(reason="stale_status") - stale0 == 5
    assert STATUS_MESSAGES.value(result="rejected") - rejected0 == 5
    assert STATUS_MESSAGES.value(result="duplicate") - dup0 == 1
    assert rows(db.url, "SELECT kind FROM security_events") == []
    # the other device's order is its own
    (v,) = process(db, kek, msg(sign(status(dev=OTHER, conn=1, up=1), key=KEY2, kid=OTHER + "/1"), OTHER))
    assert v.kind == "accept"


def test_the_older_status_loses_also_when_stored_concurrently(db, kek):
    """Two gateway processes on one device at once: the comparison is made by the database on the
    row it holds (PostgreSQL waits for the other transaction's row, SQLite for its write lock)."""
    will, (online,) = connection(3, 10)
    store = StatusStore(db, kek)
    a, b = db.open(), db.open()
    try:
        now = time.time()
        db.begin(a)
        assert store._one(a, msg(will), now, dt.datetime.fromtimestamp(now, UTC)).kind == "accept"
        got: list = []
        t = threading.Thread(target=lambda: got.extend(store.process(b, [msg(online)])))
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and not got      # waiting for the first transaction
        a.commit()
        t.join(30)
        assert [(v.kind, v.reason) for v in got] == [("reject", "stale_status")]
    finally:
        a.close()
        b.close()
    assert latest(db, DEV)[0]["state"] == "offline"


def test_a_status_batch_locks_device_rows_in_id_order(pg_url, kek):
    """The readings' store locks a batch's device rows in id order (gateway/store.py); a status
    batch that updated them in arrival order (here the higher id first) held one row while it
    waited for the other, which the readings' transaction held while it waited for the first: a
    deadlock, one side aborted after PostgreSQL's deadlock_timeout."""
    import psycopg

    db = Database(pg_url)
    db.migrate()
    admin.add_device(db, kek, DEV, KEY, "chu-ibn-sina", "MA-04", actor="test")
    admin.add_device(db, kek, OTHER, KEY2, "cs-azrou", "MA-05", actor="test")
    assert DEV < OTHER
    lock = "SELECT id FROM devices WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
    readings, statuses, watch = db.open(), db.open(), db.open()
    watch.autocommit = True
    got: list = []
    errors: list = []

    def status_batch():
        try:
            got.extend(StatusStore(db, kek).process(statuses, [
                msg(sign(status(OTHER), KEY2, OTHER + "/1"), OTHER), msg(sign(status()))]))
        except Exception as e:  # noqa: BLE001 - reported by the assertions below
            errors.append(e)

    try:
        readings.execute(lock, ([DEV],))           # the readings' transaction holds the first device
        t = threading.Thread(target=status_batch)
        t.start()
        pid, end = statuses.info.backend_pid, time.monotonic() + 20
        while time.monotonic() < end:              # until the status batch waits for a row lock
            row = watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            if row and row[0] == "Lock":
                break
            time.sleep(0.02)
        else:
            pytest.fail("the status batch never waited for the device row")
        try:
            readings.execute(lock, ([DEV, OTHER],))  # then the second, as the store does
            readings.commit()
        except psycopg.errors.DeadlockDetected as e:
            errors.append(e)
            readings.rollback()
        t.join(30)
    finally:
        for c in (readings, statuses, watch):
            c.close()
    assert not errors
    assert [v.kind for v in got] == ["accept", "accept"]
    assert {s["device_id"] for s in latest(db)} == {DEV, OTHER}


def test_upgrade_to_version_5_keeps_statuses_and_quarantine(db_url, monkeypatch, kek):
    """A database at schema version 4: its status rows get conn 0 (any status of a device that
    sends conn supersedes them), its quarantine rows and ids are kept, and stale_status is a
    reason the quarantine table now takes."""
    import gateway.db as gdb

    all_migrations = gdb.migrations()
    monkeypatch.setattr(gdb, "migrations", lambda: [m for m in all_migrations if m[0] <= 4])
    d = Database(db_url)
    assert d.migrate() == [1, 2, 3, 4]
    admin.add_device(d, kek, DEV, KEY, "chu-ibn-sina", "MA-04", actor="test")
    rx = dt.datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    with d.connect() as c:
        c.execute(d.sql("INSERT INTO device_status (device_id, state, ts, ts_ok, up, fw, rssi, heap, outbox, drops, "
                        "seq, errors, sensors, cal_due, key_version, sha256, received_at, state_since) "
                        "VALUES (?, 'online', 1, ?, 99999, '0.1.0', NULL, 1, 0, 0, 0, 0, '{}', NULL, 1, ?, ?, ?)"),
                  (DEV, True, "0" * 64, rx, rx))
        for i in range(3):
            c.execute(d.sql("INSERT INTO quarantine (received_at, reason, topic, device_hint, raw, detail) "
                            "VALUES (?, 'invalid', 't', NULL, ?, ?)"), (rx, b"x%d" % i, f"d{i}"))
    monkeypatch.setattr(gdb, "migrations", lambda: all_migrations)
    assert d.migrate() == [v for v, _, _ in all_migrations if v > 4]
    assert latest(d, DEV)[0]["conn"] == 0
    assert [tuple(r) for r in rows(db_url, "SELECT id, reason, detail FROM quarantine ORDER BY id")] == [
        (1, "invalid", "d0"), (2, "invalid", "d1"), (3, "invalid", "d2")]
    will, (online,) = connection(1, 5)
    assert [v.kind for v in process(d, kek, msg(online))] == ["accept"]    # up 5 < 99999: conn decides
    assert [v.reason for v in process(d, kek, msg(sign(status(conn=1, up=1))))] == ["stale_status"]
    assert rows(db_url, "SELECT id, reason FROM quarantine WHERE id > 3") == [(4, "stale_status")]
    with pytest.raises(Exception, match="(?i)check"):
        with d.connect() as c:
            c.execute(d.sql("INSERT INTO quarantine (received_at, reason, topic, device_hint, raw, detail) "
                            "VALUES (?, 'bogus', 't', NULL, ?, 'd')"), (rx, b"x"))


# --- commands: the transaction -----------------------------------------------------------------------

def open_cmd(token: bytes, key: bytes = KEY, kid: str = DEV + "/1") -> dict:
    """A command as the device opens it: the firmware's verify, plus CPython's hmac."""
    body = json.loads(fw_jws.verify(key, token, "nabd-cmd+jws", kid=kid))
    h, p, s = token.split(b".")
    assert hmac.compare_digest(hmac.new(key, h + b"." + p, hashlib.sha256).digest(), fw_jws.b64url_decode(s))
    return body


def test_commands_get_increasing_n_signed_with_the_current_key(db, kek):
    t0 = time.time()
    p1 = device_commands.prepare(db, kek, DEV, "assign_patient", {"patient": "p-7Hq2xK"}, "test", ttl_s=120)
    p2 = device_commands.prepare(db, kek, DEV, "identify", {"seconds": 5}, "test")
    p3 = device_commands.prepare(db, kek, DEV, "settings", {"report_pi": False, "temp_site_offset_c": 0.4}, "test")
    assert (p1.n, p2.n, p3.n) == (1, 2, 3) and p1.topic == f"nabd/v1/dev/{DEV}/cmd"
    b1 = open_cmd(p1.token)
    assert b1 == {"v": 1, "dev": DEV, "n": 1, "exp": p1.exp, "cmd": "assign_patient", "args": {"patient": "p-7Hq2xK"}}
    assert int(t0) + 120 <= p1.exp <= time.time() + 120
    assert open_cmd(p3.token)["args"] == {"report_pi": False, "temp_site_offset_c": 0.4}
    assert rows(db.url, "SELECT id FROM patients") == [("p-7Hq2xK",)]
    assert scalar(db.url, "SELECT cmd_n FROM devices WHERE id = ?", (DEV,)) == 3
    audit = rows(db.url, "SELECT action, target, detail FROM audit_log WHERE action LIKE ? ORDER BY id", ("devices.command%",))
    assert [a[:2] for a in audit] == [("devices.command", DEV)] * 3
    assert "n=1 cmd=assign_patient" in audit[0][2] and KEY.hex() not in json.dumps(audit)
    # the other device's counter is its own
    assert device_commands.prepare(db, kek, OTHER, "identify", {"seconds": 1}, "test").n == 1
    # after rotate-key the new version signs (the old one is only kept for readings in flight)
    new_key = os.urandom(32)
    admin.rotate_key(db, kek, DEV, new_key, grace_hours=72)
    p4 = device_commands.prepare(db, kek, DEV, "identify", {"seconds": 3}, "test")
    assert p4.key_version == 2 and open_cmd(p4.token, new_key, DEV + "/2")["n"] == 4
    with pytest.raises(fw_jws.JWSError):
        open_cmd(p4.token)


def test_two_admins_never_share_an_n(db, kek):
    got: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def admin_session():
        try:
            for _ in range(10):
                p = device_commands.prepare(db, kek, DEV, "identify", {"seconds": 2}, "test")
                with lock:
                    got.append(p.n)
        except BaseException as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    threads = [threading.Thread(target=admin_session) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(got) == list(range(1, 41))
    assert int(scalar(db.url, "SELECT COUNT(*) FROM audit_log WHERE action = 'devices.command'")) == 40


@pytest.mark.parametrize("cmd,args,why", [
    ("assign_patient", {"patient": "Ahmed Benali"}, "does not match"),
    ("assign_patient", {"patient": "abc"}, "does not match"),
    ("assign_patient", {}, "exactly"),
    ("identify", {"seconds": 0}, "1..300"),
    ("identify", {"seconds": 301}, "1..300"),
    ("identify", {"seconds": True}, "1..300"),
    ("settings", {"wifi_psk": "x"}, "unknown setting"),
    ("settings", {"report_pi": "yes"}, "true or false"),
    ("settings", {"temp_site_offset_c": 9}, "-5.0..5.0"),
    ("settings", {}, "at least one"),
    ("reboot", {}, "unknown command"),
])
def test_bad_commands_are_refused_and_consume_nothing(db, kek, cmd, args, why):
    with pytest.raises(device_commands.CommandRefused, match=why):
        device_commands.prepare(db, kek, DEV, cmd, args, "test")
    assert scalar(db.url, "SELECT cmd_n FROM devices WHERE id = ?", (DEV,)) == 0
    assert int(scalar(db.url, "SELECT COUNT(*) FROM patients")) == 0


def test_unknown_and_revoked_devices_get_no_command(db, kek):
    with pytest.raises(device_commands.CommandRefused, match="no device"):
        device_commands.prepare(db, kek, "nabd-nobody01", "identify", {"seconds": 3}, "test")
    admin.revoke_device(db, OTHER)
    with pytest.raises(device_commands.CommandRefused, match="revoked"):
        device_commands.prepare(db, kek, OTHER, "identify", {"seconds": 3}, "test")
    assert scalar(db.url, "SELECT cmd_n FROM devices WHERE id = ?", (OTHER,)) == 0


# --- commands: the CLI against a real broker -------------------------------------------------------

def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # the installed entry point (``python -m gateway.cli`` would load a second CommandError class)
    return subprocess.run([str(Path(sys.executable).parent / "nabd-gateway"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **(env or {})))


@pytest.mark.broker
def test_cli_publishes_signed_commands_to_the_broker(broker, tmp_path, db_url):
    cfg = write_config(tmp_path, broker.url, db_url)
    from gateway.config import load

    c = load(cfg)
    d = Database(db_url)
    d.migrate()
    admin.add_device(d, c.security.kek(), DEV, KEY, "chu-ibn-sina", "MA-04", actor="test")
    received: list[mqtt.MQTTMessage] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watcher", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    sub.on_message = lambda cl, u, m: received.append(m)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    sub.subscribe(f"nabd/v1/dev/{DEV}/cmd", qos=1)
    assert subscribed.wait(5)
    try:
        r = cli("devices", "command", DEV, "assign-patient", "p-7Hq2xK", "--config", str(cfg), "--json",
                env={"NABD_ADMIN": "dr-amrani"})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["ok"] and out["n"] == 1 and out["cmd"] == "assign_patient" and out["args"] == {"patient": "p-7Hq2xK"}
        t0 = time.time()
        r = cli("devices", "command", DEV, "--config", str(cfg), "identify", "--seconds", "7", "--ttl", "60")
        t1 = time.time()
        assert r.returncode == 0 and "n=2" in r.stdout, r.stderr
        r = cli("devices", "command", DEV, "settings", "report_pi=false", "temp_site_offset_c=-0.3",
                "--config", str(cfg), "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["n"] == 3, r.stderr
        r = cli("devices", "command", DEV, "assign-patient", "--clear", "--config", str(cfg), "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["args"] == {"patient": None}, r.stderr
        end = time.monotonic() + 10
        while len(received) < 4 and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        sub.loop_stop()
        sub.disconnect()
    bodies = [open_cmd(m.payload) for m in received]
    assert [(b["n"], b["cmd"], b["args"]) for b in bodies] == [
        (1, "assign_patient", {"patient": "p-7Hq2xK"}), (2, "identify", {"seconds": 7}),
        (3, "settings", {"report_pi": False, "temp_site_offset_c": -0.3}), (4, "assign_patient", {"patient": None})]
    assert all(m.qos == 1 and not m.retain for m in received)
    expiry = getattr(received[1].properties, "MessageExpiryInterval", None)
    assert expiry is not None and 55 <= expiry <= 60      # the broker drops it when the device would
    assert int(t0) + 60 <= bodies[1]["exp"] <= int(t1) + 61   # exp = the moment it was signed + ttl
    assert ("dr-amrani", "devices.command") in rows(db_url, "SELECT actor, action FROM audit_log")
    assert rows(db_url, "SELECT id FROM patients") == [("p-7Hq2xK",)]

    # the stored statuses, as the administrators see them
    process(d, c.security.kek(), msg(sign(status(fw="0.4.0"))))
    r = cli("devices", "status", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    (st,) = json.loads(r.stdout)
    assert st["device_id"] == DEV and st["state"] == "online" and st["fw"] == "0.4.0"
    r = cli("devices", "status", DEV, "--config", str(cfg))
    assert r.returncode == 0 and "online" in r.stdout and "0.4.0" in r.stdout, r.stderr

    # bad input: clear errors, exit codes, nothing consumed
    n0 = scalar(db_url, "SELECT cmd_n FROM devices WHERE id = ?", (DEV,))
    for argv, code, text in [
        (("assign-patient", "Fatima Zahra"), 2, "does not match"),
        (("assign-patient",), 2, "TOKEN or --clear"),
        (("settings", "colour=blue"), 2, "unknown setting"),
        (("identify", "--seconds", "0"), 2, "1..300"),
    ]:
        r = cli("devices", "command", DEV, *argv, "--config", str(cfg))
        assert r.returncode == code and text in r.stderr, (argv, r.returncode, r.stderr)
    r = cli("devices", "command", "nabd-nobody01", "identify", "--config", str(cfg))
    assert r.returncode == 4 and "no device" in r.stderr
    r = cli("devices", "command", DEV, "identify")
    assert r.returncode == 2 and "--config" in r.stderr
    assert scalar(db_url, "SELECT cmd_n FROM devices WHERE id = ?", (DEV,)) == n0

    # the broker down: exit 3, the failure audited, the n skipped (never reused)
    broker.stop()
    r = cli("devices", "command", DEV, "identify", "--config", str(cfg), "--timeout", "2")
    assert r.returncode == 3 and "not delivered" in r.stderr and "n=5" in r.stderr, r.stderr
    assert ("devices.command-failed", DEV) in rows(db_url, "SELECT action, target FROM audit_log")
    assert scalar(db_url, "SELECT cmd_n FROM devices WHERE id = ?", (DEV,)) == n0 + 1
