"""The store process's WAL checkpointer (gateway/writer.py): SQLite's WAL is copied into the
database file by a thread of its own, not inside the writer's commits."""
from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time

from gateway import admin
from gateway.db import Database
from gateway.store import Message
from gateway.writer import BatchStore
from tests.support.generator import SimDevice, topic

UTC = dt.timezone.utc


def _db_pages(path) -> int:
    """Pages in the database file itself (not the WAL): grows only when a checkpoint copies."""
    return os.path.getsize(path) // 4096


def test_committed_batches_reach_the_database_file_through_the_checkpointer(tmp_path):
    path = tmp_path / "gw.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    kek = os.urandom(32)
    dev = SimDevice("nabd-ckpt0001")
    admin.add_device(db, kek, dev.id, dev.key, "F", "MA-05")
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = _db_pages(path)
    bs = BatchStore(db.url, kek, forward=False, skew=300)
    try:
        for _ in range(4):
            res = bs.commit([Message(topic(dev.id), dev.next_reading()[1], dt.datetime.now(UTC)) for _ in range(200)])
            assert {v.kind for v in res.verdicts} == {"accept"}
        with sqlite3.connect(path) as c:
            assert c.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000   # other connections: default
        assert bs._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # the writer: off
        end = time.monotonic() + 10
        while _db_pages(path) <= before + 50 and time.monotonic() < end:
            time.sleep(0.05)
        assert _db_pages(path) > before + 50   # 800 readings copied from the WAL by the checkpointer
    finally:
        bs.shutdown()
    with db.connect() as c:
        assert c.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 800
