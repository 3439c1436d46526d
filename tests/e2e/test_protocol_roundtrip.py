"""The protocol round trip (docs/protocol.md): a reading built and signed by the FIRMWARE's code
(firmware/reading.py + firmware/jws.py, the way firmware/uplink.py submits it), on CPython and on
the real MicroPython interpreter, verified and stored by the GATEWAY's code; and the gateway's
signed ack opened by the firmware's jws.verify."""
from __future__ import annotations

import datetime as dt
import json
import os
import time

import pytest

from firmware import jws as fw_jws
from firmware import reading as fw_reading
from gateway import admin
from gateway import recordstore as rs
from gateway.db import Database
from gateway.store import Message, Store

DEV = "nabd-a1b2c3d4e5f6"
KEY = bytes(range(1, 33))
UTC = dt.timezone.utc


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("pg_url")


def _firmware_message(seq: int, ts: int, ts_ok: bool = True, patient: str | None = "p-7Hq2xK") -> bytes:
    """What firmware.uplink.Uplink.submit puts in the outbox (same three steps)."""
    obs, flags = fw_reading.observations(temp_mc=38450, spo2=88, hr=131, pi_cp=240, q_temp=970, q_ppg=910)
    p = dict(fw_reading.build_reading(ts, ts_ok, 73125, "0.1.0", {"id": "cal-2026-11-02", "date": "2026-11-02"},
                                      patient, obs, flags))
    p["v"] = 1
    p["dev"] = DEV
    p["seq"] = seq
    return fw_jws.sign(KEY, DEV + "/1", "nabd-reading+jws", fw_reading.dumps(p))


_VM_CODE = """
from firmware import jws, reading
obs, flags = reading.observations(temp_mc=36870, spo2=97, hr=72, pi_cp=240, q_temp=970, q_ppg=910)
p = reading.build_reading({ts}, True, 12, "0.1.0", None, None, obs, flags)
p["v"] = 1
p["dev"] = "{dev}"
p["seq"] = {seq}
TOKEN = jws.sign(bytes(range(1, 33)), "{dev}/1", "nabd-reading+jws", reading.dumps(p))
"""


def _store(db_url):
    db = Database(db_url)
    db.migrate()
    kek = os.urandom(32)
    admin.add_device(db, kek, DEV, KEY, "CHU Ibn Sina", "MA-04", actor="test")
    return db, Store(db, kek, forward=True)


def test_firmware_signed_readings_are_verified_and_stored_by_the_gateway(db_url, vm):
    db, store = _store(db_url)
    now = int(time.time())
    msgs = [_firmware_message(1, now - 5), _firmware_message(2, 1234, ts_ok=False, patient=None)]
    vm.exec(_VM_CODE.format(ts=now - 2, dev=DEV, seq=3))
    msgs.append(bytes.fromhex(vm.eval("TOKEN.hex()")))
    conn = db.open()
    t = f"nabd/v1/dev/{DEV}/reading"
    res = store.process(conn, [Message(t, m, dt.datetime.now(UTC)) for m in msgs])
    conn.close()
    assert [(v.kind, v.reason, v.detail) for v in res.verdicts] == [("accept", "", "")] * 3
    p = res.verdicts[0].payload
    assert p["flags"] == ["fever", "low_spo2", "tachycardia"]
    assert {o["code"]: o["value"] for o in p["obs"]} == {"temp": 38.5, "spo2": 88, "hr": 131, "pi": 2.4}
    with db.connect() as c:
        assert c.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 3
        stored = [bytes(r[0]) for r in c.execute("SELECT raw FROM readings ORDER BY seq")]
        ids = [r[0] for r in c.execute("SELECT id FROM readings ORDER BY seq")]
        resources = [o for i in ids for o in rs.reading_observations(db, c, i)]  # rendered from raw
    assert stored == msgs                                   # the exact bytes the firmware signed
    assert {r["identifier"][0]["value"] for r in resources} >= {f"{DEV}/1/temp", f"{DEV}/3/pi"}
    # the gateway's ack is accepted by the firmware's verifier, with the device's kid
    (topic, ack), = res.acks
    assert topic == f"nabd/v1/dev/{DEV}/ack"
    body = json.loads(fw_jws.verify(KEY, ack, "nabd-ack+jws", kid=DEV + "/1"))
    assert body["dev"] == DEV and body["seqs"] == [1, 2, 3] and body["v"] == 1
    vm.exec(f"ACK = bytes.fromhex('{ack.hex()}')")
    assert vm.eval(f"__import__('json').loads(jws.verify(bytes(range(1, 33)), ACK, 'nabd-ack+jws', kid='{DEV}/1'))['seqs']") == [1, 2, 3]


def test_firmware_message_tampered_or_under_another_key_is_refused(db_url):
    db, store = _store(db_url)
    raw = _firmware_message(9, int(time.time()))
    h, p, s = raw.split(b".")
    forged = fw_jws.sign(os.urandom(32), DEV + "/1", "nabd-reading+jws", fw_jws.b64url_decode(p))
    conn = db.open()
    res = store.process(conn, [Message(f"nabd/v1/dev/{DEV}/reading", forged, dt.datetime.now(UTC))])
    conn.close()
    assert res.verdicts[0].reason == "bad_signature"
