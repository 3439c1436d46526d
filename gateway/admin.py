"""Administrative actions on devices, each written to the audit log in the same transaction.

Used by ``nabd-gateway devices ...`` and by tests. Key material is accepted as bytes, encrypted
with the KEK before it reaches the database, and never logged or audited (only its version).

Key rotation: ``rotate_key`` stores the new key as version N+1 and schedules the old version's
``revoked_at`` ``grace_hours`` ahead (``[security] key_grace_hours``, 72 h by default). During the
grace period readings signed with the old version, still waiting in the device's outbox, are
accepted (and acknowledged with the version that signed them); after it, they are quarantined as
``revoked``. ``grace_hours = 0`` revokes the old version at once (a compromised key).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from gateway import quarantine
from gateway.config import REGIONS
from gateway.db import Database, audit, utcnow
from gateway.secrets import encrypt_key
from gateway.verify import DEVICE_RE


class AdminError(ValueError):
    """An administrative request that cannot be carried out; the message says why. ``bad_argument``:
    the request itself is malformed (a usage error on the command line), not at odds with the
    registry (an unknown or already registered device)."""

    def __init__(self, message: str, bad_argument: bool = False):
        super().__init__(message)
        self.bad_argument = bad_argument


def validate_region(region: str) -> str:
    """ISO 3166-2 codes of Morocco's 12 regions (2015 division). Checked against pycountry when it
    is installed; the literal list MA-01..MA-12 is the fallback (and the schema's CHECK)."""
    try:
        import pycountry

        known = {s.code for s in pycountry.subdivisions.get(country_code="MA") if s.type == "Region"}
    except Exception:
        known = set(REGIONS)
    if region not in known or region not in REGIONS:
        raise AdminError(f"region {region!r} is not one of Morocco's regions MA-01..MA-12 (ISO 3166-2)", True)
    return region


def validate_device_id(device_id: str) -> str:
    if not DEVICE_RE.match(device_id or ""):
        raise AdminError(f"device id {device_id!r} does not match ^[a-z0-9][a-z0-9-]{{2,39}}$", True)
    return device_id


def _device(db: Database, conn: Any, device_id: str) -> tuple | None:
    return conn.execute(db.sql("SELECT id, status FROM devices WHERE id = ?"), (device_id,)).fetchone()


def add_device(db: Database, kek: bytes, device_id: str, key: bytes, facility: str, region: str,
               key_version: int = 1, actor: str = "cli") -> None:
    with db.connect() as conn:
        db.begin(conn)
        insert_device(db, conn, kek, device_id, key, facility, region, key_version, actor)


def insert_device(db: Database, conn: Any, kek: bytes, device_id: str, key: bytes, facility: str, region: str,
                  key_version: int = 1, actor: str = "cli") -> None:
    """``add_device`` inside the caller's transaction (many devices in one: bulk registration)."""
    validate_device_id(device_id)
    validate_region(region)
    if not facility or len(facility) > 128:
        raise AdminError("facility must be a non-empty name (at most 128 characters)", True)
    if key_version < 1:
        raise AdminError("key version must be >= 1", True)
    now = utcnow()
    if _device(db, conn, device_id):
        raise AdminError(f"device {device_id} already exists (use rotate-key to change its key)")
    conn.execute(db.sql("INSERT INTO devices (id, facility, region, status, registered_at, cmd_n) "
                        "VALUES (?, ?, ?, 'active', ?, 0)"), (device_id, facility, region, now))
    conn.execute(db.sql("INSERT INTO device_keys (device_id, key_version, key_enc, created_at) "
                        "VALUES (?, ?, ?, ?)"), (device_id, key_version, encrypt_key(kek, device_id, key_version, key), now))
    audit(db, conn, actor, "devices.add", device_id,
          f"facility={facility} region={region} key_version={key_version}")


def list_devices(db: Database) -> list[dict]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT d.id, d.facility, d.region, d.status, d.fw, d.cal_id, d.cal_date, d.registered_at, "
            "d.last_seen_at, (SELECT MAX(k.key_version) FROM device_keys k WHERE k.device_id = d.id), "
            "(SELECT COUNT(*) FROM readings r WHERE r.device_id = d.id), d.cal_due, s.state, s.state_since, "
            "s.outbox, s.drops FROM devices d LEFT JOIN device_status s ON s.device_id = d.id "
            "ORDER BY d.id").fetchall()
    flooding = {f["device"] for f in quarantine.floods(db) if f["flooding"]}
    out = []
    for r in rows:
        # state: the device's latest verified status (online / offline, its Last Will), "unknown"
        # before its first; outbox: readings waiting on the device then; drops: readings it lost
        out.append({"id": r[0], "facility": r[1], "region": r[2], "status": r[3], "fw": r[4], "cal_id": r[5],
                    "cal_date": _txt(r[6]), "registered_at": _txt(r[7]), "last_seen_at": _txt(r[8]),
                    "key_version": r[9], "readings": r[10], "cal_due": _txt(r[11]), "state": r[12] or "unknown",
                    "state_since": _txt(r[13]), "outbox": r[14], "drops": r[15],
                    # an alert the administrator must see: rejected messages past the budget (gateway/quarantine.py)
                    "alert": "quarantine flood" if r[0] in flooding else None})
    return out


def _txt(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.timezone.utc).isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


def revoke_device(db: Database, device_id: str, actor: str = "cli") -> None:
    now = utcnow()
    with db.connect() as conn:
        db.begin(conn)
        row = _device(db, conn, device_id)
        if not row:
            raise AdminError(f"no device {device_id}")
        if row[1] == "revoked":
            raise AdminError(f"device {device_id} is already revoked")
        conn.execute(db.sql("UPDATE devices SET status = 'revoked' WHERE id = ?"), (device_id,))
        conn.execute(db.sql("UPDATE device_keys SET revoked_at = ? WHERE device_id = ? AND "
                            "(revoked_at IS NULL OR revoked_at > ?)"), (now, device_id, now))
        audit(db, conn, actor, "devices.revoke", device_id, "device and all its keys revoked")


def rotate_key(db: Database, kek: bytes, device_id: str, key: bytes, grace_hours: float = 72.0,
               actor: str = "cli") -> int:
    """Store ``key`` as the next version; returns it. See the module docstring for the old one."""
    now = utcnow()
    with db.connect() as conn:
        db.begin(conn)
        row = _device(db, conn, device_id)
        if not row:
            raise AdminError(f"no device {device_id}")
        if row[1] != "active":
            raise AdminError(f"device {device_id} is {row[1]}: register it again under a new id")
        old = conn.execute(db.sql("SELECT MAX(key_version) FROM device_keys WHERE device_id = ?"),
                           (device_id,)).fetchone()[0] or 0
        new = int(old) + 1
        until = now + dt.timedelta(hours=max(0.0, grace_hours))
        conn.execute(db.sql("UPDATE device_keys SET revoked_at = ? WHERE device_id = ? AND "
                            "(revoked_at IS NULL OR revoked_at > ?)"), (until, device_id, until))
        conn.execute(db.sql("INSERT INTO device_keys (device_id, key_version, key_enc, created_at) "
                            "VALUES (?, ?, ?, ?)"), (device_id, new, encrypt_key(kek, device_id, new, key), now))
        audit(db, conn, actor, "devices.rotate-key", device_id,
              f"key_version {old} -> {new}; old version(s) valid until {until.isoformat()}")
    return new


def count_quarantine(db: Database) -> int:
    with db.connect() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])


def list_quarantine(db: Database, limit: int = 100) -> list[dict]:
    with db.connect() as conn:
        rows = conn.execute(db.sql("SELECT id, received_at, reason, topic, device_hint, detail, raw, size, hits, "
                                   "last_at FROM quarantine ORDER BY id DESC LIMIT ?"), (limit,)).fetchall()
    # bytes: the message's size (a row keeps at most 4 KiB of it); hits: times these bytes came
    return [{"id": r[0], "received_at": _txt(r[1]), "reason": r[2], "topic": r[3], "device": r[4],
             "detail": r[5], "bytes": int(r[7]) if r[7] is not None else len(bytes(r[6])), "hits": int(r[8]),
             "last_at": _txt(r[9])} for r in rows]
