"""Device keys as verification needs them: the key version a kid names, whether it is in force,
and its secret (decrypted from ``device_keys.key_enc``, gateway/secrets.py).

Used by the readings' store (gateway/store.py) and the status store (gateway/status.py).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.db import Database
from gateway.recordstore import parse_time
from gateway.secrets import DeviceKey, decrypt_key


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A device's key version as the database knows it; ``revoked`` when the device is not active
    or this key version's ``revoked_at`` has passed (``why`` says which)."""
    key: DeviceKey
    revoked: bool = False
    why: str = ""


class KeyRing:
    """Loads devices' key versions, one query for a set of devices. A decrypted key is kept per
    (device, version, ciphertext) for the life of the object, so a re-keyed row is decrypted anew.
    Raises KeyDecryptError when a stored key does not decrypt under the KEK."""

    def __init__(self, db: Database, kek: bytes):
        self.db = db
        self._kek = kek
        self._decrypted: dict[tuple[str, int, bytes], DeviceKey] = {}
        self._registered: dict[str, float | None] = {}   # device -> registration time, Unix s

    def registered_at(self, device: str) -> float | None:
        """When ``device`` was registered (Unix s), as of its last ``load``."""
        return self._registered.get(device)

    def load(self, conn: Any, devices: Iterable[str], now: dt.datetime) -> dict[tuple[str, int], KeyRecord]:
        """(device, key_version) -> KeyRecord for every key version of ``devices``, judged at ``now``."""
        devices = tuple(devices)
        if not devices:
            return {}
        marks = ",".join("?" * len(devices))
        rows = conn.execute(self.db.sql(
            "SELECT d.id, d.status, k.key_version, k.key_enc, k.revoked_at, d.registered_at FROM devices d "
            f"JOIN device_keys k ON k.device_id = d.id WHERE d.id IN ({marks})"), devices).fetchall()
        out = {}
        for dev, status, ver, enc, revoked_at, registered in rows:
            reg = parse_time(registered)
            self._registered[dev] = reg.timestamp() if reg is not None else None
            enc, ver = bytes(enc), int(ver)
            ck = (dev, ver, enc)
            key = self._decrypted.get(ck)
            if key is None:
                key = self._decrypted[ck] = decrypt_key(self._kek, dev, ver, enc)
            ra = parse_time(revoked_at)
            if status != "active":
                out[(dev, ver)] = KeyRecord(key, True, f"device {dev} is {status}")
            elif ra is not None and ra <= now:
                out[(dev, ver)] = KeyRecord(key, True, f"key {dev}/{ver} revoked at {ra.isoformat()}")
            else:
                out[(dev, ver)] = KeyRecord(key)
        return out
