"""Device status messages: verify, keep the latest per device, acknowledge after the commit.

Devices publish a signed, retained ``status`` (typ ``nabd-status+jws``, docs/protocol.md "Status")
on every connect; their Last Will is the same message with ``"state": "offline"``, signed when
the device connected, which the broker publishes when the connection drops. The ingest
(gateway/ingest.py) subscribes to ``$share/nabd-gateway/nabd/v1/dev/+/status`` beside the readings
and hands every status message to a ``StatusWorker`` (its own bounded queue, thread and database
connection, so the readings' batch writer is untouched).

Verification follows the readings' order (gateway/verify.py) and quarantines with the same
reasons: 1 size (``oversized``) and shape (``malformed``: three base64url parts, header exactly
alg/kid/typ with alg HS256 and typ ``nabd-status+jws``, payload a JSON object, 32-byte MAC);
2 device and key version known (``unknown_device``) and not revoked (``revoked``); 3 HMAC-SHA-256
in constant time (``bad_signature``, also a security event); 4 topic device = kid device = payload
``dev`` (``topic_mismatch``); 5 values (``invalid``: every field of the protocol present with its
type, nothing else; ``future_ts``: a synced ``ts`` more than the skew ahead); 6 order
(``stale_status``, below).

Storage (table ``device_status``, migrations 0002 and 0005): one row per device. The same bytes
again (the broker redelivering after a gateway restart) change nothing and count as duplicates.
Otherwise a verified status replaces the stored one only when it comes after it in the order
(``conn``, rank, ``up``), compared as a tuple: ``conn`` is the device's connection number (a
counter on its flash, never reused, one per MQTT connection), rank is 0 for ``online`` and 1 for
``offline``, ``up`` the device's uptime. So the Last Will of connection c, signed at connect time
(its ``ts``, ``up``, ``outbox`` describe that moment) but published by the broker when the
connection drops, supersedes every ``online`` status of connection c; any status of connection
c+1 supersedes everything of c; within one connection and state the later ``up`` wins, and an
equal one too (two statuses of one connection in the same second are both genuine: the later
received is kept, the only thing a replay of that kind can do is show figures one second old). A
status that comes before the stored one is not stored: it is quarantined as ``stale_status``
(counted as ``rejected`` and in ``nabd_quarantine_total{reason="stale_status"}``; no security
event, because a genuine message can be stale too: a will the broker publishes after the same
device's next connection already reported, or an older status the broker redelivers after a
newer one was stored). The comparison is the ``WHERE`` of the upsert, on the row the database
holds, so gateway processes racing on one device cannot store the older status last. Rows from
before migration 0005 have ``conn`` 0: the first status with a ``conn`` replaces them.
``devices.fw`` and ``devices.cal_due`` follow the stored status (the observatory's firmware and
calibration-overdue figures read them); ``devices.last_seen_at`` follows stored ``online`` statuses.

Retained statuses: Mosquitto sends the retained status of every device when the gateway
(re)subscribes, also through the shared subscription (MQTT 5 says a shared subscription gets no
retained messages; Mosquitto 2 sends them anyway), so a gateway started after the devices still
learns their state; unchanged ones are duplicates and cost one look-up each.

Replays: someone able to publish on a device's status topic (its broker password; a broker that
kept or restored old retained messages) can no longer put back an old, validly signed status: an
old ``online`` or an older connection's will comes before what is stored and is quarantined. What
remains: before the gateway stored anything of a device (a new database, or a lost row) the first
verified status is taken as it comes; and a device whose flash is erased starts ``conn`` again
from 1, so its statuses are ``stale_status`` until its ``device_status`` row is deleted (its
readings' ``seq`` has the same property and shows as ``replay``).

Metrics: ``nabd_status_messages_total{result="accepted"|"duplicate"|"rejected"}``, the gauge
``nabd_devices_online`` (active devices whose latest status is ``online``, from the database, so it
is right with several gateway processes), and rejections in ``nabd_quarantine_total{reason}``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import queue
import re
import threading
import time
from typing import Any, Callable

from gateway import metrics
from gateway.db import Database
from gateway.keys import KeyRecord, KeyRing
from gateway.quarantine import Quarantine, Rejected
from gateway.secrets import KeyDecryptError
from gateway.store import BatchResult, Message, Store
from gateway.verify import FUTURE_SKEW_S, FW_RE, Verdict, authenticate, parse, reject, topic_device
from gateway.worker import BatchWorker, take_batch, wait_drained

log = logging.getLogger("nabd.gateway.status")

UTC = dt.timezone.utc
SHARE_GROUP = "nabd-gateway"
STATUS_FILTER = "nabd/v1/dev/+/status"
STATUS_SUBSCRIPTION = f"$share/{SHARE_GROUP}/{STATUS_FILTER}"
STATES = ("online", "offline")

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# free text shown again to administrators: safe sets only (docs/protocol.md, gateway/verify.py FW_RE)
_SENSOR_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_SENSOR_STATE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:+-]{0,63}$")
_FIELDS = frozenset(("v", "dev", "state", "conn", "ts", "ts_ok", "up", "fw", "rssi", "heap", "outbox", "drops",
                     "seq", "sensors", "cal_due", "errors"))
_COUNTS = ("up", "heap", "outbox", "drops", "seq", "errors")
_MAX_INT = 2**53
# a status' rank within its connection (SQL): 0 online, 1 offline. The Last Will (offline, signed
# at connect) comes after every online status of the same connection, though signed before them
_RANK = "(CASE {t}.state WHEN 'offline' THEN 1 ELSE 0 END)"

STATUS_MESSAGES = metrics.REGISTRY.counter(
    "nabd_status_messages_total", "Device status messages by outcome (accepted, duplicate, rejected)", ("result",))
DEVICES_ONLINE = metrics.REGISTRY.gauge(
    "nabd_devices_online", "Active devices whose latest verified status is online")


def is_status_topic(topic: str) -> bool:
    return topic.endswith("/status")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --- verification (pure) -----------------------------------------------------------------------

def check_values(p: dict, now: float, skew: int = FUTURE_SKEW_S) -> tuple[str, str] | None:
    """(reason, detail) when a status payload's values are wrong, else None."""
    missing = sorted(_FIELDS - set(p))
    if missing:
        return "invalid", f"missing field(s) {missing}"
    extra = sorted(set(p) - _FIELDS)
    if extra:
        return "invalid", f"unknown field(s) {extra}"
    if not _is_int(p["v"]) or p["v"] != 1:
        return "invalid", f"protocol version {p['v']!r}, expected 1"
    if p["state"] not in STATES:
        return "invalid", f"state {p['state']!r} not in {STATES}"
    if not _is_int(p["conn"]) or not 1 <= p["conn"] < _MAX_INT:
        return "invalid", "conn is not a positive integer"
    if not _is_int(p["ts"]) or not 0 <= p["ts"] < _MAX_INT:
        return "invalid", "ts is not a non-negative integer"
    if not isinstance(p["ts_ok"], bool):
        return "invalid", "ts_ok is not a boolean"
    for k in _COUNTS:
        if not _is_int(p[k]) or not 0 <= p[k] < _MAX_INT:
            return "invalid", f"{k} is not a non-negative integer"
    if not isinstance(p["fw"], str) or not FW_RE.fullmatch(p["fw"]):
        return "invalid", f"fw is not a version {FW_RE.pattern}"
    if p["rssi"] is not None and (not _is_int(p["rssi"]) or not -200 <= p["rssi"] <= 50):
        return "invalid", "rssi is not null or an integer dBm in -200..50"
    s = p["sensors"]
    if not isinstance(s, dict) or len(s) > 8 or not all(
            isinstance(k, str) and _SENSOR_RE.fullmatch(k) and isinstance(v, str) and _SENSOR_STATE_RE.fullmatch(v)
            for k, v in s.items()):
        return "invalid", (f"sensors is not an object of at most 8 sensor names {_SENSOR_RE.pattern} to states "
                           f"{_SENSOR_STATE_RE.pattern}")
    cd = p["cal_due"]
    if cd is not None:
        if not isinstance(cd, str) or not _DATE_RE.match(cd):
            return "invalid", "cal_due is not null or YYYY-MM-DD"
        try:
            dt.date.fromisoformat(cd)
        except ValueError:
            return "invalid", f"cal_due {cd!r} is not a date"
    if p["ts_ok"] and p["ts"] > now + skew:
        return "future_ts", f"ts {p['ts']} is {p['ts'] - now:.0f} s in the future (> {skew} s)"
    return None


def verify_status(raw: bytes, topic: str, keys: Callable[[str, int], KeyRecord | None], now: float,
                  skew: int = FUTURE_SKEW_S) -> Verdict:
    """The verdict on one status message; ``payload`` holds the verified status when accepted.
    Steps 1 to 4 are the readings' (gateway/verify.py), with typ ``nabd-status+jws``."""
    p = parse(raw, topic, "status")
    if isinstance(p, Verdict):
        return p
    bad = authenticate(p, topic, keys, "status")
    if bad is not None:
        return bad
    bad = check_values(p.payload, now, skew)
    if bad:
        return reject(bad[0], bad[1], p.kid_device, key_version=p.kid_version)
    return Verdict("accept", device=p.kid_device, key_version=p.kid_version,
                   sha256=hashlib.sha256(bytes(raw)).hexdigest(), payload=p.payload)


# --- storage -------------------------------------------------------------------------------------

def _order_text(conn: Any, state: Any, up: Any) -> str:
    return f"status (conn {conn}, {state}, up {up} s)"


class StatusStore:
    """Verify and store status messages, one transaction per call (``process``)."""

    def __init__(self, db: Database, kek: bytes, skew: int = FUTURE_SKEW_S, quarantine: Any = None):
        self.db = db
        self.filer = Quarantine(db, quarantine)
        self.keys = KeyRing(db, kek)
        self.skew = skew
        q = db.sql
        self._sel_status = q("SELECT sha256 FROM device_status WHERE device_id = ?")
        self._sel_order = q("SELECT conn, state, up FROM device_status WHERE device_id = ?")
        # the stored row is replaced only by a status that comes after it in (conn, rank, up):
        # decided by the database on the row it holds (PostgreSQL: the latest committed version,
        # so two gateway processes racing on one device cannot store the older status last)
        self._upsert = q(
            "INSERT INTO device_status (device_id, state, conn, ts, ts_ok, up, fw, rssi, heap, outbox, drops, seq, "
            "errors, sensors, cal_due, key_version, sha256, received_at, state_since, messages) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) "
            "ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, conn = excluded.conn, ts = excluded.ts, "
            "ts_ok = excluded.ts_ok, up = excluded.up, fw = excluded.fw, rssi = excluded.rssi, "
            "heap = excluded.heap, outbox = excluded.outbox, drops = excluded.drops, seq = excluded.seq, "
            "errors = excluded.errors, sensors = excluded.sensors, cal_due = excluded.cal_due, "
            "key_version = excluded.key_version, sha256 = excluded.sha256, received_at = excluded.received_at, "
            "state_since = CASE WHEN device_status.state = excluded.state THEN device_status.state_since "
            "ELSE excluded.state_since END, messages = device_status.messages + 1 "
            f"WHERE (excluded.conn, {_RANK.format(t='excluded')}, excluded.up) >= "
            f"(device_status.conn, {_RANK.format(t='device_status')}, device_status.up)")
        self._upd_device = q("UPDATE devices SET fw = ?, cal_due = ? WHERE id = ?")
        self._upd_seen = q("UPDATE devices SET last_seen_at = ? WHERE id = ? AND "
                           "(last_seen_at IS NULL OR last_seen_at < ?)")

    def _ts(self, t: dt.datetime) -> Any:
        return t if self.db.dialect == "postgresql" else t.astimezone(UTC).isoformat(timespec="microseconds")

    def process(self, conn: Any, messages: list, now: float | None = None) -> list[Verdict]:
        """Verify and store ``messages`` (objects with ``topic``, ``raw``, ``received_at``) in one
        transaction, committed on return. Verdict kinds: accept, duplicate, reject."""
        now = time.time() if now is None else now
        now_dt = dt.datetime.fromtimestamp(now, UTC)
        try:
            self.db.begin(conn)
            if self.db.dialect == "postgresql":
                # the batch's device rows locked first, in id order, as the readings' store locks
                # its batch's (gateway/store.py): updated in arrival order, a status batch could
                # hold one device's row while waiting for another's that a readings batch (or
                # another gateway's status batch) held while waiting for the first, a deadlock
                # that PostgreSQL breaks after deadlock_timeout by aborting one of them
                devices = sorted({d for d in (topic_device(m.topic, "status") for m in messages) if d})
                conn.execute("SELECT id FROM devices WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE", (devices,))
            verdicts = [self._one(conn, m, now, now_dt) for m in messages]
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        for v in verdicts:
            STATUS_MESSAGES.inc(result={"accept": "accepted", "duplicate": "duplicate"}.get(v.kind, "rejected"))
            if v.kind == "reject":
                metrics.QUARANTINE.inc(reason=v.reason)
        return verdicts

    def _one(self, conn: Any, m: Any, now: float, now_dt: dt.datetime) -> Verdict:
        def keys(dev: str, ver: int) -> KeyRecord | None:  # called once, for the kid
            return self.keys.load(conn, (dev,), now_dt).get((dev, ver))

        try:
            v = verify_status(m.raw, m.topic, keys, now, self.skew)
        except KeyDecryptError as e:  # a stored key that does not decrypt: the gateway's problem, loud
            log.error("status from %s: %s", topic_device(m.topic, "status"), e)
            v = reject("malformed", "gateway error: the device key does not decrypt (see the gateway log)",
                       topic_device(m.topic, "status"))
        if v.kind == "reject":
            self.quarantine(conn, m, v, now_dt)
            return v
        row = conn.execute(self._sel_status, (v.device,)).fetchone()
        if row is not None and hmac.compare_digest(str(row[0]), v.sha256):
            return Verdict("duplicate", device=v.device, key_version=v.key_version, sha256=v.sha256,
                           payload=v.payload)
        p = v.payload
        assert p is not None  # accepted verdicts carry their payload
        rx = self._ts(m.received_at)
        cur = conn.execute(self._upsert, (v.device, p["state"], p["conn"], p["ts"], p["ts_ok"], p["up"], p["fw"],
                                          p["rssi"], p["heap"], p["outbox"], p["drops"], p["seq"], p["errors"],
                                          json.dumps(p["sensors"], separators=(",", ":"), sort_keys=True),
                                          p["cal_due"], v.key_version, v.sha256, rx, rx))
        if cur.rowcount == 0:  # the stored status comes after this one: a replay or a late will
            st = conn.execute(self._sel_order, (v.device,)).fetchone()
            v = reject("stale_status", f"{_order_text(p['conn'], p['state'], p['up'])} does not come after "
                       f"the stored {_order_text(*st) if st else 'status'}", v.device, key_version=v.key_version)
            self.quarantine(conn, m, v, now_dt)
            return v
        conn.execute(self._upd_device, (p["fw"], p["cal_due"], v.device))
        if p["state"] == "online":
            conn.execute(self._upd_seen, (rx, v.device, rx))
        return v

    def quarantine(self, conn: Any, m: Any, v: Verdict, now_dt: dt.datetime) -> None:
        """File through the quarantine's limits (gateway/quarantine.py): the same bytes again (a
        retained status re-sent at every restart) only count; past the device's budget, no row."""
        event = "status_" + v.reason if v.reason == "bad_signature" else None
        got = self.filer.file(conn, [Rejected(m.received_at, v.reason, m.topic, v.device, bytes(m.raw), v.detail,
                                              event)], now_dt.timestamp())
        if got:
            Store.count_suppressed(got)

    def online_count(self, conn: Any) -> int:
        row = conn.execute("SELECT COUNT(*) FROM device_status s JOIN devices d ON d.id = s.device_id "
                           "WHERE s.state = 'online' AND d.status = 'active'").fetchone()
        return int(row[0])


def latest(db: Database, device_id: str | None = None) -> list[dict]:
    """The stored latest status of one device or of all, as dicts (for the CLI, API and tests)."""
    sql = ("SELECT device_id, state, conn, ts, ts_ok, up, fw, rssi, heap, outbox, drops, seq, errors, sensors, "
           "cal_due, key_version, received_at, state_since, messages FROM device_status")
    params: tuple = ()
    if device_id is not None:
        sql += " WHERE device_id = ?"
        params = (device_id,)
    with db.connect() as conn:
        rows = conn.execute(db.sql(sql + " ORDER BY device_id"), params).fetchall()
    cols = ("device_id", "state", "conn", "ts", "ts_ok", "up", "fw", "rssi", "heap", "outbox", "drops", "seq", "errors",
            "sensors", "cal_due", "key_version", "received_at", "state_since", "messages")
    out = []
    for r in rows:
        d = dict(zip(cols, r, strict=True))
        d["ts_ok"] = bool(d["ts_ok"])
        d["sensors"] = json.loads(d["sensors"])
        for k in ("cal_due", "received_at", "state_since"):
            val = d[k]
            if isinstance(val, dt.datetime):
                d[k] = val.astimezone(UTC).isoformat()
            elif isinstance(val, dt.date):
                d[k] = val.isoformat()
        out.append(d)
    return out


# --- the worker the ingest hands status messages to ----------------------------------------------

class StatusWorker(BatchWorker):
    """A bounded queue and a thread: ``submit(message)`` from paho's network thread (blocks when full:
    backpressure, never a drop); the thread stores batches in one transaction each and only then
    calls ``ack(message)`` (the broker PUBACK, on the connection the message came from). Database
    errors and messages that break the store are handled as gateway/worker.py says."""

    log = log
    what = "status message(s)"

    def __init__(self, db: Database, kek: bytes, ack: Callable[[Any], None], *, skew: int = FUTURE_SKEW_S,
                 queue_max: int = 1024, batch_max: int = 64, quarantine: Any = None):
        super().__init__(db)
        self.store = StatusStore(db, kek, skew, quarantine)
        self.ack = ack
        self.batch_max = batch_max
        self.queue: queue.Queue = queue.Queue(maxsize=queue_max)
        self.processed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, m: Any) -> None:
        self.queue.put(m)

    def start(self) -> "StatusWorker":
        self._thread = threading.Thread(target=self._loop, name="nabd-status", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Store and acknowledge what is queued (up to ``timeout``), then stop."""
        end = time.monotonic() + timeout
        wait_drained(self.queue, self._thread, end)
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=max(1.0, end - time.monotonic()))
        self.close()

    def _loop(self) -> None:
        self._refresh_gauge()
        while not (self._stop.is_set() and self.queue.empty()):
            batch = take_batch(self.queue, self.batch_max)
            if not batch or self.commit(batch, self._stop.is_set) is None:
                continue  # shutting down: the broker redelivers them to the next session
            self.processed += len(batch)
            for m in batch:
                self.ack(m)
            self._refresh_gauge()

    def store_batch(self, conn: Any, batch: list[Message]) -> BatchResult:
        return BatchResult(self.store.process(conn, batch))

    def quarantine_error(self, conn: Any, m: Message) -> BatchResult:
        v = reject("malformed", "gateway error while storing this status (see the gateway log)",
                   topic_device(m.topic, "status"))
        self.db.begin(conn)
        self.store.quarantine(conn, m, v, dt.datetime.now(UTC))
        conn.commit()
        STATUS_MESSAGES.inc(result="rejected")
        metrics.QUARANTINE.inc(reason=v.reason)
        return BatchResult([v])

    def _refresh_gauge(self) -> None:
        try:
            conn = self.connection()
            DEVICES_ONLINE.set(self.store.online_count(conn))
            conn.commit()
        except Exception as e:  # a metric must never stop the worker
            log.warning("cannot count online devices: %s", e)
            self.close()
