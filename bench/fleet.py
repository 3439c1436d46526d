"""The fleet benchmark (issue 11): ``nabd sim fleet``'s devices (``sim/fleet.py``) through a region
built by ``host/region.py``: clinic Mosquitto brokers bridged to a regional Mosquitto, gateway
processes sharing the subscription on PostgreSQL. One run, in phases:

1. steady: every device measures every ``INTERVAL`` s for ``STEADY_S`` s; latency is from
   measurement to the device's receipt of the gateway's signed ack (an upper bound of
   measurement-to-commit), gateway CPU and broker memory from ``/proc``;
2. faults, while the devices keep measuring: clinic 0's bridge link cut and restored, gateway 1
   SIGKILLed and restarted, the regional broker restarted; then PostgreSQL stopped and started
   (``pg_restart_phase``: the region runs on a PostgreSQL cluster of the benchmark's own,
   tests/support/pgcluster.py, since the machine's is shared by everyone's tests);
3. thundering herd: every clinic's devices lose their link, queue ``HERD_READINGS`` readings each,
   and all reconnect at the same moment; ``herd_drain_s`` is the time until all are acknowledged.

Sizes from the environment: ``NABD_BENCH_FLEET_DEVICES`` (default 1000), ``..._CLINICS`` (10),
``..._GATEWAYS`` (2). The limit on this machine: the simulator is one Python thread stepping
every device (``fleet_pass_ms``: one pass over all of them), on 2 cores shared with the brokers,
the gateways, PostgreSQL and other work.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEVICES = int(os.environ.get("NABD_BENCH_FLEET_DEVICES", "1000"))
CLINICS = int(os.environ.get("NABD_BENCH_FLEET_CLINICS", "10"))
GATEWAYS = int(os.environ.get("NABD_BENCH_FLEET_GATEWAYS", "2"))
INTERVAL = 5.0
STEADY_S = 30.0
FAULT_S = 30.0
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


def _stored(db_url: str) -> tuple[set, int]:
    from gateway.db import Database

    db = Database(db_url)
    with db.connect() as c:
        got = c.execute("SELECT device_id, seq FROM readings").fetchall()
    return {(d, s) for d, s in got}, len(got)


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

    def tick(t):
        if t >= PG_STOP_AT_S and "stop" not in m:
            pg.stop()
            m["stop"] = time.monotonic()
        elif "stop" in m and "down_acked" not in m and time.monotonic() - m["stop"] >= 2.0:
            m["down_acked"] = fleet.counts()["acked"]
        elif t >= PG_STOP_AT_S + PG_DOWN_S and "start" not in m:
            m["start_acked"] = fleet.counts()["acked"]
            pg.start()
            m["start"] = time.monotonic()

    def watch(c):
        if "start" in m and "resumed" not in m and c["acked"] > m["start_acked"]:
            m["resumed"] = time.monotonic() - m["start"]

    res = fleet.run(INTERVAL, PG_PHASE_S, drain_s=240, report=watch, on_tick=tick, close=False)
    phase = {(d, s) for d, seqs in fleet.produced().items() for s in seqs} - before
    stored, rows = _stored(url)
    return {"pg_restart_readings": len(phase),
            "pg_restart_delivered_ratio": round(len(phase & stored) / len(phase), 4) if phase else None,
            "pg_restart_duplicates_stored": rows - len(stored),
            "pg_restart_down_s": round(m["start"] - m["stop"], 1),
            "pg_restart_acked_while_down": m["start_acked"] - m["down_acked"],
            "pg_restart_first_ack_s": round(m["resumed"], 1) if "resumed" in m else None,
            "pg_restart_all_acked": res["waiting"] == 0, "pg_restart_drain_s": res["drain_s"]}


def run(outdir) -> dict:
    from host.region import Region
    from sim.fleet import Fleet
    from tests.support.link import Link
    from tests.support.pgcluster import PgCluster

    tmp = Path(tempfile.mkdtemp(prefix="nabd-bench-fleet-"))
    pg = PgCluster(settings=PG_SETTINGS).init()
    url = pg.url
    r = Region(tmp / "region", CLINICS, GATEWAYS, url, broker_user="root" if os.geteuid() == 0 else None)
    links = [Link(r.regional_port) for _ in range(CLINICS)]
    for k, ln in enumerate(links):
        r.uplink[k] = ("127.0.0.1", ln.port)
    out: dict = {"devices": DEVICES, "clinics": CLINICS, "gateways": GATEWAYS, "interval_s": INTERVAL,
                 "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1)}
    try:
        t0 = time.monotonic()
        fleet = Fleet(tmp / "fleet", DEVICES, r.clinic_urls(), clinics=CLINICS)
        r.add_devices(fleet)
        r.write()
        pg0 = _pg_marks(url)
        out["setup_s"] = round(time.monotonic() - t0, 1)
        r.start()
        # 1. steady
        pids = r.pids()
        cpu0, w0 = _cpu_s(pids["gateways"]), time.monotonic()
        passes: list[float] = []

        def tick(t):
            a = time.monotonic()
            fleet.step(False, INTERVAL)
            passes.append((time.monotonic() - a) * 1000)

        steady = fleet.run(INTERVAL, STEADY_S, drain_s=180, on_tick=tick, close=False)
        wall = time.monotonic() - w0
        out["all_connected_s"] = steady["all_connected_s"]
        out["gateway_cpu_pct"] = round(100 * (_cpu_s(r.pids()["gateways"]) - cpu0) / wall, 1)
        out["broker_rss_mb"] = _rss_mb(r.pids()["brokers"])
        out["fleet_pass_ms"] = round(statistics.median(passes), 1) if passes else None
        lat = fleet.latencies_ms()
        out["p50_latency_ms"], out["p99_latency_ms"] = _pct(lat, 0.5), _pct(lat, 0.99)
        out["steady_readings"] = steady["readings_produced"]
        out["steady_acked"] = steady["acked"]

        # 2. faults while measuring
        done: set = set()

        def faults(t):
            for at, what in ((4, "cut"), (8, "kill"), (10, "restart-gw"), (14, "regional"), (20, "restore")):
                if t >= at and what not in done:
                    done.add(what)
                    if what == "cut":
                        links[0].cut()
                    elif what == "kill":
                        r.kill_gateway(0)
                    elif what == "restart-gw":
                        r.start_gateway(0)
                    elif what == "regional":
                        r.restart_broker("regional")
                    else:
                        links[0].restore()

        peak = [0]

        def watch(c):
            peak[0] = max(peak[0], c["waiting"])

        fault_run = fleet.run(INTERVAL, FAULT_S, drain_s=240, report=watch, on_tick=faults, close=False)
        out["faults_peak_waiting"] = peak[0]      # readings held by devices at worst (the cut clinic's)
        out["faults_readings"] = fault_run["readings_produced"] - steady["readings_produced"]  # counts accumulate
        out["faults_all_acked"] = fault_run["waiting"] == 0
        out["faults_drain_s"] = fault_run["drain_s"]
        out.update(pg_restart_phase(fleet, pg, url))

        # 3. thundering herd
        everyone = set(range(CLINICS))
        fleet.outage(everyone, True)
        fleet.pump(lambda: False, 1.0)          # the devices notice their links are gone
        queued = sum(fleet.measure_all() for _ in range(HERD_READINGS))
        fleet.outage(everyone, False)
        t = fleet.pump(lambda: all(d.uplink.queued == 0 for d in fleet.devices), 600)
        out["herd_readings"] = queued
        out["herd_drain_s"] = round(t, 1)
        out["herd_readings_per_s"] = round(queued / t) if t else None
        for d in fleet.devices:
            d.uplink.close()

        produced = {(dev, s) for dev, seqs in fleet.produced().items() for s in seqs}
        stored, rows = _stored(url)
        out["readings_produced"] = len(produced)
        out["delivered_ratio"] = round(len(produced & stored) / len(produced), 4)
        out["duplicates_stored"] = rows - len(stored)       # the (device, seq) unique constraint holds it at 0
        out["stored_not_produced"] = len(stored - produced)
        out.update(pg_bytes_per_reading(url, pg0, len(stored)))
    finally:
        r.stop()
        for ln in links:
            ln.cut()
        pg.close()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return out
