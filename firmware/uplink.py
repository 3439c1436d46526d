"""The connection manager: signed readings out of the outbox to the broker, acks and commands in.

    box = Outbox(board)
    up = Uplink(board, cfg, box, SeqCounter(board, floor=box.max_seq), Log(board),
                on_command=app.command)          # on_command(cmd, args): raise ValueError to refuse
    seq = up.submit(reading.build_reading(...))  # seq assigned, signed, on flash before any send
    while True:
        up.step()                                # call from the main loop; bounded time
        ...
    up.state            # "offline" | "connecting" | "online"
    up.conn             # the number of the current (or last) connection, in its statuses
    up.queued           # readings waiting for the gateway's ack (outbox depth)
    up.sent, up.acked   # readings PUBACKed by the broker / acknowledged by the gateway (this boot)
    up.reading_state(seq)  # "queued" | "sent" | "stored"
    up.sensors = {"mlx90614": "ok", "max30102": "ok"}   # the app keeps these current for status
    up.note_error("app", "MLX90614 timeout")            # logged and counted in status.errors
    up.timestamp()      # (ts, ts_ok): Unix seconds, or uptime seconds with ts_ok False
    up.close()          # retained offline status, DISCONNECT

``step()``: brings Wi-Fi up, connects (exponential backoff from 1 s to 60 s with up to 50 %
random jitter from ``board.urandom``), then on every connect publishes the signed retained
``status`` (the Last Will is a signed ``offline`` status made at connect time). Each connection
attempt takes a new number ``up.conn`` from a counter on flash (``conn.a``/``conn.b``, the
block-reserving ``SeqCounter`` of firmware/seq.py: never reused across reboots and power cuts,
one flash write per 64 connects) before the will is signed; the will and every status of that
connection carry it as ``conn``, so the gateway can tell a replayed old status from a new one
(docs/protocol.md "Status"); a counter that cannot be persisted fails the attempt. Then it
subscribes to its own ``ack`` and ``cmd`` and resends every outbox record in seq order, at most
``window`` awaiting the broker's PUBACK at a time. Readings still unacknowledged ``resend_ms``
after the last progress are sent again (the gateway deduplicates on (device, seq)).

Incoming ``ack`` (typ ``nabd-ack+jws``) and ``cmd`` (typ ``nabd-cmd+jws``) are verified with the
device's key and ``kid``; ``dev`` must be this device. Acks remove exactly the named seqs from the
outbox. A command's ``n`` must exceed the last accepted ``n`` (persisted before the command runs,
so a replay is refused even after a crash), its ``exp`` must not have passed when the clock is
synced, and ``cmd``/``args`` must pass ``firmware.commands.check`` (the one place commands are
checked, before ``n`` is used up; ``on_command`` gets the checked arguments and only applies
them). Anything else is ignored, logged in ``log.txt`` and counted in ``errors`` (reported as
``status.errors``).
"""
import json

from micropython import const

from firmware import commands, jws, reading
from firmware.mqtt import MQTTClient, MQTTError
from firmware.seq import PersistedInt, SeqCounter, SeqError
from firmware.version import VERSION

OFFLINE = "offline"
CONNECTING = "connecting"
ONLINE = "online"

TYP_READING = "nabd-reading+jws"
TYP_STATUS = "nabd-status+jws"
TYP_ACK = "nabd-ack+jws"
TYP_CMD = "nabd-cmd+jws"

_BACKOFF_MIN = const(1000)
_BACKOFF_MAX = const(60000)


class Uplink:
    def __init__(self, board, config, outbox, seq, log, on_command=None, fw=VERSION, window=8,
                 keepalive=60, resend_ms=120000, backoff_min_ms=_BACKOFF_MIN,
                 backoff_max_ms=_BACKOFF_MAX, connect_timeout_ms=5000):
        self.board = board
        self.clock = board.clock
        self.cfg = config
        self.outbox = outbox
        self.seq = seq
        self.log = log
        self.on_command = on_command
        self.fw = fw
        self.window = window
        self.keepalive = keepalive
        self.resend_ms = resend_ms
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.connect_timeout_ms = connect_timeout_ms
        log.redact(config.data["key"], config.mqtt_password, (config.data.get("wifi") or {}).get("psk"))
        self.state = OFFLINE
        self.sensors = {"mlx90614": "ok", "max30102": "ok"}
        self.errors = 0
        self.sent = 0
        self.acked = 0
        self.published = 0
        self.connects = 0
        self.failures = 0
        self.commands = 0
        self.last_error = None
        self._cmdn = PersistedInt(board, "cmdn")
        self._conns = SeqCounter(board, name="conn")  # never reused, like seq (firmware/seq.py)
        self.conn = 0           # this connection's number, in every status of it (0: none yet)
        self._client = None
        now = self.clock.ticks_ms()
        self._next_try = now
        self._attempt = 0
        self._cursor = 0
        self._pid_seq = {}
        self._sent_max = 0
        self._progress = now
        self._t_last = now
        self._up_s = 0
        self._up_ms = 0
        self._t_ack = config.topic("ack")
        self._t_cmd = config.topic("cmd")
        self._t_reading = config.topic("reading")
        self._t_status = config.topic("status")

    # --- time ---
    def uptime_s(self):
        """Seconds since this Uplink was made (wrap-safe while called at least every few days)."""
        now = self.clock.ticks_ms()
        self._up_ms += self.clock.ticks_diff(now, self._t_last)
        self._t_last = now
        if self._up_ms >= 1000:
            self._up_s += self._up_ms // 1000
            self._up_ms %= 1000
        return self._up_s

    def timestamp(self):
        """(ts, ts_ok): Unix seconds when the clock is synced, else uptime seconds and False."""
        t = self.clock.unix_time()
        if t is None:
            return self.uptime_s(), False
        return t, True

    # --- outgoing ---
    @property
    def queued(self):
        return self.outbox.depth

    def submit(self, payload):
        """Assign the next seq to ``payload`` (dict, see firmware.reading.build_reading), add
        ``v`` and ``dev``, sign it and keep it in the outbox. Returns the seq. It is sent by
        ``step()`` when online. Raises SeqError/OutboxError when flash fails."""
        p = dict(payload)
        p["v"] = 1
        p["dev"] = self.cfg.device_id
        p["seq"] = self.seq.next()
        msg = jws.sign(self.cfg.key, self.cfg.kid, TYP_READING, reading.dumps(p))
        self.outbox.append(p["seq"], msg)
        return p["seq"]

    def reading_state(self, seq):
        """"stored" once the gateway acknowledged it (or it is no longer held), "sent" once the
        broker has it, "queued" before."""
        if not self.outbox.contains(seq):
            return "stored"
        return "sent" if seq <= self._sent_max else "queued"

    def status_payload(self, state):
        ts, ok = self.timestamp()
        cal = self.cfg.calibration
        return {"v": 1, "dev": self.cfg.device_id, "state": state, "conn": self.conn, "ts": ts, "ts_ok": ok,
                "up": self.uptime_s(), "fw": self.fw, "rssi": self.board.network.rssi(),
                "heap": self.board.free_heap(), "outbox": self.outbox.depth, "drops": self.outbox.drops,
                "seq": self.seq.last, "sensors": self.sensors,
                "cal_due": cal.get("due") if cal else None, "errors": self.errors}

    def _status_token(self, state):
        return jws.sign(self.cfg.key, self.cfg.kid, TYP_STATUS, reading.dumps(self.status_payload(state)))

    def publish_status(self):
        """Publish the signed retained ``online`` status now (when online)."""
        if self._client is not None and self.state == ONLINE:
            try:
                self._client.publish(self._t_status, self._status_token(ONLINE), 1, True)
            except MQTTError as e:
                self._drop(e)

    def note_error(self, source, msg):
        """Count an error in ``status.errors`` and log it."""
        self.errors += 1
        self.last_error = source + ": " + str(msg)
        self.log.error(source, msg)

    # --- the loop ---
    def step(self):
        """One bounded slice of work; never raises for network trouble."""
        if self._client is None:
            if self.clock.ticks_diff(self.clock.ticks_ms(), self._next_try) < 0:
                return
            net = self.board.network
            if not net.isconnected():
                self.state = OFFLINE
                try:
                    ok = net.connect_wifi(self.cfg.wifi_ssid, self.cfg.wifi_psk)
                except OSError as e:
                    ok = False
                    self.last_error = "wifi: " + str(e)
                if not ok:
                    self._fail("Wi-Fi not connected")
                    return
            self._connect()
            return
        try:
            self._client.poll()
            self._pump()
        except (MQTTError, OSError) as e:
            self._drop(e)

    def _connect(self):
        self.state = CONNECTING
        cfg = self.cfg
        stream = None
        c = MQTTClient(cfg.device_id, cfg.device_id, cfg.mqtt_password, self.keepalive, self.clock)
        c.on_message = self._on_message
        c.on_puback = self._on_puback
        try:
            # a fresh connection number before the will is signed: the will and every status of
            # this connection carry it, so the gateway can order them (docs/protocol.md "Status")
            self.conn = self._conns.next()
            stream = self.board.network.open(cfg.host, cfg.port, tls=cfg.tls, timeout_ms=self.connect_timeout_ms)
            will = (self._t_status, self._status_token(OFFLINE), 1, True)
            c.connect(stream, will=will, clean=False, timeout_ms=self.connect_timeout_ms)
            codes = c.subscribe([(self._t_ack, 1), (self._t_cmd, 1)], self.connect_timeout_ms)
            if 0x80 in codes:
                raise MQTTError("subscription to own ack/cmd refused (broker ACL?)")
            self._client = c
            self.state = ONLINE
            self._attempt = 0
            self._cursor = 0
            self._pid_seq = {}
            self._progress = self.clock.ticks_ms()
            self.connects += 1
            self.log.info("uplink", "connected to %s:%d, %d readings to resend" % (cfg.host, cfg.port, self.outbox.depth))
            c.publish(self._t_status, self._status_token(ONLINE), 1, True)
            self._pump()
        except (OSError, MQTTError, ValueError, SeqError) as e:
            c.close()
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
            self._client = None
            self._fail("connect: " + str(e))

    def _fail(self, why):
        self.state = OFFLINE
        self.failures += 1
        self._attempt += 1
        delay = self.backoff_min_ms << min(self._attempt - 1, 10)
        if delay > self.backoff_max_ms:
            delay = self.backoff_max_ms
        delay += delay * self.board.urandom(1)[0] // 512  # + 0..50 % jitter
        self._next_try = self.clock.ticks_add(self.clock.ticks_ms(), delay)
        if why != self.last_error:
            self.log.warn("uplink", why + " (retry in %d ms)" % delay)
        self.last_error = why

    def _drop(self, e):
        self.log.warn("uplink", "connection lost: " + str(e))
        if self._client is not None:
            self._client.close()
        self._client = None
        self._attempt = 0
        self._fail("connection lost")

    def _pump(self):
        c = self._client
        if c is None:
            return
        room = self.window - len(self._pid_seq)
        if room > 0:
            for s, msg in list(self.outbox.pending(self._cursor, room)):
                self._pid_seq[c.publish(self._t_reading, msg, 1)] = s
                self._cursor = s
                self.published += 1
                self._progress = self.clock.ticks_ms()
        if (self.outbox.depth and not self._pid_seq
                and self.clock.ticks_diff(self.clock.ticks_ms(), self._progress) >= self.resend_ms):
            self.log.info("uplink", "no ack for %d readings: sending them again" % self.outbox.depth)
            self._cursor = 0
            self._progress = self.clock.ticks_ms()

    def close(self):
        """Publish a signed retained ``offline`` status and disconnect (when online)."""
        c = self._client
        if c is None:
            return
        try:
            c.publish(self._t_status, self._status_token(OFFLINE), 1, True)
            for _ in range(10):  # give the broker a moment to PUBACK it
                if not c.inflight:
                    break
                c.poll()
        except (MQTTError, OSError):
            pass
        c.disconnect()
        self._client = None
        self.state = OFFLINE

    # --- incoming ---
    def _on_puback(self, pid):
        s = self._pid_seq.pop(pid, None)
        if s is not None:
            self.sent += 1
            if s > self._sent_max:
                self._sent_max = s

    def _on_message(self, topic, msg, retained):
        if topic == self._t_ack:
            self._handle_ack(msg)
        elif topic == self._t_cmd:
            self._handle_cmd(msg)
        else:
            self._reject("message", "unexpected topic " + topic)

    def _reject(self, kind, why):
        self.errors += 1
        self.log.warn("uplink", kind + " ignored: " + why)
        return None

    def _open(self, kind, msg, typ):
        try:
            payload = jws.verify(self.cfg.key, msg, typ, kid=self.cfg.kid)
        except jws.JWSError as e:
            return self._reject(kind, str(e))
        try:
            p = json.loads(payload)
        except ValueError:
            return self._reject(kind, "payload is not JSON")
        if not isinstance(p, dict) or p.get("v") != 1:
            return self._reject(kind, "not a version 1 object")
        if p.get("dev") != self.cfg.device_id:
            return self._reject(kind, "for another device " + repr(p.get("dev")))
        return p

    def _handle_ack(self, msg):
        p = self._open("ack", msg, TYP_ACK)
        if p is None:
            return
        seqs = p.get("seqs")
        if not isinstance(seqs, list) or not all(commands.is_int(s) for s in seqs):
            self._reject("ack", "seqs must be a list of integers")
            return
        n = self.outbox.ack(seqs)
        if n:
            self.acked += n
            self._progress = self.clock.ticks_ms()

    def _handle_cmd(self, msg):
        p = self._open("cmd", msg, TYP_CMD)
        if p is None:
            return
        n = p.get("n")
        cmd = p.get("cmd")
        args = p.get("args", {})
        if not commands.is_int(n) or n < 1:
            self._reject("cmd", "n must be an integer >= 1")
            return
        last = self._cmdn.value or 0
        if n <= last:
            self._reject("cmd", "replayed n=%d (last accepted %d)" % (n, last))
            return
        exp = p.get("exp")
        if exp is not None and not commands.is_int(exp):
            self._reject("cmd", "exp must be an integer")
            return
        now = self.clock.unix_time()
        if exp is not None and now is not None and now > exp:
            self._reject("cmd", "expired n=%d" % n)
            return
        try:
            args = commands.check(cmd, args)
        except ValueError as e:
            self._reject("cmd", str(e))
            return
        self._cmdn.set(n)  # before acting: never run twice, even across a crash
        self.commands += 1
        self.log.info("uplink", "command n=%d %s" % (n, cmd))
        if self.on_command is None:
            return
        try:
            self.on_command(cmd, args)
        except ValueError as e:
            self._reject("cmd", "%s refused: %s" % (cmd, e))
