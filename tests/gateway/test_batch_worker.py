"""The batch worker (gateway/worker.py) as both its users run it: the readings' store process
(writer.BatchStore) and the status thread (status.StatusWorker), on a real SQLite database. A
database error is retried on a fresh connection; a message that breaks the store is quarantined
alone and the rest of its batch is stored."""
from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
import time

import pytest

from gateway import admin, jws
from gateway.db import Database
from gateway.status import StatusWorker, latest
from gateway.store import Message
from gateway.writer import BatchStore
from tests.support.generator import SimDevice, topic
from tests.support.harness import rows

UTC = dt.timezone.utc


@pytest.fixture
def setup(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/gw.db")
    db.migrate()
    kek = os.urandom(32)
    devs = [SimDevice(f"nabd-worker{i:03d}") for i in range(3)]
    for d in devs:
        admin.add_device(db, kek, d.id, d.key, "F", "MA-05")
    return db, kek, devs


def _readings(dev: SimDevice, n: int) -> list[Message]:
    return [Message(topic(dev.id), dev.next_reading()[1], dt.datetime.now(UTC)) for _ in range(n)]


def _status(dev: SimDevice) -> Message:
    p = {"v": 1, "dev": dev.id, "state": "online", "conn": 1, "ts": int(time.time()), "ts_ok": True, "up": 5,
         "fw": "0.2.0", "rssi": -60, "heap": 80000, "outbox": 0, "drops": 0, "seq": 1, "sensors": {},
         "cal_due": None, "errors": 0}
    return Message(f"nabd/v1/dev/{dev.id}/status", jws.sign(dev.key, jws.TYP_STATUS, dev.kid, p),
                   dt.datetime.now(UTC))


def test_store_process_isolates_and_quarantines_the_message_that_breaks_it(setup, monkeypatch):
    db, kek, (dev, *_) = setup
    bs = BatchStore(db.url, kek, forward=False, skew=300)
    real = bs.store._prepare

    def prepare(m, v):
        if v.seq == 3:
            raise RuntimeError("a bug that only this reading meets")
        return real(m, v)

    monkeypatch.setattr(bs.store, "_prepare", prepare)
    try:
        res = bs.commit(_readings(dev, 5))
    finally:
        bs.shutdown()
    assert [(v.kind, v.reason) for v in res.verdicts] == [("accept", "")] * 2 + [("reject", "malformed")] + \
        [("accept", "")] * 2
    acked = sorted(s for _, body in res.acks for s in jws.verify(dev.key, body, jws.TYP_ACK)["seqs"])
    assert acked == [1, 2, 4, 5]
    assert [r[0] for r in rows(db.url, "SELECT seq FROM readings ORDER BY seq")] == [1, 2, 4, 5]
    (q,) = rows(db.url, "SELECT reason, detail FROM quarantine")
    assert q[0] == "malformed" and "gateway error" in q[1]


def test_store_process_retries_a_database_error_on_a_fresh_connection(setup, monkeypatch):
    db, kek, (dev, *_) = setup
    bs = BatchStore(db.url, kek, forward=False, skew=300)
    real, conns = bs.store.process, []

    def flaky(conn, batch):
        conns.append(conn)
        if len(conns) == 1:
            raise sqlite3.OperationalError("database is locked")
        return real(conn, batch)

    monkeypatch.setattr(bs.store, "process", flaky)
    try:
        res = bs.commit(_readings(dev, 3))
    finally:
        bs.shutdown()
    assert [v.kind for v in res.verdicts] == ["accept"] * 3
    assert len(conns) == 2 and conns[0] is not conns[1]
    assert rows(db.url, "SELECT COUNT(*) FROM quarantine") == [(0,)]


def test_status_worker_acks_after_the_commit_and_quarantines_what_breaks_the_store(setup, monkeypatch):
    db, kek, devs = setup
    acked: list[Message] = []
    w = StatusWorker(db, kek, acked.append)
    real = w.store._one

    def one(conn, m, now, now_dt):
        if m.topic == f"nabd/v1/dev/{devs[1].id}/status":
            raise RuntimeError("a bug that only this status meets")
        return real(conn, m, now, now_dt)

    monkeypatch.setattr(w.store, "_one", one)
    msgs = [_status(d) for d in devs]
    w.start()
    for m in msgs:
        w.submit(m)
    w.stop(timeout=10)
    assert sorted(m.topic for m in acked) == sorted(m.topic for m in msgs) and w.processed == 3
    assert sorted(s["device_id"] for s in latest(db)) == [devs[0].id, devs[2].id]
    assert rows(db.url, "SELECT reason, device_hint FROM quarantine") == [("malformed", devs[1].id)]


def test_status_worker_gives_up_a_batch_only_when_stopping_and_acks_nothing_of_it(setup, monkeypatch):
    db, kek, devs = setup
    acked: list[Message] = []
    w = StatusWorker(db, kek, acked.append)

    def down(conn, batch, now=None):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(w.store, "process", down)
    stopping = threading.Event()
    stopping.set()
    t0 = time.monotonic()
    assert w.commit([_status(devs[0])], stopping.is_set) is None
    assert 1.0 < time.monotonic() - t0 < 5.0   # retried with backoff for over a second first
    w.close()
    assert acked == [] and latest(db) == []


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_clears(setup, monkeypatch, caplog):
    """Five failed attempts (PostgreSQL restarting) are two log lines, not six; each one line, the
    URL's password masked; the batch is stored once it can be."""
    db, kek, (dev, *_) = setup
    bs = BatchStore(db.url, kek, forward=False, skew=300)
    real, calls = bs.store.process, []

    def down(conn, batch):
        calls.append(1)
        if len(calls) <= 5:
            raise sqlite3.OperationalError("connection to postgresql://nabd:hunter2@127.0.0.1:5/nabd failed:\n"
                                           "\tIs the server running on that host?")
        return real(conn, batch)

    monkeypatch.setattr(bs.store, "process", down)
    caplog.set_level("INFO", logger="nabd.gateway.writer")
    try:
        res = bs.commit(_readings(dev, 2))
    finally:
        bs.shutdown()
    assert [v.kind for v in res.verdicts] == ["accept"] * 2 and len(calls) == 6
    lines = [r.getMessage() for r in caplog.records if r.name == "nabd.gateway.writer"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("database error: connection to postgresql://nabd:***@127.0.0.1:5/nabd failed: "
                               "Is the server") and "2 message(s) kept unacknowledged" in lines[0]
    assert lines[1].startswith("database available again after") and "(4 retries)" in lines[1]
    assert not any("hunter2" in x or "\n" in x for x in lines)


def test_ingest_handoff_keeps_order_bounds_the_queue_and_wakes_the_batcher():
    """gateway/worker.py Handoff, between paho's thread and the batcher: FIFO, batches of at most
    batch_max, ``put`` blocks while full (backpressure) and a sleeping ``take`` gets a later put."""
    from gateway.worker import Handoff

    h = Handoff(maxsize=5)
    assert h.take(3) == [] and h.empty()          # nothing within 0.1 s: the caller checks its stop flag
    for i in range(5):
        h.put(i)
    blocked = threading.Event()
    done = threading.Event()

    def producer():
        blocked.set()
        h.put(5)                                  # full: waits for the batcher
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert blocked.wait(2) and not done.wait(0.3), "put did not block on a full hand-off"
    assert h.take(3) == [0, 1, 2]
    assert done.wait(2)
    assert h.take(10) == [3, 4, 5] and h.qsize() == 0
    got: list = []
    t = threading.Thread(target=lambda: got.extend(h.take(10)), daemon=True)
    t.start()
    time.sleep(0.03)                              # the batcher is asleep on the empty hand-off
    h.put("late")
    t.join(2)
    assert got == ["late"]
