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


class _FleetFlashOS:
    """The host's ``os`` as the firmware's flash modules see it in the fleet, without ``sync``.

    On a device ``os.sync()`` flushes its own flash; under CPython the same call is sync(2), which
    waits for every dirty page of the whole machine (PostgreSQL's WAL, the brokers' persistence,
    anyone's writes). The firmware calls it on every reading, ack record and counter write, so
    one thread stepping thousands of devices spent most of a herd asleep in the kernel (30.6 of
    39.7 s at 1,000 devices, load ~9) and, at 3,000 devices beside busy gateways, looked stalled.
    The fleet simulates no power cuts (that durability is tested on the single-device simulator
    under MicroPython), so its flash writes stay ordinary writes."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def sync():
        pass


def volatile_flash() -> None:
    """Make the firmware's flash modules (``config``, ``outbox``, ``seq``) skip sync(2) in this
    process (see ``_FleetFlashOS``); the file contents are the same."""
    from firmware import config, outbox, seq

    for m in (config, outbox, seq):
        if not isinstance(m.os, _FleetFlashOS):
            m.os = _FleetFlashOS()


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
                 outbox_capacity: int = 1000, region: str = "MA-06", shard: tuple[int, int] = (0, 1)):
        from firmware import config
        from firmware.log import Log
        from firmware.seq import SeqCounter
        from firmware.uplink import Uplink

        if devices < 1 or clinics < 1 or not brokers:
            raise ValueError("a fleet needs >= 1 device, >= 1 clinic and a broker")
        volatile_flash()
        self.state = Path(state).resolve()
        self.region = region
        self.clinics = clinics
        self.total = devices        # devices of the whole fleet; this object holds shard k of n
        self.pass_ms = 0.0          # the last pass over this object's devices
        k, n = shard
        if not 0 <= k < n:
            raise ValueError("shard k of n needs 0 <= k < n")
        tag = zlib.crc32(str(self.state).encode()) & 0xFFFF
        self.devices: list[Device] = []
        now = time.monotonic()
        for i in range(k, devices, n):
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

    def clinic_of(self) -> dict[str, int]:
        """device id -> its clinic."""
        return {d.cfg.device_id: d.clinic for d in self.devices}

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
                "drops": sum(d.outbox.drops for d in self.devices),
                "pass_ms": round(self.pass_ms, 1)}

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
        self.pass_ms = (time.monotonic() - now) * 1000
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
            d.next_at = t0 + interval_s * d.index / self.total
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
        if close:
            self.close()
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

    def settle(self, seconds: float) -> None:
        """Step every device for ``seconds`` without measuring (e.g. to notice lost links)."""
        self.pump(lambda: False, seconds)

    def drain(self, timeout_s: float) -> float:
        """Step every device until no reading waits or the timeout; returns the seconds taken."""
        return self.pump(lambda: all(d.uplink.queued == 0 for d in self.devices), timeout_s)

    def close(self) -> None:
        """A clean end: each device's retained offline status, DISCONNECT."""
        for d in self.devices:
            d.uplink.close()

    def stop(self) -> None:
        """Nothing to end in this process (``FleetShards.stop`` ends its processes)."""

    def pids(self) -> list[int]:
        """The processes stepping the devices (CPU figures)."""
        return [os.getpid()]

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


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's open-file limit (``ulimit -n``) to its hard limit: a shard holds one
    socket per device, a clinic broker one per device of its clinic (brokers started from here
    inherit it). Returns (soft, hard) after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


_SUMMED = ("devices", "readings_produced", "acked", "waiting", "drops", "connects", "connect_failures",
           "device_errors")
_COUNTED = ("connected", "produced", "acked", "waiting", "drops")


def _shard_main(conn, args: dict) -> None:
    """One shard's process: its own ``Fleet`` and loop, driven by commands over ``conn``. Between
    commands, once its devices are online, it keeps stepping them (keep-alives, late acks)."""
    raise_fd_limit()
    try:
        fleet = Fleet(**args)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ok", len(fleet.devices)))
    live = False
    while True:
        if live and not conn.poll(0.02):
            fleet.step(False, 1.0)
            continue
        try:
            cmd, name, kw = conn.recv()
        except EOFError:        # the parent is gone
            return
        try:
            if cmd == "exit":
                conn.send(("ok", None))
                return
            if cmd == "run":
                res = fleet.run(report=lambda c: conn.send(("tick", c)), **kw)
            else:
                res = getattr(fleet, name)(**kw)
            live = any(d.uplink._client is not None for d in fleet.devices)
            conn.send(("ok", res))
        except Exception as e:  # noqa: BLE001
            conn.send(("error", f"{type(e).__name__}: {e}"))


class FleetShards:
    """A ``Fleet`` of ``devices`` split over ``procs`` processes (shard ``k`` holds devices
    ``k, k + procs, ...``, each with its own loop), driven from this process with the same
    methods: one Python thread steps every device in turn (its pass grows with N), and on a
    multi-core machine the shards run side by side. Counts and summaries are sums over the shards (``pass_ms``,
    ``drain_s``, ``all_connected_s``: the slowest shard)."""

    def __init__(self, state: Path, devices: int, brokers: list[str], clinics: int = 1, procs: int = 2,
                 outbox_capacity: int = 1000, region: str = "MA-06"):
        import multiprocessing

        if procs < 1 or procs > devices:
            raise ValueError("--procs must be within 1..devices")
        raise_fd_limit()
        self.state = Path(state).resolve()
        self.total = devices
        self.clinics = clinics
        self.procs = procs
        ctx = multiprocessing.get_context("spawn")   # no forked copy of the parent's threads/sockets
        self._conns = []
        self._procs = []
        for k in range(procs):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_shard_main, daemon=True, name=f"nabd-fleet-shard-{k}",
                            args=(theirs, dict(state=self.state, devices=devices, brokers=list(brokers),
                                               clinics=clinics, outbox_capacity=outbox_capacity, region=region,
                                               shard=(k, procs))))
            p.start()
            theirs.close()
            self._conns.append(mine)
            self._procs.append(p)
        try:
            self._gather()
        except BaseException:
            self.stop()
            raise

    def _recv(self, c):
        try:
            kind, val = c.recv()
        except EOFError:
            raise RuntimeError("a fleet shard process died") from None
        if kind == "error":
            raise RuntimeError(f"fleet shard: {val}")
        return kind, val

    def _gather(self) -> list:
        return [self._recv(c)[1] for c in self._conns]

    def _all(self, name: str, **kw) -> list:
        """Call ``Fleet.name(**kw)`` in every shard at once; their results in shard order."""
        for c in self._conns:
            c.send(("call", name, kw))
        return self._gather()

    # --- the Fleet interface ---
    def registrations(self) -> list:
        return [r for part in self._all("registrations") for r in part]

    def clinic_of(self) -> dict[str, int]:
        return {k: v for part in self._all("clinic_of") for k, v in part.items()}

    def counts(self) -> dict:
        return self._sum_counts(self._all("counts"))

    @staticmethod
    def _sum_counts(parts: list[dict]) -> dict:
        out = {k: sum(p[k] for p in parts) for k in _COUNTED}
        out["pass_ms"] = max(p.get("pass_ms", 0.0) for p in parts)
        return out

    def outage(self, clinics, down: bool) -> None:
        self._all("outage", clinics=set(clinics), down=down)

    def measure_all(self, clinics=None) -> int:
        return sum(self._all("measure_all", clinics=None if clinics is None else set(clinics)))

    def settle(self, seconds: float) -> None:
        self._all("settle", seconds=seconds)

    def drain(self, timeout_s: float) -> float:
        return max(self._all("drain", timeout_s=timeout_s))

    def close(self) -> None:
        self._all("close")

    def latencies_ms(self) -> list[float]:
        return [x for part in self._all("latencies_ms") for x in part]

    def produced(self) -> dict[str, list[int]]:
        return {k: v for part in self._all("produced") for k, v in part.items()}

    def write_produced(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.produced()) + "\n")

    def run(self, interval_s: float, duration_s: float, drain_s: float = 60.0, report=None,
            on_tick=None, close: bool = True) -> dict:
        """``Fleet.run`` in every shard at once; ``report``/``on_tick`` here once a second with
        the shards' latest counts summed."""
        from multiprocessing.connection import wait

        kw = dict(interval_s=interval_s, duration_s=duration_s, drain_s=drain_s, close=close)
        for c in self._conns:
            c.send(("run", "run", kw))
        latest: list[dict | None] = [None] * self.procs
        done: list[dict | None] = [None] * self.procs
        t0 = time.monotonic()
        next_report = t0 + 1.0
        first_all = None
        while any(d is None for d in done):
            pending = [c for c, d in zip(self._conns, done, strict=True) if d is None]
            for c in wait(pending, timeout=max(0.0, next_report - time.monotonic())):
                k = self._conns.index(c)
                kind, val = self._recv(c)
                if kind == "tick":
                    latest[k] = val
                else:
                    done[k] = val
            now = time.monotonic()
            if now >= next_report:
                next_report += 1.0
                if all(x is not None for x in latest):
                    c = self._sum_counts(latest)
                    c["t"] = round(now - t0, 1)
                    if first_all is None and c["connected"] == self.total:
                        first_all = c["t"]
                    if report:
                        report(c)
                    if on_tick:
                        on_tick(c["t"])
        out = dict(done[0])
        for k in _SUMMED:
            out[k] = sum(d[k] for d in done)
        out["drain_s"] = max(d["drain_s"] for d in done)
        out["all_connected_s"] = first_all
        out["procs"] = self.procs
        return out

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def stop(self) -> None:
        """End the shard processes (without the devices' clean close: call ``close`` first)."""
        for c in self._conns:
            try:
                c.send(("exit", "", {}))
            except OSError:
                pass
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        for c in self._conns:
            c.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> "FleetShards":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def make_fleet(state: Path, devices: int, brokers: list[str], clinics: int = 1, procs: int = 1, **kw):
    """A ``Fleet`` in this process (``procs`` 1) or ``FleetShards`` over ``procs`` processes."""
    if procs <= 1:
        return Fleet(state, devices, brokers, clinics=clinics, **kw)
    return FleetShards(state, devices, brokers, clinics=clinics, procs=procs, **kw)
