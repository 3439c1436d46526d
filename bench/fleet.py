"""The fleet benchmark (issue 11): ``nabd sim fleet``'s devices (``sim/fleet.py``) through a region
built by ``host/region.py``: clinic Mosquitto brokers bridged to a regional Mosquitto, gateway
processes sharing the subscription on PostgreSQL. One run, in phases:

1. steady: every device measures every ``INTERVAL`` s for ``STEADY_S`` s; latency is from
   measurement to the device's receipt of the gateway's signed ack (an upper bound of
   measurement-to-commit), gateway CPU and broker memory from ``/proc``;
2. faults, one phase each while the devices keep measuring: clinic 0's bridge link cut and
   restored (``link_cut``), gateway 1 SIGKILLed and restarted (``gateway_kill``), the regional
   broker restarted (``regional_restart``); each phase reports ``fault_NAME_delivered_ratio`` and
   ``fault_NAME_duplicates_stored`` over the readings made during it; then PostgreSQL stopped
   and started (``pg_restart_phase``: the region runs on a PostgreSQL cluster of the benchmark's
   own, tests/support/pgcluster.py, since the machine's is shared by everyone's tests);
3. thundering herd: every clinic's devices lose their link, queue ``HERD_READINGS`` readings each,
   and all reconnect at the same moment; ``herd_drain_s`` is the time until all are acknowledged,
   ``herd_cpu_s_*`` the CPU seconds each part of the system spent meanwhile (where the time goes).
4. then, on its own: ``gateway_scale_2_over_1`` and ``ingest_per_core`` (bench/gateway.py
   ``pg_scaling``: one against two gateway processes draining the same backlog on PostgreSQL).

Sizes from the environment: ``NABD_BENCH_FLEET_DEVICES`` (default 1000), ``..._CLINICS`` (10),
``..._GATEWAYS`` (2), ``..._PROCS`` (simulator processes; default 1 up to 1,000 devices, then
one per 2,500), ``..._INTERVAL`` (seconds between a device's readings; default N/200, at least 5:
~200 readings/s in steady running at any size). The run at 1,000 devices takes ~3 min; at
10,000 ~10 min (the lead's run on a quiet machine).
"""
from __future__ import annotations

import collections
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from host.region import process_tree

REPO = Path(__file__).resolve().parent.parent
DEVICES = int(os.environ.get("NABD_BENCH_FLEET_DEVICES", "1000"))
CLINICS = int(os.environ.get("NABD_BENCH_FLEET_CLINICS", "10"))
GATEWAYS = int(os.environ.get("NABD_BENCH_FLEET_GATEWAYS", "2"))
PROCS = int(os.environ.get("NABD_BENCH_FLEET_PROCS", "0")) or (1 if DEVICES <= 1000 else -(-DEVICES // 2500))
INTERVAL = float(os.environ.get("NABD_BENCH_FLEET_INTERVAL", "0")) or max(5.0, DEVICES / 200)
STEADY_S = max(30.0, 2 * INTERVAL)
FAULT_S = max(20.0, 2 * INTERVAL)
HERD_READINGS = 10


def _cpu_s(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
        except (OSError, IndexError):
            pass
    return total


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else float("nan")


def _stored(db_url: str) -> collections.Counter:
    """(device, seq) -> rows stored (more than 1 would be a duplicate)."""
    from gateway.db import Database

    db = Database(db_url)
    with db.connect() as c:
        got = c.execute("SELECT device_id, seq FROM readings").fetchall()
    return collections.Counter((d, s) for d, s in got)


def _produced(fleet) -> set:
    return {(dev, s) for dev, seqs in fleet.produced().items() for s in seqs}


class _Ctx:
    """What the phases share: the region, the fleet, clinic 0's link, the PostgreSQL cluster, the figures."""

    def __init__(self, region, fleet, link, pg, out: dict):
        self.r, self.fleet, self.link, self.pg, self.url, self.out = region, fleet, link, pg, pg.url, out

    def pids(self) -> dict[str, list[int]]:
        p = self.r.pids()
        p["fleet"] = self.fleet.pids()
        p["postgres"] = self._pg_pids()
        return p

    def _pg_pids(self) -> list[int]:
        """The cluster's postmaster and every process it started (backends, WAL writer...)."""
        try:
            return process_tree(int((self.pg.data / "postmaster.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            return []


def _steady(ctx: _Ctx) -> None:
    out, fleet = ctx.out, ctx.fleet
    pids = ctx.r.pids()
    cpu0, w0 = _cpu_s(pids["gateways"]), time.monotonic()
    passes: list[float] = []
    steady = fleet.run(INTERVAL, STEADY_S, drain_s=180, report=lambda c: passes.append(c["pass_ms"]), close=False)
    wall = time.monotonic() - w0
    out["all_connected_s"] = steady["all_connected_s"]
    out["gateway_cpu_pct"] = round(100 * (_cpu_s(ctx.r.pids()["gateways"]) - cpu0) / wall, 1)
    out["broker_rss_mb"] = _rss_mb(ctx.r.pids()["brokers"])
    out["fleet_pass_ms"] = round(statistics.median(passes), 1) if passes else None
    lat = fleet.latencies_ms()
    out["p50_latency_ms"], out["p99_latency_ms"] = _pct(lat, 0.5), _pct(lat, 0.99)
    out["steady_readings"] = steady["readings_produced"]
    out["steady_all_acked"] = steady["waiting"] == 0


def _fault(ctx: _Ctx, name: str, actions: list[tuple[float, object]]) -> None:
    """One fault phase: the devices measure for ``FAULT_S`` s while ``actions`` (seconds into the
    phase, callable) run; then every reading made during it is looked up in the database."""
    before = _produced(ctx.fleet)
    done: set = set()

    def tick(t):
        for i, (at, act) in enumerate(actions):
            if t >= at and i not in done:
                done.add(i)
                act()

    peak = [0]
    res = ctx.fleet.run(INTERVAL, FAULT_S, drain_s=240, on_tick=tick,
                        report=lambda c: peak.__setitem__(0, max(peak[0], c["waiting"])), close=False)
    made = _produced(ctx.fleet) - before
    stored = _stored(ctx.url)
    out = ctx.out
    out[f"fault_{name}_readings"] = len(made)
    out[f"fault_{name}_delivered_ratio"] = round(sum(1 for k in made if k in stored) / len(made), 4) if made else None
    out[f"fault_{name}_duplicates_stored"] = sum(stored[k] - 1 for k in made if stored[k] > 1)
    out[f"fault_{name}_peak_waiting"] = peak[0]
    out[f"fault_{name}_drain_s"] = res["drain_s"]


def _faults(ctx: _Ctx) -> None:
    r, link = ctx.r, ctx.link
    _fault(ctx, "link_cut", [(2, link.cut), (0.6 * FAULT_S, link.restore)])
    _fault(ctx, "gateway_kill", [(2, lambda: r.kill_gateway(0)), (4, lambda: r.start_gateway(0))])
    _fault(ctx, "regional_restart", [(2, lambda: r.restart_broker("regional"))])


def _herd(ctx: _Ctx) -> None:
    out, fleet = ctx.out, ctx.fleet
    everyone = set(range(CLINICS))
    fleet.outage(everyone, True)
    fleet.settle(1.0)                       # the devices notice their links are gone
    queued = sum(fleet.measure_all() for _ in range(HERD_READINGS))
    rows0 = sum(_stored(ctx.url).values())
    pids = ctx.pids()
    cpu0 = {k: {p: _cpu_s([p]) for p in v} for k, v in pids.items()}
    fleet.outage(everyone, False)
    t = fleet.drain(600)
    # per process, and only those alive at both ends (a PostgreSQL backend may end meanwhile)
    cpu = {k: sum(max(0.0, _cpu_s([p]) - c) for p, c in v.items() if Path(f"/proc/{p}").exists())
           for k, v in cpu0.items()}
    rows = sum(_stored(ctx.url).values()) - rows0
    out["herd_readings"] = queued
    out["herd_drain_s"] = round(t, 1)
    out["herd_readings_per_s"] = round(queued / t) if t else None
    out["postgres_rows_per_s"] = round(rows / t) if t else None
    out["herd_broker_rss_mb"] = _rss_mb(ctx.r.pids()["brokers"])
    for k, v in cpu.items():   # CPU seconds of each part while the herd drained (2 cores: at most 2 x drain)
        out[f"herd_cpu_s_{k}"] = round(v, 1)


PG_STOP_AT_S, PG_DOWN_S, PG_PHASE_S = 4.0, 8.0, 20.0
# PostgreSQL's own defaults for the two settings PgCluster makes small for tests
PG_SETTINGS = {"shared_buffers": "128MB", "max_connections": "100"}


def _pg_marks(url: str) -> tuple[int, int]:
    """(WAL position in bytes, database size in bytes) of the region's PostgreSQL now."""
    import psycopg

    with psycopg.connect(url) as c:
        lsn, size = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, "
                              "pg_database_size(current_database())").fetchone()
    return int(lsn), int(size)


def pg_bytes_per_reading(url: str, before: tuple[int, int], stored: int) -> dict:
    """WAL and database growth per stored reading since ``before`` (``_pg_marks`` once the devices
    were registered): every reading's row, its observations, indexes, devices/status updates and
    the full-page images after checkpoints, as this run wrote them. Per million readings in MB."""
    lsn, size = _pg_marks(url)
    if not stored:
        return {}
    wal, disk = (lsn - before[0]) / stored, (size - before[1]) / stored
    return {"pg_wal_bytes_per_reading": round(wal), "pg_db_bytes_per_reading": round(disk),
            "pg_wal_mb_per_million": round(wal * 1e6 / 2**20), "pg_db_mb_per_million": round(disk * 1e6 / 2**20)}


def pg_restart_phase(fleet, pg, url: str) -> dict:
    """PostgreSQL stopped (fast shutdown: every session terminated) at ``PG_STOP_AT_S`` for
    ``PG_DOWN_S`` s while the devices keep measuring, then started again; the gateways must hold
    every reading unacknowledged meanwhile and resume by themselves. Figures: the phase's readings'
    ``pg_restart_delivered_ratio`` and ``pg_restart_duplicates_stored``, the readings the devices
    got acknowledged while it was down (from 2 s after the stop, once acks of earlier commits
    arrived: must be 0), seconds from its start to the first ack, the phase's drain."""
    before = {(d, s) for d, seqs in fleet.produced().items() for s in seqs}
    m: dict = {}
    last: dict = {}     # the counts of the latest report (a FleetShards cannot be asked while it runs)

    def tick(t):
        if t >= PG_STOP_AT_S and "stop" not in m:
            pg.stop()
            m["stop"] = time.monotonic()
        elif "stop" in m and "down_acked" not in m and time.monotonic() - m["stop"] >= 2.0:
            m["down_acked"] = last["acked"]
        elif t >= PG_STOP_AT_S + PG_DOWN_S and "start" not in m:
            m["start_acked"] = last["acked"]
            pg.start()
            m["start"] = time.monotonic()

    def watch(c):
        last.update(c)
        if "start" in m and "resumed" not in m and c["acked"] > m["start_acked"]:
            m["resumed"] = time.monotonic() - m["start"]

    res = fleet.run(INTERVAL, PG_PHASE_S, drain_s=240, report=watch, on_tick=tick, close=False)
    phase = {(d, s) for d, seqs in fleet.produced().items() for s in seqs} - before
    stored = _stored(url)
    return {"pg_restart_readings": len(phase),
            "pg_restart_delivered_ratio": round(sum(1 for k in phase if k in stored) / len(phase), 4) if phase else None,
            "pg_restart_duplicates_stored": sum(stored[k] - 1 for k in phase if stored[k] > 1),
            "pg_restart_down_s": round(m["start"] - m["stop"], 1),
            "pg_restart_acked_while_down": m["start_acked"] - m["down_acked"],
            "pg_restart_first_ack_s": round(m["resumed"], 1) if "resumed" in m else None,
            "pg_restart_all_acked": res["waiting"] == 0, "pg_restart_drain_s": res["drain_s"]}


def run(outdir) -> dict:
    from host.region import Region
    from sim.fleet import make_fleet, raise_fd_limit
    from tests.support.link import Link
    from tests.support.pgcluster import PgCluster

    soft, hard = raise_fd_limit()       # the brokers started from here inherit it
    tmp = Path(tempfile.mkdtemp(prefix="nabd-bench-fleet-"))
    pg = PgCluster(settings=PG_SETTINGS).init()
    url = pg.url
    r = Region(tmp / "region", CLINICS, GATEWAYS, url, broker_user="root" if os.geteuid() == 0 else None)
    # only clinic 0's bridge goes through a relay the benchmark can cut (the others connect
    # directly, as in a region): a relay is threads of this process, in every message's path
    link = Link(r.regional_port)
    r.uplink[0] = ("127.0.0.1", link.port)
    out: dict = {"devices": DEVICES, "clinics": CLINICS, "gateways": GATEWAYS, "procs": PROCS, "interval_s": INTERVAL,
                 "cpus": os.cpu_count(), "fd_limit": soft, "load_avg_1m": round(os.getloadavg()[0], 1)}
    fleet = None
    try:
        t0 = time.monotonic()
        fleet = make_fleet(tmp / "fleet", DEVICES, r.clinic_urls(), clinics=CLINICS, procs=PROCS)
        out["fleet_create_s"] = round(time.monotonic() - t0, 1)
        t1 = time.monotonic()
        r.add_devices(fleet)
        r.write()
        out["register_s"] = round(time.monotonic() - t1, 1)
        pg0 = _pg_marks(url)
        r.start()
        ctx = _Ctx(r, fleet, link, pg, out)
        _steady(ctx)
        _faults(ctx)
        out.update(pg_restart_phase(fleet, pg, url))
        _herd(ctx)
        fleet.close()

        produced = _produced(fleet)
        stored = _stored(url)
        out["readings_produced"] = len(produced)
        out["delivered_ratio"] = round(sum(1 for k in produced if k in stored) / len(produced), 4)
        out["duplicates_stored"] = sum(n - 1 for n in stored.values())   # (device, seq) is unique: 0
        out["stored_not_produced"] = sum(1 for k in stored if k not in produced)
        out.update(pg_bytes_per_reading(url, pg0, len(stored)))
        out["load_avg_1m_end"] = round(os.getloadavg()[0], 1)
    finally:
        if fleet is not None:
            fleet.stop()
        r.stop()
        link.cut()
        pg.close()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    # gateway scaling on PostgreSQL, measured on its own (one against two gateway processes
    # draining the same backlog, alternating; bench/gateway.py pg_scaling, also in gateway.json)
    from bench.gateway import pg_scaling

    out.update({k: v for k, v in pg_scaling().items()
                if k in ("gateway_scale_2_over_1", "ingest_per_core", "ingest_per_core_2", "gateway_cores_1",
                         "gateway_cores_2", "postgres_ingest_per_s", "postgres_2_workers_per_s", "gateway_scale_runs",
                         "gateway_scale_min_median_max", "gateway_scale_of_medians", "postgres_server_cpu_us",
                         "scale_start_skew_max_s",
                         "scale_load_avg_1m")})
    return out
