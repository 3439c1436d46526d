"""In-VM helper of tests/firmware/test_mqtt_packets.py (exec'd in the MicroPython VM): a scripted
broker stream and a client made on a virtual clock."""

import binascii

from firmware import mqtt as M
from firmware.errors import ETIMEDOUT
from sim.hardware.clock import VirtualClock

U = binascii.unhexlify


def H(b):
    return binascii.hexlify(b).decode()


class Peer:
    """A scripted broker: ``feed(hex)`` queues bytes for the client, ``tx`` collects what it
    wrote; ``chunk`` limits each read (1 = byte by byte); empty -> timeout; ``eof`` -> closed."""

    def __init__(self, chunk=4096):
        self.rx = bytearray()
        self.tx = bytearray()
        self.chunk = chunk
        self.eof = False
        self.closed = False

    def feed(self, h):
        self.rx.extend(U(h))

    def settimeout(self, t):
        pass

    def readinto(self, buf):
        if not self.rx:
            if self.eof:
                return 0
            raise OSError(ETIMEDOUT, "timed out")
        n = min(len(buf), len(self.rx), self.chunk)
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n

    def write(self, b):
        self.tx.extend(b)
        return len(b)

    def take(self):
        t = H(self.tx)
        self.tx = bytearray()
        return t

    def close(self):
        self.closed = True


clock = VirtualClock()
got = []
acked = []


def make(chunk=4096, **kw):
    c = M.MQTTClient("dev1", "dev1", "pw", keepalive=60, clock=clock, retry_ms=5000, **kw)
    c.on_message = lambda t, m, r: got.append([t, H(m), r])
    c.on_puback = lambda pid: acked.append(pid)
    return c, Peer(chunk)


def err(f):
    try:
        f()
        return "no error"
    except M.MQTTError as e:
        return [str(e), e.code]
