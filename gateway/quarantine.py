"""Filing rejected messages so that no device can fill the disk with them.

Anyone with one device's broker password can publish junk on that device's topics as fast as the
broker takes it. Each rejected message used to cost a row with up to 4 KiB of its bytes (and a
security event for a bad signature or a replay): 8 KB junk grew the database by ~28 MB/s. Now,
for each rejected message (``Quarantine.file``, inside the caller's transaction):

1. **the same bytes again** (sha256 already in the quarantine: a retained status re-sent at every
   gateway restart, a broker redelivery, a device resending a refused reading) add one to that
   row's ``hits`` and its ``last_at``; no new row, no new security event;
2. **within the device's budget** (``[quarantine] per_device_per_min``, a token bucket per device
   that refills at that rate and holds as many): a row with the reason, the topic, the detail, the
   digest, the size and at most ``RAW_LIMIT`` bytes of the message, as before;
3. **past the budget**: no row. The device's line in ``quarantine_floods`` counts it (messages,
   bytes, the digest and reason of the last one, first and last time): this line is the alert
   (``nabd-gateway quarantine list``, ``devices list``, the metric
   ``nabd_quarantine_suppressed_total{device}``, a warning in the gateway's log).

The device is the one in the topic (``nabd/v1/dev/{device}/...``): the broker's ACL ties it to the
broker username that published, so a flood cannot spread its cost over invented device ids (the
``kid`` in the message is the sender's choice). Each gateway process keeps its own buckets (the
readings' store process and the statuses' worker have one each).

Retention (``prune``, at most once a minute per store process): rows received more than
``retention_days`` ago are deleted, then the oldest rows until the bytes kept fit ``max_mb``;
flood lines not updated for ``retention_days`` go too. Deleted space is reused by the database
(SQLite does not shrink its file; ``VACUUM`` does, offline).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

RAW_LIMIT = 4096
FLOOD_ALERT_S = 3600          # a device with suppressed messages in the last hour is flooding
_TOPIC_DEVICE = re.compile(r"^nabd/v1/dev/([^/]{1,64})/")
UTC = dt.timezone.utc


@dataclass
class QuarantineLimits:
    """Defaults of ``[quarantine]`` (gateway/config.py QuarantineConfig has the same fields)."""
    per_device_per_min: int = 60
    max_mb: float = 256.0
    retention_days: int = 30


def topic_device(topic: str) -> str:
    m = _TOPIC_DEVICE.match(topic or "")
    return m.group(1) if m else "-"


class Budget:
    """A token bucket per device: ``rate_per_min`` tokens a minute, at most that many held."""

    def __init__(self, rate_per_min: int, max_devices: int = 100_000):
        self.rate = rate_per_min / 60.0
        self.cap = float(rate_per_min)
        self.max_devices = max_devices
        self._b: dict[str, tuple[float, float]] = {}

    def take(self, device: str, now: float) -> bool:
        tokens, at = self._b.get(device, (self.cap, now))
        tokens = min(self.cap, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        if len(self._b) >= self.max_devices and device not in self._b:
            self._b.clear()  # bounded memory; topic devices are broker users, so this is rare
        self._b[device] = (tokens - 1.0 if ok else tokens, now)
        return ok


@dataclass
class Rejected:
    received_at: dt.datetime
    reason: str
    topic: str
    device_hint: str | None
    raw: bytes
    detail: str
    event: str | None = None      # security event kind to record with a new row (bad_signature, ...)


class Quarantine:
    def __init__(self, db: Any, limits: Any = None):
        self.db = db
        self.limits = limits or QuarantineLimits()
        self.budget = Budget(self.limits.per_device_per_min)
        self._pg = db.dialect == "postgresql"
        self._next_prune = 0.0
        q = db.sql
        self._sel_digest = q("SELECT id FROM quarantine WHERE sha256 = ?")
        self._upd_hits = q("UPDATE quarantine SET hits = hits + 1, last_at = ? WHERE id = ?")
        self._ins = q("INSERT INTO quarantine (received_at, reason, topic, device_hint, raw, detail, sha256, size, "
                      "hits, last_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?)")
        self._ins_event = q("INSERT INTO security_events (at, device_id, kind, detail) VALUES (?, ?, ?, ?)")
        self._flood = q(
            "INSERT INTO quarantine_floods (device, first_at, last_at, suppressed, suppressed_bytes, last_sha256, "
            "last_reason) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET "
            "first_at = CASE WHEN quarantine_floods.last_at < ? THEN excluded.first_at "
            "ELSE quarantine_floods.first_at END, last_at = excluded.last_at, "
            "suppressed = quarantine_floods.suppressed + excluded.suppressed, "
            "suppressed_bytes = quarantine_floods.suppressed_bytes + excluded.suppressed_bytes, "
            "last_sha256 = excluded.last_sha256, last_reason = excluded.last_reason")

    def _ts(self, t: dt.datetime) -> Any:
        return t if self._pg else t.astimezone(UTC).isoformat(timespec="microseconds")

    def file(self, conn: Any, items: list[Rejected], now: float | None = None) -> dict[str, int]:
        """File ``items`` in the caller's transaction; returns {device: messages suppressed}."""
        now = time.time() if now is None else now
        floods: dict[str, list] = {}
        for it in items:
            raw = bytes(it.raw)
            digest = hashlib.sha256(raw).hexdigest()
            at = self._ts(it.received_at)
            row = conn.execute(self._sel_digest, (digest,)).fetchone()
            if row is not None:
                conn.execute(self._upd_hits, (at, row[0]))
                continue
            dev = topic_device(it.topic)
            if self.budget.take(dev, now):
                conn.execute(self._ins, (at, it.reason, it.topic[:512], it.device_hint, raw[:RAW_LIMIT],
                                         it.detail, digest, len(raw), at))
                if it.event:
                    conn.execute(self._ins_event, (at, it.device_hint, it.event, it.detail))
                continue
            f = floods.setdefault(dev, [at, at, 0, 0, digest, it.reason])
            f[1], f[4], f[5] = at, digest, it.reason
            f[2] += 1
            f[3] += len(raw)
        if floods:
            cutoff = self._ts(dt.datetime.fromtimestamp(now - FLOOD_ALERT_S, UTC))
            conn.cursor().executemany(self._flood, [(dev, *f, cutoff) for dev, f in floods.items()])
        return {dev: f[2] for dev, f in floods.items()}

    def prune(self, conn: Any, now: float | None = None, every: float = 60.0) -> int:
        """Retention and the size cap (in the caller's transaction), at most every ``every`` s.
        Returns the rows deleted."""
        now = time.time() if now is None else now
        if now < self._next_prune:
            return 0
        self._next_prune = now + every
        q = self.db.sql
        cutoff = self._ts(dt.datetime.fromtimestamp(now - self.limits.retention_days * 86400, UTC))
        n = conn.execute(q("DELETE FROM quarantine WHERE received_at < ?"), (cutoff,)).rowcount or 0
        conn.execute(q("DELETE FROM quarantine_floods WHERE last_at < ?"), (cutoff,))
        cap = int(self.limits.max_mb * 1024 * 1024)
        total = int(conn.execute("SELECT COALESCE(SUM(LENGTH(raw)), 0) FROM quarantine").fetchone()[0])
        if total > cap:
            excess, last = total - cap, None
            for rid, size in conn.execute("SELECT id, LENGTH(raw) FROM quarantine ORDER BY id").fetchall():
                excess -= int(size)
                last = rid
                if excess <= 0:
                    break
            n += conn.execute(q("DELETE FROM quarantine WHERE id <= ?"), (last,)).rowcount or 0
        return n


def floods(db: Any, now: dt.datetime | None = None) -> list[dict]:
    """Flood lines, newest first; ``flooding`` when messages were suppressed in the last hour."""
    now = now or dt.datetime.now(UTC)
    with db.connect() as conn:
        rows = conn.execute("SELECT device, first_at, last_at, suppressed, suppressed_bytes, last_sha256, last_reason "
                            "FROM quarantine_floods ORDER BY last_at DESC").fetchall()
    out = []
    for dev, first, last, n, nbytes, digest, reason in rows:
        last_t = last if isinstance(last, dt.datetime) else dt.datetime.fromisoformat(str(last))
        first_t = first if isinstance(first, dt.datetime) else dt.datetime.fromisoformat(str(first))
        out.append({"device": dev, "since": first_t.astimezone(UTC).isoformat(),
                    "last_at": last_t.astimezone(UTC).isoformat(), "suppressed": int(n),
                    "suppressed_bytes": int(nbytes), "last_sha256": digest, "last_reason": reason,
                    "flooding": (now - last_t).total_seconds() < FLOOD_ALERT_S})
    return out
