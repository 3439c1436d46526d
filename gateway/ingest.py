"""Ingest: MQTT 5 shared subscription -> bounded queue -> batch writer -> commit -> acks.

Threads and their only jobs:

- paho's network thread (``loop_start``): ``on_message`` wraps the message (topic, bytes, mid,
  receipt time, connection epoch) and puts it in a bounded ``queue.Queue``. It never touches the
  database. When the queue is full ``put`` blocks, paho stops reading the socket and TCP pushes
  back on the broker, which keeps the messages (nothing is dropped here). Before that, MQTT 5's
  Receive Maximum (``[ingest] receive_maximum``) already caps the unacknowledged messages the
  broker sends us.
- the batcher thread: takes up to ``batch_max`` messages (waiting at most ``batch_ms`` after the
  first) and hands the batch to the store process (gateway/writer.py), which runs
  ``Store.process`` (verify + store in ONE transaction, see gateway/store.py) on its own core;
- the results thread: only after the commit acknowledges each message to the broker
  (``client.ack(mid, qos)``, paho ``manual_ack``) and publishes the signed ``ack`` to each device.
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
import queue
import socket
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway import metrics
from gateway.config import Config
from gateway.db import Database
from gateway.status import STATUS_SUBSCRIPTION, StatusWorker, is_status_topic
from gateway.store import BatchResult, Message, Store
from gateway.worker import take_batch, wait_drained
from gateway.writer import ProcessWriter

log = logging.getLogger("nabd.gateway.ingest")

SHARE_GROUP = "nabd-gateway"
READING_FILTER = "nabd/v1/dev/+/reading"
SUBSCRIPTION = f"$share/{SHARE_GROUP}/{READING_FILTER}"
UTC = dt.timezone.utc


def default_client_id() -> str:
    return f"nabd-gateway-{socket.gethostname()}"[:64]


class Ingest:
    def __init__(self, config: Config, db: Database | None = None, *, client_id: str | None = None,
                 on_batch: Callable[[list[Message], BatchResult], None] | None = None):
        self.config = config
        self.db = db or Database(config.database.url)
        ic = config.ingest
        self.batch_max, self.batch_ms = ic.batch_max, ic.batch_ms
        self.queue: queue.Queue[Message] = queue.Queue(maxsize=ic.queue_max)
        self.writer = ProcessWriter(self.db.url, config.security.kek(), forward=config.fhir_forward.enabled,
                                    skew=ic.future_skew_s, on_result=self._on_committed,
                                    quarantine=config.quarantine)
        self.status = StatusWorker(self.db, config.security.kek(), self._ack_status, skew=ic.future_skew_s,
                                   quarantine=config.quarantine)
        # on the site broker the client id is the broker username (use_username_as_clientid):
        # each process has its own user, and the id we send must match what the broker uses
        self.client_id = client_id or config.broker.client_id or config.broker.username or default_client_id()
        self.on_batch = on_batch
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
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        if bc.username:
            c.username_pw_set(bc.username, bc.password())
        if bc.tls:
            c.tls_set(ca_certs=bc.ca_file or None)
        c.max_inflight_messages_set(1000)
        c.reconnect_delay_set(0.1, 5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.enable_logger(logging.getLogger("nabd.gateway.mqtt"))
        return c

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            log.error("broker refused the connection: %s", reason_code)
            return
        self.epoch += 1
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
        if self._closing.is_set():
            return  # not acknowledged: the broker redelivers it to this session or another gateway
        m = Message(msg.topic, bytes(msg.payload), dt.datetime.now(UTC), msg.mid, msg.qos, self.epoch,
                    time.monotonic(), bool(msg.retain))
        if is_status_topic(m.topic):
            self.status.submit(m)  # device status: gateway/status.py (own queue, transaction, ack)
            return
        self.queue.put(m)  # blocks when full: backpressure, never a drop

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
            batch = take_batch(self.queue, self.batch_max, self.batch_ms / 1000.0)
            metrics.QUEUE_DEPTH.set(self.queue.qsize())
            if batch:
                self.writer.submit(batch)  # blocks while the store process has enough in hand

    def _on_committed(self, batch: list[Message], result: BatchResult) -> None:
        """After the commit (results thread): count, acknowledge to the broker, ack the devices."""
        Store.count(result.verdicts)
        Store.count_suppressed(result.suppressed)
        self.committed += sum(1 for v in result.verdicts if v.kind == "accept")
        metrics.BATCHES.inc()
        epoch = self.epoch
        for m in batch:
            if m.qos > 0 and m.epoch == epoch:
                self.client.ack(m.mid, m.qos)
        for t, body in result.acks:
            self.client.publish(t, body, qos=1)
            metrics.ACKS_SENT.inc()
        if self.on_batch:
            self.on_batch(batch, result)
