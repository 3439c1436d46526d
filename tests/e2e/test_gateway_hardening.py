"""Attacks on a site by someone holding one device's broker password (issue 14), each against the
real Mosquitto and the real `nabd-gateway serve`, on SQLite and PostgreSQL (``db_url``)."""
from __future__ import annotations

import os
import time

import paho.mqtt.client as mqtt
import pytest

from tests.support.generator import SimDevice, reading, sign_reading, topic
from tests.support.harness import GatewayProcess, register, rows, scalar, wait_for, write_config

pytestmark = [pytest.mark.broker]

PERSISTENT = "allow_anonymous true\npersistence true\npersistence_location {dir}/\nautosave_interval 1\n"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    return request.getfixturevalue("pg_url")


def _client(url: str, cid: str | None = None) -> mqtt.Client:
    host, port = url.split("://")[1].split(":")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid or "attacker-" + os.urandom(3).hex(),
                    protocol=mqtt.MQTTv311)
    c.connect(host, int(port))
    c.loop_start()
    return c


def _count(url: str, table: str = "readings") -> int:
    return int(scalar(url, f"SELECT COUNT(*) FROM {table}"))


def test_retained_readings_are_never_filed_and_not_requarantined_at_restart(broker_factory, tmp_path, db_url):
    """Readings are never retained (docs/protocol.md). Retained junk left on a device's reading
    topic is not delivered to the gateway at (re)subscription, so it is not quarantined at every
    restart; a validly signed reading published retained is refused (`invalid`), once."""
    b = broker_factory(config=PERSISTENT)
    cfg = write_config(tmp_path, b.url, db_url)
    dev = SimDevice("nabd-retain01")
    register(cfg, [dev])
    c = _client(b.url)
    c.publish(topic(dev.id), b"retained-junk-" + os.urandom(8).hex().encode(), qos=1, retain=True).wait_for_publish(5)
    for run in range(2):  # two gateway runs: the retained junk must not come back at the second
        with GatewayProcess(cfg):
            if run == 0:
                time.sleep(1.0)  # the subscription is in place (retained ones are not sent at subscribing)
                retained = dev.next_reading()[1]
                c.publish(topic(dev.id), retained, qos=1, retain=True).wait_for_publish(5)
            ok = dev.next_reading()[1]
            c.publish(topic(dev.id), ok, qos=1).wait_for_publish(5)
            assert wait_for(lambda: _count(db_url) == 1 + run, timeout=20)  # noqa: B023
            time.sleep(0.5)
    c.loop_stop()
    c.disconnect()
    q = rows(db_url, "SELECT reason, detail FROM quarantine")
    assert len(q) == 1 and q[0][0] == "invalid" and "retain" in q[0][1], q
    assert [s for (s,) in rows(db_url, "SELECT seq FROM readings ORDER BY seq")] == [2, 3]


def _db_bytes(db_url: str, tmp_path) -> int:
    """What the quarantine can grow: the SQLite file (its WAL folded in first: the WAL's size is a
    high-water mark of checkpoint timing, not of what is stored), or PostgreSQL's tables for it."""
    if db_url.startswith("sqlite"):
        import sqlite3

        p = db_url[len("sqlite:///"):]
        with sqlite3.connect(p, timeout=30) as conn:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return sum(os.path.getsize(f) for f in ((p,) if not busy else (p, p + "-wal")) if os.path.exists(f))
    return int(scalar(db_url, "SELECT pg_total_relation_size('quarantine') + pg_total_relation_size('security_events')"
                              " + COALESCE(pg_total_relation_size(to_regclass('quarantine_floods')), 0)"))


FLOOD_N = 5000
FLOOD_BYTES = 2000      # what the site broker's max_packet_size lets through


def test_quarantine_flood_is_bounded_others_stored_alert_raised(broker_factory, tmp_path, db_url, capsys):
    """One device's password publishing FLOOD_N distinct junk messages (half unparsable, half
    signed with a wrong key) on its own topic: the database grows by a bounded amount, every
    reading of the other devices sent meanwhile is stored within a bound, and the flooding device
    is shown as an alert (quarantine list, devices list, the gateway's log)."""
    b = broker_factory(config="allow_anonymous true\nmax_queued_messages 100000\n")
    cfg = write_config(tmp_path, b.url, db_url)
    flooder, others = SimDevice("nabd-flood01"), [SimDevice(f"nabd-calm{i:02d}") for i in range(10)]
    register(cfg, [flooder, *others])
    wrong = os.urandom(32)
    with GatewayProcess(cfg) as gw:
        time.sleep(1.0)
        before = _db_bytes(db_url, tmp_path)
        c = _client(b.url)
        good = _client(b.url)
        for i in range(FLOOD_N):
            if i % 2:
                junk = os.urandom(FLOOD_BYTES)
            else:
                p = reading(flooder.id, i + 1)
                p["fw"] = "x" * 8 + f"{i:024d}"
                junk = sign_reading(wrong, flooder.kid, p)  # bad_signature (a security event when kept)
            c.publish(topic(flooder.id), junk, qos=1)
            if i % 250 == 0:    # the other devices keep measuring during the flood
                for d in others:
                    good.publish(topic(d.id), d.next_reading()[1], qos=1)
        t_flood_end = time.monotonic()
        want = sum(d.seq for d in others)
        assert wait_for(lambda: _count(db_url) == want, timeout=60), f"{_count(db_url)} of {want} stored"
        delay = time.monotonic() - t_flood_end
        assert wait_for(lambda: "flooding the quarantine" in gw.log, timeout=10), gw.log[-2000:]

        def filed() -> int:  # the flood's own backlog is filed after the other devices' readings
            return int(scalar(db_url, "SELECT COUNT(*) FROM quarantine")) + int(
                scalar(db_url, "SELECT COALESCE(SUM(suppressed), 0) FROM quarantine_floods"))
        assert wait_for(lambda: filed() >= FLOOD_N - 5, timeout=120), filed()
        time.sleep(1.0)
        grown = _db_bytes(db_url, tmp_path) - before
        for x in (c, good):
            x.loop_stop()
            x.disconnect()
    kept = int(scalar(db_url, "SELECT COUNT(*) FROM quarantine"))
    print(f"flood of {FLOOD_N}: database +{grown} bytes, {kept} rows kept, others stored {delay:.1f} s after")
    assert kept <= 130, kept                    # about a minute's budget (60) at most twice
    assert int(scalar(db_url, "SELECT COUNT(*) FROM security_events")) <= kept
    assert grown < 2_000_000, f"the database grew {grown} bytes for {FLOOD_N} junk messages"
    assert delay < 45, delay
    suppressed = int(scalar(db_url, "SELECT suppressed FROM quarantine_floods WHERE device = ?", (flooder.id,)))
    assert suppressed + kept >= FLOOD_N - 5     # counted, not kept (a few may be redeliveries)
    from gateway.cli import main

    assert main(["quarantine", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"ALERT {flooder.id} is flooding" in out, out[:500]
    assert main(["devices", "list", "--json", "--config", str(cfg)]) == 0
    import json

    devs = {d["id"]: d for d in json.loads(capsys.readouterr().out)}
    assert devs[flooder.id]["alert"] == "quarantine flood" and devs[others[0].id]["alert"] is None
