"""The fleet simulator: many device identities speaking the device protocol exactly as the firmware
does, in one CPython process.

Each device is the firmware's own comms stack (``firmware.config``, ``firmware.seq.SeqCounter``,
``firmware.outbox.Outbox``, ``firmware.uplink.Uplink`` with its ``firmware.mqtt`` client,
``firmware.reading`` payloads and ``firmware.jws`` signatures) on a light board: a flash folder
of its own, the host's clocks and real loopback sockets. No signal chain runs: every reading's
values are taken from ``RESULTS`` (results the simulated device measured), so one process can
drive many devices. One thread steps every device's uplink in turn, as the firmware's main loop
does; socket reads with the firmware's short poll timeouts are made non-blocking here so a quiet
device costs no wait.

    fleet = Fleet(Path("state"), devices=30, brokers=["mqtt://127.0.0.1:1883"], clinics=2)
    fleet.registration_files()     # nabd-registration/1 files for `nabd-gateway devices add --from`
    summary = fleet.run(interval_s=5, duration_s=30, drain_s=60, report=print)

Device ``i`` belongs to clinic ``i % clinics`` (facility ``clinic-K``) and connects to broker
``i % len(brokers)``. Its flash (``config.json``, outbox, counters, log) lives in
``state/dev-NNNNN`` and is kept across runs, like ``nabd sim run --state``.
"""
from __future__ import annotations

import json
import os
import socket
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from firmware.outbox import Outbox
from sim.hardware.board import SimNetwork, _SocketStream

_MASK = 0x3FFFFFFF
_HALF = 0x20000000
_ETIMEDOUT = 110

# (temp in milli-degC, SpO2 %, pulse /min, perfusion index in 1/100 %, quality in 1/1000), as the
# simulated device measured them on the physiology scenarios (normal, fever, low SpO2, tachycardia)
RESULTS = (
    (36870, 97, 72, 240, 910),
    (36650, 98, 66, 310, 930),
    (38640, 96, 104, 180, 880),
    (36900, 88, 92, 120, 790),
    (37100, 95, 118, 205, 860),
    (36400, 99, 58, 420, 950),
)


class HostClock:
    """MicroPython's ``time.ticks_*`` on the host's monotonic clock; ``unix_time`` from the host
    (an NTP-synced device)."""

    def ticks_ms(self):
        return int(time.monotonic() * 1000) & _MASK

    def ticks_us(self):
        return int(time.monotonic() * 1000000) & _MASK

    def ticks_diff(self, a, b):
        return ((a - b + _HALF) & _MASK) - _HALF

    def ticks_add(self, t, d):
        return (t + d) & _MASK

    def sleep_ms(self, ms):
        time.sleep(ms / 1000)

    def unix_time(self):
        return int(time.time())

    def sync_time(self):
        return True


class _FleetStream(_SocketStream):
    """A socket stream whose very short timeouts (the firmware's 2 ms poll) are non-blocking
    reads: many devices share one thread, none may sit in a wait."""

    def settimeout(self, s):
        self.sock.settimeout(0.0 if s is not None and s < 0.01 else s)

    def _recv_into(self, mv):
        try:
            return self.sock.recv_into(mv)
        except (socket.timeout, BlockingIOError):
            return -1


class FleetNetwork(SimNetwork):
    """Wi-Fi always up unless ``wifi_up`` is cleared; plain TCP to the clinic broker."""

    def open(self, host, port, tls=None, timeout_ms=5000):
        if not self.isconnected():
            raise OSError(101, "Wi-Fi not connected")
        if tls is not None:
            return super().open(host, port, tls, timeout_ms)
        sock = socket.create_connection((host, port), timeout=timeout_ms / 1000)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened += 1
        return _FleetStream(sock)


class FleetBoard:
    """The board contract (``firmware/boards/__init__.py``) as far as the comms stack uses it."""

    name = "fleet"

    def __init__(self, root: Path, mac: bytes):
        self.storage_root = str(root)
        root.mkdir(parents=True, exist_ok=True)
        self.clock = HostClock()
        self.network = FleetNetwork()
        self._mac = mac

    def unique_id(self):
        return self._mac

    def urandom(self, n):
        return os.urandom(n)

    def free_heap(self):
        return 100000

    def wdt_feed(self):
        pass


class RecordingOutbox(Outbox):
    """The firmware's Outbox, noting when the gateway's ack removed each seq (for latencies)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.acked_at: dict[int, float] = {}

    def ack(self, seqs):
        now = time.time()
        for s in seqs:
            if isinstance(s, int) and self.contains(s):
                self.acked_at[s] = now
        return super().ack(seqs)


@dataclass
class Device:
    index: int
    clinic: int
    board: FleetBoard
    cfg: object
    outbox: object
    uplink: object
    next_at: float
    produced: int = 0
    produced_at: dict = field(default_factory=dict)   # seq -> time.time() at measurement


class Fleet:
    """N devices (see the module docstring). ``outbox_capacity`` as the firmware's default."""

    def __init__(self, state: Path, devices: int, brokers: list[str], clinics: int = 1,
                 outbox_capacity: int = 1000, region: str = "MA-06"):
        from firmware import config
        from firmware.log import Log
        from firmware.seq import SeqCounter
        from firmware.uplink import Uplink

        if devices < 1 or clinics < 1 or not brokers:
            raise ValueError("a fleet needs >= 1 device, >= 1 clinic and a broker")
        self.state = Path(state).resolve()
        self.region = region
        self.clinics = clinics
        tag = zlib.crc32(str(self.state).encode()) & 0xFFFF
        self.devices: list[Device] = []
        now = time.monotonic()
        for i in range(devices):
            # a locally administered MAC (02:...): never an Espressif unit's, distinct per fleet folder
            mac = bytes((0x02, tag >> 8, tag & 0xFF, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF))
            board = FleetBoard(self.state / f"dev-{i:05d}", mac)
            clinic = i % clinics
            broker = brokers[i % len(brokers)]
            cfg = config.create_identity(board, broker=broker, facility=f"clinic-{clinic}")
            if cfg.broker != broker:
                cfg = config.save(board, dict(cfg.data, broker=broker))
            box = RecordingOutbox(board, capacity=outbox_capacity)
            up = Uplink(board, cfg, box, SeqCounter(board, floor=box.max_seq), Log(board),
                        backoff_max_ms=10000)
            self.devices.append(Device(i, clinic, board, cfg, box, up, now))

    # --- registration ---
    def registrations(self) -> list[dict]:
        """Every device as a registration (the ``nabd-registration/1`` fields, broker password
        hashed as ``mosquitto_passwd`` does)."""
        from gateway.registration import Registration, broker_passwd_line

        out = []
        for d in self.devices:
            c = d.cfg
            out.append(Registration(c.device_id, c.key, c.key_version, f"clinic-{d.clinic}", self.region,
                                    broker_passwd_line(c.device_id, c.mqtt_password), fw="fleet"))
        return out

    def registration_files(self, folder: Path | None = None) -> list[Path]:
        """Write one 0600 registration file per device (``nabd-gateway devices add --from``)."""
        from gateway import registration

        folder = Path(folder or self.state / "registration")
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for reg in self.registrations():
            p = folder / f"{reg.device_id}.json"
            registration.write(p, reg)
            paths.append(p)
        return paths

    # --- running ---
    def counts(self) -> dict:
        from firmware.uplink import ONLINE

        ups = [d.uplink for d in self.devices]
        return {"connected": sum(u.state == ONLINE for u in ups),
                "produced": sum(d.produced for d in self.devices),
                "acked": sum(u.acked for u in ups),
                "waiting": sum(u.queued for u in ups),
                "drops": sum(d.outbox.drops for d in self.devices)}

    def _measure(self, d: Device) -> None:
        from firmware import reading
        from firmware.version import VERSION

        t, spo2, hr, pi, q = RESULTS[(d.index + d.produced) % len(RESULTS)]
        obs, flags = reading.observations(temp_mc=t, spo2=spo2, hr=hr, pi_cp=pi, q_temp=970, q_ppg=q)
        ts, ok = d.uplink.timestamp()
        p = reading.build_reading(ts, ok, d.uplink.uptime_s(), VERSION, None, None, obs, flags)
        seq = d.uplink.submit(p)
        d.produced += 1
        d.produced_at[seq] = time.time()

    def step(self, producing: bool, interval_s: float) -> int:
        """One pass over every device; returns how many readings were made."""
        made = 0
        now = time.monotonic()
        for d in self.devices:
            if producing and now >= d.next_at:
                self._measure(d)
                d.next_at += interval_s
                made += 1
            d.uplink.step()
        return made

    def run(self, interval_s: float, duration_s: float, drain_s: float = 60.0, report=None,
            on_tick=None, close: bool = True) -> dict:
        """Measure every ``interval_s`` for ``duration_s`` (device ``i`` starts ``i/N`` of an
        interval late, so the readings spread), then keep the links up until every reading is
        acknowledged or ``drain_s`` passed. ``report(counts)`` once a second with ``t`` (s);
        ``on_tick(t)`` too (fault injection); ``close``: disconnect every device at the end.
        Returns the summary."""
        n = len(self.devices)
        t0 = time.monotonic()
        for d in self.devices:
            d.next_at = t0 + interval_s * d.index / n
        next_report = t0 + 1.0
        stop_at = t0 + duration_s
        drain_end = None
        first_all = None
        while True:
            now = time.monotonic()
            producing = now < stop_at
            self.step(producing, interval_s)
            c = None
            if now >= next_report:
                next_report += 1.0
                c = self.counts()
                c["t"] = round(now - t0, 1)
                if first_all is None and c["connected"] == n:
                    first_all = c["t"]
                if report:
                    report(c)
                if on_tick:
                    on_tick(c["t"])
            if not producing:
                if drain_end is None:
                    drain_end = now + drain_s
                if all(d.uplink.queued == 0 for d in self.devices) or now >= drain_end:
                    break
            time.sleep(0.002)  # one pass takes a while for many devices; never spin a core
        drained = time.monotonic() - stop_at
        c = self.counts()
        if close:                  # a clean end: each device's retained offline status, DISCONNECT
            for d in self.devices:
                d.uplink.close()
        return {"devices": n, "clinics": self.clinics, "interval_s": interval_s, "duration_s": duration_s,
                "readings_produced": c["produced"], "acked": c["acked"], "waiting": c["waiting"],
                "drops": c["drops"], "all_connected_s": first_all, "drain_s": round(max(drained, 0.0), 2),
                "connects": sum(d.uplink.connects for d in self.devices),
                "connect_failures": sum(d.uplink.failures for d in self.devices),
                "device_errors": sum(d.uplink.errors for d in self.devices)}

    # --- faults ---
    def outage(self, clinics, down: bool) -> None:
        """Wi-Fi of every device of ``clinics`` lost (``down``: their connections dropped, they
        keep measuring into their outboxes) or back; when back they all try to connect at once,
        as after a power cut (the thundering herd)."""
        for d in self.devices:
            if d.clinic not in clinics:
                continue
            d.board.network.wifi_up = not down
            up = d.uplink
            if down and up._client is not None:
                s = up._client.stream
                if s is not None:
                    s.close()            # the link is gone: the next poll fails and the uplink backs off
            if not down:
                up._next_try = up.clock.ticks_ms()

    def measure_all(self, clinics=None) -> int:
        """One reading now on every device (of ``clinics``); returns how many."""
        n = 0
        for d in self.devices:
            if clinics is None or d.clinic in clinics:
                self._measure(d)
                n += 1
        return n

    def pump(self, until, timeout_s: float) -> float:
        """Step every device until ``until()`` or the timeout; returns the seconds taken."""
        t0 = time.monotonic()
        while not until() and time.monotonic() - t0 < timeout_s:
            self.step(False, 1.0)
            time.sleep(0.002)
        return time.monotonic() - t0

    def latencies_ms(self) -> list[float]:
        """Measurement to the device's receipt of the gateway's signed ack, per acknowledged
        reading of this run, in milliseconds."""
        out = []
        for d in self.devices:
            acked = d.outbox.acked_at
            out += [(acked[s] - t) * 1000 for s, t in d.produced_at.items() if s in acked]
        return out

    def produced(self) -> dict[str, list[int]]:
        """device id -> seqs produced in this run (for checks against the gateway's records)."""
        return {d.cfg.device_id: sorted(d.produced_at) for d in self.devices}

    def write_produced(self, path: Path) -> None:
        Path(path).write_text(json.dumps({k: v for k, v in self.produced().items()}) + "\n")
