"""Ingest: MQTT 5 shared subscription -> bounded queue -> batch writer -> commit -> acks.

Threads and their only jobs:

- paho's network thread (``loop_start``; a reading's PUBLISH through ``_Client``'s fast path):
  parses the JWS (``verify.parse``: no key, no database) and puts the message as one tuple
  (``Pending``: topic, bytes, receipt time, retain flag, mid, qos, connection epoch, SHA-256 hex,
  the parse) in a bounded hand-off (``worker.Handoff``). It never touches the database, and
  verifies nothing: the store process does. When the hand-off is full ``put``
  blocks, paho stops reading the socket and TCP pushes back on the broker, which keeps the
  messages (nothing is dropped here). Before that, MQTT 5's Receive Maximum (``[ingest]
  receive_maximum``) already caps the unacknowledged messages the broker sends us.
- the batcher thread: once the store process can take a batch, takes up to ``batch_max``
  messages (waiting at most ``batch_ms`` after the first) and hands the batch to the store
  process (gateway/writer.py), which runs ``Store.process`` (verify + store in ONE transaction,
  see gateway/store.py) on its own core;
- the results thread: only after the commit acknowledges the batch's messages to the broker (their
  PUBACKs in one write, ``ack_many``; paho ``manual_ack``) and publishes the signed ``ack`` to each
  device (QoS 1, at most the broker's Receive Maximum unacknowledged: ``_on_connect``).
  Rejected messages are committed to quarantine first and then acknowledged, so the broker does
  not redeliver them forever.

A message is acknowledged only on the connection it came from (a ``mid`` is meaningless on the
next one): after a reconnect, the broker redelivers what we had not acknowledged, the store sees
the same bytes and answers "duplicate", and the ack goes out again. A SIGKILL therefore loses
nothing: every message not yet committed was not acknowledged either.

A database error (locked, connection lost) leaves the batch unacknowledged and is retried with
backoff on a fresh connection; a message that makes the store raise anything else is isolated
and quarantined (``malformed``, "gateway error") rather than blocking the queue; a store process
that dies is restarted and given the unacknowledged batches again (gateway/writer.py).
"""
from __future__ import annotations

import datetime as dt
import logging
import socket
import struct
import threading
import time
from hashlib import sha256
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway import metrics
from gateway.config import Config
from gateway.db import Database
from gateway.status import STATUS_SUBSCRIPTION, StatusWorker, is_status_topic
from gateway.store import BatchResult, Message, Store
from gateway.verify import parse
from gateway.worker import Handoff, wait_drained
from gateway.writer import Pending, ProcessWriter, wire_parsed

log = logging.getLogger("nabd.gateway.ingest")

SHARE_GROUP = "nabd-gateway"
READING_FILTER = "nabd/v1/dev/+/reading"
SUBSCRIPTION = f"$share/{SHARE_GROUP}/{READING_FILTER}"
UTC = dt.timezone.utc


_PUBACK = struct.Struct("!BBH")  # MQTT PUBACK: type 0x40, remaining length 2, packet id (MQTT 5: reason 0 implied)


def ack_many(client: mqtt.Client, mids: list[int]) -> None:
    """PUBACK every packet id in ``mids`` (QoS 1 messages received on the current connection).

    paho's ``ack`` queues one packet per message, wakes its loop through a socket pair and sends
    each with its own ``send()``: the network process's biggest per-message cost after reading.
    Here a batch's PUBACKs are one buffer, queued once and written in one ``send()``; the bytes on
    the wire are the same. It uses paho's internal ``_packet_queue`` (paho-mqtt is pinned in
    pyproject.toml); without it, one ``ack`` per message."""
    queue_packet = getattr(client, "_packet_queue", None)
    if queue_packet is None or not getattr(client, "_manual_ack", False):
        for mid in mids:
            client.ack(mid, 1)
        return
    if mids:
        pack = _PUBACK.pack
        queue_packet(0x40, b"".join([pack(0x40, 2, mid) for mid in mids]), 0, 0)


_READ_SIZE = 65536


class ReadBuffer:
    """The broker connection's socket as paho sees it, read through one buffer.

    paho reads each packet with three or more ``recv`` calls (the command byte, each byte of the
    remaining length, the rest), each a system call that gives up the GIL and waits to take it back
    from the batcher and pipe threads: in a backlog, 18 % of paho's thread's samples (py-spy,
    2026-11-30). Here one ``recv`` of up to 64 KB serves the calls that follow until it is used
    up (the network process's CPU per reading 21.5 -> 19.8 us side by side). ``pending()`` is
    what paho already asks an SSL socket (bytes it holds that select() cannot see): paho's loop
    then reads again without waiting in select(), so no buffered packet waits for the next one to
    arrive. Everything else (send, fileno, setblocking, close) is the socket's own."""

    __slots__ = ("_sock", "_buf", "_pos", "_inner_pending")

    def __init__(self, sock):
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._inner_pending = getattr(sock, "pending", None)   # an SSL socket's; looked up once

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = self._sock.recv(_READ_SIZE)   # BlockingIOError, SSL's want-read, EOF (b""): paho's
            if not buf:
                return buf
            self._buf, pos = buf, 0
        end = pos + n
        self._pos = end
        return buf[pos:end]

    def pending(self) -> int:
        inner = self._inner_pending
        return max(0, len(self._buf) - self._pos) + (inner() if inner is not None else 0)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _Client(mqtt.Client):
    """paho's client with two changes on the ingest's hot path, both measured (docs/architecture.md):
    its socket is read through ``ReadBuffer``, and a PUBLISH of the kind every reading and status
    is (QoS 1, MQTT 5, no properties) is decoded here and handed to ``on_publish_fast(topic,
    payload, mid, retain)`` without paho's message and properties objects. Anything else (another
    QoS, properties, a topic that is not UTF-8, a filtered callback) goes through paho unchanged.
    paho-mqtt is pinned (pyproject.toml): ``_create_socket``, ``_handle_publish`` and
    ``_in_packet`` are its internals."""

    on_publish_fast: Any = None

    def _create_socket(self):
        return ReadBuffer(super()._create_socket())

    def _handle_publish(self):
        fast = self.on_publish_fast
        pkt = self._in_packet
        cmd, data = pkt["command"], pkt["packet"]
        # QoS 1 (bits 1-2 = 01); MQTT 5 puts a property length after the packet id: 0, one byte
        if fast is None or (cmd & 0x06) != 0x02 or self._protocol != mqtt.MQTTv5 or not self._manual_ack \
                or len(data) < 5 or self._on_message_filtered._root._children:
            return super()._handle_publish()
        end = 2 + ((data[0] << 8) | data[1])
        if len(data) < end + 3 or data[end + 2] != 0:
            return super()._handle_publish()
        try:
            topic = data[2:end].decode("utf-8")
        except UnicodeDecodeError:
            return super()._handle_publish()
        fast(topic, bytes(data[end + 3:]), (data[end] << 8) | data[end + 1], bool(cmd & 0x01))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


def default_client_id() -> str:
    return f"nabd-gateway-{socket.gethostname()}"[:64]


class Ingest:
    def __init__(self, config: Config, db: Database | None = None, *, client_id: str | None = None):
        self.config = config
        self.db = db or Database(config.database.url)
        ic = config.ingest
        self.batch_max, self.batch_ms = ic.batch_max, ic.batch_ms
        self.queue: Handoff = Handoff(ic.queue_max)
        self.writer = ProcessWriter(self.db.url, config.security.kek(), forward=config.fhir_forward.enabled,
                                    skew=ic.future_skew_s, on_result=self._on_committed,
                                    quarantine=config.quarantine)
        self.status = StatusWorker(self.db, config.security.kek(), self._ack_status, skew=ic.future_skew_s,
                                   quarantine=config.quarantine)
        # on the site broker the client id is the broker username (use_username_as_clientid):
        # each process has its own user, and the id we send must match what the broker uses
        self.client_id = client_id or config.broker.client_id or config.broker.username or default_client_id()
        self.epoch = 0
        self.connected = threading.Event()
        self.refused: str | None = None  # the broker's reason when it refused our CONNECT (bad login)
        self._closing = threading.Event()
        self._stopped = threading.Event()
        self._writer: threading.Thread | None = None
        self.client = self._make_client()
        self.committed = 0

    # -- MQTT ------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        bc = self.config.broker
        c = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        if bc.username:
            c.username_pw_set(bc.username, bc.password())
        if bc.tls:
            c.tls_set(ca_certs=bc.ca_file or None)
        # QoS 1 acks to devices not yet PUBACKed by the broker: the MQTT 5 default Receive Maximum
        # of Mosquitto's CONNACK, updated from the CONNACK (_on_connect). paho scans its in-flight
        # messages on every PUBACK, so a larger window than the broker's costs CPU and gains nothing
        c.max_inflight_messages_set(20)
        c.reconnect_delay_set(0.1, 5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish_fast = self._on_publish_fast
        c.enable_logger(logging.getLogger("nabd.gateway.mqtt"))
        return c

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            log.error("broker refused the connection: %s", reason_code)
            return
        self.epoch += 1
        rm = getattr(properties, "ReceiveMaximum", None)
        if isinstance(rm, int) and rm > 0:  # the public setter refuses while connected; paho sends nothing before this
            client._max_inflight_messages = rm
        # readings are never retained (docs/protocol.md): retain handling 2 keeps the broker from
        # sending retained junk at every (re)subscription, retain-as-published shows a retained
        # one published live, which the store refuses (gateway/store.py)
        client.subscribe(SUBSCRIPTION, options=SubscribeOptions(qos=1, retainHandling=2, retainAsPublished=True))
        client.subscribe(STATUS_SUBSCRIPTION, options=SubscribeOptions(qos=1))  # gateway/status.py
        log.info("connected to %s:%s as %s (session present: %s)", self.config.broker.host,
                 self.config.broker.port, self.client_id, flags.session_present)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if getattr(reason_code, "value", None) == 0x8E:  # MQTT 5 "Session taken over"
            log.error("another client connected with our client id %r and took over the session: give "
                      "every gateway process its own broker user (docs/operations.md, Broker users)",
                      self.client_id)
        elif not self._closing.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        self._received(msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.retain))

    def _on_publish_fast(self, topic: str, raw: bytes, mid: int, retain: bool) -> None:
        self._received(topic, raw, mid, 1, retain)

    def _received(self, topic: str, raw: bytes, mid: int, qos: int, retain: bool) -> None:
        if self._closing.is_set():
            return  # not acknowledged: the broker redelivers it to this session or another gateway
        if is_status_topic(topic):  # device status: gateway/status.py (own queue, transaction, ack)
            self.status.submit(Message(topic, raw, dt.datetime.now(UTC), mid, qos, self.epoch, time.monotonic(),
                                       retain))
            return
        # one tuple, receipt time as a Unix time (s). The SHA-256 of the bytes and the JWS parse
        # (no key, no database: gateway/writer.py wire_parsed) are taken here: this process has
        # CPU to spare, the store process (the bottleneck) none. A retained reading is refused
        # by the store without a parse.
        parsed = None if retain else wire_parsed(parse(raw, topic))
        self.queue.put((topic, raw, time.time(), retain, mid, qos, self.epoch, sha256(raw).hexdigest(), parsed))

    def start(self) -> "Ingest":
        self.db.migrate()
        self.writer.start()
        self._writer = threading.Thread(target=self._write_loop, name="nabd-writer", daemon=True)
        self._writer.start()
        self.status.start()
        bc = self.config.broker
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = bc.session_expiry_s
        props.ReceiveMaximum = self.config.ingest.receive_maximum
        self.client.connect_async(bc.host, bc.port, keepalive=bc.keepalive, clean_start=False, properties=props)
        self.client.loop_start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: stop taking messages, drain the queue (commit + ack), disconnect."""
        self._closing.set()
        end = time.monotonic() + timeout
        wait_drained(self.queue, self._writer, end)
        self._stopped.set()
        if self._writer:
            self._writer.join(timeout=max(1.0, end - time.monotonic()))
        self.writer.drain(timeout=max(1.0, end - time.monotonic()))
        self.writer.stop()
        self.status.stop(timeout=max(1.0, end - time.monotonic()))
        time.sleep(0.05)  # let paho flush the last PUBACKs and acks
        self.client.disconnect()
        self.client.loop_stop()

    def _ack_status(self, m: Message) -> None:
        if m.qos > 0 and m.epoch == self.epoch:
            self.client.ack(m.mid, m.qos)

    # -- writer ----------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while not (self._stopped.is_set() and self.queue.empty()):
            # a slot in the store process first, then the batch: while one batch is being stored
            # and the next waits, what arrives joins the one after (up to batch_max) instead of
            # leaving as small batches, each paying per device for its key, row update and ack
            if not self.writer.reserve(0.1):
                continue
            batch = self.queue.take(self.batch_max, self.batch_ms / 1000.0)
            metrics.QUEUE_DEPTH.set(self.queue.qsize())
            if batch:
                self.writer.submit(batch, reserved=True)
            else:
                self.writer.release()

    def _on_committed(self, batch: list[Pending], result: BatchResult) -> None:
        """After the commit (results thread): count, acknowledge to the broker, ack the devices."""
        Store.count(result.verdicts)
        Store.count_suppressed(result.suppressed)
        self.committed += sum(1 for v in result.verdicts if v.kind == "accept")
        metrics.BATCHES.inc()
        epoch = self.epoch
        # a mid is only valid on the connection it came from (epoch); QoS 0 needs no PUBACK
        ack_many(self.client, [m[4] for m in batch if m[5] > 0 and m[6] == epoch])
        publish = self.client.publish
        for t, body in result.acks:
            publish(t, body, qos=1)
        metrics.ACKS_SENT.inc(len(result.acks))
