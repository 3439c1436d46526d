"""Slow HTTP clients (a "slowloris"), for tests and benchmarks on loopback only.

``SlowClients(host, port, k)`` keeps ``k`` connections open, each having sent half a request
(the request line and part of a header, never the blank line that ends it) and then one more
byte every ``drip_s`` seconds, so that a server reading line by line keeps waiting. A
connection the server closes is opened again (at most ``k`` reconnects a second), as an attacker
would. With ``lifetime_s``, each connection is also closed by the client after a random 0.5x to
1.5x that long and opened again (an attacker churning connections: every server-side resource tied
to a connection is set up and torn down, ``k / lifetime_s`` times a second). One thread,
non-blocking sockets and a selector: cheap on the client side, so the measurement is of the server.
"""
from __future__ import annotations

import errno
import os
import random
import selectors
import socket
import threading
import time

HEAD = b"GET /fhir/Observation?device=nabd-a1b2c3d4e5f6 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


class SlowClients:
    def __init__(self, host: str, port: int, k: int, source: str | None = "127.0.0.2", drip_s: float = 1.0,
                 lifetime_s: float | None = None, reconnect: bool = True):
        if not host.startswith("127.") and host != "::1":
            raise ValueError("slow clients run against loopback only")
        self.addr, self.k, self.source, self.drip_s = (host, port), k, source, drip_s
        self.lifetime_s, self.reconnect = lifetime_s, reconnect
        self.recycled = 0      # connections the client closed itself (lifetime_s)
        self._expires: dict = {}
        self.connects = 0      # connections opened
        self.dropped = 0       # connections the server closed or reset
        self.refused = 0       # connects that failed
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    @property
    def open(self) -> int:
        return len(self._sel.get_map())

    def start(self) -> "SlowClients":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for key in list(self._sel.get_map().values()):
            self._close(key.fileobj)
        self._sel.close()

    def __enter__(self) -> "SlowClients":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _open_one(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            if self.source:
                s.bind((self.source, 0))
            err = s.connect_ex(self.addr)
        except OSError:
            s.close()
            self.refused += 1
            return
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.refused += 1
            return
        self._sel.register(s, selectors.EVENT_WRITE, "connecting")

    def _close(self, s) -> None:
        self._expires.pop(s, None)
        try:
            self._sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()

    def _run(self) -> None:
        budget, budget_at, next_drip = self.k, time.monotonic(), time.monotonic() + self.drip_s
        while not self._stop.is_set():
            now = time.monotonic()
            if now - budget_at >= 1.0:
                budget, budget_at = self.k, now
            while self.open < self.k and budget > 0 and (self.reconnect or self.connects + self.refused +
                                                         self.open < self.k):
                self._open_one()
                budget -= 1
            for key, _ in self._sel.select(timeout=0.05):
                s = key.fileobj
                if key.data == "connecting":
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                        self.refused += 1
                        self._close(s)
                        continue
                    try:
                        s.send(HEAD)
                    except OSError:
                        self.dropped += 1
                        self._close(s)
                        continue
                    self.connects += 1
                    self._sel.modify(s, selectors.EVENT_READ, "held")
                    if self.lifetime_s:
                        self._expires[s] = time.monotonic() + self.lifetime_s * (0.5 + random.random())
                else:   # readable: the server answered (400/408) or closed; either way it let go
                    try:
                        s.recv(4096)
                    except OSError:
                        pass
                    self.dropped += 1
                    self._close(s)
            if self._expires:
                now = time.monotonic()
                for s in [s for s, t in self._expires.items() if t <= now]:
                    self.recycled += 1
                    self._close(s)
            if time.monotonic() >= next_drip:
                next_drip += self.drip_s
                for key in list(self._sel.get_map().values()):
                    if key.data == "held":
                        try:
                            key.fileobj.send(b"a")
                        except OSError:
                            self.dropped += 1
                            self._close(key.fileobj)


def ack_latencies(broker_url: str, devs, rate: float, seconds: float, settle_s: float = 20.0) -> list[float]:
    """Publish ``rate`` signed readings a second for ``seconds`` from ``devs`` (SimDevices the
    gateway knows) and return each one's publish -> signed-ack time in seconds, sorted. Raises
    RuntimeError if an ack is missing ``settle_s`` after the last publish."""
    import json

    import paho.mqtt.client as mqtt

    from gateway import jws
    from tests.support.generator import topic

    host, port = broker_url.split("://")[1].split(":")
    sent: dict[tuple[str, int], float] = {}
    lat: list[float] = []
    lock = threading.Lock()

    def on_message(client, userdata, m):
        t = time.perf_counter()
        body = json.loads(jws.b64url_decode(m.payload.split(b".")[1]))
        with lock:
            for s in body["seqs"]:
                t0 = sent.pop((body["dev"], s), None)
                if t0 is not None:
                    lat.append(t - t0)

    clients = []
    for name in ("acks", "pub"):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{name}-{time.monotonic_ns()}",
                        protocol=mqtt.MQTTv311)
        c.connect(host, int(port))
        c.loop_start()
        clients.append(c)
    sub, pub = clients
    sub.on_message = on_message
    sub.subscribe("nabd/v1/dev/+/ack", qos=1)
    time.sleep(0.3)
    total = int(rate * seconds)
    msgs = []
    for i in range(total):
        d = devs[i % len(devs)]
        seq, raw = d.next_reading()
        msgs.append((d.id, seq, raw))
    t0 = time.perf_counter()
    try:
        for i, (dev, seq, raw) in enumerate(msgs):
            while (now := time.perf_counter()) < t0 + i / rate:
                time.sleep(min(0.002, t0 + i / rate - now))
            with lock:
                sent[(dev, seq)] = time.perf_counter()
            pub.publish(topic(dev), raw, qos=1)
        end = time.monotonic() + settle_s
        while len(lat) < total and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
    if len(lat) < total:
        raise RuntimeError(f"only {len(lat)} of {total} acks within {settle_s} s")
    return sorted(lat)


class SlowClientsProcess:
    """``SlowClients`` in a child process, so that the attacker's work does not share the
    measuring process's interpreter. ``.stats`` (connects, dropped, refused) after ``stop()``."""

    def __init__(self, host: str, port: int, k: int, source: str | None = "127.0.0.2", drip_s: float = 1.0,
                 lifetime_s: float | None = None):
        self.args = [host, str(port), str(k), source or "", str(drip_s), str(lifetime_s or 0)]
        self.proc = None
        self.stats: dict = {}

    def start(self, timeout: float = 60) -> "SlowClientsProcess":
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.slow_clients", *self.args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()   # "ready N" once k connections hold half a request
        if not line.startswith("ready"):
            self.stop()
            raise RuntimeError(f"slow clients did not start: {line!r}")
        return self

    def stop(self) -> dict:
        import json

        if self.proc is not None:
            try:
                self.proc.stdin.close()          # EOF: stop and report
                out = self.proc.stdout.read()
                self.proc.wait(timeout=20)
                self.stats = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
                self.proc = None
        return self.stats

    def __enter__(self) -> "SlowClientsProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _main(argv: list[str]) -> int:
    import json
    import sys

    host, port, k, source, drip, lifetime = argv
    os.nice(19)   # an attacker elsewhere would not take this machine's CPU; here it yields to what is measured
    slow = SlowClients(host, int(port), int(k), source or None, float(drip), float(lifetime) or None).start()
    end = time.monotonic() + 60
    while slow.connects < int(k) and time.monotonic() < end:
        time.sleep(0.02)
    print(f"ready {slow.connects}", flush=True)
    sys.stdin.read()          # until the parent closes our stdin
    slow.stop()
    print(json.dumps({"connects": slow.connects, "dropped": slow.dropped, "refused": slow.refused,
                      "recycled": slow.recycled}), flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
