"""MQTT 3.1.1 client for the device, over any stream the board opens (no umqtt).

The client never opens sockets itself: the uplink gets a stream from
``board.network.open(host, port, tls=...)`` (``read``/``readinto``/``write``/``settimeout``/
``close``) and hands it to ``connect``. Everything it sends is built by the packet functions below
(``connect_packet``, ``publish_packet``...), which the tests compare with fixed byte vectors.

    c = MQTTClient("nabd-a1b2c3", user="nabd-a1b2c3", password="...", keepalive=60, clock=board.clock)
    c.on_message = lambda topic, msg, retained: ...   # str, bytes, bool; PUBACKed after it returns
    c.on_puback = lambda pid: ...
    c.connect(stream, will=(topic, msg, 1, True))     # CONNACK or MQTTError; -> session_present
    c.subscribe([(topic, 1), ...])                    # waits for SUBACK -> granted codes
    pid = c.publish(topic, msg, qos=1)                # kept in flight until PUBACK
    c.poll()                                          # call often: reads what arrived, without
                                                      # blocking (socket timeout), resends
                                                      # unacknowledged QoS 1 (DUP) after retry_ms,
                                                      # PINGREQ at keepalive/2

Clean session is OFF by default: the broker keeps our subscriptions and queues the QoS 1 ``ack``
and ``cmd`` messages the gateway sends while the device is offline (Wi-Fi down, rebooting), so an
acknowledgement is never lost just because the device was away when the gateway stored the
reading (the device would otherwise resend and wait for a second ack).

Incoming packets land in one receive buffer allocated once (``rx_size`` bytes); a larger packet is
a protocol error. Any protocol violation, a refused CONNACK, a missing PINGRESP or a closed stream
raises ``MQTTError``: the caller closes and reconnects.
"""
from micropython import const

from firmware.errors import EAGAIN, EINPROGRESS_IDF, ETIMEDOUT, ETIMEDOUT_IDF, code

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_UNSUBACK = const(0xB0)
_PINGRESP = const(0xD0)

PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"

# a read that found nothing within its timeout, as each port and numbering says it
_NODATA = (EAGAIN, ETIMEDOUT, ETIMEDOUT_IDF, EINPROGRESS_IDF)

CONNACK_REASONS = {1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
                   4: "bad user name or password", 5: "not authorized"}


class MQTTError(Exception):
    """A protocol error, refusal or lost connection; ``code`` is the CONNACK code when refused."""

    def __init__(self, msg, code=None):
        super().__init__(msg)
        self.code = code


# --- packet encoding (pure functions) ---------------------------------------------------------

def encode_length(n):
    """MQTT remaining-length varint (1..4 bytes) for 0 <= n <= 268435455."""
    if not 0 <= n <= 268435455:
        raise ValueError("remaining length out of range")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_length(buf, i=0):
    """(value, index after) of the remaining length starting at ``buf[i]``; MQTTError if
    malformed (more than 4 bytes) or incomplete."""
    n = 0
    shift = 0
    for k in range(4):
        if i + k >= len(buf):
            raise MQTTError("truncated remaining length")
        b = buf[i + k]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i + k + 1
        shift += 7
    raise MQTTError("malformed remaining length")


def _s(v):
    if isinstance(v, str):
        v = v.encode()
    if len(v) > 65535:
        raise ValueError("MQTT string too long")
    return bytes((len(v) >> 8, len(v) & 0xFF)) + v


def connect_packet(client_id, user=None, password=None, keepalive=60, clean=False, will=None):
    """CONNECT (protocol level 4). ``will`` = (topic, msg, qos, retain) or None."""
    flags = 0x02 if clean else 0
    payload = _s(client_id)
    if will is not None:
        topic, msg, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _s(topic) + _s(msg)
    if user is not None:
        flags |= 0x80
        payload += _s(user)
        if password is not None:
            flags |= 0x40
            payload += _s(password)
    var = b"\x00\x04MQTT\x04" + bytes((flags, keepalive >> 8, keepalive & 0xFF))
    body = var + payload
    return bytes((_CONNECT,)) + encode_length(len(body)) + body


def publish_packet(topic, msg, qos=0, retain=False, pid=0, dup=False):
    """PUBLISH; ``pid`` is required (1..65535) for QoS 1."""
    if qos not in (0, 1):
        raise ValueError("QoS 0 or 1 only")
    if qos and not 0 < pid < 65536:
        raise ValueError("QoS 1 needs a packet id 1..65535")
    b0 = _PUBLISH | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    var = _s(topic) + (bytes((pid >> 8, pid & 0xFF)) if qos else b"")
    return bytes((b0,)) + encode_length(len(var) + len(msg)) + var + bytes(msg)


def subscribe_packet(pid, topics):
    """SUBSCRIBE of [(topic, qos), ...]."""
    body = bytes((pid >> 8, pid & 0xFF))
    for t, q in topics:
        body += _s(t) + bytes((q,))
    return bytes((_SUBSCRIBE,)) + encode_length(len(body)) + body


def puback_packet(pid):
    return bytes((_PUBACK, 2, pid >> 8, pid & 0xFF))


# --- client ---------------------------------------------------------------------------------------

class MQTTClient:
    """See the module docstring. ``retry_ms``: resend an unacknowledged QoS 1 PUBLISH (DUP) after
    this long; ``poll_timeout_s``: socket timeout of one non-blocking read attempt;
    ``io_timeout_s``: timeout to finish reading/writing a packet once begun."""

    def __init__(self, client_id, user=None, password=None, keepalive=60, clock=None, retry_ms=10000,
                 rx_size=2560, poll_timeout_s=0.002, io_timeout_s=5):
        self.client_id = client_id
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.clock = clock
        self.retry_ms = retry_ms
        self.poll_timeout_s = poll_timeout_s
        self.io_timeout_s = io_timeout_s
        self._rx = bytearray(rx_size)
        self._mv = memoryview(self._rx)
        self._rxlen = 0
        self._b1 = bytearray(1)
        self.stream = None
        self.on_message = None
        self.on_puback = None
        self.inflight = {}    # pid -> [packet bytearray, sent ticks_ms]
        self._pid = 0
        self._last_tx = 0
        self._ping_at = None
        self._suback = {}
        self.connected = False
        self.retransmits = 0

    # --- time ---
    def _now(self):
        return self.clock.ticks_ms() if self.clock is not None else 0

    def _elapsed(self, t):
        return self.clock.ticks_diff(self._now(), t) if self.clock is not None else 0

    # --- I/O ---
    def _send(self, pkt):
        s = self.stream
        if s is None:
            raise MQTTError("not connected")
        mv = memoryview(pkt)
        i = 0
        try:
            s.settimeout(self.io_timeout_s)
            while i < len(mv):
                n = s.write(mv[i:])
                if not n:
                    raise MQTTError("stream write failed")
                i += n
        except OSError as e:
            raise MQTTError("send failed: " + str(e))
        self._last_tx = self._now()

    def _read_exact(self, mv):
        s = self.stream
        if s is None:
            raise MQTTError("not connected")
        got = 0
        while got < len(mv):
            try:
                n = s.readinto(mv[got:])
            except OSError as e:
                raise MQTTError("read failed: " + str(e))
            if not n:
                raise MQTTError("connection closed by the broker")
            got += n

    def _read_packet(self, timeout_s):
        """Read one packet if one starts within ``timeout_s``: returns its first byte (type and
        flags) with the body in ``self._rx[:self._rxlen]``, or None when nothing arrived."""
        s = self.stream
        if s is None:
            raise MQTTError("not connected")
        b1 = self._b1
        try:
            s.settimeout(timeout_s)
            n = s.readinto(b1)
        except OSError as e:
            if code(e) in _NODATA:
                return None
            raise MQTTError("read failed: " + str(e))
        if n is None:
            return None
        if n == 0:
            raise MQTTError("connection closed by the broker")
        b0 = b1[0]
        try:
            s.settimeout(self.io_timeout_s)
        except OSError as e:
            raise MQTTError(str(e))
        n = 0
        shift = 0
        for k in range(4):
            self._read_exact(memoryview(b1))
            n |= (b1[0] & 0x7F) << shift
            shift += 7
            if not b1[0] & 0x80:
                break
            if k == 3:
                raise MQTTError("malformed remaining length")
        if n > len(self._rx):
            raise MQTTError("packet of %d bytes exceeds the receive buffer" % n)
        self._read_exact(self._mv[:n])
        self._rxlen = n
        return b0

    def _handle(self, b0):
        t = b0 & 0xF0
        n = self._rxlen
        rx = self._rx
        if t == _PUBLISH:
            qos = (b0 >> 1) & 3
            if qos > 1:
                raise MQTTError("QoS 2 PUBLISH received; the device subscribes with QoS <= 1")
            if n < 2:
                raise MQTTError("malformed PUBLISH")
            tl = (rx[0] << 8) | rx[1]
            i = 2 + tl
            if i + (2 if qos else 0) > n:
                raise MQTTError("malformed PUBLISH")
            topic = bytes(self._mv[2:i]).decode()
            pid = 0
            if qos:
                pid = (rx[i] << 8) | rx[i + 1]
                i += 2
            msg = bytes(self._mv[i:n])
            if self.on_message is not None:
                self.on_message(topic, msg, bool(b0 & 1))
            if qos:
                self._send(puback_packet(pid))
        elif t == _PUBACK:
            if n != 2:
                raise MQTTError("malformed PUBACK")
            pid = (rx[0] << 8) | rx[1]
            if self.inflight.pop(pid, None) is not None and self.on_puback is not None:
                self.on_puback(pid)
        elif t == _SUBACK:
            if n < 3:
                raise MQTTError("malformed SUBACK")
            self._suback[(rx[0] << 8) | rx[1]] = list(rx[2:n])
        elif t == _PINGRESP:
            self._ping_at = None
        elif t == _UNSUBACK:
            pass
        else:
            raise MQTTError("unexpected packet type 0x%02x" % b0)

    def _wait_for(self, timeout_ms, test):
        tries = max(1, timeout_ms // 100)
        for _ in range(tries):
            b0 = self._read_packet(0.1)
            if b0 is not None:
                r = test(b0)
                if r is not None:
                    return r
                self._handle(b0)
        raise MQTTError("timed out waiting for the broker")

    # --- API ---
    def connect(self, stream, will=None, clean=False, timeout_ms=5000):
        """Send CONNECT on ``stream`` and wait for CONNACK. Returns session_present (bool)."""
        self.stream = stream
        self.connected = False
        self._ping_at = None
        self._send(connect_packet(self.client_id, self.user, self.password, self.keepalive, clean, will))

        def connack(b0):
            if b0 != _CONNACK or self._rxlen != 2:
                raise MQTTError("expected CONNACK, got packet 0x%02x" % b0)
            rc = self._rx[1]
            if rc:
                raise MQTTError("connection refused: " + CONNACK_REASONS.get(rc, "code %d" % rc), rc)
            return bool(self._rx[0] & 1)

        sp = self._wait_for(timeout_ms, connack)
        self.connected = True
        # after a reconnect the unacknowledged QoS 1 messages are resent with DUP (MQTT-4.4.0-1)
        for pid in list(self.inflight):
            self._resend(pid)
        return sp

    def _next_pid(self):
        for _ in range(65535):
            self._pid = self._pid % 65535 + 1
            if self._pid not in self.inflight:
                return self._pid
        raise MQTTError("no free packet id")

    def publish(self, topic, msg, qos=0, retain=False):
        """Send a PUBLISH; returns its packet id (0 for QoS 0)."""
        pid = self._next_pid() if qos else 0
        pkt = publish_packet(topic, msg, qos, retain, pid)
        if qos:
            self.inflight[pid] = [bytearray(pkt), self._now()]
        self._send(pkt)
        return pid

    def _resend(self, pid):
        e = self.inflight[pid]
        e[0][0] |= 0x08  # DUP
        e[1] = self._now()
        self.retransmits += 1
        self._send(e[0])

    def subscribe(self, topics, timeout_ms=5000):
        """SUBSCRIBE and wait for SUBACK; returns the granted codes (0x80 = refused)."""
        pid = self._next_pid()
        self._send(subscribe_packet(pid, topics))
        for _ in range(max(1, timeout_ms // 100)):
            b0 = self._read_packet(0.1)
            if b0 is not None:
                self._handle(b0)
            if pid in self._suback:
                return self._suback.pop(pid)
        raise MQTTError("timed out waiting for SUBACK")

    def poll(self, max_packets=8):
        """Handle what has arrived (at most ``max_packets``), resend overdue QoS 1 messages, keep
        the connection alive. Returns the number of packets handled."""
        got = 0
        while got < max_packets:
            b0 = self._read_packet(self.poll_timeout_s if got == 0 else 0.0005)
            if b0 is None:
                break
            self._handle(b0)
            got += 1
        for pid in list(self.inflight):
            if self._elapsed(self.inflight[pid][1]) >= self.retry_ms:
                self._resend(pid)
        if self.keepalive:
            if self._ping_at is not None:
                if self._elapsed(self._ping_at) >= self.keepalive * 1000:
                    raise MQTTError("no PINGRESP within the keep-alive")
            elif self._elapsed(self._last_tx) >= self.keepalive * 500:
                self._send(PINGREQ)
                self._ping_at = self._now()
        return got

    def disconnect(self):
        """Polite DISCONNECT (the broker then does NOT publish the Last Will), then close."""
        try:
            if self.stream is not None:
                self._send(DISCONNECT)
        except MQTTError:
            pass
        self.close()

    def close(self):
        """Drop the stream (the broker will publish the Last Will). In-flight messages are kept
        and resent on the next ``connect``."""
        s = self.stream
        self.stream = None
        self.connected = False
        if s is not None:
            try:
                s.close()
            except OSError:
                pass
