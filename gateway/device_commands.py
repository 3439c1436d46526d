"""Signed commands to devices (docs/protocol.md "Command"). Their CLI is
``nabd-gateway devices command`` (gateway/commands/device_command.py).

``send_command(cfg, db, device_id, cmd, args, actor)``:

1. checks the command and its arguments as the firmware will (firmware/uplink.py): a patient token
   ``^[A-Za-z0-9_-]{4,64}$`` or null, ``identify`` seconds 1..300, ``settings`` keys the firmware
   knows (``SETTINGS``) with their types and ranges;
2. in ONE transaction (SQLite: ``BEGIN IMMEDIATE``, so the write lock is held from the start;
   PostgreSQL: the row lock of ``UPDATE ... RETURNING``): ``devices.cmd_n = cmd_n + 1`` for an
   active device, returning the new ``n``, so two administrators never send the same ``n``; the
   device's current key (the highest version not revoked); the ``patients`` row for an assigned
   token; the audit-log row (action ``devices.command``, detail ``n``, command, arguments, ``exp``);
   COMMIT;
3. signs ``{"v":1,"dev":ID,"n":n,"exp":now+ttl,"cmd":...,"args":{...}}`` with that key (typ
   ``nabd-cmd+jws``, kid ``ID/version``) and publishes it QoS 1 to ``nabd/v1/dev/ID/cmd`` with the
   gateway's broker credentials, MQTT 5 message expiry = ttl (the broker drops it once the device
   would refuse it anyway), and waits for the broker's PUBACK. The device's session is persistent:
   a command to a device that is offline is delivered when it reconnects, if before ``exp``.

``n`` is committed before the publish: if the publish then fails, the ``n`` is simply skipped
(the device only needs ``n`` above the last it accepted) and the failure is audited
(``devices.command-failed``) and reported (exit code 3). Publishing before committing could let
two administrators sign the same ``n``, and the device would refuse the second command.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from gateway import jws
from gateway.config import Config
from gateway.db import Database, audit, utcnow
from gateway.recordstore import parse_time
from gateway.secrets import decrypt_key

COMMANDS = ("assign_patient", "identify", "settings")
PATIENT_RE = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
DEFAULT_TTL_S = 600
MAX_TTL_S = 7 * 86400

# settings keys the firmware knows (docs/protocol.md): name -> (type, low, high) for numbers, (bool,)
SETTINGS: dict[str, tuple] = {
    "temp_site_offset_c": (float, -5.0, 5.0),   # added to the forehead temperature, degrees Celsius
    "report_pi": (bool,),                        # include the perfusion index in readings
}


class CommandRefused(ValueError):
    """The command cannot be sent (bad arguments, unknown or revoked device); message says why."""


class PublishError(RuntimeError):
    """The broker could not be reached or did not accept the command."""


def topic(device_id: str) -> str:
    return f"nabd/v1/dev/{device_id}/cmd"


# --- arguments -------------------------------------------------------------------------------------

def check_args(cmd: str, args: dict) -> dict:
    """The arguments as the firmware will check them; raises CommandRefused."""
    if cmd not in COMMANDS:
        raise CommandRefused(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
    if cmd == "assign_patient":
        if set(args) != {"patient"}:
            raise CommandRefused("assign_patient takes exactly {patient: token or null}")
        p = args["patient"]
        if p is not None and (not isinstance(p, str) or not PATIENT_RE.match(p)):
            raise CommandRefused(f"patient token {p!r} does not match ^[A-Za-z0-9_-]{{4,64}}$ "
                                 "(a pseudonymous code, never a name or national id)")
    elif cmd == "identify":
        s = args.get("seconds")
        if set(args) != {"seconds"} or isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 300:
            raise CommandRefused("identify takes seconds, an integer 1..300")
    else:
        if not args:
            raise CommandRefused("settings needs at least one KEY=VALUE")
        for k, v in args.items():
            spec = SETTINGS.get(k)
            if spec is None:
                raise CommandRefused(f"unknown setting {k!r}; the firmware knows {', '.join(sorted(SETTINGS))}")
            if spec[0] is bool:
                if not isinstance(v, bool):
                    raise CommandRefused(f"setting {k} must be true or false, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not spec[1] <= v <= spec[2]:
                raise CommandRefused(f"setting {k} must be a number in {spec[1]}..{spec[2]}, got {v!r}")
    return args


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: VALUE is JSON when it parses (true, false, 0.3, "text"), a string otherwise."""
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise CommandRefused(f"setting {text!r} is not KEY=VALUE")
    try:
        return k, json.loads(v)
    except ValueError:
        return k, v


# --- the transaction ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    device_id: str
    n: int
    exp: int
    key_version: int
    cmd: str
    args: dict
    token: bytes

    @property
    def topic(self) -> str:
        return topic(self.device_id)


def prepare(db: Database, kek: bytes, device_id: str, cmd: str, args: dict, actor: str,
            ttl_s: int = DEFAULT_TTL_S, now: float | None = None) -> Prepared:
    """Steps 1 and 2 of the module docstring: the committed ``n`` and the signed command."""
    check_args(cmd, args)
    if not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
        raise CommandRefused(f"ttl must be 1..{MAX_TTL_S} seconds")
    now = time.time() if now is None else now
    exp = int(now) + ttl_s
    at = utcnow()
    with db.connect() as conn:
        db.begin(conn)
        row = conn.execute(db.sql("SELECT status FROM devices WHERE id = ?"), (device_id,)).fetchone()
        if row is None:
            raise CommandRefused(f"no device {device_id}")
        if row[0] != "active":
            raise CommandRefused(f"device {device_id} is {row[0]}: it accepts no commands")
        keys = conn.execute(db.sql("SELECT key_version, key_enc, revoked_at FROM device_keys WHERE device_id = ? "
                                   "ORDER BY key_version DESC"), (device_id,)).fetchall()
        current = next(((int(v), bytes(e)) for v, e, r in keys if r is None or parse_time(r) > at), None)
        if current is None:
            raise CommandRefused(f"device {device_id} has no key version in force")
        n = conn.execute(db.sql("UPDATE devices SET cmd_n = cmd_n + 1 WHERE id = ? AND status = 'active' "
                                "RETURNING cmd_n"), (device_id,)).fetchone()[0]
        if cmd == "assign_patient" and args["patient"] is not None:
            conn.execute(db.sql("INSERT INTO patients (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"),
                         (args["patient"], at))
        audit(db, conn, actor, "devices.command", device_id,
              f"n={n} cmd={cmd} args={json.dumps(args, separators=(',', ':'), sort_keys=True)} exp={exp} "
              f"key_version={current[0]}")
    key = decrypt_key(kek, device_id, current[0], current[1])
    body = {"v": 1, "dev": device_id, "n": int(n), "exp": exp, "cmd": cmd, "args": args}
    token = jws.sign(key.secret, jws.TYP_CMD, f"{device_id}/{current[0]}", body)
    if len(token) > 2048:
        raise CommandRefused(f"the signed command is {len(token)} bytes, the protocol's limit is 2048")
    return Prepared(device_id, int(n), exp, current[0], cmd, args, token)


# --- MQTT ---------------------------------------------------------------------------------------

def publish(cfg: Config, topic_name: str, token: bytes, ttl_s: int, timeout: float = 10.0) -> None:
    """Publish ``token`` QoS 1 with the gateway's broker credentials; returns once PUBACKed."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    bc = cfg.broker
    base = (bc.client_id or "nabd-gateway")[:40]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{base}-cmd-{os.urandom(4).hex()}",
                    protocol=mqtt.MQTTv5)
    try:
        username, password = bc.command_credentials()
    except OSError as e:
        raise PublishError(f"broker password file: {e.strerror}") from None
    if username:  # its own user where the broker binds client ids to usernames ([broker] command_username)
        c.username_pw_set(username, password)
    if bc.tls:
        c.tls_set(ca_certs=bc.ca_file or None)
    connected, acked = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(client, userdata, flags, rc, props=None):
        outcome["connect"] = rc
        connected.set()

    def on_publish(client, userdata, mid, rc, props=None):
        outcome["puback"] = rc
        acked.set()

    c.on_connect, c.on_publish = on_connect, on_publish
    try:
        c.connect(bc.host, bc.port, keepalive=30, clean_start=True)
    except (OSError, ValueError) as e:
        raise PublishError(f"cannot reach the broker at {bc.host}:{bc.port}: {e}") from None
    c.loop_start()
    try:
        if not connected.wait(timeout):
            raise PublishError(f"no answer from the broker at {bc.host}:{bc.port} within {timeout:g} s")
        if outcome["connect"].is_failure:
            raise PublishError(f"the broker refused the gateway's connection: {outcome['connect']}")
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = ttl_s
        info = c.publish(topic_name, token, qos=1, retain=False, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"publish failed: {mqtt.error_string(info.rc)}")
        if not acked.wait(timeout):
            raise PublishError(f"the broker did not acknowledge the command within {timeout:g} s")
        rc = outcome["puback"]
        if getattr(rc, "is_failure", False):
            raise PublishError(f"the broker refused the command: {rc} (ACL: the gateway user must be "
                               "allowed to write nabd/v1/dev/+/cmd)")
    finally:
        c.disconnect()
        c.loop_stop()


def send_command(cfg: Config, db: Database, kek: bytes, device_id: str, cmd: str, args: dict, actor: str,
                 ttl_s: int = DEFAULT_TTL_S, timeout: float = 10.0) -> Prepared:
    """Allocate ``n``, sign, publish; audit a failed publish. Raises CommandRefused / PublishError."""
    p = prepare(db, kek, device_id, cmd, args, actor, ttl_s)
    try:
        publish(cfg, p.topic, p.token, ttl_s, timeout)
    except PublishError as e:
        with db.connect() as conn:
            audit(db, conn, actor, "devices.command-failed", device_id, f"n={p.n} cmd={cmd}: {e}")
        raise PublishError(f"{cmd} n={p.n} to {device_id} not delivered: {e}") from None
    return p
