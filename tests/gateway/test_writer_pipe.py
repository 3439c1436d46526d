"""The store's writer pipe (gateway/writer.py ProcessWriter) under batches and results each larger
than the pipe's socket buffer: a batch of 1,024 readings from 1,024 devices is ~1 MB one way and
1,024 signed acks (~0.4 MB) the other. ``submit`` used to hold the writer's lock while its send
waited for the store process to read; the store process, done with the batch before, waited to
send its result; and the results thread, holding an earlier result, waited for that lock: the
three waited for each other for good (bench fleet's thundering herd at 3,000 devices: both
gateways alive, nothing stored for minutes, the regional broker dropping their keep-alive)."""
from __future__ import annotations

import os
import queue
import threading
import time

from gateway import admin
from gateway.db import Database
from gateway.writer import ProcessWriter
from tests.support.generator import SimDevice, topic

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
    batches = [[(topic(d.id), d.next_reading()[1], time.time(), False, 0, 1, 0) for d in devs]
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
