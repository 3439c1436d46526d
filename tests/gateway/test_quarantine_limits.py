"""The quarantine's limits (gateway/quarantine.py) on both databases: the budget refills at its
rate, the same bytes count on one row, retention and the size cap delete the oldest rows."""
from __future__ import annotations

import datetime as dt
import os

import pytest

from gateway.db import Database
from gateway.quarantine import Budget, Quarantine, QuarantineLimits, Rejected, floods

UTC = dt.timezone.utc
T = "nabd/v1/dev/nabd-limits01/reading"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path}/gateway.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    d = Database(url)
    d.migrate()
    return d


def test_budget_refills_at_its_rate():
    b = Budget(60)                              # 60 a minute: one a second, 60 at most in hand
    assert sum(b.take("a", 1000.0) for _ in range(100)) == 60
    assert not b.take("a", 1000.5) and b.take("a", 1001.01)
    assert b.take("b", 1000.0)                  # another device has its own


def _file(db, q, items, now):
    with db.connect() as conn:
        db.begin(conn)
        got = q.file(conn, items, now)
    return got


def _rows(db, sql):
    with db.connect() as conn:
        return conn.execute(sql).fetchall()


def test_same_bytes_count_once_and_the_budget_suppresses(db):
    q = Quarantine(db, QuarantineLimits(per_device_per_min=5))
    now = 1_800_000_000.0
    at = dt.datetime.fromtimestamp(now, UTC)
    same = Rejected(at, "malformed", T, "nabd-limits01", b"junk", "x")
    assert _file(db, q, [same] * 3, now) == {}
    assert _rows(db, "SELECT hits, size, sha256 IS NOT NULL FROM quarantine") == [(3, 4, True)]
    distinct = [Rejected(at, "bad_signature", T, "nabd-limits01", os.urandom(100), "y", "bad_signature")
                for _ in range(10)]
    assert _file(db, q, distinct, now) == {"nabd-limits01": 6}     # 4 tokens left of 5
    assert _rows(db, "SELECT COUNT(*) FROM quarantine")[0][0] == 5
    assert _rows(db, "SELECT COUNT(*) FROM security_events")[0][0] == 4   # events only for kept rows
    f = floods(db, at)
    assert [(x["device"], x["suppressed"], x["suppressed_bytes"], x["flooding"]) for x in f] == [
        ("nabd-limits01", 6, 600, True)]
    assert not floods(db, at + dt.timedelta(hours=2))[0]["flooding"]


def test_retention_and_size_cap_delete_the_oldest(db):
    q = Quarantine(db, QuarantineLimits(per_device_per_min=1000, max_mb=10_000 / 1024 / 1024, retention_days=30))
    now = 1_800_000_000.0
    old = dt.datetime.fromtimestamp(now - 31 * 86400, UTC)
    new = dt.datetime.fromtimestamp(now, UTC)
    items = [Rejected(old, "malformed", T, None, os.urandom(1000), "old")]
    items += [Rejected(new, "malformed", T, None, os.urandom(1000), f"new {i}") for i in range(15)]
    _file(db, q, items, now)
    with db.connect() as conn:
        db.begin(conn)
        deleted = q.prune(conn, now)
    assert deleted == 6                         # the 31-day-old one, then the oldest 5 of 15 KB
    left = [d for (d,) in _rows(db, "SELECT detail FROM quarantine ORDER BY id")]
    assert left == [f"new {i}" for i in range(5, 15)]
    with db.connect() as conn:                  # at most once a minute
        db.begin(conn)
        assert q.prune(conn, now + 1) == 0
