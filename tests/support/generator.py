"""A reading generator that follows docs/protocol.md, for tests and benchmarks.

- ``reading(dev, seq, ...)`` builds a valid payload; ``sign_reading(key, kid, payload)`` signs it
  (HS256 with CPython's ``hmac``) into the exact bytes a device publishes.
- ``SimDevice`` keeps an outbox of signed, unacknowledged readings (like the firmware): a reading
  leaves it only when a signed ``ack`` from the gateway names its ``seq``; ``resend()`` publishes
  whatever is still there.
- ``Fleet`` runs several SimDevices over MQTT 3.1.1, one client each (username = device id and a
  per-device password when the broker requires them, anonymous otherwise), subscribed to their
  own ``ack`` topic; ``run_until_acked`` resends until every reading is acknowledged.
"""
from __future__ import annotations

import os
import threading
import time

import paho.mqtt.client as mqtt

from gateway import jws

CODES = {"temp": ("Cel", 36.9), "spo2": ("%", 97), "hr": ("/min", 72), "pi": ("%", 2.4)}


def new_key() -> bytes:
    return os.urandom(32)


def reading(dev: str, seq: int, *, ts: int | None = None, ts_ok: bool = True, patient: str | None = None,
            codes: tuple[str, ...] = ("temp", "spo2", "hr", "pi"), values: dict | None = None,
            flags: list[str] | None = None, fw: str = "0.1.0") -> dict:
    """A valid reading payload (values overridable per code)."""
    values = values or {}
    obs = [{"code": c, "value": values.get(c, CODES[c][1]), "unit": CODES[c][0], "q": 0.9} for c in codes]
    p = {"v": 1, "dev": dev, "seq": seq, "ts": int(time.time()) if ts is None else ts, "ts_ok": ts_ok,
         "up": 100 + seq, "fw": fw, "cal": {"id": "cal-2026-01-02", "date": "2026-01-02"},
         "site": "forehead+finger", "obs": obs, "flags": flags or []}
    if patient:
        p["patient"] = patient
    return p


def sign_reading(key: bytes, kid: str, payload: dict) -> bytes:
    return jws.sign(key, jws.TYP_READING, kid, payload)


def topic(dev: str, kind: str = "reading") -> str:
    return f"nabd/v1/dev/{dev}/{kind}"


class SimDevice:
    def __init__(self, dev: str, key: bytes | None = None, key_version: int = 1, password: str | None = None):
        self.id = dev
        self.key = key or new_key()
        self.key_version = key_version
        self.password = password
        self.seq = 0
        self.outbox: dict[int, bytes] = {}
        self.acked: set[int] = set()
        self.bad_acks = 0
        self.acks_received = 0
        self._lock = threading.Lock()

    @property
    def kid(self) -> str:
        return f"{self.id}/{self.key_version}"

    def next_reading(self, **kw) -> tuple[int, bytes]:
        with self._lock:
            self.seq += 1
            seq = self.seq
        raw = sign_reading(self.key, self.kid, reading(self.id, seq, **kw))
        with self._lock:
            self.outbox[seq] = raw
        return seq, raw

    def on_ack(self, raw: bytes) -> list[int]:
        """Verify a signed ack (current key or the one that signed the readings) and drop its seqs."""
        try:
            body = jws.verify(self.key, raw, jws.TYP_ACK)
        except ValueError:
            self.bad_acks += 1
            return []
        if body.get("dev") != self.id:
            self.bad_acks += 1
            return []
        seqs = [s for s in body.get("seqs", []) if isinstance(s, int)]
        with self._lock:
            self.acks_received += 1
            for s in seqs:
                self.outbox.pop(s, None)
                self.acked.add(s)
        return seqs

    def pending(self) -> dict[int, bytes]:
        with self._lock:
            return dict(self.outbox)


def _host_port(url: str) -> tuple[str, int]:
    hp = url.split("://", 1)[-1].rstrip("/")
    host, _, port = hp.rpartition(":")
    return host, int(port)


class Fleet:
    """SimDevices publishing over MQTT 3.1.1 to ``broker_url``, one connection per device."""

    def __init__(self, broker_url: str, devices: list[SimDevice]):
        self.host, self.port = _host_port(broker_url)
        self.devices = {d.id: d for d in devices}
        self.clients: dict[str, mqtt.Client] = {}
        self._connected: dict[str, threading.Event] = {}

    def start(self) -> "Fleet":
        for d in self.devices.values():
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=d.id, protocol=mqtt.MQTTv311,
                            clean_session=True)
            if d.password:
                c.username_pw_set(d.id, d.password)
            ev = threading.Event()
            self._connected[d.id] = ev

            def on_connect(client, userdata, flags, rc, props=None, d=d, ev=ev):
                if not rc.is_failure:
                    client.subscribe(topic(d.id, "ack"), qos=1)
                    ev.set()

            def on_message(client, userdata, msg, d=d):
                d.on_ack(msg.payload)

            c.on_connect = on_connect
            c.on_message = on_message
            c.reconnect_delay_set(0.05, 0.5)
            c.connect_async(self.host, self.port, keepalive=30)
            c.loop_start()
            self.clients[d.id] = c
        for dev, ev in self._connected.items():
            if not ev.wait(10):
                raise TimeoutError(f"device {dev} could not connect to the broker")
        time.sleep(0.05)  # let the ack subscriptions land
        return self

    def stop(self) -> None:
        for c in self.clients.values():
            c.disconnect()
            c.loop_stop()

    def publish(self, dev: str, raw: bytes, topic_override: str | None = None) -> None:
        self.clients[dev].publish(topic_override or topic(dev), raw, qos=1)

    def send_new(self, dev: str, n: int = 1, **kw) -> list[int]:
        seqs = []
        for _ in range(n):
            seq, raw = self.devices[dev].next_reading(**kw)
            self.publish(dev, raw)
            seqs.append(seq)
        return seqs

    def resend(self) -> int:
        n = 0
        for d in self.devices.values():
            for _seq, raw in sorted(d.pending().items()):
                self.publish(d.id, raw)
                n += 1
        return n

    def pending(self) -> int:
        return sum(len(d.outbox) for d in self.devices.values())

    def run_until_acked(self, timeout: float = 30.0, resend_every: float = 2.0) -> bool:
        """Resend unacknowledged readings every ``resend_every`` s until none is left."""
        end = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < end:
            if self.pending() == 0:
                return True
            if time.monotonic() - last >= resend_every:
                self.resend()
                last = time.monotonic()
            time.sleep(0.05)
        return self.pending() == 0
