"""The store's writer pipe (gateway/writer.py ProcessWriter) under batches and results each larger
than the pipe's socket buffer: a batch of 1,024 readings from 1,024 devices is ~1 MB one way and
1,024 signed acks (~0.4 MB) the other. ``submit`` used to hold the writer's lock while its send
waited for the store process to read; the store process, done with the batch before, waited to
send its result; and the results thread, holding an earlier result, waited for that lock: the
three waited for each other for good (bench fleet's thundering herd at 3,000 devices: both
gateways alive, nothing stored for minutes, the regional broker dropping their keep-alive)."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import queue
import threading
import time

from gateway import admin
from gateway.db import Database
from gateway.writer import ProcessWriter
from tests.support.generator import SimDevice, reading, sign_reading, topic

DEVICES, BATCHES = 1024, 8


def test_batches_and_results_larger_than_the_pipe_keep_flowing(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'gw.db'}")
    db.migrate()
    kek = os.urandom(32)
    devs = [SimDevice(f"nabd-pipe{i:05d}") for i in range(DEVICES)]
    with db.connect() as conn:
        db.begin(conn)
        for d in devs:
            admin.insert_device(db, conn, kek, d.id, d.key, "F", "MA-05", 1, "test")
    batches = [[(topic(d.id), raw, time.time(), False, 0, 1, 0, hashlib.sha256(raw).hexdigest(), None)
                for d in devs for raw in [d.next_reading()[1]]]
               for _ in range(BATCHES)]
    assert sum(len(p[1]) for p in batches[0]) > 2 * 212992    # Linux: net.core.wmem_default 208 KiB
    results: queue.Queue = queue.Queue()
    w = ProcessWriter(db.url, kek, forward=False, skew=300,
                      on_result=lambda batch, res: results.put(({v.kind for v in res.verdicts}, len(res.acks))))
    w.start()
    try:
        feeder = threading.Thread(target=lambda: [w.submit(b) for b in batches], daemon=True)
        feeder.start()
        got = []
        for _ in batches:
            try:
                got.append(results.get(timeout=120))
            except queue.Empty:
                raise AssertionError(f"the writer stopped after {len(got)} of {BATCHES} batches") from None
        assert got == [({"accept"}, DEVICES)] * BATCHES      # every reading stored, one ack per device
        feeder.join(timeout=10)
        assert not feeder.is_alive()
    finally:
        w.stop()
    with db.connect() as conn:
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == DEVICES * BATCHES


def test_the_digest_taken_by_the_network_process_is_stored_and_judges_redeliveries(tmp_path):
    """The SHA-256 the ingest takes of each message's bytes (the Pending tuple's last field) is the
    one stored, a redelivery of the same bytes is a duplicate (acked, not stored again), and other
    bytes under a stored seq a replay; a Message without a digest still gets one."""
    from gateway.store import Message, Store

    db = Database(f"sqlite:///{tmp_path / 'gw.db'}")
    db.migrate()
    kek = os.urandom(32)
    dev = SimDevice("nabd-digest01")
    with db.connect() as conn:
        db.begin(conn)
        admin.insert_device(db, conn, kek, dev.id, dev.key, "F", "MA-05", 1, "test")
    raws = [dev.next_reading()[1] for _ in range(2)]
    forged_seq1 = sign_reading(dev.key, dev.kid, reading(dev.id, 1, values={"hr": 99}))  # seq 1, other bytes
    assert forged_seq1 != raws[0]

    def pending(raw: bytes) -> tuple:
        return (topic(dev.id), raw, time.time(), False, 0, 1, 0, hashlib.sha256(raw).hexdigest(), None)

    results: queue.Queue = queue.Queue()
    w = ProcessWriter(db.url, kek, forward=False, skew=300,
                      on_result=lambda batch, res: results.put([(v.kind, v.reason) for v in res.verdicts]))
    w.start()
    try:
        w.submit([pending(r) for r in raws])
        assert [k for k, _ in results.get(timeout=60)] == ["accept", "accept"]
        w.submit([pending(raws[0]), pending(forged_seq1)])
        assert results.get(timeout=60) == [("duplicate", ""), ("reject", "replay")]
    finally:
        w.stop()
    with db.connect() as conn:
        stored = conn.execute("SELECT seq, sha256 FROM readings ORDER BY seq").fetchall()
        assert [tuple(r) for r in stored] == [(i + 1, hashlib.sha256(r).hexdigest()) for i, r in enumerate(raws)]
        res = Store(db, kek).process(conn, [Message(topic(dev.id), raws[1], dt.datetime.now(dt.timezone.utc))])
        assert [v.kind for v in res.verdicts] == ["duplicate"]
