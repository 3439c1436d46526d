"""Device registration files: what ``nabd provision --registration FILE`` writes on the
technician's machine and ``nabd-gateway devices add --from FILE`` imports at the gateway.

One JSON object (``FORMAT``)::

    {"format": "nabd-registration/1", "device_id": "nabd-240ac4000001",
     "key": "<64 hex>", "key_version": 2,            # the signing key the device now holds
     "facility": "CS Hay Mohammadi", "region": "MA-06",
     "broker_passwd": "nabd-240ac4000001:$7$101$...", # the broker's password-file line (a hash)
     "fw": "0.1.0", "created_at": "2026-11-30T10:05:00Z", "created_by": "..."}

The file holds the device's signing key in clear (the gateway needs it to verify signatures and
stores it encrypted with its KEK): it is written 0600 and should be deleted once imported. The
broker password itself is not in it, only Mosquitto's PBKDF2-SHA512 hash of it
(``mosquitto_passwd``'s ``$7$`` format), so the file cannot be used to log in to the broker.

``apply(db, kek, reg, grace_hours, actor)`` registers the device (``key_version`` 1 or a device
the gateway does not know yet) or rotates its key (the gateway's current version + 1 must be the
file's ``key_version``: an old file cannot roll a key back), ``apply_all`` many at once (new
devices in one transaction); ``set_broker_password(path, line)``
puts the line in Mosquitto's password file atomically, replacing the device's previous line
(``set_broker_passwords``: many lines in one rewrite).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from gateway import admin

FORMAT = "nabd-registration/1"
PBKDF2_ITERATIONS = 101          # mosquitto_passwd's default for $7$


class RegistrationError(ValueError):
    """An unusable registration file, or one the gateway refuses; the message says why."""


def broker_passwd_line(user: str, password: str, salt: bytes | None = None) -> str:
    """``user:$7$101$salt$hash``: the line ``mosquitto_passwd -b FILE USER PASSWORD`` writes."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return (f"{user}:$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(dk).decode()}")


@dataclass
class Registration:
    device_id: str
    key: bytes
    key_version: int
    facility: str
    region: str
    broker_passwd: str
    fw: str = ""
    created_at: str = ""
    created_by: str = ""

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "device_id": self.device_id, "key": self.key.hex(),
                           "key_version": self.key_version, "facility": self.facility, "region": self.region,
                           "broker_passwd": self.broker_passwd, "fw": self.fw, "created_at": self.created_at,
                           "created_by": self.created_by}, indent=1) + "\n"


def write(path: Path, reg: Registration) -> None:
    """Write the file 0600, atomically (tmp + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(reg.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read(path: Path) -> Registration:
    """Parse and check a registration file; RegistrationError naming the field."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise RegistrationError(f"{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise RegistrationError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RegistrationError(f"{path}: not a nabd registration file (format {FORMAT!r} expected)")
    for k, t in (("device_id", str), ("key", str), ("key_version", int), ("facility", str), ("region", str),
                 ("broker_passwd", str)):
        if not isinstance(data.get(k), t) or isinstance(data.get(k), bool):
            raise RegistrationError(f"{path}: field {k!r} missing or not a {t.__name__}")
    try:
        key = bytes.fromhex(data["key"])
    except ValueError:
        raise RegistrationError(f"{path}: key is not hexadecimal") from None
    if len(key) != 32:
        raise RegistrationError(f"{path}: key must be 32 bytes (64 hex digits)")
    if data["key_version"] < 1:
        raise RegistrationError(f"{path}: key_version must be >= 1")
    line = data["broker_passwd"]
    if not line.startswith(data["device_id"] + ":$7$") or "\n" in line:
        raise RegistrationError(f"{path}: broker_passwd must be the device's mosquitto_passwd line ($7$ hash)")
    try:
        admin.validate_device_id(data["device_id"])
        admin.validate_region(data["region"])
    except admin.AdminError as e:
        raise RegistrationError(f"{path}: {e}") from None
    return Registration(data["device_id"], key, data["key_version"], data["facility"], data["region"], line,
                        str(data.get("fw", "")), str(data.get("created_at", "")), str(data.get("created_by", "")))


def current_version(db, device_id: str) -> tuple[str | None, int]:
    """(status or None when unknown, highest key version)."""
    with db.connect() as conn:
        row = conn.execute(db.sql("SELECT status FROM devices WHERE id = ?"), (device_id,)).fetchone()
        kv = conn.execute(db.sql("SELECT MAX(key_version) FROM device_keys WHERE device_id = ?"),
                          (device_id,)).fetchone()[0]
    return (row[0] if row else None), int(kv or 0)


def apply(db, kek: bytes, reg: Registration, grace_hours: float, actor: str) -> dict:
    """Register or rotate; returns {"action": "added"|"rotated", "key_version": N}."""
    status, kv = current_version(db, reg.device_id)
    try:
        if status is None:
            admin.add_device(db, kek, reg.device_id, reg.key, reg.facility, reg.region, reg.key_version, actor)
            return {"action": "added", "key_version": reg.key_version}
        if status != "active":
            raise RegistrationError(f"device {reg.device_id} is {status} at this gateway: it cannot be registered "
                                    "again under this id")
        if reg.key_version != kv + 1:
            raise RegistrationError(f"device {reg.device_id} has key version {kv} at this gateway; this file "
                                    f"carries version {reg.key_version} (expected {kv + 1}): provision the device "
                                    "again to make a current file")
        new = admin.rotate_key(db, kek, reg.device_id, reg.key, grace_hours, actor)
        return {"action": "rotated", "key_version": new}
    except admin.AdminError as e:
        raise RegistrationError(str(e)) from None


def apply_all(db, kek: bytes, regs: list[Registration], grace_hours: float, actor: str) -> dict:
    """Many registrations (a fleet, a batch of provisioned devices): devices already active with
    the file's key version are kept; devices the gateway does not know are added in ONE
    transaction on one connection (one by one, ``apply`` costs a connection and a commit each:
    ~80 ms a device on PostgreSQL here); the rest go through ``apply`` (rotation, or its error).
    Returns {"registered": N, "already_registered": N}. A refused device raises
    ``RegistrationError`` naming it, and then no new device is added: known devices (rotations,
    refusals) are handled first, the new ones all or none."""
    known: dict[str, tuple[str, int]] = {}
    with db.connect() as conn:
        for dev, status, kv in conn.execute(
                "SELECT d.id, d.status, (SELECT MAX(k.key_version) FROM device_keys k WHERE k.device_id = d.id) "
                "FROM devices d").fetchall():
            known[dev] = (status, int(kv or 0))
    new = [r for r in regs if r.device_id not in known]
    kept = sum(1 for r in regs if known.get(r.device_id) == ("active", r.key_version))
    rest = [r for r in regs if r.device_id in known and known[r.device_id] != ("active", r.key_version)]
    for r in rest:
        apply(db, kek, r, grace_hours, actor)
    try:
        with db.connect() as conn:
            db.begin(conn)
            for r in new:
                admin.insert_device(db, conn, kek, r.device_id, r.key, r.facility, r.region, r.key_version, actor)
    except admin.AdminError as e:
        raise RegistrationError(str(e)) from None
    return {"registered": len(new) + len(rest), "already_registered": kept}


def set_broker_password(passwd_file: Path, line: str) -> None:
    """Put ``line`` (``user:hash``) in Mosquitto's password file, replacing that user's line;
    atomically, keeping the file's mode and owner. The broker reads it at its next SIGHUP."""
    set_broker_passwords(passwd_file, [line])


def set_broker_passwords(passwd_file: Path, new_lines: list[str]) -> None:
    """``set_broker_password`` for many users in one atomic rewrite (bulk registration)."""
    passwd_file = Path(passwd_file)
    users = {x.split(":", 1)[0] for x in new_lines}
    try:
        old = passwd_file.read_text().splitlines()
        st = passwd_file.stat()
    except FileNotFoundError:
        old, st = [], None
    lines = [x for x in old if x.split(":", 1)[0] not in users] + list(new_lines)
    tmp = passwd_file.with_name(passwd_file.name + ".nabd-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, st.st_mode & 0o777 if st else 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if st is not None:
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except PermissionError:
            pass
    os.replace(tmp, passwd_file)
