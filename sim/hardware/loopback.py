"""An in-memory MQTT 3.1.1 peer for the MicroPython VM, which has no sockets.

    lb = Loopback(key=cfg.key, kid=cfg.kid)     # key: also play the gateway and sign acks
    board.network.stream_factory = lb.open      # the uplink "connects" to it
    ...
    lb.published        # [(topic, payload bytes)] the device published (readings, status)
    lb.wills            # [(topic, payload bytes)] the Last Will of each CONNECT (not published)
    lb.acked            # seqs acknowledged
    lb.send_cmd(dev, n, "assign_patient", {"patient": "p-1234"})   # a signed command to the device

What it answers: CONNECT -> CONNACK accepted; SUBSCRIBE -> SUBACK granting QoS 1; PUBLISH QoS 1 ->
PUBACK; PINGREQ -> PINGRESP; DISCONNECT closes. With ``key`` it also acknowledges each reading
(``nabd/v1/dev/{dev}/reading``) with a signed ``nabd-ack+jws`` on ``.../ack`` (QoS 0), as the
gateway would after storing it. ``down = True`` makes new connections fail (``OSError``) and
closes the current one. Not a broker: one client, no routing, no retained messages.
"""
import json

_ETIMEDOUT = 110
_ECONNREFUSED = 111


def _enc_len(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return out


def _publish(topic, payload):
    t = topic.encode()
    body = bytes((len(t) >> 8, len(t) & 0xFF)) + t + payload
    return bytes((0x30,)) + bytes(_enc_len(len(body))) + body


class _Stream:
    def __init__(self, peer):
        self.peer = peer
        self.inbuf = bytearray()     # from the device, not parsed yet
        self.out = bytearray()       # to the device
        self.closed = False

    def settimeout(self, s):
        pass

    def setblocking(self, flag):
        pass

    def write(self, buf):
        if self.closed or self.peer.down:
            raise OSError(_ECONNREFUSED, "loopback closed")
        self.inbuf.extend(buf)
        self.peer._parse(self)
        return len(buf)

    def readinto(self, buf, nbytes=None):
        if self.closed:
            return 0
        n = len(buf) if nbytes is None else nbytes
        if not self.out:
            if self.peer.down:
                self.closed = True
                return 0
            raise OSError(_ETIMEDOUT, "no data")
        k = n if n < len(self.out) else len(self.out)
        for i in range(k):
            buf[i] = self.out[i]
        self.out = self.out[k:]
        return k

    def read(self, n=-1):
        b = bytearray(n if n > 0 else len(self.out))
        k = self.readinto(b)
        return bytes(b[:k])

    def close(self):
        self.closed = True


class Loopback:
    def __init__(self, key=None, kid=None):
        self.key = key
        self.kid = kid
        self.down = False
        self.published = []
        self.acked = []
        self.connects = 0
        self.wills = []
        self.stream = None
        self.keep = 50          # published messages kept (oldest dropped)

    def open(self, host, port, tls=None, timeout_ms=5000):
        """``board.network.stream_factory``."""
        if self.down:
            raise OSError(_ECONNREFUSED, "loopback broker down")
        self.stream = _Stream(self)
        return self.stream

    def _parse(self, s):
        b = s.inbuf
        while len(b) >= 2:
            n = 0
            shift = 0
            i = 1
            while True:
                if i >= len(b):
                    return
                n |= (b[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not b[i - 1] & 0x80:
                    break
            if len(b) < i + n:
                return
            self._packet(s, b[0], bytes(b[i:i + n]))
            b = b[i + n:]
            s.inbuf = b

    def _packet(self, s, b0, body):
        t = b0 & 0xF0
        if t == 0x10:
            self.connects += 1
            if body[7] & 0x04:  # will flag: client id, then will topic and message (3.1.1)
                i = 12 + ((body[10] << 8) | body[11])
                tl = (body[i] << 8) | body[i + 1]
                topic = body[i + 2:i + 2 + tl].decode()
                i += 2 + tl
                ml = (body[i] << 8) | body[i + 1]
                self.wills.append((topic, body[i + 2:i + 2 + ml]))
            s.out.extend(b"\x20\x02\x00\x00")
        elif t == 0x80:
            pid = body[:2]
            i = 2
            codes = bytearray()
            while i < len(body):
                tl = (body[i] << 8) | body[i + 1]
                i += 2 + tl
                codes.append(body[i] if body[i] <= 1 else 1)
                i += 1
            s.out.extend(bytes((0x90, 2 + len(codes))) + pid + bytes(codes))
        elif t == 0x30:
            qos = (b0 >> 1) & 3
            tl = (body[0] << 8) | body[1]
            topic = body[2:2 + tl].decode()
            i = 2 + tl
            if qos:
                s.out.extend(b"\x40\x02" + body[i:i + 2])
                i += 2
            payload = body[i:]
            self.published.append((topic, payload))
            if len(self.published) > self.keep:
                self.published.pop(0)
            if self.key is not None and topic.endswith("/reading"):
                self._ack(s, topic, payload)
        elif t == 0xC0:
            s.out.extend(b"\xd0\x00")
        elif t == 0xE0:
            s.closed = True

    def _ack(self, s, topic, token):
        from firmware import jws, reading

        p = json.loads(jws.verify(self.key, token, "nabd-reading+jws", kid=self.kid))
        ack = reading.dumps({"v": 1, "dev": p["dev"], "seqs": [p["seq"]]})
        msg = jws.sign(self.key, self.kid, "nabd-ack+jws", ack)
        self.acked.append(p["seq"])
        s.out.extend(_publish(topic[:-len("reading")] + "ack", msg))

    def send_cmd(self, dev, n, cmd, args, exp=None):
        """Deliver a signed command to the connected device (QoS 0)."""
        from firmware import jws, reading

        p = {"v": 1, "dev": dev, "n": n, "cmd": cmd, "args": args}
        if exp is not None:
            p["exp"] = exp
        msg = jws.sign(self.key, self.kid, "nabd-cmd+jws", reading.dumps(p))
        self.stream.out.extend(_publish("nabd/v1/dev/" + dev + "/cmd", msg))
